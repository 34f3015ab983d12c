import pytest
import torch

from dreamfusion.guidance import Guidance, GuidanceConfig
from dreamfusion.priors import PriorError, build_prior, prior_config
from dreamfusion.priors.analytic import AnalyticPrior, AnalyticPriorConfig
from dreamfusion.priors.base import DiffusionPrior
from dreamfusion.sds import add_noise
from dreamfusion.typed_config import ConfigError


def test_analytic_prior_satisfies_the_protocol_and_predicts_the_true_noise() -> None:
    prior = AnalyticPrior(AnalyticPriorConfig(resolution=8, std=1e-3))
    assert isinstance(prior, DiffusionPrior)
    embeddings = prior.encode_prompt("ignored")
    cond, _ = embeddings.for_views(("front", "back"))
    assert cond.shape == (2, 3, 8, 8)
    # Data exactly at the mode: the denoiser recovers the noise that was added.
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([100, 900])
    noisy = add_noise(cond, noise, prior.alphas_cumprod, t)
    assert torch.allclose(prior.predict_noise(noisy, t, cond), noise, atol=1e-3)
    assert torch.allclose(prior.decode(prior.encode_images(torch.full((1, 3, 8, 8), 0.25))), torch.full((1, 3, 8, 8), 0.25))


def test_registry_builds_by_name_and_refuses_unknown_names_and_options() -> None:
    assert build_prior(prior_config("analytic"), torch.device("cpu")).name == "analytic"
    with pytest.raises(PriorError, match="unknown prior"):
        prior_config("dalle")
    # Each prior's config has only its own options: the analytic prior has no weights.
    with pytest.raises(ConfigError, match="unknown config key in prior: model"):
        prior_config("analytic", model="/tmp/x")


def test_perp_neg_is_refused_where_it_does_not_apply() -> None:
    prior = build_prior(prior_config("analytic"), torch.device("cpu"))
    with pytest.raises(PriorError, match="Perp-Neg"):
        Guidance(GuidanceConfig(mode="perp_neg"), prior, "a ball", torch.device("cpu"))


def test_naming_weights_for_a_prior_without_any_is_refused() -> None:
    from dreamfusion.priors import check_model

    with pytest.raises(PriorError, match="the analytic prior has no weights; leave --model unset"):
        check_model("analytic", "/tmp/x")
    check_model("analytic", None)
    check_model("sd", "/tmp/sd21")  # weights are sd's to take
