"""The procedural sphere tracer on the sphere (radius 0.38 at the origin), whose renders are known by hand:
where rays hit and at what depth, the silhouette's size, the colour in each shading mode, and the background
everywhere else. A coarse 32^3 bake keeps it fast."""

from __future__ import annotations

import math

import pytest
import torch

from dreamfusion.cameras import cameras_from_angles
from dreamfusion.procedural import OBJECT_KINDS, Backgrounds, TraceConfig, render_objects
from dreamfusion.procedural.render import sphere_trace

TRACE = TraceConfig(grid_resolution=32)
SPHERE, CUBE = OBJECT_KINDS.index("sphere"), OBJECT_KINDS.index("cube")
RADIUS, HALF_SIDE = 0.38, 0.28  # of the sphere and the cube in procedural.objects
MAGENTA = (1.0, 0.0, 1.0)


def _front_cameras(count: int, resolution: int = 32, distance: float = 1.5) -> object:
    """Cameras on the +x axis looking at the origin, focal length one image width."""
    return cameras_from_angles(
        torch.zeros(count), torch.zeros(count), torch.full((count,), distance), torch.ones(count), resolution
    )


def _render(kinds: list[int], modes: list[str], backgrounds: Backgrounds | None = None, resolution: int = 32) -> tuple:
    count = len(kinds)
    return render_objects(
        torch.tensor(kinds),
        torch.tensor(MAGENTA).expand(count, 3),
        _front_cameras(count, resolution),
        modes,
        Backgrounds.white(count) if backgrounds is None else backgrounds,
        supersample=1,
        config=TRACE,
    )


def test_trace_config_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="must exceed the object radius"):
        TraceConfig(bound=0.6)
    for bad in (dict(max_steps=0), dict(grid_resolution=4), dict(step_safety=0.0), dict(step_safety=1.5)):
        with pytest.raises(ValueError, match="max_steps must be positive"):
            TraceConfig(**bad)


def test_rays_hit_the_sphere_at_its_surface_and_miss_beside_it() -> None:
    """From x = -2 along +x the surface is 2 - 0.38 away; the same ray raised to z = 0.5 passes the sphere."""
    origins = torch.tensor([[-2.0, 0.0, 0.0], [-2.0, 0.0, 0.5], [0.0, -2.0, 0.2]])
    directions = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    hit, depth = sphere_trace(origins, directions, torch.full((3,), SPHERE), TRACE)
    assert hit.tolist() == [True, False, True]
    assert depth[0].item() == pytest.approx(2.0 - RADIUS, abs=0.01)
    assert depth[2].item() == pytest.approx(2.0 - math.sqrt(RADIUS**2 - 0.2**2), abs=0.01)


def test_the_silhouette_of_the_sphere_has_its_projected_size() -> None:
    """At distance 1.5 with a focal length of 32 px the sphere's outline is a disc of radius
    32 tan(asin(0.38 / 1.5)) = 8.38 px centred in the image; everything outside is white background."""
    rgb, alpha = _render([SPHERE], ["albedo"])
    assert rgb.shape == (1, 3, 32, 32) and alpha.shape == (1, 1, 32, 32)
    assert set(alpha.unique().tolist()) <= {0.0, 1.0}  # no supersampling: hard edges
    disc = math.pi * (32 * math.tan(math.asin(RADIUS / 1.5))) ** 2
    assert alpha.sum().item() == pytest.approx(disc, rel=0.05)
    rows, cols = alpha[0, 0].nonzero(as_tuple=True)
    assert rows.float().mean().item() == pytest.approx(15.5, abs=0.3)
    assert cols.float().mean().item() == pytest.approx(15.5, abs=0.3)
    inside, outside = alpha[0, 0] > 0.5, alpha[0, 0] < 0.5
    assert (rgb[0][:, inside] == torch.tensor(MAGENTA)[:, None]).all()  # albedo: the body colour itself
    assert (rgb[0][:, outside] == 1.0).all()


def test_the_cube_shows_a_square_silhouette() -> None:
    """The cube's front face (half side 0.28, 1.22 from the camera) spans 32 * 0.28 / 1.22 = 7.3 px either side
    of the centre along the image's rows and columns, while its corners are background-free."""
    _, alpha = _render([CUBE], ["albedo"])
    mask = alpha[0, 0] > 0.5
    half_width = 32 * HALF_SIDE / (1.5 - HALF_SIDE)
    assert mask[15].sum().item() == pytest.approx(2 * half_width, abs=2.0)
    assert mask[:, 15].sum().item() == pytest.approx(2 * half_width, abs=2.0)
    assert mask[10, 10] and mask[21, 21] and not mask[4, 4]


def test_shading_modes_on_the_sphere() -> None:
    """The light sits at the camera: the centre faces it (lambert 1, so 0.1 + 0.9 = 1), the limb faces away
    from it. Textureless is grey, lambertian is the albedo times the same intensity."""
    rgb, alpha = _render([SPHERE, SPHERE], ["textureless", "lambertian"])
    inside = alpha[0, 0] > 0.5
    textureless, lambertian = rgb[0][:, inside], rgb[1][:, inside]
    assert (textureless[0] == textureless[1]).all() and (textureless[1] == textureless[2]).all()
    assert rgb[0, :, 15:17, 15:17].min().item() > 0.95
    assert textureless.min().item() < 0.6  # the limb is darker
    torch.testing.assert_close(lambertian[0], textureless[0])
    assert (lambertian[1] == 0).all()  # magenta has no green
    assert torch.equal(alpha[0], alpha[1])


def test_a_batch_renders_each_image_with_its_own_kind() -> None:
    together_rgb, together_alpha = _render([SPHERE, CUBE], ["albedo", "albedo"])
    sphere_rgb, sphere_alpha = _render([SPHERE], ["albedo"])
    cube_rgb, cube_alpha = _render([CUBE], ["albedo"])
    assert torch.equal(together_alpha, torch.cat((sphere_alpha, cube_alpha)))
    assert torch.equal(together_rgb, torch.cat((sphere_rgb, cube_rgb)))


def test_render_objects_wants_one_kind_and_mode_per_camera() -> None:
    with pytest.raises(ValueError, match="one kind, colour and shading mode per camera"):
        _render([SPHERE, SPHERE], ["albedo"])


def test_solid_backgrounds_fill_the_image_where_nothing_is_hit() -> None:
    colours = torch.tensor([[0.2, 0.4, 0.6]])
    rgb, alpha = _render([SPHERE], ["albedo"], Backgrounds.solid(colours))
    outside = alpha[0, 0] < 0.5
    assert (rgb[0][:, outside] - colours[0][:, None]).abs().max().item() < 1e-6


def test_a_gradient_background_runs_from_bottom_to_top_by_the_ray_height() -> None:
    """Smoothstep of (z + 1) / 2: straight down is the bottom colour, straight up the top, level halfway."""
    backgrounds = Backgrounds(
        bottom=torch.zeros(1, 3), top=torch.ones(1, 3),
        wave_amplitude=torch.zeros(1), wave_vector=torch.zeros(1, 3), wave_phase=torch.zeros(1, 3),
    )  # fmt: skip
    directions = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]).view(1, 1, 3, 3)
    assert backgrounds.colour(directions)[0, 0, :, 0].tolist() == pytest.approx([0.0, 1.0, 0.5], abs=1e-6)


def test_sampled_backgrounds_are_solid_without_environments_and_repeat_with_the_seed() -> None:
    solid = Backgrounds.sample(8, 0.0, torch.Generator().manual_seed(3))
    assert torch.equal(solid.bottom, solid.top) and not solid.wave_amplitude.any()
    again = Backgrounds.sample(8, 0.0, torch.Generator().manual_seed(3))
    assert torch.equal(solid.bottom, again.bottom)
    environments = Backgrounds.sample(8, 1.0, torch.Generator().manual_seed(3))
    assert (environments.wave_amplitude > 0).all() and not torch.equal(environments.bottom, environments.top)
