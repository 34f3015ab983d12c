import pytest
import torch

from dreamfusion.cameras import VIEW_LABELS
from dreamfusion.embedded.model import EmbeddedDiffusion, EmbeddedModelConfig, save_weights
from dreamfusion.priors.base import DiffusionPrior, PriorError
from dreamfusion.priors.embedded import SHIPPED_WEIGHTS, EmbeddedPrior, EmbeddedPriorConfig
from dreamfusion.priors.sampling import ddim_sample
from dreamfusion.sds import score_distillation

TINY = EmbeddedModelConfig(text_dim=32, text_layers=1, text_heads=2, channels=(16, 32), blocks=(1, 1),
                           attention=(False, True), head_dim=16, groups=8)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> str:
    torch.manual_seed(0)
    model = EmbeddedDiffusion(TINY)
    for p in model.unet.out_conv.parameters():
        torch.nn.init.normal_(p, std=0.02)
    return str(save_weights(model, tmp_path_factory.mktemp("prior") / "prior.safetensors"))


def test_protocol_is_satisfied_without_loading(tiny_weights: str) -> None:
    prior = EmbeddedPrior(EmbeddedPriorConfig(model=tiny_weights))
    assert isinstance(prior, DiffusionPrior)
    assert prior._model is None  # construction and the schedule read only the file's metadata
    assert prior.alphas_cumprod.shape == (1000,) and prior._model is None
    assert prior.name == "embedded" and prior.latent_shape == (3, 64, 64) and prior.default_guidance_scale > 1


def test_missing_weights_say_how_to_get_them(tmp_path) -> None:
    with pytest.raises(PriorError, match="dreamfusion train-prior") as error:
        EmbeddedPrior(EmbeddedPriorConfig(model=str(tmp_path / "none.safetensors")))
    assert "\n" not in str(error.value)


def test_encode_prompt(tiny_weights: str) -> None:
    prior = EmbeddedPrior(EmbeddedPriorConfig(model=tiny_weights))
    embeddings = prior.encode_prompt("The Red Chair.")
    assert set(embeddings.by_view) == set(VIEW_LABELS)
    assert embeddings.unconditional.shape == embeddings.by_view["front"].shape == (1, TINY.max_tokens, TINY.text_dim)
    assert not torch.allclose(embeddings.by_view["front"], embeddings.by_view["back"])
    assert torch.allclose(prior.encode_prompt("a red chair").by_view["side"], embeddings.by_view["side"])
    assert not prior.model.training and not any(p.requires_grad for p in prior.model.parameters())
    negative = prior.encode_prompt("a red chair", negative_prompt="blue")
    assert not torch.allclose(negative.unconditional, embeddings.unconditional)
    with pytest.raises(PriorError, match="--prior sd"):
        prior.encode_prompt("a corgi")
    with pytest.raises(PriorError, match="view"):
        prior.encode_prompt("a red chair, front view")


def test_textureless_renders_are_conditioned_without_the_colour(tiny_weights: str) -> None:
    prior = EmbeddedPrior(EmbeddedPriorConfig(model=tiny_weights))
    red, blue, plain = (prior.encode_prompt(p) for p in ("a red chair", "a blue chair", "a chair"))
    assert red.textureless_by_view is not None
    for label in VIEW_LABELS:
        assert torch.allclose(red.textureless_by_view[label], plain.by_view[label])
        assert torch.allclose(red.textureless_by_view[label], blue.textureless_by_view[label])
    textured, _ = red.for_views(("front", "back"))
    textureless, _ = red.for_views(("front", "back"), textureless=True)
    assert torch.allclose(textured, torch.cat((red.by_view["front"], red.by_view["back"])))
    assert torch.allclose(textureless, torch.cat((plain.by_view["front"], plain.by_view["back"])))


def test_images_noise_and_sds(tiny_weights: str) -> None:
    prior = EmbeddedPrior(EmbeddedPriorConfig(model=tiny_weights))
    rgb = torch.rand(2, 3, 32, 32, requires_grad=True)
    latents = prior.encode_images(rgb)
    assert latents.shape == (2, 3, 64, 64) and latents.min() >= -1 and latents.max() <= 1
    cond, uncond = prior.encode_prompt("a blue mug").for_views(("front", "side"))
    eps = prior.predict_noise(latents.detach(), torch.tensor([10, 900]), cond)
    assert eps.shape == (2, 3, 64, 64) and torch.isfinite(eps).all()
    out = score_distillation(prior, latents, cond, uncond, prior.default_guidance_scale, (0.02, 0.98), "sds",
                             torch.Generator().manual_seed(0))
    out.loss_sds.backward()
    assert rgb.grad is not None and torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0
    full = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(prior.decode(prior.encode_images(full)), full, atol=1e-6, rtol=0)


def test_ddim_sample_tiny(tiny_weights: str) -> None:
    prior = EmbeddedPrior(EmbeddedPriorConfig(model=tiny_weights))
    images = ddim_sample(prior, prior.encode_prompt("a green cone"), num_images=2, steps=4, guidance_scale=4.0)
    assert images.shape == (2, 3, 64, 64) and torch.isfinite(images).all()
    assert images.min() >= 0 and images.max() <= 1


def test_shipped_weights_sample() -> None:
    if not SHIPPED_WEIGHTS.is_file():
        pytest.skip("shipped weights not present")
    prior = EmbeddedPrior()
    assert SHIPPED_WEIGHTS.stat().st_size <= 16 * 2**20
    images = ddim_sample(prior, prior.encode_prompt("a red chair"), num_images=1, steps=4, guidance_scale=4.0,
                         generator=torch.Generator().manual_seed(0))
    assert images.shape == (1, 3, 64, 64) and torch.isfinite(images).all()
    assert images.std() > 0.02  # a picture, not a flat field


def test_registry_builds_from_a_file_or_its_folder(tiny_weights: str) -> None:
    from pathlib import Path

    from dreamfusion.priors import build_prior, prior_config

    for model in (tiny_weights, str(Path(tiny_weights).parent)):
        prior = build_prior(prior_config("embedded", model=model), torch.device("cpu"))
        assert isinstance(prior, EmbeddedPrior) and prior.path == Path(tiny_weights)


def test_perp_neg_by_default_and_on_textureless_renders() -> None:
    from dreamfusion.cameras import cameras_from_angles
    from dreamfusion.guidance import Guidance, GuidanceConfig
    from dreamfusion.priors import build_prior, prior_config
    from dreamfusion.priors.base import PromptEmbeddings

    if not SHIPPED_WEIGHTS.is_file():
        pytest.skip("shipped weights not present (a randomly initialized model ignores the text)")
    prior = build_prior(prior_config("embedded"), torch.device("cpu"))
    guidance = Guidance(GuidanceConfig(), prior, "a red chair", torch.device("cpu"))
    assert guidance.mode == "perp_neg"  # the embedded prior's own choice under mode "auto"

    red = guidance.embeddings
    colourless = PromptEmbeddings(by_view=red.textureless_by_view, unconditional=red.unconditional)
    rgb = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    n = torch.ones(2)
    cameras = cameras_from_angles(n * 15, torch.tensor([90.0, 180.0]), n * 1.2, n, 8)

    def perp(embeddings: PromptEmbeddings, textureless: bool) -> torch.Tensor:
        guidance.embeddings = embeddings
        return guidance(rgb, cameras, textureless, 0.0, torch.Generator().manual_seed(0)).gradient

    # Textureless: positives and negatives are the colourless prompts, nothing of the coloured ones.
    torch.testing.assert_close(perp(red, textureless=True), perp(colourless, textureless=False))
    assert (perp(red, textureless=True) - perp(red, textureless=False)).abs().max() > 1e-6
