"""Replaying a no-grad network forward from a captured CUDA graph.

The diffusion U-Nets the priors call once per SDS step are hundreds of small kernels at batch 2; on a fast
GPU they are bound by kernel launches, not arithmetic, and a graph replay removes that overhead.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor


class GraphedForward:
    """A CUDA graph of ``forward(sample, timesteps, context) -> Tensor`` with static input buffers.

    Captured on the first call for each (shapes, dtypes); later calls copy into the buffers and replay. Only
    for CUDA, no-grad calls; the returned tensor is a clone (the graph's output buffer is overwritten by the
    next replay). If a capture fails (a model with an operation graphs cannot hold), it warns once and
    runs ``forward`` eagerly from then on: slower, never wrong.
    """

    def __init__(self, forward: Callable[[Tensor, Tensor, Tensor], Tensor], warmup: int = 2) -> None:
        self.forward = forward
        self.warmup = warmup
        self._graphs: dict[tuple[Any, ...], tuple[Any, tuple[Tensor, Tensor, Tensor], Tensor]] = {}
        self._pool: Any = None
        self.eager_fallback = False

    def __call__(self, sample: Tensor, timesteps: Tensor, context: Tensor) -> Tensor:
        if self.eager_fallback:
            return self.forward(sample, timesteps, context)
        # Autocast changes which kernels run, so a graph captured under it only replays under the same state.
        autocast = (torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))
        key = (autocast, *((tuple(t.shape), t.dtype) for t in (sample, timesteps, context)))
        if key not in self._graphs:
            try:
                self._graphs[key] = self._capture(sample, timesteps, context)
            except Exception as error:  # noqa: BLE001 - any capture failure: fall back to eager calls
                self.eager_fallback = True
                warnings.warn(f"CUDA-graph capture failed ({type(error).__name__}: {str(error)[:200]}); running the U-Net eagerly",
                              RuntimeWarning, stacklevel=2)
                return self.forward(sample, timesteps, context)
        graph, (s, t, c), out = self._graphs[key]
        s.copy_(sample)
        t.copy_(timesteps)
        c.copy_(context)
        graph.replay()
        return out.clone()

    def _capture(self, sample: Tensor, timesteps: Tensor, context: Tensor) -> Any:
        static = (sample.clone(), timesteps.clone(), context.clone())
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.no_grad(), torch.cuda.stream(stream):
            for _ in range(self.warmup):
                self.forward(*static)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        with torch.no_grad(), torch.cuda.graph(graph, pool=self._pool):
            out = self.forward(*static)
        return graph, static, out
