"""A generate job end to end: the run directory, the trainer, resume, and the outputs people look at.

A run directory holds:
  config.yaml     the resolved config (never changed after the run starts)
  checkpoint.pt   model, optimizer, random states and step, written atomically
  metrics.jsonl   one line of losses and speed every few steps
  run.log         what happened, in words
  turntable.mp4 / turntable.gif / preview.png
  mesh.glb        a coloured mesh (marching cubes), when the field has a surface
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from dreamfusion.config import RunConfig, dump_config, load_config
from dreamfusion.distributed import (
    DistributedContext, barrier, broadcast_from_main, cleanup, group_exists, init_distributed,
)  # fmt: skip
from dreamfusion.export.video import Scene, TurntableOutputs, write_turntable
from dreamfusion.priors import build_prior
from dreamfusion.field import NeRFField
from dreamfusion.shading import Background
from dreamfusion.trainer import StepMetrics, Trainer, TrainingError, TrainResult, read_checkpoint, resolve_device
from dreamfusion.typed_config import ConfigError

RUN_FILES = (
    "config.yaml", "checkpoint.pt", "metrics.jsonl", "run.log", "turntable.mp4", "turntable.gif", "preview.png",
    "mesh.glb", "eval.json", "eval_clip.json",
)  # fmt: skip


class RunError(RuntimeError):
    """A problem with the run directory or the request; the message is for the user."""


def prompt_slug(prompt: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")
    return slug[:60] or "run"


def validate_prompt(prompt: str) -> str:
    cleaned = " ".join(prompt.split())
    if not cleaned:
        raise RunError("the prompt is empty; describe an object, e.g. dreamfusion generate \"a red chair\"")
    return cleaned


def check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse a run directory that would lose earlier results (nothing is created or changed here)."""
    if resume and overwrite:
        raise RunError("--resume and --overwrite contradict each other; choose one")
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"{run_dir} exists and is not a directory; choose another --out")
    has_files = run_dir.is_dir() and any(run_dir.iterdir())
    if resume:
        if not (run_dir / "checkpoint.pt").is_file():
            raise RunError(f"nothing to resume: {run_dir / 'checkpoint.pt'} does not exist")
    elif has_files and not overwrite:
        raise RunError(f"{run_dir} already holds a run; pass --resume to continue it or --overwrite to replace it")
    blocker = next((parent for parent in (run_dir, *run_dir.parents) if parent.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise RunError(f"cannot write to {run_dir}: {blocker} is a file; choose another --out")


def create_run_dir(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise RunError(f"cannot write to {run_dir}: {error.strerror}; choose another --out") from None


def clear_run_files(run_dir: Path) -> None:
    """Remove the files of an earlier run (for --overwrite), and nothing else."""
    for name in RUN_FILES:
        path = run_dir / name
        if path.is_file():
            path.unlink()
    for leftover in run_dir.glob(".*.tmp*"):
        leftover.unlink()


def log_line(run_dir: Path, message: str) -> None:
    with (run_dir / "run.log").open("a", encoding="utf-8") as handle:
        handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")


def truncate_metrics(path: Path, before_step: int) -> None:
    """Drop metric lines logged after the checkpoint a resumed run restarts from."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines() if line and json.loads(line)["step"] < before_step]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)


@dataclass
class GenerateResult:
    run_dir: Path
    train: TrainResult
    outputs: TurntableOutputs
    device: torch.device


def resume_config(run_dir: Path, prompt: str, iters: int | None) -> RunConfig:
    """On --resume the run's own config.yaml rules; only a new --iters may extend the run."""
    try:
        saved = load_config(run_dir / "config.yaml")
    except ConfigError as error:
        raise RunError(f"cannot resume: {error}") from None
    if prompt and prompt != saved.prompt:
        raise RunError(f"cannot resume: {run_dir} was made for the prompt {saved.prompt!r}, not {prompt!r}")
    if iters is not None:
        saved = replace(saved, trainer=replace(saved.trainer, iters=iters))
    return saved


def generate(
    config: RunConfig,
    run_dir: Path,
    resume: bool = False,
    overwrite: bool = False,
    resume_iters: int | None = None,
    on_step: Callable[[StepMetrics], None] | None = None,
    on_start: Callable[[Trainer], None] | None = None,
    context: DistributedContext | None = None,
) -> GenerateResult:
    """Optimize a NeRF for ``config.prompt`` and write the run directory. Errors are RunError / TrainingError /
    PriorError / ConfigError with a message for the user; earlier results are left intact on any of them.
    With ``resume``, the run's saved config is used (``config`` only supplies the prompt to check) and
    ``resume_iters`` may extend it.

    ``context`` None reads torchrun's variables (``init_distributed``): under torchrun every rank trains its
    own views with DDP-averaged gradients, only the main rank touches ``run_dir`` and runs the callbacks,
    and every rank returns the same result. A process group created here is destroyed here.
    """
    check_run_dir(run_dir, resume, overwrite)  # on every rank, before the main rank writes anything
    if resume:
        config = resume_config(run_dir, config.prompt, resume_iters)
    owns_group = context is None and not group_exists()
    context = init_distributed(config.device) if context is None else context
    try:
        return _generate(config, run_dir, resume, overwrite, on_step, on_start, context)
    finally:
        if owns_group:
            cleanup(context)


def _generate(
    config: RunConfig,
    run_dir: Path,
    resume: bool,
    overwrite: bool,
    on_step: Callable[[StepMetrics], None] | None,
    on_start: Callable[[Trainer], None] | None,
    context: DistributedContext,
) -> GenerateResult:
    device, main = context.device, context.is_main
    # Everything that can fail on bad input happens before the first file is written or removed.
    prior = build_prior(config.prior, device)
    trainer = Trainer(config, prior, device, context)
    barrier(context)
    if main:
        create_run_dir(run_dir)
    if resume:
        trainer.load_checkpoint(run_dir / "checkpoint.pt")  # every rank reads it
        if trainer.step >= config.trainer.iters:
            raise RunError(f"{run_dir} already finished {trainer.step} steps; pass a larger --iters to continue")
        if main:
            truncate_metrics(run_dir / "metrics.jsonl", trainer.step)
            log_line(run_dir, f"resumed at step {trainer.step} of {config.trainer.iters}{_ranks(context)}")
    elif main:
        if overwrite:
            clear_run_files(run_dir)
        write_text_atomic(run_dir / "config.yaml", dump_config(config))
        log_line(
            run_dir,
            f"started {config.prompt!r} with prior {config.prior.name} on {device}, seed {config.seed}{_ranks(context)}",
        )
    if on_start is not None and main:
        on_start(trainer)
    try:
        result = trainer.fit(run_dir, on_step=on_step if main else None)
    except TrainingError as error:
        if main:
            log_line(run_dir, f"error: {error}")
        raise
    outputs = None
    if main:
        log_line(run_dir, f"trained to step {result.steps} in {result.seconds:.1f} s, {result.skipped_steps} steps skipped")
        outputs = write_outputs(trainer, run_dir)
    outputs = broadcast_from_main(context, outputs)  # also keeps the other ranks until the outputs exist
    return GenerateResult(run_dir=run_dir, train=result, outputs=outputs, device=device)


def _ranks(context: DistributedContext) -> str:
    return f", {context.world_size} ranks (data parallel)" if context.distributed else ""


GENERATE_MESH_RESOLUTION = 128
"""Grid of the mesh.glb that generate writes; `dreamfusion export` makes finer ones (256 by default)."""


def write_outputs(trainer: Trainer, run_dir: Path) -> TurntableOutputs:
    """The turntable, preview and mesh.glb of a trained run. A field with no surface yet (too few steps)
    gets no mesh.glb, and run.log says why: never an empty file."""
    from dreamfusion.export.mesh import MeshExportConfig, MeshExportError, extract_mesh, write_mesh

    config = trainer.config
    scene = Scene(trainer.field.eval(), trainer.background.eval(), config.renderer, config.shading)
    outputs = write_turntable(scene, config.turntable, run_dir)
    if outputs.mp4_error:
        log_line(run_dir, f"turntable.mp4 skipped: {outputs.mp4_error}")
    log_line(run_dir, "wrote turntable and preview")
    mesh_config = MeshExportConfig(resolution=GENERATE_MESH_RESOLUTION, auto_samples=config.renderer.num_samples)
    try:
        mesh = extract_mesh(scene.field, mesh_config)
        write_mesh(mesh, run_dir / "mesh.glb")
        log_line(run_dir, f"wrote mesh.glb: {mesh.num_faces} faces at density {mesh.threshold:.1f}")
    except MeshExportError as error:
        log_line(run_dir, f"mesh.glb skipped: {error}")
    return outputs


def load_scene(run_dir: Path, device_name: str = "auto") -> tuple[RunConfig, Scene]:
    """The config and trained field of a run directory, for rendering and export."""
    if not (run_dir / "config.yaml").is_file() or not (run_dir / "checkpoint.pt").is_file():
        raise RunError(f"{run_dir} is not a dreamfusion run (config.yaml and checkpoint.pt expected)")
    try:
        config = load_config(run_dir / "config.yaml")
    except ConfigError as error:
        raise RunError(f"cannot read {run_dir / 'config.yaml'}: {error}") from None
    device = resolve_device(device_name)
    state = read_checkpoint(run_dir / "checkpoint.pt")
    field, background = NeRFField(config.field), Background(config.background)
    try:
        field.load_state_dict(state["field"])
        background.load_state_dict(state["background"])
    except (RuntimeError, KeyError) as error:
        raise RunError(f"{run_dir / 'checkpoint.pt'} does not fit {run_dir / 'config.yaml'} ({str(error).splitlines()[0]})") from None
    return config, Scene(field.to(device).eval(), background.to(device).eval(), config.renderer, config.shading)


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
