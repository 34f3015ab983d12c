"""A batch of prompts in one process, with ``generate`` replaced by a stand-in so that no field is trained: run
directory names, the summary and its report, a failing prompt that does not stop the others, the prompts
file's problems, and the folder lock. Then several prompts at once, each in its own process, with tiny real
runs: their results, a prompt that fails and one whose process dies, and how many run at once by default."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import assert_close_scaled, run_cli, tiny_config

from dreamfusion import batch
from dreamfusion.batch import (
    KILL_PROMPT_VARIABLE,
    MAX_PER_DEVICE,
    BatchSummary,
    PromptResult,
    auto_per_device,
    read_prompts,
    run_batch,
    run_dir_name,
    run_memory_estimate,
    shard,
)  # fmt: skip
from dreamfusion.config import build_config
from dreamfusion.errors import RunError, TrainingError
from dreamfusion.runlock import lock_run
from dreamfusion.typed_config import ConfigError


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


# ----- several prompts at once, each in its own process ---------------------------------------------------

GiB = 2**30
THREE_PROMPTS = "a ball\na cube\na ball, side view\n"


def _batch_config():
    return tiny_config(trainer={"iters": 4, "checkpoint_every": 2, "log_every": 2})


@pytest.fixture(scope="module")
def concurrent_batch(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, BatchSummary]:
    """Three tiny real runs, two at a time."""
    folder = tmp_path_factory.mktemp("concurrent")
    (folder / "prompts.txt").write_text(THREE_PROMPTS)
    return folder / "out", run_batch(folder / "prompts.txt", folder / "out", _batch_config(), per_device=2)


def test_per_device_runs_every_prompt_and_writes_the_summary_sorted(concurrent_batch: tuple[Path, BatchSummary]) -> None:
    out, summary = concurrent_batch
    assert [(r.index, r.ok, r.steps) for r in summary.results] == [(0, True, 4), (1, True, 4), (2, True, 4)]
    for name in ("000-a-ball", "001-a-cube", "002-a-ball-side-view"):
        assert (out / name / "checkpoint.pt").is_file()
    written = json.loads((out / "summary.json").read_text())
    assert [r["index"] for r in written["results"]] == [0, 1, 2] and all(r["ok"] for r in written["results"])
    assert written == json.loads(summary.to_json())


def test_two_prompts_really_run_at_the_same_time(concurrent_batch: tuple[Path, BatchSummary]) -> None:
    first, second = concurrent_batch[1].results[:2]
    assert first.started_at < second.ended_at and second.started_at < first.ended_at


def test_a_prompt_run_in_its_own_process_trains_as_in_this_one(
    concurrent_batch: tuple[Path, BatchSummary], tmp_path: Path
) -> None:
    (tmp_path / "prompts.txt").write_text("a ball\n")  # every prompt uses the same seed, whatever its index
    sequential = run_batch(tmp_path / "prompts.txt", tmp_path / "out", _batch_config(), per_device=1)
    assert sequential.results[0].ok
    alone = torch.load(tmp_path / "out" / "000-a-ball" / "checkpoint.pt", weights_only=True)["field"]
    spawned = torch.load(concurrent_batch[0] / "000-a-ball" / "checkpoint.pt", weights_only=True)["field"]
    assert alone.keys() == spawned.keys()
    for name, tensor in alone.items():
        # Equal bit for bit on 2 cores, but not torch.equal: the child takes cpu_count // 2 threads, this
        # process the tests' count, and a matrix product split among other threads sums in another order.
        assert_close_scaled(spawned[name], tensor)


@pytest.fixture(scope="module")
def troubled_batch(tmp_path_factory: pytest.TempPathFactory) -> BatchSummary:
    """Two at a time: "a cube" fails (its run folder already holds a run), the process of "a mug" is killed."""
    folder = tmp_path_factory.mktemp("troubled")
    (folder / "prompts.txt").write_text("a ball\na cube\na mug\n")
    (folder / "out" / "001-a-cube").mkdir(parents=True)
    (folder / "out" / "001-a-cube" / "config.yaml").write_text("prompt: a cube\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(KILL_PROMPT_VARIABLE, "a mug")
        return run_batch(folder / "prompts.txt", folder / "out", _batch_config(), per_device=2)


def test_a_failing_prompt_in_its_own_process_is_recorded_and_the_others_run(troubled_batch: BatchSummary) -> None:
    ball, cube, _ = troubled_batch.results
    assert ball.ok and ball.steps == 4
    assert not cube.ok and cube.error_type == "RunError" and "already holds a run" in cube.error
    assert cube.traceback is None


def test_a_process_that_dies_fails_only_its_prompt(troubled_batch: BatchSummary) -> None:
    ball, _, mug = troubled_batch.results
    assert ball.ok
    assert not mug.ok and mug.error_type == "WorkerDied"
    assert "exit code -9 (SIGKILL)" in mug.error and "\n" not in mug.error
    assert "failed 2 'a mug': WorkerDied: its process ended with exit code -9" in troubled_batch.report()


def test_prompts_at_once_by_default_follow_the_free_memory() -> None:
    assert auto_per_device("cpu", None, 7 * GiB) == 1
    assert auto_per_device(torch.device("cpu"), 100 * GiB, 7 * GiB) == 1  # one run already uses every core
    assert auto_per_device("cuda:0", 100 * GiB, 7 * GiB) == 8  # the cap
    assert auto_per_device("cuda:0", 100 * GiB, 7 * GiB, cap=32) == 14
    assert auto_per_device("cuda", 20 * GiB, 7 * GiB) == 2
    assert auto_per_device("cuda", 3 * GiB, 7 * GiB) == 1  # never none
    assert auto_per_device("cuda", None, 7 * GiB) == 1


def test_a_runs_memory_estimate_is_the_priors_peak_and_the_hash_tables_adam_state() -> None:
    table = 2**19 * 16 * 2 * 4 * 4  # rows x levels x features x float32 x (parameters, gradients, 2 moments)
    assert run_memory_estimate(build_config("default")) == 4 * GiB + table
    sd = run_memory_estimate(build_config("default", overrides={"prior": {"name": "sd", "model": "sd21"}}))
    assert sd == 7 * GiB + table
    tiny = tiny_config()
    assert run_memory_estimate(tiny) == GiB // 2 + 2**12 * 4 * 2 * 16


@pytest.mark.parametrize("value", ["0", "-1", str(MAX_PER_DEVICE + 1), "1000"])
def test_a_bad_per_gpu_fails_in_one_line_and_writes_nothing(value: str, tmp_path: Path) -> None:
    (tmp_path / "prompts.txt").write_text("a ball\n")
    result = run_cli("batch", str(tmp_path / "prompts.txt"), "--out", str(tmp_path / "out"), "--prior", "analytic",
                     "--device", "cpu", "--per-gpu", value)  # fmt: skip
    assert result.code == 2 and len(result.lines) == 1 and "Traceback" not in result.output, result.output
    assert f"--per-gpu must be from 1 to {MAX_PER_DEVICE} prompts at once on each device, got {value}" in result.output
    assert not (tmp_path / "out").exists()


def test_run_batch_refuses_a_bad_per_device_before_writing(tmp_path: Path) -> None:
    (tmp_path / "prompts.txt").write_text("a ball\n")
    with pytest.raises(ConfigError, match="per_device must be from 1 to 64"):
        run_batch(tmp_path / "prompts.txt", tmp_path / "out", tiny_config(), per_device=0)
    assert not (tmp_path / "out").exists()
