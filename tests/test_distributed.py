"""Data-parallel SDS and batch mode on CPU: gloo, 2 processes started with torchrun's variables set by hand."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml
from helpers import TINY_OVERRIDES, assert_close_scaled, tiny_config

from dreamfusion import batch
from dreamfusion.batch import read_prompts, run_batch, shard
from dreamfusion.cameras import CameraBatch, sample_cameras
from dreamfusion.distributed import (
    DistributedContext,
    cleanup,
    init_distributed,
    is_main_process,
    launch_torchrun,
    rank_seed,
    strip_option,
    torchrun_command,
)  # fmt: skip
from dreamfusion.priors.analytic import AnalyticPrior, AnalyticPriorConfig
from dreamfusion.run import RunError, generate
from dreamfusion.trainer import CompiledField, Trainer, read_checkpoint
from dreamfusion.typed_config import ConfigError

WORLD = 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _spawn(task: str, tmp_path: Path) -> None:
    mp.spawn(_worker, args=(task, str(tmp_path), _free_port()), nprocs=WORLD, join=True)


def _worker(rank: int, task: str, tmp: str, port: int) -> None:
    """One rank: set what torchrun would set, join the gloo group, run ``task``."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    context = init_distributed("cpu")
    try:
        TASKS[task](context, Path(tmp))
    finally:
        cleanup(context)


# ----- one data-parallel step == one step of batch 2 in one process ------------------------------------


def _step_config(compile_field: bool = False):
    """Everything but the cameras and jitter made deterministic: no random backgrounds, a fixed timestep, and
    lambertian shading (normals and the orientation loss inside DDP's forward)."""
    return tiny_config(
        background={"kind": "mlp", "random_solid_probability": 0.0},
        guidance={"guidance_scale": 1.0, "timesteps": {"start": [0.5, 0.5]}},
        shading={"albedo_warmup_steps": 0, "shaded_probability": 1.0, "textureless_probability": 0.0},
        trainer={"lambda_orient": {"start": 0.1, "end": 0.1}, "compile_field": compile_field},
    )


def _step_prior() -> AnalyticPrior:
    # With a tiny spread the prior's noise prediction cancels the SDS noise: eps_hat - eps no longer depends
    # on eps (to 1e-9), so ranks and the single process may draw different noise.
    return AnalyticPrior(AnalyticPriorConfig(resolution=16, std=1e-4))


def _two_cameras(config) -> CameraBatch:
    return sample_cameras(config.camera, 2, torch.Generator().manual_seed(123))


def _camera(cameras: CameraBatch, i: int) -> CameraBatch:
    return cameras.subset(slice(i, i + 1))


def _jitter_after_first_view(config) -> torch.Tensor:
    """Rank 1's jitter generator: where the single process's stands after rank 0's view (CPU draws are
    sequential), so together the ranks draw exactly the single process's jitter of the two views."""
    generator = torch.Generator().manual_seed(config.seed + 1)
    torch.rand(config.camera.resolution**2 * config.renderer.num_samples, generator=generator)
    return generator.get_state()


def _grads_and_params(trainer: Trainer) -> dict[str, list[torch.Tensor]]:
    params = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    return {"grads": [p.grad.clone() for p in params], "params": [p.detach().clone() for p in params]}


def _task_step(context: DistributedContext, tmp: Path, compile_field: bool = False) -> None:
    config = _step_config(compile_field)
    CompiledField.backend = "aot_eager"  # what torch.compile traces, without minutes of CPU code generation
    trainer = Trainer(config, _step_prior(), context.device, context)
    if context.rank == 1:
        trainer.rng.device.set_state(_jitter_after_first_view(config))
    metrics = trainer.train_step(cameras=_camera(_two_cameras(config), context.rank))
    torch.save({**_grads_and_params(trainer), "loss": metrics.loss}, tmp / f"step.rank{context.rank}.pt")


@pytest.mark.slow
@pytest.mark.parametrize("task", ["step", "step_compiled"])
def test_one_data_parallel_step_equals_one_step_of_batch_two(task: str, tmp_path: Path) -> None:
    config = _step_config()
    cpu = torch.device("cpu")
    generator = torch.Generator().manual_seed(config.seed + 1)
    rays = config.camera.resolution**2 * config.renderer.num_samples
    assert torch.equal(torch.rand(2 * rays, generator=torch.Generator().manual_seed(config.seed + 1)),
                       torch.cat((torch.rand(rays, generator=generator), torch.rand(rays, generator=generator))))  # fmt: skip

    _spawn(task, tmp_path)  # the ranks' field eager or compiled; the single process's eager
    single = Trainer(replace(config, trainer=replace(config.trainer, batch_size=2)), _step_prior(), cpu)
    before = [p.detach().clone() for group in single.optimizer.param_groups for p in group["params"]]
    metrics = single.train_step(cameras=_two_cameras(config))
    expected = _grads_and_params(single)
    ranks = [torch.load(tmp_path / f"step.rank{r}.pt", weights_only=True) for r in range(WORLD)]

    assert ranks[0]["loss"] == pytest.approx(metrics.loss, rel=1e-5)  # logged loss: the mean over ranks
    # The ranks and the single process sum the same float32 terms in other orders: each tolerance is scaled
    # to the largest magnitude compared, never absolute near zero.
    for rank in ranks:
        for got, want in zip(rank["grads"], expected["grads"], strict=True):
            assert_close_scaled(got, want, rel=1e-5)
        for got, want, start, grad in zip(rank["params"], expected["params"], before, expected["grads"], strict=True):
            assert not torch.equal(got, start)
            # Adam's first step is about lr * sign(gradient): compare it where that sign is beyond rounding.
            firm = grad.abs() > 1e-3 * grad.abs().max()
            assert_close_scaled((got - start)[firm], (want - start)[firm], rel=1e-4)
    for a, b in zip(ranks[0]["params"], ranks[1]["params"], strict=True):
        assert torch.equal(a, b)  # the ranks never part


# ----- generate: only rank 0 writes; resume restores every rank's random streams -----------------------


def _record_writes_under(root: Path, log: list[str]) -> None:
    """Audit every file write, rename, removal, mkdir and subprocess of this process that touches ``root``."""
    prefix = str(root)
    watched = {"open", "os.rename", "os.remove", "os.mkdir", "os.rmdir", "shutil.rmtree", "subprocess.Popen"}
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND

    def hook(event: str, args: tuple) -> None:
        if event not in watched or not any(prefix in str(a) for a in args):
            return
        if event == "open":
            mode, flags = args[1], args[2]
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (isinstance(flags, int) and flags & write_flags)
            if not writes:
                return
        log.append(f"{event} {args[0]}")

    sys.addaudithook(hook)


def _task_generate(context: DistributedContext, tmp: Path) -> None:
    runs, writes = tmp / "runs", []
    _record_writes_under(runs, writes)
    config = tiny_config(trainer={"iters": 4, "checkpoint_every": 2})  # random solid background: DDP finds unused
    result = generate(config, runs / "straight", context=context)
    assert "preview.png" in result.written  # the main rank's outputs, on every rank
    generate(replace(config, trainer=replace(config.trainer, iters=2)), runs / "resumed", context=context)
    generate(config, runs / "resumed", resume=True, resume_iters=4, context=context)
    (tmp / f"writes.rank{context.rank}.json").write_text(json.dumps(writes))


@pytest.mark.slow
def test_two_process_generate_writes_only_from_rank_zero_and_resumes_exactly(tmp_path: Path) -> None:
    _spawn("generate", tmp_path)
    writes = [json.loads((tmp_path / f"writes.rank{r}.json").read_text()) for r in range(WORLD)]
    assert writes[0] and writes[1] == []
    straight, resumed = (tmp_path / "runs" / name for name in ("straight", "resumed"))
    for name in ("config.yaml", "checkpoint.pt", "metrics.jsonl", "run.log", "turntable.gif", "preview.png"):
        assert (straight / name).is_file(), name
    assert "2 ranks (data parallel)" in (straight / "run.log").read_text()
    a, b = read_checkpoint(straight / "checkpoint.pt"), read_checkpoint(resumed / "checkpoint.pt")
    assert a["step"] == b["step"] == 4 and len(a["rng_ranks"]) == WORLD
    for name, tensor in a["field"].items():
        assert torch.equal(tensor, b["field"][name]), name
    for rank_a, rank_b in zip(a["rng_ranks"], b["rng_ranks"], strict=True):
        assert all(torch.equal(rank_a[k], rank_b[k]) for k in ("host", "device"))
    assert not torch.equal(a["rng_ranks"][0]["host"], a["rng_ranks"][1]["host"])  # the ranks' own streams
    steps = [json.loads(line)["step"] for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # no line written twice on resume
    # One process can continue a data-parallel run (rank 0's streams).
    config = tiny_config(trainer={"iters": 6, "checkpoint_every": 2})
    single = Trainer(config, AnalyticPrior(AnalyticPriorConfig()), torch.device("cpu"))
    single.load_checkpoint(straight / "checkpoint.pt")
    assert torch.equal(single.rng.host.get_state(), a["rng"]["host"])


# ----- batch mode -------------------------------------------------------------------------------------

PROMPTS = "# three prompts, the first not in the embedded prior's vocabulary\na purple banana\n\na red chair\na blue mug\n"


def _task_batch(context: DistributedContext, tmp: Path) -> None:
    base = tiny_config(prior={"name": "embedded"}, trainer={"iters": 2})
    summary = run_batch(tmp / "prompts.txt", tmp / "out", base, context.rank, context.world_size, context.device)
    assert len(summary.results) == (3 if context.is_main else 1)


@pytest.mark.slow
def test_two_process_batch_finishes_every_prompt_and_reports_the_failure(tmp_path: Path) -> None:
    (tmp_path / "prompts.txt").write_text(PROMPTS)
    _spawn("batch", tmp_path)
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    results = summary["results"]
    assert [r["index"] for r in results] == [0, 1, 2] and [r["rank"] for r in results] == [0, 1, 0]
    assert [r["ok"] for r in results] == [False, True, True]
    assert results[0]["error_type"] == "PriorError" and "banana" in results[0]["error"]
    for r in results[1:]:
        assert (Path(r["run_dir"]) / "preview.png").is_file() and r["steps"] == 2
    assert Path(results[1]["run_dir"]).name == "001-a-red-chair"
    assert {p.name for p in out.glob("summary.rank*.json")} == {"summary.rank0.json", "summary.rank1.json"}


# ----- one process --------------------------------------------------------------------------------------


@pytest.mark.parametrize("count", range(8))
@pytest.mark.parametrize("world_size", [1, 2, 3, 5])
def test_shard_gives_every_prompt_to_exactly_one_rank(count: int, world_size: int) -> None:
    prompts = [f"p{i}" for i in range(count)]
    shares = [shard(prompts, rank, world_size) for rank in range(world_size)]
    indices = sorted(i for share in shares for i, _ in share)
    assert indices == list(range(count))
    assert all(prompts[i] == p for share in shares for i, p in share)
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_read_prompts_skips_blanks_and_comments(tmp_path: Path) -> None:
    path = tmp_path / "prompts.txt"
    path.write_text(PROMPTS)
    assert read_prompts(path) == ["a purple banana", "a red chair", "a blue mug"]
    path.write_text("\n  # nothing\n\n")
    with pytest.raises(RunError, match="holds no prompts"):
        read_prompts(path)
    with pytest.raises(RunError, match="cannot read"):
        read_prompts(tmp_path / "missing.txt")


def test_an_unexpected_exception_is_recorded_and_the_batch_goes_on(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "prompts.txt").write_text("a ball\na cube\n")
    real = batch.generate

    def flaky(config, run_dir, **kwargs):
        if config.prompt == "a ball":
            raise ZeroDivisionError("boom")
        return real(config, run_dir, **kwargs)

    monkeypatch.setattr(batch, "generate", flaky)
    summary = run_batch(tmp_path / "prompts.txt", tmp_path / "out", tiny_config(trainer={"iters": 1}))
    assert [r.ok for r in summary.results] == [False, True]
    assert summary.failed[0].error_type == "ZeroDivisionError" and "boom" in summary.failed[0].traceback
    assert "failed 0 'a ball': ZeroDivisionError: boom" in summary.report()
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["results"][1]["ok"]


def test_rank_seeds_and_contexts(monkeypatch) -> None:
    assert rank_seed(7, 0) == 7 and rank_seed(7, 1) == 1007
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    context = init_distributed("cpu")
    assert (context.rank, context.world_size, context.is_main, context.distributed) == (0, 1, True, False)
    assert not DistributedContext(rank=1, world_size=2).is_main
    assert is_main_process()
    monkeypatch.setenv("RANK", "1")
    assert not is_main_process()


def test_launch_torchrun_reruns_the_command_without_gpus(monkeypatch) -> None:
    argv = ["generate", "a red chair", "--gpus", "2", "--iters=5", "--gpus=2"]
    assert strip_option(argv, "--gpus") == ["generate", "a red chair", "--iters=5"]
    assert strip_option(["batch", "--", "--gpus", "2"], "--gpus") == ["batch", "--", "--gpus", "2"]
    command = torchrun_command(argv, 2)
    assert command[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"]
    assert command[6:] == ["dreamfusion", "generate", "a red chair", "--iters=5"]

    calls = []

    class FakePopen:
        def __init__(self, args):
            calls.append(args)

        def wait(self):
            return 3

    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert launch_torchrun(argv, 2) == 3 and calls == [command]
    with pytest.raises(ConfigError, match="at least 1"):
        launch_torchrun(argv, 0)


@pytest.mark.slow
def test_torchrun_generate_end_to_end(tmp_path: Path) -> None:
    """The real launcher: torchrun starts 2 CPU ranks of the unchanged CLI."""
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({k: v for k, v in TINY_OVERRIDES.items() if k not in ("device", "prior")}))
    out = tmp_path / "run"
    code = launch_torchrun(
        ["generate", "a ball", "--prior", "analytic", "--config", str(config), "--iters", "2", "--out", str(out),
         "--device", "cpu", "--gpus", "2"], 2,
    )  # fmt: skip
    assert code == 0
    assert read_checkpoint(out / "checkpoint.pt")["step"] == 2 and (out / "preview.png").is_file()
    assert "2 ranks" in (out / "run.log").read_text()


TASKS = {
    "step": _task_step,
    "step_compiled": lambda context, tmp: _task_step(context, tmp, compile_field=True),
    "generate": _task_generate,
    "batch": _task_batch,
}
