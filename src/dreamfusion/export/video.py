"""Turntable videos and preview grids of a trained field."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from jaxtyping import Float, UInt8
from PIL import Image

from dreamfusion.cameras import CameraBatch, TurntableConfig, turntable_cameras
from dreamfusion.field import NeRFField
from dreamfusion.renderer import OccupancyGrid, RendererConfig, RenderOutput, render
from dreamfusion.shading import Background, ShadingConfig

Panel = Literal["lambertian", "albedo", "textureless", "normals", "depth", "opacity"]
PANELS: tuple[Panel, ...] = ("lambertian", "albedo", "textureless", "normals", "depth", "opacity")
DEFAULT_PANELS: tuple[Panel, ...] = ("lambertian", "textureless")


def parse_panels(text: str | None) -> tuple[Panel, ...]:
    """Panels from a comma-separated list ("lambertian,normals"); None or "" gives DEFAULT_PANELS.
    Raises ValueError naming the unknown panel and the valid ones; duplicates are dropped."""
    if text is None or not text.strip():
        return DEFAULT_PANELS
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in PANELS]
    if unknown:
        raise ValueError(f"unknown panel {unknown[0]!r}; choose from {', '.join(PANELS)}")
    return tuple(dict.fromkeys(names))  # type: ignore[return-value]


@dataclass
class Scene:
    """What is needed to render a trained run."""

    field: NeRFField
    background: Background
    renderer: RendererConfig
    shading: ShadingConfig
    occupancy: OccupancyGrid | None = None
    """Empty-space skipping for renders; built from the field on first use."""

    def grid(self) -> OccupancyGrid:
        if self.occupancy is None:
            self.occupancy = OccupancyGrid.from_field(self.field)
        return self.occupancy


def _panel_image(scene: Scene, cameras: CameraBatch, panel: Panel) -> Float[torch.Tensor, "B H W 3"]:
    mode = panel if panel in ("lambertian", "albedo", "textureless") else "albedo"
    out: RenderOutput = render(
        scene.field,
        scene.background,
        cameras,
        scene.renderer,
        shading=mode,  # type: ignore[arg-type]
        ambient=scene.shading.ambient,
        diffuse=scene.shading.diffuse,
        with_normals=panel == "normals",
        occupancy=scene.grid(),
    )
    if panel == "normals":
        # World normals mapped to colours, over white where the ray is empty.
        return (out.normals * 0.5 + 0.5 * out.opacity) + (1 - out.opacity)
    if panel == "depth":
        # A fixed range for every frame: the bounding sphere spans [distance - bound, distance + bound] along
        # the view axis, so the same depth is the same grey in every frame (no per-chunk rescaling flicker).
        # Near is bright, far is dark, empty rays are black.
        bound = scene.field.config.bound
        near = (cameras.distance.to(out.depth.device) - bound).clamp(min=0).view(-1, 1, 1, 1)
        scaled = 1 - ((out.depth - near) / (2 * bound)).clamp(0, 1)
        return (scaled * out.opacity).expand(*out.depth.shape[:-1], 3)
    if panel == "opacity":
        return out.opacity.expand(*out.opacity.shape[:-1], 3)
    return out.rgb


@torch.no_grad()
def render_panels(
    scene: Scene, cameras: CameraBatch, panels: tuple[Panel, ...] = DEFAULT_PANELS, chunk: int = 8
) -> UInt8[np.ndarray, "B H W*P 3"]:
    """Render each camera once per panel and place the panels side by side (in the order given)."""
    if not panels or any(panel not in PANELS for panel in panels):
        raise ValueError(f"panels must be a non-empty selection of {', '.join(PANELS)}, got {panels!r}")
    device = next(scene.field.parameters()).device
    rows = []
    for start in range(0, cameras.batch_size, chunk):
        part = _slice(cameras, start, start + chunk).to(device)
        images = [_panel_image(scene, part, panel).clamp(0, 1) for panel in panels]
        rows.append(torch.cat(images, dim=2).cpu())
    frames = torch.cat(rows, dim=0)
    return (frames.numpy() * 255 + 0.5).astype(np.uint8)


def _slice(cameras: CameraBatch, start: int, stop: int) -> CameraBatch:
    return CameraBatch(
        rays_o=cameras.rays_o[start:stop],
        rays_d=cameras.rays_d[start:stop],
        c2w=cameras.c2w[start:stop],
        intrinsics=cameras.intrinsics[start:stop],
        elevation=cameras.elevation[start:stop],
        azimuth=cameras.azimuth[start:stop],
        distance=cameras.distance[start:stop],
        light_position=cameras.light_position[start:stop],
        view_labels=cameras.view_labels[start:stop],
    )


def _upscale(images: UInt8[np.ndarray, "*B H W 3"], factor: int) -> UInt8[np.ndarray, "*B H2 W2 3"]:
    """Nearest-neighbour enlargement, so small renders stay crisp in players and browsers."""
    return images.repeat(factor, axis=-3).repeat(factor, axis=-2) if factor > 1 else images


def write_gif(frames: UInt8[np.ndarray, "B H W 3"], path: Path, fps: int = 15) -> None:
    images = [Image.fromarray(frame) for frame in frames]
    tmp = path.with_name(f".{path.name}.tmp")
    images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    os.replace(tmp, path)


def write_mp4(frames: UInt8[np.ndarray, "B H W 3"], path: Path, fps: int = 30) -> None:
    """H.264 through imageio-ffmpeg (imported here: the rest of the package works without it)."""
    try:
        import imageio.v2 as imageio
        import imageio_ffmpeg  # noqa: F401 - imageio's ffmpeg plugin needs it
    except ImportError as error:
        raise RuntimeError(f"writing mp4 needs imageio-ffmpeg ({error.name} missing): pip install imageio-ffmpeg") from None
    # H.264 wants even sides; pad to a multiple of 16 to avoid the encoder resizing.
    height, width = frames.shape[1:3]
    pad_h, pad_w = (-height) % 16, (-width) % 16
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    tmp = path.with_name(f".{path.name}.tmp.mp4")
    writer = imageio.get_writer(tmp, fps=fps, codec="libx264", quality=8, macro_block_size=1, ffmpeg_log_level="error")
    for frame in frames:
        writer.append_data(frame)
    writer.close()
    os.replace(tmp, path)


def write_png(image: UInt8[np.ndarray, "H W 3"], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(image).save(tmp, format="PNG")
    os.replace(tmp, path)


@dataclass
class TurntableOutputs:
    mp4: Path | None
    gif: Path
    preview: Path
    mp4_error: str | None = None


def write_turntable(
    scene: Scene,
    config: TurntableConfig,
    out_dir: Path,
    panels: tuple[Panel, ...] = DEFAULT_PANELS,
    stem: str = "turntable",
) -> TurntableOutputs:
    """turntable.mp4 and turntable.gif (panels side by side) and preview.png (8 shaded views, 2 rows of 4)."""
    frames = render_panels(scene, turntable_cameras(config), panels)
    scale = max(1, 256 // config.resolution)
    write_gif(_upscale(frames, max(1, scale // 2)), out_dir / f"{stem}.gif")
    mp4: Path | None = out_dir / f"{stem}.mp4"
    mp4_error = None
    try:
        write_mp4(_upscale(frames, scale), mp4)  # type: ignore[arg-type]
    except RuntimeError as error:
        mp4, mp4_error = None, str(error)

    views = render_panels(scene, turntable_cameras(replace(config, frames=8)), ("lambertian",))
    grid = np.concatenate([np.concatenate(list(views[row * 4 : row * 4 + 4]), axis=1) for row in range(2)], axis=0)
    write_png(_upscale(grid, max(1, scale // 2)), out_dir / "preview.png")
    return TurntableOutputs(mp4=mp4, gif=out_dir / f"{stem}.gif", preview=out_dir / "preview.png", mp4_error=mp4_error)
