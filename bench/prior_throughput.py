"""Throughput of embedded-prior training: does the 9-minute budget give enough steps?

Usage: python bench/prior_throughput.py OUT_JSON [--batch-size 256] [--steps 30] [--device cuda] [--compile]
       python bench/prior_throughput.py /tmp/t.json --batch-size 8 --steps 3 --device cpu   (smoke test)

Measures, separately: the one-time SDF bake, rendering a batch of procedural images, rendering one pool
refresh, and a training step on a fixed batch (model + optimizer + EMA only). From these it predicts the
seconds per step of a real run (training + its share of pool refreshes) and the steps that fit in 9 minutes.
Prints a table and one JSON line, and writes the JSON to OUT_JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from dreamfusion.embedded.model import parameter_count
from dreamfusion.embedded.train import PriorTrainer, TrainPriorConfig
from dreamfusion.procedural.dataset import sample_batch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, repeats: int) -> float:
    """Mean seconds per call over ``repeats`` calls, synchronized."""
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_json", type=Path)
    parser.add_argument("--batch-size", type=int, default=TrainPriorConfig().batch_size)
    parser.add_argument("--steps", type=int, default=30, help="timed training steps (after 5 warm-up steps)")
    parser.add_argument("--render-repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--minutes", type=float, default=9.0, help="budget to predict the step count for")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    config = dataclasses.replace(
        TrainPriorConfig(), batch_size=args.batch_size, compile=args.compile, pool_size=0, max_steps=10**9
    )
    generator = torch.Generator().manual_seed(0)

    start = time.perf_counter()
    fixed = sample_batch(config.data, min(8, args.batch_size), generator, device)
    _sync(device)
    bake_s = time.perf_counter() - start
    render_batch_s = _timed(lambda: sample_batch(config.data, args.batch_size, generator, device), device,
                            args.render_repeats)
    refresh = min(TrainPriorConfig().pool_refresh, args.batch_size)  # the default refresh, capped for CPU smoke runs
    render_refresh_s = _timed(lambda: sample_batch(config.data, refresh, generator, device), device,
                              args.render_repeats)
    fixed = sample_batch(config.data, args.batch_size, generator, device)

    trainer = PriorTrainer(config, device, source=lambda n, g: fixed)
    warmup = min(5, args.steps)
    start = time.perf_counter()
    for _ in range(warmup):
        trainer.step(0.5)
    _sync(device)
    warmup_s = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    train_step_s = _timed(lambda: trainer.step(0.5), device, args.steps)
    loss = trainer.take_mean_loss()

    defaults = TrainPriorConfig()
    pool_step_s = train_step_s + render_refresh_s * defaults.pool_refresh / refresh / defaults.pool_refresh_every
    fresh_step_s = train_step_s + render_batch_s
    pool_fill_s = render_batch_s * defaults.pool_size / args.batch_size
    budget_s = args.minutes * 60.0
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "parameters": parameter_count(trainer.model),
        "batch_size": args.batch_size,
        "compile": args.compile,
        "sdf_bake_s": bake_s,
        "render_batch_s": render_batch_s,
        f"render_{refresh}_s": render_refresh_s,
        "warmup_steps_s": warmup_s,
        "train_step_s": train_step_s,
        "train_it_per_s": 1.0 / train_step_s,
        "train_images_per_s": args.batch_size / train_step_s,
        "pool_step_s": pool_step_s,
        "fresh_step_s": fresh_step_s,
        "pool_fill_s": pool_fill_s,
        f"predicted_steps_{args.minutes:g}min_pool": int((budget_s - bake_s - pool_fill_s - warmup_s) / pool_step_s),
        f"predicted_steps_{args.minutes:g}min_fresh": int((budget_s - bake_s - warmup_s) / fresh_step_s),
        "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None,
        "loss": loss,
    }
    width = max(len(k) for k in result)
    for key, value in result.items():
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown}")
    line = json.dumps(result)
    print(line, flush=True)
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(line + "\n")


if __name__ == "__main__":
    main()
