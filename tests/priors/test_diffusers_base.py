"""What the diffusers-based priors share, without diffusers weights: finding a local model
folder (every failure one PriorError line), v-prediction to epsilon, the text-embedding cache, and component
loading errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dreamfusion.cameras import VIEW_LABELS, view_suffix
from dreamfusion.priors._diffusers import (
    EmbeddingCache,
    epsilon_from_output,
    load_component,
    resolve_model_dir,
)
from dreamfusion.priors.base import PriorError

SUBFOLDERS = ("unet", "text_encoder", "tokenizer")
HINT = "huggingface-cli download some/model --local-dir DIR"


# ----- resolve_model_dir ------------------------------------------------------------------------------


def _resolve_error(model: str | None) -> str:
    with pytest.raises(PriorError) as caught:
        resolve_model_dir(model, prior="sd", subfolders=SUBFOLDERS, fetch_hint=HINT)
    message = str(caught.value)
    assert "\n" not in message, "a PriorError is shown to the user as one line"
    return message


def test_a_missing_model_argument_says_model_is_required() -> None:
    message = _resolve_error(None)
    assert message.startswith("--model is required for --prior sd")
    assert "unet/, text_encoder/, tokenizer/" in message and HINT in message


def test_a_missing_folder_is_named_with_the_fetch_command(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    message = _resolve_error(str(missing))
    assert message.startswith(f"no model folder at {missing}: --prior sd needs a diffusers folder")
    assert HINT in message


def test_a_folder_missing_subfolders_lists_exactly_the_missing_ones(tmp_path: Path) -> None:
    (tmp_path / "unet").mkdir()
    (tmp_path / "tokenizer").write_text("a file, not a folder")
    message = _resolve_error(str(tmp_path))
    assert message.startswith(f"{tmp_path} is not a complete diffusers folder for --prior sd: missing text_encoder/, tokenizer/")
    assert HINT in message


def test_a_complete_folder_is_returned_as_a_path(tmp_path: Path) -> None:
    for name in SUBFOLDERS:
        (tmp_path / name).mkdir()
    assert resolve_model_dir(str(tmp_path), prior="sd", subfolders=SUBFOLDERS, fetch_hint=HINT) == tmp_path


# ----- epsilon_from_output ----------------------------------------------------------------------------

# alpha_bar per timestep, chosen so that sqrt(a) and sqrt(1 - a) are exact: t = 1 gives (0.8, 0.6), t = 2 (0.6, 0.8).
ALPHAS = torch.tensor([1.0, 0.64, 0.36, 0.0])


def test_epsilon_output_passes_through_as_float32() -> None:
    output = torch.tensor([0.5, -1.25, 2.0]).view(3, 1, 1, 1).to(torch.float16)
    eps = epsilon_from_output(output, torch.zeros(3, 1, 1, 1), torch.tensor([0, 1, 2]), ALPHAS, "epsilon")
    assert eps.dtype == torch.float32
    assert eps.flatten().tolist() == [0.5, -1.25, 2.0]


def test_v_prediction_becomes_sqrt_a_v_plus_sqrt_one_minus_a_x_t() -> None:
    """Image 0 at t = 1: 0.8 * 2 + 0.6 * 3 = 3.4; image 1 at t = 2: 0.6 * (-1) + 0.8 * 0.5 = -0.2."""
    v = torch.tensor([2.0, -1.0]).view(2, 1, 1, 1).expand(2, 1, 2, 2)
    noisy = torch.tensor([3.0, 0.5]).view(2, 1, 1, 1).expand(2, 1, 2, 2)
    eps = epsilon_from_output(v, noisy, torch.tensor([1, 2]), ALPHAS, "v_prediction")
    assert eps.shape == (2, 1, 2, 2)
    torch.testing.assert_close(eps[:, 0, 0, 0], torch.tensor([3.4, -0.2]))
    assert (eps == eps[:, :, :1, :1]).all()


def test_v_prediction_recovers_the_noise_that_made_the_sample() -> None:
    generator = torch.Generator().manual_seed(0)
    clean, noise = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 4, 8, 8, generator=generator)
    t = torch.tensor([1, 2])
    a = ALPHAS[t].view(2, 1, 1, 1)
    noisy = a.sqrt() * clean + (1 - a).sqrt() * noise
    v = a.sqrt() * noise - (1 - a).sqrt() * clean
    torch.testing.assert_close(epsilon_from_output(v, noisy, t, ALPHAS, "v_prediction"), noise)


def test_an_unsupported_prediction_type_is_a_prior_error() -> None:
    with pytest.raises(PriorError, match="unsupported prediction_type 'sample'"):
        epsilon_from_output(torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1), torch.tensor([0]), ALPHAS, "sample")


# ----- EmbeddingCache ---------------------------------------------------------------------------------


class _Encoder:
    """A fake text encoder: the embedding of a text is [len(text), number of the call], one token of width 2;
    it records the texts of every call."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, texts: list[str]) -> torch.Tensor:
        self.calls.append(list(texts))
        rows = [[float(len(text)), float(len(self.calls))] for text in texts]
        return torch.tensor(rows)[:, None, :].requires_grad_(True)


def test_the_cache_embeds_each_new_text_once() -> None:
    encoder = _Encoder()
    cache = EmbeddingCache(encoder)
    first = cache(["ab", "c", "ab"])
    assert encoder.calls == [["ab", "c"]]  # duplicates embedded once
    assert [e.shape for e in first] == [(1, 1, 2)] * 3
    assert [e.flatten().tolist() for e in first] == [[2.0, 1.0], [1.0, 1.0], [2.0, 1.0]]
    second = cache(["c", "defg"])
    assert encoder.calls == [["ab", "c"], ["defg"]]  # only the new text
    assert [e.flatten().tolist() for e in second] == [[1.0, 1.0], [4.0, 2.0]]
    cache(["defg", "ab"])
    assert len(encoder.calls) == 2
    assert cache.has(["ab", "c", "defg"]) and not cache.has(["ab", "xyz"])


def test_cached_embeddings_carry_no_gradient() -> None:
    embedding = EmbeddingCache(_Encoder())(["text"])[0]
    assert not embedding.requires_grad and embedding.grad_fn is None


def test_prompt_embeddings_are_the_view_prompts_and_the_negative_prompt() -> None:
    encoder = _Encoder()
    cache = EmbeddingCache(encoder)
    embeddings = cache.prompt_embeddings("  a red chair ", negative_prompt=" blurry ")
    expected_texts = ["a red chair" + view_suffix(label) for label in VIEW_LABELS] + ["blurry"]
    assert encoder.calls == [expected_texts]
    assert tuple(embeddings.by_view) == VIEW_LABELS
    for label in VIEW_LABELS:
        assert embeddings.by_view[label].flatten().tolist() == [float(len("a red chair" + view_suffix(label))), 1.0]
    assert embeddings.unconditional.flatten().tolist() == [6.0, 1.0]
    cache.prompt_embeddings("a red chair", negative_prompt="blurry")
    assert len(encoder.calls) == 1  # the same prompt again needs no encoder


# ----- load_component ---------------------------------------------------------------------------------


def test_load_component_passes_the_folder_subfolder_and_options(tmp_path: Path) -> None:
    seen = {}

    def loader(path: str, **kwargs: object) -> str:
        seen.update(path=path, **kwargs)
        return "component"

    assert load_component(loader, tmp_path, "unet", "U-Net", dtype=torch.float16) == "component"
    assert seen == {"path": str(tmp_path), "subfolder": "unet", "local_files_only": True, "dtype": torch.float16}


def test_a_loader_exception_becomes_one_prior_error_line(tmp_path: Path) -> None:
    def loader(path: str, **kwargs: object) -> None:
        raise OSError("Error no file named diffusion_pytorch_model.safetensors\nsecond line of detail")

    with pytest.raises(PriorError) as caught:
        load_component(loader, tmp_path, "unet", "U-Net")
    assert str(caught.value) == (
        f"cannot load the U-Net from {tmp_path / 'unet'} (OSError: Error no file named diffusion_pytorch_model.safetensors)"
    )
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_a_loader_exception_without_a_message_is_named_by_its_type(tmp_path: Path) -> None:
    def loader(path: str, **kwargs: object) -> None:
        raise KeyError()

    with pytest.raises(PriorError, match=r"cannot load the tokenizer from .*tokenizer \(KeyError: KeyError\)$"):
        load_component(loader, tmp_path, "tokenizer", "tokenizer")
