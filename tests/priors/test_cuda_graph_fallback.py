"""A failed CUDA-graph capture falls back to eager calls with one warning (runs anywhere)."""

from __future__ import annotations

import warnings

import pytest
import torch

from dreamfusion.priors.cuda_graph import GraphedForward


class FailingCapture(GraphedForward):
    def _capture(self, sample: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor):
        raise RuntimeError("operation not permitted when stream is capturing")


def test_a_failed_capture_warns_once_and_runs_eagerly() -> None:
    calls: list[int] = []

    def forward(sample: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        calls.append(sample.shape[0])
        return sample * timesteps[:, None] + context.sum()

    graphed = FailingCapture(forward)
    sample, timesteps, context = torch.ones(2, 3), torch.tensor([1.0, 2.0]), torch.ones(4)
    with pytest.warns(RuntimeWarning, match="running the U-Net eagerly"):
        first = graphed(sample, timesteps, context)
    assert torch.equal(first, forward(sample, timesteps, context))
    assert graphed.eager_fallback
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        assert torch.equal(graphed(sample * 2, timesteps, context), forward(sample * 2, timesteps, context))
