"""The wall-clock and step budget of a training run (the prior's and the probe's)."""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Budget:
    """A run ends when either budget is spent; ``None`` leaves that one unlimited."""

    minutes: float | None
    max_steps: int | None
    started: float
    """``time.monotonic()`` when this process's part of the run began."""
    elapsed_before: float = 0.0
    """Seconds spent by the earlier parts of a resumed run: they count against ``minutes``."""

    def elapsed(self) -> float:
        """Wall-clock seconds of the whole run so far."""
        return self.elapsed_before + time.monotonic() - self.started

    def fraction(self, step: int) -> float:
        """The share spent after ``step`` steps: the larger of the time and step shares (0 without a budget)."""
        fractions = [0.0]
        if self.minutes is not None:
            fractions.append(self.elapsed() / (self.minutes * 60.0))
        if self.max_steps is not None:
            fractions.append(step / self.max_steps)
        return max(fractions)
