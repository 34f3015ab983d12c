"""Upper bounds on sizes, from the memory a request needs.

A size the user asks for (a mesh grid, a video resolution, a render) is refused up front, with a message that
states the limit, when even a lower bound of the memory it needs exceeds the whole memory of the device it
would run on. Requests below the limit may still run out of memory when the device is shared, but none
fails after minutes of work (or with a traceback) for a size that could never fit.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from dreamfusion.typed_config import ConfigError


def device_memory(device: torch.device | str) -> int:
    """Bytes of memory of ``device``: a CUDA device's own, or the machine's physical memory for the CPU."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 64 * 2**30  # no way to ask: assume a large machine, so that nothing sensible is refused


def format_bytes(count: float) -> str:
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
    power = 0
    while count >= 1024 and power < len(units) - 1:
        count, power = count / 1024, power + 1
    return f"{count:.3g} {units[power]}" if power else f"{int(count)} B"


def largest_fitting(bytes_at: Callable[[int], float], budget: int, start: int = 1) -> int:
    """The largest size n >= ``start`` - 1 with ``bytes_at(n) <= budget`` (``bytes_at`` grows with n)."""
    low, high = start - 1, start
    while bytes_at(high) <= budget:
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if bytes_at(middle) <= budget else (low, middle)
    return low


def check_size(option: str, value: int, bytes_at: Callable[[int], float], device: torch.device | str) -> None:
    """ConfigError when ``value`` of ``option`` needs more than ``device``'s memory (``bytes_at(value)`` is a
    lower bound of the bytes a size needs); the message gives the largest size that fits."""
    needed = bytes_at(value)
    budget = device_memory(device)
    if needed <= budget:
        return
    limit = largest_fitting(bytes_at, budget)
    where = "this machine" if torch.device(device).type == "cpu" else str(device)
    raise ConfigError(
        f"{option} {value} needs at least {format_bytes(needed)} of memory, more than the {format_bytes(budget)} "
        f"of {where}; at most {limit} fits"
    )

