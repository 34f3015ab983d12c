"""A trained scene, and its renders from any number of cameras a bounded number of rays at a time: what videos,
evaluation and export checks draw."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Float, Shaped, UInt8
from torch import Tensor

from dreamfusion.cameras import CameraBatch
from dreamfusion.field import NeRFField
from dreamfusion.renderer import OccupancyGrid, RendererConfig, RenderOutput, render
from dreamfusion.shading import Background, ShadingConfig, ShadingMode

MAX_RAYS = 1 << 16
"""Rays per render call: bounds the renderer's memory (rays x samples) whatever the resolution."""

ViewImage = Callable[[RenderOutput, CameraBatch], Shaped[Tensor, "b h w C"]]
"""What is kept of the render of some cameras (given too, e.g. for their distance), computed chunk by chunk so
that only what is kept piles up."""


def colour(out: RenderOutput, cameras: CameraBatch) -> Float[Tensor, "b h w 3"]:
    return out.rgb


def to_bytes(images: Float[Tensor, "*B 3"]) -> UInt8[Tensor, "*B 3"]:
    """Colours clamped to [0, 1] as rounded bytes, on the CPU: for image files and CLIP."""
    return (images.clamp(0, 1).cpu() * 255 + 0.5).to(torch.uint8)


@dataclass
class Scene:
    """What is needed to render a trained run."""

    field: NeRFField
    background: Background
    renderer: RendererConfig
    shading: ShadingConfig
    occupancy: OccupancyGrid | None = None
    """Empty-space skipping for renders; built from the field on first use."""

    @property
    def device(self) -> torch.device:
        return next(self.field.parameters()).device

    def grid(self) -> OccupancyGrid:
        if self.occupancy is None:
            self.occupancy = OccupancyGrid.from_field(self.field)
        return self.occupancy

    @torch.no_grad()
    def render_views(
        self,
        cameras: CameraBatch,
        image: ViewImage = colour,
        *,
        mode: ShadingMode = "albedo",
        with_normals: bool = False,
        background: Background | None = None,
        max_rays: int = MAX_RAYS,
    ) -> Shaped[Tensor, "B H W C"]:
        """``image`` of every camera's render, at most ``max_rays`` rays a render call (see
        ``CameraBatch.ray_chunks``), assembled on the CPU, without gradients. ``background`` replaces the
        scene's own (e.g. a fixed colour for evaluation); ``mode`` and ``with_normals`` are those of
        ``renderer.ShadingOptions``, lit as the scene's shading config says."""
        background = self.background if background is None else background
        batch, height = cameras.rays_o.shape[:2]
        # No cameras: the empty batch is rendered once, which gives the empty result its trailing shape.
        chunks = cameras.ray_chunks(max_rays) or [(slice(0, 0), slice(None))]
        views: Tensor | None = None
        for camera_slice, row_slice in chunks:
            part = cameras.subset(camera_slice, row_slice).to(self.device)
            out = render(
                self.field, background, part, self.renderer, shading=mode, ambient=self.shading.ambient,
                diffuse=self.shading.diffuse, with_normals=with_normals, occupancy=self.grid(),
            )  # fmt: skip
            kept = image(out, part).cpu()
            if views is None:
                views = kept.new_zeros(batch, height, *kept.shape[2:])
            views[camera_slice, row_slice] = kept
        assert views is not None
        return views
