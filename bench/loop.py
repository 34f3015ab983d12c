"""Speed and peak memory of the optimization loop (64x64 renders unless told): the renderer alone, the prior
alone, the whole step (figures read back each step, then every ``log_every`` steps as a run does, then the same
with the renderer's sample compaction forced on, with the hash grid in tensor operations instead of the fused
kernels, and with the field's queries launched op by op instead of replayed from CUDA graphs).

    python bench/loop.py OUT.json [--device cpu|cuda] [--prior analytic|embedded] [--steps N] [--preset default]
                         [--resolution 64]

Prints a table and one JSON line (also written to OUT.json).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from profiling import write_profile  # bench/profiling.py, beside this script

from dreamfusion.cameras import sample_cameras
from dreamfusion.config import build_config
from dreamfusion.priors import build_prior
from dreamfusion.sds import score_distillation
from dreamfusion.trainer import StepViews, Trainer


def measure(fn: Callable[[], object], steps: int, device: torch.device) -> dict[str, float]:
    for _ in range(3):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS
    return {"it_per_s": steps / seconds, "ms_per_it": 1000 * seconds / steps, "peak_mb": peak_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="where to write the JSON results")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--prior", default="analytic")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--resolution", type=int, default=64, help="render side in pixels (the preview preset's is 32)")
    parser.add_argument("--normals", choices=("analytic", "autograd", "finite_difference"), default="analytic")
    parser.add_argument("--compile-field", action="store_true", help="trainer.compile_field: torch.compile the field")
    parser.add_argument("--profile", type=Path, help="also write the top operators of 5 whole steps (torch.profiler) here")
    args = parser.parse_args()

    device = torch.device(args.device)
    config = build_config(
        args.preset,
        overrides={
            "prompt": "a red chair",
            "device": args.device,
            "prior": {"name": args.prior},
            "camera": {"resolution": args.resolution},
            "trainer": {"batch_size": args.batch_size, "compile_field": args.compile_field},
            "field": {"normals": args.normals},
            "shading": {"albedo_warmup_steps": 0},
        },
    )
    prior = build_prior(config.prior, device)
    trainer = Trainer(config, prior, device)
    generator = torch.Generator().manual_seed(0)
    cameras = sample_cameras(config.camera, args.batch_size, generator).to(device)

    def render_only() -> None:  # as a training step renders (replayed from CUDA graphs where it does)
        with trainer.matmul_precision():
            trainer.render_views(StepViews(cameras, "lambertian"), with_normals=True).rgb.sum().backward()

    latents = prior.encode_images(torch.rand(args.batch_size, 3, prior.resolution, prior.resolution, device=device))
    cond, uncond = trainer.guidance.embeddings.for_views(cameras.view_labels)
    scale = trainer.guidance.scale

    def prior_only() -> None:
        with trainer._autocast():
            score_distillation(prior, latents, cond, uncond, scale, (0.02, 0.98), "sds", generator)

    every = config.trainer.log_every

    def read_in_batches(trainer: Trainer) -> Callable[[], None]:
        pending: list = []

        def step() -> None:  # as Trainer.fit runs: figures read once per log_every steps
            pending.append(trainer.queue_step())
            if len(pending) == every:
                trainer.read_steps(pending)
                pending.clear()

        return step

    # The same loop with the renderer's sample compaction forced on (it is off for CUDA training renders).
    compacting = Trainer(replace(config, renderer=replace(config.renderer, sample_compaction="on")), prior, device)
    # And with the hash grid in tensor operations (the fused kernels run on CUDA only).
    encoding = replace(config.field.encoding, kernel="torch")
    tensor_ops = Trainer(replace(config, field=replace(config.field, encoding=encoding)), prior, device)
    # And with every field query launched op by op (no CUDA graphs).
    eager = Trainer(replace(config, trainer=replace(config.trainer, cuda_graphs=False)), prior, device)

    rows = {
        "renderer (fwd+bwd, shaded)": measure(render_only, args.steps, device),
        "prior (SDS, CFG batch 2)": measure(prior_only, args.steps, device),
        "whole step, read each step": measure(trainer.train_step, args.steps, device),
        f"whole step, read every {every}": measure(read_in_batches(trainer), args.steps, device),
        "same, compacted samples": measure(read_in_batches(compacting), args.steps, device),
        "same, tensor-op hash grid": measure(read_in_batches(tensor_ops), args.steps, device),
        "same, no CUDA graphs": measure(read_in_batches(eager), args.steps, device),
    }
    profiled = write_profile(trainer.train_step, device, args.profile) if args.profile is not None else None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"\nloop benchmark: prior={args.prior} preset={args.preset} batch={args.batch_size} {args.resolution}x{args.resolution} "
          f"samples={config.renderer.num_samples}+{config.renderer.num_importance} normals={args.normals}"
          f"{' compiled' if args.compile_field else ''} on {name}, torch {torch.__version__}")
    print(f"{'part':<30}{'it/s':>10}{'ms/it':>10}{'peak MB':>10}")
    for part, row in rows.items():
        print(f"{part:<30}{row['it_per_s']:>10.1f}{row['ms_per_it']:>10.1f}{row['peak_mb']:>10.0f}")
    if profiled is not None:
        print(f"whole step under the profiler: {profiled['profiled_wall_ms']:.1f} ms, GPU kernels {profiled['kernel_ms']:.1f} ms")
    record = {"bench": "loop", "device": name, "prior": args.prior, "preset": args.preset, "batch_size": args.batch_size, "resolution": args.resolution,
              "normals": args.normals, "compile_field": args.compile_field, "torch": torch.__version__, "results": rows, "profiled": profiled}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2))
    print(json.dumps(record))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
