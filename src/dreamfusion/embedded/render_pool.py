"""Training batches of procedural renders for the prior and the probe: from a pool kept on the device, or fresh.

Sphere tracing a batch is not cheap next to a training step, so a pool renders once and is drawn from at random,
a few of its renders replaced every few steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from jaxtyping import Float, Int
from torch import Tensor

from dreamfusion.embedded import vocabulary as vocab
from dreamfusion.procedural.dataset import ProceduralBatch

BatchSource = Callable[[int, torch.Generator], ProceduralBatch]
"""(batch_size, CPU generator) -> a batch of renders on the training device."""


class PoolSettings(Protocol):
    """What a training config says about its batches (``pool_size`` 0: every batch rendered fresh)."""

    @property
    def batch_size(self) -> int: ...
    @property
    def pool_size(self) -> int: ...
    @property
    def pool_refresh(self) -> int: ...
    @property
    def pool_refresh_every(self) -> int: ...


def check_pool_settings(settings: PoolSettings) -> None:
    """A pool holds at least one batch and refreshes at most all of itself."""
    size, refresh = settings.pool_size, settings.pool_refresh
    if size and (size < settings.batch_size or not 0 <= refresh <= size):
        raise ValueError("pool_size must be 0 or >= batch_size, and 0 <= pool_refresh <= pool_size")


def render_labels(batch: ProceduralBatch) -> Int[Tensor, "B 4"]:
    """(object, colour, view, shading) ids."""
    return torch.stack((batch.object_ids, batch.colour_ids, batch.view_ids, batch.shading_ids), dim=1).long()


def check_captions(batch: ProceduralBatch) -> None:
    """The integer labels must give the same tokens as the captions' words; fails loudly if the data disagrees."""
    tokens = vocab.caption_tokens(batch.object_ids, batch.colour_ids, batch.view_ids).tolist()
    for caption, ids in zip(batch.captions[:64], tokens, strict=False):
        if vocab.tokenize(caption) != ids:
            raise RuntimeError(f"caption {caption!r} does not match its labels {vocab.detokenize(ids)!r}")


class RenderPool:
    """Renders kept on the device (float16); ``refresh`` replaces the oldest ``count`` of them with new ones."""

    def __init__(self, source: BatchSource, size: int, chunk: int, generator: torch.Generator) -> None:
        self.source, self.size, self.generator = source, size, generator
        parts = [source(min(chunk, size - start), generator) for start in range(0, size, chunk)]
        check_captions(parts[0])
        self.images = torch.cat([p.images.to(torch.float16) for p in parts])
        self.labels = torch.cat([render_labels(p) for p in parts])
        self.cursor = 0
        self.draws = 0

    def refresh(self, count: int) -> None:
        fresh = self.source(count, self.generator)
        index = (self.cursor + torch.arange(count, device=self.images.device)) % self.size
        self.images[index] = fresh.images.to(torch.float16)
        self.labels[index] = render_labels(fresh)
        self.cursor = (self.cursor + count) % self.size

    def draw(
        self, batch_size: int, generator: torch.Generator
    ) -> tuple[Float[Tensor, "B 3 H W"], Int[Tensor, "B 4"]]:
        self.draws += 1
        pick = torch.randint(0, self.size, (batch_size,), device=self.images.device, generator=generator)
        return self.images[pick].float(), self.labels[pick]


class RenderFeed:
    """One batch per training step, from a ``RenderPool`` if ``settings.pool_size`` else fresh from ``source``.

    ``source`` renders from ``render_generator`` (CPU); the pool draws with ``draw_generator`` (on the device).
    A pool is rendered by ``fill`` or else by the first ``next_batch``; once drawn from, it is refreshed
    before every ``pool_refresh_every``-th step.
    """

    def __init__(
        self,
        settings: PoolSettings,
        source: BatchSource,
        render_generator: torch.Generator,
        draw_generator: torch.Generator,
    ) -> None:
        self.settings, self.source = settings, source
        self.render_generator, self.draw_generator = render_generator, draw_generator
        self.pool: RenderPool | None = None

    def fill(self) -> RenderPool | None:
        """The pool, rendered now if it is not yet; None without one."""
        settings = self.settings
        if self.pool is None and settings.pool_size:
            self.pool = RenderPool(self.source, settings.pool_size, settings.batch_size, self.render_generator)
        return self.pool

    def next_batch(self, step: int) -> tuple[Float[Tensor, "B 3 H W"], Int[Tensor, "B 4"]]:
        """Images in [0, 1] (float32) and their ``render_labels`` for training step ``step``."""
        settings, pool = self.settings, self.fill()
        if pool is None:
            batch = self.source(settings.batch_size, self.render_generator)
            if step == 0:
                check_captions(batch)
            return batch.images.float(), render_labels(batch)
        if pool.draws and settings.pool_refresh and step % settings.pool_refresh_every == 0:
            pool.refresh(settings.pool_refresh)
        return pool.draw(settings.batch_size, self.draw_generator)
