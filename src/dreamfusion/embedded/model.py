"""The embedded diffusion model (text encoder + U-Net + schedule) and its single-file weight format.

The weights file is a safetensors file in float16 whose metadata holds the model config as JSON and the
token table, so a file is self-describing: ``load_weights`` rebuilds exactly the network that wrote it and
refuses a file whose vocabulary no longer matches the package's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from jaxtyping import Float, Int
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from dreamfusion.embedded import schedule
from dreamfusion.embedded.text_encoder import TextEncoder
from dreamfusion.embedded.unet import UNet
from dreamfusion.embedded.vocabulary import MAX_TOKENS, TOKENS, VOCAB_SIZE
from dreamfusion.errors import PriorError
from dreamfusion.files import write_atomic
from dreamfusion.typed_config import from_dict, to_dict

FORMAT = "dreamfusion-embedded-prior/1"


@dataclass(frozen=True)
class EmbeddedModelConfig:
    """Architecture of the embedded prior; the defaults are the shipped model (~6.8M parameters, ~13.7 MB fp16)."""

    vocab_size: int = VOCAB_SIZE
    """Rows of the token embedding table (the vocabulary module's TOKENS)."""
    max_tokens: int = MAX_TOKENS
    """Caption slots: <bos>, colour, object, view."""
    text_dim: int = 128
    """Width of the caption tokens the U-Net cross-attends to."""
    text_layers: int = 2
    """Transformer layers in the text encoder."""
    text_heads: int = 4
    channels: tuple[int, ...] = (32, 64, 128, 160)
    """U-Net width at 64, 32, 16 and 8 pixels."""
    blocks: tuple[int, ...] = (1, 1, 1, 1)
    """ResBlocks per level in the encoder (the decoder has one more)."""
    attention: tuple[bool, ...] = (False, False, True, True)
    """Self- and cross-attention at this level (16x16 and 8x8 by default)."""
    head_dim: int = 32
    groups: int = 16
    """GroupNorm groups; every width must be a multiple."""
    num_timesteps: int = 1000
    schedule: Literal["cosine"] = "cosine"
    prediction: Literal["v"] = "v"
    """The network predicts v; ``predict_epsilon`` converts (see schedule.py)."""

    def __post_init__(self) -> None:
        if min(self.vocab_size, self.max_tokens, self.text_dim, self.text_heads, self.head_dim, self.groups) <= 0:
            raise ValueError("embedded model sizes must be positive")
        if self.text_layers < 0 or self.num_timesteps < 2:
            raise ValueError("text_layers must be >= 0 and num_timesteps >= 2")
        if self.text_dim % self.text_heads:
            raise ValueError(f"text_dim {self.text_dim} must be a multiple of text_heads {self.text_heads}")
        if not self.channels or not len(self.channels) == len(self.blocks) == len(self.attention):
            raise ValueError("channels, blocks and attention need one entry per U-Net level")
        if any(c <= 0 or c % self.groups for c in self.channels) or any(b < 1 for b in self.blocks):
            raise ValueError(f"U-Net widths must be positive multiples of groups={self.groups}, blocks >= 1")
        if any(c % self.head_dim for c, a in zip(self.channels, self.attention, strict=True) if a) or (
            self.channels[-1] % self.head_dim
        ):
            raise ValueError(f"widths with attention (and the last one) must be multiples of head_dim={self.head_dim}")


class EmbeddedDiffusion(nn.Module):
    """Text encoder + U-Net + cosine schedule; ``forward`` predicts v."""

    def __init__(self, config: EmbeddedModelConfig = EmbeddedModelConfig()) -> None:
        super().__init__()
        self.config = config
        self.text_encoder = TextEncoder(
            config.vocab_size, config.max_tokens, config.text_dim, config.text_layers, config.text_heads
        )
        self.unet = UNet(
            config.channels, config.blocks, config.attention, config.text_dim, config.head_dim, config.groups
        )
        self.register_buffer(
            "alphas_cumprod", schedule.cosine_alphas_cumprod(config.num_timesteps), persistent=False
        )

    def encode_text(self, tokens: Int[Tensor, "B L"]) -> Float[Tensor, "B L D"]:
        return self.text_encoder(tokens)

    def forward(
        self, noisy: Float[Tensor, "B 3 H W"], timesteps: Int[Tensor, " B"], context: Float[Tensor, "B L D"]
    ) -> Float[Tensor, "B 3 H W"]:
        return self.unet(noisy, timesteps, context)

    def predict_epsilon(
        self, noisy: Float[Tensor, "B 3 H W"], timesteps: Int[Tensor, " B"], context: Float[Tensor, "B L D"]
    ) -> Float[Tensor, "B 3 H W"]:
        """Epsilon in float32, from the v the network predicts."""
        v = self(noisy, timesteps, context)
        return schedule.v_to_epsilon(v, noisy, self.alphas_cumprod, timesteps)

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        # Keep the schedule in float32 whatever dtype the weights are cast to.
        schedule_fp32 = self.alphas_cumprod
        module = super()._apply(fn, recurse)
        self.alphas_cumprod = schedule_fp32.to(device=self.alphas_cumprod.device, dtype=torch.float32)
        return module


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_weights(model: EmbeddedDiffusion, path: str | Path) -> Path:
    """Write float16 weights with config and vocabulary as metadata, atomically and durably."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, value in model.state_dict().items():
        value = value.detach().cpu()
        tensors[name] = (value.to(torch.float16) if value.is_floating_point() else value).contiguous()
    metadata = {"format": FORMAT, "config": json.dumps(to_dict(model.config)), "tokens": json.dumps(list(TOKENS))}
    return write_atomic(path, lambda temporary: save_file(tensors, str(temporary), metadata=metadata))


def read_config(path: str | Path) -> EmbeddedModelConfig:
    """The model config stored in a weights file, without reading the tensors."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if metadata.get("format") != FORMAT:
        raise PriorError(f"{path} is not an embedded-prior weights file (format {metadata.get('format')!r})")
    if json.loads(metadata.get("tokens", "[]")) != list(TOKENS):
        raise PriorError(f"{path} was trained with another vocabulary; retrain it with `dreamfusion train-prior`")
    return from_dict(EmbeddedModelConfig, json.loads(metadata["config"]))


def load_weights(
    path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> EmbeddedDiffusion:
    """Rebuild the model a weights file describes, in eval mode, on ``device`` in ``dtype``."""
    model = EmbeddedDiffusion(read_config(path))
    model.load_state_dict(load_file(str(path)))
    return model.to(device=device, dtype=dtype).eval()
