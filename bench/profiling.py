"""Per-operator kernel-time tables for the benchmarks (torch.profiler), shared by ``loop.py`` and ``sds_speed.py``."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch


def write_profile(step: Callable[[], object], device: torch.device, path: Path, steps: int = 5) -> dict[str, float]:
    """Profile ``steps`` calls of ``step``; write the top operators to ``path``. Returns wall ms per call under the
    profiler and, on CUDA, GPU kernel ms per call (kernels only, so nothing is counted twice); the gap between
    the two is time the GPU waited for the host."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    if cuda:
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize(device)
    wall_ms = (time.perf_counter() - start) / steps * 1e3
    events = prof.key_averages()
    kernel_ms = sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA) / steps / 1e3
    sort_by = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(events.table(sort_by=sort_by, row_limit=45, max_name_column_width=70))
    return {"profiled_wall_ms": wall_ms, "kernel_ms": kernel_ms if cuda else float("nan")}
