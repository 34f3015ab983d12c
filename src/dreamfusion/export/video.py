"""Turntable videos and preview grids of a trained field."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from jaxtyping import Float, UInt8
from PIL import Image

from dreamfusion.cameras import CameraBatch, TurntableConfig, turntable_cameras
from dreamfusion.files import write_atomic
from dreamfusion.renderer import RenderOutput
from dreamfusion.scene import MAX_RAYS, Scene, to_bytes
from dreamfusion.shading import SHADING_MODES, ShadingMode

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


def _panel_image(out: RenderOutput, cameras: CameraBatch, panel: Panel, bound: float) -> Float[torch.Tensor, "B H W 3"]:
    """A panel of ``cameras`` from their render ``out`` (rendered in the panel's shading mode, see ``_render_mode``)."""
    if panel == "normals":
        # World normals mapped to colours, over white where the ray is empty.
        return (out.normals * 0.5 + 0.5 * out.opacity) + (1 - out.opacity)
    if panel == "depth":
        # A fixed range for every frame: the bounding sphere spans [distance - bound, distance + bound] along
        # the view axis, so the same depth is the same grey in every frame (no per-chunk rescaling flicker).
        # Near is bright, far is dark, empty rays are black.
        near = (cameras.distance.to(out.depth.device) - bound).clamp(min=0).view(-1, 1, 1, 1)
        scaled = 1 - ((out.depth - near) / (2 * bound)).clamp(0, 1)
        return (scaled * out.opacity).expand(*out.depth.shape[:-1], 3)
    if panel == "opacity":
        return out.opacity.expand(*out.opacity.shape[:-1], 3)
    return out.rgb


def _render_mode(panel: Panel) -> ShadingMode:
    return panel if panel in SHADING_MODES else "albedo"  # type: ignore[return-value]


def _panel_bytes(out: RenderOutput, cameras: CameraBatch, panel: Panel, bound: float) -> UInt8[torch.Tensor, "B H W 3"]:
    return to_bytes(_panel_image(out, cameras, panel, bound))


@torch.no_grad()
def render_panels(
    scene: Scene, cameras: CameraBatch, panels: tuple[Panel, ...] = DEFAULT_PANELS, max_rays: int = MAX_RAYS
) -> UInt8[np.ndarray, "B H W*P 3"]:
    """Render each camera once per panel and place the panels side by side (in the order given), at most
    ``max_rays`` rays at a time; converted to bytes chunk by chunk, so float frames never pile up."""
    if not panels or any(panel not in PANELS for panel in panels):
        raise ValueError(f"panels must be a non-empty selection of {', '.join(PANELS)}, got {panels!r}")
    batch, height, width = cameras.rays_o.shape[:3]
    frames = np.zeros((batch, height, width * len(panels), 3), np.uint8)
    for index, panel in enumerate(panels):
        image = partial(_panel_bytes, panel=panel, bound=scene.field.bound)
        views = scene.render_views(cameras, image, mode=_render_mode(panel), with_normals=panel == "normals", max_rays=max_rays)
        frames[:, :, index * width : (index + 1) * width] = views.numpy()
    return frames


def _upscale(images: UInt8[np.ndarray, "*B H W 3"], factor: int) -> UInt8[np.ndarray, "*B H2 W2 3"]:
    """Nearest-neighbour enlargement, so small renders stay crisp in players and browsers."""
    return images.repeat(factor, axis=-3).repeat(factor, axis=-2) if factor > 1 else images


def write_gif(frames: UInt8[np.ndarray, "B H W 3"], path: Path, fps: int = 15) -> None:
    images = [Image.fromarray(frame) for frame in frames]
    write_atomic(
        path,
        lambda tmp: images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0),
    )


def mp4_available() -> bool:
    """Whether an mp4 encoder (imageio-ffmpeg) is installed."""
    return importlib.util.find_spec("imageio_ffmpeg") is not None


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

    def encode(tmp: Path) -> None:
        writer = imageio.get_writer(tmp, fps=fps, codec="libx264", quality=8, macro_block_size=1, ffmpeg_log_level="error")
        for frame in frames:
            writer.append_data(frame)
        writer.close()

    write_atomic(path, encode, suffix=".mp4")  # the encoder picks its container by the suffix


def write_png(image: UInt8[np.ndarray, "H W 3"], path: Path) -> None:
    write_atomic(path, lambda tmp: Image.fromarray(image).save(tmp, format="PNG"))


TurntableFile = Literal["gif", "mp4", "preview"]


@dataclass
class TurntableOutputs:
    written: list[Path]
    """The files written, in order."""
    mp4_error: str | None = None
    """Why turntable.mp4 was not written (no encoder installed), when it was asked for."""


def _upscale_factor(resolution: int) -> int:
    return max(1, 256 // resolution)


def turntable_bytes(config: TurntableConfig, panels: tuple[Panel, ...], frames: int | None = None,
                    resolution: int | None = None) -> float:  # fmt: skip
    """A lower bound of the memory ``write_turntable`` needs: the frames as bytes, and the images the
    encoders are handed (one more copy, upscaled for small renders)."""
    frames = config.frames if frames is None else frames
    side = float(config.resolution if resolution is None else resolution)
    scale = _upscale_factor(int(side))
    strip = side * side * len(panels) * 3
    return frames * strip * (1 + scale * scale)


def check_turntable_size(
    config: TurntableConfig, panels: tuple[Panel, ...], names: tuple[str, str] = ("--resolution", "--frames")
) -> None:
    """Refuse a turntable whose frames could never fit in memory (see ``memory.check_size``), naming the
    size that is out of range (``names``: how the resolution and the frame count were given)."""
    from dreamfusion.memory import check_size, device_memory, largest_fitting

    def at_side(side: int) -> float:
        return turntable_bytes(config, panels, resolution=side)

    if largest_fitting(at_side, device_memory("cpu")) >= 1:  # else not even one pixel fits: too many frames
        check_size(names[0], config.resolution, at_side, "cpu")
    check_size(names[1], config.frames, lambda frames: turntable_bytes(config, panels, frames=frames), "cpu")


def write_turntable(
    scene: Scene,
    config: TurntableConfig,
    out_dir: Path,
    panels: tuple[Panel, ...] = DEFAULT_PANELS,
    stem: str = "turntable",
    include: tuple[TurntableFile, ...] = ("gif", "mp4", "preview"),
) -> TurntableOutputs:
    """turntable.mp4 and turntable.gif (panels side by side) and preview.png (8 shaded views, 2 rows of 4);
    ``include`` picks which of them to write."""
    written: list[Path] = []
    mp4_error = None
    scale = _upscale_factor(config.resolution)
    if "gif" in include or "mp4" in include:
        frames = render_panels(scene, turntable_cameras(config), panels)
        if "gif" in include:
            write_gif(_upscale(frames, max(1, scale // 2)), out_dir / f"{stem}.gif")
            written.append(out_dir / f"{stem}.gif")
        if "mp4" in include:
            try:
                write_mp4(_upscale(frames, scale), out_dir / f"{stem}.mp4")
                written.append(out_dir / f"{stem}.mp4")
            except RuntimeError as error:
                mp4_error = str(error)
    if "preview" in include:
        views = render_panels(scene, turntable_cameras(replace(config, frames=8)), ("lambertian",))
        grid = np.concatenate([np.concatenate(list(views[row * 4 : row * 4 + 4]), axis=1) for row in range(2)], axis=0)
        write_png(_upscale(grid, max(1, scale // 2)), out_dir / "preview.png")
        written.append(out_dir / "preview.png")
    return TurntableOutputs(written=written, mp4_error=mp4_error)
