"""Score Distillation Sampling as pure functions (DreamFusion, section 3; arXiv 2209.14988).

grad_theta L_SDS = E_{t, eps}[ w(t) (eps_hat(z_t; y, t) - eps) dz/dtheta ], with the diffusion model's
Jacobian dropped: the model runs without gradients and only the rendered image (or its latent) carries
gradients back to the NeRF.

Classifier-free guidance is written in one form throughout the package, the diffusers form

    eps_hat = eps_uncond + s * (eps_text - eps_uncond).

The paper writes (1 + w) * eps_text - w * eps_uncond; that is the same with s = 1 + w.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from dreamfusion.cameras import VIEW_AZIMUTH_DEG, ViewLabel
from dreamfusion.transfer import to_device

if TYPE_CHECKING:
    from dreamfusion.priors.base import DiffusionPrior

Weighting = Literal["sds", "uniform"]
GuidanceMode = Literal["cfg", "perp_neg"]
"""Classifier-free guidance, or Perp-Neg (the other views' prompts as negatives)."""


def sample_timesteps(
    batch_size: int,
    t_range: tuple[float, float],
    num_train_timesteps: int,
    generator: torch.Generator,
) -> Int[Tensor, " B"]:
    """Integer timesteps uniform in [t_min, t_max] given as fractions of the schedule (paper: 0.02..0.98)."""
    low = int(round(t_range[0] * (num_train_timesteps - 1)))
    high = int(round(t_range[1] * (num_train_timesteps - 1)))
    return torch.randint(low, high + 1, (batch_size,), generator=generator)


def sds_weight(
    alphas_cumprod: Float[Tensor, " T"], timesteps: Int[Tensor, " B"], weighting: Weighting
) -> Float[Tensor, " B"]:
    """w(t): "sds" is sigma_t^2 = 1 - alpha_bar_t (paper); "uniform" is 1."""
    if weighting == "sds":
        return 1.0 - alphas_cumprod[timesteps]
    if weighting == "uniform":
        return torch.ones_like(alphas_cumprod[timesteps])
    raise ValueError(f"unknown SDS weighting {weighting!r}")


def add_noise(
    clean: Float[Tensor, "B C H W"],
    noise: Float[Tensor, "B C H W"],
    alphas_cumprod: Float[Tensor, " T"],
    timesteps: Int[Tensor, " B"],
) -> Float[Tensor, "B C H W"]:
    """z_t = sqrt(alpha_bar_t) z_0 + sqrt(1 - alpha_bar_t) eps."""
    alpha_bar = alphas_cumprod[timesteps].to(clean.dtype)[:, None, None, None]
    return alpha_bar.sqrt() * clean + (1.0 - alpha_bar).sqrt() * noise


def classifier_free_guidance(
    eps_unconditional: Float[Tensor, "B C H W"], eps_text: Float[Tensor, "B C H W"], scale: float
) -> Float[Tensor, "B C H W"]:
    """eps_uncond + scale * (eps_text - eps_uncond); scale 1 is the conditional model, 0 the unconditional."""
    return eps_unconditional + scale * (eps_text - eps_unconditional)


def sds_gradient(
    eps_guided: Float[Tensor, "B C H W"], noise: Float[Tensor, "B C H W"], weight: Float[Tensor, " B"]
) -> Float[Tensor, "B C H W"]:
    """w(t) (eps_hat - eps): the gradient SDS puts on the denoised image or latent."""
    return weight.to(eps_guided.dtype)[:, None, None, None] * (eps_guided - noise)


def sds_loss(latents: Float[Tensor, "B C H W"], gradient: Float[Tensor, "B C H W"]) -> Float[Tensor, ""]:
    """A loss whose gradient with respect to ``latents`` is ``gradient`` (summed over pixels, averaged over the batch).

    Written as half the squared distance to a detached target, 0.5 * ||z - (z - g)||^2, rather than as
    sum(g * z): the value stays non-negative and finite under mixed precision and gradient scaling.
    """
    target = (latents - gradient.detach()).detach()
    return 0.5 * ((latents.float() - target.float()) ** 2).sum() / latents.shape[0]


@dataclass
class SDSOutput:
    loss_sds: Float[Tensor, ""]
    gradient: Float[Tensor, "B C H W"]
    timesteps: Int[Tensor, " B"]


def score_distillation(
    prior: DiffusionPrior,
    latents: Float[Tensor, "B C H W"],
    conditional: Tensor,
    unconditional: Tensor,
    guidance_scale: float,
    t_range: tuple[float, float],
    weighting: Weighting,
    generator: torch.Generator,
    negatives: Tensor | None = None,
    negative_weights: Float[Tensor, "K B"] | None = None,
) -> SDSOutput:
    """One SDS evaluation: noise the latents, denoise with the text, without it and with each negative in one
    batch, guide, form the loss.

    ``negatives`` (K x B embeddings, stacked along the batch) with ``negative_weights`` make it Perp-Neg
    guidance; without them it is classifier-free guidance (Perp-Neg with no negatives). Timesteps and noise
    are drawn on the CPU from ``generator`` so a run is reproducible on any device.
    """
    alphas_cumprod = prior.alphas_cumprod
    batch = latents.shape[0]
    timesteps = sample_timesteps(batch, t_range, alphas_cumprod.shape[0], generator)
    noise = to_device(torch.randn(latents.shape, generator=generator), latents.device).to(latents.dtype)
    timesteps_device = to_device(timesteps, latents.device)
    if negatives is None or negative_weights is None:
        negatives = conditional.new_zeros((0, *conditional.shape))
        negative_weights = latents.new_zeros((0, batch))
    copies = 2 + negatives.shape[0]
    context = torch.cat((conditional, unconditional, *negatives.unbind(0)))
    with torch.no_grad():
        noisy = add_noise(latents.detach(), noise, alphas_cumprod, timesteps_device)
        eps = prior.predict_noise(torch.cat([noisy] * copies), timesteps_device.repeat(copies), context).to(latents.dtype)
        parts = eps.chunk(copies)
        guided = perp_neg_guidance(parts[1], parts[0], list(parts[2:]), negative_weights.to(latents.device), guidance_scale)
        gradient = sds_gradient(guided, noise, sds_weight(alphas_cumprod, timesteps_device, weighting))
    return SDSOutput(loss_sds=sds_loss(latents, gradient), gradient=gradient, timesteps=timesteps)


# -- Perp-Neg (Armandpour et al. 2023, arXiv 2304.04968) ------------------------------------------------

PERP_NEG_VIEWS: tuple[ViewLabel, ...] = ("front", "side", "back")
"""The view prompts that serve as Perp-Neg negatives."""


def _perpendicular(a: Tensor, b: Tensor) -> Tensor:
    """The component of each sample of ``a`` perpendicular to the same sample of ``b`` (dot over C, H, W)."""
    dims = tuple(range(1, a.ndim))
    dot = (a * b).sum(dim=dims, keepdim=True)
    norm2 = (b * b).sum(dim=dims, keepdim=True).clamp_min(torch.finfo(b.dtype).tiny)
    return a - dot / norm2 * b


def perp_neg_guidance(
    eps_uncond: Float[Tensor, "B C H W"],
    eps_pos: Float[Tensor, "B C H W"],
    eps_negs: Float[Tensor, "K B C H W"] | list[Tensor],
    weights: Float[Tensor, "K B"] | list[float],
    scale: float,
) -> Float[Tensor, "B C H W"]:
    """Perp-Neg guidance: eps_u + s (d_pos - sum_k w_k perp(d_neg_k, d_pos)), d = eps - eps_u.

    Only the part of each negative direction perpendicular to the positive one is removed, so a negative
    prompt that overlaps the positive ("a chair, front view" against "a chair, side view") cannot cancel
    the shared content. With all weights 0 it is ``classifier_free_guidance``.
    ``weights``: one per negative (K floats) or one per negative and sample (K x B).
    """
    if isinstance(eps_negs, (list, tuple)):
        eps_negs = torch.stack(list(eps_negs)) if len(eps_negs) else eps_uncond.new_zeros((0, *eps_uncond.shape))
    w = torch.as_tensor(weights, dtype=eps_uncond.dtype, device=eps_uncond.device)
    if w.ndim == 1:
        w = w[:, None].expand(eps_negs.shape[0], eps_uncond.shape[0])
    if w.shape != eps_negs.shape[:2]:
        raise ValueError(f"weights of shape {tuple(w.shape)} do not fit {eps_negs.shape[0]} negatives of batch {eps_uncond.shape[0]}")
    positive = eps_pos - eps_uncond
    direction = positive
    for k in range(eps_negs.shape[0]):
        direction = direction - w[k][:, None, None, None] * _perpendicular(eps_negs[k] - eps_uncond, positive)
    return eps_uncond + scale * direction


def perp_neg_weights(
    view_labels: tuple[ViewLabel, ...], azimuth_deg: Float[Tensor, " B"], max_weights: tuple[float, float, float] = (2.0, 1.0, 1.0)
) -> Float[Tensor, "3 B"]:
    """Weights of the negatives (front, side, back) for each camera, interpolated by azimuth.

    A negative view v gets max_v (1 - cos d_v) / 2, with d_v the angle between the camera's azimuth and v's
    (front 0, side +-90, back 180 degrees): nothing at the view itself, the full weight opposite it. The
    camera's own view (its positive prompt) is never a negative.
    """
    azimuth = azimuth_deg.detach().float().cpu()
    rows = []
    for view, largest in zip(PERP_NEG_VIEWS, max_weights, strict=True):
        canonical = torch.tensor(VIEW_AZIMUTH_DEG[view])
        if view == "side":  # both sides share one prompt: use the nearer one
            distance = torch.minimum(_angle_between(azimuth, canonical), _angle_between(azimuth, -canonical))
        else:
            distance = _angle_between(azimuth, canonical)
        weight = largest * (1.0 - torch.cos(torch.deg2rad(distance))) / 2.0
        own = torch.tensor([label == view for label in view_labels])
        rows.append(torch.where(own, torch.zeros_like(weight), weight))
    return torch.stack(rows)


def _angle_between(a: Tensor, b: Tensor) -> Tensor:
    return ((a - b + 180.0) % 360.0 - 180.0).abs()
