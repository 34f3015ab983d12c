"""DDIM sampling (Song et al. 2021) through the ``DiffusionPrior`` interface, for any prior.

Used to look at what a prior has learned ("draw a red chair, front view"), which is the quickest check that
its weights and text conditioning are right before spending a NeRF run on SDS with it.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from dreamfusion.cameras import ViewLabel
from dreamfusion.priors.base import DiffusionPrior, PromptEmbeddings
from dreamfusion.sds import classifier_free_guidance


def ddim_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """``steps`` timesteps from T - 1 down to about 0, evenly spaced ("trailing": the first is pure noise)."""
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"DDIM steps must be in [1, {num_train_timesteps}], got {steps}")
    stride = num_train_timesteps / steps
    return [int(round(num_train_timesteps - 1 - i * stride)) for i in range(steps)]


def _batch(embedding: Tensor, count: int) -> Tensor:
    if embedding.shape[0] == count:
        return embedding
    if embedding.shape[0] != 1:
        raise ValueError(f"embeddings need a batch of 1 or {count}, got {embedding.shape[0]}")
    return embedding.expand(count, *embedding.shape[1:])


@torch.no_grad()
def ddim_sample(
    prior: DiffusionPrior,
    embeddings: PromptEmbeddings | tuple[Tensor, Tensor],
    num_images: int,
    steps: int = 50,
    guidance_scale: float = 5.0,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    view: ViewLabel = "front",
    clip_denoised: bool | None = None,
) -> Float[Tensor, "N 3 H W"]:
    """Draw ``num_images`` images, rgb in [0, 1], with classifier-free guidance (diffusers form).

    Args:
        prior: any DiffusionPrior; its ``predict_noise`` runs on conditional and unconditional halves of one batch.
        embeddings: a PromptEmbeddings (its ``view`` entry is used) or a (conditional, unconditional) pair
            with a batch of 1 or ``num_images``.
        steps: DDIM steps (50 is plenty; 4 is enough for a smoke test).
        guidance_scale: s in eps_u + s (eps_c - eps_u); 1 is the plain conditional model.
        eta: 0 is deterministic DDIM, 1 is DDPM-like ancestral noise.
        generator: CPU generator for the initial and ancestral noise, so results match across devices.
        clip_denoised: clip the predicted clean sample to [-1, 1] at each step. None clips for pixel-space
            priors (latent_shape == (3, resolution, resolution)) and not for latent ones.
    """
    if num_images < 1 or eta < 0:
        raise ValueError("num_images must be >= 1 and eta >= 0")
    if isinstance(embeddings, PromptEmbeddings):
        conditional, unconditional = embeddings.by_view[view], embeddings.unconditional
    else:
        conditional, unconditional = embeddings
    conditional, unconditional = _batch(conditional, num_images), _batch(unconditional, num_images)
    context = torch.cat((conditional, unconditional))
    if clip_denoised is None:
        clip_denoised = tuple(prior.latent_shape) == (3, prior.resolution, prior.resolution)

    alphas_cumprod = prior.alphas_cumprod.float()
    device = alphas_cumprod.device
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    x = torch.randn((num_images, *prior.latent_shape), generator=generator).to(device)
    schedule = ddim_timesteps(alphas_cumprod.shape[0], steps)
    for index, t in enumerate(schedule):
        a = alphas_cumprod[t]
        a_prev = alphas_cumprod[schedule[index + 1]] if index + 1 < len(schedule) else torch.ones_like(a)
        timesteps = torch.full((2 * num_images,), t, dtype=torch.long, device=device)
        eps_text, eps_uncond = prior.predict_noise(torch.cat((x, x)), timesteps, context).float().chunk(2)
        eps = classifier_free_guidance(eps_uncond, eps_text, guidance_scale)
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        if clip_denoised:
            x0 = x0.clamp(-1.0, 1.0)
            eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        sigma = eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)).clamp(min=0).sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps
        if eta > 0 and index + 1 < len(schedule):
            x = x + sigma * torch.randn(x.shape, generator=generator).to(device)
    return prior.decode(x).float().clamp(0.0, 1.0)
