"""Mesh fidelity (export/fidelity.py): a mesh drawn like the field it came from, its colours, its occupancy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("skimage", reason="mesh export needs scikit-image")

from export_fields import BLUE, RED, BallsField, SoftBall  # noqa: E402

from dreamfusion.cameras import TurntableConfig, turntable_cameras  # noqa: E402
from dreamfusion.export.fidelity import FIDELITY_CAMERAS, mesh_fidelity, mesh_occupancy, render_mesh  # noqa: E402
from dreamfusion.export.mesh import MeshExportConfig, extract_mesh  # noqa: E402
from dreamfusion.procedural.objects import grid_points  # noqa: E402
from dreamfusion.renderer import RendererConfig  # noqa: E402
from dreamfusion.scene import Scene  # noqa: E402
from dreamfusion.shading import ShadingConfig  # noqa: E402


def _scene(field) -> Scene:
    return Scene(field, None, RendererConfig(num_samples=128), ShadingConfig())  # type: ignore[arg-type]


@pytest.mark.parametrize("textured", [pytest.param(True, marks=pytest.mark.slow), False])
def test_the_mesh_of_a_ball_matches_its_field_in_outline_and_colour(textured: bool) -> None:
    field = SoftBall(peak=50.0, inside=RED, outside=BLUE, below=BLUE)
    # The fit sees the field through its grid, whose interpolation blurs a crisp edge by up to half a step
    # (0.011 here): the outline is right to about that.
    mesh = extract_mesh(field, MeshExportConfig(resolution=128, texture_size=128, vertex_colors=not textured))
    cameras = turntable_cameras(TurntableConfig(frames=3, elevation=20.0, distance=3.0, focal_multiplier=1.2, resolution=64))
    fidelity = mesh_fidelity(_scene(field), mesh, cameras)
    assert fidelity.views == 3
    assert fidelity.silhouette_iou > 0.95
    assert fidelity.colour_difference < 0.05  # red top, blue bottom, on both


def test_a_mesh_of_another_shape_scores_low() -> None:
    wide = extract_mesh(SoftBall(peak=50.0, radius=0.7), MeshExportConfig(resolution=48, vertex_colors=True))
    narrow = _scene(SoftBall(peak=50.0, radius=0.35, inside=BLUE, outside=BLUE))
    cameras = turntable_cameras(TurntableConfig(frames=2, distance=3.0, focal_multiplier=1.2, resolution=32))
    fidelity = mesh_fidelity(narrow, wide, cameras)
    assert fidelity.silhouette_iou < (0.35 / 0.7) ** 2 + 0.05  # the outlines' area ratio
    assert fidelity.colour_difference > 0.4  # red against blue


def test_render_mesh_draws_the_nearest_surface_in_its_colours() -> None:
    mesh = extract_mesh(BallsField([((0.0, 0.0, 0.0), 0.5)]), MeshExportConfig(resolution=48, threshold=20.0, vertex_colors=True))
    cameras = turntable_cameras(TurntableConfig(frames=2, elevation=0.0, distance=3.0, focal_multiplier=1.2, resolution=32))
    image = render_mesh(mesh, cameras)
    # Seen from +x (azimuth 0) the near side is red; from -x (azimuth 180) blue.
    centre = image.colour[:, 16, 16]
    torch.testing.assert_close(centre[0], torch.tensor(RED), atol=0.03, rtol=0)
    torch.testing.assert_close(centre[1], torch.tensor(BLUE), atol=0.03, rtol=0)
    # The disc's area: radius 0.5 at distance 3 with a focal of 1.2 x 32 pixels.
    expected = math.pi * (0.5 / math.sqrt(3.0**2 - 0.5**2) * 1.2 * 32) ** 2
    assert abs(image.coverage[0].sum().item() / expected - 1) < 0.08
    assert FIDELITY_CAMERAS.distance > 1.4  # the default views lie outside the bounding sphere


@pytest.mark.slow
def test_mesh_occupancy_is_the_inside_of_the_closed_surface() -> None:
    mesh = extract_mesh(BallsField([((0.2, -0.1, 0.1), 0.5)]), MeshExportConfig(resolution=64, threshold=20.0))
    occupied = mesh_occupancy(mesh, 32, 1.0)  # the textured mesh: seams split its vertices, not its surface
    truth = (grid_points(32, 1.0, torch.device("cpu")) - torch.tensor([0.2, -0.1, 0.1])).norm(dim=-1) < 0.5
    agree = (occupied & truth).sum() / (occupied | truth).sum()
    assert agree > 0.93
    assert np.isclose(occupied.float().mean().item(), truth.float().mean().item(), rtol=0.1)
