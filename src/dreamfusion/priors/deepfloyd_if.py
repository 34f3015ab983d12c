"""DeepFloyd IF stage I as an SDS prior, in 64x64 pixel space (``--prior if --model DIR_OR_ID``).

The stage I U-Net denoises 64x64 rgb in [-1, 1], conditioned on T5-XXL hidden states (prompts tokenized to
77 tokens, as IF's pipeline does). It predicts a learned variance as well: its 6 output channels are
(epsilon, variance interpolation); only the first 3, the noise, feed SDS. Guidance 20 (threestudio's value
for IF, diffusers form), DDIM sampling at 7.

Precision "auto" is fp16 on CUDA (IF's published fp16 variant), fp32 on CPU. The T5 encoder (about 9 GB in
fp16 for XXL) is loaded only to embed the prompts, which are cached, and then freed
(``release_text_encoder=True``). IF's caption cleaning (lower-casing, URL / HTML stripping) is not applied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from dreamfusion.priors import _diffusers as shared

SUBFOLDERS = ("unet", "text_encoder", "tokenizer", "scheduler")
FETCH_HINT = (
    "huggingface-cli download DeepFloyd/IF-I-XL-v1.0 --local-dir DIR "
    "(accept the license on huggingface.co/DeepFloyd/IF-I-XL-v1.0 and log in first)"
)
MAX_TOKENS = 77


@dataclass(frozen=True)
class DeepFloydIFPriorConfig(shared.DiffusersPriorConfig):
    """Where the IF stage I weights are and how the prior runs."""

    name: Literal["if"] = "if"


class DeepFloydIFPrior(shared.DiffusersPrior):
    """Implements ``DiffusionPrior`` with a diffusers DeepFloyd IF stage I folder."""

    name = "if"
    default_guidance_scale = 20.0
    sampling_guidance_scale = 7.0
    text_encoder_class = "T5EncoderModel"
    text_encoder_label = "T5 text encoder"
    max_tokens = MAX_TOKENS
    mask_padding = True

    def __init__(self, config: DeepFloydIFPriorConfig, device: torch.device | str = "cpu") -> None:
        diffusers = self._open_folder(config, device, prior="if", subfolders=SUBFOLDERS, fetch_hint=FETCH_HINT)
        self._alphas_cumprod_cpu, self.prediction_type = shared.scheduler_alphas_cumprod(self.path)
        self._alphas_cumprod = self._alphas_cumprod_cpu.to(self.device)
        unet = shared.load_component(diffusers.UNet2DConditionModel.from_pretrained, self.path, "unet", "U-Net", torch_dtype=self.dtype)
        self._setup_unet_and_text(unet)
        side = int(self.unet.config.sample_size)
        self.resolution = side
        self.latent_shape = (3, side, side)

    # -- images ----------------------------------------------------------------------------------
    def encode_images(self, rgb: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B 3 64 64"]:
        """rgb [0, 1] -> [-1, 1] at the U-Net's size (bilinear, antialiased if shrinking); float32, differentiable."""
        side = self.resolution
        x = rgb.float()
        if x.shape[-2:] != (side, side):
            x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=x.shape[-1] > side)
        return x * 2.0 - 1.0

    def decode(self, latents: Float[Tensor, "B 3 64 64"]) -> Float[Tensor, "B 3 64 64"]:
        return ((latents.float() + 1.0) / 2.0).clamp(0.0, 1.0)
