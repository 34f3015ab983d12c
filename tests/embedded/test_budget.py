"""Budget: the share of a run's time and step budgets spent."""

import pytest

from dreamfusion.embedded import budget as budget_module
from dreamfusion.embedded.budget import Budget


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [100.0]
    monkeypatch.setattr(budget_module.time, "monotonic", lambda: now[0])
    return now


def test_step_budget(clock: list[float]) -> None:
    budget = Budget(minutes=None, max_steps=8, started=clock[0])
    clock[0] += 10**6  # time does not count without a time budget
    assert [budget.fraction(s) for s in (0, 2, 8, 9)] == [0.0, 0.25, 1.0, 1.125]


def test_time_budget_counts_earlier_parts_of_the_run(clock: list[float]) -> None:
    budget = Budget(minutes=2.0, max_steps=None, started=clock[0], elapsed_before=30.0)
    assert budget.elapsed() == 30.0 and budget.fraction(10**6) == 0.25
    clock[0] += 60.0
    assert budget.elapsed() == 90.0 and budget.fraction(0) == 0.75


def test_the_larger_share_wins(clock: list[float]) -> None:
    budget = Budget(minutes=1.0, max_steps=10, started=clock[0])
    clock[0] += 30.0
    assert budget.fraction(2) == 0.5 and budget.fraction(8) == 0.8


def test_no_budget_is_never_spent(clock: list[float]) -> None:
    assert Budget(minutes=None, max_steps=None, started=clock[0]).fraction(10**9) == 0.0
