"""Geometry regularizers of DreamFusion, each a mean over rays."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from dreamfusion.renderer import RenderOutput


def loss_orientation(render: RenderOutput) -> Float[Tensor, ""]:
    """sum_i stopgrad(w_i) max(0, n_i . d)^2: penalizes visible normals that face away from the camera."""
    if render.sample_normals is None:
        raise ValueError("the orientation loss needs a render with normals")
    facing_away = (render.sample_normals * render.ray_directions[:, :, None, :]).sum(-1).clamp(min=0.0)
    return (render.weights.detach() * facing_away**2).sum(-1).mean()


def loss_opacity(render: RenderOutput) -> Float[Tensor, ""]:
    """sqrt(opacity^2 + 0.01): pushes rays to stay empty unless the prior asks for something there."""
    return torch.sqrt(render.opacity**2 + 0.01).mean()
