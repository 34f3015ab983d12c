"""The DeepFloyd IF stage I prior on a tiny random IF folder, loaded through the same path as `--prior if --model DIR`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from helpers import TINY_OVERRIDES  # noqa: E402
from tiny_diffusers import make_tiny_if, write_sentencepiece_tokenizer  # noqa: E402

from dreamfusion.cli import app  # noqa: E402
from dreamfusion.priors import PriorError, build_prior, prior_config  # noqa: E402
from dreamfusion.sds import score_distillation  # noqa: E402

CPU = torch.device("cpu")
runner = CliRunner()


@pytest.fixture(scope="module")
def if_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_if(tmp_path_factory.mktemp("tiny_if"))


def _reference_embeddings(path: Path, texts: list[str]) -> torch.Tensor:
    from transformers import AutoTokenizer, T5EncoderModel

    tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer")
    encoder = T5EncoderModel.from_pretrained(path / "text_encoder")
    tokens = tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        return encoder(tokens.input_ids, attention_mask=tokens.attention_mask)[0]


def test_sds_uses_the_noise_half_and_matches_diffusers_reference(if_dir: Path) -> None:
    from diffusers import DDPMScheduler, UNet2DConditionModel

    prior = build_prior(prior_config("if", model=str(if_dir)), CPU)
    assert (prior.resolution, prior.latent_shape, prior.default_guidance_scale, prior.sampling_guidance_scale) == (16, (3, 16, 16), 20.0, 7.0)
    embeddings = prior.encode_prompt("a red chair")
    assert prior._text_encoder is None  # freed once the prompts are embedded
    cond, uncond = embeddings.for_views(("front",))
    assert cond.shape == (1, 77, 16)
    rgb = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    out = score_distillation(prior, prior.encode_images(rgb), cond, uncond, 20.0, (0.02, 0.98), "sds", torch.Generator().manual_seed(5))
    out.loss_sds.backward()

    scheduler = DDPMScheduler.from_pretrained(if_dir, subfolder="scheduler")
    unet = UNet2DConditionModel.from_pretrained(if_dir, subfolder="unet")
    ref_cond, ref_uncond = _reference_embeddings(if_dir, ["a red chair, front view", ""]).chunk(2)
    torch.testing.assert_close(cond, ref_cond)
    torch.testing.assert_close(uncond, ref_uncond)
    generator = torch.Generator().manual_seed(5)
    t = torch.randint(20, 980, (1,), generator=generator)
    noise = torch.randn(1, 3, 16, 16, generator=generator)
    assert t.tolist() == out.timesteps.tolist()
    x0 = rgb.detach() * 2 - 1
    with torch.no_grad():
        noisy = scheduler.add_noise(x0, noise, t)
        output = unet(torch.cat([noisy, noisy]), torch.cat([t, t]), encoder_hidden_states=torch.cat([ref_cond, ref_uncond])).sample
        assert output.shape[1] == 6
        eps_c, eps_u = output[:, :3].chunk(2)
        expected = (1 - scheduler.alphas_cumprod[t]).view(1, 1, 1, 1) * (eps_u + 20.0 * (eps_c - eps_u) - noise)
    torch.testing.assert_close(out.gradient, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(rgb.grad, 2 * expected, rtol=1e-4, atol=1e-6)  # d(2 rgb - 1)/d rgb = 2
    assert all(not p.requires_grad and p.grad is None for p in prior.unet.parameters())


def test_sentencepiece_tokenizer_as_if_ships_it(if_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("sentencepiece")
    pytest.importorskip("google.protobuf")
    import shutil

    spm_dir = tmp_path / "if_spm"
    shutil.copytree(if_dir, spm_dir)
    write_sentencepiece_tokenizer(spm_dir / "tokenizer")
    prior = build_prior(prior_config("if", model=str(spm_dir)), CPU)
    embeddings = prior.encode_prompt("a red chair")
    assert embeddings.by_view["side"].shape == (1, 77, 16)
    assert not torch.allclose(embeddings.by_view["side"], embeddings.by_view["front"])


@pytest.fixture
def tiny_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in TINY_OVERRIDES.items() if k not in ("device", "prior")}))
    return path


def test_generate_and_sample_prior_with_if(if_dir: Path, tiny_yaml: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(app, ["generate", "a red chair", "--prior", "if", "--model", str(if_dir), "--config", str(tiny_yaml),
                                 "--iters", "3", "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    for name in ("checkpoint.pt", "metrics.jsonl", "turntable.gif", "preview.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    png = tmp_path / "samples.png"
    result = runner.invoke(app, ["sample-prior", "a red chair", "--prior", "if", "--model", str(if_dir), "-n", "1",
                                 "--steps", "2", "--out", str(png), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("case", ["unset", "missing", "partial"])
def test_missing_weights_are_one_line_errors(case: str, if_dir: Path, tmp_path: Path) -> None:
    import shutil

    model: list[str] = []
    if case == "missing":
        model = ["--model", str(tmp_path / "nowhere")]
    elif case == "partial":
        shutil.copytree(if_dir / "unet", tmp_path / "partial" / "unet")
        model = ["--model", str(tmp_path / "partial")]
    result = runner.invoke(app, ["generate", "a red chair", "--prior", "if", *model, "--out", str(tmp_path / "run"), "--device", "cpu"])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "huggingface-cli download DeepFloyd/IF-I-XL-v1.0" in text and "license" in text
    expected = {"unset": "--model is required for --prior if", "missing": "no model folder at", "partial": "missing text_encoder/"}[case]
    assert expected in text, text
    with pytest.raises(PriorError) as error:
        build_prior(prior_config("if", model=None if case == "unset" else model[1]), CPU)
    assert "\n" not in str(error.value)


def test_corrupt_weights_name_the_component(if_dir: Path, tmp_path: Path) -> None:
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(if_dir, bad)
    for weights in (bad / "unet").glob("*.safetensors"):
        weights.write_bytes(b"not a safetensors file")
    with pytest.raises(PriorError, match="cannot load the U-Net from"):
        build_prior(prior_config("if", model=str(bad)), CPU)
