"""3D quality of the embedded prior end to end: `generate` then `eval-3d` on 12 prompts, one per object kind
(varied colours, 3 of them held-out colour x object pairs the prior never saw), with medians.

    python bench/quality.py OUT_DIR [--device cuda] [--preset default] [--iters N] [--parallel K] [--prompts N]

Each run lands in OUT_DIR/<slug>/; the table is printed and OUT_DIR/quality.json holds every figure.
``--parallel K`` runs K prompts at once on the same device (the renderer is launch-bound at 64x64, so a
large GPU has room for several).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

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
    seconds: float
    ok: bool
    error: str = ""
    object_accuracy: float | None = None
    colour_accuracy: float | None = None
    object_colour_accuracy: float | None = None
    view_accuracy: float | None = None
    janus_rate: float | None = None
    occupancy_iou: float | None = None


def run_prompt(prompt: str, held_out: bool, out_dir: Path, args: argparse.Namespace) -> PromptRow:
    from dreamfusion.evaluate import evaluate_run
    from dreamfusion.run import prompt_slug

    run_dir = out_dir / prompt_slug(prompt)
    command = [sys.executable, "-m", "dreamfusion", "generate", prompt, "--out", str(run_dir), "--overwrite",
               "--device", args.device, "--preset", args.preset, "--seed", str(args.seed)]
    if args.iters:
        command += ["--iters", str(args.iters)]
    started = time.perf_counter()
    finished = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if finished.returncode != 0:
        return PromptRow(prompt, held_out, seconds, ok=False, error=finished.stderr.strip().splitlines()[-1:][0] if finished.stderr.strip() else "failed")
    result = evaluate_run(run_dir, args.device)
    (run_dir / "eval.json").write_text(result.to_json())
    probe = result.probe
    return PromptRow(
        prompt, held_out, seconds, ok=True,
        object_accuracy=probe.object_accuracy, colour_accuracy=probe.colour_accuracy,
        object_colour_accuracy=probe.object_colour_accuracy, view_accuracy=probe.view_accuracy,
        janus_rate=probe.janus_rate, occupancy_iou=result.occupancy_iou,
    )


def median(rows: list[PromptRow], name: str) -> float | None:
    values = [getattr(row, name) for row in rows if row.ok and getattr(row, name) is not None]
    return statistics.median(values) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="folder for the runs and quality.json")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--iters", type=int, default=None, help="override the preset's iterations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--prompts", type=int, default=len(PROMPTS), help="run only the first N prompts")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    chosen = PROMPTS[: args.prompts]
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        rows = list(pool.map(lambda item: run_prompt(item[0], item[1], args.out, args), chosen))
    wall = time.perf_counter() - started

    def fmt(value: float | None) -> str:
        return "   n/a" if value is None else f"{value:6.2f}"

    print(f"\n3D quality: preset={args.preset} iters={args.iters or 'preset'} device={args.device} parallel={args.parallel}")
    print(f"{'prompt':<20}{'held':>5}{'obj':>7}{'col':>7}{'both':>7}{'view':>7}{'janus':>7}{'IoU':>7}{'sec':>7}")
    for row in rows:
        if not row.ok:
            print(f"{row.prompt:<20}{'yes' if row.held_out else '':>5}  FAILED: {row.error}")
            continue
        print(f"{row.prompt:<20}{'yes' if row.held_out else '':>5}{fmt(row.object_accuracy)} {fmt(row.colour_accuracy)}"
              f"{fmt(row.object_colour_accuracy)} {fmt(row.view_accuracy)}{fmt(row.janus_rate)} {fmt(row.occupancy_iou)}"
              f"{row.seconds:7.0f}")
    names = ("object_accuracy", "colour_accuracy", "object_colour_accuracy", "view_accuracy", "janus_rate", "occupancy_iou", "seconds")
    medians = {name: median(rows, name) for name in names}
    print(f"{'median':<25}" + " ".join(fmt(medians[name]) for name in names[:-1]) + f"{medians['seconds'] or 0:7.0f}")
    record = {"bench": "quality", "preset": args.preset, "iters": args.iters, "device": args.device,
              "parallel": args.parallel, "wall_seconds": wall, "medians": medians, "rows": [asdict(row) for row in rows]}
    (args.out / "quality.json").write_text(json.dumps(record, indent=2))
    print(json.dumps(record))


if __name__ == "__main__":
    main()
