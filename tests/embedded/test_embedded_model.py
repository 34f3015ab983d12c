import dataclasses

import pytest
import torch
from embedded_helpers import TINY_MODEL

from dreamfusion.embedded import schedule
from dreamfusion.embedded.model import (
    EmbeddedDiffusion,
    load_weights,
    parameter_count,
    read_config,
    save_weights,
)
from dreamfusion.embedded.vocabulary import tokenize, unconditional_tokens
from dreamfusion.priors.base import PriorError


def test_cosine_schedule_is_decreasing_inside_zero_one() -> None:
    a = schedule.cosine_alphas_cumprod(1000)
    assert a.shape == (1000,) and a.dtype == torch.float32
    assert (a > 0).all() and (a < 1).all() and (a[1:] < a[:-1]).all()
    assert a[0] > 0.9999 and a[-1] < 1e-6


def test_v_to_epsilon_recovers_the_noise() -> None:
    generator = torch.Generator().manual_seed(0)
    a = schedule.cosine_alphas_cumprod(1000)
    clean = torch.rand(6, 3, 8, 8, generator=generator) * 2 - 1
    noise = torch.randn(6, 3, 8, 8, generator=generator)
    t = torch.tensor([0, 10, 250, 500, 900, 990])
    ab = a[t][:, None, None, None]
    noisy = ab.sqrt() * clean + (1 - ab).sqrt() * noise
    v = schedule.v_target(clean, noise, a, t)
    torch.testing.assert_close(schedule.v_to_epsilon(v, noisy, a, t), noise, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ab.sqrt() * noisy - (1 - ab).sqrt() * v, clean, atol=1e-5, rtol=1e-5)


def test_min_snr_weight_is_bounded() -> None:
    a = schedule.cosine_alphas_cumprod(1000)
    w = schedule.min_snr_weight(a, torch.arange(1000), gamma=5.0)
    assert (w > 0).all() and (w <= 5 / 6 + 1e-6).all()


def test_unet_output_shape_and_finite() -> None:
    torch.manual_seed(0)
    model = EmbeddedDiffusion(TINY_MODEL)
    for p in model.unet.out_conv.parameters():  # zero-initialised: give it weights so the test sees the network
        torch.nn.init.normal_(p, std=0.1)
    context = model.encode_text(torch.tensor([tokenize("a red chair, front view"), unconditional_tokens()]))
    assert context.shape == (2, TINY_MODEL.max_tokens, TINY_MODEL.text_dim)
    out = model(torch.randn(2, 3, 64, 64), torch.tensor([3, 900]), context)
    assert out.shape == (2, 3, 64, 64) and torch.isfinite(out).all()
    assert not torch.allclose(out[0], out[1])


def test_default_config_fits_the_budget() -> None:
    model = EmbeddedDiffusion()
    count = parameter_count(model)
    assert 4e6 < count < 7.5e6, count
    assert 2 * count < 16 * 2**20


@pytest.mark.parametrize(
    "change", [{"channels": (16, 30)}, {"blocks": (1,)}, {"text_dim": 31}, {"num_timesteps": 1}, {"head_dim": 0}]
)
def test_config_rejects_bad_numbers(change: dict) -> None:
    with pytest.raises(ValueError):
        dataclasses.replace(TINY_MODEL, **change)


def test_save_load_round_trip(tmp_path) -> None:
    torch.manual_seed(1)
    model = EmbeddedDiffusion(TINY_MODEL)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    path = save_weights(model, tmp_path / "w" / "prior.safetensors")
    assert not (tmp_path / "w" / "prior.safetensors.tmp").exists()
    assert read_config(path) == TINY_MODEL
    loaded = load_weights(path)
    assert loaded.alphas_cumprod.dtype == torch.float32 and not loaded.training
    tokens = torch.tensor([tokenize("a blue mug, side view")])
    x, t = torch.randn(1, 3, 64, 64), torch.tensor([400])
    with torch.no_grad():
        expected = model.predict_epsilon(x, t, model.encode_text(tokens))
        actual = loaded.predict_epsilon(x, t, loaded.encode_text(tokens))
    torch.testing.assert_close(actual, expected, atol=5e-3, rtol=5e-3)
    half = load_weights(path, dtype=torch.float16)
    assert half.alphas_cumprod.dtype == torch.float32 and next(half.parameters()).dtype == torch.float16


def test_read_config_refuses_other_files(tmp_path) -> None:
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(PriorError, match="not an embedded-prior"):
        read_config(tmp_path / "other.safetensors")
