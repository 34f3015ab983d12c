import torch

from dreamfusion.priors.analytic import AnalyticPrior, AnalyticPriorConfig
from dreamfusion.sds import (
    add_noise,
    classifier_free_guidance,
    sample_timesteps,
    score_distillation,
    sds_gradient,
    sds_loss,
    sds_weight,
)


def test_guidance_formula_pinned_with_numbers() -> None:
    uncond = torch.tensor([1.0, -2.0, 0.5]).reshape(1, 3, 1, 1)
    text = torch.tensor([2.0, 0.0, 0.5]).reshape(1, 3, 1, 1)
    guided = classifier_free_guidance(uncond, text, 100.0)
    assert guided.flatten().tolist() == [101.0, 198.0, 0.5]
    assert torch.equal(classifier_free_guidance(uncond, text, 1.0), text)
    assert torch.equal(classifier_free_guidance(uncond, text, 0.0), uncond)


def test_timesteps_stay_in_range_and_weights_follow_the_schedule() -> None:
    t = sample_timesteps(4096, (0.02, 0.98), 1000, torch.Generator().manual_seed(0))
    assert 20 <= t.min() <= 25 and 975 <= t.max() <= 979
    alphas = torch.linspace(0.99, 0.01, 1000)
    assert torch.allclose(sds_weight(alphas, torch.tensor([0, 999]), "sds"), torch.tensor([0.01, 0.99]))
    assert torch.equal(sds_weight(alphas, torch.tensor([5]), "uniform"), torch.ones(1))


def test_sds_loss_gradient_equals_the_sds_gradient() -> None:
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 3, 4, 4, generator=generator, requires_grad=True)
    eps_hat, noise = torch.randn(2, 3, 4, 4, generator=generator), torch.randn(2, 3, 4, 4, generator=generator)
    weight = torch.tensor([0.3, 0.9])
    gradient = sds_gradient(eps_hat, noise, weight)
    assert torch.allclose(gradient[1], 0.9 * (eps_hat[1] - noise[1]))
    sds_loss(latents, gradient).backward()
    # Summed over pixels, averaged over the batch.
    assert torch.allclose(latents.grad, gradient / 2)


def test_score_distillation_matches_a_direct_computation_and_spares_the_prior() -> None:
    prior = AnalyticPrior(AnalyticPriorConfig(resolution=8))
    embeddings = prior.encode_prompt("anything")
    rgb = torch.rand(1, 3, 8, 8, requires_grad=True)
    latents = prior.encode_images(rgb)
    cond, uncond = embeddings.for_views(("front",))
    out = score_distillation(prior, latents, cond, uncond, 7.5, (0.02, 0.98), "sds", torch.Generator().manual_seed(5))

    replay = torch.Generator().manual_seed(5)
    t = sample_timesteps(1, (0.02, 0.98), 1000, replay)
    noise = torch.randn(latents.shape, generator=replay)
    noisy = add_noise(latents.detach(), noise, prior.alphas_cumprod, t)
    eps = classifier_free_guidance(prior.predict_noise(noisy, t, uncond), prior.predict_noise(noisy, t, cond), 7.5)
    expected = (1 - prior.alphas_cumprod[t]) * (eps - noise)
    assert torch.equal(out.timesteps, t)
    assert torch.allclose(out.gradient, expected, atol=1e-5)
    out.loss_sds.backward()
    # d latents / d rgb = 2, so the render receives twice the SDS gradient; the embeddings receive nothing.
    assert torch.allclose(rgb.grad, 2 * expected, atol=1e-5)
    assert not cond.requires_grad and cond.grad is None
