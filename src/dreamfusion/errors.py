"""The package's errors that are meant for the user.

Every error whose message tells a user what is wrong with their request (a bad value, a missing file, a
run directory in use) derives from ``DreamfusionError``; the command line prints such an error as one line
and exits with code 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class DreamfusionError(Exception):
    """A problem with what was asked for; the message is one line for the user."""


class RunError(DreamfusionError, RuntimeError):
    """A problem with a run directory or the request; the message is for the user."""


class TrainingError(DreamfusionError, RuntimeError):
    """The run cannot go on (diverged, or a checkpoint does not fit); the message is for the user."""


class DeviceError(DreamfusionError, RuntimeError):
    """The device or process layout asked for is not there (no CUDA, a rank without a GPU)."""


class PriorError(DreamfusionError, ValueError):
    """A prior cannot be built or cannot read the prompt (a missing weights folder, an unknown word)."""
