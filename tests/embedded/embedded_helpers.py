"""Tiny model config and a fake render source, so embedded-prior tests run in seconds on a CPU.

(A plain module rather than conftest.py, so its name cannot clash with other test folders' conftests.)
"""

from __future__ import annotations

import torch

from dreamfusion.cameras import VIEW_LABELS
from dreamfusion.embedded.model import EmbeddedModelConfig
from dreamfusion.procedural.dataset import COLOUR_NAMES, ProceduralBatch
from dreamfusion.procedural.objects import OBJECT_KINDS, caption

TINY_MODEL = EmbeddedModelConfig(
    text_dim=32, text_layers=1, text_heads=2, channels=(16, 32), blocks=(1, 1), attention=(False, True),
    head_dim=16, groups=8,
)


def fake_batch(batch_size: int, generator: torch.Generator, resolution: int = 64) -> ProceduralBatch:
    """Random labels with matching captions and images that are flat patches of a label-dependent colour."""
    objects = torch.randint(len(OBJECT_KINDS), (batch_size,), generator=generator)
    colours = torch.randint(len(COLOUR_NAMES), (batch_size,), generator=generator)
    views = torch.randint(len(VIEW_LABELS), (batch_size,), generator=generator)
    shading = torch.randint(3, (batch_size,), generator=generator)
    level = (colours.float() / len(COLOUR_NAMES))[:, None, None, None]
    images = level.expand(batch_size, 3, resolution, resolution).clone()
    images[:, :, : resolution // 4] *= 0.5
    captions = [
        caption(COLOUR_NAMES[c], OBJECT_KINDS[o], VIEW_LABELS[v])
        for o, c, v in zip(objects.tolist(), colours.tolist(), views.tolist(), strict=True)
    ]
    return ProceduralBatch(images, objects, colours, views, shading, captions, cameras=None)  # type: ignore[arg-type]
