"""The embedded prior's cosine schedule and v-parameterization against values worked out by hand.

(Named test_embedded_schedule, like the other modules here, so it never collides with a test of the
package's own ``schedules`` module.)"""

from __future__ import annotations

import math

import pytest
import torch

from dreamfusion.embedded.schedule import cosine_alphas_cumprod, min_snr_weight, v_target, v_to_epsilon

# alpha_bar per timestep with exact square roots: t = 1 gives sqrt(a) = 0.8, sqrt(1 - a) = 0.6; t = 2 the reverse.
ALPHAS = torch.tensor([0.99, 0.64, 0.36, 0.01])


def test_two_step_cosine_schedule_matches_the_formula() -> None:
    """T = 2: alpha_bar_0 = f(1/2) / f(0); at t = 2 f is 0, so the last beta is clipped to 0.999."""

    def f(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    alphas = cosine_alphas_cumprod(2)
    assert alphas.dtype == torch.float32 and alphas.shape == (2,)
    first = f(0.5) / f(0.0)
    assert alphas.tolist() == pytest.approx([first, first * 0.001], rel=1e-6)


def test_the_default_schedule_midpoint() -> None:
    """alpha_bar at index 499 (step 500 of 1000) is f(1/2) / f(0) = cos(0.508 / 1.008 * pi/2)^2 / cos(0.008 / 1.008 * pi/2)^2."""
    f0 = math.cos(0.008 / 1.008 * math.pi / 2) ** 2
    expected = math.cos(0.508 / 1.008 * math.pi / 2) ** 2 / f0
    assert cosine_alphas_cumprod()[499].item() == pytest.approx(expected, rel=1e-5)


def test_a_schedule_needs_two_timesteps() -> None:
    with pytest.raises(ValueError, match="at least 2 timesteps"):
        cosine_alphas_cumprod(1)


def test_v_target_and_its_inverse_by_hand() -> None:
    """x0 = 1, eps = 2 at t = 1: v = 0.8 * 2 - 0.6 * 1 = 1.0 and x_t = 0.8 * 1 + 0.6 * 2 = 2.0, so
    eps = 0.8 * v + 0.6 * x_t = 2.0 comes back."""
    clean, noise = torch.ones(1, 1, 1, 1), torch.full((1, 1, 1, 1), 2.0)
    t = torch.tensor([1])
    v = v_target(clean, noise, ALPHAS, t)
    assert v.item() == pytest.approx(1.0, abs=1e-6)
    assert v_to_epsilon(v, torch.full((1, 1, 1, 1), 2.0), ALPHAS, t).item() == pytest.approx(2.0, abs=1e-6)


def test_v_target_keeps_the_images_dtype_and_v_to_epsilon_gives_float32() -> None:
    clean, noise = torch.ones(2, 3, 4, 4, dtype=torch.float16), torch.zeros(2, 3, 4, 4, dtype=torch.float16)
    t = torch.tensor([1, 2])
    v = v_target(clean, noise, ALPHAS, t)
    assert v.dtype == torch.float16
    assert v[:, 0, 0, 0].tolist() == pytest.approx([-0.6, -0.8], abs=1e-3)
    assert v_to_epsilon(v, clean, ALPHAS, t).dtype == torch.float32


def test_min_snr_weight_by_hand() -> None:
    """snr = a / (1 - a): a = 0.5 -> snr 1 -> 1 / 2; a = 0.8 -> snr 4 -> 4 / 5; a = 0.9 -> snr 9, capped at
    gamma 5 -> 5 / 10."""
    alphas = torch.tensor([0.5, 0.8, 0.9])
    assert min_snr_weight(alphas, torch.tensor([0, 1, 2])).tolist() == pytest.approx([0.5, 0.8, 0.5], rel=1e-6)
    assert min_snr_weight(alphas, torch.tensor([2]), gamma=20.0).item() == pytest.approx(0.9, rel=1e-6)
