"""Strict conversion between nested frozen config dataclasses and plain dicts (YAML / JSON).

Unknown keys, wrong types, non-finite numbers and values outside a ``Literal`` fail with a message naming the
key path.
"""

from __future__ import annotations

import dataclasses
import math
import types
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from dreamfusion.errors import DreamfusionError

T = TypeVar("T")


class ConfigError(DreamfusionError, ValueError):
    """A config value or key is invalid; the message names the key."""


MAX_SEED = 2**63 - 1
"""Largest seed: torch's generators take 64-bit seeds, and a run derives more seeds from its own (seed + 1,
and seed + 1000 r for rank r), which must stay in that range."""


def check_seed(seed: int, name: str = "seed") -> None:
    """ValueError unless ``seed`` can seed every generator of a run."""
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{name} must be an integer from 0 to {MAX_SEED}, got {_short(seed)}")


def to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict of a config dataclass (tuples become lists, for YAML)."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        return value

    return plain(config)


def from_dict(cls: type[T], data: Any, path: str = "") -> T:
    """Build ``cls`` from ``data``, rejecting unknown keys; missing keys keep their defaults."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - fields)
    if unknown:
        where = f" in {path}" if path else ""
        raise ConfigError(f"unknown config key{'s' if len(unknown) > 1 else ''}{where}: {', '.join(unknown)} "
                          f"(known: {', '.join(sorted(fields))})")
    kwargs = {name: _convert(hints[name], value, f"{path}.{name}" if path else name) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{path or 'config'}: {error}") from None


def merge(config: T, overrides: dict[str, Any], path: str = "") -> T:
    """A copy of ``config`` with a nested dict of overrides applied, as strictly as ``from_dict``."""
    names = {f.name for f in dataclasses.fields(config)}  # type: ignore[arg-type]
    hints = get_type_hints(type(config))
    changes = {}
    for key, value in overrides.items():
        dotted = f"{path}.{key}" if path else key
        if key not in names:
            raise ConfigError(f"unknown config key: {dotted} (known here: {', '.join(sorted(names))})")
        current = getattr(config, key)
        switches = (
            isinstance(value, dict)
            and _tagged_options(hints[key]) is not None
            and value.get("name", getattr(current, "name", None)) != getattr(current, "name", None)
        )
        if isinstance(value, dict) and dataclasses.is_dataclass(current) and not switches:
            changes[key] = merge(current, value, dotted)
        else:
            changes[key] = _convert(hints[key], value, dotted)
    try:
        return dataclasses.replace(config, **changes)  # type: ignore[type-var]
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{path or 'config'}: {error}") from None


def _convert(hint: Any, value: Any, path: str) -> Any:
    origin = get_origin(hint)
    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint):
        if dataclasses.is_dataclass(value) and isinstance(value, hint):
            return value
        return from_dict(hint, value, path)
    if origin is Literal:
        if value not in get_args(hint):
            raise ConfigError(f"{path}: {value!r} is not one of {', '.join(map(repr, get_args(hint)))}")
        return value
    tagged = _tagged_options(hint)
    if tagged is not None:
        return _convert_tagged(tagged, value, path)
    if origin in (Union, types.UnionType):
        options = get_args(hint)
        if value is None:
            if type(None) in options:
                return None
            raise ConfigError(f"{path}: may not be empty")
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(option, value, path)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if errors else f"{path}: invalid value {value!r}")
    if origin is tuple:
        args = get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{path}: expected {len(args)} values, got {len(value)}")
        return tuple(_convert(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {_short(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        number = float(value) if isinstance(value, float) or abs(value) < 2**1023 else math.inf
        if not math.isfinite(number):  # YAML reads .nan and .inf as numbers; no setting means them
            raise ConfigError(f"{path}: expected a finite number, got {_short(value)}")
        return number
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported config type {hint!r}")



def _tagged_options(hint: Any) -> dict[str, type] | None:
    """For a union of config dataclasses told apart by a ``name: Literal[...]`` field (e.g. the priors'
    configs): each name and its class. None for any other type."""
    if get_origin(hint) not in (Union, types.UnionType):
        return None
    tags: dict[str, type] = {}
    for option in get_args(hint):
        if not dataclasses.is_dataclass(option):
            return None
        name_hint = get_type_hints(option).get("name")
        if get_origin(name_hint) is not Literal:
            return None
        tags.update(dict.fromkeys(get_args(name_hint), option))
    return tags


def _convert_tagged(tags: dict[str, type], value: Any, path: str) -> Any:
    """The class ``value["name"]`` picks (the first one when no name is given) built from ``value``."""
    if dataclasses.is_dataclass(value) and type(value) in tags.values():
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: expected a mapping, got {_short(value)}")
    name = value.get("name", next(iter(tags)))
    if not isinstance(name, str) or name not in tags:
        raise ConfigError(f"{path}.name: {name!r} is not one of {', '.join(map(repr, tags))}")
    return from_dict(tags[name], value, path)


def _short(value: Any) -> str:
    """A value for an error message, cut to one readable line."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}...{text[-8:]} ({len(text)} characters)"


def differing_keys(a: dict[str, Any], b: dict[str, Any], ignore: tuple[str, ...] = (), path: str = "") -> list[str]:
    """The dotted keys whose values differ between two nested dicts (e.g. two configs' ``to_dict``), except
    those in ``ignore``."""
    keys: list[str] = []
    for key in sorted(set(a) | set(b), key=str):
        dotted = f"{path}.{key}" if path else str(key)
        if dotted in ignore:
            continue
        left, right = a.get(key), b.get(key)
        if isinstance(left, dict) and isinstance(right, dict):
            keys += differing_keys(left, right, ignore, dotted)
        elif left != right or (key in a) != (key in b):
            keys.append(dotted)
    return keys
