"""The surface stage after the NeRF: its config, the switch at the stage boundary, resume across it, and the
outputs of a run that ends in it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers import tiny_config

from dreamfusion.config import PRESETS, RunConfig, build_config
from dreamfusion.errors import RunError, TrainingError
from dreamfusion.export.mesh import with_exact_level
from dreamfusion.priors.analytic import AnalyticPrior, AnalyticPriorConfig
from dreamfusion.refine import RefineConfig, Stage, uniform_ball_points
from dreamfusion.run import generate, load_scene
from dreamfusion.sdf_field import SDFField
from dreamfusion.trainer import Trainer, read_checkpoint
from dreamfusion.typed_config import ConfigError, from_dict

SMALL_REFINE = {"iters": 4, "resolution": 24, "fit_steps": 30, "fit_points": 1024, "num_importance": 8}
"""A surface stage small enough for a CPU test: 24 px renders (above the tiny 16 px camera) and a short fit."""


def _config(**trainer: int):
    return tiny_config(trainer={"iters": 6, "checkpoint_every": 5, **trainer}, refine=SMALL_REFINE)


def _prior() -> AnalyticPrior:
    return AnalyticPrior(AnalyticPriorConfig(resolution=24, radius=0.3))  # the stage renders at 24 px for it


def test_the_stage_renders_no_larger_than_the_prior_sees_nor_smaller_than_the_coarse_stage() -> None:
    config = build_config(overrides={"refine": {"iters": 10, "resolution": 128}})
    assert Stage.of("coarse", config, 512).camera == config.camera
    assert Stage.of("refine", config, 512).camera.resolution == 128
    assert Stage.of("refine", config, 64).camera.resolution == 64  # the embedded prior's and IF's size
    assert Stage.of("refine", config, 32).camera.resolution == config.camera.resolution == 64
    refine = Stage.of("refine", config, 512)
    assert (refine.first_step, refine.steps, refine.renderer.num_importance) == (3000, 10, config.refine.num_importance)


def test_the_stage_is_off_by_default_and_in_every_preset() -> None:
    assert RunConfig().refine.iters == 0
    assert all(build_config(preset).refine.iters == 0 for preset in PRESETS)
    saved = from_dict(RunConfig, {"trainer": {"iters": 5}})  # a config written before the stage existed
    assert RunConfig.from_saved({"trainer": {"iters": 5}}).refine == saved.refine == RunConfig().refine


@pytest.mark.parametrize(
    ("refine", "message"),
    [
        ({"iters": -1}, "refine iters must be non-negative"),
        ({"resolution": 0}, "refine resolution must be positive"),
        ({"lr": 0.0}, "refine lr must be positive"),
        ({"beta_init": 1e-4}, "refine beta_init must be at least"),
        ({"fit_steps": 0}, "refine fit_steps must be positive"),
        ({"fit_points": 1}, "refine fit_points must be at least 2"),
        ({"num_importance": -4}, "refine num_importance must be non-negative"),
        ({"lambda_eikonal": {"start": -0.1}}, "refine lambda_eikonal must be non-negative"),
        ({"timesteps": {"start": [0.5, 0.2]}}, "timestep range start"),
        ({"iters": 10, "resolution": 32}, r"refine resolution \(32\) must be at least camera resolution \(64\)"),
    ],
)
def test_bad_refine_values_are_refused_in_one_line(refine: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        from_dict(RunConfig, {"refine": refine})
    assert "\n" not in str(error.value)


def test_a_run_without_the_stage_stays_a_nerf(tmp_path: Path) -> None:
    config = tiny_config(trainer={"iters": 4, "checkpoint_every": 2})
    trainer = Trainer(config, _prior(), torch.device("cpu"))
    trainer.fit(tmp_path)
    state = read_checkpoint(tmp_path / "checkpoint.pt")
    assert state["stage"] == "coarse" and state["step"] == 4
    assert "log_beta" not in state["field"] and type(trainer.field) is not SDFField


def test_the_boundary_replaces_the_nerf_by_a_fitted_sdf(tmp_path: Path) -> None:
    trainer = Trainer(_config(), _prior(), torch.device("cpu"))
    trainer.fit(tmp_path, stop_at=6)
    nerf = trainer.field
    assert trainer.stage.name == "coarse"
    trainer.fit(tmp_path, stop_at=7)
    assert isinstance(trainer.field, SDFField) and trainer.stage.name == "refine"
    assert any(param is trainer.field.log_beta for param in trainer.optimizer.param_groups[0]["params"])
    # The SDF took the NeRF's shape: inside its surface where the NeRF is dense, outside where it is empty.
    points = uniform_ball_points(4096, 1.0, torch.Generator().manual_seed(0))
    with torch.no_grad():
        density, inside = nerf.density(points), trainer.field.sdf(points) < 0
    assert density[inside].median() > 10 * density[~inside].median()
    metrics = trainer.train_step()
    assert metrics.losses["loss_eikonal"] > 0 and metrics.weights["lambda_eikonal"] == pytest.approx(0.1)
    assert metrics.lr == pytest.approx(RefineConfig().lr)


@pytest.mark.parametrize("stop_at", [4, 8])
def test_a_run_resumed_on_either_side_of_the_boundary_ends_as_an_uninterrupted_one(tmp_path: Path, stop_at: int) -> None:
    config = _config()
    for name in ("straight", "resumed"):
        (tmp_path / name).mkdir()
    straight = Trainer(config, _prior(), torch.device("cpu"))
    straight.fit(tmp_path / "straight")

    first = Trainer(config, _prior(), torch.device("cpu"))
    first.fit(tmp_path / "resumed", stop_at=stop_at)
    del first  # the process "dies" here; only the checkpoint survives
    resumed = Trainer(config, _prior(), torch.device("cpu"))
    resumed.load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    assert resumed.step == stop_at and resumed.stage.name == ("refine" if stop_at > 6 else "coarse")
    resumed.fit(tmp_path / "resumed")

    want, got = (read_checkpoint(tmp_path / name / "checkpoint.pt") for name in ("straight", "resumed"))
    assert got["stage"] == want["stage"] == "refine" and got["step"] == want["step"] == 10
    assert "log_beta" in got["field"]
    for part in ("field", "background", "rng"):
        for name, value in want[part].items():
            assert torch.equal(got[part][name], value), (part, name)
    for key, value in want["optimizer"]["state"].items():
        for name, moment in value.items():
            assert torch.equal(got["optimizer"]["state"][key][name], moment), (key, name)


def test_the_boundary_writes_a_checkpoint_of_the_new_stage(tmp_path: Path) -> None:
    trainer = Trainer(_config(checkpoint_every=100), _prior(), torch.device("cpu"))
    seen: list[tuple[int, str]] = []

    def record(metrics) -> None:
        state = read_checkpoint(tmp_path / "checkpoint.pt") if (tmp_path / "checkpoint.pt").is_file() else None
        seen.append((metrics.step, state and state["stage"]))

    trainer.fit(tmp_path, on_step=record)
    assert seen[5] == (5, None) and seen[6] == (6, "refine")  # written before step 6, the stage's first, ran


def test_a_refine_stage_checkpoint_refuses_another_iters(tmp_path: Path) -> None:
    config = _config()
    Trainer(config, _prior(), torch.device("cpu")).fit(tmp_path, stop_at=8)
    longer = replace(config, trainer=replace(config.trainer, iters=20))
    with pytest.raises(TrainingError, match="in its surface stage, which began after trainer.iters = 6"):
        Trainer(longer, _prior(), torch.device("cpu")).load_checkpoint(tmp_path / "checkpoint.pt")


def test_a_run_that_ends_in_the_stage_writes_its_outputs_from_the_sdf(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = generate(_config(), out)
    assert result.train.steps == 10
    for name in ("preview.png", "mesh.glb", "turntable.gif"):
        assert (out / name).stat().st_size > 0, name
    assert read_checkpoint(out / "checkpoint.pt")["stage"] == "refine"
    config, scene = load_scene(out, "cpu")
    assert isinstance(scene.field, SDFField)
    level = scene.field.surface_level()
    assert with_exact_level(scene.field, config.mesh).threshold == level
    assert f"surface at density {level:.3g}" in (out / "run.log").read_text()
    # Resuming the finished run says how to train longer: not with --iters, which the surface stage fixes.
    with pytest.raises(RunError, match="start a new run to train longer"):
        generate(_config(), out, resume=True)


def test_the_surface_stages_guidance_shrinks_renders_antialiased_and_draws_its_timesteps() -> None:
    from dreamfusion.cameras import TurntableConfig, turntable_cameras
    from dreamfusion.guidance import Guidance, GuidanceConfig
    from dreamfusion.schedules import TimestepRange
    from dreamfusion.sds import score_distillation

    prior = AnalyticPrior(AnalyticPriorConfig(resolution=16, radius=0.3))
    coarse = Guidance(GuidanceConfig(guidance_scale=5.0), prior, "a ball", torch.device("cpu"))
    refine = coarse.for_surface_stage(TimestepRange((0.02, 0.1)))
    rgb = torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    cameras = turntable_cameras(TurntableConfig(frames=2, resolution=32))
    out = refine(rgb, cameras, False, 0.0, torch.Generator().manual_seed(4))

    images = torch.nn.functional.interpolate(rgb.permute(0, 3, 1, 2), size=(16, 16), mode="bilinear", antialias=True)
    cond, uncond = refine.embeddings.for_views(cameras.view_labels)
    expected = score_distillation(prior, images * 2 - 1, cond, uncond, 5.0, (0.02, 0.1), "sds", torch.Generator().manual_seed(4))
    assert torch.equal(out.gradient, expected.gradient) and torch.equal(out.timesteps, expected.timesteps)
    assert coarse.config.timesteps == TimestepRange()  # the coarse stage's guidance is left as it was
