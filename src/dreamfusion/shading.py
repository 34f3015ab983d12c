"""Shading of albedo with normals and a point light, the random choice of shading mode, and the background.

The same functions shade the NeRF during optimization and the procedural renders the embedded prior
learns from, so both sides of SDS see the same image formation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn

from dreamfusion.transfer import to_device

ShadingMode = Literal["albedo", "lambertian", "textureless"]
SHADING_MODES: tuple[ShadingMode, ...] = ("albedo", "lambertian", "textureless")


@dataclass(frozen=True)
class ShadingConfig:
    """When and how renders are shaded (DreamFusion section 3.1)."""

    ambient: float = 0.1
    """Ambient light l_a when shaded."""
    diffuse: float = 0.9
    """Diffuse light l_rho when shaded."""
    albedo_warmup_steps: int = 1000
    """Steps at the start that render albedo only, while the geometry forms."""
    shaded_probability: float = 0.75
    """After the warm-up: probability of lighting the render instead of showing albedo."""
    textureless_probability: float = 0.5
    """Probability that a lit render replaces the albedo by white."""

    def __post_init__(self) -> None:
        for name in ("shaded_probability", "textureless_probability"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"shading {name} must lie in [0, 1], got {value}")
        if self.ambient < 0 or self.diffuse < 0 or self.albedo_warmup_steps < 0:
            raise ValueError("shading ambient, diffuse and albedo_warmup_steps must be non-negative")


def sample_shading_mode(config: ShadingConfig, step: int, generator: torch.Generator) -> ShadingMode:
    """Albedo during the warm-up; afterwards albedo, lambertian or textureless with the paper's probabilities."""
    draws = torch.rand(2, generator=generator).tolist()
    if step < config.albedo_warmup_steps or draws[0] >= config.shaded_probability:
        return "albedo"
    return "textureless" if draws[1] < config.textureless_probability else "lambertian"


def shade(
    albedo: Float[Tensor, "*N 3"],
    normals: Float[Tensor, "*N 3"] | None,
    points: Float[Tensor, "*N 3"],
    light_position: Float[Tensor, "*N 3"],
    mode: ShadingMode,
    ambient: float = 0.1,
    diffuse: float = 0.9,
) -> Float[Tensor, "*N 3"]:
    """Colour of surface points: c = rho * (l_rho * max(0, n . l_dir) + l_a), or the albedo itself.

    ``normals`` must be unit vectors pointing out of the surface; they may be None in "albedo" mode.
    """
    if mode == "albedo":
        return albedo
    if normals is None:
        raise ValueError(f"shading mode {mode!r} needs normals")
    light_dir = torch.nn.functional.normalize(light_position - points, dim=-1)
    lambert = (normals * light_dir).sum(-1, keepdim=True).clamp(min=0.0)
    intensity = diffuse * lambert + ambient
    if mode == "textureless":
        return intensity.expand_as(albedo)
    if mode == "lambertian":
        return albedo * intensity
    raise ValueError(f"unknown shading mode {mode!r}; choose one of {SHADING_MODES}")


BackgroundKind = Literal["mlp", "random_solid"]


@dataclass
class BackgroundDraw:
    """The random part of a training render's background (see ``Background.draw``)."""

    solid: Float[Tensor, "B 3"]
    """A solid colour per view."""
    swap: Bool[Tensor, " B"] | None
    """With a learned background: the views that show their solid colour instead; None: all of them do."""


@dataclass(frozen=True)
class BackgroundConfig:
    """What lies behind the object: a learned environment map, or a random solid colour."""

    kind: BackgroundKind = "random_solid"
    """"random_solid": a random colour per view (default), which the background cannot use to explain the
    prompt: with a learned background a "blue mug" can come out as an empty scene on a blue backdrop.
    "mlp": a small MLP of the encoded ray direction, the paper's environment map."""
    random_solid_probability: float = 0.5
    """With kind "mlp", probability during training of swapping in a random solid colour, which keeps the
    background from explaining the prompt on its own."""
    frequencies: int = 4
    """Frequencies of the sinusoidal direction encoding."""
    hidden: int = 32
    """Width of the background MLP."""
    eval_colour: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Colour behind the object in videos and evaluation when kind is "random_solid"."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.random_solid_probability <= 1.0:
            raise ValueError(f"background random_solid_probability must lie in [0, 1], got {self.random_solid_probability}")
        if self.frequencies < 0 or self.hidden <= 0:
            raise ValueError("background frequencies must be >= 0 and hidden > 0")


def frequency_encoding(x: Float[Tensor, "*N D"], frequencies: int) -> Float[Tensor, "*N E"]:
    """[x, sin(2^k pi x), cos(2^k pi x) for k < frequencies]."""
    if frequencies == 0:
        return x
    scales = (2.0 ** torch.arange(frequencies, device=x.device, dtype=x.dtype)) * math.pi
    scaled = x[..., None, :] * scales[:, None]
    encoded = torch.cat((torch.sin(scaled), torch.cos(scaled)), dim=-1).flatten(-2)
    return torch.cat((x, encoded), dim=-1)


class Background(nn.Module):
    """Environment colour as a function of ray direction."""

    def __init__(self, config: BackgroundConfig) -> None:
        super().__init__()
        self.config = config
        in_dim = 3 * (1 + 2 * config.frequencies)
        self.mlp = nn.Sequential(nn.Linear(in_dim, config.hidden), nn.SiLU(), nn.Linear(config.hidden, 3))

    def forward(self, directions: Float[Tensor, "*N 3"]) -> Float[Tensor, "*N 3"]:
        return torch.sigmoid(self.mlp(frequency_encoding(directions, self.config.frequencies)))

    def draw(self, batch: int, generator: torch.Generator, device: torch.device) -> BackgroundDraw:
        """A training render's random solid colours (and, with kind "mlp", which views show them instead of the
        learned background), drawn from ``generator`` (CPU) and moved to ``device``."""
        solid = to_device(torch.rand(batch, 3, generator=generator), device)
        if self.config.kind == "random_solid":
            return BackgroundDraw(solid, None)
        return BackgroundDraw(solid, to_device(torch.rand(batch, generator=generator) < self.config.random_solid_probability, device))

    def colour(self, directions: Float[Tensor, "B H W 3"], drawn: BackgroundDraw | None = None) -> Float[Tensor, "B H W 3"]:
        """The background seen along each ray: with ``drawn`` (training), its random solid colours; without,
        the evaluation background."""
        if drawn is not None:
            solid = drawn.solid.to(directions.dtype)[:, None, None, :].expand_as(directions)
            if drawn.swap is None:
                return solid
            learned = self(directions)
            return torch.where(drawn.swap[:, None, None, None], solid, learned)
        if self.config.kind == "random_solid":
            return torch.tensor(self.config.eval_colour).to(directions).expand_as(directions)
        return self(directions)
