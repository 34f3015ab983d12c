"""Durable writes: atomic replacement with fsync, whole-line appends, and reading logs with a torn last line."""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

import pytest

from dreamfusion import files
from dreamfusion.files import WriteError, append_line, end_with_newline, read_jsonl, write_atomic, write_text_atomic


def test_atomic_write_syncs_the_file_before_the_rename_and_the_folder_after(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync file")
        real_fsync(fd)

    def replace(src: object, dst: object) -> None:
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "fsync", fsync)
    monkeypatch.setattr(files.os, "replace", replace)
    write_text_atomic(tmp_path / "config.yaml", "seed: 1\n")
    assert events == ["fsync file", "rename", "fsync dir"]
    assert (tmp_path / "config.yaml").read_text() == "seed: 1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]  # no temporary file left


def test_temporary_names_are_unique_per_call_and_process(tmp_path: Path) -> None:
    names = {files.temporary_path(tmp_path / "checkpoint.pt").name for _ in range(50)}
    assert len(names) == 50
    assert all(name.startswith(".checkpoint.pt.") and f".{os.getpid()}-" in name for name in names)
    assert files.temporary_path(tmp_path / "turntable.mp4", ".mp4").name.endswith(".tmp.mp4")
    assert all(fnmatch.fnmatch(name, files.TEMPORARY_GLOB) for name in names)  # what --overwrite clears


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"earlier")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        write_atomic(target, half_then_fail)
    assert target.read_bytes() == b"earlier"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_an_unwritable_target_is_a_write_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(WriteError, match=r"cannot write .*missing/x\.txt: No such file or directory"):
        write_text_atomic(tmp_path / "missing" / "x.txt", "x")
    with pytest.raises(WriteError, match="cannot write"):
        append_line(tmp_path / "missing" / "log", "x")


def test_append_line_writes_one_terminated_line_per_call(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    append_line(log, "first")
    append_line(log, "second\n")
    assert log.read_text() == "first\nsecond\n"


def test_read_jsonl_drops_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0}\n{"step": 10}\n{"step": 2')
    read = read_jsonl(path)
    assert read.records == [{"step": 0}, {"step": 10}] and read.dropped == 1
    path.write_bytes(b'{"step": 0}\n\xff\xfe[1, 2]\n\n')  # damage that is not even UTF-8, a non-object, a blank line
    read = read_jsonl(path)
    assert read.records == [{"step": 0}] and read.dropped == 1
    assert read_jsonl(tmp_path / "none.jsonl").records == []


def test_end_with_newline_closes_a_cut_line_once(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    log.write_text("started\nwrote tur")
    assert end_with_newline(log)
    assert not end_with_newline(log)
    assert log.read_text() == "started\nwrote tur\n"
    assert not end_with_newline(tmp_path / "absent.log")
