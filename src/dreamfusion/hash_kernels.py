"""The hash-grid encoding (``field.HashGridEncoding``) as two fused Triton kernels, for CUDA.

Written as tensor operations, one encoding of a training render's 262k samples moves its (N, L, 8, F) corner
tensors through memory dozens of times, and those passes were most of a step's GPU time. Here one kernel
gathers each point's 8 corners per level and writes its features (and their Jacobian with respect to the point,
for analytic normals); a second scatters the gradients back into the tables with atomic adds, summing those of
consecutive points in the same cell first. The indexing,
corner order and interpolation are those of ``HashGridEncoding``; only the order of the sums differs.

Differentiable with respect to the tables only (the points of a render need no gradient): callers fall back to
the tensor version when the points require one. Triton is imported on first use.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

BLOCK = 256
"""(point, level) elements per program of the forward kernel."""
RUN = 8
"""Consecutive points per thread in the backward kernel, whose table gradients are summed while they share a cell."""
BACKWARD_BLOCK = 128


@dataclass(frozen=True)
class GridLayout:
    """Where each level's corners live in the flattened (levels x table_size, F) table."""

    resolutions: Float[Tensor, " L"]
    axis_multipliers: Int[Tensor, "L 3"]
    level_offsets: Int[Tensor, " L"]
    dense_levels: int
    """Levels ``< dense_levels`` add their axis terms; the others XOR them, masked to the table size."""
    table_size: int
    features: int


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _kernels() -> tuple[Any, Any]:
    """The encode and backward kernels, compiled on their first launch for each set of constants."""
    try:
        hash_triton = importlib.import_module("dreamfusion.hash_triton")
    except ImportError as error:
        raise ImportError("the fused hash-grid kernels need Triton: pip install triton (CUDA builds of torch include it)") from error
    return hash_triton.encode_kernel, hash_triton.backward_kernel


def triton_grid(elements: int, block: int = BLOCK) -> int:
    return (elements + block - 1) // block


def _power_of_two(count: int) -> int:
    return 1 << (count - 1).bit_length()


def _launch_arguments(layout: GridLayout, rows: int) -> tuple[Any, ...]:
    return (layout.resolutions, layout.axis_multipliers, layout.level_offsets, layout.dense_levels, layout.table_size - 1, rows)


class _FusedEncoding(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, points: Tensor, table: Tensor, layout: GridLayout, with_jacobian: bool) -> tuple[Tensor, Tensor]:
        encode, _ = _kernels()
        n, levels, features = points.shape[0], layout.resolutions.shape[0], layout.features
        width = levels * features
        out = points.new_empty(n, width)
        jacobian = points.new_empty(n, 3, width) if with_jacobian else points.new_empty(0)
        if n > 0:
            encode[(triton_grid(n * levels),)](
                points, table, out, jacobian, n * levels, *_launch_arguments(layout, table.shape[0]),
                LEVELS=levels, F=features, WITH_JACOBIAN=with_jacobian, BLOCK=BLOCK,
            )  # fmt: skip
        ctx.save_for_backward(points)
        ctx.layout, ctx.rows, ctx.with_jacobian = layout, table.shape[0], with_jacobian
        ctx.set_materialize_grads(False)  # an output that gets no gradient arrives as None, not as zeros
        return out, jacobian

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_features: Tensor | None, grad_jacobian: Tensor | None) -> tuple[None, Tensor, None, None]:
        _, backward_kernel = _kernels()
        (points,) = ctx.saved_tensors
        layout: GridLayout = ctx.layout
        levels, features, n = layout.resolutions.shape[0], layout.features, points.shape[0]
        grad_table = points.new_zeros(ctx.rows, features)
        with_jacobian = ctx.with_jacobian and grad_jacobian is not None
        if grad_features is None:
            grad_features = points.new_zeros(n, levels * features)
        if n > 0:
            runs = (n + RUN - 1) // RUN
            backward_kernel[(triton_grid(runs * levels, BACKWARD_BLOCK),)](
                points, grad_table, grad_features.contiguous(),
                grad_jacobian.contiguous() if with_jacobian else grad_features, n,
                *_launch_arguments(layout, ctx.rows), LEVELS=levels, F=features, FP=_power_of_two(features), RUN=RUN,
                WITH_JACOBIAN=with_jacobian, BLOCK=BACKWARD_BLOCK,
            )  # fmt: skip
        return None, grad_table, None, None


def fused_encode(
    points: Float[Tensor, "N 3"], table: Float[Tensor, "R F"], layout: GridLayout, with_jacobian: bool
) -> tuple[Float[Tensor, "N LF"], Float[Tensor, "N 3 LF"] | None]:
    """Features of ``points`` in [0, 1]^3 from the flattened ``table`` and, with ``with_jacobian``, their
    derivatives with respect to each coordinate; differentiable with respect to ``table``."""
    if points.requires_grad:
        raise ValueError("the fused hash-grid encoding does not differentiate with respect to the points")
    if points.dtype != torch.float32 or table.dtype != torch.float32:
        raise ValueError("the fused hash-grid encoding runs in float32")
    features, jacobian = _FusedEncoding.apply(points.contiguous(), table.contiguous(), layout, with_jacobian)
    return features, (jacobian if with_jacobian else None)
