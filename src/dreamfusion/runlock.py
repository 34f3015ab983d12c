"""One writer per run directory: an OS lock held for the life of the process that writes the run.

``generate`` (and every command that writes into a run: ``render``, ``export`` into the run, ``eval-clip``,
``batch`` on its folder) takes an exclusive ``flock`` on ``RUN_DIR/.lock`` before it changes anything, and
holds it until it is done. A second writer is refused at once with a message that names the holder. The
kernel drops the lock when the holder exits in any way, SIGKILL included, so a killed run never leaves a
stale lock behind: ``--resume`` simply takes it. The lock file itself stays (removing it while another
process may be opening it would let two processes lock two different files).

Readers (``export --out`` elsewhere, ``view``, ``eval-3d``) take no lock: every file of a run is replaced
atomically or appended a line at a time, so a reader sees a complete old or new version of each file.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from dreamfusion.errors import RunError

LOCK_NAME = ".lock"


class RunLock:
    """A held writer lock; ``release`` (or leaving the ``with`` block, or the process ending) frees it."""

    def __init__(self, directory: Path, fd: int) -> None:
        self.directory = directory
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_run(directory: Path, hint: str = "") -> RunLock:
    """Take ``directory``'s writer lock (the directory must exist), or raise RunError naming the process that
    holds it. Nothing is written into the lock file: the holder is found through the kernel's lock table,
    so a refused command leaves the run's files exactly as they were. ``hint`` ends the message."""
    path = Path(directory) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise RunError(f"cannot write to {directory}: {error.strerror}; choose another folder") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunError(
            f"{directory} is in use by {describe_holder(directory)}; wait for it to finish{hint}"
        ) from None
    return RunLock(Path(directory), fd)


def is_locked(directory: Path) -> bool:
    """Whether some process holds ``directory``'s writer lock right now."""
    path = Path(directory) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a shared lock taken above
    return False


def describe_holder(directory: Path) -> str:
    """The process that holds the lock, in words ("pid 4121: dreamfusion generate a red chair --out runs/chair"),
    from Linux's /proc/locks; "another process" where that table cannot tell."""
    try:
        inode = (Path(directory) / LOCK_NAME).stat().st_ino
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[-1] == str(inode):
                return f"pid {fields[4]}: {_command_of(int(fields[4]))}"
    except (OSError, ValueError):
        pass
    return "another process"


def _command_of(pid: int) -> str:
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode("utf-8", "replace").split("\0")
    except OSError:
        return "a process that has ended"
    words = [Path(arg).name if position < 2 else arg for position, arg in enumerate(arg for arg in args if arg)]
    text = " ".join(words)
    return text if len(text) <= 120 else text[:117] + "..."
