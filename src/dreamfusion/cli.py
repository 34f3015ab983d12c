"""The dreamfusion command line."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from dreamfusion.priors import PRIOR_NAMES, PriorError, check_prompt

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
    from dreamfusion.run import RunError
    from dreamfusion.trainer import TrainingError
    from dreamfusion.typed_config import ConfigError
    from dreamfusion.evaluate_clip import ClipEvalError
    from dreamfusion.export.mesh import MeshExportError
    from dreamfusion.viewer import ViewerError

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (RunError, TrainingError, PriorError, ConfigError, MeshExportError, ClipEvalError, ViewerError) as error:
            console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from None
        except KeyboardInterrupt:
            console.print("interrupted; the last checkpoint is kept (continue with --resume)")
            raise typer.Exit(code=130) from None

    return wrapper  # type: ignore[return-value]


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


@app.command()
@user_errors
def generate(
    prompt: Annotated[str, typer.Argument(help='What to make, e.g. "a red chair".')],
    prior: Annotated[str, typer.Option(help=f"2D diffusion prior: {', '.join(PRIOR_NAMES)}.")] = "embedded",
    model: Annotated[
        str | None, typer.Option(help="Prior weights: a local folder (sd / if: required), or a model id in the local cache.")
    ] = None,
    iters: Annotated[int | None, typer.Option(help="Optimization steps (default: the preset's).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed on CPU repeats a run exactly.")] = 0,
    out: Annotated[Path | None, typer.Option(help="Run directory (default: outputs/<prompt-slug>).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    config: Annotated[Path | None, typer.Option(help="YAML file of config overrides (see config.yaml in a run).")] = None,
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

    Each GPU renders its own views (the paper's effective batch of 4 is --gpus 4); gradients are averaged.
    The same works with `torchrun --nproc_per_node N -m dreamfusion generate ...`.
    """
    from dreamfusion.config import build_config
    from dreamfusion.run import generate as run_generate
    from dreamfusion.run import check_run_dir, prompt_slug, validate_prompt
    from dreamfusion.typed_config import ConfigError

    prompt = validate_prompt(prompt)
    overrides = {"prompt": prompt, **_run_overrides(prior, model, seed, device, iters, compile)}
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device must be auto, cpu or cuda, got {device!r}")
    if guidance_scale is not None:
        overrides["guidance"] = {"guidance_scale": guidance_scale}
    run_config = build_config(preset, config, overrides)
    check_prompt(run_config.prior, prompt)
    run_dir = out if out is not None else Path("outputs") / prompt_slug(prompt)
    if _relaunch_under_torchrun(gpus, lambda: check_run_dir(run_dir, resume, overwrite)):
        return

    if run_config.trainer.compile_field:
        console.print("compiling with torch.compile: the first steps wait for it (minutes the first time, then cached)")
    with _progress() as progress:
        task = progress.add_task("optimizing", total=run_config.trainer.iters, speed=0.0, loss=float("nan"))

        def on_start(trainer: Any) -> None:
            progress.update(task, completed=trainer.step, total=trainer.config.trainer.iters)

        def on_step(metrics: Any) -> None:
            progress.update(task, advance=1, speed=metrics.it_per_s, loss=metrics.loss)

        result = run_generate(
            run_config, run_dir, resume=resume, overwrite=overwrite, resume_iters=iters, on_step=on_step, on_start=on_start
        )
    from dreamfusion.distributed import is_main_process

    if not is_main_process():
        return
    skipped = f", {result.train.skipped_steps} non-finite steps skipped" if result.train.skipped_steps else ""
    console.print(f"done: {result.train.steps} steps on {result.device}{skipped}")
    made = ["turntable.gif", "turntable.mp4" if result.outputs.mp4 else "", "preview.png",
            "mesh.glb" if (run_dir / "mesh.glb").is_file() else "", "checkpoint.pt"]
    console.print(f"results in {run_dir}/: {', '.join(name for name in made if name)}")
    if result.outputs.mp4_error:
        console.print(f"[yellow]note:[/] {result.outputs.mp4_error}")


COMPILE_HELP = (
    "torch.compile the NeRF field and, for sd / if, the prior's networks (channels-last too): 1.5-2x faster "
    "steps on a GPU after minutes of compiling (cached for later runs); pays on long GPU runs, not on a CPU."
)


def _run_overrides(prior: str, model: str | None, seed: int, device: str, iters: int | None, compile: bool) -> dict[str, Any]:
    """Config overrides from the options generate and batch share, after the checks of those options that
    name the option in their message."""
    from dreamfusion.typed_config import ConfigError

    if prior not in PRIOR_NAMES:
        raise PriorError(f"unknown prior {prior!r}; choose one of: {', '.join(PRIOR_NAMES)}")
    if iters is not None and iters <= 0:
        raise ConfigError(f"--iters must be a positive number of steps, got {iters}")
    overrides: dict[str, Any] = {"seed": seed, "device": device, "prior": {"name": prior, "model": model}, "trainer": {}}
    if iters is not None:
        overrides["trainer"]["iters"] = iters
    if compile:
        overrides["trainer"]["compile_field"] = True
        overrides["prior"].update(compile_unet=True, compile_vae=True, channels_last=True)
    return overrides


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


@app.command()
@user_errors
def batch(
    prompts: Annotated[Path, typer.Argument(help="Text file: one prompt per line; blank lines and # comments skipped.")],
    out: Annotated[Path, typer.Option(help="Folder for one run directory per prompt and summary.json.")],
    prior: Annotated[str, typer.Option(help=f"2D diffusion prior: {', '.join(PRIOR_NAMES)}.")] = "embedded",
    model: Annotated[str | None, typer.Option(help="Prior weights (see generate --model).")] = None,
    iters: Annotated[int | None, typer.Option(help="Optimization steps (default: the preset's).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed, the same for every prompt.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    config: Annotated[Path | None, typer.Option(help="YAML file of config overrides.")] = None,
    preset: Annotated[str, typer.Option(help="preview, default or quality.")] = "default",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace runs that already exist.")] = False,
    gpus: Annotated[int | None, typer.Option(help="Share the prompts among N GPUs (relaunches under torchrun).")] = None,
    compile: Annotated[bool, typer.Option("--compile", help=COMPILE_HELP)] = False,
) -> None:
    """Make many objects: prompts are shared among the ranks of torchrun (GPUs, and nodes through its
    rendezvous); a prompt that fails never stops the others, and summary.json says which failed and why."""
    from dreamfusion.batch import read_prompts, run_batch_from_env
    from dreamfusion.config import build_config
    from dreamfusion.distributed import is_main_process

    base = build_config(preset, config, _run_overrides(prior, model, seed, device, iters, compile))
    if _relaunch_under_torchrun(gpus, lambda: read_prompts(prompts)):
        return
    summary = run_batch_from_env(prompts, out, base, overwrite=overwrite)
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
    from dataclasses import replace

    from dreamfusion.export.video import DEFAULT_PANELS, parse_panels, write_turntable
    from dreamfusion.run import load_scene
    from dreamfusion.typed_config import ConfigError

    try:
        selected = parse_panels(panels) if panels is not None else DEFAULT_PANELS
    except ValueError as error:
        raise ConfigError(str(error)) from None
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
    outputs = write_turntable(scene, turntable, run_dir, panels=selected)
    console.print(f"wrote {outputs.gif}, {outputs.preview}" + (f", {outputs.mp4}" if outputs.mp4 else ""))
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
    from dataclasses import replace

    from dreamfusion.embedded.train import TrainPriorConfig, train_prior as run_training, write_sample_sheet
    from dreamfusion.run import RunError
    from dreamfusion.trainer import resolve_device
    from dreamfusion.typed_config import ConfigError

    if minutes <= 0 or (steps is not None and steps <= 0) or (batch_size is not None and batch_size <= 0):
        raise ConfigError("--minutes, --steps and --batch-size must be positive")
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
    result = run_training(config, out, torch_device, resume=resume)
    console.print(f"trained {result.steps} steps in {result.seconds:.0f} s; weights: {result.weights_path}")
    if samples:
        console.print(f"samples: {write_sample_sheet(result.weights_path, out / 'samples.png', torch_device)}")


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
    import numpy as np
    import torch

    from dreamfusion.export.video import write_png
    from dreamfusion.priors import PriorConfig, build_prior
    from dreamfusion.priors.base import split_view
    from dreamfusion.priors.sampling import ddim_sample
    from dreamfusion.run import RunError, validate_prompt
    from dreamfusion.trainer import resolve_device
    from dreamfusion.typed_config import ConfigError

    prompt = validate_prompt(prompt)
    if prior not in PRIOR_NAMES:
        raise PriorError(f"unknown prior {prior!r}; choose one of: {', '.join(PRIOR_NAMES)}")
    if n <= 0 or steps <= 0 or (guidance_scale is not None and guidance_scale < 0):
        raise ConfigError("-n and --steps must be positive and --guidance-scale non-negative")
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out must name a .png file, got {out}")
    if not out.parent.is_dir():
        raise RunError(f"cannot write {out}: the folder {out.parent} does not exist")
    torch_device = resolve_device(device)
    loaded = build_prior(PriorConfig(name=prior, model=model), torch_device)  # type: ignore[arg-type]
    base, view = split_view(prompt)
    embeddings = loaded.encode_prompt(base)
    scale = guidance_scale if guidance_scale is not None else getattr(loaded, "sampling_guidance_scale", 5.0)
    images = ddim_sample(loaded, embeddings, n, steps=steps, guidance_scale=scale,
                         generator=torch.Generator().manual_seed(seed), view=view or "front")
    columns = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / columns))
    grid = torch.ones(rows * columns, *images.shape[1:])
    grid[:n] = images.cpu()
    size = images.shape[-1]
    picture = grid.view(rows, columns, 3, size, size).permute(0, 3, 1, 4, 2).reshape(rows * size, columns * size, 3)
    try:
        write_png((picture.numpy() * 255 + 0.5).astype(np.uint8), out)
    except OSError as error:
        raise RunError(f"cannot write {out}: {error.strerror}") from None
    console.print(f"wrote {n} samples of {base!r} ({view or 'front'} view) to {out}")


@app.command("eval-3d")
@user_errors
def eval_3d(
    run_dir: Annotated[Path, typer.Argument(help="A run directory made with the embedded prior.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a summary.")] = False,
    probe: Annotated[str | None, typer.Option(help="Probe weights (default: the shipped probe).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Measure a result against the true shape of its prompt: probe accuracy of object, colour and view from 32
    views (16 azimuths at 15 and 45 degrees), the Janus rate (back views seen as front), and occupancy IoU."""
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
    format: Annotated[str, typer.Option("--format", help="glb, obj or ply (GLB and OBJ are written y-up).")] = "glb",
    resolution: Annotated[int, typer.Option(help="Marching-cubes grid samples per side.")] = 256,
    threshold: Annotated[float | None, typer.Option(help="Surface density (default: the density at which one render sample is half opaque).")] = None,
    decimate: Annotated[int | None, typer.Option(help="Simplify to about this many faces (needs fast-simplification).")] = None,
    keep_largest: Annotated[bool, typer.Option("--keep-largest", help="Keep only the largest connected piece.")] = False,
    out: Annotated[Path | None, typer.Option(help="Output file (default: RUN_DIR/mesh.FORMAT).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Extract a coloured triangle mesh (marching cubes on the density) and write it as GLB, OBJ or PLY."""
    from dreamfusion.export.mesh import MeshExportConfig, export_run
    from dreamfusion.typed_config import ConfigError

    try:
        config = MeshExportConfig(resolution=resolution, threshold=threshold, decimate_faces=decimate, keep_largest=keep_largest)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    path = export_run(run_dir, format, device=device, out=out, config=config)  # type: ignore[arg-type]
    console.print(f"wrote {path}")


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


def main() -> None:
    try:
        app()
    except BrokenPipeError:
        sys.exit(1)


if __name__ == "__main__":
    main()
