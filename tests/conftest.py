"""Fixtures every test shares. Helpers that tests import live in helpers.py."""

from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic_threads() -> None:
    # One thread by default, as reference numbers were taken; DREAMFUSION_TEST_THREADS=2 runs the suite with
    # another reduction order, to find comparisons that only pass for one order.
    torch.set_num_threads(int(os.environ.get("DREAMFUSION_TEST_THREADS", "1")))
