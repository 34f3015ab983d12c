"""The interface every 2D diffusion prior implements, so the trainer never branches on which prior it has."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from dreamfusion.cameras import ViewLabel
from dreamfusion.errors import PriorError
from dreamfusion.sds import GuidanceMode

Precision = Literal["auto", "fp32", "fp16", "bf16"]
PRECISION_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def choose_dtype(precision: Precision, device: torch.device, cuda_default: torch.dtype) -> torch.dtype:
    """A prior's weight dtype: "auto" is ``cuda_default`` on CUDA and float32 elsewhere. Half precision is
    refused on CPU (slow, and many CPU kernels lack it), so an explicit fp16/bf16 there falls back to fp32."""
    if precision == "auto":
        return cuda_default if device.type == "cuda" else torch.float32
    if precision not in PRECISION_DTYPES:
        raise PriorError(f"unknown precision {precision!r}; choose auto, fp32, fp16 or bf16")
    return PRECISION_DTYPES[precision] if device.type == "cuda" else torch.float32


@dataclass
class PromptEmbeddings:
    """Text conditioning computed once per run: one embedding per view label, plus the unconditional one.

    Each tensor has a leading batch dimension of 1; its other dimensions are the prior's own.
    """

    by_view: dict[ViewLabel, Tensor]
    unconditional: Tensor
    textureless_by_view: dict[ViewLabel, Tensor] | None = None
    """For textureless (white) renders, if the prior describes those differently; None: ``by_view``. The
    embedded prior was trained with the colour word dropped from textureless renders' captions, so "a red
    chair" drawn white is, to it, "a chair": conditioning a white render on "red" would push the geometry
    to fake the colour with shading."""

    def views(self, textureless: bool = False) -> dict[ViewLabel, Tensor]:
        """The per-view embeddings for renders of this kind (textureless falls back to ``by_view``)."""
        return self.textureless_by_view if textureless and self.textureless_by_view is not None else self.by_view

    def for_views(self, labels: tuple[ViewLabel, ...], textureless: bool = False) -> tuple[Tensor, Tensor]:
        """Conditional and unconditional embeddings stacked along the batch for these views."""
        by_view = self.views(textureless)
        conditional = torch.cat([by_view[label] for label in labels], dim=0)
        unconditional = self.unconditional.expand(len(labels), *self.unconditional.shape[1:])
        return conditional, unconditional

    def to(self, device: torch.device | str) -> PromptEmbeddings:
        textureless = self.textureless_by_view
        return PromptEmbeddings(
            by_view={label: emb.to(device) for label, emb in self.by_view.items()},
            unconditional=self.unconditional.to(device),
            textureless_by_view=None if textureless is None else {label: emb.to(device) for label, emb in textureless.items()},
        )


@runtime_checkable
class DiffusionPrior(Protocol):
    """A frozen text-to-image diffusion model seen through the few operations SDS needs.

    Renders enter as rgb in [0, 1]; ``encode_images`` maps them, differentiably, into the space the
    model denoises (pixels in [-1, 1] for pixel priors, scaled VAE latents for latent priors).
    """

    name: str
    resolution: int
    """Side of the rgb image the prior expects, in pixels."""
    latent_shape: tuple[int, int, int]
    """(C, h, w) of the space the model denoises."""
    default_guidance_scale: float
    """SDS guidance scale used when the run config leaves it unset."""
    default_guidance_mode: GuidanceMode
    """SDS guidance mode used when the run config leaves it to the prior ("auto")."""
    sampling_guidance_scale: float
    """Guidance scale that suits drawing images with DDIM (far below the SDS one)."""
    view_prompts: bool
    """Whether the prompt's embeddings differ by view (", front view", ...): Perp-Neg needs them."""

    @staticmethod
    def check_prompt(prompt: str) -> str:
        """The prompt as the prior will read it, or PriorError naming what it cannot read. Loads no weights,
        so a run can refuse a prompt before anything loads."""
        ...

    @property
    def alphas_cumprod(self) -> Float[Tensor, " T"]:
        """Cumulative signal fraction of the noise schedule, on the prior's device."""
        ...

    def encode_prompt(self, prompt: str, negative_prompt: str = "") -> PromptEmbeddings:
        """Embed the prompt with every view suffix, and the unconditional (or negative) prompt."""
        ...

    def encode_images(self, rgb: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B C h w"]:
        """Map renders in [0, 1] into the model's space, keeping gradients."""
        ...

    def predict_noise(
        self,
        noisy: Float[Tensor, "B C h w"],
        timesteps: Int[Tensor, " B"],
        embeddings: Tensor,
    ) -> Float[Tensor, "B C h w"]:
        """Epsilon prediction at integer timesteps for a batch of embeddings (no gradient needed)."""
        ...

    def decode(self, latents: Float[Tensor, "B C h w"]) -> Float[Tensor, "B 3 H W"]:
        """Map the model's space back to rgb in [0, 1] (for sampling images from the prior)."""
        ...
