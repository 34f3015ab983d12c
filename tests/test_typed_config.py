"""Strict config conversion on small dataclasses of its own: every type the converter knows, and error
messages that name the dotted key path."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from dreamfusion.typed_config import (
    MAX_SEED,
    ConfigError,
    check_seed,
    differing_keys,
    from_dict,
    merge,
    to_dict,
)


@dataclass(frozen=True)
class Inner:
    rate: float = 0.5
    mode: Literal["fast", "slow"] = "fast"

    def __post_init__(self) -> None:
        if self.rate < 0:
            raise ValueError(f"rate must be non-negative, got {self.rate}")


@dataclass(frozen=True)
class Outer:
    name: str = "run"
    steps: int = 10
    flag: bool = False
    size: tuple[int, int] = (4, 4)
    levels: tuple[float, ...] = (1.0,)
    model: str | None = None
    inner: Inner = field(default_factory=Inner)


@dataclass(frozen=True)
class Either:
    value: int | str = 1


def _error(data: dict) -> str:
    with pytest.raises(ConfigError) as caught:
        from_dict(Outer, data)
    return str(caught.value)


def test_to_dict_is_nested_and_turns_tuples_into_lists() -> None:
    assert to_dict(Outer()) == {
        "name": "run", "steps": 10, "flag": False, "size": [4, 4], "levels": [1.0], "model": None,
        "inner": {"rate": 0.5, "mode": "fast"},
    }  # fmt: skip


def test_from_dict_round_trips_and_keeps_defaults_for_missing_keys() -> None:
    config = Outer(name="x", steps=3, flag=True, size=(8, 2), levels=(0.5, 2.0), model="m", inner=Inner(0.1, "slow"))
    assert from_dict(Outer, to_dict(config)) == config
    assert from_dict(Outer, {"inner": {"mode": "slow"}}) == Outer(inner=Inner(mode="slow"))


def test_an_integer_is_accepted_as_a_float() -> None:
    assert from_dict(Inner, {"rate": 2}).rate == 2.0 and isinstance(from_dict(Inner, {"rate": 2}).rate, float)


def test_unknown_keys_are_named_with_the_known_ones() -> None:
    assert _error({"stpes": 1}) == "unknown config key: stpes (known: flag, inner, levels, model, name, size, steps)"
    assert _error({"inner": {"rat": 1, "mood": 2}}).startswith("unknown config keys in inner: mood, rat (known: mode, rate)")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"steps": "10"}, "steps: expected an integer, got '10'"),
        ({"steps": True}, "steps: expected an integer, got True"),
        ({"steps": 2.0}, "steps: expected an integer, got 2.0"),
        ({"flag": 1}, "flag: expected true or false, got 1"),
        ({"name": 3}, "name: expected a string, got 3"),
        ({"inner": {"rate": "fast"}}, "inner.rate: expected a number, got 'fast'"),
        ({"inner": {"rate": True}}, "inner.rate: expected a number, got True"),
        ({"inner": {"rate": float("nan")}}, "inner.rate: expected a finite number, got nan"),
        ({"inner": {"rate": 10**400}}, "inner.rate: expected a finite number"),
        ({"inner": {"mode": "medium"}}, "inner.mode: 'medium' is not one of 'fast', 'slow'"),
        ({"size": [1, 2, 3]}, "size: expected 2 values, got 3"),
        ({"size": 4}, "size: expected a list, got 4"),
        ({"levels": [1.0, "x"]}, "levels[1]: expected a number, got 'x'"),
        ({"name": None}, "name: expected a string, got None"),
        ({"inner": 3}, "inner: expected a mapping, got int"),
    ],
)
def test_wrong_values_name_their_key_path(data: dict, message: str) -> None:
    assert _error(data).startswith(message)


def test_optional_values_take_none_or_their_type() -> None:
    assert from_dict(Outer, {"model": None}).model is None
    assert from_dict(Outer, {"model": "sd21"}).model == "sd21"
    assert _error({"model": 5}) == "model: expected a string, got 5"


def test_a_union_without_none_tries_each_type_and_refuses_empty() -> None:
    assert from_dict(Either, {"value": 3}).value == 3
    assert from_dict(Either, {"value": "three"}).value == "three"
    with pytest.raises(ConfigError, match=r"^value: may not be empty$"):
        from_dict(Either, {"value": None})
    with pytest.raises(ConfigError, match=r"^value: expected an integer, got 2.5$"):  # the first option's error
        from_dict(Either, {"value": 2.5})


def test_a_failing_post_init_becomes_a_config_error_at_its_path() -> None:
    assert _error({"inner": {"rate": -1.0}}) == "inner: rate must be non-negative, got -1.0"


def test_long_values_are_shortened_in_messages() -> None:
    message = _error({"steps": "x" * 100})
    assert message == f"steps: expected an integer, got '{'x' * 19}...{'x' * 7}' (102 characters)"


def test_merge_applies_nested_overrides_strictly() -> None:
    merged = merge(Outer(), {"steps": 20, "inner": {"mode": "slow"}})
    assert merged == Outer(steps=20, inner=Inner(mode="slow"))
    with pytest.raises(ConfigError, match=r"^unknown config key: inner.speed \(known here: mode, rate\)$"):
        merge(Outer(), {"inner": {"speed": 1}})
    with pytest.raises(ConfigError, match="^inner.rate: expected a number"):
        merge(Outer(), {"inner": {"rate": "x"}})
    with pytest.raises(ConfigError, match="^inner: rate must be non-negative"):
        merge(Outer(), {"inner": {"rate": -2.0}})


def test_check_seed_bounds() -> None:
    check_seed(0)
    check_seed(MAX_SEED)
    for bad in (-1, MAX_SEED + 1):
        with pytest.raises(ValueError, match=f"seed must be an integer from 0 to {MAX_SEED}"):
            check_seed(bad)
    with pytest.raises(ValueError, match="^trainer.seed must"):
        check_seed(-5, "trainer.seed")


def test_differing_keys_lists_dotted_paths() -> None:
    a = to_dict(Outer())
    b = to_dict(Outer(steps=11, inner=Inner(rate=0.7)))
    assert differing_keys(a, b) == ["inner.rate", "steps"]
    assert differing_keys(a, b, ignore=("steps",)) == ["inner.rate"]
    assert differing_keys(a, {**a, "extra": None}) == ["extra"]  # present on one side only, even as None
    assert differing_keys(a, a) == []
