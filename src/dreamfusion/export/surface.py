"""The surface the renders show: the field sampled near it, a density level fitted to the renders' silhouettes,
and the albedo a camera would see there.

A NeRF trained with SDS is a soft density cloud, and no fixed density level is its surface: a result that
renders as a solid object may never reach a level that another result exceeds in its haze. The level is fitted
instead. From 20 directions around the object, the outline the field renders (where a ray's opacity passes one
half) is compared with the outline of each candidate level set (where a ray meets a density above the level);
the level whose outlines agree best is the surface. Rays run through the sampled density grid with the
renderer's own compositing, so the fit sees what the renders see.

Sampling a fine grid (256^3 = 16.7 million points) on a CPU costs minutes, so the field is sampled densely only
near the surface: a coarse grid (every third fine point) finds where the surface can be, and the fine grid is
filled in a band around it, density and albedo together. Colours come from that band: for each surface point
the albedo is composited along a short ray that enters the surface along its normal, as a camera looking at the
surface would see it, so colour in a haze just outside a solid does not tint the solid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor

from dreamfusion.geometry import Geometry
from dreamfusion.procedural.objects import grid_points
from dreamfusion.voxels import boundary, dilated

COARSE_STEP = 3
"""Fine grid points per coarse grid point along each axis."""
BAND_RATIO = 16.0
"""Coarse points whose density lies within this factor of the level (either way) are near the surface."""
BAND_DILATION = 2
"""Coarse points added around the near-surface ones, so the band holds the colour rays too."""
SILHOUETTE_RESOLUTION = 96
"""Rays per side of each orthographic view of the level fit."""
CANDIDATE_LEVELS = 64
"""Density levels tried, spaced evenly in log between 1e-4 of the peak density and the peak."""
PLATEAU = 0.005
"""Levels whose outline IoU is within this of the best all fit; the middle of them is taken. Where the
density jumps within a grid step (a crisp surface) the plateau spans the jump, and its middle puts marching
cubes' interpolated surface half way, the least biased place between two samples."""
HALF_OPACITY_DEPTH = math.log(2.0)
"""Optical depth at which a ray's opacity reaches one half: a pixel of the outline."""


@dataclass
class SampledField:
    """The field on a fine grid of ``resolution``^3 points spanning [-bound, bound]^3 (ends included), with its
    density everywhere (exact near the surface, interpolated from the coarse grid elsewhere) and its albedo
    where ``known`` (near the surface). Zero outside the bounding sphere, which renders never sample."""

    density: Float[Tensor, "R R R"]
    albedo: Float[Tensor, "R R R 3"]
    known: Bool[Tensor, "R R R"]
    bound: float

    @property
    def resolution(self) -> int:
        return self.density.shape[0]

    @property
    def spacing(self) -> float:
        return 2.0 * self.bound / (self.resolution - 1)


@dataclass
class LevelFit:
    level: float
    outline_iou: float
    """Mean agreement (IoU) of the level set's outlines with the field's rendered outlines over the views."""


@torch.no_grad()
def _query(field: Geometry, points: Float[Tensor, "N 3"], chunk: int, with_albedo: bool) -> tuple[Tensor, Tensor | None]:
    densities, albedos = [], []
    for part in points.split(chunk):
        if with_albedo:
            out = field(part, with_normals=False)
            densities.append(out.density.float())
            albedos.append(out.albedo.float())
        else:
            densities.append(field.density(part).float())
    density = torch.cat(densities) if densities else points.new_zeros(0)
    albedo = (torch.cat(albedos) if albedos else points.new_zeros(0, 3)) if with_albedo else None
    return density, albedo


def coarse_resolution(resolution: int) -> int:
    return (resolution - 1) // COARSE_STEP + 1


def fine_resolution(resolution: int) -> int:
    """``resolution`` rounded so the coarse grid's points are fine grid points."""
    return (coarse_resolution(resolution) - 1) * COARSE_STEP + 1


def sample_coarse(field: Geometry, resolution: int, device: torch.device, chunk: int = 1 << 14) -> Float[Tensor, "C C C"]:
    """Density on the coarse grid of a fine grid of ``resolution`` (see ``fine_resolution``), on ``device``."""
    size = coarse_resolution(resolution)
    points = grid_points(size, field.bound, device)
    density, _ = _query(field, points.reshape(-1, 3), chunk, with_albedo=False)
    return _inside_sphere(density.reshape(size, size, size), points, field.bound)


def _inside_sphere(values: Tensor, points: Tensor, bound: float) -> Tensor:
    outside = points.norm(dim=-1) > bound
    return values.masked_fill(outside if values.dim() == 3 else outside[..., None], 0.0)


def near_surface(coarse: Float[Tensor, "C C C"], level: float) -> Bool[Tensor, "C C C"]:
    """Coarse points within ``BAND_RATIO`` of ``level`` or next to a crossing of it, dilated."""
    near = (coarse > level / BAND_RATIO) & (coarse < level * BAND_RATIO)
    return dilated(near | boundary(coarse > level), BAND_DILATION)


@torch.no_grad()
def sample_near_surface(
    field: Geometry, coarse: Float[Tensor, "C C C"], level: float, chunk: int = 1 << 14
) -> SampledField:
    """The fine grid: density and albedo queried in the band around ``level``, density interpolated from the
    coarse grid elsewhere (where it is far from the level, so the surface is not moved by it)."""
    device = coarse.device
    bound = float(field.bound)
    size = (coarse.shape[0] - 1) * COARSE_STEP + 1
    density = F.interpolate(coarse[None, None], size=(size,) * 3, mode="trilinear", align_corners=True)[0, 0]
    band = near_surface(coarse, level)
    # A fine point is in the band when its nearest coarse point is.
    index = torch.div(torch.arange(size, device=device) + COARSE_STEP // 2, COARSE_STEP, rounding_mode="floor")
    known = band[index][:, index][:, :, index]
    points = grid_points(size, bound, device)
    known &= points.norm(dim=-1) <= bound
    queried, albedo_values = _query(field, points[known], chunk, with_albedo=True)
    density[known] = queried
    albedo = torch.zeros(size, size, size, 3, device=device)
    albedo[known] = albedo_values
    return SampledField(_inside_sphere(density, points, bound), albedo, known, bound)


def view_directions(device: torch.device) -> Float[Tensor, "K 3"]:
    """20 viewing directions: three rings of six (elevations -30, 15 and 55 degrees) and straight up and down."""
    directions = []
    for ring, elevation in enumerate((-30.0, 15.0, 55.0)):
        for step in range(6):
            azimuth = math.radians(60.0 * step + 30.0 * ring)
            e = math.radians(elevation)
            directions.append((math.cos(e) * math.cos(azimuth), math.cos(e) * math.sin(azimuth), math.sin(e)))
    directions += [(0.0, 0.0, 1.0), (0.0, 0.0, -1.0)]
    return torch.tensor(directions, device=device)


def _sample_grid(grid: Tensor, points: Float[Tensor, "*P 3"], bound: float) -> Tensor:
    """Trilinear samples of a (C, R, R, R) grid indexed [x, y, z] at world points: (C, *P)."""
    shape = points.shape[:-1]
    # grid_sample reads the last coordinate along the first spatial axis: pass (z, y, x), scaled to [-1, 1].
    coords = (points.reshape(1, -1, 1, 1, 3) / bound).flip(-1)
    values = F.grid_sample(grid[None], coords, mode="bilinear", padding_mode="zeros", align_corners=True)
    return values.reshape(grid.shape[0], *shape)


def ray_profiles(
    density: Float[Tensor, "R R R"], bound: float, resolution: int = SILHOUETTE_RESOLUTION
) -> tuple[Float[Tensor, "K P"], Float[Tensor, "K P"]]:
    """(optical depth, highest density) along the orthographic rays of ``view_directions`` across the
    bounding sphere, ``resolution``^2 rays per view, sampled at the grid's spacing."""
    device = density.device
    directions = view_directions(device)
    helper = torch.where(directions[:, 2:].abs() > 0.9, torch.tensor([1.0, 0.0, 0.0], device=device),
                         torch.tensor([0.0, 0.0, 1.0], device=device))  # fmt: skip
    right = F.normalize(torch.linalg.cross(helper, directions, dim=-1), dim=-1)
    up = torch.linalg.cross(directions, right, dim=-1)
    offsets = (torch.arange(resolution, device=device) + 0.5) / resolution * 2 - 1
    u, v = torch.meshgrid(offsets * bound, offsets * bound, indexing="ij")
    steps = density.shape[0]
    t = torch.linspace(-bound, bound, steps, device=device)
    depth, peak = [], []
    for k in range(directions.shape[0]):  # one view at a time: memory of P * steps samples
        origins = u.reshape(-1, 1, 1) * right[k] + v.reshape(-1, 1, 1) * up[k]
        points = origins + t[None, :, None] * directions[k]
        values = _sample_grid(density[None], points, bound)[0]  # P steps
        depth.append(values.sum(-1) * (2 * bound / (steps - 1)))
        peak.append(values.amax(-1))
    return torch.stack(depth), torch.stack(peak)


def fit_level(density: Float[Tensor, "R R R"], bound: float) -> LevelFit:
    """The density level whose outlines best match the field's rendered outlines (see the module docstring).
    Raises ValueError when the field renders no outline at all."""
    depth, peak = ray_profiles(density, bound)
    rendered = depth > HALF_OPACITY_DEPTH
    if not rendered.any():
        raise ValueError("the field renders nothing opaque from any side")
    top = float(density.max())
    levels = torch.logspace(math.log10(top * 1e-4), math.log10(top), CANDIDATE_LEVELS, device=density.device)[:-1]
    scores = []
    for level in levels:
        outline = peak > level
        union = (outline | rendered).sum(-1).clamp(min=1)
        scores.append(((outline & rendered).sum(-1) / union).float().mean())
    iou = torch.stack(scores)
    plateau = levels[iou >= iou.max() - PLATEAU]
    level = 0.5 * (float(plateau.min()) + float(plateau.max()))
    chosen = (peak > level)
    union = (chosen | rendered).sum(-1).clamp(min=1)
    return LevelFit(level, float(((chosen & rendered).sum(-1) / union).float().mean()))


def fit_rendered_level(
    field: Geometry, coarse: Float[Tensor, "C C C"], chunk: int = 1 << 14
) -> tuple[SampledField, LevelFit]:
    """The level the field's renders show: fitted on the coarse grid, then again on the fine band sampled around
    that level, whose outlines are sharper. Raises ValueError when the field renders nothing."""
    first = fit_level(coarse, float(field.bound))
    sampled = sample_near_surface(field, coarse, first.level, chunk)
    return sampled, fit_level(sampled.density, sampled.bound)


def solidify(density: Float[Tensor, "R R R"], level: float) -> Float[Tensor, "R R R"]:
    """Close pinholes (gaps of one or two grid points in a wall) and fill cavities sealed inside the object, so
    the surface at ``level`` is watertight where the object is solid and has no inner shells."""
    from scipy import ndimage

    occupied = (density > level).cpu().numpy()
    padded = np.pad(occupied, 2)
    closed = ndimage.binary_closing(padded, structure=np.ones((3, 3, 3), bool))[2:-2, 2:-2, 2:-2] | occupied
    solid = ndimage.binary_fill_holes(closed)
    raised = torch.from_numpy(solid & ~occupied).to(density.device)
    return torch.where(raised, torch.full_like(density, 2.0 * level), density)


SURFACE_OUTSIDE = 1.5
"""Grid steps outside the surface where a colour ray starts."""
SURFACE_INSIDE = 6.0
"""Grid steps inside the surface where it ends (a solid has hidden the rest by then)."""
COLOUR_SAMPLES = 16


def surface_albedo(
    sampled: SampledField, points: Float[Tensor, "N 3"], normals: Float[Tensor, "N 3"], chunk: int = 1 << 16
) -> Float[Tensor, "N 3"]:
    """The albedo seen at surface ``points`` looking in along their outward ``normals``: composited over a
    short ray through the surface with the renderer's weights, from the band's density and albedo.

    Albedo is interpolated weighted by density (as premultiplied colour), so between a grid point in a thin
    coloured haze and one inside a solid the solid's colour dominates, as it does in a render."""
    device = sampled.density.device
    density_grid = sampled.density[None]
    weighted_grid = (sampled.density[..., None] * sampled.albedo).permute(3, 0, 1, 2)
    albedo_grid = torch.cat((sampled.albedo.permute(3, 0, 1, 2), sampled.known[None].float()))
    span = (SURFACE_OUTSIDE + SURFACE_INSIDE) * sampled.spacing
    t = torch.linspace(0.0, span, COLOUR_SAMPLES, device=device)
    delta = span / (COLOUR_SAMPLES - 1)
    surface_index = round((COLOUR_SAMPLES - 1) * SURFACE_OUTSIDE / (SURFACE_OUTSIDE + SURFACE_INSIDE))
    colours = []
    for p, n in zip(points.to(device).split(chunk), normals.to(device).split(chunk), strict=True):
        start = p + n * SURFACE_OUTSIDE * sampled.spacing
        along = start[:, None] - n[:, None] * t[None, :, None]  # N S 3
        density = _sample_grid(density_grid, along, sampled.bound)[0].clamp(min=0)  # N S
        weighted = _sample_grid(weighted_grid, along, sampled.bound)  # 3 N S
        plain = _sample_grid(albedo_grid, along, sampled.bound)  # 4 N S: albedo, known
        known = plain[3]
        albedo = torch.where(density > 1e-6, weighted / density.clamp(min=1e-6), plain[:3]) / known.clamp(min=1e-6)
        alpha = 1.0 - torch.exp(-density * delta)
        transmittance = torch.cumprod(torch.cat((torch.ones_like(alpha[:, :1]), 1 - alpha[:, :-1] + 1e-10), dim=1), dim=1)
        weights = alpha * transmittance * (known > 0.5)
        total = weights.sum(-1)
        colour = (albedo * weights).sum(-1) / total.clamp(min=1e-8)
        # A surface with no visible density along the ray (a level far out in a thin haze): the albedo at it.
        colours.append(torch.where(total > 1e-6, colour, albedo[:, :, surface_index]).T)
    return torch.cat(colours).clamp(0, 1) if colours else points.new_zeros(0, 3)
