"""The Stable Diffusion prior on a tiny random SD folder, loaded through the same path as `--prior sd --model DIR`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from typer.testing import CliRunner

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from helpers import TINY_OVERRIDES  # noqa: E402
from tiny_diffusers import make_tiny_sd  # noqa: E402

from dreamfusion.cli import app  # noqa: E402
from dreamfusion.priors import PriorError, build_prior, prior_config  # noqa: E402
from dreamfusion.priors.stable_diffusion import StableDiffusionPrior, StableDiffusionPriorConfig  # noqa: E402
from dreamfusion.sds import score_distillation  # noqa: E402

CPU = torch.device("cpu")
runner = CliRunner()


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_sd(tmp_path_factory.mktemp("tiny_sd"))


def _reference_embeddings(path: Path, texts: list[str]) -> torch.Tensor:
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(path / "tokenizer")
    encoder = CLIPTextModel.from_pretrained(path / "text_encoder")
    ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return encoder(ids)[0]


def test_sds_gradient_matches_diffusers_reference(sd_dir: Path) -> None:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    prior = build_prior(prior_config("sd", model=str(sd_dir)), CPU)
    assert (prior.resolution, prior.latent_shape, prior.default_guidance_scale) == (64, (4, 8, 8), 100.0)
    assert prior.sampling_guidance_scale == 7.5
    embeddings = prior.encode_prompt("a red chair")
    cond, uncond = embeddings.for_views(("side",))
    rgb = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    out = score_distillation(prior, prior.encode_images(rgb), cond, uncond, 100.0, (0.02, 0.98), "sds", torch.Generator().manual_seed(7))
    out.loss_sds.backward()

    # The same step written directly against diffusers.
    scheduler = DDPMScheduler.from_pretrained(sd_dir, subfolder="scheduler")
    vae = AutoencoderKL.from_pretrained(sd_dir, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(sd_dir, subfolder="unet")
    ref_cond, ref_uncond = _reference_embeddings(sd_dir, ["a red chair, side view", ""]).chunk(2)
    torch.testing.assert_close(cond, ref_cond)
    torch.testing.assert_close(uncond, ref_uncond)
    generator = torch.Generator().manual_seed(7)
    t = torch.randint(20, 980, (1,), generator=generator)
    noise = torch.randn(1, 4, 8, 8, generator=generator)
    assert t.tolist() == out.timesteps.tolist()
    ref_rgb = rgb.detach().clone().requires_grad_(True)
    z0 = vae.encode(F.interpolate(ref_rgb, size=(16, 16), mode="bilinear") * 2 - 1).latent_dist.mean * vae.config.scaling_factor
    with torch.no_grad():
        noisy = scheduler.add_noise(z0.detach(), noise, t)
        eps_c, eps_u = unet(torch.cat([noisy, noisy]), torch.cat([t, t]), encoder_hidden_states=torch.cat([ref_cond, ref_uncond])).sample.chunk(2)
        expected = (1 - scheduler.alphas_cumprod[t]).view(1, 1, 1, 1) * (eps_u + 100.0 * (eps_c - eps_u) - noise)
    torch.testing.assert_close(out.gradient, expected, rtol=1e-4, atol=1e-4)
    (z0 * expected).sum().backward()
    # Tolerance: the prior's VAE uses matmul attention, the reference diffusers' SDPA default (rounding only).
    torch.testing.assert_close(rgb.grad, ref_rgb.grad, rtol=1e-4, atol=1e-5)  # mean |grad| here is ~0.09
    assert rgb.grad.abs().sum() > 0  # the gradient reaches the render through the VAE encoder

    # Nothing of the prior learns.
    for module in (prior.unet, prior.vae):
        assert all(not p.requires_grad and p.grad is None for p in module.parameters())


def test_text_encoder_is_frozen_cached_and_released(sd_dir: Path) -> None:
    kept = StableDiffusionPrior(StableDiffusionPriorConfig(model=str(sd_dir), release_text_encoder=False), CPU)
    first = kept.encode_prompt("a red chair")
    encoder = kept._text_encoder
    assert all(not p.requires_grad and p.grad is None for p in encoder.parameters())
    kept.release_text_encoder()
    again = kept.encode_prompt("a red chair")  # cached: no reload
    assert kept._text_encoder is None
    torch.testing.assert_close(again.by_view["front"], first.by_view["front"])
    prior = build_prior(prior_config("sd", model=str(sd_dir)), CPU)
    other = prior.encode_prompt("a blue ball", "blurry")  # released by default after encoding
    assert prior._text_encoder is None
    assert other.by_view["back"].shape == (1, 16, 16)
    assert not torch.allclose(other.unconditional, first.unconditional)


def test_v_prediction_is_converted_to_epsilon(sd_dir: Path, tmp_path: Path) -> None:
    v_dir = tmp_path / "v"
    shutil.copytree(sd_dir, v_dir)
    config_path = v_dir / "scheduler" / "scheduler_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "prediction_type": "v_prediction"}))
    eps_prior = build_prior(prior_config("sd", model=str(sd_dir)), CPU)
    v_prior = build_prior(prior_config("sd", model=str(v_dir)), CPU)
    context = eps_prior.encode_prompt("a red chair").by_view["front"]
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([600])
    v = eps_prior.predict_noise(x, t, context)  # the raw network output
    a = eps_prior.alphas_cumprod[600]
    torch.testing.assert_close(v_prior.predict_noise(x, t, context), a.sqrt() * v + (1 - a).sqrt() * x)


def test_decode_and_latent_sample_option(sd_dir: Path) -> None:
    prior = StableDiffusionPrior(StableDiffusionPriorConfig(model=str(sd_dir), latent="sample", vae_resolution=32), CPU)
    assert prior.latent_shape == (4, 16, 16)
    latents = prior.encode_images(torch.rand(2, 3, 64, 64))
    assert latents.shape == (2, 4, 16, 16) and latents.dtype == torch.float32
    images = prior.decode(latents)
    assert images.shape == (2, 3, 32, 32) and 0 <= images.min() and images.max() <= 1


@pytest.fixture
def tiny_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in TINY_OVERRIDES.items() if k not in ("device", "prior")}))
    return path


def test_generate_and_sample_prior_with_sd(sd_dir: Path, tiny_yaml: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(app, ["generate", "a red chair", "--prior", "sd", "--model", str(sd_dir), "--config", str(tiny_yaml),
                                 "--iters", "3", "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    for name in ("checkpoint.pt", "metrics.jsonl", "turntable.gif", "preview.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    png = tmp_path / "samples.png"
    result = runner.invoke(app, ["sample-prior", "a red chair, side view", "--prior", "sd", "--model", str(sd_dir), "-n", "2",
                                 "--steps", "2", "--out", str(png), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("case", ["unset", "missing", "empty", "partial"])
def test_missing_weights_are_one_line_errors(case: str, sd_dir: Path, tmp_path: Path) -> None:
    model: list[str] = []
    if case == "missing":
        model = ["--model", str(tmp_path / "nowhere")]
    elif case == "empty":
        (tmp_path / "empty").mkdir()
        model = ["--model", str(tmp_path / "empty")]
    elif case == "partial":
        shutil.copytree(sd_dir / "unet", tmp_path / "partial" / "unet")
        model = ["--model", str(tmp_path / "partial")]
    result = runner.invoke(app, ["generate", "a red chair", "--prior", "sd", *model, "--out", str(tmp_path / "run"), "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    text = " ".join(result.output.split())
    assert "huggingface-cli download stabilityai/stable-diffusion-2-1-base" in text
    expected = {"unset": "--model is required for --prior sd", "missing": "no model folder at", "empty": "missing unet/",
                "partial": "missing vae/"}[case]
    assert expected in text, text
    with pytest.raises(PriorError) as error:
        build_prior(prior_config("sd", model=None if case == "unset" else model[1]), CPU)
    assert "\n" not in str(error.value)


def test_uncached_model_id_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PriorError, match="not a model in the local Hugging Face cache|neither a folder nor a model"):
        build_prior(prior_config("sd", model="stabilityai/stable-diffusion-2-1-base"), CPU)


def test_missing_diffusers_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(PriorError, match=r"pip install 'dreamfusion\[diffusers\]'") as error:
        build_prior(prior_config("sd", model="somewhere"), CPU)
    assert "\n" not in str(error.value)


def test_perp_neg_sds_runs_on_sd(sd_dir: Path) -> None:
    from dreamfusion.cameras import cameras_from_angles
    from dreamfusion.guidance import Guidance, GuidanceConfig

    prior = StableDiffusionPrior(StableDiffusionPriorConfig(model=str(sd_dir)), CPU)
    rgb = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    n = torch.ones(2)
    cameras = cameras_from_angles(n * 15, torch.tensor([100.0, 200.0]), n * 1.2, n, 8)

    def gradient(**options: object) -> torch.Tensor:
        guidance = Guidance(GuidanceConfig(guidance_scale=100.0, **options), prior, "a red chair", CPU)  # type: ignore[arg-type]
        return guidance(rgb, cameras, False, 0.0, torch.Generator().manual_seed(1)).gradient

    plain = gradient()  # "auto" is classifier-free guidance for Stable Diffusion
    zero = gradient(mode="perp_neg", perp_neg_weights=(0.0, 0.0, 0.0))
    perp = gradient(mode="perp_neg")
    torch.testing.assert_close(zero, plain, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(perp, plain)


def test_generate_with_perp_neg_goes_through_the_trainer(sd_dir: Path, tiny_yaml: Path, tmp_path: Path) -> None:
    config = yaml.safe_load(tiny_yaml.read_text())
    config["guidance"] = {"mode": "perp_neg"}
    tiny_yaml.write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    result = runner.invoke(app, ["generate", "a red chair", "--prior", "sd", "--model", str(sd_dir), "--config", str(tiny_yaml),
                                 "--iters", "2", "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((out / "config.yaml").read_text())["guidance"]["mode"] == "perp_neg"
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == 1 and not json.loads(lines[-1])["skipped"]


@pytest.mark.slow
def test_speed_options_leave_the_sds_gradient_unchanged(sd_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # channels-last, VAE slicing and torch.compile of the U-Net and the VAE encoder (what --compile turns on)
    # change how the networks run, not what they compute. aot_eager: what torch.compile traces of the
    # diffusers modules, without a minute of CPU code generation.
    monkeypatch.setattr(StableDiffusionPrior, "compile_backend", "aot_eager")
    def sds_gradient(**options: bool) -> tuple[torch.Tensor, torch.Tensor]:
        prior = StableDiffusionPrior(StableDiffusionPriorConfig(model=str(sd_dir), **options), CPU)
        cond, uncond = prior.encode_prompt("a red chair").for_views(("front", "side"))
        rgb = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3)).requires_grad_(True)
        out = score_distillation(prior, prior.encode_images(rgb), cond, uncond, 100.0, (0.02, 0.98), "sds", torch.Generator().manual_seed(5))
        out.loss_sds.backward()
        return out.gradient, rgb.grad

    plain = sds_gradient()
    fast = sds_gradient(channels_last=True, vae_slicing=True, compile_unet=True, compile_vae=True)
    torch.testing.assert_close(fast[0], plain[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fast[1], plain[1], rtol=1e-4, atol=1e-5)
    assert plain[1].abs().sum() > 0
