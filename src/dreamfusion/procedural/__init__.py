"""Procedural captioned 3D objects: the training data of the embedded prior and the probe classifier, and
the ground-truth shapes (SDFs, occupancy grids) behind each caption for measuring 3D quality."""

from dreamfusion.procedural.dataset import (
    COLOUR_NAMES,
    ProceduralBatch,
    ProceduralDataConfig,
    allowed_pairs,
    render_views,
    sample_batch,
    sample_pairs,
)
from dreamfusion.procedural.objects import (
    COLOURS,
    HELD_OUT_PAIRS,
    OBJECT_KINDS,
    caption,
    is_held_out,
    object_albedo,
    object_sdf,
    occupancy_grid,
    training_pairs,
)
from dreamfusion.procedural.render import Backgrounds, TraceConfig, render_objects

__all__ = [
    "COLOURS",
    "COLOUR_NAMES",
    "HELD_OUT_PAIRS",
    "OBJECT_KINDS",
    "Backgrounds",
    "ProceduralBatch",
    "ProceduralDataConfig",
    "TraceConfig",
    "allowed_pairs",
    "caption",
    "is_held_out",
    "object_albedo",
    "object_sdf",
    "occupancy_grid",
    "render_objects",
    "render_views",
    "sample_batch",
    "sample_pairs",
    "training_pairs",
]
