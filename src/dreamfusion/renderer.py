"""Volume rendering of the field inside its bounding sphere, shaded and composited over the background."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from dreamfusion.cameras import CameraBatch
from dreamfusion.field import FieldConfig, FieldOutput, NeRFField
from dreamfusion.shading import Background, ShadingMode, shade


class SceneField(Protocol):
    """What ``render`` needs of a field: ``NeRFField``, or the trainer's compiled wrapper of one."""

    config: FieldConfig

    def __call__(self, x: Float[Tensor, "N 3"], with_normals: bool = False) -> FieldOutput: ...

    def density(self, x: Float[Tensor, "N 3"]) -> Float[Tensor, " N"]: ...


@dataclass(frozen=True)
class RendererConfig:
    """Where along each ray the field is sampled."""

    num_samples: int = 64
    """Stratified samples per ray between the ray's entry into and exit from the bounding sphere."""
    num_importance: int = 0
    """Extra samples per ray drawn from the weights of a cheap density-only first pass (0 turns it off)."""
    near_min: float = 0.05
    """Closest sample distance from the camera, for cameras inside the bounding sphere."""
    normal_weight_threshold: float = 1e-4
    """Normals are computed only at samples whose compositing weight exceeds this: the others add at most
    that much to any pixel or loss, and normals are the most expensive part of a render."""

    def __post_init__(self) -> None:
        if self.num_samples <= 0 or self.num_importance < 0 or self.near_min < 0 or self.normal_weight_threshold < 0:
            raise ValueError(
                "renderer num_samples must be positive; num_importance, near_min, normal_weight_threshold non-negative"
            )


class OccupancyGrid:
    """Which cells of the bounding cube hold any density, to skip empty space when rendering a trained field.

    Built once from the field (dilated by one cell so thin surfaces are not cut), for videos and evaluation.
    """

    def __init__(self, occupied: Bool[Tensor, "G G G"], bound: float) -> None:
        self.occupied = occupied
        self.bound = bound

    @classmethod
    @torch.no_grad()
    def from_field(cls, field: NeRFField, resolution: int = 64, threshold: float = 0.01) -> OccupancyGrid:
        device = next(field.parameters()).device
        bound = field.config.bound
        centres = (torch.arange(resolution, device=device, dtype=torch.float32) + 0.5) / resolution * 2 - 1
        grid = torch.stack(torch.meshgrid(centres, centres, centres, indexing="ij"), dim=-1).reshape(-1, 3) * bound
        density = torch.cat([field.density(chunk) for chunk in grid.split(65536)]).reshape((resolution,) * 3)
        occupied = torch.nn.functional.max_pool3d((density > threshold).float()[None, None], 3, stride=1, padding=1)
        return cls(occupied[0, 0] > 0, bound)

    def query(self, points: Float[Tensor, "N 3"]) -> Bool[Tensor, " N"]:
        resolution = self.occupied.shape[0]
        cell = ((points / self.bound + 1) / 2 * resolution).long().clamp(0, resolution - 1)
        return self.occupied[cell[:, 0], cell[:, 1], cell[:, 2]]


@dataclass
class RenderOutput:
    rgb: Float[Tensor, "B H W 3"]
    opacity: Float[Tensor, "B H W 1"]
    depth: Float[Tensor, "B H W 1"]
    """Expected distance along the ray, normalized by opacity (0 where nothing is hit)."""
    normals: Float[Tensor, "B H W 3"]
    """Opacity-weighted world-space normals (zero where nothing is hit)."""
    weights: Float[Tensor, "B R S"]
    """Compositing weight of each sample, R = H * W rays."""
    sample_normals: Float[Tensor, "B R S 3"] | None
    ray_directions: Float[Tensor, "B R 3"]


def ray_sphere_interval(
    origins: Float[Tensor, "R 3"], directions: Float[Tensor, "R 3"], radius: float, near_min: float
) -> tuple[Float[Tensor, " R"], Float[Tensor, " R"], Float[Tensor, " R"]]:
    """Entry and exit distances of unit-direction rays through a sphere at the origin, and a hit mask."""
    b = (origins * directions).sum(-1)
    c = (origins * origins).sum(-1) - radius**2
    disc = b * b - c
    root = disc.clamp(min=0.0).sqrt()
    near = (-b - root).clamp(min=near_min)
    far = -b + root
    hit = (disc > 0) & (far > near)
    far = torch.where(hit, far, near + 1e-3)
    return near, far, hit


def _sample_pdf(
    bins: Float[Tensor, "R K"], weights: Float[Tensor, "R K"], count: int, generator: torch.Generator | None
) -> Float[Tensor, "R count"]:
    """Inverse-transform samples of distances from piecewise-constant weights over sample intervals."""
    pdf = (weights + 1e-5) / (weights + 1e-5).sum(-1, keepdim=True)
    cdf = torch.cat((torch.zeros_like(pdf[:, :1]), pdf.cumsum(-1)), dim=-1)  # R K+1
    edges = torch.cat((bins[:, :1], 0.5 * (bins[:, 1:] + bins[:, :-1]), bins[:, -1:]), dim=-1)  # R K+1
    if generator is None:
        u = torch.linspace(0.0, 1.0, count + 2, device=bins.device)[1:-1].expand(bins.shape[0], count)
    else:
        u = torch.rand(bins.shape[0], count, generator=generator, device=bins.device)
    index = torch.searchsorted(cdf, u.contiguous(), right=True).clamp(1, cdf.shape[-1] - 1)
    cdf_lo, cdf_hi = cdf.gather(-1, index - 1), cdf.gather(-1, index)
    edge_lo, edge_hi = edges.gather(-1, index - 1), edges.gather(-1, index)
    fraction = (u - cdf_lo) / (cdf_hi - cdf_lo).clamp(min=1e-8)
    return edge_lo + fraction * (edge_hi - edge_lo)


def composite(
    density: Float[Tensor, "R S"], t: Float[Tensor, "R S"], far: Float[Tensor, " R"]
) -> Float[Tensor, "R S"]:
    """Alpha-compositing weights w_i = T_i (1 - exp(-sigma_i delta_i))."""
    deltas = torch.cat((t[:, 1:] - t[:, :-1], (far - t[:, -1]).clamp(min=1e-4)[:, None]), dim=-1)
    alpha = 1.0 - torch.exp(-density * deltas)
    transmittance = torch.cumprod(torch.cat((torch.ones_like(alpha[:, :1]), 1.0 - alpha + 1e-10), dim=-1), dim=-1)
    return alpha * transmittance[:, :-1]


def render(
    field: SceneField,
    background: Background,
    cameras: CameraBatch,
    config: RendererConfig,
    shading: ShadingMode = "albedo",
    ambient: float = 0.1,
    diffuse: float = 0.9,
    with_normals: bool = False,
    training: bool = False,
    host_generator: torch.Generator | None = None,
    device_generator: torch.Generator | None = None,
    occupancy: OccupancyGrid | None = None,
) -> RenderOutput:
    """Render ``cameras``; ``training`` turns on stratified jitter (``device_generator``) and background
    augmentation (``host_generator``). Normals are computed when shading needs them or ``with_normals``.
    With ``occupancy``, samples in empty cells are skipped (for rendering trained fields)."""
    batch, height, width, _ = cameras.rays_o.shape
    origins = cameras.rays_o.reshape(-1, 3)
    directions = cameras.rays_d.reshape(-1, 3)
    rays = origins.shape[0]
    near, far, hit = ray_sphere_interval(origins, directions, field.config.bound, config.near_min)

    steps = torch.arange(config.num_samples, device=origins.device, dtype=origins.dtype)
    if training:
        jitter = torch.rand(rays, config.num_samples, generator=device_generator, device=origins.device)
    else:
        jitter = torch.full((rays, config.num_samples), 0.5, device=origins.device)
    t = near[:, None] + (far - near)[:, None] * (steps + jitter) / config.num_samples

    if config.num_importance > 0:
        with torch.no_grad():
            coarse_points = origins[:, None] + directions[:, None] * t[..., None]
            coarse_density = field.density(coarse_points.reshape(-1, 3)).reshape(rays, config.num_samples)
            coarse_weights = composite(coarse_density, t, far)
            fine = _sample_pdf(t, coarse_weights, config.num_importance, device_generator if training else None)
            t, _ = torch.sort(torch.cat((t, fine), dim=-1), dim=-1)

    samples = t.shape[1]
    points = origins[:, None] + directions[:, None] * t[..., None]
    flat_points = points.reshape(-1, 3)
    active = hit[:, None].expand(rays, samples).reshape(-1)
    if occupancy is not None:
        active = active & occupancy.query(flat_points)
    density = torch.zeros(rays * samples, device=origins.device, dtype=origins.dtype)
    albedo = torch.zeros(rays * samples, 3, device=origins.device, dtype=origins.dtype)
    out = field(flat_points[active])
    density = density.masked_scatter(active, out.density)
    albedo = albedo.masked_scatter(active[:, None], out.albedo)
    density = density.reshape(rays, samples)
    weights = composite(density, t, far)

    sample_normals = None
    if with_normals or shading != "albedo":
        # Normals only where they can matter (see RendererConfig.normal_weight_threshold).
        significant = (weights.detach() > config.normal_weight_threshold).reshape(-1)
        normals = field(flat_points[significant], with_normals=True).normals
        assert normals is not None
        sample_normals = torch.zeros_like(flat_points).masked_scatter(significant[:, None], normals).reshape(rays, samples, 3)
    light = cameras.light_position[:, None, None, :].expand(batch, height * width, samples, 3).reshape(rays, samples, 3)
    colours = shade(albedo.reshape(rays, samples, 3), sample_normals, points, light, shading, ambient, diffuse)

    opacity = weights.sum(-1, keepdim=True)
    foreground = (weights[..., None] * colours).sum(1)
    depth = (weights * t).sum(-1, keepdim=True) / opacity.clamp(min=1e-6)
    if sample_normals is None:
        normals = torch.zeros_like(foreground)
    else:
        normals = (weights[..., None] * sample_normals).sum(1)

    bg = background.colour(cameras.rays_d, training, host_generator).reshape(rays, 3)
    rgb = foreground + (1.0 - opacity) * bg

    def image(x: Float[Tensor, "R C"]) -> Float[Tensor, "B H W C"]:
        # The channel count is explicit: a -1 cannot be inferred when there are no rays (no cameras).
        return x.reshape(batch, height, width, x.shape[-1])

    return RenderOutput(
        rgb=image(rgb),
        opacity=image(opacity),
        depth=image(depth),
        normals=image(normals),
        weights=weights.reshape(batch, height * width, samples),
        sample_normals=None if sample_normals is None else sample_normals.reshape(batch, height * width, samples, 3),
        ray_directions=directions.reshape(batch, height * width, 3),
    )
