"""Forward-process math of a diffusion model, x_t = sqrt(a) x0 + sqrt(1 - a) eps with a = alpha_bar_t.

Shared by the embedded prior and the diffusers priors; it imports nothing else of dreamfusion.
"""

from __future__ import annotations

from jaxtyping import Float
from torch import Tensor


def epsilon_from_v(
    v: Float[Tensor, "B C H W"], noisy: Float[Tensor, "B C H W"], alpha_bar: Float[Tensor, "B 1 1 1"]
) -> Float[Tensor, "B C H W"]:
    """eps = sqrt(a) v + sqrt(1 - a) x_t, from v = sqrt(a) eps - sqrt(1 - a) x0 (Salimans & Ho 2022).

    ``v`` and ``noisy`` are read in float32; SDS and DDIM want epsilon, v-prediction models give v.
    """
    return alpha_bar.sqrt() * v.float() + (1 - alpha_bar).sqrt() * noisy.float()
