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
class WarmupCosine:
    """A linear warm-up over ``warmup_steps`` and a half-cosine decay from 1 to ``min_factor``.

    The warm-up counts steps; the decay follows the run's progress in [0, 1], which a time budget may set.
    """

    warmup_steps: int = 0
    min_factor: float = 0.1

    def __post_init__(self) -> None:
        if self.warmup_steps < 0 or not 0.0 <= self.min_factor <= 1.0:
            raise ValueError("lr warmup_steps must be >= 0 and min_factor in [0, 1]")

    def warmup(self, step: int) -> float:
        """(step + 1) / warmup_steps up to 1: the first step already moves."""
        return min(1.0, (step + 1) / max(1, self.warmup_steps))

    def decay(self, progress: float) -> float:
        """1 at progress 0, ``min_factor`` from progress 1 on."""
        return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    def learning_rate(self, peak: float, step: int, progress: float) -> float:
        """``peak`` times warm-up times decay: unlike LearningRateSchedule, the decay runs during the warm-up too."""
        return peak * self.warmup(step) * self.decay(progress)


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
        """The warm-up alone, then the decay over the steps that follow it."""
        curve = WarmupCosine(self.warmup_steps, self.min_factor)
        if step < self.warmup_steps:
            return curve.warmup(step)
        if self.decay == "constant":
            return 1.0
        return curve.decay((step - self.warmup_steps) / max(total_steps - self.warmup_steps, 1))


@dataclass(frozen=True)
class TimestepRange:
    """The range SDS draws its timesteps from, as fractions of the prior's schedule: ``start`` at the
    beginning of the run, moving linearly to ``end`` (if set) by its last step."""

    start: tuple[float, float] = (0.02, 0.98)
    """The paper's range."""
    end: tuple[float, float] | None = None
    """E.g. (0.02, 0.5): smaller noise levels late in the run refine detail."""

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value[0] <= value[1] <= 1.0:
                raise ValueError(f"timestep range {name} must satisfy 0 <= low <= high <= 1, got {value}")

    def __call__(self, progress: float) -> tuple[float, float]:
        """The range at ``progress`` in [0, 1] of the run."""
        if self.end is None:
            return self.start
        return (
            self.start[0] + (self.end[0] - self.start[0]) * progress,
            self.start[1] + (self.end[1] - self.start[1]) * progress,
        )
