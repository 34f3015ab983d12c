"""A signed distance surface rendered by volume rendering (VolSDF, Yariv et al. 2021), for the surface stage
after the NeRF, and its initialization from the NeRF's density.

The field is NeRFField's hash grid and MLP with the first output read as a signed distance s(x) (negative
inside) instead of a raw density, plus the bias |x| - init_radius so a fresh field is a sphere. The renderer
still composites densities: sigma(x) = Psi_beta(-s(x)) / beta, with Psi_beta the CDF of a zero-mean Laplace
distribution of scale beta. Density saturates at 1 / beta inside and falls off over a few beta outside, so
the surface sharpens as the learnable beta shrinks, and the zero level set is the surface at every beta.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from dreamfusion.field import FieldConfig, FieldOutput, HashGridConfig, NeRFField
from dreamfusion.geometry import Geometry
from dreamfusion.procedural.objects import grid_points
from dreamfusion.schedules import WarmupCosine
from dreamfusion.voxels import boundary


@dataclass(frozen=True)
class SDFFieldConfig:
    """The signed distance field: NeRFField's encoding and MLP (the same options, so a NeRF's sizes carry
    over), the Laplace scale of the density and the sphere it starts as."""

    encoding: HashGridConfig = HashGridConfig()
    hidden: int = 64
    layers: int = 2
    bound: float = 1.4
    """Radius of the bounding sphere; also the half side of the cube the encoding covers."""
    beta_init: float = 0.05
    """Initial Laplace scale: the density's falloff distance outside the surface."""
    beta_min: float = 1e-3
    """Lower clamp of the learned beta. The density rises from 0.5 / beta to 1 / beta within a few beta of the
    surface, so a beta far below the renderer's sample spacing needs importance samples to be rendered."""
    init_radius: float = 0.5
    """Radius of the sphere a fresh field is."""

    def __post_init__(self) -> None:
        _ = self.field  # building it validates the encoding and MLP sizes and the bound
        if not 0 < self.beta_min <= self.beta_init:
            raise ValueError("sdf field needs 0 < beta_min <= beta_init")
        if not 0 < self.init_radius < self.bound:
            raise ValueError("sdf field init_radius must lie in (0, bound)")

    @property
    def field(self) -> FieldConfig:
        """The NeRFField config of the encoding and MLP; its density options do not apply (analytic normals)."""
        return FieldConfig(
            encoding=self.encoding, hidden=self.hidden, layers=self.layers, bound=self.bound, density_bias="none"
        )

    @classmethod
    def like(cls, field: FieldConfig, **options: float) -> SDFFieldConfig:
        """The encoding, MLP and bound of a NeRF's ``field`` config, with the SDF ``options`` (beta_init, ...)."""
        return cls(encoding=field.encoding, hidden=field.hidden, layers=field.layers, bound=field.bound, **options)


def laplace_cdf(y: Float[Tensor, "*N"], beta: Float[Tensor, ""] | float) -> Float[Tensor, "*N"]:
    """CDF of a zero-mean Laplace distribution of scale ``beta``. Each side exponentiates only a clamped
    non-positive argument, so neither value nor gradient overflows far from zero; unlike exp(-|y| / beta), the
    clamps pass the gradient at y = 0, where the density's slope is steepest."""
    below = 0.5 * torch.exp(y.clamp(max=0.0) / beta)
    above = 1.0 - 0.5 * torch.exp(-y.clamp(min=0.0) / beta)
    return torch.where(y <= 0, below, above)


def loss_eikonal(gradients: Float[Tensor, "N 3"]) -> Float[Tensor, ""]:
    """Mean (|grad s| - 1)^2: zero where s is a true distance, which keeps the zero level a crisp surface and
    beta a width in world units."""
    return (gradients.norm(dim=-1) - 1.0).square().mean()


class SDFField(NeRFField):
    """NeRFField whose raw density channel is a signed distance (see the module docstring); implements
    ``geometry.Geometry``. Normals are the normalized analytic gradient of s, outward."""

    def __init__(self, config: SDFFieldConfig) -> None:
        super().__init__(config.field)
        self.sdf_config = config
        self.log_beta = nn.Parameter(torch.tensor(math.log(config.beta_init)))
        with torch.no_grad():  # exactly the init_radius sphere, whatever the MLP's random initialization gives
            self.mlp[-1].weight[0].zero_()
            self.mlp[-1].bias[0].zero_()

    @property
    def beta(self) -> Float[Tensor, ""]:
        return self.log_beta.exp().clamp(min=self.sdf_config.beta_min)

    def surface_level(self) -> float:
        """The density on the zero level set, Psi(0) / beta = 0.5 / beta: the level at which to extract it."""
        return 0.5 / self.beta.item()

    def density_bias(self, x: Float[Tensor, "N 3"]) -> Float[Tensor, " N"]:
        """The sphere's signed distance, added to the MLP's first output."""
        return x.norm(dim=-1) - self.sdf_config.init_radius

    def _density_bias_gradient(self, x: Float[Tensor, "N 3"], bias: Float[Tensor, " N"]) -> Float[Tensor, "N 3"]:
        return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-12)

    def _activate(self, raw_density: Tensor) -> Tensor:
        """sigma = Psi_beta(-s) / beta."""
        beta = self.beta
        return laplace_cdf(-raw_density, beta) / beta

    def sdf(self, x: Float[Tensor, "N 3"]) -> Float[Tensor, " N"]:
        return self._raw(x)[0]

    def sdf_with_gradient(self, x: Float[Tensor, "N 3"]) -> tuple[Float[Tensor, " N"], Float[Tensor, "N 3"]]:
        """s and its gradient with respect to x, differentiable with respect to the parameters (for
        ``loss_eikonal``) in one backward pass."""
        s, _, gradient = self._raw_with_gradient(x)
        return s, gradient

    def forward(self, x: Float[Tensor, "N 3"], with_normals: bool = False) -> FieldOutput:
        if not with_normals:
            return super().forward(x)
        # Normalizing grad s itself, not the density's gradient, which underflows a few dozen beta away.
        s, albedo_raw, gradient = self._raw_with_gradient(x)
        return FieldOutput(self._activate(s), torch.sigmoid(albedo_raw), F.normalize(gradient, dim=-1))


FIT_RESOLUTION = 64
"""Points per side of the grid over the bounding cube that finds the source's surface and scores the fit."""


@dataclass(frozen=True)
class FitResult:
    """The last step's losses and how well the surface took the source's shape."""

    sign_loss: float
    eikonal_loss: float
    albedo_loss: float
    iou: float
    """Occupancy IoU of s < 0 against source density > level, on the FIT_RESOLUTION^3 grid inside the
    bounding sphere."""


@torch.no_grad()
def _on_grid(values: Callable[[Tensor], Tensor], points: Float[Tensor, "N 3"], chunk: int = 1 << 16) -> Tensor:
    return torch.cat([values(part) for part in points.split(chunk)])


def _fit_points(
    surface: Float[Tensor, "M 3"], uniform: int, near: int, bound: float, spacing: float, generator: torch.Generator
) -> Float[Tensor, "N 3"]:
    """``uniform`` points in the bounding cube, then ``near`` points within ``spacing`` of ``surface`` points
    (each axis), on the surface points' device; drawn on the generator's."""
    on = generator.device
    cube = (torch.rand(uniform, 3, generator=generator, device=on) * 2 - 1) * bound
    pick = torch.randint(surface.shape[0], (near,), generator=generator, device=on)
    jitter = (torch.rand(near, 3, generator=generator, device=on) * 2 - 1) * spacing
    device = surface.device
    return torch.cat((cube.to(device), surface[pick.to(device)] + jitter.to(device)))


def fit_to_density(
    sdf_field: SDFField,
    source: Geometry,
    level: float,
    steps: int,
    points_per_step: int,
    generator: torch.Generator,
    *,
    learning_rate: float = 1e-2,
    sign_scale: float = 0.02,
    eikonal_weight: float = 0.1,
) -> FitResult:
    """Train ``sdf_field`` (beta excepted) to the shape source density > ``level`` and the source's albedo.

    Each step draws half its points uniformly in the bounding cube and half within a grid step of the
    source's surface (found on a FIT_RESOLUTION^3 grid), where the sign matters most. Losses: a logistic loss
    on -s / ``sign_scale`` against inside (``sign_scale`` below a grid step, so the zero level lands between
    grid points), ``loss_eikonal`` so s is a distance, and the squared albedo error at points inside or near
    the surface. Nothing lies outside the bounding sphere (``Geometry``), so no inside is wanted there.
    Raises ValueError when the source has no surface at ``level``.
    """
    if steps <= 0 or points_per_step < 2:
        raise ValueError("fit_to_density needs steps > 0 and points_per_step >= 2")
    device = sdf_field.log_beta.device
    bound = sdf_field.bound
    points = grid_points(FIT_RESOLUTION, bound, device).reshape(-1, 3)
    in_sphere = points.norm(dim=-1) <= bound
    target = (_on_grid(source.density, points) > level) & in_sphere
    surface = points[boundary(target.reshape((FIT_RESOLUTION,) * 3)).reshape(-1)]
    if surface.shape[0] == 0:
        raise ValueError(f"the source has no surface at density {level:.3g} inside the bounding sphere")
    spacing = 2.0 * bound / (FIT_RESOLUTION - 1)

    optimizer = torch.optim.Adam([p for p in sdf_field.parameters() if p is not sdf_field.log_beta], lr=learning_rate)
    decay = WarmupCosine(min_factor=0.1)  # the last steps settle the zero level instead of jittering it
    uniform_count = points_per_step // 2
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate * decay.decay(step / steps)
        x = _fit_points(surface, uniform_count, points_per_step - uniform_count, bound, spacing, generator)
        with torch.no_grad():
            reference = source(x)
        inside = (reference.density > level) & (x.norm(dim=-1) <= bound)
        near = torch.arange(points_per_step, device=device) >= uniform_count
        s, albedo_raw, gradient = sdf_field._raw_with_gradient(x)
        sign = F.binary_cross_entropy_with_logits(-s / sign_scale, inside.to(s.dtype))
        eikonal = loss_eikonal(gradient)
        coloured = inside | near
        albedo = (torch.sigmoid(albedo_raw[coloured]) - reference.albedo[coloured]).square().mean()
        optimizer.zero_grad(set_to_none=True)
        (sign + eikonal_weight * eikonal + albedo).backward()
        optimizer.step()

    fitted = (_on_grid(sdf_field.sdf, points) < 0) & in_sphere
    union = (fitted | target).sum().item()
    iou = 1.0 if union == 0 else (fitted & target).sum().item() / union
    return FitResult(sign.item(), eikonal.item(), albedo.item(), iou)

