"""Runs that collapse: into a haze that fills every view, or into nothing at all.

Measured at default settings on an H200 with the embedded prior: "a pink rocket" and "a purple lamp" fill
their views (mean opacity 1.00) from about step 100 to 200 and never recover, while healthy runs stay between
0.1 and 0.5. A larger opacity penalty (1e-2 or 1e-1 instead of 1e-3) did not prevent it; another seed did in
two of four runs. So a collapse seen early restarts the run on the next seed, a few times at most.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

from dreamfusion.typed_config import MAX_SEED


@dataclass(frozen=True)
class CollapseConfig:
    """When a run counts as collapsed, and how often it starts over on a new seed."""

    restarts: int = 3
    """New seeds tried before a collapsed run is left to finish as it is (0: never restart)."""
    haze_opacity: float = 0.97
    """Mean opacity of the step's views at or above which they are filled (haze)."""
    empty_opacity: float = 0.005
    """Mean opacity at or below which nothing is visible."""
    window: int = 50
    """Steps the mean opacity must stay beyond a limit."""
    after: int = 50
    """Steps before watching: the initial blob needs a few steps to settle."""
    until: float = 0.34
    """Fraction of the run after which a collapse is only logged: restarting late would waste the steps done."""

    def __post_init__(self) -> None:
        if self.restarts < 0 or self.window <= 0 or self.after < 0 or not 0.0 <= self.until <= 1.0:
            raise ValueError("collapse restarts and after must be >= 0, window positive, until in [0, 1]")
        if not 0.0 <= self.empty_opacity < self.haze_opacity <= 1.0:
            raise ValueError("collapse opacities must satisfy 0 <= empty_opacity < haze_opacity <= 1")


@dataclass(frozen=True)
class Collapse:
    kind: Literal["haze", "empty"]
    step: int
    opacity: float
    """Mean opacity over the window."""

    def describe(self) -> str:
        what = "a haze fills every view" if self.kind == "haze" else "nothing is visible"
        return f"step {self.step}: {what} (mean opacity {self.opacity:.3f} over the last steps)"


class RunCollapsed(Exception):
    """Raised from a step callback to stop a collapsed run so that it can start over."""

    def __init__(self, collapse: Collapse) -> None:
        super().__init__(collapse.describe())
        self.collapse = collapse


class CollapseWatch:
    """Reads the mean opacity of logged steps and says when the last ``window`` steps all lay beyond a limit.
    Every rank sees the same (all-reduced) opacity, so all of them reach the same verdict."""

    def __init__(self, config: CollapseConfig, iters: int) -> None:
        self.config = config
        self.last_step = int(config.until * iters)
        self.readings: deque[tuple[int, float]] = deque()

    def see(self, step: int, opacity: float) -> Collapse | None:
        config = self.config
        self.readings.append((step, opacity))
        while self.readings and self.readings[0][0] <= step - config.window:
            self.readings.popleft()
        if step < config.after + config.window or step > self.last_step or len(self.readings) < 2:
            return None
        values = [value for _, value in self.readings]
        mean = sum(values) / len(values)
        if min(values) >= config.haze_opacity:
            return Collapse("haze", step, mean)
        if max(values) <= config.empty_opacity:
            return Collapse("empty", step, mean)
        return None


def attempt_seed(seed: int, attempt: int) -> int:
    """The seed of the ``attempt``-th start of a run (0: the run's own seed), kept in the range seeds may take."""
    return seed if attempt == 0 else (seed + attempt) % (MAX_SEED // 2)
