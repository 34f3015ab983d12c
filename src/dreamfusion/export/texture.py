"""UV textures: unwrap a mesh with xatlas, bake the albedo the renders show into the texture, dilate across seams.

Baking rasterizes the UV layout conservatively: every texel whose centre lies inside a triangle, or within 1.5
texels of one (what bilinear filtering reads at a chart's edge), gets the surface point and normal of the
closest triangle's nearest point (barycentric interpolation) and the colour ``surface.surface_albedo`` sees
there. Charts are packed 4 texels apart, so those rings never reach into another chart. The texels left over
between charts take the colour of the nearest baked texel, so mipmaps too read a chart's own colours and never
the empty background between charts.

xatlas is imported lazily: the rest of the package works without it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float, Int, UInt8

from dreamfusion.export.raster import fragments, nearest
from dreamfusion.export.surface import SampledField, surface_albedo

UNWRAP_FACE_LIMIT = 60000
"""Largest mesh xatlas is asked to unwrap: its chart search grows faster than linearly (about 1 s for 14k faces
and 7 s for 32k on one CPU core) and larger meshes have crashed it."""
CHART_PADDING = 4
"""Texels between charts."""
EDGE_MARGIN = 1.5
"""Texels baked around each chart (a bilinear sample reads texels up to sqrt(2) away)."""


class UnwrapError(RuntimeError):
    """xatlas is missing or cannot unwrap the mesh."""


@dataclass
class UVLayout:
    vertex_map: Int[np.ndarray, " V2"]
    """For each vertex of the unwrapped mesh, its vertex in the input mesh (seams split vertices)."""
    faces: Int[np.ndarray, "F 3"]
    uv: Float[np.ndarray, "V2 2"]
    """In [0, 1], v up (OpenGL / glTF-importer convention: texture row 0 is v = 1)."""


def unwrap(vertices: Float[np.ndarray, "V 3"], faces: Int[np.ndarray, "F 3"], texture_size: int) -> UVLayout:
    """Charts and their packing into a square texture of ``texture_size`` texels."""
    try:
        import xatlas
    except ImportError:
        raise UnwrapError("UV textures need xatlas: pip install xatlas==0.0.11 (or export with --vertex-colors)") from None
    if len(faces) > UNWRAP_FACE_LIMIT:
        raise UnwrapError(
            f"the mesh has {len(faces)} faces, more than the {UNWRAP_FACE_LIMIT} that can be unwrapped; "
            "pass a smaller --decimate or --vertex-colors"
        )
    atlas = xatlas.Atlas()
    atlas.add_mesh(np.ascontiguousarray(vertices, np.float32), np.ascontiguousarray(faces, np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution = texture_size
    pack.padding = CHART_PADDING
    pack.bilinear = True
    atlas.generate(pack_options=pack)
    vertex_map, indices, uv = atlas[0]
    return UVLayout(vertex_map.astype(np.int64), indices.astype(np.int64), uv.astype(np.float32))


def bake(
    sampled: SampledField,
    vertices: Float[np.ndarray, "V 3"],
    normals: Float[np.ndarray, "V 3"],
    layout: UVLayout,
    texture_size: int,
) -> UInt8[np.ndarray, "T T 3"]:
    """The albedo texture of ``layout`` (see the module docstring); ``vertices`` and ``normals`` are the input
    mesh's (indexed through ``layout.vertex_map``)."""
    from scipy import ndimage

    device = sampled.density.device
    corners_uv = torch.from_numpy(layout.uv[layout.faces]).to(device)  # F 3 2
    corners = torch.stack((corners_uv[..., 0], 1.0 - corners_uv[..., 1]), dim=-1) * texture_size
    frags = fragments(corners, texture_size, texture_size, margin=EDGE_MARGIN)
    frags = nearest(frags, frags.distance, texture_size * texture_size)
    position = torch.from_numpy(vertices[layout.vertex_map][layout.faces]).to(device)  # F 3 3
    normal = torch.from_numpy(normals[layout.vertex_map][layout.faces]).to(device)
    weights = frags.barycentric.to(position.dtype)[:, :, None]
    points = (weights * position[frags.face]).sum(1)
    directions = torch.nn.functional.normalize((weights * normal[frags.face]).sum(1), dim=-1)
    colours = surface_albedo(sampled, points, directions)
    image = np.zeros((texture_size * texture_size, 3), np.float32)
    image[frags.pixel.cpu().numpy()] = colours.cpu().numpy()
    baked = np.zeros(texture_size * texture_size, bool)
    baked[frags.pixel.cpu().numpy()] = True
    image, baked = image.reshape(texture_size, texture_size, 3), baked.reshape(texture_size, texture_size)
    if baked.any():
        _, (rows, cols) = ndimage.distance_transform_edt(~baked, return_indices=True)
        image = image[rows, cols]
    return (image * 255 + 0.5).astype(np.uint8)
