"""Helpers shared by test modules: tiny configs, the command line run in this process, snapshots of a folder's
files, and comparisons scaled to the magnitude compared."""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import yaml

from dreamfusion.config import RunConfig, build_config
from dreamfusion.field import NeRFField

TINY_OVERRIDES: dict[str, Any] = {
    "device": "cpu",
    "prior": {"name": "analytic"},
    "camera": {"resolution": 16},
    "field": {"encoding": {"levels": 4, "log2_table_size": 12, "base_resolution": 8, "max_resolution": 64}, "hidden": 16},
    "renderer": {"num_samples": 16},
    "shading": {"albedo_warmup_steps": 10},
    "trainer": {"iters": 20, "checkpoint_every": 10, "log_every": 5},
    "turntable": {"frames": 4, "resolution": 16},
    "mesh": {"resolution": 32, "texture_size": 64},
}


def tiny_config(**overrides: Any) -> RunConfig:
    """A run config small enough for a CPU test: 16 px renders, a small grid, the analytic prior."""
    merged: dict[str, Any] = {**TINY_OVERRIDES, "prompt": "a ball"}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return build_config("default", overrides=merged)


def empty_tiny_field(seed: int = 0) -> NeRFField:
    """The tiny config's field with no density anywhere: no blob, and a raw density pushed so far down that
    softplus gives exactly 0. Its albedo still depends on its parameters, so gradients have somewhere to go."""
    torch.manual_seed(seed)
    field = NeRFField(replace(tiny_config().field, density_bias="none"))
    with torch.no_grad():
        field.mlp[-1].bias[0] = -1e4
    return field


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def lines(self) -> list[str]:
        return [line for line in self.output.splitlines() if line.strip()]


def run_cli(*args: str) -> CliResult:
    """``dreamfusion ARGS`` through the real entry point (``cli.main``, as the installed command runs it)."""
    from dreamfusion.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            main(list(args))
            code = 0
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 1
    return CliResult(code, out.getvalue(), err.getvalue())


def tiny_config_file(folder: Path, **sections: dict) -> Path:
    """A --config file with the tiny test sizes (no device or prior: those come from flags), plus ``sections``."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in TINY_OVERRIDES.items() if k not in ("device", "prior")}
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    path = folder / f"tiny-{len(list(folder.glob('tiny-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) and its bytes."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def assert_close_scaled(got: torch.Tensor, want: torch.Tensor, rel: float = 1e-5) -> None:
    """``got`` equals ``want`` within ``rel`` of the largest magnitude compared: float32 sums taken in another
    order (other threads, another CPU's vector width) differ by that much on every entry, small ones too."""
    tolerance = rel * max(float(want.abs().max()), float(got.abs().max()), 1e-30)
    difference = float((got - want).abs().max())
    assert difference <= tolerance, f"max difference {difference:.3g} > {tolerance:.3g} ({rel:g} of the largest value)"
