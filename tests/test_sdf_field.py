import math

import pytest
import torch

from dreamfusion.cameras import cameras_from_angles
from dreamfusion.field import FieldConfig, FieldOutput, HashGridConfig
from dreamfusion.geometry import Geometry
from dreamfusion.renderer import RendererConfig, render
from dreamfusion.sdf_field import SDFField, SDFFieldConfig, fit_to_density, laplace_cdf, loss_eikonal
from dreamfusion.shading import Background, BackgroundConfig

TINY_ENCODING = HashGridConfig(levels=4, log2_table_size=12, base_resolution=8, max_resolution=64, init_scale=0.5)


def _field(seed: int = 0, **options) -> SDFField:
    torch.manual_seed(seed)
    return SDFField(SDFFieldConfig(encoding=TINY_ENCODING, hidden=16, **options))


def _sphere(radius: float = 0.5, beta: float = 0.05) -> SDFField:
    """s(x) = |x| - radius exactly: the MLP's output zeroed, so the albedo is sigmoid(0) = 0.5."""
    field = _field(init_radius=radius, beta_init=beta, beta_min=min(beta, 1e-3))
    with torch.no_grad():
        field.mlp[-1].weight.zero_()
        field.mlp[-1].bias.zero_()
    return field


def _sphere_points(count: int, radius: float, seed: int) -> torch.Tensor:
    directions = torch.randn(count, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return torch.nn.functional.normalize(directions, dim=-1) * radius


def test_config_validates_and_takes_a_nerfs_sizes() -> None:
    for bad in ({"beta_min": 0.0}, {"beta_init": 0.01, "beta_min": 0.02}, {"init_radius": 1.5}, {"init_radius": 0.0}, {"hidden": 0}):
        with pytest.raises(ValueError):
            SDFFieldConfig(**bad)
    nerf = FieldConfig(encoding=TINY_ENCODING, hidden=32, layers=3, bound=1.2, normals="autograd")
    config = SDFFieldConfig.like(nerf, beta_init=0.1)
    assert (config.encoding, config.hidden, config.layers, config.bound, config.beta_init) == (TINY_ENCODING, 32, 3, 1.2, 0.1)
    assert config.field.normals == "analytic"  # the trainer's compiled wrapper accepts the field


def test_laplace_cdf_matches_hand_values_and_stays_finite() -> None:
    y = torch.tensor([0.0, -0.1, 0.2, -1e4, 1e4], requires_grad=True)
    values = laplace_cdf(y, 0.1)
    expected = torch.tensor([0.5, 0.5 * math.exp(-1.0), 1 - 0.5 * math.exp(-2.0), 0.0, 1.0])
    torch.testing.assert_close(values, expected)
    values.sum().backward()  # the pdf: 0.5 / beta * exp(-|y| / beta)
    torch.testing.assert_close(y.grad, torch.tensor([5.0, 5 * math.exp(-1.0), 5 * math.exp(-2.0), 0.0, 0.0]))


def test_density_is_half_over_beta_on_the_surface_and_one_over_beta_inside() -> None:
    field = _sphere(radius=0.5, beta=0.05).double()
    assert field.surface_level() == pytest.approx(10.0)
    x = torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.6, 0.0], [0.0, 0.0, -1.0]], dtype=torch.float64)
    # s = 0, -0.5 (10 beta inside), 0.1 (2 beta out), 0.5 (10 beta out).
    expected = torch.tensor([10.0, 20 * (1 - 0.5 * math.exp(-10)), 10 * math.exp(-2), 10 * math.exp(-10)], dtype=torch.float64)
    torch.testing.assert_close(field.density(x), expected)
    torch.testing.assert_close(field(x).albedo, torch.full((4, 3), 0.5, dtype=torch.float64))
    with torch.no_grad():
        field.log_beta.fill_(math.log(1e-5))
    assert field.beta.item() == pytest.approx(1e-3)  # clamped at beta_min


def test_a_fresh_field_is_the_init_sphere_with_outward_normals() -> None:
    field = _field(init_radius=0.4).double()  # random hash grid and MLP, and still the sphere
    x = _sphere_points(100, 0.4, seed=1) * torch.rand(100, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 3
    torch.testing.assert_close(field.sdf(x), x.norm(dim=-1) - 0.4)
    on_sphere = _sphere_points(100, 0.4, seed=3)
    normals = field(on_sphere, with_normals=True).normals
    torch.testing.assert_close(normals, on_sphere / 0.4)


def test_normals_and_sdf_gradient_equal_autograd() -> None:
    field = _field(seed=4).double()
    with torch.no_grad():
        field.mlp[-1].weight.normal_(0.0, 1.0)  # an SDF far from the sphere
    x = ((torch.rand(200, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64) - 0.5) * 3.2).requires_grad_(True)
    (expected,) = torch.autograd.grad(field.sdf(x).sum(), x)
    s, gradient = field.sdf_with_gradient(x)
    torch.testing.assert_close(s, field.sdf(x))
    torch.testing.assert_close(gradient, expected)
    torch.testing.assert_close(field(x, with_normals=True).normals, torch.nn.functional.normalize(expected, dim=-1))


def test_eikonal_loss_is_zero_for_a_distance_and_positive_for_a_scaled_one() -> None:
    _, gradient = _sphere().double().sdf_with_gradient(_sphere_points(100, 1.0, seed=6) * 0.9)
    assert loss_eikonal(gradient).item() == pytest.approx(0.0, abs=1e-12)
    assert loss_eikonal(2 * gradient).item() == pytest.approx(1.0)  # (2 - 1)^2
    assert loss_eikonal(0.5 * gradient).item() == pytest.approx(0.25)


def test_renders_the_sphere_silhouette_and_depth() -> None:
    field: Geometry = _sphere(radius=0.5, beta=0.01)
    resolution, distance = 33, 2.0
    cameras = cameras_from_angles(torch.tensor([20.0]), torch.tensor([30.0]), torch.tensor([distance]), torch.tensor([1.0]), resolution)
    background = Background(BackgroundConfig(kind="random_solid", eval_colour=(0.0, 1.0, 0.0)))
    out = render(field, background, cameras, RendererConfig(num_samples=128))
    origins, directions = cameras.rays_o.reshape(-1, 3), cameras.rays_d.reshape(-1, 3)
    # Pixels (1 / focal radians each) between the ray and the sphere's outline, seen from the camera.
    from_centre = torch.acos((-origins / distance * directions).sum(-1).clamp(max=1.0))
    outside_by = (from_centre - math.asin(0.5 / distance)) * resolution
    opacity, depth = out.opacity.reshape(-1), out.depth.reshape(-1)
    inside, outside = outside_by < -1.5, outside_by > 1.5
    assert inside.sum() > 100 and outside.sum() > 700
    assert opacity[inside].min() > 0.95 and opacity[outside].max() < 0.05
    # Ray-sphere entry distance: t = -b - sqrt(b^2 - c), b = o . d, c = |o|^2 - r^2.
    b = (origins * directions).sum(-1)
    entry = -b - (b * b - (distance**2 - 0.25)).clamp(min=0).sqrt()
    centre = resolution * resolution // 2
    assert entry[centre].item() == pytest.approx(distance - 0.5, abs=1e-5)
    assert depth[centre].item() == pytest.approx(distance - 0.5, abs=0.01)
    assert (depth - entry)[inside].abs().max() < 0.01
    torch.testing.assert_close(out.rgb.reshape(-1, 3)[inside], torch.full((int(inside.sum()), 3), 0.5), atol=0.03, rtol=0)


def test_render_gradients_reach_every_parameter_including_beta() -> None:
    field = _field(seed=7)
    cameras = cameras_from_angles(torch.tensor([10.0]), torch.tensor([0.0]), torch.tensor([1.6]), torch.tensor([1.0]), 12)
    background = Background(BackgroundConfig(kind="random_solid", eval_colour=(1.0, 1.0, 1.0)))
    out = render(field, background, cameras, RendererConfig(num_samples=32), shading="lambertian")
    (out.rgb - torch.tensor([0.9, 0.1, 0.1])).square().mean().backward()
    for name, parameter in field.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name
    assert field.log_beta.grad.abs() > 1e-6


class TwoSpheres:
    """A NeRF-like source: two overlapping balls of soft density (50 inside, 25 on the surface) and one
    colour each."""

    bound = 1.4
    centres = torch.tensor([[-0.3, 0.0, 0.05], [0.35, 0.1, -0.05]])
    radii = torch.tensor([0.4, 0.3])
    colours = torch.tensor([[0.8, 0.3, 0.2], [0.2, 0.5, 0.9]])

    def distances(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, None] - self.centres).norm(dim=-1) - self.radii

    def density(self, x: torch.Tensor) -> torch.Tensor:
        return 50 * torch.sigmoid(-self.distances(x).amin(-1) / 0.01)

    def __call__(self, x: torch.Tensor, with_normals: bool = False) -> FieldOutput:
        return FieldOutput(self.density(x), self.colours[self.distances(x).argmin(-1)], None)


def test_fit_to_density_takes_the_sources_shape_and_colours() -> None:
    source = TwoSpheres()
    torch.manual_seed(8)
    encoding = HashGridConfig(levels=4, log2_table_size=14, base_resolution=8, max_resolution=64)
    field = SDFField(SDFFieldConfig(encoding=encoding, hidden=16))
    result = fit_to_density(field, source, 25.0, 150, 1024, torch.Generator().manual_seed(9), learning_rate=0.05)
    assert result.iou >= 0.9
    assert result.eikonal_loss < 0.3 and result.albedo_loss < 0.01
    assert field.beta.item() == pytest.approx(0.05)  # the fit leaves beta to the surface stage
    with torch.no_grad():
        assert (field.sdf(source.centres) < -0.2).all() and (field.sdf(torch.tensor([[0.0, 0.9, 0.0]])) > 0.2).all()
        for ball in range(2):
            # Surface points of each ball away from where the colours meet (a discontinuity the grid smooths).
            points = source.centres[ball] + _sphere_points(2000, float(source.radii[ball]), seed=10 + ball).float()
            points = points[source.distances(points)[:, 1 - ball] > 0.1]
            assert field.sdf(points).abs().mean() < 0.02
            error = (field(points).albedo - source.colours[ball]).abs()
            assert error.mean() < 0.05, (ball, error.mean(0))


def test_fit_to_density_needs_a_surface() -> None:
    with pytest.raises(ValueError, match="no surface"):
        fit_to_density(_field(), TwoSpheres(), 100.0, 1, 16, torch.Generator())
