"""Quality metrics: prompt parsing, occupancy IoU and its threshold, the Janus rate, and evaluate_3d end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import empty_tiny_field
from torch import nn

from dreamfusion.embedded.probe import Probe, ProbeModelConfig, ProbeNet, ProbePrediction
from dreamfusion.evaluate import (
    Eval3DConfig,
    ProbeEvaluation,
    albedo_noise,
    align,
    best_turn,
    evaluate_3d,
    evaluation_cameras,
    field_occupancy,
    hidden_voxels,
    janus_rate,
    occupancy_iou,
    parse_subject,
    render_scene_views,
    shading_speckle,
)
from dreamfusion.field import FieldConfig, FieldOutput
from dreamfusion.priors.base import PriorError
from dreamfusion.procedural.objects import occupancy_grid
from dreamfusion.renderer import OccupancyGrid, RendererConfig
from dreamfusion.scene import Scene
from dreamfusion.shading import Background, BackgroundConfig, ShadingConfig
from dreamfusion.voxels import dilated


class BallField(nn.Module):
    """A ball of constant density and albedo (the stub field of tests/test_renderer.py, movable)."""

    def __init__(self, radius: float, centre=(0.0, 0.0, 0.0), density: float = 200.0, albedo=(0.85, 0.12, 0.1)):
        super().__init__()
        self.bound = FieldConfig().bound
        self.radius, self.value = radius, density
        self.centre, self.albedo = torch.tensor(centre), torch.tensor(albedo)
        self.anchor = nn.Parameter(torch.zeros(1))

    def density(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where((x - self.centre).norm(dim=-1) < self.radius, self.value, 0.0) + 0 * self.anchor

    def forward(self, x: torch.Tensor, with_normals: bool = False) -> FieldOutput:
        normals = torch.nn.functional.normalize(x - self.centre, dim=-1) if with_normals else None
        return FieldOutput(self.density(x), self.albedo.expand(x.shape[0], 3), normals)


def test_parse_subject() -> None:
    assert parse_subject("a red chair") == ("chair", "red")
    assert parse_subject("A Gray Ball, side view") == ("sphere", "grey")
    assert parse_subject("the mug") == ("mug", None)
    for bad in ("a red dog", "red", "a red chair and a table", ""):
        with pytest.raises(PriorError):
            parse_subject(bad)


def test_iou_of_the_true_shape_with_itself_is_one() -> None:
    grid = occupancy_grid("chair", 32)
    assert occupancy_iou(grid, grid) == 1.0
    assert occupancy_iou(grid, ~grid) == 0.0
    empty = torch.zeros(4, 4, 4, dtype=torch.bool)
    assert occupancy_iou(empty, empty) == 1.0


def test_iou_of_shifted_balls_matches_the_lens_volume() -> None:
    r, d = 0.5, 0.25
    a = field_occupancy(BallField(r))
    b = field_occupancy(BallField(r, centre=(d, 0.0, 0.0)))
    lens = math.pi * (4 * r + d) * (2 * r - d) ** 2 / 12  # intersection of two balls of radius r, d apart
    ball = 4 / 3 * math.pi * r**3
    assert occupancy_iou(a, b) == pytest.approx(lens / (2 * ball - lens), abs=0.02)
    # The grid's axis order is [x, y, z], as occupancy_grid's: the shifted ball's mass moves along axis 0.
    centre = b.nonzero().float().mean(0) * (2 / 63) - 1
    assert centre[0].item() == pytest.approx(d, abs=0.02) and centre[1:].abs().max() < 0.02


def test_soft_fields_fill_what_lies_behind_half_transmittance() -> None:
    # A soft ball (density 5, the range SDS fields settle in) is opaque in renders but never reaches a
    # voxel-scale density threshold; it fills the ball eroded to where transmittance from outside falls to 1/2.
    filled = field_occupancy(BallField(0.5, density=5.0))
    reach = (filled.nonzero().float() * (2 / 63) - 1)[:, 0].abs().max().item()  # along x, through the centre
    assert reach == pytest.approx(0.5 - math.log(2) / 5, abs=2 / 63)
    # A crisp ball fills its whole volume; a haze over the whole grid (optical depth 0.5 < ln 2) fills nothing.
    crisp = field_occupancy(BallField(0.5))
    assert occupancy_iou(crisp, field_occupancy(BallField(0.5), threshold=1.0)) > 0.97
    assert not hidden_voxels(torch.full((32, 32, 32), 0.25), 2 / 31).any()


def test_an_open_box_is_not_filled_inside_but_a_closed_one_is() -> None:
    walls = torch.zeros(32, 32, 32)
    walls[4:28, 4:28, 4:28] = 1000.0
    walls[6:26, 6:26, 6:28] = 0.0  # hollow, open at the top (+z)
    assert not hidden_voxels(walls, 2 / 31)[10:22, 10:22, 10:24].any()
    walls[6:26, 6:26, 26:28] = 1000.0  # a lid: the cavity is hidden from every direction
    assert hidden_voxels(walls, 2 / 31)[10:22, 10:22, 10:24].all()


def test_janus_rate_counts_back_views_seen_as_front() -> None:
    true = ["back", "back", "back", "back", "front", "side", "side"]
    seen = ["front", "back", "front", "side", "front", "front", "side"]
    assert janus_rate(true, seen) == 0.5
    assert janus_rate(true, seen, "side") == 0.5
    assert janus_rate(["front"], ["front"]) is None


def _prediction(objects: list[int], colours: list[int], views: list[int]) -> ProbePrediction:
    one_hot = lambda ids, n: torch.nn.functional.one_hot(torch.tensor(ids), n).float()  # noqa: E731
    return ProbePrediction.from_probs(one_hot(objects, 13), one_hot(colours, 10), one_hot(views, 4))


def test_probe_evaluation_scores() -> None:
    # Truth: object 0, colour 0; views front, back, back, side. Prediction: object right 3/4, colour right 2/4.
    prediction = _prediction([0, 0, 0, 1], [0, 1, 0, 1], [0, 0, 2, 0])
    truth = torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long), torch.tensor([0, 2, 2, 1])
    scores = ProbeEvaluation.score(*truth, prediction)
    assert (scores.count, scores.object_accuracy, scores.colour_accuracy) == (4, 0.75, 0.5)
    assert scores.object_colour_accuracy == 0.5 and scores.view_accuracy == 0.5
    assert scores.janus_rate == 0.5 and scores.side_as_front_rate == 1.0
    no_colour = ProbeEvaluation.score(truth[0], None, truth[2], prediction)
    assert no_colour.colour_accuracy is None and no_colour.object_colour_accuracy is None


def test_evaluation_cameras_avoid_label_boundaries() -> None:
    cameras = evaluation_cameras(Eval3DConfig())
    assert cameras.batch_size == 32
    for elevation in (15.0, 45.0):
        labels = [v for v, e in zip(cameras.view_labels, cameras.elevation.tolist(), strict=True) if e == elevation]
        assert (labels.count("front"), labels.count("side"), labels.count("back")) == (4, 8, 4)


def test_evaluate_3d_on_a_ball() -> None:
    torch.manual_seed(0)
    probe = Probe(ProbeNet(ProbeModelConfig(widths=(8, 16), head_hidden=16)))  # untrained: only the plumbing
    scene = Scene(BallField(0.38), Background(BackgroundConfig()), RendererConfig(num_samples=24), ShadingConfig())
    config = Eval3DConfig(elevations=(15.0,), azimuths=4, resolution=32, grid_resolution=32)
    result = evaluate_3d(scene, "a red ball", probe, "cpu", config)
    assert (result.kind, result.colour, result.view_identifiable) == ("sphere", "red", False)
    assert len(result.views) == result.probe.count == 4
    assert [v.true_view for v in result.views] == ["front", "side", "back", "side"]
    scores = result.probe
    assert all(0.0 <= x <= 1.0 for x in (scores.object_accuracy, scores.colour_accuracy, scores.view_accuracy))
    assert result.probe.janus_rate in (0.0, 1.0)
    assert result.occupancy_iou > 0.9  # the procedural sphere has radius 0.38 too
    assert result.true_voxels > 0 and result.occupied_voxels > 0
    assert result.best_turn_iou >= result.occupancy_iou
    decoded = json.loads(result.to_json())
    assert decoded["kind"] == "sphere" and len(decoded["views"]) == 4 and "occupancy IoU" in result.summary()


def test_best_turn_finds_a_right_shape_facing_the_wrong_way() -> None:
    from dreamfusion.procedural.objects import occupancy_grid

    config = Eval3DConfig(grid_resolution=32)
    facing_left = occupancy_grid("chair", 32, turn_degrees=90.0)
    assert occupancy_iou(facing_left, occupancy_grid("chair", 32)) < 0.7
    canonical = occupancy_grid("chair", 32)
    iou, degrees = best_turn(facing_left, canonical, "chair", config)
    assert iou == 1.0 and degrees == 90.0
    assert best_turn(facing_left, canonical, "chair", Eval3DConfig(grid_resolution=32, turns=1))[1] == 0.0


def test_evaluate_3d_of_an_empty_field_scores_an_empty_grid() -> None:
    torch.manual_seed(0)
    probe = Probe(ProbeNet(ProbeModelConfig(widths=(8, 16), head_hidden=16)))
    field = empty_tiny_field()
    renderer = RendererConfig(num_samples=8, num_importance=4)
    grid = OccupancyGrid.from_field(field, resolution=16)  # coarse: the default one costs more than the renders
    scene = Scene(field, Background(BackgroundConfig()), renderer, ShadingConfig(), occupancy=grid)
    config = Eval3DConfig(elevations=(15.0,), azimuths=2, resolution=8, grid_resolution=16, turns=2, max_rays=50)
    cameras = evaluation_cameras(config)
    views = render_scene_views(scene, cameras, "lambertian", config)
    assert views.shape == (2, 3, 8, 8) and torch.equal(views, torch.ones_like(views))  # all white background
    result = evaluate_3d(scene, "a red chair", probe, "cpu", config)
    assert result.occupied_voxels == 0 and result.occupancy_iou == 0.0 and result.true_voxels > 0
    assert len(result.views) == result.probe.count == 2


def test_alignment_names_what_costs_the_iou() -> None:
    """The true house moved, shrunk or turned is found again; what no alignment recovers is shape."""
    config = Eval3DConfig(grid_resolution=32)
    R, b = config.grid_resolution, config.grid_bound

    def aligned(occupied: torch.Tensor, kind: str = "house"):
        truth = occupancy_grid(kind, R, b)
        return occupancy_iou(occupied, truth), align(occupied, kind, truth, best_turn(occupied, truth, kind, config)[0], config)

    iou, moved = aligned(occupancy_grid("house", R, b, offset=(0.3, 0.0, 0.0)))
    assert iou < 0.6 and moved.position_iou > 0.9 and moved.loss == "position"
    iou, small = aligned(occupancy_grid("house", R, b, scale=0.6))
    assert iou < 0.5 and small.aligned_iou > 0.6 and small.loss == "scale" and 0.5 < small.scale < 0.7
    iou, turned = aligned(occupancy_grid("house", R, b, turn_degrees=90.0))
    assert turned.turn_iou > 0.95 and turned.turn_degrees == 90.0 and turned.loss == "orientation"
    iou, wrong = aligned(occupancy_grid("torus", R, b))
    assert wrong.aligned_iou < 0.5 and wrong.loss in ("shape", "thickness")  # a torus is thin for a house of its size
    # A thick field holds more voxels than the true object grown to its size; a scaled one does not.
    thick = torch.nn.functional.max_pool3d(occupancy_grid("torus", R, b).float()[None, None], 3, 1, 1)[0, 0] > 0
    bloated = aligned(thick, "torus")[1]
    assert bloated.thickness > 1.5 and bloated.loss == "thickness"
    assert 0.8 < aligned(occupancy_grid("house", R, b, scale=0.6))[1].thickness < 1.25


def test_albedo_noise_is_the_colour_spread_over_solid_pixels() -> None:
    views = torch.zeros(2, 8, 8, 4)
    views[..., :3] = 0.5
    views[:, 2:6, 2:6, 3] = 1.0  # a solid 4x4 square in each view
    assert albedo_noise(views) == pytest.approx(0.0)
    speckled = views.clone()
    speckled[0, 2:6, 2:6, :3] = torch.tensor([0.4, 0.6]).repeat(8)[:, None, None].reshape(4, 4, 1)
    expected = torch.tensor([0.4, 0.6]).repeat(8).std().item() / 2  # the second view is clean
    assert albedo_noise(speckled) == pytest.approx(expected)
    assert albedo_noise(torch.zeros(1, 8, 8, 4)) is None  # nothing solid to measure


def test_shading_speckle_sees_isolated_pixels_and_not_smooth_shading() -> None:
    ramp = torch.zeros(1, 8, 8, 4)
    ramp[..., :3] = (torch.arange(8.0) / 10)[None, None, :, None]  # steep but smooth shading
    ramp[..., 3] = 1.0
    assert shading_speckle(ramp, min_pixels=1) == pytest.approx(0.0, abs=1e-7)
    dot = ramp.clone()
    dot[..., :3] = 0.5
    dot[0, 4, 4, :3] = 0.0  # one dark speckle among the 6x6 pixels whose neighbourhood is in the image
    assert shading_speckle(dot, min_pixels=1) == pytest.approx(0.5 / 36)
    edge = dot.clone()
    edge[0, :, :2, 3] = 0.0  # the object's outline is not speckle: pixels next to the background are left out
    edge[0, :, :2, :3] = 1.0
    assert shading_speckle(edge, min_pixels=1) == pytest.approx(0.5 / 24)
    assert shading_speckle(torch.zeros(1, 8, 8, 4)) is None


def test_one_voxel_growth_is_the_scale_of_the_iou() -> None:
    dot = torch.zeros(5, 5, 5, dtype=torch.bool)
    dot[2, 2, 2] = True
    assert int(dilated(dot).sum()) == 27
    corner = torch.zeros(5, 5, 5, dtype=torch.bool)
    corner[0, 0, 0] = True
    assert int(dilated(corner).sum()) == 8  # nothing grows past the grid
    # Thin kinds lose most of their IoU to one voxel of extra thickness, solid ones far less.
    chair, cube = (occupancy_grid(kind, 64, 1.0) for kind in ("chair", "cube"))
    assert occupancy_iou(chair, dilated(chair)) == pytest.approx(0.29, abs=0.01)
    assert occupancy_iou(cube, dilated(cube)) == pytest.approx(0.73, abs=0.01)
