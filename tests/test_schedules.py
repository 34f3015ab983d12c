"""Ramp, WarmupCosine and LearningRateSchedule, each pinned to its closed form with == (bit for bit)."""

import math

import pytest

from dreamfusion.embedded.probe import ProbeConfig
from dreamfusion.embedded.train import TrainPriorConfig
from dreamfusion.schedules import LearningRateSchedule, Ramp, TimestepRange, WarmupCosine

STEPS = range(0, 1500, 7)
PROGRESS = [0.0, 1e-9, 0.001, 0.1, 0.25, 1 / 3, 0.5, 2 / 3, 0.75, 0.9, 0.999999, 1.0, 1.25, 7.0]


def test_ramp_linear_with_delay() -> None:
    ramp = Ramp(start=1.0, end=3.0, steps=10, delay=10)
    assert [ramp(s) for s in (0, 10, 15, 20, 10**6)] == [1.0, 1.0, 2.0, 3.0, 3.0]
    assert all(ramp(s) == 1.0 + (s - 10) / 10 * 2.0 for s in range(11, 20))


def test_ramp_log_interpolates_the_logarithm() -> None:
    ramp = Ramp(start=1e-4, end=1e-2, steps=100, kind="log")
    assert ramp(0) == 1e-4 and ramp(100) == 1e-2 and ramp(1000) == 1e-2
    assert ramp(50) == pytest.approx(1e-3)
    for s in range(1, 100):
        assert ramp(s) == math.exp(math.log(1e-4) + s / 100 * (math.log(1e-2) - math.log(1e-4)))


def test_ramp_without_end_or_steps() -> None:
    assert Ramp(start=0.5)(10**6) == 0.5
    assert Ramp(start=0.5, end=2.0)(1) == 2.0  # no steps: jumps right after the delay
    assert Ramp(start=0.5, end=2.0, delay=3)(3) == 0.5


@pytest.mark.parametrize(
    "kwargs", [{"steps": -1}, {"delay": -1}, {"kind": "log", "start": 0.0, "end": 1.0}, {"kind": "log", "end": -1.0}]
)
def test_ramp_rejects_bad_values(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        Ramp(**{"start": 1.0, "end": 2.0, **kwargs})


@pytest.mark.parametrize("warmup_steps", [0, 1, 7, 100, 250])
@pytest.mark.parametrize("min_factor", [0.0, 0.02, 0.1, 0.37, 1.0])
def test_warmup_cosine_learning_rate_is_the_closed_form(warmup_steps: int, min_factor: float) -> None:
    schedule, peak = WarmupCosine(warmup_steps, min_factor), 5e-4
    for step in STEPS:
        for progress in PROGRESS:
            warmup = min(1.0, (step + 1) / max(1, warmup_steps))
            cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
            expected = peak * warmup * (min_factor + (1 - min_factor) * cosine)
            assert schedule.learning_rate(peak, step, progress) == expected


def test_warmup_cosine_with_the_probe_constants() -> None:
    """The probe decays to 2% of its peak: 0.02 + 0.98 * cosine, the same bits as min_factor=0.02."""
    schedule = ProbeConfig(lr=2e-3, warmup_steps=100).lr_schedule
    for step in STEPS:
        for progress in [p for p in PROGRESS if p < 1.0]:  # the probe's loop stops at progress 1
            warmup = min(1.0, (step + 1) / max(1, 100))
            expected = 2e-3 * warmup * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress)))
            assert schedule.learning_rate(2e-3, step, progress) == expected


def test_warmup_cosine_shape() -> None:
    schedule = WarmupCosine(warmup_steps=4, min_factor=0.1)
    assert [schedule.warmup(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert schedule.decay(0.0) == 1.0 and schedule.decay(1.0) == schedule.decay(3.0) == pytest.approx(0.1)
    assert schedule.decay(0.5) == pytest.approx(0.55)
    assert WarmupCosine(0).warmup(0) == 1.0  # no warm-up: full rate from the first step
    assert TrainPriorConfig(warmup_steps=9, final_lr_fraction=0.3).lr_schedule == WarmupCosine(9, 0.3)


@pytest.mark.parametrize("kwargs", [{"warmup_steps": -1}, {"min_factor": -0.1}, {"min_factor": 1.5}])
def test_warmup_cosine_rejects_bad_values(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        WarmupCosine(**kwargs)


def _learning_rate_schedule_closed_form(schedule: LearningRateSchedule, step: int, total_steps: int) -> float:
    if step < schedule.warmup_steps:
        return (step + 1) / schedule.warmup_steps
    if schedule.decay == "constant":
        return 1.0
    span = max(total_steps - schedule.warmup_steps, 1)
    progress = min((step - schedule.warmup_steps) / span, 1.0)
    return schedule.min_factor + (1 - schedule.min_factor) * 0.5 * (1 + math.cos(math.pi * progress))


@pytest.mark.parametrize("warmup_steps", [0, 1, 10, 333])
@pytest.mark.parametrize("decay", ["constant", "cosine"])
@pytest.mark.parametrize("min_factor", [0.0, 0.1, 0.5, 1.0])
def test_learning_rate_schedule_is_the_closed_form(warmup_steps: int, decay: str, min_factor: float) -> None:
    schedule = LearningRateSchedule(warmup_steps, decay, min_factor)  # type: ignore[arg-type]
    for total in (1, 5, 110, 1000):
        for step in STEPS:
            assert schedule.factor(step, total) == _learning_rate_schedule_closed_form(schedule, step, total)


def test_learning_rate_schedule_shape() -> None:
    cosine = LearningRateSchedule(warmup_steps=10, decay="cosine", min_factor=0.1)
    assert cosine.factor(0, 110) == pytest.approx(0.1) and cosine.factor(9, 110) == 1.0
    assert cosine.factor(10, 110) == 1.0  # the decay starts after the warm-up
    assert cosine.factor(60, 110) == pytest.approx(0.55) and cosine.factor(110, 110) == pytest.approx(0.1)
    assert LearningRateSchedule().factor(10**6, 10) == 1.0
    with pytest.raises(ValueError):
        LearningRateSchedule(min_factor=2.0)


def test_timestep_range_moves_linearly_from_start_to_end() -> None:
    fixed = TimestepRange((0.02, 0.98))
    assert fixed(0.0) == fixed(1.0) == (0.02, 0.98)
    annealed = TimestepRange((0.02, 0.98), (0.02, 0.5))
    assert annealed(0.0) == (0.02, 0.98) and annealed(1.0) == pytest.approx((0.02, 0.5))
    assert annealed(0.5) == pytest.approx((0.02, 0.74))


@pytest.mark.parametrize("bad", [{"start": (0.9, 0.1)}, {"start": (-0.1, 0.5)}, {"end": (0.2, 1.5)}])
def test_timestep_range_rejects_bad_ranges(bad: dict) -> None:
    with pytest.raises(ValueError, match="timestep range"):
        TimestepRange(**bad)
