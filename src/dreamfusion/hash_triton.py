"""The Triton kernels behind ``hash_kernels`` (imported on first use: Triton ships with CUDA builds of torch).

Triton reads ``TRITON_INTERPRET`` when this module is imported: with it set to 1 the kernels run in Triton's
interpreter, on CPU tensors.
"""

import triton
import triton.language as tl


@triton.jit
def corner_indices(points, element, mask, res_ptr, mult_ptr, offset_ptr, dense_levels, table_mask, LEVELS: tl.constexpr):
    """For each (point, level) element (level fastest, so a warp's threads read and write neighbouring columns
    and scatter into different levels' rows): the per-axis fractions, the two axis terms on each axis (the
    level's offset in the x terms) and whether the level is hashed."""
    point, level = element // LEVELS, element % LEVELS
    res = tl.load(res_ptr + level, mask=mask, other=1.0)
    hashed = level >= dense_levels
    fx = tl.load(points + point * 3 + 0, mask=mask, other=0.0) * res
    fy = tl.load(points + point * 3 + 1, mask=mask, other=0.0) * res
    fz = tl.load(points + point * 3 + 2, mask=mask, other=0.0) * res
    bx, by, bz = tl.floor(fx), tl.floor(fy), tl.floor(fz)
    fx, fy, fz = fx - bx, fy - by, fz - bz
    cx, cy, cz = bx.to(tl.int64), by.to(tl.int64), bz.to(tl.int64)
    mx = tl.load(mult_ptr + level * 3 + 0, mask=mask, other=0)
    my = tl.load(mult_ptr + level * 3 + 1, mask=mask, other=0)
    mz = tl.load(mult_ptr + level * 3 + 2, mask=mask, other=0)
    offset = tl.load(offset_ptr + level, mask=mask, other=0)
    x0, x1 = cx * mx, (cx + 1) * mx
    y0, y1 = cy * my, (cy + 1) * my
    z0, z1 = cz * mz, (cz + 1) * mz
    x0 = tl.where(hashed, x0 & table_mask, x0) + offset
    x1 = tl.where(hashed, x1 & table_mask, x1) + offset
    y0, y1 = tl.where(hashed, y0 & table_mask, y0), tl.where(hashed, y1 & table_mask, y1)
    z0, z1 = tl.where(hashed, z0 & table_mask, z0), tl.where(hashed, z1 & table_mask, z1)
    return point, level, res, fx, fy, fz, x0, x1, y0, y1, z0, z1, hashed


@triton.jit
def combine(tx, ty, tz, hashed, rows):
    """One corner's row from its axis terms: their XOR on hashed levels, their sum on dense ones."""
    index = tl.where(hashed, tx ^ ty ^ tz, tx + ty + tz)
    return tl.minimum(tl.maximum(index, 0), rows - 1)  # an exact 1.0 on a dense level's edge; its weight is 0


@triton.jit
def encode_kernel(
    points, table, features_out, jacobian_out, elements, res_ptr, mult_ptr, offset_ptr, dense_levels, table_mask,
    rows, LEVELS: tl.constexpr, F: tl.constexpr, WITH_JACOBIAN: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    element = (tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    mask = element < elements
    point, level, res, fx, fy, fz, x0, x1, y0, y1, z0, z1, hashed = corner_indices(
        points, element, mask, res_ptr, mult_ptr, offset_ptr, dense_levels, table_mask, LEVELS
    )
    width = LEVELS * F
    for f in tl.static_range(F):
        # Zeros of the block's shape. Not tl.zeros: a jit function of Triton's own, which the interpreter cannot
        # run when Triton was imported before TRITON_INTERPRET was set.
        value = fx * 0.0
        dx = fx * 0.0
        dy = fx * 0.0
        dz = fx * 0.0
        for corner in tl.static_range(8):
            i, j, k = (corner >> 2) & 1, (corner >> 1) & 1, corner & 1
            tx = x1 if i else x0
            ty = y1 if j else y0
            tz = z1 if k else z0
            wx = fx if i else 1.0 - fx
            wy = fy if j else 1.0 - fy
            wz = fz if k else 1.0 - fz
            row = combine(tx, ty, tz, hashed, rows)
            v = tl.load(table + row * F + f, mask=mask, other=0.0)
            value += wx * wy * wz * v
            if WITH_JACOBIAN:
                sx = 1.0 if i else -1.0
                sy = 1.0 if j else -1.0
                sz = 1.0 if k else -1.0
                dx += sx * wy * wz * v
                dy += wx * sy * wz * v
                dz += wx * wy * sz * v
        column = level * F + f
        tl.store(features_out + point * width + column, value, mask=mask)
        if WITH_JACOBIAN:
            base = point * (3 * width) + column
            tl.store(jacobian_out + base, dx * res, mask=mask)
            tl.store(jacobian_out + base + width, dy * res, mask=mask)
            tl.store(jacobian_out + base + 2 * width, dz * res, mask=mask)


@triton.jit
def point_contribution(
    points, grad_features, grad_jacobian, n, point, level, in_range, res_ptr, mult_ptr, offset_ptr, dense_levels,
    table_mask, rows, LEVELS: tl.constexpr, F: tl.constexpr, FP: tl.constexpr, WITH_JACOBIAN: tl.constexpr,
):  # fmt: skip
    """One point's gradient for each of its 8 corner rows at ``level`` (BLOCK x 8 x FP), the rows (BLOCK x 8 x 1),
    the six axis terms that fix them, and whether the point exists."""
    corner = tl.arange(0, 8)
    ci, cj, ck = ((corner >> 2) & 1)[None, :, None], ((corner >> 1) & 1)[None, :, None], (corner & 1)[None, :, None]
    column = tl.arange(0, FP)[None, None, :]
    width = LEVELS * F
    valid = in_range & (point < n)
    _, _, res, fx, fy, fz, x0, x1, y0, y1, z0, z1, hashed = corner_indices(
        points, point * LEVELS + level, valid, res_ptr, mult_ptr, offset_ptr, dense_levels, table_mask, LEVELS
    )
    wx = tl.where(ci == 1, fx[:, None, None], 1.0 - fx[:, None, None])
    wy = tl.where(cj == 1, fy[:, None, None], 1.0 - fy[:, None, None])
    wz = tl.where(ck == 1, fz[:, None, None], 1.0 - fz[:, None, None])
    feature_mask = valid[:, None, None] & (column < F)
    g = tl.load(grad_features + point[:, None, None] * width + level[:, None, None] * F + column, mask=feature_mask, other=0.0)
    contribution = wx * wy * wz * g
    if WITH_JACOBIAN:
        at = point[:, None, None] * (3 * width) + level[:, None, None] * F + column
        gx = tl.load(grad_jacobian + at, mask=feature_mask, other=0.0) * res[:, None, None]
        gy = tl.load(grad_jacobian + at + width, mask=feature_mask, other=0.0) * res[:, None, None]
        gz = tl.load(grad_jacobian + at + 2 * width, mask=feature_mask, other=0.0) * res[:, None, None]
        sx = tl.where(ci == 1, 1.0, -1.0)
        sy = tl.where(cj == 1, 1.0, -1.0)
        sz = tl.where(ck == 1, 1.0, -1.0)
        contribution += sx * wy * wz * gx + wx * sy * wz * gy + wx * wy * sz * gz
    tx = tl.where(ci == 1, x1[:, None, None], x0[:, None, None])
    ty = tl.where(cj == 1, y1[:, None, None], y0[:, None, None])
    tz = tl.where(ck == 1, z1[:, None, None], z0[:, None, None])
    row = combine(tx, ty, tz, hashed[:, None, None], rows)
    return contribution, row, valid, x0, x1, y0, y1, z0, z1


@triton.jit
def backward_kernel(
    points, grad_table, grad_features, grad_jacobian, n, res_ptr, mult_ptr, offset_ptr, dense_levels, table_mask,
    rows, LEVELS: tl.constexpr, F: tl.constexpr, FP: tl.constexpr, RUN: tl.constexpr, WITH_JACOBIAN: tl.constexpr,
    BLOCK: tl.constexpr,
):  # fmt: skip
    """Each thread takes a run of RUN consecutive points at one level (level fastest). Consecutive samples of a
    ray often share a cell of the coarse levels, where every point of the render adds to the same few hundred
    rows: their contributions are summed in registers and added to the table once per cell, not once per point."""
    element = (tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    in_range = element < ((n + RUN - 1) // RUN) * LEVELS
    chunk, level = element // LEVELS, element % LEVELS
    column = tl.arange(0, FP)[None, None, :]
    total, last_row, last_valid, lx0, lx1, ly0, ly1, lz0, lz1 = point_contribution(
        points, grad_features, grad_jacobian, n, chunk * RUN, level, in_range, res_ptr, mult_ptr, offset_ptr,
        dense_levels, table_mask, rows, LEVELS, F, FP, WITH_JACOBIAN,
    )  # fmt: skip
    for r in tl.static_range(1, RUN):
        contribution, row, valid, x0, x1, y0, y1, z0, z1 = point_contribution(
            points, grad_features, grad_jacobian, n, chunk * RUN + r, level, in_range, res_ptr, mult_ptr, offset_ptr,
            dense_levels, table_mask, rows, LEVELS, F, FP, WITH_JACOBIAN,
        )  # fmt: skip
        # The same six axis terms give the same 8 rows: keep summing. Otherwise add the run so far to the table.
        same = valid & last_valid & (x0 == lx0) & (x1 == lx1) & (y0 == ly0) & (y1 == ly1) & (z0 == lz0) & (z1 == lz1)
        flush = last_valid & ~same
        tl.atomic_add(grad_table + last_row * F + column, total, mask=flush[:, None, None] & (column < F))
        total = tl.where(same[:, None, None], total + contribution, contribution)
        last_row, last_valid = row, valid
        lx0, lx1, ly0, ly1, lz0, lz1 = x0, x1, y0, y1, z0, z1
    tl.atomic_add(grad_table + last_row * F + column, total, mask=last_valid[:, None, None] & (column < F))
