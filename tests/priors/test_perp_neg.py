"""Perp-Neg guidance as a pure function, its azimuth weights, and its SDS step."""

import torch

from dreamfusion.priors import build_prior, prior_config
from dreamfusion.sds import classifier_free_guidance, perp_neg_guidance, perp_neg_weights, score_distillation


def test_perp_neg_guidance_numbers() -> None:
    eps_u = torch.tensor([0.0, 0.0]).view(1, 1, 1, 2)
    eps_pos = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
    eps_neg = torch.tensor([1.0, 1.0]).view(1, 1, 1, 2)
    # d_pos = (1, 0); d_neg = (1, 1) whose part perpendicular to d_pos is (0, 1): 10 * ((1, 0) - 0.5 (0, 1))
    guided = perp_neg_guidance(eps_u, eps_pos, [eps_neg], [0.5], 10.0)
    torch.testing.assert_close(guided.flatten(), torch.tensor([10.0, -5.0]))
    # a negative parallel to the positive removes nothing
    parallel = perp_neg_guidance(eps_u, eps_pos, [eps_u + 3 * (eps_pos - eps_u)], [2.0], 10.0)
    torch.testing.assert_close(parallel.flatten(), torch.tensor([10.0, 0.0]))


def test_perp_neg_reduces_to_cfg_with_zero_weights() -> None:
    g = torch.Generator().manual_seed(0)
    eps_u, eps_pos = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    negs = torch.randn(3, 2, 4, 8, 8, generator=g)
    expected = classifier_free_guidance(eps_u, eps_pos, 7.5)
    torch.testing.assert_close(perp_neg_guidance(eps_u, eps_pos, negs, torch.zeros(3, 2), 7.5), expected)
    torch.testing.assert_close(perp_neg_guidance(eps_u, eps_pos, [], [], 7.5), expected)
    # per-sample weights act per sample
    mixed = perp_neg_guidance(eps_u, eps_pos, negs, torch.tensor([[0.0, 1.0]] * 3), 7.5)
    torch.testing.assert_close(mixed[0], expected[0])
    assert not torch.allclose(mixed[1], expected[1])


def test_perp_neg_weights_by_azimuth() -> None:
    weights = perp_neg_weights(("front", "side", "side", "back"), torch.tensor([0.0, 90.0, 270.0, 180.0]))
    expected = torch.tensor([[0.0, 1.0, 1.0, 2.0], [0.5, 0.0, 0.0, 0.5], [1.0, 0.5, 0.5, 0.0]])
    torch.testing.assert_close(weights, expected)


def test_score_distillation_with_zero_weight_negatives_is_cfg() -> None:
    """Classifier-free guidance is Perp-Neg with no negatives: zero-weight negatives change nothing."""
    prior = build_prior(prior_config("analytic"), torch.device("cpu"))
    embeddings = prior.encode_prompt("a ball")
    latents = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    cond, uncond = embeddings.for_views(("front", "back"))
    plain = score_distillation(prior, latents, cond, uncond, 20.0, (0.02, 0.98), "sds", torch.Generator().manual_seed(3))
    negatives = torch.stack([torch.rand_like(cond), torch.rand_like(cond)])
    perp = score_distillation(prior, latents, cond, uncond, 20.0, (0.02, 0.98), "sds", torch.Generator().manual_seed(3),
                              negatives, torch.zeros(2, 2))
    torch.testing.assert_close(perp.timesteps, plain.timesteps)
    torch.testing.assert_close(perp.gradient, plain.gradient)
    weighted = score_distillation(prior, latents, cond, uncond, 20.0, (0.02, 0.98), "sds", torch.Generator().manual_seed(3),
                                  negatives, torch.ones(2, 2))
    assert not torch.allclose(weighted.gradient, plain.gradient)
