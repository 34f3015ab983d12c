"""The embedded prior: the small 64x64 pixel-space diffusion model that ships inside the package.

It only knows the procedural domain it was trained on (13 object kinds x 10 colours, four views), but it
runs anywhere, offline, in a few megabytes. Pixel space: ``encode_images`` is rgb * 2 - 1, ``decode`` its
inverse, and ``latent_shape`` is (3, 64, 64).

Guidance: ``default_guidance_scale`` is 30 (diffusers form, s = 1 + w). SDS needs far stronger guidance
than sampling does (DreamFusion uses 100 with Imagen; threestudio 20 with DeepFloyd IF), because the SDS
update follows the guided score at one noise level instead of integrating a whole trajectory. 30 sits
between the two as a starting point for a small model trained with 10% caption dropout (not yet tuned on
NeRF runs: try 20-50). For drawing images with DDIM use ~3-5 (``SAMPLING_GUIDANCE_SCALE``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from dreamfusion.cameras import VIEW_LABELS, view_suffix
from dreamfusion.priors.base import Precision, PriorError, PromptEmbeddings, choose_dtype
from dreamfusion.priors.cuda_graph import GraphedForward
from dreamfusion.sds import GuidanceMode

SHIPPED_WEIGHTS = Path(__file__).resolve().parent.parent / "embedded" / "weights" / "prior.safetensors"
SAMPLING_GUIDANCE_SCALE = 4.0
"""Guidance that suits drawing images from the embedded prior with DDIM (SDS uses the prior's default, 30)."""

@dataclass(frozen=True)
class EmbeddedPriorConfig:
    """Where the embedded prior's weights come from and how it runs."""

    name: Literal["embedded"] = "embedded"
    model: str | None = None
    """A weights file written by `dreamfusion train-prior`, or its output folder; None is the file shipped
    in the package."""
    precision: Precision = "auto"
    """"auto" is float32 everywhere: the model is tiny, and SDS multiplies the difference of two predictions
    by the guidance scale, which amplifies half-precision rounding."""
    cuda_graph: bool = True
    """On CUDA devices, replay the network's forward from a CUDA graph (at 64x64 and batch 2 it is bound by
    kernel launches)."""

    def weights_path(self) -> Path:
        """The weights file; a folder stands for the prior.safetensors in it (e.g. a training output folder)."""
        if self.model is None:
            return SHIPPED_WEIGHTS
        path = Path(self.model).expanduser()
        return path / "prior.safetensors" if path.is_dir() else path


class EmbeddedPrior:
    """Implements ``DiffusionPrior``. Construction only checks the file; weights load on first use."""

    name = "embedded"
    resolution = 64
    latent_shape = (3, 64, 64)
    default_guidance_scale = 30.0
    default_guidance_mode: GuidanceMode = "perp_neg"
    """The view word alone turns objects weakly (the prior draws the asked view in about half of its samples);
    Perp-Neg also pushes each camera away from the other views' look. Measured effect in PRIOR.md."""
    sampling_guidance_scale = SAMPLING_GUIDANCE_SCALE
    view_prompts = True

    def __init__(self, config: EmbeddedPriorConfig = EmbeddedPriorConfig(), device: torch.device | str = "cpu") -> None:
        path = config.weights_path()
        if not path.is_file():
            raise PriorError(
                f"embedded prior weights not found at {path}; train them with `dreamfusion train-prior` "
                "(or `python -m dreamfusion.embedded.train --out DIR`) and pass DIR or its prior.safetensors as --model"
            )
        self.config = config
        self.path = path
        self.device = torch.device(device)
        self.dtype = choose_dtype(config.precision, self.device, torch.float32)
        self._model = None
        self._alphas_cumprod: Tensor | None = None
        self._forward: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None

    @property
    def model(self):  # -> EmbeddedDiffusion, imported lazily to keep construction cheap
        if self._model is None:
            from dreamfusion.embedded.model import load_weights

            model = load_weights(self.path, self.device, self.dtype)
            model.requires_grad_(False)
            self._model = model
        return self._model

    @property
    def alphas_cumprod(self) -> Float[Tensor, " T"]:
        """Float32 on the prior's device; read from the file's metadata, so it does not load the weights."""
        if self._alphas_cumprod is None:
            from dreamfusion.embedded.model import read_config
            from dreamfusion.embedded.schedule import cosine_alphas_cumprod

            steps = read_config(self.path).num_timesteps
            self._alphas_cumprod = cosine_alphas_cumprod(steps).to(self.device)
        return self._alphas_cumprod

    def _embed(self, tokens: list[list[int]]) -> Float[Tensor, "B L D"]:
        ids = torch.tensor(tokens, dtype=torch.long, device=self.device)
        with torch.no_grad():
            return self.model.encode_text(ids).float()

    @staticmethod
    def check_prompt(prompt: str) -> str:
        """The prompt in canonical form if the embedded prior can read it; PriorError otherwise. Loads no weights."""
        from dreamfusion.embedded.vocabulary import has_view, normalize_prompt, tokenize

        text = normalize_prompt(prompt)
        if has_view(text):
            raise PriorError(
                f"leave the view out of the prompt {prompt!r}: the embedded prior appends "
                "', front view', ', side view', ... itself for each camera"
            )
        tokenize(text)
        return text

    def encode_prompt(self, prompt: str, negative_prompt: str = "") -> PromptEmbeddings:
        """One embedding per view ("a red chair, front view", ...), the same without the colour for
        textureless renders ("a chair, front view"), and the empty (or negative) caption."""
        from dreamfusion.embedded.vocabulary import PAD_ID, SLOT_COLOUR, normalize_prompt, tokenize, unconditional_tokens

        text = normalize_prompt(prompt)
        tokens = [tokenize(text + view_suffix(label)) for label in VIEW_LABELS]
        colourless = [[PAD_ID if slot == SLOT_COLOUR else token for slot, token in enumerate(ids)] for ids in tokens]
        negative = negative_prompt.strip()
        unconditional = tokenize(negative, require_object=False) if negative else unconditional_tokens()
        embedded = self._embed(tokens + colourless + [unconditional])
        views = len(VIEW_LABELS)
        return PromptEmbeddings(
            by_view={label: embedded[i : i + 1] for i, label in enumerate(VIEW_LABELS)},
            unconditional=embedded[-1:],
            textureless_by_view={label: embedded[views + i : views + i + 1] for i, label in enumerate(VIEW_LABELS)},
        )

    def encode_images(self, rgb: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B 3 64 64"]:
        """rgb in [0, 1] -> pixels in [-1, 1], resized to 64x64 (antialiased) if needed; differentiable."""
        if rgb.shape[-2:] != (self.resolution, self.resolution):
            rgb = F.interpolate(rgb, size=(self.resolution, self.resolution), mode="bilinear", antialias=True)
        return rgb * 2.0 - 1.0

    def predict_noise(
        self, noisy: Float[Tensor, "B 3 64 64"], timesteps: Int[Tensor, " B"], embeddings: Tensor
    ) -> Float[Tensor, "B 3 64 64"]:
        """Epsilon from the network's v prediction; returned in the dtype of ``noisy``."""
        if self._forward is None:
            forward = self.model.predict_epsilon
            use_graph = self.config.cuda_graph and self.device.type == "cuda"
            self._forward = GraphedForward(forward) if use_graph else forward
        with torch.no_grad():
            eps = self._forward(
                noisy.to(self.device, self.dtype), timesteps.to(self.device), embeddings.to(self.device, self.dtype)
            )
        return eps.to(noisy.dtype)

    def decode(self, latents: Float[Tensor, "B 3 64 64"]) -> Float[Tensor, "B 3 64 64"]:
        return ((latents + 1.0) / 2.0).clamp(0.0, 1.0)
