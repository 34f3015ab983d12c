"""Where a training step makes the host wait for the device (CUDA only): every call site in dreamfusion that
ran a synchronizing operation (``.item()``, a boolean mask, a device-to-host copy ...) during queued steps, with
how often it did per step. The loop reads figures back only every ``log_every`` steps, so each site listed
here is a wait the step could lose.

    python bench/syncs.py OUT.json [--preset default] [--prior embedded] [--steps 10] [--warmup 20]

Prints a table and one JSON line (also written to OUT.json).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections import Counter
from dataclasses import replace
from pathlib import Path

import torch

import dreamfusion
from dreamfusion.config import build_config
from dreamfusion.priors import build_prior
from dreamfusion.trainer import Trainer

PACKAGE = str(Path(dreamfusion.__file__).resolve().parent)


def call_site() -> str:
    """The innermost frame inside the dreamfusion package: the line that asked for the synchronizing op."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename.startswith(PACKAGE):
            return f"{Path(frame.f_code.co_filename).relative_to(PACKAGE)}:{frame.f_lineno} ({frame.f_code.co_name})"
        frame = frame.f_back
    return "outside the package"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="where to write the JSON results")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--prior", default="embedded")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/syncs.py needs a CUDA device: only CUDA can report the host's waits")

    device = torch.device("cuda")
    config = replace(build_config(args.preset, overrides={"prior": {"name": args.prior}, "device": "cuda"}), prompt="a red chair")
    trainer = Trainer(config, build_prior(config.prior, device), device)
    for _ in range(args.warmup):
        trainer.train_step()

    sites: Counter[str] = Counter()
    original = warnings.showwarning

    def count(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001 - warnings' hook
        if "synchronizing" in str(message):
            sites[call_site()] += 1
        else:
            original(message, category, filename, lineno, file, line)

    warnings.showwarning = count
    warnings.simplefilter("always")
    torch.cuda.set_sync_debug_mode("warn")
    try:
        pending = [trainer.queue_step() for _ in range(args.steps)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
        warnings.showwarning = original
    trainer.read_steps(pending)

    print(f"\nhost waits in {args.steps} queued steps: preset={args.preset} prior={args.prior} on {torch.cuda.get_device_name(device)}")
    print(f"{'per step':>9}  call site")
    for site, calls in sites.most_common():
        print(f"{calls / args.steps:>9.1f}  {site}")
    print(f"{sum(sites.values()) / args.steps:>9.1f}  in all")
    record = {"bench": "syncs", "preset": args.preset, "prior": args.prior, "steps": args.steps,
              "per_step": {site: calls / args.steps for site, calls in sites.items()}}  # fmt: skip
    args.out.write_text(json.dumps(record, indent=2))
    print(json.dumps(record))


if __name__ == "__main__":
    main()
