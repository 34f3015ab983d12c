"""The embedded prior's U-Net on a two-level model small enough for a CPU: output shape, the zero start,
determinism, that the timestep and both routes of the caption (the <bos> token and cross-attention) reach the
output, no mixing across the batch, and gradients to every weight."""

from __future__ import annotations

import math

import pytest
import torch

from dreamfusion.embedded.unet import AttentionBlock, UNet, timestep_embedding

CONTEXT_DIM, TOKENS = 12, 5
SMALL = dict(channels=(8, 16), blocks=(1, 1), attention=(False, True), context_dim=CONTEXT_DIM, head_dim=8, groups=4)


def _unet(seed: int = 0, randomize_zeros: bool = True) -> UNet:
    """The small U-Net built under ``seed``; its zero-initialised layers (and zero norm biases) are given random
    weights too, so that every branch shows in the output."""
    torch.manual_seed(seed)
    model = UNet(**SMALL)
    if randomize_zeros:
        with torch.no_grad():
            for parameter in model.parameters():
                if not parameter.any():
                    parameter.normal_(std=0.2)
    return model


def _inputs(batch: int = 2, size: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, size, size, generator=generator)
    t = torch.tensor([10, 700, 300, 999][:batch])
    context = torch.randn(batch, TOKENS, CONTEXT_DIM, generator=generator)
    return x, t, context


def test_output_has_the_input_shape() -> None:
    model = _unet()
    for size in (16, 32):
        x, t, context = _inputs(size=size)
        assert model(x, t, context).shape == (2, 3, size, size)


def test_a_fresh_unet_outputs_zeros() -> None:
    """Every residual branch and the output conv start at zero, so training starts from a zero prediction."""
    x, t, context = _inputs()
    out = _unet(randomize_zeros=False)(x, t, context)
    assert out.shape == (2, 3, 16, 16) and not out.any()


def test_same_seed_same_output_other_seed_other_output() -> None:
    x, t, context = _inputs()
    first, again, other = _unet(0)(x, t, context), _unet(0)(x, t, context), _unet(1)(x, t, context)
    assert torch.equal(first, again)
    assert (first - other).abs().max() > 1e-2


def test_the_caption_changes_the_output_through_bos_and_through_cross_attention() -> None:
    model = _unet()
    x, t, context = _inputs()
    base = model(x, t, context)
    bos_only = context.clone()
    bos_only[:, 0] += 1.0  # the global route: <bos> is projected into the timestep embedding
    tokens_only = context.clone()
    tokens_only[:, 1:] += 1.0  # the local route: only cross-attention reads the other tokens
    assert (model(x, t, bos_only) - base).abs().max() > 1e-3
    assert (model(x, t, tokens_only) - base).abs().max() > 1e-3


def test_the_timestep_changes_the_output() -> None:
    model = _unet()
    x, t, context = _inputs()
    assert (model(x, t + 100, context) - model(x, t, context)).abs().max() > 1e-3


def test_images_of_a_batch_do_not_influence_each_other() -> None:
    model = _unet()
    x, t, context = _inputs(batch=3)
    together = model(x, t, context)
    alone = torch.cat([model(x[i : i + 1], t[i : i + 1], context[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_gradients_reach_the_input_and_every_parameter() -> None:
    model = _unet()
    x, t, context = _inputs()
    x.requires_grad_(True)
    model(x, t, context).square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    without = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert without == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_timestep_embedding_is_cosines_then_sines() -> None:
    """dim 4: frequencies 10000^(-k/2) = 1 and 0.01, so t = 1 gives [cos 1, cos 0.01, sin 1, sin 0.01]."""
    embedding = timestep_embedding(torch.tensor([0, 1]), 4)
    assert embedding.shape == (2, 4)
    assert embedding[0].tolist() == [1.0, 1.0, 0.0, 0.0]
    expected = [math.cos(1.0), math.cos(0.01), math.sin(1.0), math.sin(0.01)]
    assert embedding[1].tolist() == pytest.approx(expected, abs=1e-6)


def test_mismatched_level_settings_and_head_width_are_refused() -> None:
    with pytest.raises(ValueError, match="one entry per resolution level"):
        UNet(channels=(8, 16), blocks=(1,), attention=(False, True), context_dim=CONTEXT_DIM, head_dim=8, groups=4)
    with pytest.raises(ValueError, match="multiple of head_dim"):
        AttentionBlock(12, CONTEXT_DIM, head_dim=8, groups=4)
