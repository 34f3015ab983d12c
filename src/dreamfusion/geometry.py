"""What the renderer, videos and export ask of the geometry they draw: the NeRF field, the trainer's compiled wrapper
of it, or any other representation (a signed distance surface, a mesh) that can answer the same three questions."""

from __future__ import annotations

from typing import Protocol

from jaxtyping import Float
from torch import Tensor

from dreamfusion.field import FieldOutput


class Geometry(Protocol):
    """Density and albedo at points, outward unit normals on request, and a sphere outside which nothing is."""

    @property
    def bound(self) -> float:
        """Radius of the bounding sphere at the origin: rays are sampled only inside it."""
        ...

    def __call__(self, x: Float[Tensor, "N 3"], with_normals: bool = False) -> FieldOutput:
        """Density, albedo and, when ``with_normals``, outward unit normals at ``x`` (else ``normals`` is None)."""
        ...

    def density(self, x: Float[Tensor, "N 3"]) -> Float[Tensor, " N"]:
        """The density alone, for passes that need no colour (importance sampling, empty-space grids)."""
        ...
