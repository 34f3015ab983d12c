"""Every bad input gives exit code 2 and a one-line message naming the problem, never a traceback."""

from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from conftest import TINY_OVERRIDES
from dreamfusion.cli import app

runner = CliRunner()


@pytest.fixture
def tiny_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    overrides = {k: v for k, v in TINY_OVERRIDES.items() if k not in ("device", "prior")}
    path.write_text(yaml.safe_dump(overrides))
    return path


def _run(*args: str):
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output
    return result


def _assert_user_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    for fragment in fragments:
        assert fragment in text, text


def test_generate_writes_a_complete_run_and_render_redraws_it(tmp_path: Path, tiny_yaml: Path) -> None:
    out = tmp_path / "run"
    result = _run("generate", "a ball", "--prior", "analytic", "--config", str(tiny_yaml), "--iters", "3", "--out", str(out), "--device", "cpu")
    assert result.exit_code == 0, result.output
    for name in ("config.yaml", "checkpoint.pt", "metrics.jsonl", "run.log", "turntable.gif", "turntable.mp4", "preview.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert yaml.safe_load((out / "config.yaml").read_text())["prompt"] == "a ball"
    (out / "turntable.gif").unlink()
    result = _run("render", str(out), "--frames", "3", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert (out / "turntable.gif").is_file()


def test_resume_continues_and_extends_a_run(tmp_path: Path, tiny_yaml: Path) -> None:
    out = tmp_path / "run"
    common = ("--prior", "analytic", "--config", str(tiny_yaml), "--out", str(out), "--device", "cpu")
    assert _run("generate", "a ball", "--iters", "2", *common).exit_code == 0
    result = _run("generate", "a ball", "--iters", "4", "--resume", *common)
    assert result.exit_code == 0, result.output
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 4
    _assert_user_error(_run("generate", "a ball", "--iters", "4", "--resume", *common), "already finished 4 steps")
    _assert_user_error(_run("generate", "a cube", "--resume", *common), "was made for the prompt 'a ball'")


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("generate", ""), ("the prompt is empty",)),
        (("generate", "   "), ("the prompt is empty",)),
        (("generate", "a ball", "--iters", "0"), ("--iters must be a positive",)),
        (("generate", "a ball", "--iters", "-5"), ("--iters must be a positive",)),
        (("generate", "a ball", "--prior", "nope"), ("unknown prior 'nope'", "embedded", "analytic")),
        (("generate", "a ball", "--preset", "ultra"), ("unknown preset 'ultra'",)),
        (("generate", "a ball", "--device", "tpu"), ("--device must be auto, cpu or cuda",)),
        (("generate", "a ball", "--guidance-scale", "-3"), ("guidance_scale must be non-negative",)),
    ],
)
def test_bad_arguments(args: tuple[str, ...], fragments: tuple[str, ...], tmp_path: Path) -> None:
    _assert_user_error(_run(*args, "--out", str(tmp_path / "run")), *fragments)
    assert not (tmp_path / "run").exists()


def test_unknown_and_invalid_config_keys(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  iterz: 5\n")
    _assert_user_error(_run("generate", "a ball", "--prior", "analytic", "--config", str(bad), "--out", str(tmp_path / "r")), "unknown config key: trainer.iterz", "known here:", "iters")
    bad.write_text("renderer:\n  num_samples: -1\n")
    _assert_user_error(_run("generate", "a ball", "--prior", "analytic", "--config", str(bad), "--out", str(tmp_path / "r")), "num_samples must be positive")
    bad.write_text("shading: [1, 2\n")
    _assert_user_error(_run("generate", "a ball", "--config", str(bad), "--out", str(tmp_path / "r")), "is not valid YAML")
    _assert_user_error(_run("generate", "a ball", "--config", str(tmp_path / "missing.yaml")), "cannot read config file")


def test_unwritable_output_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    _assert_user_error(_run("generate", "a ball", "--prior", "analytic", "--out", str(blocker / "run")), "cannot write to")
    _assert_user_error(_run("generate", "a ball", "--prior", "analytic", "--out", str(blocker)), "is not a directory")


def test_existing_run_is_never_overwritten_without_asking(tmp_path: Path, tiny_yaml: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"earlier work")
    _assert_user_error(_run("generate", "a ball", "--prior", "analytic", "--out", str(out)), "already holds a run", "--resume", "--overwrite")
    assert (out / "checkpoint.pt").read_bytes() == b"earlier work"
    _assert_user_error(_run("generate", "a ball", "--resume", "--overwrite", "--out", str(out)), "contradict")


def test_corrupt_or_mismatched_checkpoint_on_resume(tmp_path: Path, tiny_yaml: Path) -> None:
    out = tmp_path / "run"
    common = ("--prior", "analytic", "--config", str(tiny_yaml), "--out", str(out), "--device", "cpu")
    assert _run("generate", "a ball", "--iters", "2", *common).exit_code == 0
    good = (out / "checkpoint.pt").read_bytes()
    (out / "checkpoint.pt").write_bytes(good[: len(good) // 2])
    _assert_user_error(_run("generate", "a ball", "--iters", "4", "--resume", *common), "not a readable checkpoint")
    # A checkpoint from another run's config: refused, and the file is left as it was.
    (out / "checkpoint.pt").write_bytes(good)
    config = yaml.safe_load((out / "config.yaml").read_text())
    config["field"]["hidden"] = 8
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    _assert_user_error(_run("generate", "a ball", "--iters", "4", "--resume", *common), "another config")
    assert (out / "checkpoint.pt").read_bytes() == good
    _assert_user_error(_run("generate", "a ball", "--resume", "--out", str(tmp_path / "none")), "nothing to resume")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_requested_without_cuda(tmp_path: Path) -> None:
    _assert_user_error(_run("generate", "a ball", "--prior", "analytic", "--device", "cuda", "--out", str(tmp_path / "r")), "no CUDA device", "--device cpu")
    assert not (tmp_path / "r" / "config.yaml").exists()


def test_render_of_a_directory_that_is_not_a_run(tmp_path: Path) -> None:
    _assert_user_error(_run("render", str(tmp_path)), "is not a dreamfusion run")


def test_help_explains_every_option() -> None:
    result = _run("generate", "--help")
    assert result.exit_code == 0
    for option in ("--prior", "--model", "--iters", "--seed", "--out", "--device", "--config", "--preset", "--resume", "--overwrite"):
        assert option in result.output


def test_out_of_vocabulary_prompt_with_the_embedded_prior(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dreamfusion.run

    def must_not_start(*args: object, **kwargs: object) -> None:
        raise AssertionError("the run started before the prompt was checked")

    monkeypatch.setattr(dreamfusion.run, "generate", must_not_start)
    result = _run("generate", "a purple spaceship", "--out", str(tmp_path / "run"), "--device", "cpu")
    _assert_user_error(result, "does not know the word 'spaceship'", "chair", "red", "--prior sd")
    assert not (tmp_path / "run").exists()


def test_compile_option_turns_on_every_compiled_part(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dreamfusion.run

    seen = []

    def capture(config: object, *args: object, **kwargs: object) -> None:
        seen.append(config)
        raise dreamfusion.run.RunError("captured")

    monkeypatch.setattr(dreamfusion.run, "generate", capture)
    outputs = [_run("generate", "a red chair", "--out", str(tmp_path / "run"), "--device", "cpu", *extra).output
               for extra in ((), ("--compile",))]
    assert "compiling" not in outputs[0] and "compiling with torch.compile" in outputs[1]
    plain, compiled = seen
    assert not (plain.trainer.compile_field or plain.prior.compile_unet or plain.prior.compile_vae or plain.prior.channels_last)
    assert compiled.trainer.compile_field and compiled.prior.compile_unet and compiled.prior.compile_vae
    assert compiled.prior.channels_last and compiled.trainer.iters == plain.trainer.iters


def test_eval_3d_reports_json_for_a_run(tmp_path: Path, tiny_yaml: Path) -> None:
    import json

    out = tmp_path / "run"
    common = ("--prior", "analytic", "--config", str(tiny_yaml), "--out", str(out), "--device", "cpu")
    assert _run("generate", "a red ball", "--iters", "2", *common).exit_code == 0
    result = _run("eval-3d", str(out), "--json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert record["kind"] == "sphere" and record["colour"] == "red"
    assert len(record["views"]) == 32
    assert 0.0 <= record["occupancy_iou"] <= 1.0
    _assert_user_error(_run("eval-3d", str(tmp_path)), "is not a dreamfusion run")


def test_sample_prior_writes_a_grid(tmp_path: Path) -> None:
    from PIL import Image

    out = tmp_path / "grid.png"
    result = _run("sample-prior", "a red chair, side view", "-n", "2", "--steps", "2", "--out", str(out), "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == (128, 64)
    _assert_user_error(_run("sample-prior", "a red chair", "-n", "0", "--out", str(out)), "-n and --steps must be positive")
    _assert_user_error(_run("sample-prior", "a red chair", "--out", str(tmp_path / "grid.jpg")), "must name a .png file")


def test_gpus_relaunches_generate_under_torchrun(tmp_path: Path, tiny_yaml: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "run"
    command = [sys.executable, "-m", "dreamfusion", "generate", "a ball", "--prior", "analytic", "--config", str(tiny_yaml),
               "--iters", "2", "--out", str(out), "--device", "cpu", "--gpus", "2"]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "2 ranks (data parallel)" in (out / "run.log").read_text()
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 2
    _assert_user_error(_run("generate", "a ball", "--gpus", "0", "--out", str(tmp_path / "r")), "--gpus must be a positive")


def test_batch_runs_every_prompt_and_reports_failures(tmp_path: Path, tiny_yaml: Path) -> None:
    import json

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# two prompts\na ball\n\na ball, side view\n")
    result = _run("batch", str(prompts), "--out", str(tmp_path / "out"), "--prior", "analytic", "--config", str(tiny_yaml),
                  "--iters", "2", "--device", "cpu")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [r["ok"] for r in summary["results"]] == [True, True]
    # Run again without --overwrite: each prompt fails on its existing run, and the batch says so.
    result = _run("batch", str(prompts), "--out", str(tmp_path / "out"), "--prior", "analytic", "--config", str(tiny_yaml),
                  "--iters", "2", "--device", "cpu")
    assert result.exit_code == 1
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert all("already holds a run" in r["error"] for r in summary["results"])
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# nothing\n")
    _assert_user_error(_run("batch", str(empty), "--out", str(tmp_path / "o2")), "no prompts")


def test_export_view_and_eval_clip_commands(tmp_path: Path, tiny_yaml: Path) -> None:
    import trimesh

    out = tmp_path / "run"
    common = ("--prior", "analytic", "--config", str(tiny_yaml), "--out", str(out), "--device", "cpu")
    assert _run("generate", "a ball", "--iters", "2", *common).exit_code == 0
    assert (out / "mesh.glb").stat().st_size > 0  # the untrained blob is already a surface
    result = _run("export", str(out), "--format", "ply", "--resolution", "32", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert len(trimesh.load(out / "mesh.ply").faces) > 8
    _assert_user_error(_run("export", str(out), "--format", "stl"), "unknown mesh format 'stl'")
    _assert_user_error(_run("export", str(out), "--resolution", "2"), "mesh resolution must be at least 8")
    _assert_user_error(_run("export", str(tmp_path)), "is not a dreamfusion run")
    _assert_user_error(_run("view", str(tmp_path)), "is not a dreamfusion run")
    _assert_user_error(_run("eval-clip", str(out), "--clip", str(tmp_path / "no-clip")), "huggingface-cli download")
    _assert_user_error(_run("render", str(out), "--panels", "rgb,depth"), "unknown panel 'rgb'")
