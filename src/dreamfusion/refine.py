"""The surface stage after the NeRF (coarse to fine, as in Magic3D): the trained NeRF's surface becomes a signed
distance field (``sdf_field``), which SDS keeps optimizing at a higher render resolution and smaller noise levels.

A NeRF trained with SDS is a soft cloud; a signed distance field has a crisp zero level by construction, so the
fine stage sharpens the surface and the mesh is its exact zero level. The stage starts with a fit of the SDF to
the NeRF at the density level the NeRF's renders show (the level mesh export fits), so nothing learned is lost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from dreamfusion.cameras import CameraConfig
from dreamfusion.export.surface import fine_resolution, fit_rendered_level, sample_coarse
from dreamfusion.field import FieldConfig
from dreamfusion.geometry import Geometry
from dreamfusion.renderer import RendererConfig
from dreamfusion.schedules import Ramp, TimestepRange
from dreamfusion.sdf_field import SDFField, SDFFieldConfig, fit_to_density, loss_eikonal

if TYPE_CHECKING:
    from dreamfusion.config import RunConfig

StageName = Literal["coarse", "refine"]
STAGES: tuple[StageName, ...] = ("coarse", "refine")
EIKONAL_POINTS = 4096
"""Points per step of the eikonal loss."""


@dataclass(frozen=True)
class RefineConfig:
    """The surface stage: its length, render size, learning rate and the SDF's start. Off while ``iters`` is 0."""

    iters: int = 0
    """Steps of the surface stage after the coarse ``trainer.iters``; 0 turns the stage off."""
    resolution: int = 128
    """Largest side of the stage's renders (at least camera.resolution): a surface has detail a 64 px render
    blurs. The stage renders at the smaller of this and the prior's own image size (never below the coarse
    stage's), since a render larger than the prior sees only costs time; the prior resizes renders to its own
    size, antialiased where it shrinks them."""
    lr: float = 5e-3
    """Adam learning rate of the SDF (hash grid, MLP and log beta): lower than the NeRF's, as the fit already
    holds the shape."""
    beta_init: float = 0.05
    """Initial Laplace scale of the SDF's density (its falloff outside the surface); beta is learned from there."""
    fit_steps: int = 500
    """Steps of the SDF's fit to the NeRF's surface at the stage's start."""
    fit_points: int = 1 << 16
    """Points per fit step (half uniform, half near the surface)."""
    lambda_eikonal: Ramp = Ramp(start=0.1)
    """Weight of ``loss_eikonal``: keeps s a distance, so beta stays a width in world units."""
    timesteps: TimestepRange = TimestepRange((0.02, 0.5))
    """SDS timesteps of the stage: small noise levels refine detail without redrawing the shape."""
    num_importance: int = 32
    """Importance samples per ray of the stage's renders, which the SDF's sharp density needs to be hit."""

    def __post_init__(self) -> None:
        for name in ("iters", "num_importance"):
            if getattr(self, name) < 0:
                raise ValueError(f"refine {name} must be non-negative, got {getattr(self, name)}")
        for name in ("resolution", "fit_steps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"refine {name} must be positive, got {getattr(self, name)}")
        if self.fit_points < 2:
            raise ValueError(f"refine fit_points must be at least 2, got {self.fit_points}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"refine lr must be positive, got {self.lr}")
        if not (math.isfinite(self.beta_init) and self.beta_init >= SDFFieldConfig.beta_min):
            raise ValueError(f"refine beta_init must be at least {SDFFieldConfig.beta_min}, got {self.beta_init}")
        if self.lambda_eikonal.start < 0 or (self.lambda_eikonal.end or 0.0) < 0:
            raise ValueError("refine lambda_eikonal must be non-negative")


@dataclass(frozen=True)
class Stage:
    """The steps of one stage and how its training views are rendered."""

    name: StageName
    first_step: int
    steps: int
    camera: CameraConfig
    renderer: RendererConfig

    @classmethod
    def of(cls, name: StageName, config: RunConfig, prior_resolution: int) -> Stage:
        """The stage ``name`` of ``config``, for a prior that sees images of side ``prior_resolution``."""
        if name == "coarse":
            return cls(name, 0, config.trainer.iters, config.camera, config.renderer)
        refine = config.refine
        side = max(min(refine.resolution, prior_resolution), config.camera.resolution)
        return cls(
            name, config.trainer.iters, refine.iters, replace(config.camera, resolution=side),
            replace(config.renderer, num_importance=refine.num_importance),
        )  # fmt: skip

    def local_step(self, step: int) -> int:
        return step - self.first_step

    def progress(self, step: int) -> float:
        """``step``'s place in this stage, 0 to 1: the guidance schedule restarts with each stage."""
        return self.local_step(step) / max(self.steps - 1, 1)


def refine_field(field: FieldConfig, refine: RefineConfig) -> SDFField:
    """The stage's SDF, with the NeRF's encoding, MLP and bound (so its sizes are what the run was sized for)."""
    return SDFField(SDFFieldConfig.like(field, beta_init=refine.beta_init))


@torch.no_grad()
def rendered_surface_level(field: Geometry, resolution: int, device: torch.device) -> float:
    """The density level whose outlines match the field's renders, as mesh export finds it. Raises ValueError
    when the field renders nothing."""
    coarse = sample_coarse(field, fine_resolution(resolution), device)
    return fit_rendered_level(field, coarse)[1].level


def fit_to_nerf(nerf: Geometry, config: RunConfig, seed: int, device: torch.device) -> SDFField:
    """A fresh SDF trained to the surface ``nerf``'s renders show (found at the run's mesh resolution). Its
    initialization and fit draw only from ``seed``, never from the run's random streams, so a resumed run
    that crosses the boundary builds the same SDF. Raises ValueError when the NeRF shows no surface."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sdf = refine_field(config.field, config.refine).to(device)
    level = rendered_surface_level(nerf, config.mesh.resolution, device)
    generator = torch.Generator(device=device).manual_seed(seed)
    fit_to_density(sdf, nerf, level, config.refine.fit_steps, config.refine.fit_points, generator)
    return sdf


def uniform_ball_points(count: int, radius: float, generator: torch.Generator) -> Float[Tensor, "N 3"]:
    """Points uniformly distributed in the ball of ``radius`` at the origin, on the generator's device."""
    device = generator.device
    direction = torch.nn.functional.normalize(torch.randn(count, 3, generator=generator, device=device), dim=-1)
    distance = radius * torch.rand(count, 1, generator=generator, device=device).pow(1.0 / 3.0)
    return direction * distance


def eikonal_loss(sdf: SDFField, generator: torch.Generator) -> Float[Tensor, ""]:
    """``loss_eikonal`` at EIKONAL_POINTS uniform points in the bounding sphere. Uniform rather than the render's
    samples: those crowd near the visible surface, while s must stay a distance everywhere the renderer can
    sample (else a spurious zero level can grow where no view currently looks), and the cost stays fixed."""
    points = uniform_ball_points(EIKONAL_POINTS, sdf.bound, generator)
    _, gradient = sdf.sdf_with_gradient(points)
    return loss_eikonal(gradient)
