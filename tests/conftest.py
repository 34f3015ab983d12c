"""Shared fixtures: tiny configs that keep every CPU test fast."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from dreamfusion.config import RunConfig, build_config

TINY_OVERRIDES: dict[str, Any] = {
    "device": "cpu",
    "prior": {"name": "analytic"},
    "camera": {"resolution": 16},
    "field": {"encoding": {"levels": 4, "log2_table_size": 12, "base_resolution": 8, "max_resolution": 64}, "hidden": 16},
    "renderer": {"num_samples": 16},
    "shading": {"albedo_warmup_steps": 10},
    "trainer": {"iters": 20, "checkpoint_every": 10, "log_every": 5},
    "turntable": {"frames": 4, "resolution": 16},
}


@pytest.fixture(autouse=True)
def _deterministic_threads() -> None:
    torch.set_num_threads(1)


def tiny_config(**overrides: Any) -> RunConfig:
    """A run config small enough for a CPU test: 16 px renders, a small grid, the analytic prior."""
    merged: dict[str, Any] = {**TINY_OVERRIDES, "prompt": "a ball"}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return build_config("default", overrides=merged)
