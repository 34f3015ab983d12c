"""A compact text-conditioned U-Net for 64x64 rgb, written for throughput rather than generality.

Layout (ADM / Imagen style): a stem conv, then per resolution level ``blocks`` ResBlocks (GroupNorm, SiLU,
3x3 convs, timestep-and-caption embedding applied as a per-channel scale and shift) and, where
``attention`` says so, an attention block (self-attention over pixels, then cross-attention to the caption
tokens); a strided-conv downsample between levels; a Res-Attn-Res middle; a mirrored decoder with skip
concatenations and nearest-neighbour upsampling. Every residual branch ends in a zero-initialised layer, so
the network starts as the identity on its skips and trains stably at a high learning rate.

Conditioning enters twice: globally, the caption's <bos> token is projected and added to the timestep
embedding (so even the 64x64 blocks know object and colour), and locally through cross-attention at the low
resolutions. The forward pass is plain tensor code (no Python loops over the batch, no host syncs).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn


def timestep_embedding(timesteps: Tensor, dim: int, max_period: float = 10000.0) -> Float[Tensor, "B D"]:
    """Sinusoidal embedding of (possibly fractional) timesteps, as in the transformer / DDPM."""
    half = dim // 2
    frequencies = torch.exp(-math.log(max_period) * torch.arange(half, device=timesteps.device) / half)
    angles = timesteps.float()[:, None] * frequencies[None]
    return torch.cat((angles.cos(), angles.sin()), dim=-1)


def _zero(module: nn.Module) -> nn.Module:
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


class ResBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, embed_dim: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.embed = nn.Linear(embed_dim, 2 * out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.conv2 = _zero(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Float[Tensor, "B C H W"], embedding: Float[Tensor, "B E"]) -> Float[Tensor, "B C2 H W"]:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.embed(F.silu(embedding))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(F.silu(h))


class AttentionBlock(nn.Module):
    """Self-attention over the pixels, then cross-attention from the pixels to the caption tokens."""

    def __init__(self, channels: int, context_dim: int, head_dim: int, groups: int) -> None:
        super().__init__()
        if channels % head_dim:
            raise ValueError(f"attention channels {channels} must be a multiple of head_dim {head_dim}")
        self.heads = channels // head_dim
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = _zero(nn.Linear(channels, channels))
        self.cross_norm = nn.LayerNorm(channels)
        self.cross_q = nn.Linear(channels, channels)
        self.cross_kv = nn.Linear(context_dim, 2 * channels)
        self.cross_out = _zero(nn.Linear(channels, channels))

    def _split(self, x: Tensor) -> Tensor:
        batch, length, channels = x.shape
        return x.view(batch, length, self.heads, channels // self.heads).transpose(1, 2)

    def _merge(self, x: Tensor) -> Tensor:
        batch, heads, length, head_dim = x.shape
        return x.transpose(1, 2).reshape(batch, length, heads * head_dim)

    def forward(self, x: Float[Tensor, "B C H W"], context: Float[Tensor, "B L D"]) -> Float[Tensor, "B C H W"]:
        batch, channels, height, width = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)
        q, k, v = self.qkv(tokens).chunk(3, dim=-1)
        attended = F.scaled_dot_product_attention(self._split(q), self._split(k), self._split(v))
        h = x.flatten(2).transpose(1, 2) + self.out(self._merge(attended))
        k, v = self.cross_kv(context.to(h.dtype)).chunk(2, dim=-1)
        q = self.cross_q(self.cross_norm(h))
        attended = F.scaled_dot_product_attention(self._split(q), self._split(k), self._split(v))
        h = h + self.cross_out(self._merge(attended))
        return h.transpose(1, 2).reshape(batch, channels, height, width)


class Level(nn.Module):
    """The ResBlocks (each optionally followed by attention) of one resolution, on one side of the U."""

    def __init__(self, in_channels: list[int], out_channels: int, embed_dim: int, context_dim: int,
                 attention: bool, head_dim: int, groups: int) -> None:
        super().__init__()
        self.res = nn.ModuleList(ResBlock(c, out_channels, embed_dim, groups) for c in in_channels)
        self.attn = nn.ModuleList(
            AttentionBlock(out_channels, context_dim, head_dim, groups) if attention else nn.Identity()
            for _ in in_channels
        )


class UNet(nn.Module):
    def __init__(
        self,
        channels: tuple[int, ...] = (64, 128, 192, 256),
        blocks: tuple[int, ...] = (1, 2, 2, 2),
        attention: tuple[bool, ...] = (False, False, True, True),
        context_dim: int = 128,
        head_dim: int = 32,
        groups: int = 32,
        image_channels: int = 3,
    ) -> None:
        super().__init__()
        if not len(channels) == len(blocks) == len(attention):
            raise ValueError("channels, blocks and attention need one entry per resolution level")
        embed_dim = 4 * channels[0]
        self.time_mlp = nn.Sequential(nn.Linear(channels[0], embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))
        self.text_mlp = nn.Sequential(nn.Linear(context_dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))
        self.stem = nn.Conv2d(image_channels, channels[0], 3, padding=1)

        skips = [channels[0]]
        current = channels[0]
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        for level, (width, count, attend) in enumerate(zip(channels, blocks, attention, strict=True)):
            ins = [current] + [width] * (count - 1)
            self.down.append(Level(ins, width, embed_dim, context_dim, attend, head_dim, groups))
            current = width
            skips += [width] * count
            if level < len(channels) - 1:
                self.downsample.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
                skips.append(width)

        self.mid_res1 = ResBlock(current, current, embed_dim, groups)
        self.mid_attn = AttentionBlock(current, context_dim, head_dim, groups)
        self.mid_res2 = ResBlock(current, current, embed_dim, groups)

        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level in reversed(range(len(channels))):
            width = channels[level]
            ins = []
            for _ in range(blocks[level] + 1):
                ins.append(current + skips.pop())
                current = width
            self.up.append(Level(ins, width, embed_dim, context_dim, attention[level], head_dim, groups))
            if level > 0:
                self.upsample.append(nn.Conv2d(width, width, 3, padding=1))
        self.out_norm = nn.GroupNorm(groups, current)
        self.out_conv = _zero(nn.Conv2d(current, image_channels, 3, padding=1))
        self.stem_channels = channels[0]

    def forward(
        self, x: Float[Tensor, "B 3 H W"], timesteps: Tensor, context: Float[Tensor, "B L D"]
    ) -> Float[Tensor, "B 3 H W"]:
        embedding = self.time_mlp(timestep_embedding(timesteps, self.stem_channels).to(x.dtype))
        embedding = embedding + self.text_mlp(context[:, 0].to(x.dtype))
        h = self.stem(x)
        skips = [h]
        for index, level in enumerate(self.down):
            for res, attn in zip(level.res, level.attn):
                h = res(h, embedding)
                h = attn(h, context) if isinstance(attn, AttentionBlock) else h
                skips.append(h)
            if index < len(self.downsample):
                h = self.downsample[index](h)
                skips.append(h)
        h = self.mid_res2(self.mid_attn(self.mid_res1(h, embedding), context), embedding)
        for index, level in enumerate(self.up):
            for res, attn in zip(level.res, level.attn):
                h = res(torch.cat((h, skips.pop()), dim=1), embedding)
                h = attn(h, context) if isinstance(attn, AttentionBlock) else h
            if index < len(self.upsample):
                h = self.upsample[index](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.out_conv(F.silu(self.out_norm(h)))
