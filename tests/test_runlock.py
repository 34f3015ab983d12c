"""One writer per run directory: the lock refuses a second writer, names the holder, and dies with its process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import run_cli, snapshot, tiny_config_file

from dreamfusion.errors import RunError
from dreamfusion.runlock import LOCK_NAME, describe_holder, is_locked, lock_run


def test_a_second_lock_is_refused_until_the_first_is_released(tmp_path: Path) -> None:
    first = lock_run(tmp_path)
    assert is_locked(tmp_path)
    with pytest.raises(RunError, match=rf"{tmp_path} is in use by pid {os.getpid()}: .*; wait for it to finish"):
        lock_run(tmp_path)
    first.release()
    assert not is_locked(tmp_path)
    with lock_run(tmp_path) as again:
        assert again.held
    assert not again.held and (tmp_path / LOCK_NAME).read_bytes() == b""  # nothing is written into it


def test_a_folder_without_a_lock_file_is_not_locked(tmp_path: Path) -> None:
    assert not is_locked(tmp_path)
    assert describe_holder(tmp_path) == "another process"


def _start_generate(tmp_path: Path, out: Path) -> subprocess.Popen[str]:
    config = tiny_config_file(tmp_path, trainer={"iters": 100000, "checkpoint_every": 1, "log_every": 1})
    command = [sys.executable, "-m", "dreamfusion", "generate", "a ball", "--prior", "analytic", "--config", str(config),
               "--out", str(out), "--device", "cpu"]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for(condition, process: subprocess.Popen[str], seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the first run ended early: {process.stderr.read()[-2000:] if process.stderr else ''}")
        if time.monotonic() > deadline:
            pytest.fail("the first run did not write a checkpoint in time")
        time.sleep(0.1)


@pytest.mark.slow
def test_a_second_generate_is_refused_while_the_first_runs_and_accepted_after_sigkill(tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = _start_generate(tmp_path, out)
    try:
        _wait_for(lambda: (out / "checkpoint.pt").is_file(), first)
        config = tiny_config_file(tmp_path)
        common = ("--prior", "analytic", "--config", str(config), "--out", str(out), "--device", "cpu")
        for extra in (("--resume",), ("--overwrite",)):
            refused = run_cli("generate", "a ball", *extra, *common)
            assert refused.code == 2 and len(refused.lines) == 1, refused.output
            assert f"is in use by pid {first.pid}: " in refused.output and "generate a ball" in refused.output
            assert "Traceback" not in refused.output
        for command in (("render", str(out), "--device", "cpu"), ("export", str(out), "--device", "cpu")):
            refused = run_cli(*command)
            assert refused.code == 2 and f"is in use by pid {first.pid}" in refused.output, refused.output
        # Reading while it trains is safe: export into another folder reads the last complete checkpoint.
        exported = run_cli("export", str(out), "--out", str(tmp_path / "while-training.ply"), "--resolution", "16", "--device", "cpu")
        assert exported.code == 0, exported.output
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    assert not is_locked(out)  # the kernel dropped the killed process's lock
    before = torch.load(out / "checkpoint.pt", weights_only=True)["step"]
    resumed = run_cli("generate", "a ball", "--resume", "--iters", str(before + 3), "--out", str(out))
    assert resumed.code == 0, resumed.output
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == before + 3


def test_batch_refuses_a_folder_another_batch_is_writing(tmp_path: Path) -> None:
    out = tmp_path / "batch"
    out.mkdir()
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a ball\n")
    with lock_run(out):
        before = snapshot(out)
        result = run_cli("batch", str(prompts), "--out", str(out), "--prior", "analytic", "--device", "cpu")
    assert result.code == 2 and "is in use by pid" in result.output, result.output
    assert snapshot(out) == before
