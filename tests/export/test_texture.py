"""UV unwrapping and albedo baking on a small icosphere inside a sampled ball painted red on +x and blue on -x:
the layout covers the mesh, the texture puts each half's colour where the UVs of that half point (v up, row 0
at v = 1), and no texel is left empty."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("xatlas", reason="UV textures need xatlas")
trimesh = pytest.importorskip("trimesh", reason="the test mesh is made with trimesh")

from dreamfusion.export import texture  # noqa: E402
from dreamfusion.export.surface import SampledField  # noqa: E402
from dreamfusion.export.texture import UnwrapError, UVLayout, bake, unwrap  # noqa: E402
from dreamfusion.procedural.objects import grid_points  # noqa: E402

SIZE = 64
RED, BLUE = (1.0, 0.0, 0.0), (0.0, 0.0, 1.0)


def _sphere_mesh() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mesh = trimesh.creation.icosphere(subdivisions=2, radius=0.5)
    vertices = np.asarray(mesh.vertices, np.float32)
    normals = vertices / np.linalg.norm(vertices, axis=1, keepdims=True)
    return vertices, np.asarray(mesh.faces, np.int64), normals


def _painted_ball(resolution: int = 33, bound: float = 1.0) -> SampledField:
    """A dense ball of radius 0.5 (density ramping from 0 to 50 across 0.02 at its surface), red where x > 0
    and blue where x < 0, known everywhere."""
    points = grid_points(resolution, bound)
    radius = points.norm(dim=-1)
    density = 50.0 * ((0.5 - radius) / 0.02 + 0.5).clamp(0.0, 1.0)
    albedo = torch.where((points[..., :1] > 0), torch.tensor(RED), torch.tensor(BLUE))
    return SampledField(density, albedo, torch.ones_like(density, dtype=torch.bool), bound)


def test_unwrap_keeps_every_face_and_maps_back_to_the_input_vertices() -> None:
    vertices, faces, _ = _sphere_mesh()
    layout = unwrap(vertices, faces, SIZE)
    assert isinstance(layout, UVLayout)
    assert layout.faces.shape == faces.shape and layout.uv.shape == (len(layout.vertex_map), 2)
    assert len(layout.vertex_map) >= len(vertices)  # seams split vertices, never merge them
    assert layout.uv.min() >= 0.0 and layout.uv.max() <= 1.0
    unwrapped = {tuple(sorted(face)) for face in layout.vertex_map[layout.faces].tolist()}
    assert unwrapped == {tuple(sorted(face)) for face in faces.tolist()}


def test_a_mesh_over_the_face_limit_is_refused_with_what_to_do(monkeypatch) -> None:
    vertices, faces, _ = _sphere_mesh()
    monkeypatch.setattr(texture, "UNWRAP_FACE_LIMIT", 100)
    with pytest.raises(UnwrapError, match=f"the mesh has {len(faces)} faces, more than the 100 .* --vertex-colors"):
        unwrap(vertices, faces, SIZE)


def test_baked_texture_shows_each_half_in_its_colour_where_its_uvs_point() -> None:
    vertices, faces, normals = _sphere_mesh()
    layout = unwrap(vertices, faces, SIZE)
    image = bake(_painted_ball(), vertices, normals, layout, SIZE)
    assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
    # Centroid of each unwrapped face in texels: column u * size, row (1 - v) * size.
    centroid_uv = layout.uv[layout.faces].mean(axis=1)
    cols = np.clip((centroid_uv[:, 0] * SIZE).astype(int), 0, SIZE - 1)
    rows = np.clip(((1.0 - centroid_uv[:, 1]) * SIZE).astype(int), 0, SIZE - 1)
    centroid_x = vertices[layout.vertex_map][layout.faces][:, :, 0].mean(axis=1)
    colours = image[rows, cols].astype(int)
    red_side, blue_side = centroid_x > 0.15, centroid_x < -0.15
    assert red_side.sum() > 50 and blue_side.sum() > 50
    assert (colours[red_side, 0] > 200).all() and (colours[red_side, 2] < 55).all()
    assert (colours[blue_side, 2] > 200).all() and (colours[blue_side, 0] < 55).all()
    assert (colours[:, 1] < 30).all()  # nothing green anywhere on the surface


def test_texels_between_charts_take_a_baked_colour() -> None:
    """Dilation fills the whole texture from the charts: every texel is nearly red or nearly blue, none black."""
    vertices, faces, normals = _sphere_mesh()
    layout = unwrap(vertices, faces, SIZE)
    image = bake(_painted_ball(), vertices, normals, layout, SIZE).reshape(-1, 3).astype(int)
    assert (image.max(axis=1) > 100).all()
    assert (image[:, 1] < 30).all()
