"""Volume rendering of a geometry inside its bounding sphere, in four stages: sample distances along each ray
(``sample_rays``), query the geometry there (``query_geometry``), shade the samples (``shade_samples``) and
composite them over the background (``composite``)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from dreamfusion.cameras import CameraBatch
from dreamfusion.field import NeRFField
from dreamfusion.geometry import Geometry
from dreamfusion.shading import Background, BackgroundDraw, ShadingMode, shade
from dreamfusion.voxels import dilated


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
    """Normals count only at samples whose compositing weight exceeds this: the others add at most that much
    to any pixel or loss, and normals are the most expensive part of a render."""
    sample_compaction: Literal["auto", "on", "off"] = "auto"
    """"on": query the geometry only at the samples that count (rays that cross the sphere, occupied cells,
    normals where the weight is significant). That saves work, but how many samples count is known only on
    the device, so on a GPU the host waits for it twice a render and four times a backward pass. "off": query
    every sample, masking the rest, in one pass with normals, so a step queues without waiting. "auto": off for
    training renders on CUDA (their rays nearly all cross the sphere, so little is skipped), on otherwise."""

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
        bound = field.bound
        centres = (torch.arange(resolution, device=device, dtype=torch.float32) + 0.5) / resolution * 2 - 1
        grid = torch.stack(torch.meshgrid(centres, centres, centres, indexing="ij"), dim=-1).reshape(-1, 3) * bound
        density = torch.cat([field.density(chunk) for chunk in grid.split(65536)]).reshape((resolution,) * 3)
        return cls(dilated(density > threshold), bound)

    def query(self, points: Float[Tensor, "N 3"]) -> Bool[Tensor, " N"]:
        resolution = self.occupied.shape[0]
        cell = ((points / self.bound + 1) / 2 * resolution).long().clamp(0, resolution - 1)
        return self.occupied[cell[:, 0], cell[:, 1], cell[:, 2]]


@dataclass(frozen=True)
class ShadingOptions:
    """How the colour of a sample is formed from its albedo (see ``shading.shade``)."""

    mode: ShadingMode = "albedo"
    ambient: float = 0.1
    diffuse: float = 0.9
    with_normals: bool = False
    """Compute normals even where ``mode`` does not light with them: for normal maps and losses on normals."""

    @property
    def needs_normals(self) -> bool:
        return self.with_normals or self.mode != "albedo"


@dataclass
class RenderDraws:
    """A training render's random numbers, drawn before it: the jitter of the samples along each ray and the
    quantiles of the importance samples (the device stream, in that order), then the background (the host
    stream), as a render with only the generators draws them. A captured graph of the render takes them as
    inputs."""

    jitter: Float[Tensor, "R S"]
    importance: Float[Tensor, "R I"] | None
    background: BackgroundDraw

    @classmethod
    def draw(
        cls, config: RendererConfig, background: Background, batch: int, rays: int,
        host_generator: torch.Generator, device_generator: torch.Generator,
    ) -> RenderDraws:  # fmt: skip
        device = device_generator.device
        jitter = torch.rand(rays, config.num_samples, generator=device_generator, device=device)
        importance = None
        if config.num_importance > 0:
            importance = torch.rand(rays, config.num_importance, generator=device_generator, device=device)
        return cls(jitter, importance, background.draw(batch, host_generator, device))


@dataclass(frozen=True)
class Randomness:
    """Where a training render's random numbers come from: ``draws``, or else the generators (see
    ``RenderDraws``). Renders outside training draw none: samples sit at their intervals' centres, importance
    samples at evenly spaced quantiles, and the background is the evaluation one."""

    training: bool = False
    """Jitter the samples along each ray and augment the background; otherwise both are deterministic."""
    host_generator: torch.Generator | None = None
    """CPU stream of the background's random colours."""
    device_generator: torch.Generator | None = None
    """Stream of the sample positions, on the rays' device."""
    draws: RenderDraws | None = None

    def drawn(self, config: RendererConfig, background: Background, batch: int, rays: int) -> RenderDraws | None:
        """The render's random numbers: ``draws``, else drawn now from the generators; None outside training."""
        if not self.training or self.draws is not None:
            return self.draws
        if self.host_generator is None or self.device_generator is None:
            raise ValueError("a training render needs its random numbers: draws, or a host and a device generator")
        return RenderDraws.draw(config, background, batch, rays, self.host_generator, self.device_generator)


@dataclass
class RaySamples:
    """Sorted distances along each ray, within its stretch of the bounding sphere."""

    origins: Float[Tensor, "R 3"]
    directions: Float[Tensor, "R 3"]
    """Unit vectors, so distances are in world units."""
    t: Float[Tensor, "R S"]
    far: Float[Tensor, " R"]
    """Where each ray leaves the sphere: the last sample's interval ends there."""
    hit: Bool[Tensor, " R"]
    """Rays that cross the sphere; the others see only the background."""

    @property
    def points(self) -> Float[Tensor, "R S 3"]:
        return self.origins[:, None] + self.directions[:, None] * self.t[..., None]


@dataclass
class SampledGeometry:
    """The geometry at every sample; zero density and albedo where it was not queried."""

    points: Float[Tensor, "R S 3"]
    density: Float[Tensor, "R S"]
    albedo: Float[Tensor, "R S 3"]
    normals: Float[Tensor, "R S 3"] | None = None
    """Normals at every sample, when the query computed them with the rest (no compaction)."""


@dataclass
class ShadedSamples:
    colours: Float[Tensor, "R S 3"]
    normals: Float[Tensor, "R S 3"] | None
    """Outward unit normals where the compositing weight is significant, zero elsewhere; None when not needed."""


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
    bins: Float[Tensor, "R K"], weights: Float[Tensor, "R K"], count: int, quantiles: Float[Tensor, "R count"] | None
) -> Float[Tensor, "R count"]:
    """Inverse-transform samples of distances from piecewise-constant weights over sample intervals, at
    ``quantiles`` (random in training), else at evenly spaced ones."""
    pdf = (weights + 1e-5) / (weights + 1e-5).sum(-1, keepdim=True)
    cdf = torch.cat((torch.zeros_like(pdf[:, :1]), pdf.cumsum(-1)), dim=-1)  # R K+1
    edges = torch.cat((bins[:, :1], 0.5 * (bins[:, 1:] + bins[:, :-1]), bins[:, -1:]), dim=-1)  # R K+1
    if quantiles is None:
        u = torch.linspace(0.0, 1.0, count + 2, device=bins.device)[1:-1].expand(bins.shape[0], count)
    else:
        u = quantiles
    index = torch.searchsorted(cdf, u.contiguous(), right=True).clamp(1, cdf.shape[-1] - 1)
    cdf_lo, cdf_hi = cdf.gather(-1, index - 1), cdf.gather(-1, index)
    edge_lo, edge_hi = edges.gather(-1, index - 1), edges.gather(-1, index)
    fraction = (u - cdf_lo) / (cdf_hi - cdf_lo).clamp(min=1e-8)
    return edge_lo + fraction * (edge_hi - edge_lo)


def compositing_weights(
    density: Float[Tensor, "R S"], t: Float[Tensor, "R S"], far: Float[Tensor, " R"]
) -> Float[Tensor, "R S"]:
    """Alpha-compositing weights w_i = T_i (1 - exp(-sigma_i delta_i)), with T_i = exp(-sum_{j<i} sigma_j delta_j).
    The transmittance is a sum, not a product of (1 - alpha_j): the backward of a cumulative product asks the
    host whether any factor is zero, which makes a CUDA step wait."""
    deltas = torch.cat((t[:, 1:] - t[:, :-1], (far - t[:, -1]).clamp(min=1e-4)[:, None]), dim=-1)
    optical_depth = density * deltas
    alpha = 1.0 - torch.exp(-optical_depth)
    before = torch.cat((torch.zeros_like(optical_depth[:, :1]), optical_depth[:, :-1].cumsum(-1)), dim=-1)
    return alpha * torch.exp(-before)


def _stratified(
    near: Float[Tensor, " R"], far: Float[Tensor, " R"], count: int, jitter: Float[Tensor, "R count"] | None
) -> Float[Tensor, "R count"]:
    """One distance in each of ``count`` equal intervals of [near, far]: at ``jitter`` (in [0, 1)) across it in
    training, else its centre."""
    steps = torch.arange(count, device=near.device, dtype=near.dtype)
    if jitter is None:
        jitter = torch.full((near.shape[0], count), 0.5, device=near.device)
    return near[:, None] + (far - near)[:, None] * (steps + jitter) / count


@torch.no_grad()
def _with_importance_samples(
    geometry: Geometry, samples: RaySamples, count: int, quantiles: Float[Tensor, "R count"] | None
) -> RaySamples:
    """``samples`` and ``count`` more per ray, drawn where a density-only pass over them puts the weight."""
    rays, coarse = samples.t.shape
    density = geometry.density(samples.points.reshape(-1, 3)).reshape(rays, coarse)
    weights = compositing_weights(density, samples.t, samples.far)
    fine = _sample_pdf(samples.t, weights, count, quantiles)
    t, _ = torch.sort(torch.cat((samples.t, fine), dim=-1), dim=-1)
    return replace(samples, t=t)


def sample_rays(
    geometry: Geometry,
    origins: Float[Tensor, "R 3"],
    directions: Float[Tensor, "R 3"],
    config: RendererConfig,
    draws: RenderDraws | None,
) -> RaySamples:
    """Stratified distances inside the geometry's bounding sphere, refined by importance samples when configured;
    at random positions from ``draws`` in training, else at fixed ones."""
    near, far, hit = ray_sphere_interval(origins, directions, geometry.bound, config.near_min)
    jitter = None if draws is None else draws.jitter
    samples = RaySamples(origins, directions, _stratified(near, far, config.num_samples, jitter), far, hit)
    if config.num_importance > 0:
        samples = _with_importance_samples(geometry, samples, config.num_importance, None if draws is None else draws.importance)
    return samples


def query_geometry(
    geometry: Geometry, samples: RaySamples, occupancy: OccupancyGrid | None, compact: bool = True, with_normals: bool = False
) -> SampledGeometry:
    """Density and albedo at the samples of rays that cross the sphere, zero in cells ``occupancy`` marks empty.
    ``compact`` queries only those samples; otherwise every sample is queried, with normals when asked, and
    the others are masked (see ``RendererConfig.sample_compaction``)."""
    rays, count = samples.t.shape
    points = samples.points
    flat_points = points.reshape(-1, 3)
    active = samples.hit[:, None].expand(rays, count).reshape(-1)
    if occupancy is not None:
        active = active & occupancy.query(flat_points)
    if not compact:
        out = geometry(flat_points, with_normals=with_normals)
        density = torch.where(active, out.density, 0.0)
        albedo = torch.where(active[:, None], out.albedo, 0.0)
        normals = None if out.normals is None else out.normals.reshape(points.shape)
        return SampledGeometry(points, density.reshape(rays, count), albedo.reshape(rays, count, 3), normals)
    out = geometry(flat_points[active])
    density = flat_points.new_zeros(rays * count).masked_scatter(active, out.density)
    albedo = flat_points.new_zeros(rays * count, 3).masked_scatter(active[:, None], out.albedo)
    return SampledGeometry(points, density.reshape(rays, count), albedo.reshape(rays, count, 3))


def shade_samples(
    geometry: Geometry,
    sampled: SampledGeometry,
    weights: Float[Tensor, "R S"],
    lights: Float[Tensor, "R 3"],
    options: ShadingOptions,
    normal_weight_threshold: float,
) -> ShadedSamples:
    """The colour of every sample under the light of its ray's camera; normals (when needed) only where the
    compositing weight exceeds ``normal_weight_threshold`` (see ``RendererConfig``)."""
    normals = None
    if options.needs_normals:
        significant = weights.detach() > normal_weight_threshold
        if sampled.normals is not None:
            normals = torch.where(significant[..., None], sampled.normals, 0.0)
        else:
            flat_points = sampled.points.reshape(-1, 3)
            found = geometry(flat_points[significant.reshape(-1)], with_normals=True).normals
            assert found is not None, "a geometry asked for normals must return them"
            normals = torch.zeros_like(flat_points).masked_scatter(significant.reshape(-1, 1), found).reshape(sampled.points.shape)
    light = lights[:, None].expand_as(sampled.points)
    colours = shade(sampled.albedo, normals, sampled.points, light, options.mode, options.ambient, options.diffuse)
    return ShadedSamples(colours, normals)


def compacts_samples(config: RendererConfig, training: bool, device: torch.device) -> bool:
    """Whether a render queries only the samples that count (see ``RendererConfig.sample_compaction``)."""
    if config.sample_compaction == "auto":
        return not (training and device.type == "cuda")
    return config.sample_compaction == "on"


def composite(
    samples: RaySamples, weights: Float[Tensor, "R S"], shaded: ShadedSamples, background: Float[Tensor, "B H W 3"]
) -> RenderOutput:
    """The samples accumulated by their weights over ``background``, as images of the background's shape."""
    batch, height, width, _ = background.shape
    opacity = weights.sum(-1, keepdim=True)
    foreground = (weights[..., None] * shaded.colours).sum(1)
    depth = (weights * samples.t).sum(-1, keepdim=True) / opacity.clamp(min=1e-6)
    if shaded.normals is None:
        normals = torch.zeros_like(foreground)
    else:
        normals = (weights[..., None] * shaded.normals).sum(1)
    rgb = foreground + (1.0 - opacity) * background.reshape(-1, 3)

    def image(x: Float[Tensor, "R C"]) -> Float[Tensor, "B H W C"]:
        # The channel count is explicit: a -1 cannot be inferred when there are no rays (no cameras).
        return x.reshape(batch, height, width, x.shape[-1])

    count = weights.shape[1]
    return RenderOutput(
        rgb=image(rgb),
        opacity=image(opacity),
        depth=image(depth),
        normals=image(normals),
        weights=weights.reshape(batch, height * width, count),
        sample_normals=None if shaded.normals is None else shaded.normals.reshape(batch, height * width, count, 3),
        ray_directions=samples.directions.reshape(batch, height * width, 3),
    )


def render(
    geometry: Geometry,
    background: Background,
    cameras: CameraBatch,
    config: RendererConfig,
    *,
    shading: ShadingMode = "albedo",
    ambient: float = 0.1,
    diffuse: float = 0.9,
    with_normals: bool = False,
    training: bool = False,
    host_generator: torch.Generator | None = None,
    device_generator: torch.Generator | None = None,
    draws: RenderDraws | None = None,
    occupancy: OccupancyGrid | None = None,
) -> RenderOutput:
    """Render ``cameras`` through the four stages. ``shading`` (the mode), ``ambient``, ``diffuse`` and
    ``with_normals`` are the ``ShadingOptions``; ``training`` (sample jitter, background augmentation) and the
    generators or ``draws`` are the ``Randomness``. With ``occupancy``, samples in empty cells are skipped (for
    rendering trained fields)."""
    options = ShadingOptions(shading, ambient, diffuse, with_normals)
    randomness = Randomness(training, host_generator, device_generator, draws)
    return render_rays(geometry, background, cameras.rays_o, cameras.rays_d, cameras.light_position, config, options,
                       randomness, occupancy)  # fmt: skip


def render_rays(
    geometry: Geometry,
    background: Background,
    rays_o: Float[Tensor, "B H W 3"],
    rays_d: Float[Tensor, "B H W 3"],
    light_position: Float[Tensor, "B 3"],
    config: RendererConfig,
    options: ShadingOptions,
    randomness: Randomness,
    occupancy: OccupancyGrid | None = None,
) -> RenderOutput:
    """``render`` from the cameras' rays and lights alone."""
    draws = randomness.drawn(config, background, rays_o.shape[0], rays_o.shape[:3].numel())
    samples = sample_rays(geometry, rays_o.reshape(-1, 3), rays_d.reshape(-1, 3), config, draws)
    compact = compacts_samples(config, randomness.training, rays_o.device)
    sampled = query_geometry(geometry, samples, occupancy, compact, with_normals=options.needs_normals)
    weights = compositing_weights(sampled.density, samples.t, samples.far)
    lights = light_position[:, None, None, :].expand_as(rays_o).reshape(-1, 3)
    shaded = shade_samples(geometry, sampled, weights, lights, options, config.normal_weight_threshold)
    behind = background.colour(rays_d, None if draws is None else draws.background)
    return composite(samples, weights, shaded, behind)
