"""A tiny word-level text encoder, trained jointly with the U-Net.

Token embeddings plus a learned embedding per slot, then a couple of pre-norm transformer layers so each
slot's output knows the whole caption (a "red" next to "chair" can mean something else than next to
"car"), then a final LayerNorm. The output [B, L, D] feeds the U-Net's cross-attention; the U-Net derives
its global (pooled) vector from the <bos> slot itself, so one tensor carries the whole conditioning.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn


class TextEncoder(nn.Module):
    def __init__(self, vocab_size: int, max_tokens: int, dim: int, layers: int, heads: int) -> None:
        super().__init__()
        self.token = nn.Embedding(vocab_size, dim)
        self.position = nn.Parameter(torch.zeros(max_tokens, dim))
        nn.init.normal_(self.token.weight, std=0.02)
        nn.init.normal_(self.position, std=0.02)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                dim, heads, dim_feedforward=2 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
            )
            for _ in range(layers)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: Int[Tensor, "B L"]) -> Float[Tensor, "B L D"]:
        x = self.token(tokens) + self.position[: tokens.shape[1]]
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)
