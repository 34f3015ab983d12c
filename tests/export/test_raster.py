"""The triangle rasterizer: each pixel of a closed outline covered once, exact barycentrics, a z-buffer, and the
conservative margin used for baking."""

from __future__ import annotations

import torch

from dreamfusion.export.raster import fragments, nearest, perspective_correct


def _coverage(frags, width: int, height: int) -> torch.Tensor:
    return torch.bincount(frags.pixel, minlength=width * height).view(height, width)


def test_a_fan_of_triangles_covers_each_pixel_of_its_outline_exactly_once() -> None:
    # Eight triangles around a centre, with corners and edges through pixel centres: the fill rule decides.
    centre = torch.tensor([8.5, 8.5])
    ring = [torch.tensor(p, dtype=torch.float32) for p in
            ((2.5, 2.5), (8.5, 2.5), (14.5, 2.5), (14.5, 8.5), (14.5, 14.5), (8.5, 14.5), (2.5, 14.5), (2.5, 8.5))]  # fmt: skip
    corners = torch.stack([torch.stack((centre, ring[i], ring[(i + 1) % 8])) for i in range(8)])
    coverage = _coverage(fragments(corners, 18, 18), 18, 18)
    assert coverage.max() == 1
    assert coverage[2:14, 2:14].all() and coverage.sum() == 12 * 12  # the square [2.5, 14.5) of centres


def test_barycentric_coordinates_reproduce_the_pixel_centre() -> None:
    corners = torch.tensor([[[1.2, 0.7], [9.8, 2.1], [3.3, 8.9]]])
    frags = fragments(corners, 12, 12)
    assert frags.face.numel() > 20
    point = (frags.barycentric[:, :, None] * corners[0][None].double().float()).sum(1)
    centre = torch.stack((frags.pixel % 12 + 0.5, frags.pixel // 12 + 0.5), dim=-1).float()
    torch.testing.assert_close(point, centre, atol=1e-4, rtol=0)
    assert (frags.barycentric >= 0).all() and (frags.distance == 0).all()
    # The other winding covers the same pixels with the same weights.
    flipped = fragments(corners[:, [0, 2, 1]], 12, 12)
    assert torch.equal(flipped.pixel.sort().values, frags.pixel.sort().values)


def test_the_z_buffer_keeps_the_front_triangle() -> None:
    square = torch.tensor([[[0.0, 0.0], [8.0, 0.0], [0.0, 8.0]], [[0.0, 0.0], [8.0, 0.0], [0.0, 8.0]]])
    frags = fragments(square, 8, 8)
    depth = torch.where(frags.face == 1, 1.0, 2.0)
    front = nearest(frags, depth, 64)
    assert (front.face == 1).all() and front.pixel.unique().numel() == front.pixel.numel()


def test_a_margin_lists_nearby_pixels_with_the_nearest_point_of_the_triangle() -> None:
    corners = torch.tensor([[[4.0, 4.0], [12.0, 4.0], [4.0, 12.0]]])
    inside = fragments(corners, 16, 16)
    ring = fragments(corners, 16, 16, margin=1.5)
    assert ring.face.numel() > inside.face.numel()
    assert (ring.distance <= 1.5).all() and ring.distance.max() > 1.0
    point = (ring.barycentric[:, :, None] * corners[0][None]).sum(1)
    centre = torch.stack((ring.pixel % 16 + 0.5, ring.pixel // 16 + 0.5), dim=-1).float()
    torch.testing.assert_close((point - centre).norm(dim=-1), ring.distance, atol=1e-4, rtol=0)
    assert (ring.barycentric >= -1e-6).all()  # the nearest point lies on the triangle


def test_perspective_correct_weights_follow_depth() -> None:
    screen = torch.tensor([[0.5, 0.5, 0.0]])
    weights = perspective_correct(screen, torch.tensor([[1.0, 3.0, 2.0]]))
    torch.testing.assert_close(weights, torch.tensor([[0.75, 0.25, 0.0]]))
