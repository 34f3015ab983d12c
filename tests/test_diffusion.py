"""epsilon_from_v: the noise comes back from v and x_t, and every caller gets the same bits."""

import torch

from dreamfusion.diffusion import epsilon_from_v
from dreamfusion.embedded import schedule
from dreamfusion.priors._diffusers import epsilon_from_output


def _known_sample(dtype: torch.dtype = torch.float32):
    generator = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 3, 8, 8, generator=generator) * 2 - 1
    eps = torch.randn(4, 3, 8, 8, generator=generator)
    alphas_cumprod = schedule.cosine_alphas_cumprod(1000)
    timesteps = torch.tensor([0, 10, 500, 999])
    a = alphas_cumprod[timesteps][:, None, None, None]
    noisy = a.sqrt() * x0 + (1 - a).sqrt() * eps
    v = a.sqrt() * eps - (1 - a).sqrt() * x0
    return x0, eps, noisy.to(dtype), v.to(dtype), a, alphas_cumprod, timesteps


def test_recovers_the_noise() -> None:
    _, eps, noisy, v, a, _, _ = _known_sample()
    torch.testing.assert_close(epsilon_from_v(v, noisy, a), eps, atol=1e-5, rtol=1e-5)


def test_pure_noise_and_clean_image_limits() -> None:
    v, noisy = torch.randn(1, 3, 2, 2), torch.randn(1, 3, 2, 2)
    assert torch.equal(epsilon_from_v(v, noisy, torch.zeros(1, 1, 1, 1)), noisy)  # a = 0: x_t is the noise
    assert torch.equal(epsilon_from_v(v, noisy, torch.ones(1, 1, 1, 1)), v)  # a = 1: v is the noise


def test_reads_half_precision_inputs_in_float32() -> None:
    _, eps, noisy, v, a, _, _ = _known_sample(torch.float16)
    out = epsilon_from_v(v, noisy, a)
    assert out.dtype == torch.float32
    assert torch.equal(out, a.sqrt() * v.float() + (1 - a).sqrt() * noisy.float())
    torch.testing.assert_close(out, eps, atol=5e-3, rtol=5e-3)


def test_embedded_and_diffusers_priors_agree_bit_for_bit() -> None:
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        _, _, noisy, v, a, alphas_cumprod, timesteps = _known_sample(dtype)
        expected = a.sqrt() * v.float() + (1 - a).sqrt() * noisy.float()
        assert torch.equal(schedule.v_to_epsilon(v, noisy, alphas_cumprod, timesteps), expected)
        assert torch.equal(epsilon_from_output(v, noisy, timesteps, alphas_cumprod, "v_prediction"), expected)
