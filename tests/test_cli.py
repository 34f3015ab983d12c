"""Every bad input gives exit code 2 and a one-line message naming the problem, never a traceback."""

from pathlib import Path

import pytest
import torch
import yaml
from helpers import TINY_OVERRIDES, run_cli, snapshot, tiny_config_file
from typer.testing import CliRunner

import dreamfusion.distributed
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


@pytest.mark.slow
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
        (("generate", "a ball", "--prior", "analytic", "--model", "w"), ("the analytic prior has no weights",)),
        (("sample-prior", "a ball", "--prior", "analytic", "--model", "w"), ("the analytic prior has no weights",)),
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
    _assert_user_error(_run("generate", "a ball", "--iters", "4", "--resume", "--out", str(out)), "another config", "field.hidden")
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


def _pretend_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """The device every --device resolves to, for the decision whether compiling pays (the run itself is captured)."""
    monkeypatch.setattr(dreamfusion.distributed, "resolve_device", lambda name: torch.device("cuda"))


def test_compile_option_compiles_the_priors_networks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = capture_run_configs(monkeypatch)
    _pretend_cuda(monkeypatch)
    sd = ("--prior", "sd", "--model", str(tmp_path / "sd"))
    outputs = [_run("generate", "a red chair", "--out", str(tmp_path / "run"), *sd, *extra).output for extra in ((), ("--compile",))]
    assert "compiling" not in outputs[0] and "compiling with torch.compile" in outputs[1]
    assert not any("skipped" in output for output in outputs)
    plain, compiled = seen
    assert compiled.prior.compile_unet and compiled.prior.compile_vae and compiled.prior.channels_last
    assert not plain.prior.compile_unet and not compiled.trainer.compile_field  # the field has faster kernels of its own
    assert compiled.trainer == plain.trainer


@pytest.mark.parametrize(("device", "reason"), [
    ("cpu", "compiling makes steps slower on a CPU"),
    ("cuda", "the embedded prior has no network to compile"),
])  # fmt: skip
def test_compile_is_skipped_where_it_cannot_pay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, device: str, reason: str) -> None:
    seen = capture_run_configs(monkeypatch)
    if device == "cuda":
        _pretend_cuda(monkeypatch)
    output = _run("generate", "a red chair", "--out", str(tmp_path / "run"), "--iters", "20000", "--compile").output
    assert "--compile skipped" in output and reason in " ".join(output.split())
    assert "compiling with torch.compile" not in output
    (config,) = seen
    assert not config.trainer.compile_field and config.trainer.iters == 20000


@pytest.mark.slow
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


@pytest.mark.slow
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


# ----- bad input, fuzzed: one line, exit 2, and an existing run left byte for byte ----------------------

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz")
    out = folder / "run"
    result = run_cli("generate", "a ball", "--prior", "analytic", "--config", str(tiny_config_file(folder)),
                     "--iters", "2", "--out", str(out), "--device", "cpu")  # fmt: skip
    assert result.code == 0, result.output
    return out


def _fuzz_files(folder: Path) -> dict[str, Path]:
    files = {"latin1": folder / "latin1.yaml", "dir": folder / "a-folder", "prompts_latin1": folder / "prompts.txt"}
    files["latin1"].write_bytes("prompt: une chaise rouge, très\n".encode("latin-1"))
    files["dir"].mkdir(exist_ok=True)
    files["prompts_latin1"].write_bytes("a red chair\nune chaise tr\xe8s\n".encode("latin-1"))
    for name, text in {
        "nan_lr": "trainer: {lr: .nan}", "inf_lr": "trainer: {lr: .inf}", "neg_inf": "guidance: {guidance_scale: -.inf}",
        "overflow": "trainer: {lr: 1.0e+400}", "big_seed": "seed: 18446744073709551616", "str_seed": "seed: seven",
        "unknown": "trainer: {iterz: 5}", "list": "- 1\n- 2", "huge_res": "camera: {resolution: 100000}",
        "huge_table": "field: {encoding: {log2_table_size: 48}}", "huge_frames": "turntable: {frames: 1000000000}",
        "bad_prior": "prior: {name: dalle}",
    }.items():  # fmt: skip
        files[name] = folder / f"{name}.yaml"
        files[name].write_text(text + "\n")
    return files


def _fuzz_cases(run: Path, files: dict[str, Path], scratch: Path) -> list[tuple[str, ...]]:
    new = ("--out", str(scratch / "new"))
    analytic = ("--prior", "analytic", "--device", "cpu")
    r = str(run)
    cases = [
        ("generate", "", *new), ("generate", "   ", *new), ("generate", *new),
        ("generate", "a ball", "--iters", "0", *new), ("generate", "a ball", "--iters", "-5", *new),
        ("generate", "a ball", "--iters", "1e12", *new), ("generate", "a ball", "--iters", "many", *new),
        ("generate", "a ball", "--seed", "18446744073709551616", *new), ("generate", "a ball", "--seed", "-1", *new),
        ("generate", "a ball", "--prior", "nope", *new), ("generate", "a ball", "--preset", "ultra", *new),
        ("generate", "a ball", "--device", "tpu", *new), ("generate", "a ball", "--guidance-scale", "-3", *new),
        ("generate", "a ball", "--guidance-scale", "nan", *analytic, *new), ("generate", "a ball", "--itters", "3", *new),
        ("generate", "a ball", "--gpus", "0", *new),
        ("generate", "a purple spaceship", *new), ("generate", "a red chair 🪑 ünïcödé", *new),
        ("generate", "a red chair, front view", *new),
        *[("generate", "a ball", *analytic, "--config", str(files[name]), *new) for name in (
            "latin1", "dir", "nan_lr", "inf_lr", "neg_inf", "overflow", "big_seed", "str_seed", "unknown", "list",
            "huge_res", "huge_table", "huge_frames", "bad_prior")],
        ("generate", "a ball", *analytic, "--config", str(scratch / "missing.yaml"), *new),
        ("generate", "a ball", *analytic, "--out", r), ("generate", "a ball", *analytic, "--out", r, "--resume", "--overwrite"),
        ("generate", "a ball", *analytic, "--out", r, "--resume"), ("generate", "a ball", *analytic, "--out", r, "--resume", "--seed", "5"),
        ("generate", "a cube", *analytic, "--out", r, "--resume", "--iters", "9"),
        ("generate", "a ball", *analytic, "--out", str(run / "config.yaml")),
        ("generate", "a ball", *analytic, "--out", str(run / "config.yaml" / "sub")),
        ("render", r, "--resolution", "100000", "--device", "cpu"), ("render", r, "--frames", "1000000000", "--device", "cpu"),
        ("render", r, "--resolution", "0", "--device", "cpu"), ("render", r, "--elevation", "nan", "--device", "cpu"),
        ("render", r, "--panels", "rgb", "--device", "cpu"), ("render", str(scratch), "--device", "cpu"),
        ("export", r, "--resolution", "100000", "--device", "cpu"),
        ("export", r, "--format", "ply", "--out", str(scratch / "m.glb"), "--device", "cpu"),
        ("export", r, "--out", str(scratch / "m.stl"), "--device", "cpu"), ("export", r, "--format", "stl", "--device", "cpu"),
        ("export", r, "--threshold", "nan", "--device", "cpu"), ("export", r, "--resolution", "2", "--device", "cpu"),
        ("export", r, "--decimate", "3", "--device", "cpu"), ("export", str(scratch), "--device", "cpu"),
        ("export", r, "--texture-size", "0", "--device", "cpu"), ("export", r, "--texture-size", "100000", "--device", "cpu"),
        ("export", r, "--out", str(scratch / "no" / "such" / "m.glb"), "--resolution", "16", "--device", "cpu"),
        ("eval-3d", str(scratch)), ("view", str(scratch)),
        ("eval-clip", r, "--clip", str(scratch / "no-clip"), "--resolution", "100000", "--device", "cpu"),
        ("sample-prior", "a red chair", "--seed", "18446744073709551616", "--out", str(scratch / "s.png")),
        ("sample-prior", "a red chair", "-n", "0", "--out", str(scratch / "s.png")),
        ("train-prior", "--out", str(scratch / "prior"), "--minutes", "nan"),
        ("train-prior", "--out", str(scratch / "prior"), "--seed", "-4"),
        ("batch", str(files["prompts_latin1"]), "--out", str(scratch / "b")),
        ("batch", str(scratch / "none.txt"), "--out", str(scratch / "b")),
        ("batch", str(files["prompts_latin1"]), "--out", str(scratch / "b"), "--seed", "18446744073709551616"),
        ("frobnicate",),
    ]
    if not torch.cuda.is_available():
        cases.append(("generate", "a ball", "--prior", "analytic", "--device", "cuda", *new))
    return cases


@pytest.mark.slow
def test_bad_invocations_fail_in_one_line_and_leave_the_run_as_it_was(finished_run: Path, tmp_path: Path) -> None:
    files = _fuzz_files(tmp_path)
    cases = _fuzz_cases(finished_run, files, tmp_path)
    assert len(cases) >= 40
    before = snapshot(finished_run)
    failures = []
    for args in cases:
        result = run_cli(*args)
        ok = result.code == 2 and "Traceback" not in result.output and len(result.lines) == 1
        if not ok:
            failures.append(f"{args}: exit {result.code}, output {result.output!r}")
        assert snapshot(finished_run) == before, args
    assert not failures, "\n".join(failures)
    assert not (tmp_path / "new").exists() and not (tmp_path / "b").exists()


MESSAGES = [
    # (arguments, with RUN for the finished run, NEW for a fresh --out and FILE:name for a fuzz file), fragment
    (("generate", "a ball", "--iters", "1e12", "NEW"), "Invalid value for '--iters': Input should be a valid integer, unable to parse string as an integer (got '1e12')"),
    (("generate", "a ball", "--seed", "18446744073709551616", "NEW"), "--seed must be an integer from 0 to 9223372036854775807"),
    (("generate", "a red chair 🪑 ünïcödé", "NEW"), "does not know the word '🪑'"),
    (("generate", "a ball", "--prior", "analytic", "--config", "FILE:latin1", "NEW"), "is not UTF-8 text"),
    (("generate", "a ball", "--prior", "analytic", "--config", "FILE:nan_lr", "NEW"), "trainer.lr: expected a finite number, got nan"),
    (("generate", "a ball", "--prior", "analytic", "--device", "cpu", "--config", "FILE:huge_res", "NEW"),
     "camera.resolution 100000 needs at least"),
    (("render", "RUN", "--resolution", "100000", "--device", "cpu"), "--resolution 100000 needs at least"),
    (("export", "RUN", "--resolution", "100000", "--device", "cpu"), "--resolution 100000 needs at least"),
    (("export", "RUN", "--format", "ply", "--out", "m.glb"), "--format ply contradicts --out"),
    (("generate", "a ball", "--prior", "analytic", "--device", "cpu", "--out", "RUN", "--resume", "--seed", "5"),
     "cannot resume with other settings (seed)"),
]


@pytest.mark.parametrize(("args", "fragment"), MESSAGES)
def test_bad_input_messages_name_the_problem_and_the_limit(
    args: tuple[str, ...], fragment: str, finished_run: Path, tmp_path: Path
) -> None:
    files = _fuzz_files(tmp_path)

    def resolve(arg: str) -> list[str]:
        if arg == "RUN":
            return [str(finished_run)]
        if arg == "NEW":
            return ["--out", str(tmp_path / "new")]
        if arg.startswith("FILE:"):
            return [str(files[arg[5:]])]
        return [str(tmp_path / arg)] if arg == "m.glb" else [arg]

    result = run_cli(*[part for arg in args for part in resolve(arg)])
    assert result.code == 2, result.output
    assert fragment in " ".join(result.output.split()), result.output
    if "needs at least" in fragment:
        assert "fits" in result.output  # the message states the limit


# ----- precedence: preset < config file < flags the user typed ---------------------------------------

FLAG_KEYS = [
    # flag, its value, the config key it sets, a different value for the file
    ("--prior", "analytic", ("prior", "name"), "embedded"),
    ("--model", "weights-b", ("prior", "model"), "weights-a"),
    ("--iters", "7", ("trainer", "iters"), 50),
    ("--seed", "3", ("seed",), 7),
    ("--device", "cpu", ("device",), "auto"),
    ("--guidance-scale", "12.5", ("guidance", "guidance_scale"), 40.0),
]


def _nested(keys: tuple[str, ...], value: object) -> dict:
    return {keys[0]: value} if len(keys) == 1 else {keys[0]: _nested(keys[1:], value)}


def _get(config: object, keys: tuple[str, ...]) -> object:
    for key in keys:
        config = getattr(config, key)
    return config


@pytest.mark.parametrize("command", ["generate", "batch"])
@pytest.mark.parametrize(("flag", "flag_value", "keys", "file_value"), FLAG_KEYS)
def test_config_file_values_stand_unless_a_flag_is_typed(
    command: str, flag: str, flag_value: str, keys: tuple[str, ...], file_value: object, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    import dreamfusion.batch
    import dreamfusion.run

    if command == "batch" and flag == "--guidance-scale":
        pytest.skip("batch has no --guidance-scale flag")
    seen = capture_run_configs(monkeypatch)
    monkeypatch.setattr(dreamfusion.batch, "run_batch_from_env", lambda prompts, out, base, **kw: dreamfusion.run.generate(base))
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(_nested(keys, file_value)))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red ball\n")
    head = ("generate", "a red ball") if command == "generate" else ("batch", str(prompts))
    base = (*head, "--out", str(tmp_path / "out"), "--prior", "analytic", "--preset", "preview")
    if flag == "--prior":
        base = (*head, "--out", str(tmp_path / "out"), "--preset", "preview")
    if flag == "--model":  # the analytic prior has no weights to name
        base = (*head, "--out", str(tmp_path / "out"), "--prior", "embedded", "--preset", "preview")
    for extra in ((), ("--config", str(config)), ("--config", str(config), flag, flag_value)):
        assert run_cli(*base, *extra).code == 2
    preset_only, from_file, from_flag = seen
    expected_flag = type(file_value)(flag_value) if not isinstance(file_value, str) else flag_value
    assert _get(from_file, keys) == file_value, "the config file's value was overridden by a flag's default"
    assert _get(from_flag, keys) == expected_flag
    if keys == ("trainer", "iters"):
        assert _get(preset_only, keys) == 700  # the preview preset's, below the file's


def test_compile_flag_adds_to_the_config_files_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = capture_run_configs(monkeypatch)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"seed": 9, "prior": {"name": "sd", "model": str(tmp_path / "sd"), "cuda_graph": False}}))
    _pretend_cuda(monkeypatch)
    assert run_cli("generate", "a ball", "--config", str(config), "--compile", "--out", str(tmp_path / "o")).code == 2
    (compiled,) = seen
    assert compiled.prior.compile_unet and compiled.prior.channels_last and not compiled.trainer.compile_field
    assert compiled.seed == 9 and compiled.prior.name == "sd" and compiled.prior.cuda_graph is False


def capture_run_configs(monkeypatch: pytest.MonkeyPatch) -> list:
    """The configs that generate (the run function) is called with, in place of running them."""
    import dreamfusion.run

    seen: list = []

    def capture(config: object, *args: object, **kwargs: object) -> None:
        seen.append(config)
        raise dreamfusion.run.RunError("captured")

    monkeypatch.setattr(dreamfusion.run, "generate", capture)
    return seen


@pytest.mark.slow
def test_export_writes_textured_meshes_and_eval_3d_scores_them(tmp_path: Path, finished_run: Path) -> None:
    import json

    import trimesh

    from dreamfusion.export.mesh import read_mesh

    generated = read_mesh(finished_run / "mesh.glb")  # what generate wrote: UV-textured
    assert generated.textured and generated.texture.shape == (64, 64, 3)  # the run config's mesh.texture_size
    obj = tmp_path / "chair.obj"
    result = run_cli("export", str(finished_run), "--out", str(obj), "--resolution", "32", "--texture-size", "64", "--device", "cpu")
    assert result.code == 0, result.output
    assert {p.name for p in tmp_path.glob("chair.*")} == {"chair.obj", "chair.mtl", "chair.png"}
    assert trimesh.load(obj, force="mesh").visual.kind == "texture"
    plain = tmp_path / "plain.glb"
    result = run_cli("export", str(finished_run), "--out", str(plain), "--resolution", "32", "--vertex-colors", "--device", "cpu")
    assert result.code == 0 and read_mesh(plain).texture is None
    record = json.loads(run_cli("eval-3d", str(finished_run), "--json", "--device", "cpu").stdout)
    mesh = record["mesh"]
    assert mesh["textured"] and 0.0 <= mesh["silhouette_iou"] <= 1.0 and 0.0 <= mesh["colour_difference"] <= 1.0
    assert mesh["occupancy_iou"] is not None  # "a ball": the embedded vocabulary's sphere


@pytest.mark.slow
def test_eval_3d_of_a_prompt_outside_the_vocabulary_scores_the_mesh_only(tmp_path: Path) -> None:
    import json

    out = tmp_path / "run"
    result = run_cli("generate", "a shiny kettle", "--prior", "analytic", "--config", str(tiny_config_file(tmp_path)),
                     "--iters", "2", "--out", str(out), "--device", "cpu")  # fmt: skip
    assert result.code == 0, result.output
    summary = run_cli("eval-3d", str(out), "--device", "cpu")
    assert summary.code == 0 and "outline IoU" in summary.output and "against the true object" not in summary.output
    record = json.loads(run_cli("eval-3d", str(out), "--json", "--device", "cpu").stdout)
    assert record["occupancy_iou"] is None and 0 <= record["silhouette_iou"] <= 1
    (out / "mesh.glb").unlink()
    missing = run_cli("eval-3d", str(out), "--device", "cpu")
    assert missing.code == 2 and "only its mesh can be scored" in missing.output
