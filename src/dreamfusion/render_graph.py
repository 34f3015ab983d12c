"""Training renders, forward and backward, replayed from CUDA graphs.

A training render on a CUDA device has fixed shapes (rays x samples per ray: the renderer does not compact
samples there) and takes its random numbers as inputs (``RenderDraws``). Its forward and backward are several
hundred small operations (ray sampling, the field's hash grid and MLP with normals, shading, compositing)
whose launching, not their arithmetic, kept the host busier than the device; a replay of captured graphs
costs the host a few launches.
"""

from __future__ import annotations

import warnings
from dataclasses import fields
from typing import Any

import torch
from torch import Tensor, nn

from dreamfusion.geometry import Geometry
from dreamfusion.renderer import Randomness, RenderDraws, RendererConfig, RenderOutput, ShadingOptions, render_rays
from dreamfusion.shading import Background, BackgroundDraw

_OUTPUTS = tuple(f.name for f in fields(RenderOutput))


class _TrainingRender(nn.Module):
    """One kind of training render (config, shading, which random inputs) as a module of tensors in, tuple of
    tensors out: what graph capture takes. The field and background are its submodules, so their parameters
    get the replayed backward's gradients."""

    def __init__(self, geometry: Geometry, background: Background, config: RendererConfig, options: ShadingOptions,
                 importance: bool, swap: bool) -> None:  # fmt: skip
        super().__init__()
        self.geometry = geometry
        self.background = background
        self.config, self.options, self.importance, self.swap = config, options, importance, swap
        self.returned: tuple[str, ...] = ()
        """The RenderOutput fields the last forward returned, in order (those that were not None)."""

    def forward(self, rays_o: Tensor, rays_d: Tensor, light_position: Tensor, jitter: Tensor, *rest: Tensor) -> tuple[Tensor, ...]:
        remaining = list(rest)
        importance = remaining.pop(0) if self.importance else None
        solid = remaining.pop(0)
        swap = remaining.pop(0) if self.swap else None
        draws = RenderDraws(jitter, importance, BackgroundDraw(solid, swap))
        out = render_rays(self.geometry, self.background, rays_o, rays_d, light_position, self.config, self.options,
                          Randomness(training=True, draws=draws))  # fmt: skip
        self.returned = tuple(name for name in _OUTPUTS if getattr(out, name) is not None)  # a graph returns tensors only
        return tuple(getattr(out, name) for name in self.returned)


class GraphedRender:
    """Training renders of ``geometry`` over ``background`` replayed from CUDA graphs of their forward and
    backward, captured on first use for each kind of render (shapes, renderer config, shading options, and
    float32 matmul precision, which decides the captured kernels).

    A replay writes into the same buffers each time, so a render's backward must run before the next render
    (as in a training step). A capture that fails warns once and leaves every render eager: slower, never wrong.
    """

    def __init__(self, geometry: Geometry, background: Background) -> None:
        self.geometry = geometry
        self.background = background
        self._graphed: dict[tuple[Any, ...], tuple[_TrainingRender, Any]] = {}
        self._pool: Any = None
        self.eager_fallback = False

    def __call__(
        self, rays_o: Tensor, rays_d: Tensor, light_position: Tensor, config: RendererConfig, options: ShadingOptions,
        draws: RenderDraws,
    ) -> RenderOutput:  # fmt: skip
        if self.eager_fallback:
            return self._eager(rays_o, rays_d, light_position, config, options, draws)
        inputs = [rays_o, rays_d, light_position, draws.jitter]
        inputs += [t for t in (draws.importance, draws.background.solid, draws.background.swap) if t is not None]
        importance, swap = draws.importance is not None, draws.background.swap is not None
        key = (*(tuple(t.shape) for t in inputs), config, options, importance, swap, torch.backends.cuda.matmul.allow_tf32)
        if key not in self._graphed:
            module = _TrainingRender(self.geometry, self.background, config, options, importance, swap)
            try:
                self._graphed[key] = (module, self._capture(module, inputs))
            except Exception as error:  # noqa: BLE001 - any capture failure: fall back to eager renders
                self.eager_fallback = True
                warnings.warn(f"CUDA-graph capture of the training render failed ({type(error).__name__}: "
                              f"{str(error)[:200]}); rendering eagerly", RuntimeWarning, stacklevel=2)  # fmt: skip
                return self._eager(rays_o, rays_d, light_position, config, options, draws)
        module, graphed = self._graphed[key]
        values = graphed(*inputs)
        found = dict(zip(module.returned, values, strict=True))
        return RenderOutput(**{name: found.get(name) for name in _OUTPUTS})

    def _eager(self, rays_o: Tensor, rays_d: Tensor, light_position: Tensor, config: RendererConfig,
               options: ShadingOptions, draws: RenderDraws) -> RenderOutput:  # fmt: skip
        return render_rays(self.geometry, self.background, rays_o, rays_d, light_position, config, options,
                           Randomness(training=True, draws=draws))  # fmt: skip

    def _capture(self, module: nn.Module, inputs: list[Tensor]) -> Any:
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        # The warm-up iterations run the render and its backward (gradients of the inputs only: the parameters'
        # .grad stay untouched) before capture. The background's MLP is unused with random solid colours.
        sample = tuple(t.detach().clone() for t in inputs)
        return torch.cuda.make_graphed_callables(module, sample, num_warmup_iters=3, allow_unused_input=True, pool=self._pool)
