"""Durable writes: every file the package writes goes through here.

``write_atomic`` replaces a file so that after a crash, a kill or a power loss it holds either its old content
or the complete new one, never a mix and never an empty file: the new content goes to a temporary file beside
it whose name is unique to the writing process, is flushed to the disk (fsync), renamed over the final name,
and then the directory entry itself is flushed. ``append_line`` adds one line to a log with a single write,
so lines from an interrupted process are at worst cut at the end, never interleaved. ``read_jsonl`` reads
such a log back and drops a line cut short.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dreamfusion.errors import DreamfusionError


class WriteError(DreamfusionError):
    """A file could not be written (no space, no permission, a missing folder); the message names it."""


TEMPORARY_GLOB = ".*.tmp*"
"""What ``write_atomic``'s temporary files look like, to clear leftovers of a killed process."""


def temporary_path(path: Path, suffix: str = "") -> Path:
    """A hidden name beside ``path`` that no other process or call uses; ``suffix`` keeps a format's
    extension for writers that choose the format by it (e.g. ".mp4")."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp{suffix}")


def write_atomic(path: Path, write: Callable[[Path], None], suffix: str = "") -> Path:
    """Call ``write(temporary)`` to fill a temporary file, then make it ``path`` durably (see the module
    docstring). On any error the temporary file is removed and ``path`` is left as it was; an OSError
    becomes a WriteError naming ``path``."""
    path = Path(path)
    tmp = temporary_path(path, suffix)
    try:
        write(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if isinstance(error, OSError) and not isinstance(error, WriteError):
            raise WriteError(f"cannot write {path}: {error.strerror or error}") from None
        raise
    _fsync_directory(path.parent)
    return path


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_bytes(data))


def write_text_atomic(path: Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def append_line(path: Path, line: str) -> None:
    """Append ``line`` and a newline to ``path`` in one write call (O_APPEND), so the line is never split
    between two writes and reaches the file before this returns."""
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(fd, data)
            while written < len(data):  # a regular file takes it at once; a full disk may not
                written += os.write(fd, data[written:])
        finally:
            os.close(fd)
    except OSError as error:
        raise WriteError(f"cannot write {path}: {error.strerror or error}") from None


def end_with_newline(path: Path) -> bool:
    """Close a line left open by a killed writer, so the next ``append_line`` starts on its own line.
    Returns whether the file ended mid-line."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    with path.open("rb") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) == b"\n":
            return False
    append_line(path, "")
    return True


@dataclass
class JsonLines:
    records: list[dict[str, Any]]
    dropped: int
    """Lines that were not a JSON object: a last line cut short by a kill or power loss, or damage."""


def read_jsonl(path: Path) -> JsonLines:
    """The JSON objects of a JSON-lines file, skipping blank lines and dropping unreadable ones."""
    records: list[dict[str, Any]] = []
    dropped = 0
    if not path.is_file():
        return JsonLines(records, dropped)
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        else:
            dropped += 1
    return JsonLines(records, dropped)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(directory: Path) -> None:
    """Flush a rename to the disk; some filesystems cannot sync a directory, which then is no error."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
