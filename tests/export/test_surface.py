"""The fitted surface level, the band the field is sampled in, and watertight solids (export/surface.py)."""

from __future__ import annotations

import math

import pytest
import torch
from export_fields import BallsField, SoftBall

from dreamfusion.export.surface import (
    COARSE_STEP,
    fine_resolution,
    fit_level,
    near_surface,
    ray_profiles,
    sample_coarse,
    sample_near_surface,
    solidify,
)  # fmt: skip
from dreamfusion.procedural.objects import grid_points


def _ball_grid(radius: float, peak: float, resolution: int = 64, bound: float = 1.4) -> torch.Tensor:
    r = grid_points(resolution, bound, torch.device("cpu")).norm(dim=-1)
    return peak * ((radius - r) / 0.01 + 0.5).clamp(0, 1)


def test_ray_profiles_integrate_density_across_the_ball() -> None:
    depth, peak = ray_profiles(_ball_grid(0.5, 4.0, resolution=96), 1.4, resolution=32)
    assert depth.shape == peak.shape == (20, 32 * 32)
    # The central rays of every view cross the ball's full diameter: optical depth 4 * 1.0.
    assert depth.max(dim=1).values.sub(4.0).abs().max() < 0.3
    assert peak.max() == pytest.approx(4.0, rel=1e-3)


def test_the_fitted_level_draws_the_rendered_outline() -> None:
    fit = fit_level(_ball_grid(0.5, 10.0, resolution=96), 1.4)
    assert 0 < fit.level < 10.0 and fit.outline_iou > 0.97
    with pytest.raises(ValueError, match="renders nothing opaque"):
        fit_level(_ball_grid(0.5, 0.1), 1.4)  # optical depth 0.1 across: a transparent haze


def test_the_band_holds_the_surface_and_the_fine_grid_agrees_with_the_field() -> None:
    field = SoftBall(peak=30.0)
    resolution = fine_resolution(64)
    assert (resolution - 1) % COARSE_STEP == 0
    coarse = sample_coarse(field, resolution, torch.device("cpu"))
    band = near_surface(coarse, 15.0)
    sampled = sample_near_surface(field, coarse, 15.0)
    assert sampled.resolution == resolution and 0 < band.float().mean() < 0.3
    points = grid_points(resolution, 1.4, torch.device("cpu"))
    exact = field.density(points.reshape(-1, 3)).reshape(points.shape[:3])
    near = (exact - 15.0).abs() < 14.0  # every point near the level was queried, with its albedo
    assert sampled.known[near].all() and torch.equal(sampled.density[sampled.known], exact[sampled.known])
    assert (sampled.albedo[sampled.known].sum(-1) > 0).all()
    assert (points.norm(dim=-1) > 1.4).any() and (sampled.density[points.norm(dim=-1) > 1.4] == 0).all()


def test_solidify_fills_a_sealed_cavity_and_leaves_open_ones() -> None:
    r = grid_points(32, 1.0, torch.device("cpu")).norm(dim=-1)
    shell = ((r > 0.5) & (r < 0.7)).float() * 10.0
    solid = solidify(shell, 5.0)
    assert (solid[r < 0.5] > 5.0).all()  # the sealed hollow is filled
    opened = shell.clone()
    opened[16:, 14:18, 14:18] = 0.0  # a tunnel four points wide to the outside: stays open
    assert (solidify(opened, 5.0)[r < 0.3] < 5.0).all()


def test_balls_field_outline_level_lies_where_the_renders_stop() -> None:
    # Density 20 exp(10 (0.6 - d)): the rendered outline lies well outside d = 0.6, where half opacity is
    # reached along a grazing ray; the fitted level moves the surface there too.
    field = BallsField([((0.0, 0.0, 0.0), 0.6)])
    coarse = sample_coarse(field, fine_resolution(96), torch.device("cpu"))
    fit = fit_level(coarse, 1.4)
    radius = 0.6 + math.log(20.0 / fit.level) / 10.0
    assert 0.75 < radius < 1.0 and fit.outline_iou > 0.9
