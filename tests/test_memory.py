"""Size limits from memory: byte counts for people, the largest size under a budget, and the one-line refusal
of a size that could never fit."""

from __future__ import annotations

import os

import pytest
import torch

from dreamfusion import memory
from dreamfusion.typed_config import ConfigError


@pytest.mark.parametrize(
    ("count", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1 KiB"), (1536, "1.5 KiB"), (5 * 2**20, "5 MiB"), (3 * 2**30, "3 GiB"),
     (1234 * 2**60, "1.23e+03 EiB")],
)  # fmt: skip
def test_format_bytes(count: float, text: str) -> None:
    assert memory.format_bytes(count) == text


@pytest.mark.parametrize(
    ("bytes_at", "budget", "expected"),
    [
        (lambda n: 10 * n, 95, 9),
        (lambda n: 10 * n, 100, 10),
        (lambda n: n**3, 10**6, 100),
        (lambda n: n**3, 10**6 - 1, 99),
        (lambda n: 100 * n, 50, 0),  # not even size 1 fits
    ],
)
def test_largest_fitting_is_the_last_size_within_the_budget(bytes_at, budget: int, expected: int) -> None:
    assert memory.largest_fitting(bytes_at, budget) == expected
    if expected:
        assert bytes_at(expected) <= budget < bytes_at(expected + 1)


def test_cpu_memory_is_the_machines_physical_memory() -> None:
    assert memory.device_memory("cpu") == os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def test_a_size_that_fits_passes(monkeypatch) -> None:
    monkeypatch.setattr(memory, "device_memory", lambda device: 1000)
    memory.check_size("mesh.resolution", 100, lambda n: 10 * n, "cpu")


def test_a_size_that_cannot_fit_is_refused_with_the_largest_that_does(monkeypatch) -> None:
    monkeypatch.setattr(memory, "device_memory", lambda device: 1000)
    with pytest.raises(ConfigError) as caught:
        memory.check_size("mesh.resolution", 512, lambda n: 10 * n, torch.device("cpu"))
    assert str(caught.value) == (
        "mesh.resolution 512 needs at least 5 KiB of memory, more than the 1000 B of this machine; at most 100 fits"
    )


def test_the_refusal_names_a_cuda_device(monkeypatch) -> None:
    monkeypatch.setattr(memory, "device_memory", lambda device: 2**30)
    with pytest.raises(ConfigError, match=r"of cuda:1; at most 1024 fits$"):
        memory.check_size("turntable.resolution", 4096, lambda n: n * 2**20, "cuda:1")
