"""RenderPool and RenderFeed: what is rendered when, and what a training step gets."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from embedded_helpers import fake_batch

from dreamfusion.embedded.render_pool import (
    RenderFeed,
    RenderPool,
    check_captions,
    check_pool_settings,
    render_labels,
)
from dreamfusion.procedural.dataset import ProceduralBatch


@dataclass(frozen=True)
class Settings:
    batch_size: int = 2
    pool_size: int = 0
    pool_refresh: int = 0
    pool_refresh_every: int = 1


class CountingSource:
    """fake_batch at 8 px, remembering the size of each batch it rendered."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def __call__(self, batch_size: int, generator: torch.Generator) -> ProceduralBatch:
        self.sizes.append(batch_size)
        return fake_batch(batch_size, generator, resolution=8)


def feed(settings: Settings, source: CountingSource) -> RenderFeed:
    return RenderFeed(settings, source, torch.Generator().manual_seed(0), torch.Generator().manual_seed(1))


def test_labels_are_object_colour_view_shading() -> None:
    batch = fake_batch(3, torch.Generator().manual_seed(0), resolution=8)
    labels = render_labels(batch)
    assert labels.dtype == torch.long and labels.shape == (3, 4)
    assert torch.equal(labels[:, 2], batch.view_ids) and torch.equal(labels[:, 3], batch.shading_ids)


def test_check_captions_rejects_labels_that_disagree() -> None:
    batch = fake_batch(4, torch.Generator().manual_seed(0), resolution=8)
    check_captions(batch)
    batch.captions[1] = "a red chair" if "chair" not in batch.captions[1] else "a red mug"
    with pytest.raises(RuntimeError, match="does not match"):
        check_captions(batch)


def test_fresh_batches_are_checked_on_the_first_step_only() -> None:
    source = CountingSource()
    stream = feed(Settings(), source)
    images, labels = stream.next_batch(0)
    assert images.dtype == torch.float32 and images.shape == (2, 3, 8, 8) and labels.shape == (2, 4)
    assert stream.pool is None and stream.fill() is None and source.sizes == [2]

    def mislabelled(batch_size: int, generator: torch.Generator) -> ProceduralBatch:
        batch = fake_batch(batch_size, generator, resolution=8)
        batch.captions[:] = ["a red chair" if "chair" not in c else "a red mug" for c in batch.captions]
        return batch

    assert feed(Settings(), mislabelled).next_batch(1)[0].shape == (2, 3, 8, 8)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        feed(Settings(), mislabelled).next_batch(0)  # type: ignore[arg-type]


def test_pool_renders_in_batch_sized_chunks_and_draws_float32() -> None:
    source = CountingSource()
    pool = RenderPool(source, size=5, chunk=2, generator=torch.Generator().manual_seed(0))
    assert source.sizes == [2, 2, 1] and pool.images.dtype == torch.float16 and pool.labels.shape == (5, 4)
    images, labels = pool.draw(3, torch.Generator().manual_seed(0))
    assert images.dtype == torch.float32 and images.shape == (3, 3, 8, 8) and labels.shape == (3, 4)


def test_pool_refresh_replaces_the_oldest_renders() -> None:
    calls = []

    def numbered(batch_size: int, generator: torch.Generator) -> ProceduralBatch:
        batch = fake_batch(batch_size, generator, resolution=8)
        calls.append(batch_size)
        batch.images.fill_(len(calls) / 8)  # each batch's images show its number
        return batch

    pool = RenderPool(numbered, size=4, chunk=4, generator=torch.Generator().manual_seed(0))
    pool.refresh(3)
    pool.refresh(2)  # wraps around
    assert pool.cursor == 1
    assert (pool.images[:, 0, 0, 0] * 8).tolist() == [3.0, 2.0, 2.0, 3.0]


@pytest.mark.parametrize("first_step", [0, 5])
def test_pool_refresh_cadence(first_step: int) -> None:
    """The first draw comes from the pool as rendered; then every ``pool_refresh_every``-th step refreshes."""
    source = CountingSource()
    stream = feed(Settings(batch_size=2, pool_size=4, pool_refresh=3, pool_refresh_every=2), source)
    for step in range(first_step, first_step + 5):
        stream.next_batch(step)
    refreshed_steps = [s for s in range(first_step + 1, first_step + 5) if s % 2 == 0]
    assert source.sizes == [2, 2] + [3] * len(refreshed_steps)


def test_an_early_fill_renders_before_the_first_step() -> None:
    source = CountingSource()
    stream = feed(Settings(batch_size=2, pool_size=4, pool_refresh=1, pool_refresh_every=1), source)
    pool = stream.fill()
    assert pool is not None and stream.fill() is pool and source.sizes == [2, 2]
    stream.next_batch(0)
    assert source.sizes == [2, 2]  # not refreshed before its first draw
    stream.next_batch(1)
    assert source.sizes == [2, 2, 1]


def test_pool_without_refresh_never_renders_again() -> None:
    source = CountingSource()
    stream = feed(Settings(batch_size=2, pool_size=2, pool_refresh=0), source)
    for step in range(4):
        stream.next_batch(step)
    assert source.sizes == [2]


@pytest.mark.parametrize(
    "settings", [Settings(pool_size=1), Settings(pool_size=4, pool_refresh=5), Settings(pool_size=4, pool_refresh=-1)]
)
def test_check_pool_settings_rejects(settings: Settings) -> None:
    with pytest.raises(ValueError):
        check_pool_settings(settings)


def test_check_pool_settings_accepts_no_pool_and_full_refresh() -> None:
    check_pool_settings(Settings(pool_size=0, pool_refresh=99))
    check_pool_settings(Settings(pool_size=4, pool_refresh=4))
