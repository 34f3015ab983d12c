import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers import tiny_config

from dreamfusion.cameras import TurntableConfig, turntable_cameras
from dreamfusion.errors import TrainingError
from dreamfusion.priors.analytic import AnalyticPrior, AnalyticPriorConfig, disc_image
from dreamfusion.renderer import render
from dreamfusion.trainer import CompiledField, StepMetrics, Trainer, read_checkpoint


def _prior() -> AnalyticPrior:
    return AnalyticPrior(AnalyticPriorConfig(resolution=16, radius=0.3))


def _view_errors(trainer: Trainer, target: torch.Tensor) -> torch.Tensor:
    """Mean squared distance of the albedo render of 8 turntable views to the prior's mode."""
    cameras = turntable_cameras(TurntableConfig(frames=8, elevation=15.0, resolution=16))
    with torch.no_grad():
        out = render(trainer.field.eval(), trainer.background.eval(), cameras, trainer.config.renderer)
    trainer.field.train()
    trainer.background.train()
    return ((out.rgb.permute(0, 3, 1, 2) - target) ** 2).mean(dim=(1, 2, 3))


@pytest.mark.slow
def test_sds_with_the_analytic_prior_moves_every_view_towards_the_mode() -> None:
    config = tiny_config(
        background={"kind": "mlp", "random_solid_probability": 0.0},
        trainer={"iters": 300, "lambda_opacity": {"start": 0.0}},
        guidance={"guidance_scale": 1.0},
    )
    prior = _prior()
    trainer = Trainer(config, prior, torch.device("cpu"))
    target = disc_image(prior.config)
    before = _view_errors(trainer, target)
    trainer.fit()
    after = _view_errors(trainer, target)
    assert (after < 0.5 * before).all(), (before, after)


def test_forty_steps_equal_twenty_then_resume_twenty(tmp_path: Path) -> None:
    config = tiny_config(trainer={"iters": 40, "checkpoint_every": 20})
    straight = Trainer(config, _prior(), torch.device("cpu"))
    straight.fit()

    first = Trainer(config, _prior(), torch.device("cpu"))
    first.fit(tmp_path, stop_at=20)
    del first  # the process "dies" here; only the checkpoint survives
    resumed = Trainer(config, _prior(), torch.device("cpu"))
    resumed.load_checkpoint(tmp_path / "checkpoint.pt")
    assert resumed.step == 20
    resumed.fit(tmp_path)

    for (name, a), (_, b) in zip(straight.field.state_dict().items(), resumed.field.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    for a, b in zip(straight.background.parameters(), resumed.background.parameters(), strict=True):
        assert torch.equal(a, b)


class FlakyPrior(AnalyticPrior):
    """Returns NaN noise predictions on chosen calls, as an fp16 overflow would."""

    def __init__(self, bad_calls: set[int]) -> None:
        super().__init__(AnalyticPriorConfig(resolution=16))
        self.bad_calls = bad_calls
        self.calls = 0

    def predict_noise(self, noisy, timesteps, embeddings):
        eps = super().predict_noise(noisy, timesteps, embeddings)
        self.calls += 1
        return eps * float("nan") if self.calls - 1 in self.bad_calls else eps


def test_a_non_finite_step_is_skipped() -> None:
    config = tiny_config(trainer={"iters": 6})
    trainer = Trainer(config, FlakyPrior({3}), torch.device("cpu"))
    trainer.fit(stop_at=3)
    before = [p.detach().clone() for p in trainer.field.parameters()]
    metrics = trainer.train_step()
    assert metrics.skipped
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.field.parameters(), strict=True))
    result = trainer.fit()
    assert result.steps == 6 and result.skipped_steps == 1
    assert all(torch.isfinite(p).all() for p in trainer.field.parameters())


def test_too_many_non_finite_steps_stop_the_run_and_keep_the_checkpoint(tmp_path: Path) -> None:
    config = tiny_config(trainer={"iters": 20, "checkpoint_every": 2, "max_consecutive_nonfinite": 3})
    trainer = Trainer(config, FlakyPrior(set(range(4, 100))), torch.device("cpu"))
    with pytest.raises(TrainingError, match=r"stopped at step 7: the run diverged \(3 steps in a row .* the last good checkpoint \(step 4\) is kept"):
        trainer.fit(tmp_path)
    state = read_checkpoint(tmp_path / "checkpoint.pt")
    assert state["step"] == 4  # none is written while steps fail: step 6 fell in the failing streak
    assert all(torch.isfinite(t).all() for t in state["field"].values())


def test_checkpoint_of_another_config_is_refused(tmp_path: Path) -> None:
    trainer = Trainer(tiny_config(), _prior(), torch.device("cpu"))
    trainer.save_checkpoint(tmp_path / "checkpoint.pt")
    other = Trainer(tiny_config(seed=7), _prior(), torch.device("cpu"))
    with pytest.raises(TrainingError, match="another config"):
        other.load_checkpoint(tmp_path / "checkpoint.pt")
    longer = Trainer(replace(tiny_config(), trainer=replace(tiny_config().trainer, iters=99)), _prior(), torch.device("cpu"))
    longer.load_checkpoint(tmp_path / "checkpoint.pt")  # only the iteration count may differ


def test_corrupt_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(TrainingError, match="not a readable checkpoint"):
        read_checkpoint(path)


@pytest.mark.parametrize("perp_neg", [False, True])
@pytest.mark.parametrize("textureless_probability", [0.0, 1.0])
def test_textureless_steps_use_the_priors_textureless_embeddings(textureless_probability: float, perp_neg: bool) -> None:
    config = tiny_config(shading={"albedo_warmup_steps": 0, "shaded_probability": 1.0,
                                  "textureless_probability": textureless_probability},
                         guidance={"mode": "perp_neg" if perp_neg else "cfg"})
    prior = _prior()
    prior.view_prompts = True  # its prompts are all alike; the marker below tells them apart
    trainer = Trainer(config, prior, torch.device("cpu"))
    embeddings = trainer.guidance.embeddings
    marker = torch.full_like(embeddings.by_view["front"], 0.25)
    embeddings.textureless_by_view = {label: marker for label in embeddings.by_view}
    seen: list[torch.Tensor] = []
    predict = prior.predict_noise

    def recording(noisy: torch.Tensor, timesteps: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        seen.extend(embeddings)
        return predict(noisy, timesteps, embeddings)

    prior.predict_noise = recording  # type: ignore[method-assign]
    trainer.train_step()
    # Every prompt but the unconditional one (the positive and, with Perp-Neg, the other views' negatives)
    # comes from the textureless table exactly on textureless steps.
    prompts = [row for row in seen if not torch.equal(row, embeddings.unconditional[0])]
    assert len(prompts) >= (3 if perp_neg else 1)
    assert [torch.equal(row, marker[0]) for row in prompts] == [textureless_probability == 1.0] * len(prompts)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_field_gives_the_eager_fields_gradients(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # aot_eager checks what torch.compile traces of the field (custom gather, analytic normals, dynamic sample
    # counts); inductor also runs the generated kernels. Gradients of single steps are compared: Adam (eps
    # 1e-15) turns rounding-level gradients into full steps, so parameters after several steps would not be.
    monkeypatch.setattr(CompiledField, "backend", backend)
    # Shaded steps and importance sampling: the normals and the density-only pass are compiled too.
    overrides = {"shading": {"albedo_warmup_steps": 0}, "renderer": {"num_importance": 8}}
    eager = Trainer(tiny_config(**overrides), _prior(), torch.device("cpu"))
    compiled = Trainer(tiny_config(trainer={"compile_field": True}, **overrides), _prior(), torch.device("cpu"))
    for _ in range(3):  # new sample counts each step: the compiled graphs are dynamic
        eager_metrics, compiled_metrics = eager.train_step(), compiled.train_step()
        assert compiled_metrics.shading == eager_metrics.shading
        assert compiled_metrics.loss == pytest.approx(eager_metrics.loss, rel=1e-5)
        for (name, a), b in zip(eager.field.named_parameters(), compiled.field.parameters(), strict=True):
            scale = a.grad.abs().max()
            assert scale > 0, name
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-4 * scale, msg=name)
            b.data.copy_(a.data)  # the next step starts from the same field


def test_compiled_field_needs_analytic_normals() -> None:
    with pytest.raises(TrainingError, match="compile_field needs field.normals: analytic"):
        Trainer(tiny_config(trainer={"compile_field": True}, field={"normals": "autograd"}), _prior(), torch.device("cpu"))


# The step of the previous implementation (one host read per step, a host-side skip), 20 steps of tiny_config
# with non-finite steps 3, 11 and 12: its losses and the parameters' absolute sums, as references.
SYNCED_LOSSES = [21.883924, 865.751587, 1866.28479, math.nan, 3716.343018, 5.879726, 2534.924561, 3721.127686,
                 4156.571777, 2254.187988, 1.150603, math.nan, math.nan, 182.013519, 2448.273926, 166.493256,
                 13.713989, 99.895515, 3877.043701, 4192.889648]  # fmt: skip
SYNCED_SUMS = {"encoding.tables": 1300.226623, "mlp.0.weight": 27.361662, "mlp.0.bias": 4.733495,
               "mlp.2.weight": 37.275628, "mlp.2.bias": 2.624094, "mlp.4.weight": 9.890922, "mlp.4.bias": 0.792983}  # fmt: skip


def test_the_loop_reads_the_device_in_batches_and_matches_the_synced_step(tmp_path: Path) -> None:
    config = tiny_config(trainer={"iters": 20, "log_every": 10, "checkpoint_every": 20})
    trainer = Trainer(config, FlakyPrior({3, 11, 12}), torch.device("cpu"))
    seen: list[StepMetrics] = []
    result = trainer.fit(tmp_path, on_step=seen.append)
    assert [m.step for m in seen] == list(range(20))  # every step reaches on_step, in order
    assert [m.step for m in seen if m.skipped] == [3, 11, 12] and result.skipped_steps == 3
    assert [m.loss for m in seen] == pytest.approx(SYNCED_LOSSES, rel=1e-5, nan_ok=True)
    sums = {name: float(p.detach().double().abs().sum()) for name, p in trainer.field.named_parameters()}
    assert sums == pytest.approx(SYNCED_SUMS, rel=1e-6)  # fused Adam rounds a little differently
    logged = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert logged == [0, 10, 19]
    # Read at once after every step, the same steps give the same parameters bit for bit.
    stepwise = Trainer(config, FlakyPrior({3, 11, 12}), torch.device("cpu"))
    assert [stepwise.train_step().skipped for _ in range(20)].count(True) == 3
    for (name, a), b in zip(trainer.field.named_parameters(), stepwise.field.parameters(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_queued_cuda_step_never_makes_the_host_wait() -> None:
    """The default run on CUDA, shaded from the first step: queuing steps (render, guidance with Perp-Neg,
    backward, optimizer) raises if any operation waits for the device; the figures are read afterwards."""
    from dreamfusion.config import build_config
    from dreamfusion.priors import build_prior

    device = torch.device("cuda")
    config = build_config("default", overrides={"prompt": "a red chair", "device": "cuda", "shading": {"albedo_warmup_steps": 0}})
    trainer = Trainer(config, build_prior(config.prior, device), device)
    # Until each shading mode has rendered once: capturing a kind of render's CUDA graph waits for the device, once.
    seen: set[str] = set()
    while len(seen) < 3 and trainer.step < 60:
        seen.add(trainer.train_step().shading)
    torch.cuda.set_sync_debug_mode("error")
    try:
        pending = [trainer.queue_step() for _ in range(12)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    metrics = trainer.read_steps(pending)
    assert [m.step for m in metrics] == list(range(trainer.step - 12, trainer.step))
    assert {m.shading for m in metrics} - {"albedo"}, "no shaded step was queued"
    assert all(math.isfinite(m.loss) and not m.skipped for m in metrics)
