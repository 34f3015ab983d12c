"""Shading by hand: the Lambertian formula at known angles, the three modes, the random choice of mode, the
direction encoding and the background's colour in training and evaluation."""

from __future__ import annotations

import math

import pytest
import torch

from dreamfusion.shading import (
    Background,
    BackgroundConfig,
    ShadingConfig,
    frequency_encoding,
    sample_shading_mode,
    shade,
)

UP = torch.tensor([[0.0, 0.0, 1.0]])
ORIGIN = torch.zeros(1, 3)
ALBEDO = torch.tensor([[0.5, 0.25, 1.0]])


@pytest.mark.parametrize(
    ("light", "intensity"),
    [
        ((0.0, 0.0, 3.0), 1.0),  # overhead: 0.9 * 1 + 0.1
        ((2.0, 0.0, 2.0), 0.9 * math.cos(math.pi / 4) + 0.1),  # at 45 degrees
        ((0.0, 5.0, 0.0), 0.1),  # grazing: ambient only
        ((0.0, 0.0, -1.0), 0.1),  # from behind: clamped to ambient
    ],
)
def test_textureless_and_lambertian_intensity(light: tuple[float, float, float], intensity: float) -> None:
    light_position = torch.tensor([light])
    textureless = shade(ALBEDO, UP, ORIGIN, light_position, "textureless")
    lambertian = shade(ALBEDO, UP, ORIGIN, light_position, "lambertian")
    assert textureless.tolist() == [pytest.approx([intensity] * 3, abs=1e-6)]
    assert lambertian.tolist() == [pytest.approx((ALBEDO[0] * intensity).tolist(), abs=1e-6)]


def test_the_light_direction_is_from_each_point_to_the_light() -> None:
    """A point at (2, 0, 0) lit from (2, 0, 1) is lit head-on whatever the origin sees."""
    lit = shade(ALBEDO, UP, torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([[2.0, 0.0, 1.0]]), "textureless")
    assert lit.tolist() == [pytest.approx([1.0] * 3)]


def test_ambient_and_diffuse_weights() -> None:
    light = torch.tensor([[0.0, 0.0, 1.0]])
    assert shade(ALBEDO, UP, ORIGIN, light, "textureless", ambient=0.3, diffuse=0.5)[0, 0].item() == pytest.approx(0.8)


def test_albedo_mode_returns_the_albedo_and_needs_no_normals() -> None:
    assert shade(ALBEDO, None, ORIGIN, UP, "albedo") is ALBEDO


def test_lit_modes_need_normals_and_a_known_mode() -> None:
    with pytest.raises(ValueError, match="needs normals"):
        shade(ALBEDO, None, ORIGIN, UP, "lambertian")
    with pytest.raises(ValueError, match="unknown shading mode 'glossy'"):
        shade(ALBEDO, UP, ORIGIN, UP, "glossy")  # type: ignore[arg-type]


def test_shading_config_refuses_out_of_range_values() -> None:
    with pytest.raises(ValueError, match="shaded_probability must lie in"):
        ShadingConfig(shaded_probability=1.5)
    with pytest.raises(ValueError, match="must be non-negative"):
        ShadingConfig(albedo_warmup_steps=-1)


def test_the_warm_up_renders_albedo_only() -> None:
    config = ShadingConfig(albedo_warmup_steps=100, shaded_probability=1.0)
    generator = torch.Generator().manual_seed(0)
    assert {sample_shading_mode(config, step, generator) for step in range(100)} == {"albedo"}
    assert sample_shading_mode(config, 100, generator) != "albedo"


def test_certain_probabilities_give_one_mode() -> None:
    generator = torch.Generator().manual_seed(0)
    always_lambertian = ShadingConfig(albedo_warmup_steps=0, shaded_probability=1.0, textureless_probability=0.0)
    always_textureless = ShadingConfig(albedo_warmup_steps=0, shaded_probability=1.0, textureless_probability=1.0)
    assert {sample_shading_mode(always_lambertian, 5, generator) for _ in range(50)} == {"lambertian"}
    assert {sample_shading_mode(always_textureless, 5, generator) for _ in range(50)} == {"textureless"}


def test_the_mode_follows_the_generator() -> None:
    config = ShadingConfig(albedo_warmup_steps=0)
    first = [sample_shading_mode(config, 10, torch.Generator().manual_seed(seed)) for seed in range(20)]
    again = [sample_shading_mode(config, 10, torch.Generator().manual_seed(seed)) for seed in range(20)]
    assert first == again and len(set(first)) == 3


def test_frequency_encoding_by_hand() -> None:
    """[x, sin(pi x), cos(pi x), sin(2 pi x), cos(2 pi x)] at x = 1/4."""
    encoded = frequency_encoding(torch.tensor([[0.25]]), 2)
    half = math.sqrt(0.5)
    assert encoded[0].tolist() == pytest.approx([0.25, half, half, 1.0, 0.0], abs=1e-6)
    assert frequency_encoding(torch.zeros(5, 7, 3), 4).shape == (5, 7, 3 * (1 + 2 * 4))
    x = torch.randn(4, 3)
    assert frequency_encoding(x, 0) is x


def test_background_config_refuses_out_of_range_values() -> None:
    with pytest.raises(ValueError, match="random_solid_probability"):
        BackgroundConfig(random_solid_probability=-0.1)
    with pytest.raises(ValueError, match="hidden > 0"):
        BackgroundConfig(hidden=0)


def _directions() -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(2, 4, 4, 3, generator=torch.Generator().manual_seed(0)), dim=-1)


def test_random_solid_background_is_one_drawn_colour_per_image_in_training() -> None:
    background = Background(BackgroundConfig(kind="random_solid"))
    colour = background.colour(_directions(), background.draw(2, torch.Generator().manual_seed(7), torch.device("cpu")))
    expected = torch.rand(2, 3, generator=torch.Generator().manual_seed(7))
    assert colour.shape == (2, 4, 4, 3)
    assert torch.equal(colour, expected[:, None, None, :].expand(2, 4, 4, 3))


def test_random_solid_background_is_the_eval_colour_in_evaluation() -> None:
    background = Background(BackgroundConfig(kind="random_solid", eval_colour=(0.0, 0.5, 1.0)))
    colour = background.colour(_directions())
    assert (colour == torch.tensor([0.0, 0.5, 1.0])).all()


def test_learned_background_is_its_mlp_unless_swapped_for_a_solid() -> None:
    torch.manual_seed(0)
    learned = Background(BackgroundConfig(kind="mlp", random_solid_probability=0.0))
    swapped = Background(BackgroundConfig(kind="mlp", random_solid_probability=1.0))
    swapped.load_state_dict(learned.state_dict())
    directions = _directions()
    mlp = learned(directions)
    assert ((mlp > 0) & (mlp < 1)).all() and mlp.std() > 0
    assert torch.equal(learned.colour(directions), mlp)
    assert torch.equal(learned.colour(directions, learned.draw(2, torch.Generator().manual_seed(1), torch.device("cpu"))), mlp)
    solid = swapped.colour(directions, swapped.draw(2, torch.Generator().manual_seed(1), torch.device("cpu")))
    assert torch.equal(solid, torch.rand(2, 3, generator=torch.Generator().manual_seed(1))[:, None, None].expand_as(solid))
