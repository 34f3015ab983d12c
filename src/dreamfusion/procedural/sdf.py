"""Signed distance primitives and combinators, vectorized over points.

Every primitive maps points [..., 3] to signed distances [...] (negative inside) and is centred at the
origin with its axis along z; place it by transforming the *points* into its local frame first
(``translate``, ``rotate``, ``align_z``, ``mirror``). Primitives are exact distances; unions, intersections
and subtractions give lower bounds, which is what sphere tracing needs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import reduce

import torch
from jaxtyping import Float
from torch import Tensor

Vec3 = tuple[float, float, float]


def _length(v: Float[Tensor, "*N D"]) -> Float[Tensor, "*N"]:
    return torch.linalg.vector_norm(v, dim=-1)


def _vec(value: Sequence[float], like: Tensor) -> Tensor:
    return torch.tensor(value, dtype=like.dtype, device=like.device)


# ----- primitives -------------------------------------------------------------------------------------


def sphere(p: Float[Tensor, "*N 3"], radius: float) -> Float[Tensor, "*N"]:
    return _length(p) - radius


def box(p: Float[Tensor, "*N 3"], half_extents: Vec3, rounding: float = 0.0) -> Float[Tensor, "*N"]:
    """Axis-aligned box; ``rounding`` rounds the edges while keeping the outer extents."""
    q = p.abs() - (_vec(half_extents, p) - rounding)
    outside = _length(q.clamp(min=0.0))
    inside = q.amax(dim=-1).clamp(max=0.0)
    return outside + inside - rounding


def _extrude(radial: Tensor, axial: Tensor) -> Tensor:
    """Distance from a 2D (radial, axial) signed offset pair, both measured outward."""
    outside = torch.sqrt(radial.clamp(min=0.0) ** 2 + axial.clamp(min=0.0) ** 2)
    return outside + torch.maximum(radial, axial).clamp(max=0.0)


def capped_cylinder(p: Float[Tensor, "*N 3"], radius: float, half_height: float) -> Float[Tensor, "*N"]:
    """Cylinder along z from -half_height to +half_height."""
    return _extrude(_length(p[..., :2]) - radius, p[..., 2].abs() - half_height)


def capped_cone(
    p: Float[Tensor, "*N 3"], half_height: float, radius_bottom: float, radius_top: float
) -> Float[Tensor, "*N"]:
    """Truncated cone along z: radius ``radius_bottom`` at z = -half_height, ``radius_top`` at +half_height."""
    qx = _length(p[..., :2])
    qy = p[..., 2]
    h, r1, r2 = half_height, radius_bottom, radius_top
    # Distance to the caps (clamped to the radius of the cap on that side).
    cap_radius = torch.where(qy < 0.0, torch.full_like(qy, r1), torch.full_like(qy, r2))
    ca_x = qx - torch.minimum(qx, cap_radius)
    ca_y = qy.abs() - h
    # Distance to the slanted side, a segment from (r2, h) to (r1, -h).
    k2x, k2y = r2 - r1, 2.0 * h
    along = (((r2 - qx) * k2x + (h - qy) * k2y) / (k2x * k2x + k2y * k2y)).clamp(0.0, 1.0)
    cb_x = qx - r2 + k2x * along
    cb_y = qy - h + k2y * along
    sign = torch.where((cb_x < 0.0) & (ca_y < 0.0), -1.0, 1.0)
    squared = torch.minimum(ca_x**2 + ca_y**2, cb_x**2 + cb_y**2)
    return sign * torch.sqrt(squared)


def torus(p: Float[Tensor, "*N 3"], major: float, minor: float) -> Float[Tensor, "*N"]:
    """Ring in the xy plane around the z axis."""
    ring = _length(p[..., :2]) - major
    return torch.sqrt(ring**2 + p[..., 2] ** 2) - minor


def capsule(p: Float[Tensor, "*N 3"], a: Vec3, b: Vec3, radius: float) -> Float[Tensor, "*N"]:
    """Segment from ``a`` to ``b`` thickened by ``radius`` (given in the same frame as ``p``)."""
    start, end = _vec(a, p), _vec(b, p)
    pa, ba = p - start, end - start
    h = ((pa * ba).sum(-1) / (ba * ba).sum()).clamp(0.0, 1.0)
    return _length(pa - h[..., None] * ba) - radius


def half_space(p: Float[Tensor, "*N 3"], normal: Vec3, point: Vec3) -> Float[Tensor, "*N"]:
    """Signed distance to the plane through ``point``; inside is the side opposite ``normal``."""
    n = _vec(normal, p)
    n = n / n.norm()
    return ((p - _vec(point, p)) * n).sum(-1)


# ----- combinators ------------------------------------------------------------------------------------


def union(*distances: Tensor) -> Tensor:
    return reduce(torch.minimum, distances)


def intersection(*distances: Tensor) -> Tensor:
    return reduce(torch.maximum, distances)


def subtraction(a: Tensor, b: Tensor) -> Tensor:
    """``a`` with ``b`` carved out."""
    return torch.maximum(a, -b)


def smooth_union(a: Tensor, b: Tensor, k: float) -> Tensor:
    """Union blended over a width ``k`` (polynomial smooth minimum), for organic joints."""
    h = (0.5 + 0.5 * (b - a) / k).clamp(0.0, 1.0)
    return torch.lerp(b, a, h) - k * h * (1.0 - h)


# ----- point transforms (world -> local frame) --------------------------------------------------------


def translate(p: Float[Tensor, "*N 3"], offset: Vec3) -> Float[Tensor, "*N 3"]:
    """Local coordinates of a shape whose origin sits at ``offset``."""
    return p - _vec(offset, p)


def rotation_matrix(axis: str, degrees: float) -> Float[Tensor, "3 3"]:
    """Rotation by ``degrees`` counter-clockwise about the world axis "x", "y" or "z"."""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    i, j = {"x": (1, 2), "y": (2, 0), "z": (0, 1)}[axis]
    matrix = torch.eye(3)
    matrix[i, i], matrix[i, j], matrix[j, i], matrix[j, j] = c, -s, s, c
    return matrix


def rotate(p: Float[Tensor, "*N 3"], axis: str, degrees: float) -> Float[Tensor, "*N 3"]:
    """Local coordinates of a shape rotated by ``degrees`` about ``axis`` (so the points rotate back)."""
    return p @ rotation_matrix(axis, degrees).to(p)  # row vectors: p @ R == R^T p


def align_z(p: Float[Tensor, "*N 3"], origin: Vec3, direction: Vec3) -> Float[Tensor, "*N 3"]:
    """Local coordinates of a shape whose z axis points along ``direction`` from ``origin``."""
    w = _vec(direction, p)
    w = w / w.norm()
    helper = _vec((0.0, 0.0, 1.0) if abs(float(w[2])) < 0.9 else (1.0, 0.0, 0.0), p)
    u = torch.linalg.cross(helper, w)
    u = u / u.norm()
    v = torch.linalg.cross(w, u)
    return (p - _vec(origin, p)) @ torch.stack((u, v, w), dim=1)


def swizzle(p: Float[Tensor, "*N 3"], axis: str) -> Float[Tensor, "*N 3"]:
    """Reorder coordinates so that world ``axis`` becomes local z (cylinders, tori and cones along x or y)."""
    order = {"x": (1, 2, 0), "y": (2, 0, 1), "z": (0, 1, 2)}[axis]
    return p[..., list(order)]


def mirror(p: Float[Tensor, "*N 3"], axes: str) -> Float[Tensor, "*N 3"]:
    """Fold space onto the positive side of the given axes, e.g. "xy" places one leg and gets four."""
    folded = p.clone()
    for axis in axes:
        k = "xyz".index(axis)
        folded[..., k] = folded[..., k].abs()
    return folded
