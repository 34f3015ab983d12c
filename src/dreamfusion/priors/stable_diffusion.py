"""Stable Diffusion 1.x / 2.x as an SDS prior, in latent space (``--prior sd --model DIR_OR_ID``).

SDS in latent space (as in stable-dreamfusion / threestudio): the 64x64 render is upsampled bilinearly to
the VAE's resolution (512 for SD 1.5 and 2.1-base), VAE-encoded *with* gradients, multiplied by the VAE
scaling factor (0.18215), and SDS acts on the 4x64x64 latent; the gradient reaches the NeRF through the
VAE encoder. Guidance 100 (diffusers form), timesteps in [0.02, 0.98] of the schedule (the run config's).

Choices:

* Latent: the *mean* of the VAE posterior, not a sample. The SD VAE's posterior std is tiny next to the
  SDS noise at t >= 0.02, so sampling only adds variance (and randomness outside the run's generator);
  the mean is deterministic, so a run repeats exactly. threestudio and stable-dreamfusion sample;
  ``latent="sample"`` does that.
* Precision: "auto" is fp16 on CUDA (the published weights are fp16-safe), fp32 on CPU. The prior runs in
  its own dtype with autocast disabled inside ``encode_images`` / ``predict_noise`` (the trainer's
  autocast would otherwise recast the fp16 weights to bf16 at each call); outputs are float32.
* The text encoder is loaded only to embed prompts: the four view prompts and the negative one are embedded
  once and cached, then the encoder is freed (``release_text_encoder=True``, the default; it is reloaded
  from the folder only if an uncached prompt comes later).
* Speed: ``cuda_graph`` (on by default, CUDA only: the U-Net at batch 2 is launch-bound on a fast GPU, and
  a graph replay removes that); off by default: ``channels_last`` U-Net/VAE memory format, ``compile_unet``
  and ``compile_vae`` (torch.compile; minutes of compiling first), ``vae_slicing`` (encode a batch one image
  at a time). The U-Net's attention uses PyTorch's scaled_dot_product_attention (diffusers' default); the
  VAE's uses plain matmuls (see ``_setup``). With all of them and the trainer's ``compile_field``, one step
  takes 29 ms on an H200 (``bench/sds_speed.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from dreamfusion.priors import _diffusers as shared
from dreamfusion.priors.base import PriorError

SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
FETCH_HINT = "huggingface-cli download stabilityai/stable-diffusion-2-1-base --local-dir DIR"


@dataclass(frozen=True)
class StableDiffusionPriorConfig(shared.DiffusersPriorConfig):
    """Where the Stable Diffusion weights are and how the prior runs."""

    name: Literal["sd"] = "sd"
    resolution: int = 64
    """Side of the render the prior expects (the trainer resizes renders to it)."""
    vae_resolution: int | None = None
    """Side the render is upsampled to before the VAE; None is the model's native size (U-Net sample_size x 8)."""
    latent: Literal["mean", "sample"] = "mean"
    """Which VAE posterior latent SDS acts on (see the module docstring)."""
    compile_vae: bool = False
    """torch.compile the VAE encoder's forward and backward (fuses its GroupNorm and SiLU kernels)."""
    vae_slicing: bool = False
    """Encode a batch one image at a time (less memory, slower)."""

    def __post_init__(self) -> None:
        if self.resolution <= 0 or (self.vae_resolution is not None and self.vae_resolution <= 0):
            raise ValueError("sd resolution and vae_resolution must be positive")


class StableDiffusionPrior(shared.DiffusersPrior):
    """Implements ``DiffusionPrior`` with a diffusers Stable Diffusion folder."""

    name = "sd"
    default_guidance_scale = 100.0
    sampling_guidance_scale = 7.5
    text_encoder_class = "CLIPTextModel"
    text_encoder_label = "text encoder"

    def __init__(self, config: StableDiffusionPriorConfig, device: torch.device | str = "cpu") -> None:
        diffusers = self._open_folder(config, device, prior="sd", subfolders=SUBFOLDERS, fetch_hint=FETCH_HINT)

        alphas_cumprod, prediction_type = shared.scheduler_alphas_cumprod(self.path)
        unet = shared.load_component(diffusers.UNet2DConditionModel.from_pretrained, self.path, "unet", "U-Net", torch_dtype=self.dtype)
        vae = shared.load_component(diffusers.AutoencoderKL.from_pretrained, self.path, "vae", "VAE", torch_dtype=self.dtype)
        self._setup(unet, vae, alphas_cumprod, prediction_type)

    @classmethod
    def from_components(
        cls,
        config: StableDiffusionPriorConfig,
        device: torch.device | str,
        *,
        unet: Any,
        vae: Any,
        scheduler: Any,
        text_encoder: Any,
        tokenizer: Any,
    ) -> StableDiffusionPrior:
        """A prior from models already in memory (benchmarks, tests); ``config.model`` is ignored.

        Without a folder the text encoder cannot be reloaded once released, so embed every prompt you need
        before the first release (``encode_prompt`` releases it when ``config.release_text_encoder``)."""
        prior = cls.__new__(cls)
        prior._place(config, device)
        prior.path = None
        prior._setup(unet, vae, scheduler.alphas_cumprod.float().clone(), str(scheduler.config.prediction_type))
        prior._tokenizer = tokenizer
        prior._text_encoder = shared.load_frozen(text_encoder, prior.device, prior.dtype)
        return prior

    def _setup(self, unet: Any, vae: Any, alphas_cumprod: Tensor, prediction_type: str) -> None:
        config = self.config
        self._alphas_cumprod = alphas_cumprod.to(self.device)
        self.prediction_type = prediction_type
        self._setup_unet_and_text(unet)
        self.vae = shared.load_frozen(vae, self.device, self.dtype)
        # The encoder's one self-attention (4096 tokens, one 512-wide head) is a worst case for the fused
        # SDPA kernels' backward (5.6 ms of a 45 ms step on an H200); with plain matmul attention the VAE's
        # encode + backward went from 17.0 to 14.7 ms.
        from diffusers.models.attention_processor import AttnProcessor

        self.vae.set_attn_processor(AttnProcessor())
        if config.channels_last:
            self.vae.to(memory_format=torch.channels_last)
        if config.vae_slicing:
            self.vae.enable_slicing()
        self.scaling_factor = float(self.vae.config.scaling_factor)
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.vae_resolution = config.vae_resolution or int(self.unet.config.sample_size) * self.vae_scale
        if self.vae_resolution % self.vae_scale:
            raise PriorError(f"vae_resolution {self.vae_resolution} must be a multiple of {self.vae_scale}")
        side = self.vae_resolution // self.vae_scale
        self.resolution = config.resolution
        self.latent_shape = (int(self.unet.config.in_channels), side, side)
        self._encode_latents: Any = self._posterior_latents
        if config.compile_vae:
            self._encode_latents = torch.compile(self._posterior_latents, backend=self.compile_backend)

    # -- images ----------------------------------------------------------------------------------
    def encode_images(self, rgb: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B 4 h w"]:
        """rgb [0, 1] -> bilinear to ``vae_resolution`` -> [-1, 1] -> VAE posterior mean (or sample) x scaling; float32, differentiable."""
        side = self.vae_resolution
        with torch.autocast(self.device.type, enabled=False):
            x = rgb.float()
            if x.shape[-2:] != (side, side):
                x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
            x = (x * 2.0 - 1.0).to(self.device, self.dtype)
            if self.config.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            latents = self._encode_latents(x)
        return latents.float() * self.scaling_factor

    def _posterior_latents(self, x: Tensor) -> Tensor:
        posterior = self.vae.encode(x).latent_dist
        return posterior.mean if self.config.latent == "mean" else posterior.sample()

    def decode(self, latents: Float[Tensor, "B 4 h w"]) -> Float[Tensor, "B 3 H W"]:
        """VAE decode of latents / scaling -> rgb in [0, 1] (float32)."""
        with torch.no_grad(), torch.autocast(self.device.type, enabled=False):
            images = self.vae.decode((latents.float() / self.scaling_factor).to(self.device, self.dtype)).sample
        return ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0)
