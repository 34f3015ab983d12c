"""A prior whose denoiser is known in closed form, for tests and debugging.

Its data distribution is a Gaussian N(mu, s^2 I) around a target image mu in [-1, 1] pixel space: a disc
of one colour on a plain background, the same from every view, so that SDS against it should turn any
scene into a ball of that colour. Under the forward process z_t = sqrt(a) x + sqrt(1 - a) eps, the optimal
epsilon prediction is

    eps_hat(z_t) = sqrt(1 - a) (z_t - sqrt(a) mu) / (a s^2 + 1 - a).

The "unconditional" branch uses a mid-grey mu, so classifier-free guidance behaves as with real priors.
The prompt's text is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from dreamfusion.cameras import VIEW_LABELS
from dreamfusion.priors.base import PriorError, PromptEmbeddings
from dreamfusion.sds import GuidanceMode


@dataclass(frozen=True)
class AnalyticPriorConfig:
    """The target disc and the Gaussian around it; there are no weights."""

    name: Literal["analytic"] = "analytic"
    resolution: int = 64
    colour: tuple[float, float, float] = (0.9, 0.35, 0.1)
    """Disc colour, rgb in [0, 1]."""
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    radius: float = 0.3
    """Disc radius as a fraction of the image side."""
    std: float = 0.05
    """s: the spread of the data around the target, in [-1, 1] units."""
    num_train_timesteps: int = 1000

    def __post_init__(self) -> None:
        if self.resolution <= 0 or self.radius <= 0 or self.std <= 0 or self.num_train_timesteps <= 1:
            raise PriorError("analytic prior: resolution, radius, std must be positive and timesteps > 1")


def linear_alphas_cumprod(num_train_timesteps: int) -> Float[Tensor, " T"]:
    """The DDPM linear beta schedule from 1e-4 to 2e-2."""
    betas = torch.linspace(1e-4, 2e-2, num_train_timesteps, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0).float()


def disc_image(config: AnalyticPriorConfig) -> Float[Tensor, "3 H W"]:
    """The target in [0, 1]: a disc of ``colour`` centred on ``background``."""
    res = config.resolution
    coords = (torch.arange(res, dtype=torch.float32) + 0.5) / res - 0.5
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    inside = ((rows**2 + cols**2).sqrt() <= config.radius).float()
    colour = torch.tensor(config.colour)[:, None, None]
    background = torch.tensor(config.background)[:, None, None]
    return inside * colour + (1 - inside) * background


class AnalyticPrior:
    name = "analytic"
    default_guidance_scale = 7.5
    default_guidance_mode: GuidanceMode = "cfg"
    sampling_guidance_scale = 7.5
    view_prompts = False
    """Every view has the same target."""

    def __init__(self, config: AnalyticPriorConfig, device: torch.device | str = "cpu") -> None:
        self.config = config
        self.resolution = config.resolution
        self.latent_shape = (3, config.resolution, config.resolution)
        self._alphas_cumprod = linear_alphas_cumprod(config.num_train_timesteps).to(device)
        self.target = (disc_image(config) * 2 - 1).to(device)
        self.device = torch.device(device)

    @property
    def alphas_cumprod(self) -> Float[Tensor, " T"]:
        return self._alphas_cumprod

    @staticmethod
    def check_prompt(prompt: str) -> str:
        """Any text reads (and is ignored)."""
        return prompt.strip()

    def encode_prompt(self, prompt: str, negative_prompt: str = "") -> PromptEmbeddings:
        # The embedding is the mean image itself: the denoiser reads its target from the conditioning.
        conditional = self.target[None]
        return PromptEmbeddings(
            by_view={label: conditional for label in VIEW_LABELS},
            unconditional=torch.zeros_like(conditional),
        )

    def encode_images(self, rgb: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B 3 H W"]:
        return rgb * 2 - 1

    def decode(self, latents: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B 3 H W"]:
        return ((latents + 1) / 2).clamp(0, 1)

    def predict_noise(
        self, noisy: Float[Tensor, "B 3 H W"], timesteps: Int[Tensor, " B"], embeddings: Float[Tensor, "B 3 H W"]
    ) -> Float[Tensor, "B 3 H W"]:
        if embeddings.shape[1:] != noisy.shape[1:]:
            raise PriorError(f"analytic prior expects {tuple(embeddings.shape[1:])} images, got {tuple(noisy.shape[1:])}")
        a = self._alphas_cumprod[timesteps].to(noisy.dtype)[:, None, None, None]
        variance = a * self.config.std**2 + 1 - a
        return (1 - a).sqrt() * (noisy - a.sqrt() * embeddings) / variance
