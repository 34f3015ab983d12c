"""Typed schedules of a value over optimization steps."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Ramp:
    """``start`` until step ``delay``, then moves to ``end`` over ``steps`` steps and stays there.

    ``kind`` "linear" interpolates the value; "log" interpolates its logarithm, which suits weights that
    span orders of magnitude (the orientation loss weight goes from 1e-4 to 1e-2 in the paper).
    """

    start: float
    end: float | None = None
    steps: int = 0
    delay: int = 0
    kind: Literal["linear", "log"] = "linear"

    def __post_init__(self) -> None:
        if self.steps < 0 or self.delay < 0:
            raise ValueError("ramp steps and delay must be non-negative")
        if self.kind == "log" and (self.start <= 0 or (self.end is not None and self.end <= 0)):
            raise ValueError("a log ramp needs positive start and end")

    def __call__(self, step: int) -> float:
        if self.end is None or step <= self.delay:
            return self.start
        if self.steps == 0 or step >= self.delay + self.steps:
            return self.end
        fraction = (step - self.delay) / self.steps
        if self.kind == "log":
            return math.exp(math.log(self.start) + fraction * (math.log(self.end) - math.log(self.start)))
        return self.start + fraction * (self.end - self.start)


@dataclass(frozen=True)
class LearningRateSchedule:
    """Multiplier on the base learning rates: linear warm-up, then constant or cosine decay to ``min_factor``."""

    warmup_steps: int = 0
    decay: Literal["constant", "cosine"] = "constant"
    min_factor: float = 0.1

    def __post_init__(self) -> None:
        if self.warmup_steps < 0 or not 0.0 <= self.min_factor <= 1.0:
            raise ValueError("lr warmup_steps must be >= 0 and min_factor in [0, 1]")

    def factor(self, step: int, total_steps: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.decay == "constant":
            return 1.0
        span = max(total_steps - self.warmup_steps, 1)
        progress = min((step - self.warmup_steps) / span, 1.0)
        return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * progress))
