"""When a run counts as collapsed (haze filling the views, or nothing visible) and the seeds it starts over on."""

import pytest

from dreamfusion.collapse import CollapseConfig, CollapseWatch, attempt_seed
from dreamfusion.typed_config import MAX_SEED


def _verdicts(opacities: list[float], config: CollapseConfig = CollapseConfig(), iters: int = 3000, every: int = 10):
    watch = CollapseWatch(config, iters)
    return [(step, verdict) for step, value in zip(range(0, every * len(opacities), every), opacities, strict=True)
            if (verdict := watch.see(step, value)) is not None]  # fmt: skip


def test_a_haze_is_called_once_the_window_after_warm_up_is_filled() -> None:
    found = _verdicts([0.5] * 5 + [1.0] * 20)
    step, first = found[0]
    # Readings of 1.0 from step 50 on; the window of 50 steps holds only them from step 90, and the watch
    # waits for after + window = 100 steps.
    assert step == 100 and first.kind == "haze" and first.opacity == pytest.approx(1.0)


def test_healthy_runs_and_short_spikes_are_not_collapses() -> None:
    assert _verdicts([0.52, 0.55, 0.13, 0.18, 0.1, 0.33, 0.14, 0.37, 0.21] * 10) == []
    assert _verdicts([0.3] * 10 + [1.0] * 4 + [0.3] * 10) == []  # 40 steps of haze: shorter than the window
    assert _verdicts([0.3] * 10 + [0.01, 0.002, 0.003] * 5) == []  # nearly empty, but not at or below 0.005


def test_an_empty_view_is_a_collapse_too() -> None:
    found = _verdicts([0.4] * 5 + [0.0] * 10)
    assert found and found[0][1].kind == "empty"


def test_late_collapses_are_left_alone() -> None:
    late = [0.3] * 120 + [1.0] * 20  # haze from step 1200, after a third of 3000 steps
    assert _verdicts(late) == []
    assert _verdicts(late, CollapseConfig(until=1.0))


def test_seeds_of_later_attempts_differ_and_stay_in_range() -> None:
    assert attempt_seed(7, 0) == 7 and attempt_seed(7, 1) == 8 and attempt_seed(7, 2) == 9
    assert attempt_seed(MAX_SEED, 0) == MAX_SEED and 0 <= attempt_seed(MAX_SEED, 1) < MAX_SEED // 2


@pytest.mark.parametrize("bad", [{"restarts": -1}, {"window": 0}, {"until": 1.5}, {"empty_opacity": 0.99}])
def test_collapse_config_refuses_bad_values(bad: dict) -> None:
    with pytest.raises(ValueError):
        CollapseConfig(**bad)
