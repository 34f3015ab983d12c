"""CLIP R-Precision: the ranking maths, our preprocessing, loading errors, and a whole run with a tiny random CLIP."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import TINY_OVERRIDES
from typer.testing import CliRunner

from dreamfusion.evaluate_clip import (
    FETCH_HINT,
    ClipEvalConfig,
    ClipEvalError,
    caption_set,
    default_captions,
    evaluate_run_clip,
    load_clip,
    r_precision,
    read_captions,
)  # fmt: skip


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table, which CLIP's BPE vocabulary is written in."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = [byte for byte in range(256) if byte not in printable]
    return {byte: chr(byte) for byte in printable} | {byte: chr(256 + i) for i, byte in enumerate(extra)}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random CLIP with 32 px images and a character-level vocabulary (no merges), saved like a real one."""
    transformers = pytest.importorskip("transformers")
    directory = tmp_path_factory.mktemp("tiny-clip")
    chars = sorted(set(_bytes_to_unicode().values()))
    vocab = {token: index for index, token in enumerate([*chars, *(c + "</w>" for c in chars), "<|startoftext|>", "<|endoftext|>"])}
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    tokenizer = transformers.CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"))
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    text = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=77, projection_dim=16, bos_token_id=bos, eos_token_id=eos, pad_token_id=eos)  # fmt: skip
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=8, projection_dim=16)  # fmt: skip
    torch.manual_seed(0)
    transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    (directory / "preprocessor_config.json").write_text(
        json.dumps({"crop_size": {"height": 32, "width": 32}, "image_mean": [0.5, 0.25, 0.125], "image_std": [0.5, 0.5, 0.5]})
    )
    return directory


def test_r_precision_is_one_when_the_true_caption_matches_every_view() -> None:
    captions = torch.nn.functional.normalize(torch.randn(6, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    images = captions[[3, 3, 3, 3]] * torch.tensor([[1.0], [2.0], [0.5], [3.0]])  # scale does not matter
    result = r_precision(images, captions, true_index=3)
    assert result.precision == 1.0
    assert result.true_ranks == [1, 1, 1, 1]
    assert all(order[0] == 3 for order in result.rankings)


def test_r_precision_ranks_are_permutations_and_the_metric_a_fraction() -> None:
    generator = torch.Generator().manual_seed(1)
    images, captions = torch.randn(16, 8, generator=generator), torch.randn(10, 8, generator=generator)
    result = r_precision(images, captions, true_index=7)
    assert 0.0 <= result.precision <= 1.0
    for order, rank in zip(result.rankings, result.true_ranks, strict=True):
        assert sorted(order) == list(range(10))
        assert order.index(7) + 1 == rank
    assert result.precision == np.mean([rank == 1 for rank in result.true_ranks])
    # Views matching caption 2 exactly: caption 7 is never first there.
    assert r_precision(captions[[2, 2]], captions, true_index=7).precision == 0.0


def test_ties_count_against_the_true_caption() -> None:
    same = torch.ones(4, 3)
    result = r_precision(torch.ones(2, 3), same, true_index=0)
    assert result.precision == 0.0 and result.true_ranks == [4, 4]
    with pytest.raises(ValueError, match="outside"):
        r_precision(torch.ones(1, 3), same, true_index=4)


def test_caption_sets() -> None:
    captions = default_captions()
    assert len(captions) >= 50 and len(set(captions)) == len(captions)
    assert caption_set("a  Red Apple", captions) == (captions, captions.index("a red apple"))
    extended, index = caption_set("a purple giraffe", captions)
    assert extended[index] == "a purple giraffe" and len(extended) == len(captions) + 1


def test_bad_caption_file_and_clip_folder(tmp_path: Path) -> None:
    with pytest.raises(ClipEvalError, match="cannot read captions"):
        read_captions(tmp_path / "missing.txt")
    (tmp_path / "one.txt").write_text("# comment\na cat\n\n")
    with pytest.raises(ClipEvalError, match="at least 2"):
        read_captions(tmp_path / "one.txt")
    with pytest.raises(ClipEvalError) as error:
        load_clip(tmp_path / "nope")
    assert FETCH_HINT in str(error.value) and "\n" not in str(error.value)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ClipEvalError, match="cannot load CLIP") as error:
        load_clip(broken)
    assert "\n" not in str(error.value)


def test_preprocessing_resizes_crops_and_normalizes(tiny_clip: Path) -> None:
    clip = load_clip(tiny_clip)
    assert clip.image_size == 32 and clip.mean == (0.5, 0.25, 0.125)
    image = np.empty((2, 40, 64, 3), dtype=np.uint8)
    image[...] = (np.array([0.5, 0.25, 0.125]) * 255).round().astype(np.uint8)
    pixels = clip.preprocess(image)
    assert pixels.shape == (2, 3, 32, 32)
    assert pixels.abs().max() < 0.01  # the mean colour normalizes to zero
    features = clip.embed_images(image)
    assert features.shape == (2, 16) and torch.allclose(features.norm(dim=-1), torch.ones(2))
    texts = clip.embed_texts(["a red ball", "a cat", "a much longer caption about a chair"])
    assert texts.shape == (3, 16) and torch.allclose(texts.norm(dim=-1), torch.ones(3))


def test_evaluate_a_run_end_to_end(tiny_clip: Path, tmp_path: Path) -> None:
    from dreamfusion.cli import app

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({k: v for k, v in TINY_OVERRIDES.items() if k not in ("device", "prior")}))
    run = tmp_path / "run"
    args = ["generate", "a red ball", "--prior", "analytic", "--config", str(config), "--iters", "1", "--out", str(run), "--device", "cpu"]
    assert CliRunner().invoke(app, args).exit_code == 0
    captions = tmp_path / "captions.txt"
    captions.write_text("a cat\na dog\na chair\n")
    result = evaluate_run_clip(run, tiny_clip, captions, ClipEvalConfig(views=4, resolution=24), device="cpu")
    assert set(result.modes) == {"albedo", "geo"} and result.num_captions == 4
    for mode in result.modes.values():
        assert 0.0 <= mode.r_precision <= 1.0 and len(mode.true_ranks) == 4
        assert all(1 <= rank <= 4 for rank in mode.true_ranks)
    saved = json.loads((run / "eval_clip.json").read_text())
    assert saved["prompt"] == "a red ball" and set(saved["r_precision"]) == {"albedo", "geo"}


def test_an_empty_field_renders_and_ranks(tiny_clip: Path) -> None:
    from helpers import empty_tiny_field

    from dreamfusion.evaluate_clip import evaluate_views, render_views
    from dreamfusion.renderer import OccupancyGrid, RendererConfig
    from dreamfusion.scene import Scene
    from dreamfusion.shading import Background, BackgroundConfig, ShadingConfig

    field = empty_tiny_field()
    grid = OccupancyGrid.from_field(field, resolution=16)
    scene = Scene(field, Background(BackgroundConfig()), RendererConfig(num_samples=8), ShadingConfig(), occupancy=grid)
    renders = render_views(scene, ClipEvalConfig(views=3, resolution=8), distance=1.25)
    assert set(renders) == {"albedo", "geo"}
    assert all(images.shape == (3, 8, 8, 3) and (images == 255).all() for images in renders.values())  # white
    results = evaluate_views(load_clip(tiny_clip), renders, "a red ball", ["a cat", "a dog"])
    assert all(len(result.true_ranks) == 3 and 0.0 <= result.r_precision <= 1.0 for result in results.values())
