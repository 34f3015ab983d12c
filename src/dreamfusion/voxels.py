"""Morphology of boolean voxel grids, shared by empty-space skipping, surface fitting, mesh export and evaluation."""

from __future__ import annotations

import torch.nn.functional as F
from jaxtyping import Bool
from torch import Tensor


def dilated(occupied: Bool[Tensor, "R R R"], radius: int = 1) -> Bool[Tensor, "R R R"]:
    """``occupied`` and every voxel within ``radius`` cells of it on each axis (radius 1: the 26 neighbours).
    Nothing grows past the grid."""
    return F.max_pool3d(occupied.float()[None, None], 2 * radius + 1, stride=1, padding=radius)[0, 0] > 0


def boundary(inside: Bool[Tensor, "R R R"]) -> Bool[Tensor, "R R R"]:
    """Voxels with a neighbour (of the 26) on the other side of ``inside``'s edge."""
    above = inside.float()[None, None]
    return (F.max_pool3d(above, 3, 1, 1) != -F.max_pool3d(-above, 3, 1, 1))[0, 0]
