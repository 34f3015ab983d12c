"""DreamFusion camera and light sampler, view labels and the turntable path.

Conventions, used everywhere in the package (the embedded prior's training data included):

* World space is z-up. An object's front faces +x: a camera at azimuth 0 and elevation 0 sits on
  the +x axis and sees the front. Azimuth grows counter-clockwise seen from above (+x towards +y).
* Cameras follow the OpenGL convention: in camera space x points right, y up, and the camera looks
  down -z. ``c2w`` maps camera space to world space.
* Angles are in degrees at the interface and converted once, here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from dreamfusion.transfer import to_device

ViewLabel = Literal["front", "side", "back", "overhead"]
VIEW_LABELS: tuple[ViewLabel, ...] = ("front", "side", "back", "overhead")

OVERHEAD_ELEVATION_DEG = 60.0
"""Cameras above this elevation are labelled "overhead"; below, the azimuth quadrant decides."""


def view_label(elevation_deg: float, azimuth_deg: float) -> ViewLabel:
    """The paper's view label of one camera: nearest of front / side / back, or overhead.

    Elevation strictly above 60 degrees is "overhead". Otherwise the azimuth, wrapped to [-180, 180),
    decides: strictly within 45 degrees of 0 is "front", strictly within 45 degrees of 180 is "back",
    everything else (the quadrant boundaries included) is "side".
    """
    if elevation_deg > OVERHEAD_ELEVATION_DEG:
        return "overhead"
    wrapped = (azimuth_deg + 180.0) % 360.0 - 180.0
    if abs(wrapped) < 45.0:
        return "front"
    if abs(wrapped) > 135.0:
        return "back"
    return "side"


VIEW_AZIMUTH_DEG: dict[ViewLabel, float] = {"front": 0.0, "side": 90.0, "back": 180.0}
"""Canonical azimuth of each horizontal view (a side view is also at -90 degrees)."""


def view_suffix(label: ViewLabel) -> str:
    """The text appended to a prompt for a view, e.g. ``"a red chair" + ", front view"``."""
    return f", {label} view"


def view_prompts(prompt: str) -> dict[ViewLabel, str]:
    """The prompt with each view suffix appended: {"front": "a red chair, front view", ...}."""
    return {label: prompt + view_suffix(label) for label in VIEW_LABELS}


def split_view(prompt: str) -> tuple[str, ViewLabel | None]:
    """Separate a trailing view suffix: "a red chair, front view" -> ("a red chair", "front")."""
    text = prompt.strip().rstrip(".!")
    for label in VIEW_LABELS:
        for ending in (view_suffix(label), f" {label} view"):
            if text.lower().endswith(ending):
                return text[: -len(ending)].rstrip(" ,"), label
    return text, None


@dataclass(frozen=True)
class CameraConfig:
    """Distribution of random training cameras and lights (DreamFusion, appendix)."""

    resolution: int = 64
    """Rendered image side in pixels."""
    elevation_range: tuple[float, float] = (-10.0, 90.0)
    """Elevation bounds in degrees."""
    uniform_area_probability: float = 0.5
    """Probability of sampling elevation uniformly in area on the sphere instead of uniformly in angle."""
    azimuth_range: tuple[float, float] = (0.0, 360.0)
    """Azimuth bounds in degrees."""
    distance_range: tuple[float, float] = (1.0, 1.5)
    """Camera distance from the origin."""
    focal_range: tuple[float, float] = (0.7, 1.35)
    """Focal length as a multiple of the resolution (0.7..1.35 gives a field of view of ~41..71 degrees)."""
    position_jitter: float = 0.1
    """Camera position noise, uniform in [-j, j] per axis."""
    look_at_std: float = 0.2
    """Standard deviation of the look-at point around the origin."""
    up_std: float = 0.02
    """Standard deviation of the noise added to the up vector."""
    light_distance_range: tuple[float, float] = (0.8, 1.5)
    """Point light distance from the origin; its direction is drawn around the camera position."""

    def __post_init__(self) -> None:
        if self.resolution <= 0:
            raise ValueError(f"camera resolution must be positive, got {self.resolution}")
        for name in ("elevation_range", "azimuth_range", "distance_range", "focal_range", "light_distance_range"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"camera {name} must be (low, high) with low <= high, got {(low, high)}")
        if self.distance_range[0] <= 0 or self.focal_range[0] <= 0:
            raise ValueError("camera distance and focal multiplier must be positive")


@dataclass
class CameraBatch:
    """A batch of pinhole cameras with their rays, light and view labels."""

    rays_o: Float[Tensor, "B H W 3"]
    rays_d: Float[Tensor, "B H W 3"]
    """Unit ray directions in world space."""
    c2w: Float[Tensor, "B 4 4"]
    intrinsics: Float[Tensor, "B 3 3"]
    elevation: Float[Tensor, " B"]
    """Degrees, of the camera position before jitter."""
    azimuth: Float[Tensor, " B"]
    """Degrees in [0, 360), of the camera position before jitter."""
    distance: Float[Tensor, " B"]
    light_position: Float[Tensor, "B 3"]
    view_labels: tuple[ViewLabel, ...]

    @property
    def batch_size(self) -> int:
        return self.c2w.shape[0]

    @property
    def resolution(self) -> int:
        return self.rays_o.shape[1]

    def to(self, device: torch.device | str) -> CameraBatch:
        """The rays, poses and lights on ``device``. The angles stay where they are: they only label views and
        weight the guidance's negatives, which the host decides (reading them from a GPU would make it wait)."""
        return CameraBatch(
            rays_o=to_device(self.rays_o, device),
            rays_d=to_device(self.rays_d, device),
            c2w=to_device(self.c2w, device),
            intrinsics=to_device(self.intrinsics, device),
            elevation=self.elevation,
            azimuth=self.azimuth,
            distance=self.distance,
            light_position=to_device(self.light_position, device),
            view_labels=self.view_labels,
        )

    def subset(self, cameras: slice = slice(None), rows: slice = slice(None)) -> CameraBatch:
        """Cameras ``cameras`` of the batch, keeping only the rays of pixel rows ``rows``: a horizontal band of
        each image, so that large renders can be made a bounded number of rays at a time. ``resolution`` of a
        band reads its height."""
        return CameraBatch(
            rays_o=self.rays_o[cameras, rows],
            rays_d=self.rays_d[cameras, rows],
            c2w=self.c2w[cameras],
            intrinsics=self.intrinsics[cameras],
            elevation=self.elevation[cameras],
            azimuth=self.azimuth[cameras],
            distance=self.distance[cameras],
            light_position=self.light_position[cameras],
            view_labels=self.view_labels[cameras],
        )

    def ray_chunks(self, max_rays: int) -> list[tuple[slice, slice]]:
        """(cameras, rows) slices for ``subset`` that cover the batch's rays in order, each at most ``max_rays``
        rays: whole images while one fits, else bands of rows of one image (at least one row each)."""
        if max_rays <= 0:
            raise ValueError(f"max_rays must be positive, got {max_rays}")
        batch, height, width = self.rays_o.shape[:3]
        per_image = max(height * width, 1)
        if per_image <= max_rays:
            step = max_rays // per_image
            return [(slice(start, min(start + step, batch)), slice(0, height)) for start in range(0, batch, step)]
        band = max(max_rays // max(width, 1), 1)
        return [
            (slice(camera, camera + 1), slice(row, min(row + band, height)))
            for camera in range(batch)
            for row in range(0, height, band)
        ]


def spherical_to_cartesian(
    elevation_deg: Float[Tensor, " B"], azimuth_deg: Float[Tensor, " B"], distance: Float[Tensor, " B"]
) -> Float[Tensor, "B 3"]:
    """Position on a z-up sphere; azimuth 0 lies on +x."""
    elevation = torch.deg2rad(elevation_deg)
    azimuth = torch.deg2rad(azimuth_deg)
    return torch.stack(
        (
            distance * torch.cos(elevation) * torch.cos(azimuth),
            distance * torch.cos(elevation) * torch.sin(azimuth),
            distance * torch.sin(elevation),
        ),
        dim=-1,
    )


def look_at(
    eye: Float[Tensor, "B 3"], target: Float[Tensor, "B 3"], up: Float[Tensor, "B 3"]
) -> Float[Tensor, "B 4 4"]:
    """Camera-to-world matrices of cameras at ``eye`` looking at ``target`` (OpenGL: camera looks down -z)."""
    forward = torch.nn.functional.normalize(target - eye, dim=-1)
    right = torch.linalg.cross(forward, up, dim=-1)
    # Looking straight down the up vector leaves ``right`` undefined; fall back to the +y axis as right.
    degenerate = right.norm(dim=-1, keepdim=True) < 1e-6
    fallback = torch.tensor([0.0, 1.0, 0.0], dtype=eye.dtype, device=eye.device).expand_as(right)
    right = torch.nn.functional.normalize(torch.where(degenerate, fallback, right), dim=-1)
    true_up = torch.linalg.cross(right, forward, dim=-1)
    c2w = torch.zeros(eye.shape[0], 4, 4, dtype=eye.dtype, device=eye.device)
    c2w[:, :3, 0] = right
    c2w[:, :3, 1] = true_up
    c2w[:, :3, 2] = -forward
    c2w[:, :3, 3] = eye
    c2w[:, 3, 3] = 1.0
    return c2w


def pinhole_intrinsics(focal_px: Float[Tensor, " B"], resolution: int) -> Float[Tensor, "B 3 3"]:
    intrinsics = torch.zeros(focal_px.shape[0], 3, 3, dtype=focal_px.dtype, device=focal_px.device)
    intrinsics[:, 0, 0] = focal_px
    intrinsics[:, 1, 1] = focal_px
    intrinsics[:, 0, 2] = resolution / 2.0
    intrinsics[:, 1, 2] = resolution / 2.0
    intrinsics[:, 2, 2] = 1.0
    return intrinsics


def generate_rays(
    c2w: Float[Tensor, "B 4 4"], intrinsics: Float[Tensor, "B 3 3"], resolution: int
) -> tuple[Float[Tensor, "B H W 3"], Float[Tensor, "B H W 3"]]:
    """Per-pixel ray origins and unit directions through pixel centres; row 0 is the top of the image."""
    pixels = torch.arange(resolution, dtype=c2w.dtype, device=c2w.device) + 0.5
    rows, cols = torch.meshgrid(pixels, pixels, indexing="ij")
    fx = intrinsics[:, 0, 0, None, None]
    fy = intrinsics[:, 1, 1, None, None]
    cx = intrinsics[:, 0, 2, None, None]
    cy = intrinsics[:, 1, 2, None, None]
    directions_cam = torch.stack(
        ((cols - cx) / fx, -(rows - cy) / fy, -torch.ones_like(cols).expand_as(fx * cols)), dim=-1
    )
    directions = torch.einsum("bij,bhwj->bhwi", c2w[:, :3, :3], directions_cam)
    directions = torch.nn.functional.normalize(directions, dim=-1)
    origins = c2w[:, None, None, :3, 3].expand_as(directions)
    return origins, directions


def cameras_from_angles(
    elevation_deg: Float[Tensor, " B"],
    azimuth_deg: Float[Tensor, " B"],
    distance: Float[Tensor, " B"],
    focal_multiplier: Float[Tensor, " B"],
    resolution: int,
    light_position: Float[Tensor, "B 3"] | None = None,
    position_offset: Float[Tensor, "B 3"] | None = None,
    look_at_point: Float[Tensor, "B 3"] | None = None,
    up_offset: Float[Tensor, "B 3"] | None = None,
) -> CameraBatch:
    """Build cameras from angles; the optional offsets are the sampler's jitter. The light defaults to the camera."""
    eye = spherical_to_cartesian(elevation_deg, azimuth_deg, distance)
    if position_offset is not None:
        eye = eye + position_offset
    target = torch.zeros_like(eye) if look_at_point is None else look_at_point
    up = torch.zeros_like(eye)
    up[:, 2] = 1.0
    if up_offset is not None:
        up = up + up_offset
    c2w = look_at(eye, target, up)
    intrinsics = pinhole_intrinsics(focal_multiplier * resolution, resolution)
    rays_o, rays_d = generate_rays(c2w, intrinsics, resolution)
    labels = tuple(
        view_label(float(e), float(a)) for e, a in zip(elevation_deg.tolist(), azimuth_deg.tolist(), strict=True)
    )
    return CameraBatch(
        rays_o=rays_o,
        rays_d=rays_d,
        c2w=c2w,
        intrinsics=intrinsics,
        elevation=elevation_deg,
        azimuth=azimuth_deg % 360.0,
        distance=distance,
        light_position=eye.clone() if light_position is None else light_position,
        view_labels=labels,
    )


def _uniform(generator: torch.Generator, n: int, bounds: tuple[float, float]) -> Tensor:
    low, high = bounds
    return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)


def sample_cameras(config: CameraConfig, batch_size: int, generator: torch.Generator) -> CameraBatch:
    """Random training cameras and point lights, drawn on the CPU from ``generator`` (so runs are reproducible
    whatever the device); move the batch with ``.to(device)``."""
    if generator.device.type != "cpu":
        raise ValueError("sample_cameras draws from a CPU generator")
    n = batch_size
    low, high = config.elevation_range
    # Uniform in angle, or uniform in area: sin(elevation) uniform between the bounds' sines.
    in_angle = _uniform(generator, n, (low, high))
    sin_low, sin_high = math.sin(math.radians(low)), math.sin(math.radians(high))
    in_area = torch.rad2deg(torch.asin(_uniform(generator, n, (sin_low, sin_high)).clamp(-1.0, 1.0)))
    use_area = torch.rand(n, generator=generator, dtype=torch.float64) < config.uniform_area_probability
    elevation = torch.where(use_area, in_area, in_angle)
    azimuth = _uniform(generator, n, config.azimuth_range)
    distance = _uniform(generator, n, config.distance_range)
    focal = _uniform(generator, n, config.focal_range)
    position_offset = (torch.rand(n, 3, generator=generator, dtype=torch.float64) * 2 - 1) * config.position_jitter
    look_at_point = torch.randn(n, 3, generator=generator, dtype=torch.float64) * config.look_at_std
    up_offset = torch.randn(n, 3, generator=generator, dtype=torch.float64) * config.up_std

    # The light direction is drawn around the camera position, at its own distance from the origin.
    camera_position = spherical_to_cartesian(elevation, azimuth, distance) + position_offset
    light_direction = camera_position + torch.randn(n, 3, generator=generator, dtype=torch.float64)
    light_distance = _uniform(generator, n, config.light_distance_range)
    light_position = torch.nn.functional.normalize(light_direction, dim=-1) * light_distance[:, None]

    batch = cameras_from_angles(
        elevation.float(),
        azimuth.float(),
        distance.float(),
        focal.float(),
        config.resolution,
        light_position=light_position.float(),
        position_offset=position_offset.float(),
        look_at_point=look_at_point.float(),
        up_offset=up_offset.float(),
    )
    return batch


@dataclass(frozen=True)
class TurntableConfig:
    """A deterministic orbit around the object, for videos, previews and evaluation."""

    frames: int = 60
    elevation: float = 15.0
    """Degrees."""
    distance: float = 1.25
    focal_multiplier: float = 1.0
    resolution: int = 64

    def __post_init__(self) -> None:
        if self.frames <= 0:
            raise ValueError(f"turntable frames must be positive, got {self.frames}")
        if self.distance <= 0 or self.focal_multiplier <= 0 or self.resolution <= 0:
            raise ValueError("turntable distance, focal multiplier and resolution must be positive")


def turntable_cameras(config: TurntableConfig, start_azimuth: float = 0.0) -> CameraBatch:
    """``frames`` cameras evenly spaced in azimuth at a fixed elevation; the light sits at each camera."""
    n = config.frames
    azimuth = start_azimuth + torch.arange(n, dtype=torch.float32) * (360.0 / n)
    return cameras_from_angles(
        torch.full((n,), config.elevation),
        azimuth,
        torch.full((n,), config.distance),
        torch.full((n,), config.focal_multiplier),
        config.resolution,
    )
