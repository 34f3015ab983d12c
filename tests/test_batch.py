"""A batch of prompts in one process, with ``generate`` replaced by a stand-in so that no field is trained: run
directory names, the summary and its report, a failing prompt that does not stop the others, the prompts
file's problems, and the folder lock."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import tiny_config

from dreamfusion import batch
from dreamfusion.batch import BatchSummary, PromptResult, read_prompts, run_batch, run_dir_name, shard
from dreamfusion.errors import RunError, TrainingError
from dreamfusion.runlock import lock_run


def test_run_dir_names_are_zero_padded_indices_and_slugs() -> None:
    assert run_dir_name(7, "A Red Chair!", 5) == "007-a-red-chair"
    assert run_dir_name(42, "a mug", 12345) == "00042-a-mug"


def test_shard_is_round_robin_and_refuses_a_rank_outside_the_world() -> None:
    assert shard(["a", "b", "c", "d", "e"], 1, 2) == [(1, "b"), (3, "d")]
    with pytest.raises(ValueError, match="rank 2 outside a world of 2"):
        shard(["a"], 2, 2)


def test_read_prompts_collapses_white_space(tmp_path: Path) -> None:
    path = tmp_path / "prompts.txt"
    path.write_text("  a   red\tchair  \n#a comment\n   # an indented comment\na mug\n")
    assert read_prompts(path) == ["a red chair", "a mug"]


def test_a_prompts_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    path = tmp_path / "prompts.txt"
    path.write_bytes(b"a caf\xe9 chair\n")
    with pytest.raises(RunError, match="is not UTF-8 text; save it as UTF-8"):
        read_prompts(path)


def test_summary_report_counts_and_lists_failures() -> None:
    summary = BatchSummary(total=3, world_size=2)
    summary.results = [
        PromptResult(0, "a ball", "out/000-a-ball", 0, ok=True, steps=5),
        PromptResult(1, "a cube", "out/001-a-cube", 1, ok=False, error_type="TrainingError", error="diverged"),
    ]
    assert [r.index for r in summary.succeeded] == [0] and [r.index for r in summary.failed] == [1]
    assert summary.report() == "1 of 3 prompts done, 1 failed\n  failed 1 'a cube': TrainingError: diverged"
    data = json.loads(summary.to_json())
    assert data["total"] == 3 and data["world_size"] == 2 and data["results"][1]["error"] == "diverged"


def _fake_generate(calls: list[tuple[str, Path]]):
    """A stand-in for run.generate: records (prompt, run_dir), fails "a cube" with a user error, and reports
    3 steps otherwise."""

    def generate(config, run_dir, **kwargs):
        calls.append((config.prompt, Path(run_dir)))
        if config.prompt == "a cube":
            raise TrainingError("the loss diverged")
        return SimpleNamespace(train=SimpleNamespace(steps=3))

    return generate


def test_a_failing_prompt_is_recorded_and_the_others_run(tmp_path: Path, monkeypatch) -> None:
    calls: list[tuple[str, Path]] = []
    monkeypatch.setattr(batch, "generate", _fake_generate(calls))
    (tmp_path / "prompts.txt").write_text("a ball\na cube\n# skipped\na  mug\n")
    out = tmp_path / "out"
    summary = run_batch(tmp_path / "prompts.txt", out, tiny_config())
    assert calls == [("a ball", out / "000-a-ball"), ("a cube", out / "001-a-cube"), ("a mug", out / "002-a-mug")]
    assert [(r.ok, r.steps, r.error_type) for r in summary.results] == [
        (True, 3, None), (False, 0, "TrainingError"), (True, 3, None),
    ]  # fmt: skip
    failed = summary.failed[0]
    assert failed.error == "the loss diverged" and failed.traceback is None  # a user error needs no traceback
    written = json.loads((out / "summary.json").read_text())
    assert written == json.loads((out / "summary.rank0.json").read_text())
    assert [r["prompt"] for r in written["results"]] == ["a ball", "a cube", "a mug"]


def test_the_folder_lock_is_released_after_a_batch(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(batch, "generate", _fake_generate([]))
    (tmp_path / "prompts.txt").write_text("a ball\n")
    run_batch(tmp_path / "prompts.txt", tmp_path / "out", tiny_config())
    with lock_run(tmp_path / "out") as lock:  # free again
        assert lock.held


def test_a_locked_folder_or_a_missing_file_stops_the_batch_before_any_prompt(tmp_path: Path, monkeypatch) -> None:
    calls: list[tuple[str, Path]] = []
    monkeypatch.setattr(batch, "generate", _fake_generate(calls))
    with pytest.raises(RunError, match="cannot read the prompts file"):
        run_batch(tmp_path / "missing.txt", tmp_path / "out", tiny_config())
    (tmp_path / "prompts.txt").write_text("a ball\n")
    (tmp_path / "out").mkdir()
    with lock_run(tmp_path / "out"):
        with pytest.raises(RunError):
            run_batch(tmp_path / "prompts.txt", tmp_path / "out", tiny_config())
    assert calls == []


def test_a_batch_over_several_ranks_needs_torch_distributed(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="needs torch.distributed; start it with torchrun"):
        run_batch(tmp_path / "prompts.txt", tmp_path / "out", tiny_config(), rank=0, world_size=2)
