"""Quality metrics of a trained NeRF for a prompt of the embedded vocabulary ("a red chair").

Two questions, answered against the procedural ground truth the embedded prior was trained on:

* What does it look like? The scene is rendered from a fixed ring of cameras and the probe classifier
  (embedded/probe.py) names the object, colour and view it sees. The Janus rate counts back views that look
  like front views (the multi-faced failure of SDS).
* Is it the right shape? Which voxels of a 64^3 grid over [-1, 1]^3 the field fills, against the procedural
  object's occupancy grid (IoU). A voxel is filled when it lies behind the field's half-transmittance point
  seen along each of the six axis directions (optical depth > ln 2 from outside the grid to the voxel's
  centre): the surface a render shows (where a ray's transmittance falls to one half), with no density
  threshold to tune. SDS fields are soft (an opaque object may never exceed density 10 inside), so a fixed
  density threshold would call a solid-looking object empty; a thin haze, on the other hand, stays
  transparent and is not counted.
  Beside it, a diagnostic: the best IoU against the true object turned about the vertical axis (16 turns of
  22.5 degrees), which tells a wrong shape from a right one that faces the wrong way.

Cameras: 16 azimuths (11.25 + 22.5 k degrees, so no camera sits on a front/side/back boundary and each ring
holds 4 front, 8 side and 4 back views) at elevations 15 and 45 degrees (both below the 60 degrees where
"overhead" starts), distance 1.25, focal 1.0 x 64 px: the turntable's framing, inside the training cameras'
ranges. Each view is rendered twice over white, in albedo (the colour as learned) and lambertian with the light
at the camera (the shape's relief), and the probe's probabilities of the two are averaged.

Janus rate: (views whose true label is "back" and that the probe labels "front") / (views whose true label is
"back"). It and view accuracy are only meaningful for kinds whose back differs from their front
(``view_identifiable``; see probe.VIEW_SYMMETRIC_KINDS): for a sphere they measure nothing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from dreamfusion.cameras import VIEW_LABELS, CameraBatch, ViewLabel, cameras_from_angles
from dreamfusion.embedded import vocabulary as vocab
from dreamfusion.embedded.probe import VIEW_SYMMETRIC_KINDS, Probe, ProbePrediction, load_probe
from dreamfusion.field import NeRFField
from dreamfusion.procedural.dataset import COLOUR_NAMES
from dreamfusion.procedural.objects import OBJECT_KINDS, grid_points, occupancy_grid
from dreamfusion.renderer import RenderOutput
from dreamfusion.scene import MAX_RAYS, Scene
from dreamfusion.shading import Background, BackgroundConfig, ShadingMode
from dreamfusion.voxels import dilated


def parse_subject(prompt: str) -> tuple[str, str | None]:
    """(object kind, colour or None) of a prompt in the embedded vocabulary; PriorError otherwise.

    Aliases and view words are understood as the embedded prior reads them: "a gray ball, side view" ->
    ("sphere", "grey").
    """
    slots = vocab.tokenize(prompt)  # raises PriorError on unknown words, no object or two of a kind
    kind = vocab.TOKENS[slots[vocab.SLOT_OBJECT]]
    colour = slots[vocab.SLOT_COLOUR]
    return kind, None if colour == vocab.PAD_ID else vocab.TOKENS[colour]


# ----- scores ----------------------------------------------------------------------------------------


def janus_rate(
    true_views: Sequence[ViewLabel], predicted_views: Sequence[ViewLabel], true_label: ViewLabel = "back"
) -> float | None:
    """Fraction of views truly labelled ``true_label`` that are seen as "front"; None if there are none."""
    seen = [p for t, p in zip(true_views, predicted_views, strict=True) if t == true_label]
    return sum(p == "front" for p in seen) / len(seen) if seen else None


@dataclass(frozen=True)
class ProbeEvaluation:
    """Aggregate probe scores over a set of images with known object, colour and view."""

    count: int
    object_accuracy: float
    colour_accuracy: float | None
    """None when the prompt names no colour."""
    object_colour_accuracy: float | None
    """Both right in the same image."""
    view_accuracy: float
    janus_rate: float | None
    """True "back" views seen as "front" / true "back" views (None without back views)."""
    side_as_front_rate: float | None
    """The same for true "side" views."""

    @classmethod
    def score(
        cls,
        true_object: Int[Tensor, " N"],
        true_colour: Int[Tensor, " N"] | None,
        true_view: Int[Tensor, " N"],
        prediction: ProbePrediction,
    ) -> ProbeEvaluation:
        """Scores of ``prediction`` against the truth (indices into OBJECT_KINDS, COLOUR_NAMES, VIEW_LABELS)."""
        device = prediction.object_ids.device
        hit_object = prediction.object_ids == true_object.to(device)
        hit_colour = None if true_colour is None else prediction.colour_ids == true_colour.to(device)
        true_labels = [VIEW_LABELS[i] for i in true_view.tolist()]
        predicted = [VIEW_LABELS[i] for i in prediction.view_ids.tolist()]
        return cls(
            count=len(prediction),
            object_accuracy=hit_object.float().mean().item(),
            colour_accuracy=None if hit_colour is None else hit_colour.float().mean().item(),
            object_colour_accuracy=None if hit_colour is None else (hit_object & hit_colour).float().mean().item(),
            view_accuracy=(prediction.view_ids == true_view.to(device)).float().mean().item(),
            janus_rate=janus_rate(true_labels, predicted, "back"),
            side_as_front_rate=janus_rate(true_labels, predicted, "side"),
        )


# ----- occupancy -------------------------------------------------------------------------------------


HALF_TRANSMITTANCE_DEPTH = math.log(2.0)


def hidden_voxels(density: Float[Tensor, "R R R"], voxel: float) -> Bool[Tensor, "R R R"]:
    """Voxels whose optical depth from outside the grid to their centre exceeds ln 2 (transmittance below
    one half) along all six axis directions."""
    depth = density * voxel
    hidden = torch.ones_like(density, dtype=torch.bool)
    for axis in range(3):
        from_low = depth.cumsum(axis) - depth / 2
        from_high = depth.flip(axis).cumsum(axis).flip(axis) - depth / 2
        hidden &= (from_low > HALF_TRANSMITTANCE_DEPTH) & (from_high > HALF_TRANSMITTANCE_DEPTH)
    return hidden


@torch.no_grad()
def field_occupancy(
    field: NeRFField, resolution: int = 64, bound: float = 1.0, threshold: float | None = None, chunk: int = 1 << 18
) -> Bool[Tensor, "R R R"]:
    """Filled voxels on the same grid and axis order as ``procedural.occupancy_grid`` ([x, y, z], ends
    included), on the CPU: ``hidden_voxels`` (see the module docstring), or density > ``threshold`` if given."""
    device = next(field.parameters()).device
    points = grid_points(resolution, bound, device).reshape(-1, 3)
    density = torch.cat([field.density(part) for part in points.split(chunk)]).reshape((resolution,) * 3).float().cpu()
    if threshold is not None:
        return density > threshold
    return hidden_voxels(density, 2.0 * bound / (resolution - 1))


def occupancy_iou(a: Bool[Tensor, "R R R"], b: Bool[Tensor, "R R R"]) -> float:
    """|a and b| / |a or b|; 1 when both are empty (they agree)."""
    union = (a | b).sum().item()
    return 1.0 if union == 0 else (a & b).sum().item() / union


def best_turn(
    occupied: Bool[Tensor, "R R R"], truth: Bool[Tensor, "R R R"], kind: str, config: Eval3DConfig
) -> tuple[float, float]:
    """(IoU, degrees) of the turn of the true object about the vertical axis that best matches ``occupied``;
    ``truth`` is the object's grid in its canonical pose (turn 0)."""
    turns = [360.0 * k / config.turns for k in range(config.turns)]
    scores = [occupancy_iou(occupied, truth)] + [
        occupancy_iou(occupied, occupancy_grid(kind, config.grid_resolution, config.grid_bound, turn)) for turn in turns[1:]
    ]
    best = max(range(len(turns)), key=scores.__getitem__)
    return scores[best], turns[best]


def _filled_points(occupied: Bool[Tensor, "R R R"], bound: float) -> Float[Tensor, "N 3"]:
    return -bound + 2.0 * bound * occupied.nonzero().float() / (occupied.shape[0] - 1)


def centroid(occupied: Bool[Tensor, "R R R"], bound: float) -> Float[Tensor, "3"]:
    """Mean position of the filled voxels (the origin for an empty grid)."""
    points = _filled_points(occupied, bound)
    return points.mean(0) if points.shape[0] else torch.zeros(3)


def spread(occupied: Bool[Tensor, "R R R"], bound: float) -> float:
    """Root-mean-square distance of the filled voxels from their centre: a size that thin parts do not skew."""
    points = _filled_points(occupied, bound)
    return float((points - points.mean(0)).square().sum(-1).mean().sqrt()) if points.shape[0] else 0.0


LossSource = Literal["orientation", "position", "scale", "thickness", "shape"]
THICKNESS_TOLERANCE = 1.5
"""A field more than this many times as thick as the object, or as thin, counts as the wrong thickness."""
ALIGNMENT_SCALES = (0.7, 0.8, 0.9, 1.0, 1.1, 1.25, 1.4)
"""Scales tried about the one that matches the sizes (``spread``)."""


@dataclass(frozen=True)
class Alignment:
    """Where the IoU against the true object is lost: each figure aligns one more thing (a diagnostic; the
    canonical IoU is the score). The true object is turned about the vertical axis, then its centre is moved
    onto the field's, then it is scaled about that centre."""

    turn_iou: float
    position_iou: float
    """Best turn, with the centres matched."""
    aligned_iou: float
    """Best turn, centres matched, and the best scale."""
    turn_degrees: float
    scale: float
    offset: tuple[float, float, float]
    thickness: float
    """Field voxels over those of the true object grown to the field's size (``spread``): above 1 the field is
    too thick (a bloated or hazy version of the shape), below 1 too thin."""
    loss: LossSource
    """What costs the most IoU: the largest of the gains of orientation, position and scale, or of what no
    alignment recovers, which is called thickness when the field is far too thick or thin, else shape."""


def align(
    occupied: Bool[Tensor, "R R R"], kind: str, truth: Bool[Tensor, "R R R"], turn_iou: float, config: Eval3DConfig
) -> Alignment:
    """The ``Alignment`` of the field's filled voxels with the true object ``kind``, given its grid in the
    canonical pose (``truth``) and the best IoU over its turns (``best_turn``)."""
    resolution, bound = config.grid_resolution, config.grid_bound
    turns = [360.0 * k / config.turns for k in range(config.turns)]
    centre = centroid(occupied, bound)
    centres = {turn: centroid(occupancy_grid(kind, resolution, bound, turn) if turn else truth, bound) for turn in turns}

    def fitted(turn: float, scale: float) -> tuple[float, tuple[float, float, float]]:
        offset = tuple(float(v) for v in centre - scale * centres[turn])
        moved = occupancy_grid(kind, resolution, bound, turn, scale, offset)  # type: ignore[arg-type]
        return occupancy_iou(occupied, moved), offset  # type: ignore[return-value]

    positioned = {turn: fitted(turn, 1.0) for turn in turns}
    best_turn_degrees = max(turns, key=lambda turn: positioned[turn][0])
    position_iou = positioned[best_turn_degrees][0]
    size_scale = spread(occupied, bound) / max(spread(truth, bound), 1e-6)
    candidates = {1.0: positioned[best_turn_degrees]} | {
        size_scale * factor: fitted(best_turn_degrees, size_scale * factor) for factor in ALIGNMENT_SCALES if size_scale > 0
    }
    scale = max(candidates, key=lambda value: candidates[value][0])
    aligned_iou, offset = candidates[scale]
    thickness = int(occupied.sum()) / (max(int(truth.sum()), 1) * max(size_scale, 1e-6) ** 3)
    canonical_iou = occupancy_iou(occupied, truth)
    gains = {
        "orientation": turn_iou - canonical_iou,
        "position": position_iou - turn_iou,
        "scale": aligned_iou - position_iou,
        "shape": 1.0 - aligned_iou,
    }
    loss = max(gains, key=gains.__getitem__)
    if loss == "shape" and not 1 / THICKNESS_TOLERANCE <= thickness <= THICKNESS_TOLERANCE:
        loss = "thickness"
    return Alignment(
        turn_iou=turn_iou, position_iou=position_iou, aligned_iou=aligned_iou, turn_degrees=best_turn_degrees,
        scale=scale, offset=offset, thickness=thickness,
        loss=loss,  # type: ignore[arg-type]
    )  # fmt: skip


# ----- the 3D evaluation -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Eval3DConfig:
    """Cameras, shading and grid of ``evaluate_3d`` (see the module docstring for why)."""

    elevations: tuple[float, ...] = (15.0, 45.0)
    azimuths: int = 16
    start_azimuth: float = 11.25
    distance: float = 1.25
    focal_multiplier: float = 1.0
    resolution: int = 64
    shading: tuple[ShadingMode, ...] = ("albedo", "lambertian")
    """Each view is rendered in these modes; the probe's probabilities are averaged over them."""
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    grid_resolution: int = 64
    grid_bound: float = 1.0
    density_threshold: float | None = None
    """None: filled voxels are the hidden ones (see the module docstring); a number: density above it."""
    turns: int = 16
    """Turns of the true object about the vertical axis for ``best_turn_iou`` (1: only the canonical pose)."""
    max_rays: int = MAX_RAYS
    """Rays per render call (bounds the renderer's memory)."""

    def __post_init__(self) -> None:
        if not self.elevations or self.azimuths < 1 or not self.shading or self.turns < 1:
            raise ValueError("evaluation needs at least one elevation, azimuth, shading mode and turn")
        if self.distance <= 0 or self.focal_multiplier <= 0 or self.resolution < 8 or self.grid_resolution < 2:
            raise ValueError("evaluation distance and focal must be positive, resolution >= 8, grid >= 2")
        if self.max_rays <= 0:
            raise ValueError("evaluation max_rays must be positive")


@dataclass(frozen=True)
class ViewRecord:
    """What the probe saw from one camera."""

    elevation: float
    azimuth: float
    true_view: ViewLabel
    predicted_object: str
    predicted_colour: str
    predicted_view: ViewLabel
    object_probability: float
    """The probe's probability of the true object."""
    object_correct: bool
    colour_correct: bool | None
    """None when the prompt names no colour."""
    view_correct: bool


@dataclass(frozen=True)
class HeadlineScores:
    """The figures a benchmark table shows for one result (see ``Eval3DResult``)."""

    object_accuracy: float
    colour_accuracy: float | None
    object_colour_accuracy: float | None
    view_accuracy: float
    janus_rate: float | None
    occupancy_iou: float
    best_turn_iou: float
    aligned_iou: float
    albedo_noise: float | None
    shading_speckle: float | None
    mesh_occupancy_iou: float | None = None
    """IoU of the exported mesh against the true object (None: no mesh)."""
    mesh_silhouette_iou: float | None = None
    mesh_colour_difference: float | None = None


@dataclass(frozen=True)
class MeshScores:
    """How faithful the run's mesh.glb is (see export.fidelity): to the field, and to the true object."""

    faces: int
    textured: bool
    silhouette_iou: float
    """Mean IoU of the mesh's outlines with the field's rendered ones, over 8 views."""
    colour_difference: float
    """Mean absolute RGB difference between the mesh's colours and the field's albedo where both are seen."""
    occupancy_iou: float | None
    """Against the true object on the evaluation grid (None outside the embedded vocabulary)."""

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    def summary(self) -> str:
        against_truth = "" if self.occupancy_iou is None else f", occupancy IoU {self.occupancy_iou:.3f} against the true object"
        return (f"  mesh.glb ({self.faces} faces, {'UV-textured' if self.textured else 'vertex colours'}): outline IoU "
                f"{self.silhouette_iou:.3f} and colour difference {self.colour_difference:.3f} against the field's renders"
                + against_truth)  # fmt: skip


@dataclass(frozen=True)
class Eval3DResult:
    prompt: str
    kind: str
    colour: str | None
    view_identifiable: bool
    """False for kinds whose back looks like their front: ignore view accuracy and the Janus rate then."""
    probe: ProbeEvaluation
    occupancy_iou: float
    one_voxel_iou: float
    """The true object's IoU with itself grown by one voxel all round: what a field one voxel (2/63 of the
    grid) too thick scores, the scale to read ``occupancy_iou`` on (thin kinds such as the chair score 0.3)."""
    best_turn_iou: float
    """The largest IoU against the true object turned about the vertical axis (a diagnostic, not the score)."""
    best_turn_degrees: float
    """The turn that gives it, counter-clockwise seen from above."""
    alignment: Alignment
    """Where the IoU is lost: orientation, position, scale or shape (a diagnostic, not the score)."""
    albedo_noise: float | None
    """Speckle of the learned colour (see ``albedo_noise``); None when no view shows the object."""
    shading_speckle: float | None
    """Speckle of the shape in textureless renders (see ``shading_speckle``); None when no view shows the object."""
    density_threshold: float | None
    """None: the hidden-voxel rule."""
    occupied_voxels: int
    """Voxels the field fills (0 means the field is empty: the IoU is 0)."""
    true_voxels: int
    views: tuple[ViewRecord, ...]
    config: Eval3DConfig
    mesh: MeshScores | None = None
    mesh_note: str | None = None
    """Why there are no mesh scores (e.g. the run has no mesh.glb)."""

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    def headline(self) -> HeadlineScores:
        p = self.probe
        m = self.mesh
        return HeadlineScores(p.object_accuracy, p.colour_accuracy, p.object_colour_accuracy, p.view_accuracy,
                              p.janus_rate, self.occupancy_iou, self.best_turn_iou, self.alignment.aligned_iou,
                              self.albedo_noise, self.shading_speckle,
                              None if m is None else m.occupancy_iou, None if m is None else m.silhouette_iou,
                              None if m is None else m.colour_difference)  # fmt: skip

    def summary(self) -> str:
        """A few human-readable lines."""

        def pct(x: float | None) -> str:
            return "n/a" if x is None else f"{100 * x:.0f}%"

        p = self.probe
        lines = [
            f"{self.prompt!r}: {self.kind}, colour {self.colour or 'unspecified'}, {p.count} views",
            f"  object {pct(p.object_accuracy)}  colour {pct(p.colour_accuracy)}  both {pct(p.object_colour_accuracy)}",
            f"  view {pct(p.view_accuracy)}  Janus (back seen as front) {pct(p.janus_rate)}"
            + ("" if self.view_identifiable else f"  [views of a {self.kind} cannot be told apart: ignore these]"),
            f"  occupancy IoU {self.occupancy_iou:.3f} ({self.occupied_voxels} voxels vs {self.true_voxels} true,"
            + (" hidden from all axis directions)" if self.density_threshold is None else f" density > {self.density_threshold:.1f})"),
            f"  (the true object grown by one voxel scores {self.one_voxel_iou:.3f} against itself)",
            f"  best IoU against the object turned about the vertical axis: {self.best_turn_iou:.3f}"
            f" at {self.best_turn_degrees:.1f} degrees",
            f"  aligned IoU {self.alignment.aligned_iou:.3f} (turned {self.alignment.turn_degrees:.1f} degrees, centres"
            f" matched: {self.alignment.position_iou:.3f}, scaled {self.alignment.scale:.2f}); thickness"
            f" {self.alignment.thickness:.2f} (1: as the object); most IoU is lost to {self.alignment.loss}",
            f"  albedo noise {'n/a' if self.albedo_noise is None else f'{self.albedo_noise:.3f}'} (speckle: the colour's"
            " standard deviation over the object's solid pixels); shading speckle"
            f" {'n/a' if self.shading_speckle is None else f'{self.shading_speckle:.3f}'} (textureless renders against"
            " their 3x3 median)",
            self.mesh.summary() if self.mesh is not None else f"  {self.mesh_note or 'no mesh scores'}",
        ]
        return "\n".join(lines)


def evaluation_cameras(config: Eval3DConfig) -> CameraBatch:
    """The ring of cameras: every azimuth at each elevation, the light at the camera."""
    azimuth = config.start_azimuth + torch.arange(config.azimuths, dtype=torch.float32) * (360.0 / config.azimuths)
    elevation = torch.tensor(config.elevations, dtype=torch.float32).repeat_interleave(config.azimuths)
    azimuth = azimuth.repeat(len(config.elevations))
    n = elevation.shape[0]
    return cameras_from_angles(
        elevation, azimuth, torch.full((n,), config.distance), torch.full((n,), config.focal_multiplier),
        config.resolution,
    )  # fmt: skip


def render_scene_views(
    scene: Scene, cameras: CameraBatch, mode: ShadingMode, config: Eval3DConfig
) -> Float[Tensor, "B 3 H W"]:
    """The scene from ``cameras`` over the evaluation background, rgb in [0, 1], on the CPU."""
    background = Background(BackgroundConfig(kind="random_solid", eval_colour=config.background)).to(scene.device)
    rgb = scene.render_views(cameras, _clamped_colour, mode=mode, background=background, max_rays=config.max_rays)
    return rgb.permute(0, 3, 1, 2)


def _clamped_colour(out: RenderOutput, cameras: CameraBatch) -> Float[Tensor, "b h w 3"]:
    return out.rgb.clamp(0, 1)


def _colour_and_opacity(out: RenderOutput, cameras: CameraBatch) -> Float[Tensor, "b h w 4"]:
    return torch.cat((out.rgb.clamp(0, 1), out.opacity), dim=-1)


SOLID_OPACITY = 0.95
"""Pixels at least this opaque are the object's own colour, not blended with the background."""


def albedo_noise(views: Float[Tensor, "B H W 4"], min_pixels: int = 16) -> float | None:
    """Speckle: the standard deviation of the albedo over each view's solid pixels (rgb, opacity channels),
    averaged over the channels and the views that show at least ``min_pixels`` of them. The objects of the
    vocabulary have one colour each, so a clean albedo gives about 0. None when no view shows the object."""
    per_view = []
    for view in views:
        solid = view[..., :3][view[..., 3] >= SOLID_OPACITY]
        if solid.shape[0] >= min_pixels:
            per_view.append(float(solid.std(dim=0).mean()))
    return sum(per_view) / len(per_view) if per_view else None


def shading_speckle(views: Float[Tensor, "B H W 4"], min_pixels: int = 16) -> float | None:
    """Speckle of the shape: the mean absolute difference between each pixel of a textureless render (rgb,
    opacity channels) and the median of its 3x3 neighbourhood, over pixels whose whole neighbourhood is solid.
    Smooth shading, even a steep one, stays near 0; isolated dark or bright pixels (noise in the normals) do
    not. Averaged over the views that have at least ``min_pixels`` such pixels; None when none has."""
    grey = views[..., :3].mean(-1)[:, None]
    solid = (views[..., 3] >= SOLID_OPACITY).float()[:, None]
    median = F.unfold(grey, 3, padding=1).median(dim=1).values.reshape(grey.shape)
    inner = -F.max_pool2d(-F.pad(solid, (1, 1, 1, 1)), 3, stride=1) > 0.5  # off the image is not solid
    per_view = [float((g - m).abs()[i].mean()) for g, m, i in zip(grey, median, inner) if int(i.sum()) >= min_pixels]
    return sum(per_view) / len(per_view) if per_view else None


def evaluate_3d(
    scene: Scene,
    prompt: str,
    probe: Probe,
    device: torch.device | str | None = None,
    config: Eval3DConfig = Eval3DConfig(),
) -> Eval3DResult:
    """Probe accuracies, Janus rate and occupancy IoU of a trained scene for ``prompt`` (embedded vocabulary).

    ``device``: where the field renders (None: where it already is); the probe stays on its own device.
    """
    kind, colour = parse_subject(prompt)
    if device is not None:
        scene.field.to(device)
        if scene.occupancy is not None and scene.occupancy.occupied.device != torch.device(device):
            scene.occupancy = None
    cameras = evaluation_cameras(config)
    looks = [probe.classify(render_scene_views(scene, cameras, mode, config)) for mode in config.shading]
    background = Background(BackgroundConfig(kind="random_solid", eval_colour=config.background)).to(scene.device)
    albedo = scene.render_views(cameras, _colour_and_opacity, background=background, max_rays=config.max_rays)
    shape = scene.render_views(cameras, _colour_and_opacity, mode="textureless", background=background,
                               max_rays=config.max_rays)  # fmt: skip
    prediction = ProbePrediction.mean(looks)
    n = cameras.batch_size
    true_object = torch.full((n,), OBJECT_KINDS.index(kind))
    true_colour = None if colour is None else torch.full((n,), COLOUR_NAMES.index(colour))
    true_view = torch.tensor([VIEW_LABELS.index(v) for v in cameras.view_labels])
    scores = ProbeEvaluation.score(true_object, true_colour, true_view, prediction)

    records = []
    object_probs = prediction.object_probs[:, OBJECT_KINDS.index(kind)].tolist()
    for i, (o, c, v) in enumerate(zip(*(x.tolist() for x in (prediction.object_ids, prediction.colour_ids,
                                                              prediction.view_ids)), strict=True)):
        records.append(ViewRecord(
            elevation=float(cameras.elevation[i]), azimuth=float(cameras.azimuth[i]), true_view=cameras.view_labels[i],
            predicted_object=OBJECT_KINDS[o], predicted_colour=COLOUR_NAMES[c], predicted_view=VIEW_LABELS[v],
            object_probability=object_probs[i], object_correct=OBJECT_KINDS[o] == kind,
            colour_correct=None if colour is None else COLOUR_NAMES[c] == colour,
            view_correct=VIEW_LABELS[v] == cameras.view_labels[i],
        ))  # fmt: skip

    threshold = config.density_threshold
    occupied = field_occupancy(scene.field, config.grid_resolution, config.grid_bound, threshold)
    truth = occupancy_grid(kind, config.grid_resolution, config.grid_bound)
    best_iou, best_degrees = best_turn(occupied, truth, kind, config)
    canonical = occupancy_iou(occupied, truth)
    return Eval3DResult(
        prompt=prompt, kind=kind, colour=colour, view_identifiable=kind not in VIEW_SYMMETRIC_KINDS, probe=scores,
        occupancy_iou=canonical, one_voxel_iou=occupancy_iou(truth, dilated(truth)), best_turn_iou=best_iou, best_turn_degrees=best_degrees,
        alignment=align(occupied, kind, truth, best_iou, config), albedo_noise=albedo_noise(albedo), shading_speckle=shading_speckle(shape),
        density_threshold=threshold,
        occupied_voxels=int(occupied.sum()), true_voxels=int(truth.sum()), views=tuple(records), config=config,
    )  # fmt: skip


def evaluate_mesh(scene: Scene, mesh, kind: str | None, config: Eval3DConfig = Eval3DConfig()) -> MeshScores:
    """``MeshScores`` of ``mesh`` (an export.mesh.Mesh) against the scene's field and, for a ``kind`` of the
    embedded vocabulary, the true object."""
    from dreamfusion.export.fidelity import mesh_fidelity, mesh_occupancy

    fidelity = mesh_fidelity(scene, mesh)
    occupancy = None
    if kind is not None:
        truth = occupancy_grid(kind, config.grid_resolution, config.grid_bound)
        occupancy = occupancy_iou(mesh_occupancy(mesh, config.grid_resolution, config.grid_bound), truth)
    return MeshScores(mesh.num_faces, mesh.textured, fidelity.silhouette_iou, fidelity.colour_difference, occupancy)


def run_mesh(run_dir: Path):
    """The run's mesh.glb, read back (as a user's tool reads it), or (None, why not)."""
    from dreamfusion.export.mesh import MeshExportError, read_mesh

    path = run_dir / "mesh.glb"
    if not path.is_file():
        return None, "no mesh.glb in the run (no mesh scores): see run.log, or run dreamfusion export"
    try:
        return read_mesh(path), None
    except MeshExportError as error:
        return None, str(error)


def has_true_object(prompt: str) -> bool:
    """Whether the prompt reads as an object of the embedded vocabulary (so the true shape is known)."""
    from dreamfusion.priors.base import PriorError

    try:
        parse_subject(prompt)
    except PriorError:
        return False
    return True


def evaluate_run(
    run_dir: str | Path, device_name: str = "auto", probe_path: str | Path | None = None,
    config: Eval3DConfig = Eval3DConfig(),
) -> Eval3DResult | MeshScores:
    """``evaluate_3d`` of a run directory's trained field for its own prompt (the shipped probe by default),
    with the scores of its mesh.glb. A prompt outside the embedded vocabulary (a run of another prior) has no
    probe or true object: its result is the mesh scores alone."""
    from dataclasses import replace

    from dreamfusion.run import RunError, load_scene  # the run module pulls in the trainer; only needed here

    run_config, scene = load_scene(Path(run_dir), device_name)
    mesh, note = run_mesh(Path(run_dir))
    if not has_true_object(run_config.prompt):
        if mesh is None:
            raise RunError(f"{run_config.prompt!r} is outside the embedded vocabulary, so only its mesh can be scored; {note}")
        return evaluate_mesh(scene, mesh, None, config)
    probe = load_probe(probe_path, next(scene.field.parameters()).device)
    result = evaluate_3d(scene, run_config.prompt, probe, config=config)
    if mesh is None:
        return replace(result, mesh_note=note)
    return replace(result, mesh=evaluate_mesh(scene, mesh, result.kind, config))


__all__ = [
    "Eval3DConfig", "Eval3DResult", "HeadlineScores", "MeshScores", "ProbeEvaluation", "ViewRecord", "best_turn", "hidden_voxels",
    "evaluate_3d", "evaluate_mesh", "evaluate_run", "has_true_object", "evaluation_cameras", "field_occupancy", "janus_rate", "occupancy_iou",
    "parse_subject", "render_scene_views",
]  # fmt: skip
