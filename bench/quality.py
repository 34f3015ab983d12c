"""3D quality of the embedded prior end to end: `generate` then `eval-3d` on 12 prompts, one per object kind
(varied colours, 3 of them held-out colour x object pairs the prior never saw), with medians.

    python bench/quality.py OUT_DIR [--device cuda] [--preset default] [--iters N] [--config YAML] [--parallel K]
                            [--prompts N] [--start I] [--select I,J,..] [--seed S] [--seeds N] [--sheet PNG]

Each run lands in OUT_DIR/<slug>/ (OUT_DIR/<slug>-seed<S>/ with ``--seeds N``: every prompt with seeds S ..
S + N - 1, medians over prompts x seeds); the table is printed and OUT_DIR/quality.json holds every figure.
``--sheet`` also writes one image with a row per prompt (first turntable frame, then the 8-view preview).
``--parallel K`` runs K prompts at once on the same device (the renderer is launch-bound at 64x64, so a
large GPU has room for several).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from dreamfusion.evaluate import HeadlineScores, evaluate_run

PROMPTS: tuple[tuple[str, bool], ...] = (
    ("a blue chair", True),
    ("a green car", True),
    ("a pink rocket", True),
    ("a brown table", False),
    ("a red house", False),
    ("a yellow mug", False),
    ("a white snowman", False),
    ("a purple lamp", False),
    ("an orange cube", False),
    ("a green sphere", False),
    ("a red cylinder", False),
    ("a blue torus", False),
)
"""(prompt, held out): the held-out pairs come from dreamfusion.procedural.objects.HELD_OUT_PAIRS."""


@dataclass
class PromptRow:
    prompt: str
    held_out: bool
    seed: int
    seconds: float
    ok: bool
    error: str = ""
    scores: HeadlineScores | None = None
    restarts: int = 0
    """Haze or empty-scene restarts on a new seed (the "started over" lines of run.log)."""


def run_dir_of(out_dir: Path, prompt: str, seed: int, args: argparse.Namespace) -> Path:
    from dreamfusion.run import prompt_slug

    return out_dir / (prompt_slug(prompt) if args.seeds == 1 else f"{prompt_slug(prompt)}-seed{seed}")


def run_prompt(prompt: str, held_out: bool, seed: int, out_dir: Path, args: argparse.Namespace) -> PromptRow:
    run_dir = run_dir_of(out_dir, prompt, seed, args)
    command = [sys.executable, "-m", "dreamfusion", "generate", prompt, "--out", str(run_dir), "--overwrite",
               "--device", args.device, "--preset", args.preset, "--seed", str(seed)]
    if args.iters:
        command += ["--iters", str(args.iters)]
    if args.config:
        command += ["--config", str(args.config)]
    started = time.perf_counter()
    finished = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    log = run_dir / "run.log"
    restarts = log.read_text().count("started over on seed") if log.is_file() else 0
    if finished.returncode != 0:
        error = finished.stderr.strip().splitlines()[-1] if finished.stderr.strip() else "failed"
        return PromptRow(prompt, held_out, seed, seconds, ok=False, error=error, restarts=restarts)
    result = evaluate_run(run_dir, args.device)
    (run_dir / "eval.json").write_text(result.to_json())
    return PromptRow(prompt, held_out, seed, seconds, ok=True, scores=result.headline(), restarts=restarts)


def write_sheet(run_dirs: list[Path], path: Path) -> None:
    """One row per run with outputs: the turntable's first frame (lambertian | textureless) beside the
    8-view preview, all at the preview's scale."""
    import imageio.v3 as iio
    import numpy as np

    rows = []
    for run_dir in run_dirs:
        if not (run_dir / "preview.png").is_file():
            continue
        preview = iio.imread(run_dir / "preview.png")[..., :3]
        side = preview.shape[0] // 2
        frame = iio.imread(run_dir / "turntable.gif", index=0)[..., :3]
        step = max(1, frame.shape[0] // side)
        rows.append(np.concatenate([frame[::step, ::step][:side], preview[:side], preview[side:]], axis=1))
    if rows:
        width = max(row.shape[1] for row in rows)
        padded = [np.pad(row, ((0, 0), (0, width - row.shape[1]), (0, 0))) for row in rows]
        path.parent.mkdir(parents=True, exist_ok=True)
        iio.imwrite(path, np.concatenate(padded, axis=0))


def median(rows: list[PromptRow], name: str) -> float | None:
    """Median over the finished rows of a score, or of ``seconds``."""
    values = [getattr(row if name == "seconds" else row.scores, name) for row in rows if row.scores is not None]
    values = [value for value in values if value is not None]
    return statistics.median(values) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="folder for the runs and quality.json")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--iters", type=int, default=None, help="override the preset's iterations")
    parser.add_argument("--seed", type=int, default=0, help="the first seed")
    parser.add_argument("--seeds", type=int, default=1, help="run every prompt with this many seeds")
    parser.add_argument("--config", type=Path, default=None, help="YAML of config overrides for every run")
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--prompts", type=int, default=len(PROMPTS), help="run only N prompts")
    parser.add_argument("--start", type=int, default=0, help="the first prompt to run (0-based), e.g. to split the bench")
    parser.add_argument("--select", type=lambda text: [int(i) for i in text.split(",")], default=None,
                        help="run only the prompts of these 0-based indices, e.g. 0,3,5 (instead of --start/--prompts)")
    parser.add_argument("--sheet", type=Path, default=None, help="write a contact sheet of every run here (PNG)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    chosen = [PROMPTS[i] for i in args.select] if args.select else PROMPTS[args.start : args.start + args.prompts]
    jobs = [(prompt, held_out, args.seed + k) for prompt, held_out in chosen for k in range(args.seeds)]
    started = time.perf_counter()
    partial = args.out / "rows.jsonl"  # each row as it finishes, so a run cut short still leaves its figures
    partial.write_text("")
    lock = threading.Lock()

    def run_and_record(item: tuple[str, bool, int]) -> PromptRow:
        row = run_prompt(*item, args.out, args)
        with lock, partial.open("a") as stream:
            stream.write(json.dumps(asdict(row)) + "\n")
        return row

    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        rows = list(pool.map(run_and_record, jobs))
    wall = time.perf_counter() - started

    def fmt(value: float | None) -> str:
        return "   n/a" if value is None else f"{value:6.2f}"

    print(f"\n3D quality: preset={args.preset} iters={args.iters or 'preset'} device={args.device} parallel={args.parallel}"
          f" seeds={args.seed}..{args.seed + args.seeds - 1}")
    names = ("object_accuracy", "colour_accuracy", "object_colour_accuracy", "view_accuracy", "janus_rate",
             "occupancy_iou", "best_turn_iou", "aligned_iou", "albedo_noise", "shading_speckle", "mesh_occupancy_iou", "mesh_silhouette_iou",
             "mesh_colour_difference")  # fmt: skip
    header = ("obj", "col", "both", "view", "janus", "IoU", "IoU*", "aIoU", "noise", "speck", "mIoU", "sil", "dRGB")
    print(f"{'prompt':<20}{'held':>5}{'seed':>5}" + "".join(f"{name:>7}" for name in header) + f"{'sec':>7}{'rst':>4}")
    for row in rows:
        s = row.scores
        lead = f"{row.prompt:<20}{'yes' if row.held_out else '':>5}{row.seed:>5}"
        if s is None:
            print(f"{lead}  FAILED: {row.error}")
            continue
        print(lead + "".join(f" {fmt(getattr(s, name))}" for name in names) + f"{row.seconds:7.0f}{row.restarts:4d}")
    medians = {name: median(rows, name) for name in (*names, "seconds")}
    print(f"{'median':<30}" + "".join(f" {fmt(medians[name])}" for name in names) + f"{medians['seconds'] or 0:7.0f}")
    meshes = sum(row.scores is not None and row.scores.mesh_silhouette_iou is not None for row in rows)
    worst = min((row.scores.mesh_silhouette_iou for row in rows if row.scores and row.scores.mesh_silhouette_iou is not None),
                default=None)  # fmt: skip
    print(f"meshes: {meshes} of {len(rows)} results; lowest mesh outline IoU {fmt(worst)}")
    restarted = [row for row in rows if row.restarts]
    print(f"restarts (haze or empty scene, on a new seed): {sum(row.restarts for row in rows)} in {len(restarted)} of {len(rows)} runs")
    record = {"bench": "quality", "preset": args.preset, "iters": args.iters, "device": args.device,
              "parallel": args.parallel, "seeds": list(range(args.seed, args.seed + args.seeds)), "wall_seconds": wall, "medians": medians, "meshes": meshes,
              "lowest_mesh_silhouette_iou": worst, "restarts": sum(row.restarts for row in rows), "rows": [asdict(row) for row in rows]}
    (args.out / "quality.json").write_text(json.dumps(record, indent=2))
    if args.sheet is not None:
        write_sheet([run_dir_of(args.out, prompt, seed, args) for prompt, _, seed in jobs], args.sheet)
    print("IoU*: the best IoU against the true object turned about the vertical axis (a diagnostic: a right shape facing the wrong way)")
    print("noise: albedo speckle, the colour's standard deviation over the object's solid pixels")
    print("speck: shading speckle, textureless renders against their 3x3 median over the object's inner pixels")
    print("aIoU: the best IoU against the true object turned, moved onto the field's centre and scaled (a diagnostic)")
    print("mIoU: mesh.glb against the true object; sil: its outline IoU with the field's renders; dRGB: its colour difference")
    print("rst: restarts on a new seed after a haze or an empty scene (see run.log)")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
