import math
from dataclasses import replace

import pytest
import torch
from helpers import empty_tiny_field, tiny_config
from torch import nn

from dreamfusion.cameras import TurntableConfig, turntable_cameras
from dreamfusion.field import FieldConfig, FieldOutput, NeRFField
from dreamfusion.geometry import Geometry
from dreamfusion.renderer import (
    OccupancyGrid,
    RendererConfig,
    compacts_samples,
    compositing_weights,
    ray_sphere_interval,
    render,
)
from dreamfusion.shading import Background, BackgroundConfig


class SphereField(nn.Module):
    """A solid ball of radius r and uniform albedo, with exact outward normals."""

    def __init__(self, radius: float, albedo: tuple[float, float, float] = (0.8, 0.2, 0.1)) -> None:
        super().__init__()
        self.bound = FieldConfig().bound
        self.radius = radius
        self.anchor = nn.Parameter(torch.zeros(1))
        self.albedo = torch.tensor(albedo)

    def density(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x.norm(dim=-1) < self.radius, 200.0, 0.0) + 0 * self.anchor

    def forward(self, x: torch.Tensor, with_normals: bool = False) -> FieldOutput:
        normals = torch.nn.functional.normalize(x, dim=-1) if with_normals else None
        return FieldOutput(self.density(x), self.albedo.expand(x.shape[0], 3), normals)


def _render(mode: str, with_normals: bool = False):
    cameras = turntable_cameras(TurntableConfig(frames=2, elevation=0.0, distance=1.5, focal_multiplier=1.0, resolution=64))
    background = Background(BackgroundConfig(kind="random_solid", eval_colour=(0.0, 1.0, 0.0)))
    field = SphereField(0.5)
    out = render(field, background, cameras, RendererConfig(num_samples=256), shading=mode, with_normals=with_normals)  # type: ignore[arg-type]
    return cameras, out


def test_sphere_renders_a_disc_of_the_right_radius() -> None:
    cameras, out = _render("albedo")
    # A ball of radius r seen from distance d subtends asin(r/d); in pixels that is f * tan(asin(r / d)).
    expected_px = 64 * math.tan(math.asin(0.5 / 1.5))
    rows = (torch.arange(64) + 0.5 - 32).abs()
    radius_px = (rows[:, None] ** 2 + rows[None, :] ** 2).sqrt()
    inside, outside = radius_px < expected_px - 1.5, radius_px > expected_px + 1.5
    opacity = out.opacity[0, ..., 0]
    assert opacity[inside].min() > 0.99
    assert opacity[outside].max() < 0.01
    # Inside the disc the colour is the albedo; outside, the background.
    assert torch.allclose(out.rgb[0][inside], torch.tensor([0.8, 0.2, 0.1]), atol=0.01)
    assert torch.allclose(out.rgb[0][outside], torch.tensor([0.0, 1.0, 0.0]), atol=0.01)
    # Depth at the centre is the distance to the front of the ball.
    assert abs(out.depth[0, 31:33, 31:33].mean().item() - 1.0) < 0.02


def test_sphere_normals_point_outward() -> None:
    cameras, out = _render("albedo", with_normals=True)
    inside = out.opacity[0, ..., 0] > 0.999
    normals = torch.nn.functional.normalize(out.normals[0][inside], dim=-1)
    # The surface point along each ray, from depth, gives the true outward normal of the ball.
    points = cameras.rays_o[0][inside] + cameras.rays_d[0][inside] * out.depth[0][inside]
    cosine = (normals * torch.nn.functional.normalize(points, dim=-1)).sum(-1)
    assert cosine.min() > 0.99


def test_textureless_shades_white_albedo() -> None:
    _, lambertian = _render("lambertian")
    _, textureless = _render("textureless")
    inside = lambertian.opacity[0, ..., 0] > 0.999
    # Textureless is the light intensity alone: grey levels, equal in r, g and b (up to the 0.1% of green
    # background that an opacity of 0.999 lets through).
    tex = textureless.rgb[0][inside]
    assert torch.allclose(tex[:, 0], tex[:, 2], atol=1e-5) and torch.allclose(tex[:, 1], tex[:, 2], atol=2e-3)
    # The light sits at the camera: full diffuse + ambient light facing it, ambient only at grazing angles.
    assert tex.max() > 0.99 and tex.min() < 0.3
    # Lambertian is that intensity times the albedo.
    assert torch.allclose(lambertian.rgb[0][inside], tex * torch.tensor([0.8, 0.2, 0.1]), atol=2e-3)


def test_ray_sphere_interval_and_compositing() -> None:
    origins = torch.tensor([[0.0, 0.0, -3.0], [0.0, 2.0, -3.0], [0.0, 0.0, 0.0]])
    directions = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    near, far, hit = ray_sphere_interval(origins, directions, 1.0, 0.05)
    assert hit.tolist() == [True, False, True]
    assert torch.allclose(near[0], torch.tensor(2.0)) and torch.allclose(far[0], torch.tensor(4.0))
    assert torch.allclose(near[2], torch.tensor(0.05)) and torch.allclose(far[2], torch.tensor(1.0))
    t = torch.tensor([[0.0, 1.0, 2.0]])
    weights = compositing_weights(torch.tensor([[0.0, 1e4, 1e4]]), t, torch.tensor([3.0]))
    assert torch.allclose(weights, torch.tensor([[0.0, 1.0, 0.0]]), atol=1e-4)


def test_occupancy_grid_skips_only_empty_space() -> None:
    field = SphereField(0.5)
    grid = OccupancyGrid.from_field(field, resolution=32)
    assert grid.query(torch.tensor([[0.0, 0.0, 0.0], [1.2, 0.0, 0.0]])).tolist() == [True, False]
    cameras = turntable_cameras(TurntableConfig(frames=1, resolution=32))
    background = Background(BackgroundConfig())
    full = render(field, background, cameras, RendererConfig(num_samples=128))
    skipped = render(field, background, cameras, RendererConfig(num_samples=128), occupancy=grid)
    assert torch.allclose(full.rgb, skipped.rgb, atol=1e-5)


class HardSphere:
    """A geometry that is no NeRF: a solid sphere of one colour, with a sharp edge, inside a tight bound."""

    def __init__(self, radius: float, albedo: tuple[float, float, float]) -> None:
        self.radius, self.albedo = radius, torch.tensor(albedo)

    @property
    def bound(self) -> float:
        return 0.6

    def density(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x.norm(dim=-1) < self.radius, 1000.0, 0.0)

    def __call__(self, x: torch.Tensor, with_normals: bool = False) -> FieldOutput:
        normals = torch.nn.functional.normalize(x, dim=-1) if with_normals else None
        return FieldOutput(self.density(x), self.albedo.expand(x.shape[0], 3), normals)


def test_any_geometry_renders_its_silhouette_and_depth() -> None:
    sphere: Geometry = HardSphere(0.5, (0.3, 0.6, 0.9))
    distance, size = 2.0, 32
    cameras = turntable_cameras(TurntableConfig(frames=1, elevation=30.0, distance=distance, resolution=size))
    out = render(sphere, _backdrop((0.0, 0.0, 0.0)), cameras, RendererConfig(num_samples=256), shading="lambertian")
    # The disc the sphere covers: radius f * tan(asin(r / d)) pixels about the centre (focal length = size).
    disc = size * math.tan(math.asin(0.5 / distance))
    offsets = (torch.arange(size) + 0.5 - size / 2).abs()
    from_centre = (offsets[:, None] ** 2 + offsets[None, :] ** 2).sqrt()
    opacity = out.opacity[0, ..., 0]
    assert opacity[from_centre < disc - 1].min() > 0.99
    assert opacity[from_centre > disc + 1].max() < 0.01
    centre = out.depth[0, size // 2 - 1 : size // 2 + 1, size // 2 - 1 : size // 2 + 1]
    assert abs(centre.mean().item() - (distance - 0.5)) < 0.01  # within about a sample spacing, 1.2 / 256


# ----- zero samples: empty fields, empty grids and rays that miss --------------------------------------

def _tiny_cameras(frames: int = 2, resolution: int = 8):
    return turntable_cameras(TurntableConfig(frames=frames, resolution=resolution))


def _backdrop(colour=(0.2, 0.4, 0.6)) -> Background:
    return Background(BackgroundConfig(kind="random_solid", eval_colour=colour))


def _assert_background(out, colour) -> None:
    assert torch.equal(out.opacity, torch.zeros_like(out.opacity))
    assert torch.equal(out.depth, torch.zeros_like(out.depth)) and torch.equal(out.normals, torch.zeros_like(out.normals))
    assert torch.equal(out.rgb, torch.tensor(colour).expand_as(out.rgb))


def _assert_backward_leaves_finite_grads(out, field) -> None:
    (out.rgb.mean() + out.opacity.mean()).backward()
    grads = [p.grad for p in field.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_an_empty_occupancy_grid_renders_the_background() -> None:
    torch.manual_seed(0)
    field = NeRFField(tiny_config().field)  # the blob: visible without the grid
    cameras, config = _tiny_cameras(), RendererConfig(num_samples=16)
    assert render(field, _backdrop(), cameras, config).opacity.max() > 0.5
    nothing = OccupancyGrid(torch.zeros(8, 8, 8, dtype=torch.bool), field.bound)
    out = render(field, _backdrop(), cameras, config, shading="lambertian", with_normals=True, occupancy=nothing)
    _assert_background(out, (0.2, 0.4, 0.6))
    _assert_backward_leaves_finite_grads(out, field)


def test_rays_that_miss_the_bounding_sphere_render_the_background() -> None:
    torch.manual_seed(0)
    field = NeRFField(tiny_config().field)
    towards = _tiny_cameras()
    # Cameras outside the sphere, looking away from it.
    away = replace(towards, rays_o=towards.rays_o * 3, rays_d=-towards.rays_d)
    config = RendererConfig(num_samples=16, num_importance=4)
    out = render(field, _backdrop(), away, config, shading="textureless", with_normals=True)
    _assert_background(out, (0.2, 0.4, 0.6))
    _assert_backward_leaves_finite_grads(out, field)


@pytest.mark.parametrize(
    ("shading", "with_normals", "num_importance"),
    [("lambertian", True, 0), ("textureless", False, 0), ("albedo", True, 8), ("lambertian", False, 8)],
)
def test_an_empty_field_renders_the_background(shading: str, with_normals: bool, num_importance: int) -> None:
    field = empty_tiny_field()
    config = RendererConfig(num_samples=16, num_importance=num_importance)
    out = render(field, _backdrop(), _tiny_cameras(), config, shading=shading, with_normals=with_normals)  # type: ignore[arg-type]
    _assert_background(out, (0.2, 0.4, 0.6))
    if with_normals or shading != "albedo":
        # No sample is significant: the normals pass had no samples at all.
        assert out.sample_normals is not None and not out.sample_normals.any()
    _assert_backward_leaves_finite_grads(out, field)


def test_training_an_empty_field_renders_the_augmented_background() -> None:
    field = empty_tiny_field()
    cameras = _tiny_cameras()
    background = _backdrop()
    config = RendererConfig(num_samples=16, num_importance=8)
    out = render(field, background, cameras, config, shading="lambertian", with_normals=True, training=True,
                 host_generator=torch.Generator().manual_seed(7), device_generator=torch.Generator().manual_seed(8))  # fmt: skip
    expected = background.colour(cameras.rays_d, background.draw(cameras.batch_size, torch.Generator().manual_seed(7), torch.device("cpu")))
    assert torch.equal(out.opacity, torch.zeros_like(out.opacity)) and torch.equal(out.rgb, expected)
    _assert_backward_leaves_finite_grads(out, field)


def test_zero_cameras_render_zero_images() -> None:
    field = empty_tiny_field()
    cameras = _tiny_cameras().subset(slice(0, 0))
    out = render(field, _backdrop(), cameras, RendererConfig(num_samples=16, num_importance=4), shading="lambertian")
    assert out.rgb.shape == (0, 8, 8, 3) and out.opacity.shape == out.depth.shape == (0, 8, 8, 1)
    assert out.weights.shape == (0, 64, 20)


def test_occupancy_grid_of_an_empty_field_is_empty() -> None:
    assert not OccupancyGrid.from_field(empty_tiny_field(), resolution=16).occupied.any()


@pytest.mark.parametrize("occupied", [False, True])
def test_rendering_without_compaction_gives_the_same_image_and_gradients(occupied: bool) -> None:
    """Querying every sample and masking the rest (as CUDA training renders do) matches querying only the
    samples that count: the images, the normals and every parameter's gradient."""
    torch.manual_seed(0)
    field = NeRFField(tiny_config().field)
    cameras = turntable_cameras(TurntableConfig(frames=2, elevation=20.0, distance=1.6, resolution=12))
    background = Background(BackgroundConfig(kind="random_solid", eval_colour=(0.2, 0.4, 0.6)))
    occupancy = OccupancyGrid.from_field(field, resolution=16, threshold=0.5) if occupied else None
    results = []
    for compaction in ("on", "off"):
        field.zero_grad()
        config = RendererConfig(num_samples=24, sample_compaction=compaction)
        out = render(field, background, cameras, config, shading="lambertian", with_normals=True, occupancy=occupancy)
        (out.rgb.square().sum() + out.normals.sum()).backward()
        results.append((out, {name: p.grad.clone() for name, p in field.named_parameters() if p.grad is not None}))
    (compact, compact_grads), (dense, dense_grads) = results
    assert compact.opacity.max() > 0.5 and compact.sample_normals is not None  # something was drawn and lit
    for name in ("rgb", "opacity", "depth", "normals", "weights", "sample_normals"):
        assert torch.allclose(getattr(compact, name), getattr(dense, name), atol=1e-5), name
    assert compact_grads.keys() == dense_grads.keys() and compact_grads
    for name, grad in compact_grads.items():
        scale = grad.abs().max().clamp(min=1e-12)
        assert ((grad - dense_grads[name]).abs().max() / scale) < 1e-4, name


def test_only_cuda_training_renders_skip_compaction_by_default() -> None:
    auto, on, off = RendererConfig(), RendererConfig(sample_compaction="on"), RendererConfig(sample_compaction="off")
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [compacts_samples(auto, training, device) for training in (True, False) for device in (cpu, cuda)] == [True, False, True, True]
    assert all(compacts_samples(on, training, cuda) for training in (True, False))
    assert not any(compacts_samples(off, training, cpu) for training in (True, False))
