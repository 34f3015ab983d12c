"""Guidance: how a frozen prior's noise predictions become the SDS loss on a batch of renders.

The guidance object owns everything about SDS that is not the prior itself: the prompt's embeddings, the
guidance mode and scale, the timestep schedule, and the image preparation. Classifier-free guidance is
Perp-Neg with no negatives, so both modes run through one ``sds.score_distillation``. Priors stay frozen
noise predictors; the trainer makes one call per step.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from dreamfusion.cameras import CameraBatch
from dreamfusion.priors.base import DiffusionPrior, PriorError, PromptEmbeddings
from dreamfusion.schedules import TimestepRange
from dreamfusion.sds import PERP_NEG_VIEWS, GuidanceMode, SDSOutput, Weighting, perp_neg_weights, score_distillation
from dreamfusion.transfer import to_device


@dataclass(frozen=True)
class GuidanceConfig:
    """How the prior guides the render."""

    mode: Literal["auto", "cfg", "perp_neg"] = "auto"
    """"cfg": classifier-free guidance. "perp_neg": Perp-Neg (Armandpour et al. 2023), the other views'
    prompts as negatives, against multi-face (Janus) objects and objects turned away from the front; it
    costs up to three more prior evaluations per step. "auto": the prior's own choice (Perp-Neg for the
    embedded prior, whose view words alone turn objects weakly; CFG for the others)."""
    guidance_scale: float | None = None
    """Guidance scale s (diffusers form). None uses the prior's default (100 for Stable Diffusion)."""
    perp_neg_weights: tuple[float, float, float] = (2.0, 1.0, 1.0)
    """Largest Perp-Neg weight of the front, side and back negative prompts."""
    timesteps: TimestepRange = TimestepRange()
    weighting: Weighting = "sds"
    """w(t): "sds" is 1 - alpha_bar_t, "uniform" is 1."""
    negative_prompt: str = ""
    """Prompt standing for the unconditional branch of guidance."""

    def __post_init__(self) -> None:
        if self.guidance_scale is not None and self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be non-negative, got {self.guidance_scale}")
        if any(weight < 0 for weight in self.perp_neg_weights):
            raise ValueError(f"perp_neg_weights must be non-negative, got {self.perp_neg_weights}")


class Guidance:
    """Score distillation of renders against ``prior`` for one prompt.

    ``autocast`` wraps the prior's part of a step (image encoding and noise prediction), so a trainer can
    run the frozen prior in reduced precision while the renders stay float32.
    """

    def __init__(
        self,
        config: GuidanceConfig,
        prior: DiffusionPrior,
        prompt: str,
        device: torch.device,
        autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
    ) -> None:
        self.config = config
        self.prior = prior
        self.mode: GuidanceMode = prior.default_guidance_mode if config.mode == "auto" else config.mode
        if self.mode == "perp_neg" and not prior.view_prompts:
            raise PriorError(f"Perp-Neg guidance needs a prior with view prompts (embedded, sd, if), not {prior.name!r}")
        self.scale = prior.default_guidance_scale if config.guidance_scale is None else config.guidance_scale
        self.embeddings: PromptEmbeddings = prior.encode_prompt(prompt, config.negative_prompt).to(device)
        self._autocast = autocast
        self._antialias = False

    def for_surface_stage(self, timesteps: TimestepRange) -> Guidance:
        """This guidance for the surface stage (without encoding the prompt again): timesteps from
        ``timesteps``, and renders larger than the prior's images shrunk with antialiasing, where a plain
        bilinear resize skips pixels. The coarse stage keeps its plain resize, so its numbers stay as they were."""
        staged = copy.copy(self)
        staged.config = replace(self.config, timesteps=timesteps)
        staged._antialias = True
        return staged

    def __call__(
        self,
        rgb: Float[Tensor, "B H W 3"],
        cameras: CameraBatch,
        textureless: bool,
        progress: float,
        generator: torch.Generator,
    ) -> SDSOutput:
        """The SDS loss of renders seen from ``cameras``, at ``progress`` in [0, 1] of the run; ``textureless``
        renders are conditioned on the prior's prompts for them. Timesteps and noise come from ``generator``."""
        images = rgb.permute(0, 3, 1, 2)
        side = self.prior.resolution
        if images.shape[-1] != side:
            antialias = self._antialias and images.shape[-1] > side
            images = F.interpolate(images, size=(side, side), mode="bilinear", align_corners=False, antialias=antialias)
        conditional, unconditional = self.embeddings.for_views(cameras.view_labels, textureless)
        negatives = weights = None
        if self.mode == "perp_neg":
            negatives, weights = self._perp_neg_negatives(cameras, textureless, conditional)
        with self._autocast():
            latents = self.prior.encode_images(images)
            return score_distillation(
                self.prior, latents, conditional, unconditional, self.scale, self.config.timesteps(progress),
                self.config.weighting, generator, negatives, weights,
            )  # fmt: skip

    def _perp_neg_negatives(
        self, cameras: CameraBatch, textureless: bool, conditional: Tensor
    ) -> tuple[Tensor | None, Tensor | None]:
        """The other views' embeddings (K x B, K <= 3) and their weights for each camera; negatives whose
        weight is 0 for the whole batch are left out, so they cost no prior evaluation."""
        weights = perp_neg_weights(cameras.view_labels, cameras.azimuth, self.config.perp_neg_weights)
        used = [k for k in range(len(PERP_NEG_VIEWS)) if bool((weights[k] != 0).any())]
        if not used:
            return None, None
        by_view = self.embeddings.views(textureless)
        negatives = torch.stack([by_view[PERP_NEG_VIEWS[k]].expand_as(conditional) for k in used])
        return negatives, to_device(weights[used], conditional.device)
