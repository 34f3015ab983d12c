"""The object library: names, colours, held-out pairs, captions, SDF sanity and occupancy grids."""

from __future__ import annotations

import math

import pytest
import torch

from dreamfusion.procedural import sdf as S
from dreamfusion.procedural.objects import (
    COLOURS,
    DETAILED_KINDS,
    HELD_OUT_PAIRS,
    OBJECT_KINDS,
    OBJECT_RADIUS,
    SDF_FUNCTIONS,
    caption,
    grid_points,
    is_held_out,
    object_albedo,
    object_sdf,
    occupancy_grid,
    training_pairs,
)

INSIDE_POINTS = {
    "chair": (0.0, 0.0, -0.08),
    "table": (0.0, 0.0, 0.0),
    "house": (0.0, 0.0, -0.25),
    "mug": (0.2, 0.0, -0.2),
    "snowman": (0.0, 0.0, -0.25),
    "car": (0.0, 0.0, -0.25),
    "lamp": (-0.12, 0.0, -0.425),
    "rocket": (0.0, 0.0, 0.0),
    "cube": (0.0, 0.0, 0.0),
    "sphere": (0.0, 0.0, 0.0),
    "cylinder": (0.0, 0.0, 0.0),
    "cone": (0.0, 0.0, 0.0),
    "torus": (0.3, 0.0, 0.0),
}


def test_names_colours_and_held_out_pairs() -> None:
    assert OBJECT_KINDS == (
        "chair", "table", "house", "mug", "snowman", "car", "lamp", "rocket",
        "cube", "sphere", "cylinder", "cone", "torus",
    )  # fmt: skip
    assert len(COLOURS) >= 8
    for name, rgb in COLOURS.items():
        assert name.isalpha() and name.islower()
        assert len(rgb) == 3 and all(0.0 <= v <= 1.0 for v in rgb)
    assert len(HELD_OUT_PAIRS) == len(set(HELD_OUT_PAIRS)) == 10
    train = training_pairs()
    assert len(train) == len(COLOURS) * len(OBJECT_KINDS) - 10
    for colour, obj in HELD_OUT_PAIRS:
        assert colour in COLOURS and obj in OBJECT_KINDS and is_held_out(colour, obj)
        assert (colour, obj) not in train
        assert any(c == colour for c, _ in train) and any(o == obj for _, o in train)
    assert not is_held_out("red", "chair")


def test_caption() -> None:
    assert caption("red", "chair") == "a red chair"
    assert caption("red", "chair", "front") == "a red chair, front view"
    assert caption("orange", "lamp", "overhead") == "an orange lamp, overhead view"


def test_sdf_signs() -> None:
    far = torch.tensor([[3.0, 2.0, 1.0], [-2.0, 0.5, -2.5]])
    for kind in OBJECT_KINDS:
        assert (SDF_FUNCTIONS[kind](far) > 1.0).all(), kind
        assert SDF_FUNCTIONS[kind](torch.tensor([INSIDE_POINTS[kind]])).item() < 0.0, kind


def test_object_sdf_mixes_kinds_per_point() -> None:
    points = torch.rand(300, 3, generator=torch.Generator().manual_seed(0)) * 1.6 - 0.8
    kinds = torch.arange(300) % len(OBJECT_KINDS)
    mixed = object_sdf(kinds, points)
    for k, kind in enumerate(OBJECT_KINDS):
        assert torch.allclose(mixed[kinds == k], SDF_FUNCTIONS[kind](points[kinds == k]))
    assert torch.equal(object_sdf(2, points), SDF_FUNCTIONS["house"](points))


@pytest.mark.parametrize("kind", OBJECT_KINDS)
def test_sdf_is_a_distance_bound(kind: str) -> None:
    """Sphere tracing needs |f(p) - f(q)| <= |p - q| (a lower bound on the distance never overshoots)."""
    gen = torch.Generator().manual_seed(1)
    p = torch.rand(4000, 3, generator=gen) * 1.6 - 0.8
    q = p + 0.05 * torch.randn(4000, 3, generator=gen)
    f = SDF_FUNCTIONS[kind]
    ratio = (f(p) - f(q)).abs() / (p - q).norm(dim=-1)
    assert ratio.max().item() < 1.02


def test_primitives() -> None:
    p = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 2.0], [1.0, 1.0, 0.0]])
    assert torch.allclose(S.sphere(p, 0.5), torch.tensor([-0.5, 0.5, 1.5, math.sqrt(2) - 0.5]))
    assert torch.allclose(S.box(p, (0.5, 0.5, 0.5)), torch.tensor([-0.5, 0.5, 1.5, math.sqrt(0.5)]))
    assert torch.allclose(S.capped_cylinder(p, 0.5, 0.5), torch.tensor([-0.5, 0.5, 1.5, math.sqrt(2) - 0.5]))
    assert torch.allclose(S.capped_cone(p, 0.5, 0.5, 0.5), S.capped_cylinder(p, 0.5, 0.5), atol=1e-6)
    assert S.capped_cone(torch.tensor([[0.0, 0.0, 0.6]]), 0.5, 0.5, 0.0).item() == pytest.approx(0.1, abs=1e-6)
    assert torch.allclose(S.torus(p, 1.0, 0.25), torch.tensor([0.75, -0.25, math.sqrt(5) - 0.25, math.sqrt(2) - 1.25]))
    assert S.capsule(p[:1], (-1.0, 0.0, 0.0), (1.0, 0.0, 0.0), 0.1).item() == pytest.approx(-0.1)
    # Transforms move points into the shape's frame: a box rotated 90 degrees about z swaps its x and y extents.
    rotated = S.box(S.rotate(torch.tensor([[0.0, 0.9, 0.0]]), "z", 90.0), (1.0, 0.1, 0.1))
    assert rotated.item() < 0.0
    along_x = S.capped_cylinder(S.align_z(torch.tensor([[0.9, 0.0, 0.0]]), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0)), 0.1, 1.0)
    assert along_x.item() < 0.0
    assert S.capped_cylinder(S.swizzle(torch.tensor([[0.0, 0.9, 0.0]]), "y"), 0.1, 1.0).item() < 0.0


def test_sphere_occupancy_volume() -> None:
    occupancy = occupancy_grid("sphere", resolution=64, bound=1.0)
    voxel = 2.0 / 63
    volume = occupancy.sum().item() * voxel**3
    assert volume == pytest.approx(4.0 / 3.0 * math.pi * 0.38**3, rel=0.03)


@pytest.mark.parametrize("kind", OBJECT_KINDS)
def test_occupancy_fits_inside_the_radius(kind: str) -> None:
    occupancy = occupancy_grid(kind, resolution=48, bound=1.0)
    assert occupancy.dtype == torch.bool and occupancy.shape == (48, 48, 48)
    assert occupancy.sum() > 50
    radius = grid_points(48, 1.0)[occupancy].norm(dim=-1).max().item()
    assert radius <= min(OBJECT_RADIUS, 0.8)


def test_occupancy_axis_order_and_orientation() -> None:
    """Indexing is [x, y, z]: the mug's handle is on +y, the chair's backrest rises at -x."""
    axis = torch.linspace(-1.0, 1.0, 64)
    mug = occupancy_grid("mug", resolution=64)
    assert mug[:, axis > 0.28].any() and not mug[:, axis < -0.28].any()
    chair = occupancy_grid("chair", resolution=64)
    high = chair[:, :, axis > 0.1]
    assert high[axis < -0.15].any() and not high[axis > 0.0].any()


def test_albedo_details() -> None:
    red = COLOURS["red"]
    nose_tip, belly = torch.tensor([[0.23, 0.0, 0.265]]), torch.tensor([[0.0, 0.0, -0.46]])
    albedo = object_albedo("snowman", torch.cat((nose_tip, belly)), red)
    assert not torch.allclose(albedo[0], torch.tensor(red)) and albedo[0, 0] > 0.9
    assert torch.allclose(albedo[1], torch.tensor(red))
    assert {"house", "snowman", "car"} <= DETAILED_KINDS and "sphere" not in DETAILED_KINDS
    door = object_albedo("house", torch.tensor([[0.31, 0.0, -0.35]]), red)
    assert door.max() < 0.3


def test_turned_occupancy_is_the_grid_turned_about_the_vertical_axis() -> None:
    chair = occupancy_grid("chair", resolution=32)
    turned = occupancy_grid("chair", resolution=32, turn_degrees=90.0)
    # Counter-clockwise seen from above: the front (+x) turns to +y, so turned[i, j] = chair[j, R - 1 - i].
    assert (turned == torch.rot90(chair, 1, dims=(0, 1))).float().mean() > 0.999
    assert not torch.equal(turned, chair)
    assert torch.equal(occupancy_grid("chair", resolution=32, turn_degrees=360.0), chair)
