"""A generate job end to end: the run directory, the trainer, resume, and the outputs people look at.

A run directory holds:
  config.yaml     the resolved config (never changed after the run starts; --resume --iters N updates iters)
  checkpoint.pt   model, optimizer, random states and step, written atomically
  metrics.jsonl   one line of losses and speed every few steps
  run.log         what happened, in words
  turntable.mp4 / turntable.gif / preview.png
  mesh.glb        a coloured mesh (marching cubes), when the field has a surface
  .lock           the writer lock (see ``runlock``): one process writes a run at a time

How runs are protected: the writer holds the lock for its whole life (a second writer is refused, a killed
one leaves no stale lock); every file is replaced atomically and durably (``files.write_atomic``) and logs
grow a whole line at a time, so a kill or a power cut leaves the last complete version of each file;
``--resume`` continues exactly from the last checkpoint (a torn last log line is dropped) and, on a run
that finished training, writes the outputs a late kill left missing.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from dreamfusion.collapse import CollapseWatch, RunCollapsed, attempt_seed
from dreamfusion.config import RunConfig, dump_config, load_config, with_defaults
from dreamfusion.distributed import (
    DistributedContext,
    barrier,
    broadcast_from_main,
    cleanup,
    group_exists,
    init_distributed,
    resolve_device,
)  # fmt: skip
from dreamfusion.errors import RunError, TrainingError
from dreamfusion.export.mesh import (
    GRID_BYTES_PER_SAMPLE,
    MeshExportConfig,
    MeshExportError,
    MeshFormat,
    extract_mesh,
    mesh_format,
    write_mesh,
)  # fmt: skip
from dreamfusion.export.video import DEFAULT_PANELS, check_turntable_size, mp4_available, write_turntable
from dreamfusion.field import NeRFField
from dreamfusion.files import TEMPORARY_GLOB, append_line, end_with_newline, read_jsonl, write_text_atomic
from dreamfusion.memory import check_size
from dreamfusion.priors import PriorConfig, build_prior, check_prompt
from dreamfusion.refine import refine_field
from dreamfusion.runlock import LOCK_NAME, RunLock, describe_holder, is_locked, lock_run
from dreamfusion.scene import Scene
from dreamfusion.shading import Background
from dreamfusion.trainer import StepMetrics, Trainer, TrainResult, check_training_fits, read_checkpoint
from dreamfusion.typed_config import ConfigError, differing_keys, merge, to_dict

RUN_FILES = (
    "config.yaml", "checkpoint.pt", "metrics.jsonl", "run.log", "turntable.mp4", "turntable.gif", "preview.png",
    "mesh.glb", "eval.json", "eval_clip.json",
)  # fmt: skip
RESUMABLE_CHANGES = ("trainer.iters",)
"""The only config key a resumed run may change (to extend it)."""
EMPTY_OPACITY = 1e-3
"""Mean render opacity below which a step's view shows nothing: run.log notes when the field empties."""
EMPTY_READINGS = 3
"""Logged steps in a row that must show nothing before the field counts as empty. One is not enough: a random
camera whose look-at point is jittered away from a thin object (a lamp, a rocket) can miss it entirely."""

__all__ = [
    "GenerateResult", "RunError", "check_run_dir", "export_run", "generate", "load_scene", "prompt_slug", "validate_prompt",
]  # fmt: skip


def prompt_slug(prompt: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")
    return slug[:60] or "run"


def validate_prompt(prompt: str, prior: PriorConfig) -> str:
    """The prompt with its white space collapsed, once it is known that ``prior`` can read it: the one check
    of a prompt, made before anything loads."""
    cleaned = " ".join(prompt.split())
    if not cleaned:
        raise RunError("the prompt is empty; describe an object, e.g. dreamfusion generate \"a red chair\"")
    check_prompt(prior, cleaned)
    return cleaned


def _has_run_files(run_dir: Path) -> bool:
    return run_dir.is_dir() and any(path.name != LOCK_NAME for path in run_dir.iterdir())


def check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse a run directory that would lose earlier results (nothing is created or changed here)."""
    if resume and overwrite:
        raise RunError("--resume and --overwrite contradict each other; choose one")
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"{run_dir} exists and is not a directory; choose another --out")
    if resume:
        if not (run_dir / "checkpoint.pt").is_file():
            raise RunError(f"nothing to resume: {run_dir / 'checkpoint.pt'} does not exist")
    elif _has_run_files(run_dir) and not overwrite:
        raise RunError(f"{run_dir} already holds a run; pass --resume to continue it or --overwrite to replace it")
    blocker = next((parent for parent in (run_dir, *run_dir.parents) if parent.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise RunError(f"cannot write to {run_dir}: {blocker} is a file; choose another --out")


@contextlib.contextmanager
def claim_run_dir(run_dir: Path, context: DistributedContext, check: Callable[[], None]) -> Iterator[None]:
    """Create ``run_dir`` if needed and hold its writer lock for the block (main rank; the other ranks learn
    of a refusal), then ``check`` it again now that no other process can change it. If the block fails and
    this call created the directory, nothing of it is left behind."""
    lock, created, problem = None, [], None
    if context.is_main:
        try:
            created = [folder for folder in (run_dir, *run_dir.parents) if not folder.exists()]  # innermost first
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise RunError(f"cannot write to {run_dir}: {error.strerror}; choose another --out") from None
            lock = lock_run(run_dir)
            check()
        except RunError as error:
            problem = str(error)
            if lock is not None:
                _release(lock, run_dir, created)
            lock = None
    problem = broadcast_from_main(context, problem)
    if problem is not None:
        raise RunError(problem)
    failed = True
    try:
        yield
        failed = False
    finally:
        if lock is not None:
            _release(lock, run_dir, created if failed and not _has_run_files(run_dir) else [])


def _release(lock: RunLock, run_dir: Path, remove: list[Path]) -> None:
    """Release the lock; ``remove``: the folders this process created, to take away again (a failed start)."""
    if remove:
        (run_dir / LOCK_NAME).unlink(missing_ok=True)
    lock.release()
    for folder in remove:
        with contextlib.suppress(OSError):
            folder.rmdir()


def clear_run_files(run_dir: Path) -> None:
    """Remove the files of an earlier run (for --overwrite), and nothing else."""
    for name in RUN_FILES:
        path = run_dir / name
        if path.is_file():
            path.unlink()
    for leftover in run_dir.glob(TEMPORARY_GLOB):
        leftover.unlink()


def log_line(run_dir: Path, message: str) -> None:
    append_line(run_dir / "run.log", f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}")


def truncate_metrics(path: Path, before_step: int) -> int:
    """Drop metric lines logged after the checkpoint a resumed run restarts from, and lines that cannot be
    read (a last line torn by a kill or power loss). Returns how many unreadable lines were dropped."""
    if not path.is_file():
        return 0
    read = read_jsonl(path)
    kept = [record for record in read.records if int(record.get("step", before_step)) < before_step]
    write_text_atomic(path, "".join(json_line(record) for record in kept))
    return read.dropped


def json_line(record: dict[str, Any]) -> str:
    return json.dumps(record) + "\n"


@dataclass
class GenerateResult:
    run_dir: Path
    train: TrainResult
    device: torch.device
    written: list[str] = field(default_factory=list)
    """The output files written (turntable.gif, preview.png, mesh.glb, ...)."""
    notes: list[str] = field(default_factory=list)
    """What was skipped and why, for the user (also in run.log)."""
    rebuilt: bool = False
    """The run had finished training: only its missing outputs were written."""


def resume_config(run_dir: Path, prompt: str, iters: int | None, requested: dict[str, Any] | None = None) -> RunConfig:
    """On --resume the run's own config.yaml rules: a new --iters may extend the run, and anything else the
    user asked for explicitly (``requested``: a config file's keys and typed flags) must agree with it."""
    try:
        saved = load_config(run_dir / "config.yaml")
    except ConfigError as error:
        raise RunError(f"cannot resume: {error}") from None
    if prompt and prompt != saved.prompt:
        raise RunError(f"cannot resume: {run_dir} was made for the prompt {saved.prompt!r}, not {prompt!r}")
    if requested:
        try:
            asked = merge(saved, requested)
        except ConfigError as error:
            raise RunError(f"cannot resume: {error}") from None
        changed = differing_keys(to_dict(saved), to_dict(asked), ignore=RESUMABLE_CHANGES)
        if changed:
            raise RunError(
                f"cannot resume with other settings ({', '.join(changed)}): a resumed run keeps its own "
                f"config.yaml; only --iters may change. Start a new run with --overwrite or another --out"
            )
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
    requested: dict[str, Any] | None = None,
) -> GenerateResult:
    """Optimize a NeRF for ``config.prompt`` and write the run directory, holding its writer lock throughout.
    Errors are DreamfusionErrors with a message for the user; earlier results are left intact on any of them.
    With ``resume``, the run's saved config is used (``config`` only supplies the prompt to check,
    ``requested`` what the user asked for explicitly, which must agree) and ``resume_iters`` may extend it.

    ``context`` None reads torchrun's variables (``init_distributed``): under torchrun every rank trains its
    own views with DDP-averaged gradients, only the main rank touches ``run_dir`` and runs the callbacks,
    and every rank returns the same result. A process group created here is destroyed here.
    """
    check_run_dir(run_dir, resume, overwrite)  # on every rank, before the main rank creates anything
    owns_group = context is None and not group_exists()
    context = init_distributed(config.device) if context is None else context
    try:
        with claim_run_dir(run_dir, context, lambda: check_run_dir(run_dir, resume, overwrite)):
            if resume:
                config = resume_config(run_dir, config.prompt, resume_iters, requested)
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
    check_training_fits(config, device)
    check_turntable_size(config.turntable, DEFAULT_PANELS, ("turntable.resolution", "turntable.frames"))
    prior = build_prior(config.prior, device)
    trainer = Trainer(config, prior, device, context)
    barrier(context)
    if resume:
        trainer.load_checkpoint(run_dir / "checkpoint.pt")  # every rank reads it
        if trainer.step >= config.total_steps:
            return _finish_outputs(trainer, run_dir, context)
        if main:
            _repair_logs(run_dir, trainer.step)
            write_text_atomic(run_dir / "config.yaml", dump_config(config))  # a new --iters
            log_line(run_dir, f"resumed at step {trainer.step} of {config.total_steps}{_ranks(context)}")
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
    watch = EmptyFieldWatch(run_dir) if main else None
    collapses = CollapseWatch(config.collapse, config.trainer.iters)
    restarts: list[str] = []

    def step_done(metrics: StepMetrics) -> None:
        if metrics.step % config.trainer.log_every == 0 and not metrics.skipped:
            if watch is not None:
                watch.see(metrics)
            collapse = collapses.see(metrics.step, metrics.opacity)
            if collapse is not None and trainer.attempt < config.collapse.restarts:
                raise RunCollapsed(collapse)  # every rank sees the same opacity: all of them stop here
        if on_step is not None and main:
            on_step(metrics)

    while True:
        try:
            result = trainer.fit(run_dir, on_step=step_done)
            break
        except RunCollapsed as stop:
            attempt = trainer.attempt + 1
            note = (f"{stop.collapse.describe()}; started over on seed {attempt_seed(config.seed, attempt)} "
                    f"(restart {attempt} of at most {config.collapse.restarts})")  # fmt: skip
            restarts.append(note)
            if main:
                log_line(run_dir, note)
                _discard_attempt(run_dir)
            trainer = Trainer(config, prior, device, context, attempt=attempt)
            collapses = CollapseWatch(config.collapse, config.trainer.iters)
            barrier(context)
        except TrainingError as error:
            if main:
                log_line(run_dir, f"error: {error}")
            raise
    outputs = None
    if main:
        log_line(run_dir, f"trained to step {result.steps} in {result.seconds:.1f} s, {result.skipped_steps} steps skipped")
        outputs = write_outputs(trainer, run_dir)
    written, notes = broadcast_from_main(context, outputs)  # also keeps the other ranks until the outputs exist
    return GenerateResult(run_dir=run_dir, train=result, device=device, written=written, notes=restarts + notes)


def _discard_attempt(run_dir: Path) -> None:
    """Before a collapsed run starts over: its metrics and any checkpoint belong to the abandoned attempt."""
    truncate_metrics(run_dir / "metrics.jsonl", 0)
    (run_dir / "checkpoint.pt").unlink(missing_ok=True)


def _repair_logs(run_dir: Path, step: int) -> None:
    """Before a resumed run appends: drop metric lines past the checkpoint and a torn last line, and close a
    run.log line left open by a kill."""
    dropped = truncate_metrics(run_dir / "metrics.jsonl", step)
    if end_with_newline(run_dir / "run.log"):
        log_line(run_dir, "warning: the last line above was cut short when the run was stopped")
    if dropped:
        log_line(run_dir, f"warning: dropped {dropped} unreadable line(s) of metrics.jsonl (cut short by a kill or power loss)")


def _finish_outputs(trainer: Trainer, run_dir: Path, context: DistributedContext) -> GenerateResult:
    """--resume of a run that finished training: write the outputs a late kill left missing, nothing else."""
    config = trainer.config
    done = TrainResult(steps=trainer.step, skipped_steps=trainer.skipped_steps, seconds=0.0)
    missing = broadcast_from_main(context, missing_outputs(run_dir) if context.is_main else None)
    if not missing:
        # A surface stage starts where the coarse one ended, so only a run without one can be extended.
        extend = ("start a new run to train longer (its surface stage began after its coarse steps, which are fixed)"
                  if trainer.stage.name == "refine" else f"pass a larger --iters to continue (it was made for {config.total_steps})")  # fmt: skip
        raise RunError(f"{run_dir} already finished {trainer.step} steps and has all its outputs; {extend}")
    outputs = None
    if context.is_main:
        log_line(run_dir, f"resumed a finished run to write its missing outputs: {', '.join(missing)}")
        outputs = write_outputs(trainer, run_dir, only=set(missing))
    written, notes = broadcast_from_main(context, outputs)
    return GenerateResult(run_dir=run_dir, train=done, device=context.device, written=written, notes=notes, rebuilt=True)


class EmptyFieldWatch:
    """Notes in run.log when the rendered views go empty (the field lost its density) and when they come
    back: an empty field is a result to report, not a crash."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.empty_readings = 0
        """Logged steps in a row whose views were empty; the field counts as empty from ``EMPTY_READINGS`` on."""

    def see(self, metrics: StepMetrics) -> None:
        if metrics.skipped:
            return
        was_empty = self.empty_readings >= EMPTY_READINGS
        self.empty_readings = self.empty_readings + 1 if metrics.opacity < EMPTY_OPACITY else 0
        if self.empty_readings == EMPTY_READINGS:
            log_line(self.run_dir, f"step {metrics.step}: the views of the last {EMPTY_READINGS} logged steps are empty "
                                   f"(mean opacity {metrics.opacity:.2g}); the field holds no visible density")  # fmt: skip
        elif was_empty and self.empty_readings == 0:
            log_line(self.run_dir, f"step {metrics.step}: the field is visible again (mean opacity {metrics.opacity:.2g})")


def _ranks(context: DistributedContext) -> str:
    return f", {context.world_size} ranks (data parallel)" if context.distributed else ""


TURNTABLE_FILES = {"turntable.gif": "gif", "turntable.mp4": "mp4", "preview.png": "preview"}
"""The files ``write_turntable`` makes, and its name for each."""


def expected_outputs() -> tuple[str, ...]:
    """The outputs a finished run should have (turntable.mp4 only where an mp4 encoder is installed)."""
    return tuple(name for name in (*TURNTABLE_FILES, "mesh.glb") if name != "turntable.mp4" or mp4_available())


def missing_outputs(run_dir: Path) -> list[str]:
    return [name for name in expected_outputs() if not (run_dir / name).is_file()]


def write_outputs(trainer: Trainer, run_dir: Path, only: set[str] | None = None) -> tuple[list[str], list[str]]:
    """The turntable, preview and mesh.glb of a trained run (``only``: just these files). A field with no
    surface (too few steps, or emptied) gets no mesh.glb, and run.log says why: never an empty file.
    Returns the names written and notes on what was skipped."""
    config = trainer.config
    wanted = set(only) if only is not None else {*TURNTABLE_FILES, "mesh.glb"}
    written: list[str] = []
    notes: list[str] = []
    scene = Scene(trainer.field.eval(), trainer.background.eval(), config.renderer, config.shading)
    turntable = tuple(kind for name, kind in TURNTABLE_FILES.items() if name in wanted)
    if turntable:
        outputs = write_turntable(scene, config.turntable, run_dir, include=turntable)  # type: ignore[arg-type]
        written += [path.name for path in outputs.written]
        if outputs.mp4_error:
            notes.append(f"turntable.mp4 skipped: {outputs.mp4_error}")
        log_line(run_dir, f"wrote {', '.join(path.name for path in outputs.written)}")
    if "mesh.glb" in wanted:
        try:
            mesh = extract_mesh(scene.field, config.mesh)
            write_mesh(mesh, run_dir / "mesh.glb")
            written.append("mesh.glb")
            texture = f", a {mesh.texture.shape[0]}^2 texture" if mesh.texture is not None else ""
            log_line(run_dir, f"wrote mesh.glb: {mesh.num_faces} faces{texture}, surface at density {mesh.threshold:.3g}")
        except MeshExportError as error:
            notes.append(f"mesh.glb skipped: {error}")
    for note in notes:
        log_line(run_dir, note)
    return written, notes


def load_scene(run_dir: Path, device_name: str = "auto") -> tuple[RunConfig, Scene]:
    """The config and trained field of a run directory, for rendering and export. The checkpoint must have
    been written by the run that config.yaml describes."""
    if not (run_dir / "config.yaml").is_file() or not (run_dir / "checkpoint.pt").is_file():
        if (run_dir / "config.yaml").is_file() and is_locked(run_dir):
            raise RunError(f"{run_dir} has no checkpoint yet: {describe_holder(run_dir)} is still writing it; try again later")
        raise RunError(f"{run_dir} is not a dreamfusion run (config.yaml and checkpoint.pt expected)")
    try:
        config = load_config(run_dir / "config.yaml")
    except ConfigError as error:
        raise RunError(f"cannot read {run_dir / 'config.yaml'}: {error}") from None
    device = resolve_device(device_name)
    state = read_checkpoint(run_dir / "checkpoint.pt")
    try:
        saved = with_defaults(state.get("config"))
    except ConfigError:
        saved = None
    changed = differing_keys(saved, to_dict(config), ignore=RESUMABLE_CHANGES) if saved is not None else ["all"]
    if changed:
        raise RunError(
            f"{run_dir / 'checkpoint.pt'} was not written by the run of {run_dir / 'config.yaml'} "
            f"(they differ in {', '.join(changed[:4])}{', ...' if len(changed) > 4 else ''}); copy a run's files together"
        )
    # A checkpoint of the surface stage holds the signed distance field that replaced the NeRF.
    field = refine_field(config.field, config.refine) if state.get("stage") == "refine" else NeRFField(config.field)
    background = Background(config.background)
    try:
        field.load_state_dict(state["field"])
        background.load_state_dict(state["background"])
    except (RuntimeError, KeyError) as error:
        raise RunError(f"{run_dir / 'checkpoint.pt'} does not fit {run_dir / 'config.yaml'} ({str(error).splitlines()[0]})") from None
    return config, Scene(field.to(device).eval(), background.to(device).eval(), config.renderer, config.shading)


def lock_for_writing(run_dir: Path, hint: str = "") -> RunLock:
    """The writer lock of an existing run, for a command that writes into it (render, export, eval-clip)."""
    if not (run_dir / "config.yaml").is_file():  # checked first: no lock file appears in a folder that is no run
        raise RunError(f"{run_dir} is not a dreamfusion run (config.yaml and checkpoint.pt expected)")
    return lock_run(run_dir, hint)


def export_run(
    run_dir: Path,
    format: MeshFormat | None = None,
    device: str = "auto",
    out: Path | None = None,
    config: MeshExportConfig = MeshExportConfig(),
) -> list[Path]:
    """Extract the mesh of a run and write it to ``out`` (default RUN_DIR/mesh.FORMAT); returns the files
    written. The format comes from ``out``'s suffix or ``format`` (see ``mesh_format``). Writing into the run
    takes its writer lock, so a run that is being trained is not written into; writing elsewhere only reads it.

    Raises RunError for a directory that is not a run (or is in use) and MeshExportError when no mesh can be
    made.
    """
    run_dir = Path(run_dir)
    fmt = mesh_format(format, out)
    target = Path(out) if out is not None else run_dir / f"mesh.{fmt}"
    if fmt == "ply" and not config.vertex_colors:
        config = replace(config, vertex_colors=True)  # PLY has no textures: colours per vertex, no unwrapping
    check_size("--resolution", config.resolution, lambda side: float(side) ** 3 * GRID_BYTES_PER_SAMPLE, "cpu")
    into_run = run_dir.is_dir() and target.parent.resolve() == run_dir.resolve()
    hint = "; or export while it trains with --out outside the run"
    with lock_for_writing(run_dir, hint) if into_run else contextlib.nullcontext():
        _, scene = load_scene(run_dir, device)
        return write_mesh(extract_mesh(scene.field, config), target, fmt)
