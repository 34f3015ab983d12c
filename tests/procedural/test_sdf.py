"""Signed distance primitives, combinators and point transforms at points whose distances are known by hand:
the sign inside and outside, and exact distances along the axes, at edges and at corners."""

from __future__ import annotations

import math

import pytest
import torch

from dreamfusion.procedural import sdf as S


def _points(*rows: tuple[float, float, float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def _close(got: torch.Tensor, expected: list[float]) -> None:
    assert got.tolist() == pytest.approx(expected, abs=1e-6)


def test_sphere_distances_on_the_axes() -> None:
    p = _points((0, 0, 0), (0.7, 0, 0), (0, -0.2, 0), (0, 0, -1.5))
    _close(S.sphere(p, 0.5), [-0.5, 0.2, -0.3, 1.0])


def test_primitives_keep_any_leading_shape() -> None:
    p = torch.zeros(2, 4, 3)
    p[..., 0] = 2.0
    distances = S.sphere(p, 0.5)
    assert distances.shape == (2, 4) and (distances == 1.5).all()


def test_box_faces_edges_corners_and_inside() -> None:
    """Half extents (0.5, 0.25, 1): off a face the distance is along its normal, off an edge or a corner it is
    the Euclidean distance to it, and inside it is minus the distance to the nearest face."""
    p = _points((1.0, 0, 0), (0, 0.5, 0), (0.8, 0.65, 0), (0.8, 0.65, 1.4), (0.3, 0, 0), (0, 0, 0))
    _close(S.box(p, (0.5, 0.25, 1.0)), [0.5, 0.25, 0.5, math.sqrt(0.09 + 0.16 + 0.16), -0.2, -0.25])


def test_rounded_box_keeps_its_faces_and_cuts_its_corners() -> None:
    """Rounding 0.1 leaves the face centres where they were; the corner (0.5, 0.5, 0.5) now lies outside by
    |(0.1, 0.1, 0.1)| - 0.1."""
    p = _points((0.5, 0, 0), (0.6, 0, 0), (0.5, 0.5, 0.5))
    _close(S.box(p, (0.5, 0.5, 0.5), rounding=0.1), [0.0, 0.1, math.sqrt(0.03) - 0.1])


def test_capped_cylinder_side_caps_rim_and_inside() -> None:
    """Radius 0.5 and half height 1 along z."""
    p = _points((0.8, 0, 0), (0, 0, 1.25), (0, 0, -1.25), (0.8, 0, 1.4), (0, 0.3, 0.5), (0, 0, 0))
    _close(S.capped_cylinder(p, 0.5, 1.0), [0.3, 0.25, 0.25, 0.5, -0.2, -0.5])


def test_capped_cone_apex_base_rim_and_inside() -> None:
    """Bottom radius 0.5 at z = -0.5 narrowing to a point at z = 0.5: above the apex and below the base the
    distance is along z, beyond the base rim it is to the rim, and the centre is inside."""
    p = _points((0, 0, 0.7), (0, 0, -0.8), (0.6, 0, -0.5), (0, 0, 0))
    got = S.capped_cone(p, 0.5, 0.5, 0.0)
    _close(got[:3], [0.2, 0.3, 0.1])
    # The centre is closest to the slanted side: the line 2x + z = 0.5 is 0.5 / sqrt(5) away.
    assert got[3].item() == pytest.approx(-0.5 / math.sqrt(5), abs=1e-6)


def test_torus_tube_centre_hole_and_above_the_tube() -> None:
    """Major radius 1, minor 0.25, in the xy plane."""
    p = _points((1, 0, 0), (0, -1, 0), (0, 0, 0), (1, 0, 0.75), (1.5, 0, 0))
    _close(S.torus(p, 1.0, 0.25), [-0.25, -0.25, 0.75, 0.5, 0.25])


def test_capsule_along_its_segment_and_beyond_its_ends() -> None:
    p = _points((0, 0.5, 0), (1.5, 0, 0), (-1.3, 0.4, 0), (0.3, 0, 0))
    _close(S.capsule(p, (-1.0, 0.0, 0.0), (1.0, 0.0, 0.0), 0.1), [0.4, 0.4, 0.4, -0.1])


def test_half_space_normalizes_its_normal_and_is_negative_opposite_it() -> None:
    p = _points((5, 5, 3), (0, 0, 0), (2, -7, 1))
    _close(S.half_space(p, (0.0, 0.0, 2.0), (0.0, 0.0, 1.0)), [2.0, -1.0, 0.0])


def test_union_intersection_and_subtraction_of_two_spheres() -> None:
    """Unit spheres at x = -0.5 and x = +0.5, probed at x = -1.2, 0 and 1.2 (and off to the side)."""
    p = _points((-1.2, 0, 0), (0, 0, 0), (1.2, 0, 0), (0, 3, 0))
    a = S.sphere(S.translate(p, (-0.5, 0.0, 0.0)), 1.0)
    b = S.sphere(S.translate(p, (0.5, 0.0, 0.0)), 1.0)
    _close(a, [-0.3, -0.5, 0.7, math.sqrt(9.25) - 1])
    _close(S.union(a, b), [-0.3, -0.5, -0.3, math.sqrt(9.25) - 1])
    _close(S.intersection(a, b), [0.7, -0.5, 0.7, math.sqrt(9.25) - 1])
    _close(S.subtraction(a, b), [-0.3, 0.5, 0.7, math.sqrt(9.25) - 1])
    _close(S.union(a, b, torch.full((4,), -2.0)), [-2.0] * 4)


def test_smooth_union_equals_union_far_apart_and_bulges_where_they_meet() -> None:
    """With k = 1: far apart (|a - b| >= k) it is the plain minimum; where a = b it is a - k / 4."""
    a, b = torch.tensor([0.0, 5.0, 0.3]), torch.tensor([3.0, 1.0, 0.3])
    _close(S.smooth_union(a, b, 1.0), [0.0, 1.0, 0.3 - 0.25])


def test_rotation_matrix_turns_counter_clockwise() -> None:
    _close(S.rotation_matrix("z", 90.0) @ torch.tensor([1.0, 0.0, 0.0]), [0.0, 1.0, 0.0])
    _close(S.rotation_matrix("x", 90.0) @ torch.tensor([0.0, 1.0, 0.0]), [0.0, 0.0, 1.0])
    _close(S.rotation_matrix("y", 90.0) @ torch.tensor([0.0, 0.0, 1.0]), [1.0, 0.0, 0.0])


def test_rotate_gives_the_local_coordinates_of_a_rotated_shape() -> None:
    """A long box along x turned 90 degrees about z lies along y: (0, 0.9, 0) is inside it, (0.9, 0, 0) not."""
    local = S.rotate(_points((1, 0, 0), (0, 0.9, 0), (0.9, 0, 0)), "z", 90.0)
    _close(local[0], [0.0, -1.0, 0.0])
    distances = S.box(local[1:], (1.0, 0.1, 0.1))
    assert distances[0] < 0 < distances[1]


def test_align_z_puts_the_direction_on_local_z() -> None:
    origin = (1.0, 2.0, 3.0)
    direction = torch.tensor([0.0, 3.0, 4.0]) / 5.0
    p = torch.tensor(origin) + 0.5 * direction
    _close(S.align_z(p[None], origin, (0.0, 3.0, 4.0))[0], [0.0, 0.0, 0.5])
    off_axis = torch.tensor(origin) + torch.tensor([0.7, 0.0, 0.0])  # perpendicular to the direction
    local = S.align_z(off_axis[None], origin, (0.0, 3.0, 4.0))[0]
    assert local[2].item() == pytest.approx(0.0, abs=1e-6) and local.norm().item() == pytest.approx(0.7, abs=1e-6)


def test_swizzle_makes_the_named_world_axis_local_z() -> None:
    p = _points((1, 2, 3))
    assert S.swizzle(p, "x").tolist() == [[2.0, 3.0, 1.0]]
    assert S.swizzle(p, "y").tolist() == [[3.0, 1.0, 2.0]]
    assert S.swizzle(p, "z").tolist() == [[1.0, 2.0, 3.0]]


def test_mirror_folds_the_named_axes_and_leaves_its_input_alone() -> None:
    p = _points((-1, -2, -3))
    assert S.mirror(p, "xy").tolist() == [[1.0, 2.0, -3.0]]
    assert p.tolist() == [[-1.0, -2.0, -3.0]]
