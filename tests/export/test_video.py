"""Turntable panels of export/video.py: chunked rendering, empty fields and empty camera batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import empty_tiny_field, tiny_config

from dreamfusion.cameras import CameraBatch, TurntableConfig, turntable_cameras
from dreamfusion.export.video import PANELS, render_panels, write_turntable
from dreamfusion.field import NeRFField
from dreamfusion.renderer import OccupancyGrid, RendererConfig
from dreamfusion.scene import Scene
from dreamfusion.shading import Background, BackgroundConfig, ShadingConfig


def _scene(field: NeRFField) -> Scene:
    # A coarse occupancy grid: the default 64^3 one would cost more than the renders.
    grid = OccupancyGrid.from_field(field, resolution=16)
    renderer = RendererConfig(num_samples=16, num_importance=4)
    return Scene(field, Background(BackgroundConfig()), renderer, ShadingConfig(), occupancy=grid)


def _blob_scene() -> Scene:
    torch.manual_seed(0)
    return _scene(NeRFField(tiny_config().field))


def _cameras(frames: int = 2, resolution: int = 12) -> CameraBatch:
    return turntable_cameras(TurntableConfig(frames=frames, resolution=resolution))


@pytest.mark.parametrize("max_rays", [5, 30, 144 + 7])  # under a row, bands of rows, whole images
def test_chunked_panels_equal_one_chunk(max_rays: int) -> None:
    scene, cameras = _blob_scene(), _cameras()
    whole = render_panels(scene, cameras, PANELS, max_rays=10**9)
    chunked = render_panels(scene, cameras, PANELS, max_rays=max_rays)
    assert whole.dtype == np.uint8 and whole.shape == (2, 12, 12 * len(PANELS), 3)
    assert 0.05 * 255 < whole.mean() < 0.95 * 255
    assert np.abs(chunked.astype(int) - whole.astype(int)).max() <= 1


def test_zero_cameras_give_an_empty_array_of_the_right_shape() -> None:
    frames = render_panels(_blob_scene(), _cameras().subset(slice(0, 0)), ("albedo", "depth"))
    assert frames.shape == (0, 12, 24, 3) and frames.dtype == np.uint8


def test_an_empty_field_renders_every_panel() -> None:
    frames = render_panels(_scene(empty_tiny_field()), _cameras(frames=2, resolution=8), PANELS, max_rays=20)
    panels = dict(zip(PANELS, np.split(frames, len(PANELS), axis=2), strict=True))
    # White background in the shaded panels and under the normals; no depth and no opacity anywhere.
    for name in ("lambertian", "albedo", "textureless", "normals"):
        assert (panels[name] == 255).all(), name
    assert not panels["depth"].any() and not panels["opacity"].any()


def test_turntable_of_an_empty_field_is_written(tmp_path: Path) -> None:
    outputs = write_turntable(_scene(empty_tiny_field()), TurntableConfig(frames=2, resolution=8), tmp_path, PANELS)
    names = [path.name for path in outputs.written]
    assert names[0] == "turntable.gif" and names[-1] == "preview.png"
    assert all(path.is_file() for path in outputs.written)
    assert ("turntable.mp4" in names) != bool(outputs.mp4_error)  # written, or the reason it was not
