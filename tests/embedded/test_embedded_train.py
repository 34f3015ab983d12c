import dataclasses
import json

import pytest
import torch
from embedded_helpers import TINY_MODEL, fake_batch

from dreamfusion.embedded import vocabulary as vocab
from dreamfusion.embedded.model import load_weights, read_config
from dreamfusion.embedded.render_pool import check_captions
from dreamfusion.embedded.train import TrainPriorConfig, drop_slots, train_prior
from dreamfusion.embedded.vocabulary import caption_tokens


def tiny_config(**changes) -> TrainPriorConfig:
    base = TrainPriorConfig(
        model=TINY_MODEL, batch_size=2, minutes=None, warmup_steps=2, log_every=2,
        checkpoint_every=2, pool_size=0, max_steps=2,
    )
    return dataclasses.replace(base, **changes)


def source(batch_size: int, generator: torch.Generator):
    return fake_batch(batch_size, generator, resolution=16)  # the trainer is resolution-agnostic; 16 px is fast


def test_tokens_from_labels_match_the_captions() -> None:
    batch = fake_batch(32, torch.Generator().manual_seed(3))
    check_captions(batch)  # raises on a mismatch
    tokens = caption_tokens(batch.object_ids, batch.colour_ids, batch.view_ids)
    assert tokens[0].tolist() == vocab.tokenize(batch.captions[0])


def test_drop_slots() -> None:
    tokens = torch.tensor([vocab.tokenize("a red chair, front view")] * 4)
    draws = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    dropped = drop_slots(tokens, draws, 0.1, 0.1, 0.1)
    assert dropped[0].tolist() == vocab.unconditional_tokens()
    assert dropped[1].tolist() == vocab.tokenize("a chair, front view")
    assert dropped[2].tolist() == vocab.tokenize("a red chair")
    assert dropped[3].tolist() == tokens[3].tolist()
    colourless = torch.tensor([False, False, False, True])
    assert drop_slots(tokens, draws, 0.1, 0.1, 0.1, colourless)[3].tolist() == vocab.tokenize("a chair, front view")


def test_train_writes_outputs_and_resumes(tmp_path) -> None:
    records = []
    result = train_prior(tiny_config(), tmp_path, "cpu", progress=records.append, source=source)
    assert result.steps == 2 and result.final_loss == result.final_loss  # not NaN
    for name in ("checkpoint.pt", "metrics.jsonl", "prior.safetensors"):
        assert (tmp_path / name).is_file()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [2] and records[-1]["step"] == 2
    assert {"loss", "it_per_s", "images_per_s", "elapsed_s"} <= set(lines[0])
    assert read_config(result.weights_path) == TINY_MODEL

    with pytest.raises(FileExistsError):
        train_prior(tiny_config(), tmp_path, "cpu", source=source)
    resumed = train_prior(tiny_config(max_steps=3), tmp_path, "cpu", resume=True, source=source)
    assert resumed.steps == 3
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 3]
    model = load_weights(resumed.weights_path)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_render_pool_and_time_budget(tmp_path) -> None:
    config = tiny_config(pool_size=4, pool_refresh=2, pool_refresh_every=1, max_steps=None, minutes=0.02)
    result = train_prior(config, tmp_path, "cpu", source=source)
    assert result.steps >= 1 and 1.0 <= result.seconds < 10.0


@pytest.mark.parametrize(
    "change", [{"batch_size": 0}, {"lr": -1.0}, {"p_uncond": 1.0}, {"minutes": None, "max_steps": None},
               {"pool_size": 2}, {"ema_decay": 1.0}, {"colourless_shading": ("matte",)}]
)
def test_config_rejects_bad_numbers(change: dict) -> None:
    with pytest.raises(ValueError):
        tiny_config(**change)


@pytest.mark.slow
def test_sample_sheet(tmp_path) -> None:
    from PIL import Image

    from dreamfusion.embedded.model import EmbeddedDiffusion, save_weights
    from dreamfusion.embedded.train import write_sample_sheet

    weights = save_weights(EmbeddedDiffusion(TINY_MODEL), tmp_path / "prior.safetensors")
    sheet = write_sample_sheet(weights, tmp_path / "samples.png", "cpu", steps=1)
    assert Image.open(sheet).size == (4 * 64, len(vocab.OBJECT_NAMES) * 64)


def test_resume_matches_an_uninterrupted_run(tmp_path) -> None:
    from safetensors.torch import load_file

    straight = train_prior(tiny_config(max_steps=3), tmp_path / "straight", "cpu", source=source)

    def interrupt(record: dict) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # stopped at step 2 (the first log), as Ctrl-C or SIGTERM would
        train_prior(tiny_config(max_steps=3), tmp_path / "split", "cpu", progress=interrupt, source=source)
    resumed = train_prior(tiny_config(max_steps=3), tmp_path / "split", "cpu", resume=True, source=source)
    expected, actual = load_file(straight.weights_path), load_file(resumed.weights_path)
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[k], actual[k]) for k in expected)
