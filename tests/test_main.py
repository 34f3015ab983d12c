"""``python -m dreamfusion`` runs the same entry point as the installed ``dreamfusion`` command."""

from __future__ import annotations

import runpy

import dreamfusion.cli


def test_running_the_package_calls_the_cli_entry_point(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(dreamfusion.cli, "main", lambda *args: calls.append(args))
    runpy.run_module("dreamfusion", run_name="__main__")
    assert calls == [()]
