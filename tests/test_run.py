"""A run directory survives kills and bad luck: torn logs, a late kill, divergence, an emptied field, and a
checkpoint that belongs to another run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from helpers import run_cli, snapshot, tiny_config, tiny_config_file

import dreamfusion.run
from dreamfusion.errors import TrainingError
from dreamfusion.priors.analytic import AnalyticPrior, AnalyticPriorConfig
from dreamfusion.run import RunError, expected_outputs, generate, load_scene


def _generate(tmp_path: Path, out: Path, *extra: str, **sections: dict) -> None:
    config = tiny_config_file(tmp_path, **sections)
    result = run_cli("generate", "a ball", "--prior", "analytic", "--config", str(config), "--out", str(out),
                     "--device", "cpu", *extra)  # fmt: skip
    assert result.code == 0, result.output


@pytest.mark.slow
def test_resume_drops_a_torn_last_metrics_line_and_closes_a_cut_log_line(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _generate(tmp_path, out, "--iters", "10")
    with (out / "metrics.jsonl").open("a") as metrics:
        metrics.write('{"step": 10, "loss": 0.1')  # a power cut in the middle of a line
    with (out / "run.log").open("a") as log:
        log.write("2026-01-01 00:00:00 wrote turnt")
    _generate(tmp_path, out, "--iters", "20", "--resume")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [record["step"] for record in records]
    assert steps == sorted(set(steps)) and steps[-1] == 19  # every line whole, none twice
    log = (out / "run.log").read_text().splitlines()
    cut = next(i for i, line in enumerate(log) if line.endswith("wrote turnt"))
    assert "the last line above was cut short" in log[cut + 1]  # the next line starts on a line of its own
    assert any("dropped 1 unreadable line(s) of metrics.jsonl" in line for line in log)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 20


def test_resume_of_a_finished_run_writes_only_its_missing_outputs(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _generate(tmp_path, out, "--iters", "4")
    assert set(expected_outputs()) <= {p.name for p in out.iterdir()}
    for name in ("turntable.gif", "mesh.glb"):  # as if killed after the training ended
        (out / name).unlink()
    kept = {name: data for name, data in snapshot(out).items() if name != "run.log"}
    _generate(tmp_path, out, "--resume")
    after = snapshot(out)
    assert (out / "turntable.gif").stat().st_size > 0 and (out / "mesh.glb").stat().st_size > 0
    assert {name: after[name] for name in kept} == kept  # checkpoint, config, metrics, preview untouched
    assert "resumed a finished run to write its missing outputs: turntable.gif, mesh.glb" in (out / "run.log").read_text()
    again = run_cli("generate", "a ball", "--resume", "--prior", "analytic", "--config", str(tiny_config_file(tmp_path)),
                    "--out", str(out), "--device", "cpu")  # fmt: skip
    assert again.code == 2 and "already finished 4 steps and has all its outputs" in again.output


def test_a_huge_learning_rate_stops_cleanly_and_says_why(tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = tiny_config_file(tmp_path, trainer={"lr": 1.0e30, "iters": 40, "max_consecutive_nonfinite": 5})
    result = run_cli("generate", "a ball", "--prior", "analytic", "--config", str(config), "--out", str(out), "--device", "cpu")
    # The progress bar had started: the error is the one line after it.
    assert result.code == 2 and "Traceback" not in result.output, result.output
    assert result.lines[-1].startswith("error: stopped at step 6: the run diverged (5 steps in a row")
    assert result.lines[-1].endswith("no checkpoint was written yet. Lower trainer.lr or the guidance scale")
    assert "error: stopped at step 6" in (out / "run.log").read_text()
    assert not (out / "checkpoint.pt").exists()  # no broken state was saved as if it were good


def test_divergence_keeps_the_last_good_checkpoint_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class DivergingPrior(AnalyticPrior):
        """Finite for the first 12 steps, then NaN noise predictions, as a run blowing up would give."""

        calls = 0

        def predict_noise(self, noisy, timesteps, embeddings):
            DivergingPrior.calls += 1
            eps = super().predict_noise(noisy, timesteps, embeddings)
            return eps * float("nan") if DivergingPrior.calls > 12 else eps

    monkeypatch.setattr(dreamfusion.run, "build_prior", lambda config, device: DivergingPrior(AnalyticPriorConfig(resolution=16)))
    out = tmp_path / "run"
    checkpoints: dict[int, bytes] = {}

    def on_step(metrics) -> None:
        if (out / "checkpoint.pt").is_file():
            data = (out / "checkpoint.pt").read_bytes()
            checkpoints[torch.load(out / "checkpoint.pt", weights_only=True)["step"]] = data

    config = tiny_config(trainer={"iters": 40, "checkpoint_every": 5, "max_consecutive_nonfinite": 4})
    with pytest.raises(TrainingError, match=r"stopped at step 16: .* the last good checkpoint \(step 10\) is kept"):
        generate(config, out, on_step=on_step)
    assert (out / "checkpoint.pt").read_bytes() == checkpoints[10]
    assert "error: stopped at step 16: the run diverged" in (out / "run.log").read_text()
    assert not list(out.glob(".*.tmp*"))


def test_a_field_that_empties_mid_run_is_logged_and_the_run_finishes(tmp_path: Path) -> None:
    out = tmp_path / "run"

    started = []

    def empty_the_field(metrics) -> None:
        if metrics.step == 4:  # from here on no sample has density: the occupancy grid is empty too
            with torch.no_grad():
                started[0].field.mlp[-1].bias[0] = -1e4
                started[0].field.mlp[-1].weight[0] = 0.0

    config = tiny_config(trainer={"iters": 12, "log_every": 2, "lr": 1e-12})
    result = generate(config, out, on_start=started.append, on_step=empty_the_field)
    assert result.train.steps == 12 and result.train.skipped_steps == 0
    log = (out / "run.log").read_text()
    assert "step 10: the views of the last 3 logged steps are empty" in log and "the field holds no visible density" in log
    assert "mesh.glb skipped: the field is empty" in log
    assert any("mesh.glb skipped" in note for note in result.notes)
    for name in ("turntable.gif", "preview.png", "checkpoint.pt"):
        assert (out / name).stat().st_size > 0, name
    assert not (out / "mesh.glb").exists()


@pytest.mark.slow
def test_export_and_render_refuse_a_checkpoint_from_another_run(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    _generate(tmp_path, first, "--iters", "2")
    _generate(tmp_path, second, "--iters", "2", "--seed", "5")
    shutil.copy(first / "checkpoint.pt", second / "checkpoint.pt")
    with pytest.raises(RunError, match=r"checkpoint.pt was not written by the run of .*config.yaml \(they differ in seed\)"):
        load_scene(second, "cpu")
    before = snapshot(second)
    for command in (("render", str(second), "--device", "cpu"), ("export", str(second), "--device", "cpu")):
        refused = run_cli(*command)
        assert refused.code == 2 and "was not written by the run of" in refused.output, refused.output
    assert snapshot(second) == before
    # An extended run (resume --iters) is still one run: only trainer.iters may differ.
    _generate(tmp_path, first, "--iters", "3", "--resume")
    assert yaml.safe_load((first / "config.yaml").read_text())["trainer"]["iters"] == 3
    load_scene(first, "cpu")


def test_a_failed_start_leaves_no_run_directory(tmp_path: Path) -> None:
    out = tmp_path / "new" / "run"
    result = run_cli("generate", "a ball", "--prior", "sd", "--model", str(tmp_path / "no-weights"), "--out", str(out), "--device", "cpu")
    assert result.code == 2 and len(result.lines) == 1, result.output
    assert not (tmp_path / "new").exists()  # neither the run folder nor the folder made for it


def test_a_prompt_is_checked_once_by_the_chosen_prior_before_anything_loads() -> None:
    from dreamfusion.errors import PriorError, RunError
    from dreamfusion.priors import prior_config
    from dreamfusion.run import validate_prompt

    embedded = prior_config("embedded", model="/nowhere/prior.safetensors")  # the weights are never opened
    assert validate_prompt("  a  red\tchair ", embedded) == "a red chair"
    with pytest.raises(PriorError, match="spaceship"):
        validate_prompt("a red spaceship", embedded)
    with pytest.raises(PriorError, match="leave the view out"):
        validate_prompt("a red chair, front view", embedded)
    assert validate_prompt("a DSLR photo of a spaceship", prior_config("sd", model="/nowhere")) == "a DSLR photo of a spaceship"
    with pytest.raises(RunError, match="empty"):
        validate_prompt(" \n", prior_config("analytic"))


def test_a_collapsed_run_starts_over_on_the_next_seed(tmp_path: Path) -> None:
    """Every view counts as haze here (a limit below the blob's opacity): the run starts over twice, then, with
    no restarts left, finishes its last attempt."""
    import yaml

    from dreamfusion.run import generate

    config = tiny_config(trainer={"iters": 30, "log_every": 5, "checkpoint_every": 10},
                         collapse={"haze_opacity": 0.01, "restarts": 2, "window": 10, "after": 0, "until": 1.0})
    out = tmp_path / "run"
    result = generate(config, out)
    log = (out / "run.log").read_text()
    assert log.count("a haze fills every view") == 2 and "started over on seed 1" in log and "started over on seed 2" in log
    assert sum("started over" in note for note in result.notes) == 2
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[0] == 0 and steps[-1] == 29  # only the last attempt's lines
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["attempt"] == 2 and state["step"] == 30
    assert yaml.safe_load((out / "config.yaml").read_text())["seed"] == config.seed  # the config says what was asked
    assert (out / "preview.png").is_file()


def test_one_empty_view_is_not_an_empty_field(tmp_path: Path) -> None:
    """A random camera can miss a thin object: only three empty logged steps in a row count as an empty field."""
    from dreamfusion.run import EmptyFieldWatch
    from dreamfusion.trainer import StepMetrics

    watch = EmptyFieldWatch(tmp_path)
    for step, opacity in ((10, 0.3), (20, 1e-5), (30, 0.3), (40, 1e-5), (50, 1e-5), (60, 0.2)):
        watch.see(StepMetrics(step, 0.0, {}, {}, opacity, 1e-2, 500, "albedo", 1.0, False, 10.0))
    assert not (tmp_path / "run.log").exists()
    for step in (70, 80, 90, 100, 110):
        watch.see(StepMetrics(step, 0.0, {}, {}, 0.0, 1e-2, 500, "albedo", 1.0, False, 10.0))
    watch.see(StepMetrics(120, 0.0, {}, {}, 0.25, 1e-2, 500, "albedo", 1.0, False, 10.0))
    lines = (tmp_path / "run.log").read_text().splitlines()
    assert len(lines) == 2
    assert "step 90: the views of the last 3 logged steps are empty" in lines[0]
    assert "step 120: the field is visible again" in lines[1]
