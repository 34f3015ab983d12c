"""Data-parallel scaling at equal wall time: `generate` under torchrun with 1, 2, 4 processes, then `eval-3d`.

    PYTHONPATH=src python bench/scaling.py OUT_JSON --gpus 1 2 4 --minutes 2 --prompts "a red chair" "a blue mug"
    python bench/scaling.py /tmp/s.json --gpus 1 --minutes 0.02 --device cpu --config tiny.yaml \\
        --calibration-iters 3 --prompts "a red chair"                                             (CPU smoke)

For each process count N a short calibration run (``--calibration-iters``, one metrics line per step) gives
the steady-state it/s; every prompt then trains for ``minutes * 60 * it/s`` steps, so each N gets the same
training time and N ranks see N times as many views per step (DDP-averaged gradients, effective batch N x
the preset's batch size). Each run is scored by ``evaluate_run`` (probe accuracies, Janus rate, IoU).
Prints a table; OUT_JSON holds every figure and is rewritten after each run, so a cut-off job keeps what
it finished. Counts above the visible GPUs are skipped. Runs land in ``--workdir`` (default: beside OUT_JSON).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml

from dreamfusion.distributed import torchrun_command
from dreamfusion.evaluate import HeadlineScores, evaluate_run
from dreamfusion.run import prompt_slug


@dataclass
class Row:
    gpus: int
    prompt: str
    ok: bool
    calibrated_it_per_s: float = 0.0
    steps: int = 0
    train_seconds: float | None = None
    wall_seconds: float = 0.0
    views_per_s: float | None = None
    error: str = ""
    scores: HeadlineScores | None = None


def generate(
    gpus: int, prompt: str, iters: int, run_dir: Path, config: Path, args: argparse.Namespace
) -> tuple[bool, str, float]:
    """One torchrun'd `dreamfusion generate`; (ok, its error line, wall seconds)."""
    argv = ["generate", prompt, "--prior", args.prior, "--iters", str(iters), "--out", str(run_dir), "--overwrite",
            "--device", args.device, "--preset", args.preset, "--seed", str(args.seed), "--config", str(config)]  # fmt: skip
    started = time.perf_counter()
    finished = subprocess.run(torchrun_command(argv, gpus), capture_output=True, text=True)
    lines = finished.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")] or lines[-1:]
    return finished.returncode == 0, (errors or ["failed"])[0], time.perf_counter() - started


def calibrate(gpus: int, prompt: str, config: Path, workdir: Path, args: argparse.Namespace) -> float:
    """Median it/s of the steps after the first few of a short run."""
    run_dir = workdir / f"calibrate-{gpus}"
    ok, error, _ = generate(gpus, prompt, args.calibration_iters, run_dir, config, args)
    if not ok:
        raise RuntimeError(f"calibration with {gpus} processes failed: {error}")
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    warm = [line["it_per_s"] for line in lines if line["step"] >= min(5, args.calibration_iters // 3)]
    return statistics.median(warm or [line["it_per_s"] for line in lines])


def train_seconds(run_dir: Path) -> float | None:
    found = re.search(r"trained to step \d+ in ([\d.]+) s", (run_dir / "run.log").read_text())
    return float(found.group(1)) if found else None


def merged_config(args: argparse.Namespace, workdir: Path, log_every: int | None) -> Path:
    """The user's --config file with a log line every ``log_every`` steps (for calibration)."""
    data = yaml.safe_load(args.config.read_text()) if args.config else {}
    data = data or {}
    if log_every is not None:
        data["trainer"] = {**data.get("trainer", {}), "log_every": log_every}
    path = workdir / ("calibration.yaml" if log_every else "run.yaml")
    path.write_text(yaml.safe_dump(data))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="JSON file of the results")
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 2, 4], help="process counts to compare")
    parser.add_argument("--minutes", type=float, default=2.0, help="training time per run")
    parser.add_argument("--prompts", nargs="+", default=["a red chair"], help="prompts in the embedded vocabulary")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--prior", default="embedded")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--config", type=Path, default=None, help="YAML overrides passed to generate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calibration-iters", type=int, default=40)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or args.out.with_suffix("")
    workdir.mkdir(parents=True, exist_ok=True)
    run_config, calibration_config = merged_config(args, workdir, None), merged_config(args, workdir, 1)
    on_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    visible = torch.cuda.device_count() if on_cuda else None
    eval_device = "cuda" if on_cuda else "cpu"

    rows: list[Row] = []
    for gpus in args.gpus:
        if visible is not None and gpus > visible:
            print(f"skipping {gpus} processes: only {visible} GPUs are visible")
            continue
        it_per_s = calibrate(gpus, args.prompts[0], calibration_config, workdir, args)
        steps = max(1, int(args.minutes * 60 * it_per_s))
        for prompt in args.prompts:
            run_dir = workdir / f"{gpus}gpu" / prompt_slug(prompt)
            ok, error, wall = generate(gpus, prompt, steps, run_dir, run_config, args)
            row = Row(gpus, prompt, ok, calibrated_it_per_s=it_per_s, steps=steps if ok else 0, wall_seconds=wall,
                      error="" if ok else error)
            if ok:
                row.train_seconds = train_seconds(run_dir)
                row.views_per_s = steps * gpus / row.train_seconds if row.train_seconds else None
                result = evaluate_run(run_dir, eval_device)
                (run_dir / "eval.json").write_text(result.to_json())
                row.scores = result.headline()
            rows.append(row)
            record = {"bench": "scaling", "minutes": args.minutes, "preset": args.preset, "prior": args.prior,
                      "device": args.device, "rows": [asdict(r) for r in rows]}  # fmt: skip
            args.out.write_text(json.dumps(record, indent=2))

    def fmt(value: float | None, width: int = 7, digits: int = 2) -> str:
        return f"{'n/a':>{width}}" if value is None else f"{value:{width}.{digits}f}"

    print(f"\nscaling at {args.minutes} min of training per run: preset={args.preset} prior={args.prior} device={args.device}")
    print(f"{'gpus':>4} {'prompt':<18}{'it/s':>7}{'steps':>7}{'train s':>8}{'views/s':>8}"
          f"{'obj':>7}{'col':>7}{'both':>7}{'view':>7}{'janus':>7}{'IoU':>7}")  # fmt: skip
    for r in rows:
        head = f"{r.gpus:>4} {r.prompt:<18}{r.calibrated_it_per_s:7.2f}"
        s = r.scores
        if s is None:
            print(f"{head}  FAILED: {r.error}")
            continue
        print(f"{head}{r.steps:7d}{fmt(r.train_seconds, 8, 1)}{fmt(r.views_per_s, 8, 1)}{fmt(s.object_accuracy)}"
              f"{fmt(s.colour_accuracy)}{fmt(s.object_colour_accuracy)}{fmt(s.view_accuracy)}{fmt(s.janus_rate)}"
              f"{fmt(s.occupancy_iou)}")  # fmt: skip
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
