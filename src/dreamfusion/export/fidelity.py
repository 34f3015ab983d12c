"""How faithful an exported mesh is: to the field it came from (any prior), and to the true shape (eval-3d).

* Outline agreement: the mesh and the field are seen from 8 cameras around the object (20 degrees up, outside
  the bounding sphere); per view, the IoU of the pixels the mesh covers and those where the field's rendered
  opacity passes one half. Reported as the mean over views.
* Colour agreement: over the pixels both cover, the mean absolute difference (RGB in [0, 1], averaged over the
  channels) between the mesh's colour (its texture, or its vertex colours) and the field's albedo render.
* Occupancy: the grid points inside the closed mesh (an odd number of surface crossings below them along z),
  on the grid eval-3d compares with the true object.

The mesh is drawn with ``raster`` (a z-buffer over perspective-projected triangles), the field with the
package's renderer, so both use the cameras' exact pinhole model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor

from dreamfusion.cameras import CameraBatch, TurntableConfig, turntable_cameras
from dreamfusion.export.raster import fragments, nearest, perspective_correct
from dreamfusion.renderer import RenderOutput
from dreamfusion.scene import Scene
from dreamfusion.shading import Background, BackgroundConfig

FIDELITY_CAMERAS = TurntableConfig(frames=8, elevation=20.0, distance=3.0, focal_multiplier=1.2, resolution=128)
"""8 views around the object from outside the bounding sphere (no triangle lies behind a camera), framing a
radius of about 1.25."""


@dataclass(frozen=True)
class MeshFidelity:
    silhouette_iou: float
    """Mean over views of the IoU of the mesh's and the field's outlines."""
    colour_difference: float
    """Mean absolute RGB difference where both are seen (0: the same colours; 1: black against white)."""
    views: int


@dataclass
class MeshImage:
    coverage: Bool[Tensor, "B H W"]
    colour: Float[Tensor, "B H W 3"]
    """Zero where the mesh is not seen."""


def _camera_space(vertices: Tensor, c2w: Tensor) -> Tensor:
    """World points in the camera's frame (OpenGL: x right, y up, looking down -z)."""
    return (vertices - c2w[:3, 3]) @ c2w[:3, :3]


@torch.no_grad()
def render_mesh(mesh, cameras: CameraBatch) -> MeshImage:
    """The mesh's coverage and colour from each camera (``mesh``: an export.mesh.Mesh, world z up)."""
    size = cameras.resolution
    vertices = torch.tensor(np.asarray(mesh.vertices, np.float32))
    faces = torch.tensor(np.asarray(mesh.faces, np.int64))
    coverage = torch.zeros(cameras.batch_size, size * size, dtype=torch.bool)
    colour = torch.zeros(cameras.batch_size, size * size, 3)
    for b in range(cameras.batch_size):
        local = _camera_space(vertices, cameras.c2w[b].cpu().float())
        depth = -local[:, 2]
        k = cameras.intrinsics[b].cpu()
        x = k[0, 2] + k[0, 0] * local[:, 0] / depth.clamp(min=1e-8)
        y = k[1, 2] - k[1, 1] * local[:, 1] / depth.clamp(min=1e-8)
        visible = (depth[faces] > 1e-3).all(dim=1)
        kept = faces[visible]
        frags = fragments(torch.stack((x, y), dim=-1)[kept], size, size)
        corner_depth = depth[kept][frags.face]
        inverse_depth = (frags.barycentric * (1.0 / corner_depth)).sum(-1)  # linear on screen
        front = nearest(frags, -inverse_depth, size * size)
        weights = perspective_correct(front.barycentric, depth[kept][front.face])
        coverage[b, front.pixel] = True
        colour[b, front.pixel] = _surface_colour(mesh, kept[front.face], weights)
    return MeshImage(coverage.view(-1, size, size), colour.view(-1, size, size, 3))


def _surface_colour(mesh, faces: Tensor, weights: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3"]:
    """The mesh's colour at points given by barycentric ``weights`` in ``faces``: its texture (bilinear) or its
    vertex colours."""
    if mesh.uv is not None and mesh.texture is not None:
        uv = (weights[:, :, None] * torch.tensor(np.asarray(mesh.uv, np.float32))[faces]).sum(1)
        texture = torch.tensor(np.asarray(mesh.texture)).permute(2, 0, 1).float()[None] / 255.0
        # Texture row 0 is v = 1: grid_sample's y = -1 is the top row.
        grid = torch.stack((uv[:, 0] * 2 - 1, 1 - uv[:, 1] * 2), dim=-1).view(1, -1, 1, 2)
        return F.grid_sample(texture, grid, mode="bilinear", align_corners=False)[0, :, :, 0].T
    colours = torch.tensor(np.asarray(mesh.colors, np.float32) / 255.0)
    return (weights[:, :, None] * colours[faces]).sum(1)


def _albedo_and_opacity(out: RenderOutput, cameras: CameraBatch) -> Float[Tensor, "b h w 4"]:
    return torch.cat((out.rgb, out.opacity), dim=-1)  # over black: rgb = albedo * opacity


@torch.no_grad()
def mesh_fidelity(scene: Scene, mesh, cameras: CameraBatch | None = None) -> MeshFidelity:
    """Outline IoU and colour difference of ``mesh`` against the field of ``scene`` (see the module docstring)."""
    cameras = turntable_cameras(FIDELITY_CAMERAS) if cameras is None else cameras
    black = Background(BackgroundConfig(kind="random_solid", eval_colour=(0.0, 0.0, 0.0))).to(scene.device)
    seen = scene.render_views(cameras, _albedo_and_opacity, mode="albedo", background=black)
    opacity = seen[..., 3]
    albedo = (seen[..., :3] / opacity[..., None].clamp(min=1e-6)).clamp(0, 1)
    drawn = render_mesh(mesh, cameras)
    rendered = opacity > 0.5
    union = (drawn.coverage | rendered).flatten(1).sum(-1).clamp(min=1)
    iou = ((drawn.coverage & rendered).flatten(1).sum(-1) / union).mean()
    both = drawn.coverage & rendered
    difference = (drawn.colour - albedo).abs().mean(-1)[both]
    return MeshFidelity(
        silhouette_iou=float(iou),
        colour_difference=float(difference.mean()) if difference.numel() else 1.0,
        views=cameras.batch_size,
    )


def mesh_occupancy(mesh, resolution: int, bound: float) -> Bool[Tensor, "R R R"]:
    """Grid points (indexed [x, y, z], ``resolution`` per side over [-bound, bound], ends included) inside the
    closed ``mesh``: an odd number of its surface crossings lies below them along z."""
    vertices = torch.tensor(np.asarray(mesh.vertices, np.float64))
    faces = torch.tensor(np.asarray(mesh.faces, np.int64))
    spacing = 2.0 * bound / (resolution - 1)
    pixel = (vertices[:, :2] + bound) / spacing + 0.5  # grid point i sits at pixel centre i + 0.5
    frags = fragments(pixel[faces], resolution, resolution)
    z = (frags.barycentric.double() * vertices[:, 2][faces][frags.face]).sum(-1)
    heights = torch.linspace(-bound, bound, resolution, dtype=torch.float64)
    above = torch.searchsorted(heights, z, right=True)  # the first grid height above the crossing
    counts = torch.zeros(resolution * resolution, resolution + 1, dtype=torch.long)
    counts.index_put_((frags.pixel, above), torch.ones_like(above), accumulate=True)
    inside = counts.cumsum(dim=1)[:, :resolution] % 2 == 1  # crossings below each height
    # pixel = row * resolution + column, row = y index, column = x index: -> [x, y, z]
    return inside.view(resolution, resolution, resolution).permute(1, 0, 2).contiguous()
