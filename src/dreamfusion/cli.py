"""The dreamfusion command line."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from dreamfusion.priors import PRIOR_NAMES, PriorError, check_model

if TYPE_CHECKING:
    from dreamfusion.config import RunConfig

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Text to 3D with Score Distillation Sampling: optimize a NeRF until its renders satisfy a 2D diffusion prior.",
)
console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def user_errors(command: F) -> F:
    """Turn the package's user-facing errors into one line on stderr and exit code 2, never a traceback."""
    from dreamfusion.errors import DreamfusionError

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except DreamfusionError as error:
            _fail(str(error))
        except MemoryError:
            _fail("out of memory; ask for a smaller size (--resolution, --frames) or a smaller config")
        except RuntimeError as error:
            if not _is_out_of_memory(error):
                raise
            _fail(f"out of memory on the device: {str(error).splitlines()[0][:200]}; ask for a smaller size")
        except KeyboardInterrupt:
            console.print("interrupted; the last checkpoint is kept (continue with --resume)")
            raise typer.Exit(code=130) from None

    return wrapper  # type: ignore[return-value]


def _fail(message: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {' '.join(message.split())}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=code)


def _is_out_of_memory(error: RuntimeError) -> bool:
    import torch

    return isinstance(error, torch.OutOfMemoryError) or "can't allocate memory" in str(error)


def _progress() -> Progress:
    from dreamfusion.distributed import is_main_process

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[speed]:>6.1f} it/s"),
        TextColumn("loss {task.fields[loss]:.4g}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not is_main_process(),  # under torchrun, one progress bar: the main rank's
    )


PRIOR_HELP = f"2D diffusion prior: {', '.join(PRIOR_NAMES)} (default: the config's, embedded)."
DEVICE_HELP = "auto, cpu or cuda (default: the config's, auto)."
SEED_HELP = "Random seed (default: the config's, 0); the same seed on CPU repeats a run exactly."


@app.command()
@user_errors
def generate(
    prompt: Annotated[str, typer.Argument(help='What to make, e.g. "a red chair".')],
    prior: Annotated[str | None, typer.Option(help=PRIOR_HELP)] = None,
    model: Annotated[
        str | None, typer.Option(help="Prior weights: a local folder (sd / if: required), or a model id in the local cache.")
    ] = None,
    iters: Annotated[int | None, typer.Option(help="Optimization steps (default: the preset's).")] = None,
    seed: Annotated[int | None, typer.Option(help=SEED_HELP)] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory (default: outputs/<prompt-slug>).")] = None,
    device: Annotated[str | None, typer.Option(help=DEVICE_HELP)] = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML file of config keys (see config.yaml in a run); flags you type win over it.")
    ] = None,
    preset: Annotated[str, typer.Option(help="preview (fast, CPU-sized), default, or quality.")] = "default",
    guidance_scale: Annotated[float | None, typer.Option(help="Classifier-free guidance scale (default: the prior's).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing run in --out.")] = False,
    gpus: Annotated[
        int | None, typer.Option(help="Data-parallel SDS on N GPUs: relaunches this command under torchrun.")
    ] = None,
    compile: Annotated[bool, typer.Option("--compile", help=COMPILE_HELP)] = False,
) -> None:
    """Optimize a 3D object (a NeRF) for PROMPT and write a checkpoint, metrics, a turntable video and a preview.

    Settings come from the preset, then the --config file, then the flags typed here. With --resume the
    run's own config.yaml rules; only --iters may change it (to extend the run).
    Each GPU renders its own views (the paper's effective batch of 4 is --gpus 4); gradients are averaged.
    The same works with `torchrun --nproc_per_node N -m dreamfusion generate ...`.
    """
    from dreamfusion.config import build_config, read_config_file
    from dreamfusion.run import check_run_dir, prompt_slug, validate_prompt
    from dreamfusion.run import generate as run_generate

    flags = _run_overrides(prior, model, seed, device, iters)
    if guidance_scale is not None:
        flags["guidance"] = {"guidance_scale": guidance_scale}
    # The file is checked on its own first: a bad value in it is an error even where a flag overrides it.
    run_config = _compiled_where_it_pays(build_config(preset, config, flags), compile)
    prompt = validate_prompt(prompt, run_config.prior)
    run_config = replace(run_config, prompt=prompt)
    # What the user asked for explicitly, the file's keys under the typed flags: a resumed run must agree with it.
    requested = _nested_merge(read_config_file(config) if config is not None else {}, flags)
    run_dir = out if out is not None else Path("outputs") / prompt_slug(prompt)
    if _relaunch_under_torchrun(gpus, lambda: check_run_dir(run_dir, resume, overwrite)):
        return

    if _compiles(run_config):
        console.print("compiling with torch.compile: the first steps wait for it (minutes the first time, then cached)")
    progress = _progress()
    task = progress.add_task("optimizing", total=run_config.total_steps, speed=0.0, loss=float("nan"))

    def on_start(trainer: Any) -> None:  # the bar appears once the run has passed every check
        progress.update(task, completed=trainer.step, total=trainer.config.total_steps)
        progress.start()

    def on_step(metrics: Any) -> None:
        progress.update(task, completed=metrics.step + 1, speed=metrics.it_per_s, loss=metrics.loss)

    try:
        result = run_generate(
            run_config, run_dir, resume=resume, overwrite=overwrite, resume_iters=iters, on_step=on_step,
            on_start=on_start, requested=requested,
        )  # fmt: skip
    finally:
        if progress.live.is_started:
            progress.stop()
    from dreamfusion.distributed import is_main_process

    if not is_main_process():
        return
    if result.rebuilt:
        console.print(f"{run_dir} had finished training; wrote its missing outputs: {', '.join(result.written) or 'none'}")
    else:
        skipped = f", {result.train.skipped_steps} non-finite steps skipped" if result.train.skipped_steps else ""
        console.print(f"done: {result.train.steps} steps on {result.device}{skipped}")
    made = ["turntable.gif", "turntable.mp4" if (run_dir / "turntable.mp4").is_file() else "", "preview.png",
            "mesh.glb" if (run_dir / "mesh.glb").is_file() else "", "checkpoint.pt"]
    console.print(f"results in {run_dir}/: {', '.join(name for name in made if name)}")
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")


COMPILE_HELP = (
    "torch.compile the prior's networks (sd / if; channels-last too): faster steps on a GPU after minutes of "
    "compiling (cached for later runs). Skipped, with a note, where it cannot pay: on a CPU, and with the "
    "embedded prior, which has nothing to compile."
)


def _run_overrides(prior: str | None, model: str | None, seed: int | None, device: str | None, iters: int | None) -> dict[str, Any]:
    """Config overrides from the flags that generate and batch share, only those the user typed (None: not
    typed, so the preset's or the config file's value stands), after the checks that name the flag."""
    from dreamfusion.typed_config import ConfigError

    if prior is not None and prior not in PRIOR_NAMES:
        raise PriorError(f"unknown prior {prior!r}; choose one of: {', '.join(PRIOR_NAMES)}")
    if iters is not None and iters <= 0:
        raise ConfigError(f"--iters must be a positive number of steps, got {iters}")
    if device is not None and device not in DEVICES:
        raise ConfigError(f"--device must be auto, cpu or cuda, got {device!r}")
    _check_seed(seed)
    if prior is not None:
        check_model(prior, model)
    overrides: dict[str, Any] = {
        "seed": seed, "device": device, "prior": {"name": prior, "model": model}, "trainer": {"iters": iters}
    }  # fmt: skip
    return _typed(overrides)


PRIOR_COMPILE_OPTIONS = {"compile_unet": True, "compile_vae": True, "channels_last": True}


def _compiled_where_it_pays(config: RunConfig, compile: bool) -> RunConfig:
    """With --compile: the prior's networks, where its config has those options (sd, if), are compiled, unless
    compiling cannot pay on the run's device or the prior has nothing to compile; then a note says why and
    nothing is. ``trainer: {compile_field: true}`` in a config file compiles the field."""
    from dreamfusion.distributed import is_main_process, resolve_device
    from dreamfusion.trainer import compile_skip_reason

    if not compile:
        return config
    known = {field.name for field in fields(config.prior)}
    options = {k: v for k, v in PRIOR_COMPILE_OPTIONS.items() if k in known}
    reason = compile_skip_reason(resolve_device(config.device), config.prior.name, bool(options))
    if reason is not None:
        if is_main_process():
            console.print(f"[yellow]note:[/] --compile skipped: {reason}")
        return config
    return replace(config, prior=replace(config.prior, **options))


def _compiles(config: RunConfig) -> bool:
    known = {field.name for field in fields(config.prior)}
    return config.trainer.compile_field or any(getattr(config.prior, k) for k in ("compile_unet", "compile_vae") if k in known)


DEVICES = ("auto", "cpu", "cuda")


def _typed(overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` without the keys left at None (flags not typed), and without sections left empty."""
    kept: dict[str, Any] = {}
    for key, value in overrides.items():
        if isinstance(value, dict):
            value = _typed(value)
            if value:
                kept[key] = value
        elif value is not None:
            kept[key] = value
    return kept


def _nested_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        merged[key] = _nested_merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def _check_seed(seed: int | None) -> None:
    from dreamfusion.typed_config import ConfigError, check_seed

    if seed is not None:
        try:
            check_seed(seed, "--seed")
        except ValueError as error:
            raise ConfigError(str(error)) from None


def _relaunch_under_torchrun(gpus: int | None, check: Callable[[], None]) -> bool:
    """With --gpus N > 1 outside torchrun: run ``check`` (so bad input fails here, in one line), then re-run
    this command under torchrun with N processes and exit with its code. False: carry on in this process."""
    from dreamfusion.distributed import launch_torchrun
    from dreamfusion.typed_config import ConfigError

    if gpus is None:
        return False
    if gpus <= 0:
        raise ConfigError(f"--gpus must be a positive number of processes, got {gpus}")
    if gpus == 1 or "LOCAL_RANK" in os.environ:
        return False
    check()
    raise typer.Exit(code=launch_torchrun(sys.argv[1:], gpus))


PER_GPU_HELP = (
    "Prompts each GPU (or the CPU) runs at once, each in its own process (default: as many as the GPU's free "
    "memory holds, at most 8; 1 on a CPU)."
)


@app.command()
@user_errors
def batch(
    prompts: Annotated[Path, typer.Argument(help="Text file: one prompt per line; blank lines and # comments skipped.")],
    out: Annotated[Path, typer.Option(help="Folder for one run directory per prompt and summary.json.")],
    prior: Annotated[str | None, typer.Option(help=PRIOR_HELP)] = None,
    model: Annotated[str | None, typer.Option(help="Prior weights (see generate --model).")] = None,
    iters: Annotated[int | None, typer.Option(help="Optimization steps (default: the preset's).")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed, the same for every prompt (default: the config's, 0).")] = None,
    device: Annotated[str | None, typer.Option(help=DEVICE_HELP)] = None,
    config: Annotated[Path | None, typer.Option(help="YAML file of config keys; flags you type win over it.")] = None,
    preset: Annotated[str, typer.Option(help="preview, default or quality.")] = "default",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace runs that already exist.")] = False,
    gpus: Annotated[int | None, typer.Option(help="Share the prompts among N GPUs (relaunches under torchrun).")] = None,
    compile: Annotated[bool, typer.Option("--compile", help=COMPILE_HELP)] = False,
    per_gpu: Annotated[int | None, typer.Option(help=PER_GPU_HELP)] = None,
) -> None:
    """Make many objects: prompts are shared among the ranks of torchrun (GPUs, and nodes through its
    rendezvous); a prompt that fails never stops the others, and summary.json says which failed and why."""
    from dreamfusion.batch import check_per_device, read_prompts, run_batch_from_env
    from dreamfusion.config import build_config
    from dreamfusion.distributed import is_main_process

    if per_gpu is not None:
        check_per_device(per_gpu, "--per-gpu")
    base = _compiled_where_it_pays(build_config(preset, config, _run_overrides(prior, model, seed, device, iters)), compile)
    if _relaunch_under_torchrun(gpus, lambda: read_prompts(prompts)):  # --per-gpu passes on to every rank
        return
    summary = run_batch_from_env(prompts, out, base, overwrite=overwrite, per_device=per_gpu)
    if is_main_process() and summary.failed:
        raise typer.Exit(code=1)


@app.command()
@user_errors
def render(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by generate.")],
    frames: Annotated[int | None, typer.Option(help="Frames in the turntable (default: the run's).")] = None,
    elevation: Annotated[float | None, typer.Option(help="Camera elevation in degrees (default: the run's).")] = None,
    resolution: Annotated[int | None, typer.Option(help="Rendered side in pixels (default: the run's).")] = None,
    panels: Annotated[
        str | None,
        typer.Option(help="Comma-separated panels side by side: lambertian, albedo, textureless, normals, depth, opacity "
                     "(default: lambertian,textureless)."),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Re-render the turntable video, GIF and preview of a run from its checkpoint."""
    import math

    from dreamfusion.export.video import DEFAULT_PANELS, check_turntable_size, parse_panels, write_turntable
    from dreamfusion.run import load_scene, lock_for_writing
    from dreamfusion.typed_config import ConfigError

    try:
        selected = parse_panels(panels) if panels is not None else DEFAULT_PANELS
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if elevation is not None and not math.isfinite(elevation):
        raise ConfigError(f"--elevation must be a finite angle in degrees, got {elevation}")
    with lock_for_writing(run_dir):
        config, scene = load_scene(run_dir, device)
        turntable = config.turntable
        try:
            turntable = replace(
                turntable,
                frames=frames if frames is not None else turntable.frames,
                elevation=elevation if elevation is not None else turntable.elevation,
                resolution=resolution if resolution is not None else turntable.resolution,
            )
        except ValueError as error:
            raise ConfigError(str(error)) from None
        check_turntable_size(turntable, selected)
        outputs = write_turntable(scene, turntable, run_dir, panels=selected)
    console.print(f"wrote {', '.join(str(path) for path in outputs.written)}")
    if outputs.mp4_error:
        console.print(f"[yellow]note:[/] {outputs.mp4_error}")


@app.command("train-prior")
@user_errors
def train_prior(
    out: Annotated[Path, typer.Option(help="Folder for the checkpoint, metrics.jsonl, prior.safetensors and samples.png.")],
    minutes: Annotated[float, typer.Option(help="Wall-clock budget of the whole run.")] = 9.0,
    steps: Annotated[int | None, typer.Option(help="Step budget (default: none, the time budget decides).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per step (default 256).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed of data and initialization.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUT/checkpoint.pt.")] = False,
    samples: Annotated[bool, typer.Option(help="Write a DDIM sample sheet (objects x views) at the end.")] = True,
) -> None:
    """Train the embedded prior on procedural multi-view renders (meant for a GPU: about 9 minutes on an H200).

    Use the result with `dreamfusion generate PROMPT --model OUT`.
    """
    import math

    from dreamfusion.distributed import resolve_device
    from dreamfusion.embedded.train import TrainPriorConfig, write_sample_sheet
    from dreamfusion.embedded.train import train_prior as run_training
    from dreamfusion.run import RunError
    from dreamfusion.runlock import lock_run
    from dreamfusion.typed_config import ConfigError

    if not 0 < minutes < math.inf or (steps is not None and steps <= 0) or (batch_size is not None and batch_size <= 0):
        raise ConfigError("--minutes, --steps and --batch-size must be positive (and --minutes finite)")
    _check_seed(seed)
    if resume and not (out / "checkpoint.pt").is_file():
        raise RunError(f"nothing to resume: {out / 'checkpoint.pt'} does not exist")
    if not resume and (out / "checkpoint.pt").exists():
        raise RunError(f"{out} already holds a prior training run; pass --resume to continue it or choose another --out")
    overrides: dict[str, Any] = {"minutes": minutes, "max_steps": steps, "seed": seed}
    if batch_size is not None:
        overrides["batch_size"] = batch_size
    try:
        config = replace(TrainPriorConfig(), **overrides)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    torch_device = resolve_device(device)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunError(f"cannot write to {out}: {error.strerror}") from None
    with lock_run(out):  # one training run writes a folder at a time
        result = run_training(config, out, torch_device, resume=resume)
        console.print(f"trained {result.steps} steps in {result.seconds:.0f} s; weights: {result.weights_path}")
        if samples:
            console.print(f"samples: {write_sample_sheet(result.weights_path, out / 'samples.png', torch_device)}")


SAMPLE_BYTES = 2 * 3 * 64 * 64 * 4
"""A lower bound of the memory of one sample: two float32 64x64 RGB images (the sample and its grid cell)."""


@app.command("sample-prior")
@user_errors
def sample_prior(
    prompt: Annotated[str, typer.Argument(help='Caption, optionally with a view: "a red chair, front view".')],
    n: Annotated[int, typer.Option("-n", "--num-images", help="Images to draw.")] = 8,
    out: Annotated[Path, typer.Option(help="PNG grid to write.")] = Path("samples.png"),
    prior: Annotated[str, typer.Option(help=f"2D diffusion prior: {', '.join(PRIOR_NAMES)}.")] = "embedded",
    model: Annotated[str | None, typer.Option(help="Prior weights (see generate --model).")] = None,
    steps: Annotated[int, typer.Option(help="DDIM steps.")] = 50,
    guidance_scale: Annotated[float | None, typer.Option(help="Guidance scale (default: the prior's sampling default).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Draw images from a prior with DDIM: check weights and prompts before a long 3D run."""
    import math

    import numpy as np
    import torch

    from dreamfusion.cameras import split_view
    from dreamfusion.distributed import resolve_device
    from dreamfusion.export.video import write_png
    from dreamfusion.memory import check_size
    from dreamfusion.priors import build_prior, prior_config
    from dreamfusion.priors.sampling import ddim_sample
    from dreamfusion.run import RunError, validate_prompt
    from dreamfusion.typed_config import ConfigError

    check_model(prior, model)
    chosen = prior_config(prior, **({} if model is None else {"model": model}))
    base, view = split_view(prompt)
    base = validate_prompt(base, chosen)
    if n <= 0 or steps <= 0 or (guidance_scale is not None and not 0 <= guidance_scale < math.inf):
        raise ConfigError("-n and --steps must be positive and --guidance-scale a non-negative number")
    _check_seed(seed)
    check_size("-n", n, lambda count: count * SAMPLE_BYTES, "cpu")
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out must name a .png file, got {out}")
    if not out.parent.is_dir():
        raise RunError(f"cannot write {out}: the folder {out.parent} does not exist")
    torch_device = resolve_device(device)
    loaded = build_prior(chosen, torch_device)
    embeddings = loaded.encode_prompt(base)
    scale = guidance_scale if guidance_scale is not None else loaded.sampling_guidance_scale
    images = ddim_sample(loaded, embeddings, n, steps=steps, guidance_scale=scale,
                         generator=torch.Generator().manual_seed(seed), view=view or "front")
    columns = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / columns))
    grid = torch.ones(rows * columns, *images.shape[1:])
    grid[:n] = images.cpu()
    size = images.shape[-1]
    picture = grid.view(rows, columns, 3, size, size).permute(0, 3, 1, 4, 2).reshape(rows * size, columns * size, 3)
    write_png((picture.numpy() * 255 + 0.5).astype(np.uint8), out)
    console.print(f"wrote {n} samples of {base!r} ({view or 'front'} view) to {out}")


@app.command("eval-3d")
@user_errors
def eval_3d(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (the embedded prior's for the probe and true shape).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a summary.")] = False,
    probe: Annotated[str | None, typer.Option(help="Probe weights (default: the shipped probe).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Measure a result against the true shape of its prompt: probe accuracy of object, colour and view from 32
    views (16 azimuths at 15 and 45 degrees), the Janus rate (back views seen as front), and occupancy IoU; and
    its mesh.glb against the field's renders (outlines, colours) and the true shape. For a prompt outside the
    embedded vocabulary (another prior's run), the mesh against the field only."""
    from dreamfusion.evaluate import evaluate_run

    result = evaluate_run(run_dir, device, probe)
    if as_json:
        typer.echo(result.to_json())
    else:
        typer.echo(result.summary())



@app.command("export")
@user_errors
def export_mesh(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by generate.")],
    format: Annotated[
        str | None, typer.Option("--format", help="glb, obj or ply (default: --out's suffix, else glb; GLB and OBJ are y-up).")
    ] = None,
    resolution: Annotated[int, typer.Option(help="Grid samples per side where the surface is sought.")] = 256,
    threshold: Annotated[
        float | None, typer.Option(help="Surface density (default: the level whose outlines match the renders).")
    ] = None,
    decimate: Annotated[
        int | None, typer.Option(help="Simplify to about this many faces (default: 20000 when textured, else all).")
    ] = None,
    keep_largest: Annotated[bool, typer.Option("--keep-largest", help="Keep only the largest connected piece.")] = False,
    texture_size: Annotated[int, typer.Option(help="Side of the baked albedo texture in texels.")] = 1024,
    vertex_colors: Annotated[
        bool, typer.Option("--vertex-colors", help="Colours per vertex instead of a UV texture (PLY always).")
    ] = False,
    out: Annotated[Path | None, typer.Option(help="Output file, .glb, .obj or .ply (default: RUN_DIR/mesh.FORMAT).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Extract the surface the renders show as a closed triangle mesh with its albedo, UV-textured (GLB: PBR
    material; OBJ: .mtl and .png beside it) or with vertex colours, and write it as GLB, OBJ or PLY."""
    from dreamfusion.export.mesh import MeshExportConfig
    from dreamfusion.run import export_run
    from dreamfusion.typed_config import ConfigError

    try:
        config = MeshExportConfig(
            resolution=resolution, threshold=threshold, decimate_faces=decimate, keep_largest=keep_largest,
            texture_size=texture_size, vertex_colors=vertex_colors,
        )  # fmt: skip
    except ValueError as error:
        raise ConfigError(str(error)) from None
    paths = export_run(run_dir, format, device=device, out=out, config=config)  # type: ignore[arg-type]
    console.print(f"wrote {', '.join(str(path) for path in paths)}")


@app.command()
@user_errors
def view(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by generate.")],
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8080,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda (for exporting a mesh when the run has no mesh.glb).")] = "auto",
) -> None:
    """Open an interactive local viewer (viser) of the run's mesh, turntable, prompt and metrics; Ctrl-C stops it."""
    from dreamfusion.viewer import run_until_interrupted, serve

    server = serve(run_dir, port=port, block=False, device=device)
    console.print(f"viewer at http://127.0.0.1:{server.get_port()} (Ctrl-C to stop)")
    run_until_interrupted(server)


@app.command("eval-clip")
@user_errors
def eval_clip(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by generate.")],
    clip: Annotated[Path, typer.Option(help="Local transformers CLIP folder, e.g. from: huggingface-cli download openai/clip-vit-base-patch32 --local-dir DIR")],
    captions: Annotated[Path | None, typer.Option(help="Caption set, one per line (default: the built-in ~60 objects; the prompt is added).")] = None,
    views: Annotated[int, typer.Option(help="Azimuths at 30 degrees elevation.")] = 16,
    resolution: Annotated[int, typer.Option(help="Rendered side in pixels.")] = 128,
    color_shading: Annotated[str, typer.Option(help="albedo or lambertian, for the colour renders.")] = "albedo",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
) -> None:
    """CLIP R-Precision (R=1) of colour and textureless renders against a caption set; writes RUN_DIR/eval_clip.json."""
    from dreamfusion.evaluate_clip import ClipEvalConfig, evaluate_run_clip
    from dreamfusion.typed_config import ConfigError

    try:
        config = ClipEvalConfig(views=views, resolution=resolution, color_shading=color_shading)  # type: ignore[arg-type]
    except ValueError as error:
        raise ConfigError(str(error)) from None
    result = evaluate_run_clip(run_dir, clip, captions, config, device=device)
    for mode, score in result.summary.items():
        console.print(f"CLIP R-Precision ({mode}): {score:.3f} over {result.views} views, {result.num_captions} captions")
    console.print(f"wrote {run_dir / 'eval_clip.json'}")


def main(argv: list[str] | None = None) -> None:
    """The ``dreamfusion`` command. A mistyped command line (an unknown option, "1e12" for an integer) is bad
    input like any other: one line and exit code 2, not a framed usage box."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        code = app(args=args or ["--help"], prog_name="dreamfusion", standalone_mode=False)
    except typer.TyperException as error:  # usage errors: a missing argument, an unknown option, a bad value
        context = getattr(error, "ctx", None)
        command = context.command_path if context is not None else "dreamfusion"
        message = error.format_message() if hasattr(error, "format_message") else str(error)
        typed = _typed_value(args, getattr(getattr(error, "param", None), "opts", None) or [])
        if typed is not None and typed not in message:
            message = f"{message} (got {typed!r})"
        console.print(f"[bold red]error:[/] {' '.join(message.split())} (see: {command} --help)",
                      highlight=False, soft_wrap=True)  # fmt: skip
        code = getattr(error, "exit_code", 2)
    except typer.Abort:
        console.print("aborted")
        code = 1
    except BrokenPipeError:
        code = 1
    sys.exit(code if isinstance(code, int) else 0)


def _typed_value(args: list[str], names: list[str]) -> str | None:
    """What the user typed for an option (``names``: its spellings, e.g. ["--iters"]), if anything."""
    for position, arg in enumerate(args):
        for name in names:
            if arg == name and position + 1 < len(args):
                return args[position + 1]
            if arg.startswith(name + "="):
                return arg[len(name) + 1 :]
    return None
