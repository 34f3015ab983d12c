"""The user-facing error classes: each one is a DreamfusionError (which the command line prints as one line,
exit code 2) and still the built-in kind callers catch (RuntimeError, ValueError)."""

from __future__ import annotations

import pytest
from helpers import run_cli

from dreamfusion.errors import DeviceError, DreamfusionError, RunError, TrainingError
from dreamfusion.priors.base import PriorError
from dreamfusion.typed_config import ConfigError


@pytest.mark.parametrize(
    ("error", "builtin"),
    [(RunError, RuntimeError), (TrainingError, RuntimeError), (DeviceError, RuntimeError),
     (ConfigError, ValueError), (PriorError, ValueError)],
)  # fmt: skip
def test_user_errors_are_dreamfusion_errors_and_their_builtin_kind(error: type, builtin: type) -> None:
    assert issubclass(error, DreamfusionError) and issubclass(error, builtin)
    with pytest.raises(DreamfusionError, match="^what went wrong$"):
        raise error("what went wrong")


def test_the_error_kinds_are_distinct() -> None:
    kinds = (RunError, TrainingError, DeviceError, ConfigError, PriorError)
    for kind in kinds:
        assert [other for other in kinds if issubclass(kind, other)] == [kind]


def test_the_command_line_prints_a_user_error_as_one_line_with_code_2(tmp_path) -> None:
    """A config file with an unknown key is a ConfigError: one line on the terminal, no traceback."""
    config = tmp_path / "bad.yaml"
    config.write_text("no_such_key: 1\n")
    result = run_cli("generate", "a ball", "--config", str(config), "--out", str(tmp_path / "run"), "--device", "cpu")
    assert result.code == 2
    assert "Traceback" not in result.output
    assert any("no_such_key" in line for line in result.lines)
