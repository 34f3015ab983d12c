"""A small triangle rasterizer in plain torch (CPU or GPU), for baking textures and for comparing a mesh with the
field it came from.

``fragments`` lists every (triangle, pixel centre) pair with the centre inside the triangle, with its
barycentric coordinates. Edges follow a fill rule (a centre exactly on an edge shared by two triangles belongs
to exactly one of them), so a closed mesh covers every pixel of its outline once per layer: what counting
crossings for inside/outside needs. With a ``margin``, centres up to that far outside a triangle are listed
too, with the barycentric coordinates of the triangle's nearest point and their distance (a conservative
rasterization, for texels that filtering reads at a chart's edge). ``nearest`` keeps one fragment per pixel:
the front one of a z-buffer, or the closest triangle of a conservative rasterization.

Pixel (row r, column c) has its centre at x = c + 0.5, y = r + 0.5; x grows to the right and y downwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

FRAGMENT_BUDGET = 1 << 22
"""Candidate (triangle, pixel) pairs tested at once: bounds the memory of a call whatever the mesh size."""


@dataclass
class Fragments:
    face: Int[Tensor, " N"]
    """Index of the triangle."""
    pixel: Int[Tensor, " N"]
    """Flat pixel index, row * width + column."""
    barycentric: Float[Tensor, "N 3"]
    """Weights of the triangle's three corners at the pixel centre (screen space), summing to 1; with a margin,
    at the triangle's point nearest to the centre."""
    distance: Float[Tensor, " N"]
    """From the pixel centre to the triangle, in pixels (0 inside)."""

    def select(self, keep: Tensor) -> Fragments:
        return Fragments(self.face[keep], self.pixel[keep], self.barycentric[keep], self.distance[keep])


def fragments(corners: Float[Tensor, "F 3 2"], width: int, height: int, margin: float = 0.0) -> Fragments:
    """The pixel centres inside each triangle, or within ``margin`` pixels of it; ``corners`` are (x, y) in
    pixels (see the module docstring). Degenerate (zero-area) triangles cover nothing."""
    device = corners.device
    corners = corners.double()
    low = torch.ceil(corners.amin(dim=1) - 0.5 - margin).long()
    high = torch.floor(corners.amax(dim=1) - 0.5 + margin).long()
    low[:, 0].clamp_(min=0)
    low[:, 1].clamp_(min=0)
    high[:, 0].clamp_(max=width - 1)
    high[:, 1].clamp_(max=height - 1)
    size = high - low + 1
    area2 = _cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    live = (size > 0).all(dim=1) & (area2 != 0)
    faces = torch.nonzero(live).squeeze(1)
    parts: list[Fragments] = []
    # Triangles in buckets of similar box size (powers of two), so padding every box to its bucket's size
    # wastes little; each bucket in chunks of at most FRAGMENT_BUDGET candidates.
    bucket = torch.ceil(torch.log2(size[faces].double())).long()
    key = bucket[:, 0] * 64 + bucket[:, 1]
    for value in torch.unique(key).tolist():
        members = faces[key == value]
        box_w, box_h = 2 ** (value // 64), 2 ** (value % 64)
        per_chunk = max(1, FRAGMENT_BUDGET // (box_w * box_h))
        for start in range(0, members.numel(), per_chunk):
            chunk = members[start : start + per_chunk]
            parts.append(
                _box_fragments(corners[chunk], area2[chunk], low[chunk], size[chunk], chunk, box_w, box_h, width, margin)
            )
    if not parts:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return Fragments(empty, empty.clone(), torch.zeros(0, 3, device=device), torch.zeros(0, device=device))
    return Fragments(*(torch.cat([getattr(p, name) for p in parts]) for name in ("face", "pixel", "barycentric", "distance")))


def _cross(u: Tensor, v: Tensor) -> Tensor:
    return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]


def _box_fragments(
    corners: Tensor, area2: Tensor, low: Tensor, size: Tensor, faces: Tensor, box_w: int, box_h: int, width: int,
    margin: float,
) -> Fragments:  # fmt: skip
    device = corners.device
    dx = torch.arange(box_w, device=device)
    dy = torch.arange(box_h, device=device)
    column = low[:, 0, None, None] + dx[None, None, :]  # T 1 W
    row = low[:, 1, None, None] + dy[None, :, None]  # T H 1
    inside_box = (dx[None, None, :] < size[:, 0, None, None]) & (dy[None, :, None] < size[:, 1, None, None])
    px = (column + 0.5).double()
    py = (row + 0.5).double()
    sign = torch.sign(area2)[:, None, None]
    weights = []
    covered = inside_box
    # Corner i's weight is the edge function of the opposite edge (a -> b), positive inside.
    for i, (a, b) in enumerate(((1, 2), (2, 0), (0, 1))):
        edge = corners[:, b] - corners[:, a]
        value = (edge[:, 0, None, None] * (py - corners[:, a, 1, None, None])
                 - edge[:, 1, None, None] * (px - corners[:, a, 0, None, None])) * sign  # fmt: skip
        # On the edge itself: included for one of the two triangles that share it (E = A x + B y + C with
        # A = -edge_y * sign, B = edge_x * sign; the neighbour's A and B have the opposite signs).
        a_coef = (-edge[:, 1] * sign[:, 0, 0])[:, None, None]
        b_coef = (edge[:, 0] * sign[:, 0, 0])[:, None, None]
        owns_edge = (a_coef > 0) | ((a_coef == 0) & (b_coef > 0))
        covered = covered & ((value > 0) | ((value == 0) & owns_edge))
        weights.append(value / area2.abs()[:, None, None])
    if margin <= 0:
        index = torch.nonzero(covered)  # (k, 3): triangle in chunk, dy, dx
        t, y, x = index[:, 0], index[:, 1], index[:, 2]
        barycentric = torch.stack([w.expand_as(covered)[t, y, x] for w in weights], dim=-1).float()
        distance = torch.zeros(t.shape[0], device=device)
    else:
        index = torch.nonzero(inside_box)
        t, y, x = index[:, 0], index[:, 1], index[:, 2]
        point = torch.stack((px.expand_as(covered)[t, y, x], py.expand_as(covered)[t, y, x]), dim=-1)
        inner = torch.stack([w.expand_as(covered)[t, y, x] for w in weights], dim=-1)
        barycentric, distance = _nearest_on_triangle(corners[t], point, inner)
        keep = distance <= margin
        t, y, x, barycentric, distance = t[keep], y[keep], x[keep], barycentric[keep].float(), distance[keep].float()
    pixel = (low[t, 1] + y) * width + (low[t, 0] + x)
    return Fragments(faces[t], pixel, barycentric, distance)


def _nearest_on_triangle(corners: Tensor, point: Tensor, inner: Tensor) -> tuple[Tensor, Tensor]:
    """Barycentric coordinates of the triangle's point nearest to ``point``, and its distance; ``inner`` are the
    point's own barycentric coordinates (all >= 0 inside)."""
    inside = (inner >= 0).all(dim=-1)
    best_distance = torch.full_like(point[:, 0], torch.inf)
    best = torch.zeros_like(inner)
    for a, b in ((0, 1), (1, 2), (2, 0)):
        start, edge = corners[:, a], corners[:, b] - corners[:, a]
        along = (((point - start) * edge).sum(-1) / (edge * edge).sum(-1).clamp(min=1e-12)).clamp(0, 1)
        distance = (start + along[:, None] * edge - point).norm(dim=-1)
        closer = distance < best_distance
        weights = torch.zeros_like(inner)
        weights[:, a], weights[:, b] = 1 - along, along
        best = torch.where(closer[:, None], weights, best)
        best_distance = torch.where(closer, distance, best_distance)
    return torch.where(inside[:, None], inner, best), torch.where(inside, torch.zeros_like(best_distance), best_distance)


def nearest(frags: Fragments, depth: Float[Tensor, " N"], pixels: int) -> Fragments:
    """The fragment of smallest ``depth`` of each covered pixel (ties to the lowest triangle index): the front
    one, or with ``frags.distance`` the closest triangle."""
    if frags.face.numel() == 0:
        return frags
    best = torch.full((pixels,), torch.inf, dtype=depth.dtype, device=depth.device)
    best.scatter_reduce_(0, frags.pixel, depth, reduce="amin")
    front = depth <= best[frags.pixel]
    first = torch.full((pixels,), torch.iinfo(torch.long).max, dtype=torch.long, device=depth.device)
    first.scatter_reduce_(0, frags.pixel[front], frags.face[front], reduce="amin")
    return frags.select(front & (frags.face == first[frags.pixel]))


def perspective_correct(barycentric: Float[Tensor, "N 3"], corner_depth: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3"]:
    """Barycentric weights of the 3D surface point under a pixel, from screen-space ones and the corners'
    camera depths (attributes vary linearly in 3D, not on screen)."""
    weights = barycentric / corner_depth.clamp(min=1e-8)
    return weights / weights.sum(dim=-1, keepdim=True).clamp(min=1e-12)
