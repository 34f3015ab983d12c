import math
from dataclasses import replace

import pytest
import torch

from dreamfusion.cameras import CameraConfig, sample_cameras
from dreamfusion.field import FieldConfig, HashGridConfig, NeRFField
from dreamfusion.render_graph import GraphedRender
from dreamfusion.renderer import Randomness, RenderDraws, RendererConfig, ShadingOptions, render, render_rays
from dreamfusion.shading import Background, BackgroundConfig

SMALL = FieldConfig(encoding=HashGridConfig(levels=4, log2_table_size=10, base_resolution=4, max_resolution=32), hidden=16)


def _scene(kind: str = "random_solid") -> tuple[NeRFField, Background]:
    torch.manual_seed(0)
    return NeRFField(SMALL), Background(BackgroundConfig(kind=kind))  # type: ignore[arg-type]


def _cameras(batch: int = 2):
    return sample_cameras(CameraConfig(resolution=8), batch, torch.Generator().manual_seed(4))


@pytest.mark.parametrize(("kind", "importance"), [("random_solid", 0), ("mlp", 8)])
def test_drawing_first_gives_the_render_its_generators_give(kind: str, importance: int) -> None:
    """A training render's random numbers drawn up front (as the trainer does, for graphs) are the numbers the
    render draws itself from the same generators: the image is the same bit for bit."""
    field, background = _scene(kind)
    cameras, config = _cameras(), RendererConfig(num_samples=16, num_importance=importance)

    def generators() -> tuple[torch.Generator, torch.Generator]:
        return torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)

    host, device = generators()
    itself = render(field, background, cameras, config, shading="lambertian", training=True, host_generator=host, device_generator=device)
    host, device = generators()
    draws = RenderDraws.draw(config, background, 2, cameras.rays_o.shape[:3].numel(), host, device)
    assert (draws.importance is not None) == (importance > 0) and (draws.background.swap is not None) == (kind == "mlp")
    drawn = render(field, background, cameras, config, shading="lambertian", training=True, draws=draws)
    assert torch.equal(itself.rgb, drawn.rgb) and torch.equal(itself.weights, drawn.weights)
    assert not torch.equal(host.get_state(), generators()[0].get_state())  # the background was drawn from the host stream


def test_a_training_render_needs_its_random_numbers() -> None:
    field, background = _scene()
    with pytest.raises(ValueError, match="random numbers"):
        render(field, background, _cameras(), RendererConfig(num_samples=8), training=True)


class _Replays:
    """Stands for captured graphs on a CPU: runs the captured module itself and counts captures and replays."""

    def __init__(self) -> None:
        self.captured: list[object] = []
        self.replays = 0

    def capture(self, module: torch.nn.Module, inputs: list[torch.Tensor]):
        self.captured.append(module)

        def replay(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
            self.replays += 1
            return module(*args)

        return replay


def test_each_kind_of_render_is_captured_once_and_replayed(monkeypatch: pytest.MonkeyPatch) -> None:
    field, background = _scene("mlp")
    graphed, replays = GraphedRender(field, background), _Replays()
    monkeypatch.setattr(graphed, "_capture", replays.capture)
    cameras, config = _cameras(), RendererConfig(num_samples=8)
    rays = cameras.rays_o.shape[:3].numel()

    def both(options: ShadingOptions, seed: int):
        draws = RenderDraws.draw(config, background, 2, rays, torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed))
        got = graphed(cameras.rays_o, cameras.rays_d, cameras.light_position, config, options, draws)
        want = render_rays(field, background, cameras.rays_o, cameras.rays_d, cameras.light_position, config, options,
                           Randomness(training=True, draws=draws))  # fmt: skip
        return got, want

    lit = ShadingOptions("lambertian", with_normals=True)
    for seed in (0, 1):
        got, want = both(lit, seed)
        assert torch.equal(got.rgb, want.rgb) and torch.equal(got.sample_normals, want.sample_normals)
    assert len(replays.captured) == 1 and replays.replays == 2
    got, want = both(ShadingOptions("albedo"), 2)  # another kind of render: its own graph, and no normals
    assert len(replays.captured) == 2 and got.sample_normals is None and torch.equal(got.depth, want.depth)
    precision = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = not precision  # other matmul kernels: another graph
        both(lit, 3)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = precision
    assert len(replays.captured) == 3


def test_a_failed_capture_warns_once_and_renders_eagerly(monkeypatch: pytest.MonkeyPatch) -> None:
    field, background = _scene()
    graphed = GraphedRender(field, background)

    def failing(module: torch.nn.Module, inputs: list[torch.Tensor]) -> None:
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(graphed, "_capture", failing)
    cameras, config, options = _cameras(), RendererConfig(num_samples=8), ShadingOptions("albedo")
    draws = RenderDraws.draw(config, background, 2, cameras.rays_o.shape[:3].numel(), torch.Generator(), torch.Generator())
    with pytest.warns(RuntimeWarning, match="capture of the training render failed"):
        out = graphed(cameras.rays_o, cameras.rays_d, cameras.light_position, config, options, draws)
    want = render_rays(field, background, cameras.rays_o, cameras.rays_d, cameras.light_position, config, options,
                       Randomness(training=True, draws=draws))  # fmt: skip
    assert torch.equal(out.rgb, want.rgb) and graphed.eager_fallback


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_graphed_training_steps_match_eager_ones() -> None:
    """The default run on CUDA, training renders replayed from graphs against launched op by op: the same
    losses step after step (new cameras each step) and the same gradients. The learning rate is all but zero:
    Adam turns the last-bit differences of the fused kernels' atomic adds into full-size steps on parameters
    whose gradient is nearly zero, so trained parameters are not comparable."""
    from dreamfusion.config import build_config
    from dreamfusion.priors import build_prior
    from dreamfusion.trainer import Trainer

    device = torch.device("cuda")
    config = build_config("default", overrides={"prompt": "a red chair", "device": "cuda", "shading": {"albedo_warmup_steps": 0},
                                                "trainer": {"lr": 1e-12, "background_lr": 0.0}})  # fmt: skip
    prior = build_prior(config.prior, device)
    runs = []
    for graphs in (True, False):
        trainer = Trainer(replace(config, trainer=replace(config.trainer, cuda_graphs=graphs)), prior, device)
        assert (trainer.renderer._graphed is not None) == graphs
        runs.append((trainer, [trainer.train_step() for _ in range(6)]))
    (graphed, with_graphs), (eager, without) = runs
    assert not graphed.renderer._graphed.eager_fallback and len(graphed.renderer._graphed._graphed) >= 2
    for a, b in zip(with_graphs, without, strict=True):
        assert a.shading == b.shading and math.isclose(a.loss, b.loss, rel_tol=1e-4), (a, b)
    for a, b in zip(graphed.field.parameters(), eager.field.parameters(), strict=True):
        assert a.grad is not None and b.grad is not None
        assert torch.allclose(a.grad, b.grad, rtol=1e-3, atol=1e-3 * b.grad.abs().max().item())
