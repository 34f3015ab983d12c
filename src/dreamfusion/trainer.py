"""The optimization loop: sample cameras -> render -> SDS + regularizers -> Adam step; checkpoints and resume."""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor, nn

from dreamfusion.cameras import CameraBatch, sample_cameras
from dreamfusion.collapse import attempt_seed
from dreamfusion.distributed import DistributedContext, all_reduce_mean, gather_to_main, rank_seed
from dreamfusion.errors import TrainingError
from dreamfusion.field import FieldOutput, NeRFField
from dreamfusion.files import append_line, write_atomic
from dreamfusion.geometry import Geometry
from dreamfusion.guidance import Guidance
from dreamfusion.priors.base import DiffusionPrior
from dreamfusion.refine import STAGES, Stage, eikonal_loss, fit_to_nerf, refine_field
from dreamfusion.regularizers import loss_opacity, loss_orientation
from dreamfusion.render_graph import GraphedRender
from dreamfusion.renderer import (
    Randomness,
    RenderDraws,
    RendererConfig,
    RenderOutput,
    ShadingOptions,
    compacts_samples,
    render_rays,
)
from dreamfusion.schedules import LearningRateSchedule, Ramp
from dreamfusion.sdf_field import SDFField
from dreamfusion.sds import SDSOutput
from dreamfusion.shading import Background, ShadingMode, sample_shading_mode

if TYPE_CHECKING:
    from dreamfusion.config import RunConfig

CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class TrainerConfig:
    """The optimization: steps, learning rates, loss weights, checkpoints."""

    iters: int = 3000
    """Optimization steps."""
    batch_size: int = 1
    """Views rendered per step (the paper uses 4, one per chip)."""
    lr: float = 1e-2
    """Adam learning rate of the field (hash grid and MLP)."""
    background_lr: float = 1e-3
    lr_schedule: LearningRateSchedule = LearningRateSchedule()
    adam_betas: tuple[float, float] = (0.9, 0.99)
    adam_eps: float = 1e-15
    lambda_orient: Ramp = Ramp(start=1e-4, end=1e-2, steps=1000, kind="log")
    """Orientation loss weight, annealed in (paper: 1e-4 -> 1e-2 over the first 5k of 15k steps)."""
    lambda_opacity: Ramp = Ramp(start=1e-3)
    """Weight of the opacity penalty sqrt(opacity^2 + 0.01)."""
    checkpoint_every: int = 500
    """Steps between checkpoints (one is always written at the end)."""
    log_every: int = 10
    """Steps between lines of metrics.jsonl."""
    max_consecutive_nonfinite: int = 10
    """Stop with an error after this many skipped non-finite steps in a row."""
    mixed_precision: Literal["auto", "off", "bf16", "fp16"] = "auto"
    """Autocast dtype of the prior's forward: "auto" is bf16 on CUDA and off on CPU. The NeRF stays fp32."""
    cuda_graphs: bool = True
    """On a CUDA device, replay training renders (forward and backward) from CUDA graphs (``render_graph``): a
    render is several hundred small operations, and launching them one by one kept the host busier than the
    device. Not with compile_field, in the surface stage, with several processes, or with autograd normals."""
    tf32: bool = True
    """On a CUDA device, float32 matrix products in training steps (the field's MLP, forward and backward) use
    TensorFloat-32 where the GPU has it: faster, and equal to float32 to about 1e-3 relative. Evaluation and
    export keep full float32."""
    compile_field: bool = False
    """torch.compile the field (forward and backward) for training renders, in tensor operations: before the
    fused hash-grid kernels and CUDA graphs this took a shaded render's forward + backward on an H200 from 14.5
    to 6.8 ms; those now take it to 6.0 ms without compiling, so ``--compile`` leaves the field alone. Turns the
    CUDA graphs off; needs analytic normals; the first run spends tens of seconds compiling (later runs reuse
    torch's on-disk cache)."""

    def __post_init__(self) -> None:
        for name in ("iters", "batch_size", "checkpoint_every", "log_every", "max_consecutive_nonfinite"):
            if getattr(self, name) <= 0:
                raise ValueError(f"trainer {name} must be positive, got {getattr(self, name)}")
        if self.lr <= 0 or self.background_lr < 0 or self.adam_eps <= 0:
            raise ValueError("trainer lr must be positive, background_lr and adam_eps non-negative")


@dataclass
class StepMetrics:
    """What one step did; ``record`` is its line of metrics.jsonl."""

    step: int
    loss: float
    """The weighted sum of ``losses``."""
    losses: dict[str, float]
    """Each ``loss_*`` before weighting."""
    weights: dict[str, float]
    """Each ``lambda_*`` that weighted the loss of the same name."""
    opacity: float
    """Mean opacity of the step's rendered views (near 0: the field shows nothing from there)."""
    lr: float
    timestep: int
    shading: str
    grad_norm: float
    skipped: bool
    it_per_s: float

    def record(self) -> dict[str, Any]:
        """One flat mapping: step, loss, each loss_*, opacity, each lambda_*, then the rest."""
        head = {"step": self.step, "loss": self.loss, **self.losses, "opacity": self.opacity, **self.weights}
        tail = {name: getattr(self, name) for name in ("lr", "timestep", "shading", "grad_norm", "skipped", "it_per_s")}
        return head | tail


@dataclass
class StepViews:
    """The step's random views: its cameras and how they are shaded."""

    cameras: CameraBatch
    shading: ShadingMode


@dataclass
class PendingStep:
    """A step whose figures are still on the device. The loop reads them in batches (``Trainer.read_steps``:
    one transfer every ``log_every`` steps), so the host never waits for the device between steps."""

    step: int
    weights: dict[str, float]
    lr: float
    timestep: int
    shading: str
    loss_names: tuple[str, ...]
    values: Float[Tensor, " V"]
    """loss, each loss_* (means over ranks), opacity, grad norm, skipped (1.0 or 0.0)."""


@dataclass
class TrainResult:
    steps: int
    skipped_steps: int
    seconds: float
    last: StepMetrics | None = None
    history: list[StepMetrics] = field(default_factory=list)


@dataclass
class RandomState:
    """Every random draw of a run comes from these two generators, so a checkpoint can restore them exactly."""

    host: torch.Generator
    """CPU: cameras, shading mode, background colours, timesteps, SDS noise."""
    device: torch.Generator
    """The run's device: stratified sample jitter."""

    @classmethod
    def seeded(cls, seed: int, device: torch.device) -> RandomState:
        host = torch.Generator().manual_seed(seed)
        on_device = torch.Generator(device=device).manual_seed(seed + 1)
        return cls(host, on_device)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"host": self.host.get_state(), "device": self.device.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.host.set_state(state["host"])
        self.device.set_state(state["device"])


BYTES_PER_SAMPLE = 64
"""A lower bound of the memory one ray sample takes in a training step: its position, distance, density,
albedo, compositing terms and normal, all kept for the backward pass."""
BYTES_PER_PARAMETER = 16
"""A parameter, its gradient and Adam's two moments, in float32."""


def check_training_fits(config: RunConfig, device: torch.device) -> None:
    """Refuse, before anything is allocated, sizes whose training step could never fit on ``device``."""
    from dreamfusion.memory import check_size

    camera, renderer, trainer, encoding = config.camera, config.renderer, config.trainer, config.field.encoding
    samples = renderer.num_samples + renderer.num_importance

    def step_bytes(batch: int, side: int, per_ray: int) -> float:
        return float(batch) * float(side) ** 2 * per_ray * BYTES_PER_SAMPLE

    check_size("camera.resolution", camera.resolution, lambda side: step_bytes(trainer.batch_size, side, samples), device)
    check_size("trainer.batch_size", trainer.batch_size, lambda batch: step_bytes(batch, camera.resolution, samples), device)
    check_size("renderer.num_samples", renderer.num_samples,
               lambda n: step_bytes(trainer.batch_size, camera.resolution, n + renderer.num_importance), device)  # fmt: skip
    check_size("renderer.num_importance", renderer.num_importance,
               lambda n: step_bytes(trainer.batch_size, camera.resolution, n + renderer.num_samples), device)  # fmt: skip
    # The finest level alone fills its table once the grid has more cells than the table has rows.
    check_size("field.encoding.log2_table_size", encoding.log2_table_size,
               lambda bits: 2.0**bits * encoding.features_per_level * BYTES_PER_PARAMETER, device)  # fmt: skip
    refine = config.refine
    if refine.iters > 0:
        check_size("refine.resolution", refine.resolution,
                   lambda side: step_bytes(trainer.batch_size, side, renderer.num_samples + refine.num_importance), device)  # fmt: skip


class SceneRenderer(nn.Module):
    """Field and background behind one forward that does the whole render.

    DistributedDataParallel expects one forward per backward, but a render calls the field several times (and
    with ``normals: autograd``, torch.autograd.grad(create_graph=True) inside); wrapping this module instead of
    the field gives DDP exactly one forward per step. That inner grad only differentiates with respect to the
    sample points, never reaching the parameters' gradient accumulators, so DDP's hooks fire once, in the
    loss's backward. The output is a dict of tensors (RenderOutput's fields), which DDP can search for the
    tensors it must watch.
    """

    def __init__(self, field: NeRFField, background: Background, compile_field: bool = False, cuda_graphs: bool = False) -> None:
        super().__init__()
        self.field = field
        self.background = background
        self._compiled = CompiledField(field) if compile_field else None
        self._graphed = GraphedRender(field, background) if cuda_graphs else None

    @property
    def render_field(self) -> Geometry:
        """What training renders call: the compiled wrapper with ``compile_field``, else the field itself (kept
        out of the module's attributes, so the field is registered once)."""
        return self.field if self._compiled is None else self._compiled

    def forward(
        self, cameras: CameraBatch, config: RendererConfig, options: ShadingOptions, randomness: Randomness
    ) -> dict[str, Tensor | None]:
        if self._graphed is not None and randomness.draws is not None and torch.is_grad_enabled():
            out = self._graphed(cameras.rays_o, cameras.rays_d, cameras.light_position, config, options, randomness.draws)
        else:
            out = render_rays(self.render_field, self.background, cameras.rays_o, cameras.rays_d, cameras.light_position,
                              config, options, randomness)  # fmt: skip
        return dict(vars(out))


def compile_skip_reason(device: torch.device, prior: str, prior_compiles: bool) -> str | None:
    """Why ``--compile`` cannot pay on ``device`` with ``prior`` (``prior_compiles``: its config has networks to
    compile); None when it may. The field is not compiled by ``--compile``: on CUDA its fused hash-grid kernels,
    replayed from CUDA graphs, beat the compiled field (``trainer.compile_field`` still compiles it)."""
    if device.type != "cuda":
        return "compiling makes steps slower on a CPU"
    if not prior_compiles:
        return (f"the {prior} prior has no network to compile, and the field's fused kernels replayed from CUDA graphs "
                "are faster than compiling it (a default embedded-prior step on an H200: 9.0 ms, against 15.6 ms with "
                "the field compiled, measured before those kernels)")  # fmt: skip
    return None


class CompiledField:
    """A field's forward through torch.compile, for training renders only (evaluation and export call the
    eager field and compile nothing). The batch dimension is dynamic: compacted renders (on a CPU, see
    ``RendererConfig.sample_compaction``) query a different number of samples every step."""

    backend = "inductor"

    def __init__(self, field: NeRFField) -> None:
        if field.config.normals != "analytic":
            raise TrainingError(f"trainer.compile_field needs field.normals: analytic (got {field.config.normals})")
        self.config = field.config
        self.bound = field.bound
        self._forward = torch.compile(field.forward, dynamic=True, backend=self.backend)

    def __call__(self, x: Float[Tensor, "N 3"], with_normals: bool = False) -> FieldOutput:
        return self._forward(x, with_normals)

    def density(self, x: Float[Tensor, "N 3"]) -> Float[Tensor, " N"]:
        return self._forward(x).density


class Trainer:
    """Optimizes a NeRF against a frozen prior for one prompt.

    With a distributed ``context`` (world size N > 1) this is one rank of data-parallel SDS: the rank draws
    its own cameras and noise from streams seeded by ``rank_seed``, DDP averages gradients (so N ranks of
    batch b equal one process of batch N b: the SDS loss is averaged over the batch, the regularizers over
    rays), and only the main rank writes metrics and checkpoints.

    With ``refine.iters`` > 0 the run has a second stage (``refine``): after ``trainer.iters`` steps the NeRF is
    replaced by a signed distance field fitted to its surface, with its own renderer and optimizer.
    """

    def __init__(
        self,
        config: RunConfig,
        prior: DiffusionPrior,
        device: torch.device,
        context: DistributedContext | None = None,
        attempt: int = 0,
    ) -> None:
        """``attempt`` > 0 starts the run over on another seed (``collapse.attempt_seed``) after a collapse."""
        seed = attempt_seed(config.seed, attempt)
        torch.manual_seed(seed)  # parameter initialization only (the same on every rank)
        self.config = config
        self.prior = prior
        self.device = device
        self.context = context if context is not None else DistributedContext.single(device)
        self.field = NeRFField(config.field).to(device)
        self.background = Background(config.background).to(device)
        self.rng = RandomState.seeded(rank_seed(seed, self.context.rank), device)
        self.attempt = attempt
        self.stage = Stage.of("coarse", config, prior.resolution)
        self.renderer = self._scene_renderer()
        self.optimizer = self._optimizer(config.trainer.lr)
        self.step = 0
        self.skipped_steps = 0
        self.nonfinite_in_row = 0
        self._window_started = time.perf_counter()
        self.last_checkpoint_step: int | None = None
        self.guidance = Guidance(config.guidance, prior, config.prompt, device, self._autocast)

    def _scene_renderer(self) -> nn.Module:
        trainer = self.config.trainer
        renderer: nn.Module = SceneRenderer(self.field, self.background, trainer.compile_field, self._graphs_training_renders())
        if not self.context.distributed:
            return renderer
        # Broadcasts rank 0's parameters; a random solid background leaves its MLP without gradients.
        return torch.nn.parallel.DistributedDataParallel(
            renderer,
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
            find_unused_parameters=self.config.background.kind == "random_solid",
        )

    def _graphs_training_renders(self) -> bool:
        trainer = self.config.trainer
        return (
            trainer.cuda_graphs and not trainer.compile_field and self.device.type == "cuda" and not self.context.distributed
            and type(self.field) is NeRFField and self.field.config.normals != "autograd"
            and not compacts_samples(self.stage.renderer, training=True, device=self.device)  # fixed sample counts
        )  # fmt: skip

    def _optimizer(self, field_lr: float) -> torch.optim.Optimizer:
        trainer = self.config.trainer
        return torch.optim.Adam(
            [
                {"params": self.field.parameters(), "lr": field_lr, "base_lr": field_lr},
                {"params": self.background.parameters(), "lr": trainer.background_lr, "base_lr": trainer.background_lr},
            ],
            betas=trainer.adam_betas,
            eps=trainer.adam_eps,
            fused=True,  # the only Adam that can skip a non-finite step on the device (found_inf)
        )

    # -- stages ---------------------------------------------------------------------------------
    def _refine_due(self) -> bool:
        return self.stage.name == "coarse" and self.config.refine.iters > 0 and self.step >= self.config.trainer.iters

    def _enter_refine_stage(self, fit: bool = True) -> None:
        """Replace the NeRF by a signed distance field (fitted to the NeRF's surface, or left for a checkpoint
        to fill with ``fit`` False), with a renderer and an optimizer of its own; the background carries over."""
        config = self.config
        if fit:
            try:
                sdf = fit_to_nerf(self.field, config, attempt_seed(config.seed, self.attempt), self.device)
            except ValueError as error:
                raise TrainingError(f"the surface stage cannot start at step {self.step}: {error}") from None
        else:
            sdf = refine_field(config.field, config.refine).to(self.device)
        self.field = sdf
        self.stage = Stage.of("refine", config, self.prior.resolution)
        self.renderer = self._scene_renderer()
        self.optimizer = self._optimizer(config.refine.lr)
        self.guidance = self.guidance.for_surface_stage(config.refine.timesteps)

    # -- one step -------------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        mode = self.config.trainer.mixed_precision
        if self.device.type != "cuda" or mode == "off":
            return contextlib.nullcontext()
        dtype = torch.float16 if mode == "fp16" else torch.bfloat16
        return torch.autocast("cuda", dtype=dtype)

    @contextlib.contextmanager
    def matmul_precision(self) -> Iterator[None]:
        """TensorFloat-32 matrix products for the step with ``trainer.tf32`` on CUDA; the setting is restored after."""
        if self.device.type != "cuda" or not self.config.trainer.tf32:
            yield
            return
        before = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32 = before

    def train_step(self, cameras: CameraBatch | None = None) -> StepMetrics:
        """One optimization step, read back at once (for tests and benchmarks; ``fit`` reads in batches)."""
        return self.read_steps([self.queue_step(cameras)])[0]

    def queue_step(self, cameras: CameraBatch | None = None) -> PendingStep:
        """One optimization step: sample views -> render -> guidance losses -> regularizer losses -> apply,
        with no wait for the device: a step whose loss or gradient is not finite (on any rank) is skipped on
        the device, and counted when it is read. ``cameras`` replaces the step's random cameras."""
        step = self.step
        lr = self._set_learning_rate(step)
        weights = self._loss_weights(step)
        with self.matmul_precision():
            views = self._sample_views(cameras)
            out = self.render_views(views, with_normals=weights["lambda_orient"] > 0)
            guidance = self._guidance_losses(out, views, step)
            losses = {"loss_sds": guidance.loss_sds, **self._regularizer_losses(out, weights)}
            values = self._apply(losses, weights, out)
        self.step += 1
        # The timesteps were drawn on the host: reading one costs no wait for the device.
        return PendingStep(step, weights, lr, int(guidance.timesteps[0]), views.shading, tuple(losses), values)

    def _set_learning_rate(self, step: int) -> float:
        """The schedule's factor, over the current stage's steps, on each group's base rate; returns the
        field's rate."""
        factor = self.config.trainer.lr_schedule.factor(self.stage.local_step(step), self.stage.steps)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        return self.optimizer.param_groups[0]["lr"]

    def _loss_weights(self, step: int) -> dict[str, float]:
        """Every ``lambda_*`` of the trainer config at ``step`` and, in the surface stage, of the refine config
        at the stage's own step; each weights the ``loss_*`` of the same name."""
        trainer = self.config.trainer
        weights = {f.name: getattr(trainer, f.name)(step) for f in fields(trainer) if f.name.startswith("lambda_")}
        if self.stage.name == "refine":
            refine, local = self.config.refine, self.stage.local_step(step)
            weights |= {f.name: getattr(refine, f.name)(local) for f in fields(refine) if f.name.startswith("lambda_")}
        return weights

    def _sample_views(self, cameras: CameraBatch | None) -> StepViews:
        config = self.config
        if cameras is None:
            cameras = sample_cameras(self.stage.camera, config.trainer.batch_size, self.rng.host)
        shading = sample_shading_mode(config.shading, self.step, self.rng.host)
        return StepViews(cameras.to(self.device), shading)

    def render_views(self, views: StepViews, with_normals: bool) -> RenderOutput:
        """The step's render of ``views``: random numbers drawn first, then the scene renderer (replayed from CUDA
        graphs where it uses them, when gradients are on)."""
        config, cameras = self.config, views.cameras
        rays = cameras.rays_o.shape[:3].numel()
        draws = RenderDraws.draw(self.stage.renderer, self.background, cameras.batch_size, rays, self.rng.host, self.rng.device)
        options = ShadingOptions(views.shading, config.shading.ambient, config.shading.diffuse, with_normals)
        out = self.renderer(cameras, self.stage.renderer, options, Randomness(training=True, draws=draws))
        return RenderOutput(**out)

    def _guidance_losses(self, out: RenderOutput, views: StepViews, step: int) -> SDSOutput:
        progress = self.stage.progress(step)
        return self.guidance(out.rgb, views.cameras, views.shading == "textureless", progress, self.rng.host)

    def _regularizer_losses(self, out: RenderOutput, weights: dict[str, float]) -> dict[str, Tensor]:
        # Orientation needs normals, which are rendered only while its weight is non-zero.
        orient = loss_orientation(out) if weights["lambda_orient"] > 0 else torch.zeros((), device=self.device)
        losses = {"loss_orient": orient, "loss_opacity": loss_opacity(out)}
        if isinstance(self.field, SDFField):
            losses["loss_eikonal"] = eikonal_loss(self.field, self.rng.device)
        return losses

    def _apply(self, losses: dict[str, Tensor], weights: dict[str, float], out: RenderOutput) -> Float[Tensor, " V"]:
        """Weight the losses by name (a loss without a ``lambda_*`` has weight 1), backpropagate, and take the
        optimizer step unless the loss or gradient is not finite on some rank: the fused Adam's ``found_inf``
        skips it on the device (parameters, moments and step count untouched). Returns PendingStep.values."""
        loss = sum(weights.get("lambda_" + name.removeprefix("loss_"), 1.0) * value for name, value in losses.items())
        assert isinstance(loss, Tensor)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        parts = torch.stack([loss, *losses.values(), out.opacity.mean()]).detach().float()
        nonfinite = (~(torch.isfinite(loss) & torch.isfinite(grad_norm))).float()
        if self.context.distributed:
            # One small all-reduce: the losses of the log become means over ranks, and a step that is not
            # finite on some rank is skipped on all of them, so the ranks' parameters never part.
            reduced = all_reduce_mean(self.context, torch.cat((parts, nonfinite[None])))
            parts, nonfinite = reduced[:-1], reduced[-1]
        skipped = (nonfinite > 0).float()
        self.optimizer.found_inf = skipped  # type: ignore[attr-defined]
        self.optimizer.step()
        return torch.cat((parts, grad_norm.float()[None], skipped[None]))

    def read_steps(self, pending: list[PendingStep]) -> list[StepMetrics]:
        """The figures of queued steps, in one transfer from the device; counts their skipped steps. Stops at
        a step that makes ``max_consecutive_nonfinite`` skipped steps in a row: the run diverged there, and
        the counters are those of that step."""
        if not pending:
            return []
        values = torch.cat([p.values for p in pending]).tolist()
        now = time.perf_counter()
        it_per_s = len(pending) / (now - self._window_started) if now > self._window_started else math.inf
        self._window_started = now
        metrics, offset = [], 0
        for p in pending:
            end = offset + len(p.loss_names) + 4  # loss, the loss_* parts, opacity, grad norm, skipped
            loss, *parts, opacity, grad_norm, skipped = values[offset:end]
            offset = end
            if skipped:
                self.skipped_steps += 1
                self.nonfinite_in_row += 1
            else:
                self.nonfinite_in_row = 0
            metrics.append(StepMetrics(
                step=p.step, loss=loss, losses=dict(zip(p.loss_names, parts, strict=True)), weights=p.weights,
                opacity=opacity, lr=p.lr, timestep=p.timestep, shading=p.shading, grad_norm=grad_norm,
                skipped=bool(skipped), it_per_s=it_per_s,
            ))  # fmt: skip
            if self.diverged:
                break
        return metrics

    @property
    def diverged(self) -> bool:
        return self.nonfinite_in_row >= self.config.trainer.max_consecutive_nonfinite

    # -- the loop -------------------------------------------------------------------------------
    def fit(
        self,
        run_dir: Path | None = None,
        stop_at: int | None = None,
        on_step: Callable[[StepMetrics], None] | None = None,
    ) -> TrainResult:
        """Train until ``stop_at`` (default: the configured iterations), checkpointing into ``run_dir``
        (every rank must call this; only the main rank writes).

        Crossing ``trainer.iters`` with a surface stage to come enters it and writes a checkpoint of its start.
        Raises TrainingError after too many non-finite steps in a row; the last good checkpoint stays.
        """
        trainer = self.config.trainer
        end = self.config.total_steps if stop_at is None else min(stop_at, self.config.total_steps)
        started = self._window_started = time.perf_counter()
        result = TrainResult(steps=self.step, skipped_steps=self.skipped_steps, seconds=0.0)
        pending: list[PendingStep] = []
        while self.step < end:
            if self._refine_due():
                self._enter_refine_stage()
                if run_dir is not None:
                    self.save_checkpoint(run_dir / "checkpoint.pt")
            pending.append(self.queue_step())
            checkpoint_due = run_dir is not None and (self.step % trainer.checkpoint_every == 0 or self.step == end)
            # The device runs ahead of the host until a log line, a checkpoint or a stage boundary needs figures.
            if not (self.step % trainer.log_every == 0 or checkpoint_due or self.step == end or self._refine_due()):
                continue
            read = self.read_steps(pending)
            for metrics in read:
                if metrics is read[-1] and self.diverged:  # read_steps stopped at the step that diverged
                    raise TrainingError(self._divergence_message(metrics.step + 1))
                result.last = metrics
                if metrics.step % trainer.log_every == 0 or metrics.step + 1 == end:
                    result.history.append(metrics)
                    if run_dir is not None and self.context.is_main:
                        append_line(run_dir / "metrics.jsonl", json.dumps(metrics.record()))
                if on_step is not None:
                    on_step(metrics)
            pending = []
            # No checkpoint while steps fail: the last one written stays the last good state.
            if checkpoint_due and self.nonfinite_in_row == 0:
                assert run_dir is not None
                self.save_checkpoint(run_dir / "checkpoint.pt")
        result.steps = self.step
        result.skipped_steps = self.skipped_steps
        result.seconds = time.perf_counter() - started
        return result

    def _divergence_message(self, step: int) -> str:
        kept = "no checkpoint was written yet"
        if self.last_checkpoint_step is not None:
            kept = f"the last good checkpoint (step {self.last_checkpoint_step}) is kept"
        return (
            f"stopped at step {step}: the run diverged ({self.nonfinite_in_row} steps in a row had a non-finite "
            f"loss or gradient, {self.skipped_steps} skipped in all); {kept}. Lower trainer.lr or the guidance scale"
        )

    # -- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        from dreamfusion.typed_config import to_dict

        return {
            "version": CHECKPOINT_VERSION,
            "step": self.step,
            "stage": self.stage.name,
            "attempt": self.attempt,
            "skipped_steps": self.skipped_steps,
            "nonfinite_in_row": self.nonfinite_in_row,
            "field": self.field.state_dict(),
            "background": self.background.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": self.rng.state_dict(),
            "config": to_dict(self.config),
        }

    def save_checkpoint(self, path: Path) -> None:
        """Write the checkpoint from the main rank. Distributed, every rank must call this: the random states
        of all ranks are gathered into ``rng_ranks`` so a resume with as many ranks continues exactly."""
        ranks = gather_to_main(self.context, self.rng.state_dict()) if self.context.distributed else None
        if not self.context.is_main:
            return
        if not all(bool(torch.isfinite(p).all()) for p in self.field.parameters()):
            return  # a broken state never replaces the last good checkpoint
        state = self.state_dict()
        if ranks is not None:
            state["rng_ranks"] = ranks
        write_atomic(path, lambda tmp: torch.save(state, tmp))
        self.last_checkpoint_step = self.step

    def load_checkpoint(self, path: Path) -> None:
        """Restore a checkpoint written by ``save_checkpoint`` for the same run config."""
        from dreamfusion.typed_config import ConfigError, differing_keys, to_dict

        state = read_checkpoint(path)
        # Only the number of iterations may change on resume (to extend a run). The saved config is read as
        # this run's config class reads a saved one, so settings added since it was written take their defaults.
        try:
            saved = to_dict(type(self.config).from_saved(state.get("config") or {}))
        except ConfigError as error:
            raise TrainingError(f"{path} was written by a run with another config ({error})") from None
        changed = differing_keys(saved, to_dict(self.config), ignore=("trainer.iters",))
        if changed:
            raise TrainingError(
                f"{path} was written by a run with another config (it differs in {', '.join(changed[:4])}); "
                "start a new run or pass --overwrite"
            )
        self._enter_saved_stage(path, state, saved)
        try:
            self.field.load_state_dict(state["field"])
            self.background.load_state_dict(state["background"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.rng.load_state_dict(self._rank_rng_state(state))
        except (RuntimeError, KeyError, ValueError) as error:
            raise TrainingError(f"{path} does not fit this model ({str(error).splitlines()[0]})") from None
        self.step = int(state["step"])
        self.attempt = int(state.get("attempt", 0))
        self.last_checkpoint_step = self.step
        self.skipped_steps = int(state["skipped_steps"])
        self.nonfinite_in_row = int(state["nonfinite_in_row"])

    def _enter_saved_stage(self, path: Path, state: dict[str, Any], saved: dict[str, Any]) -> None:
        """Build the surface stage's field before a checkpoint of that stage is loaded into it. Its start is
        fixed by the saved trainer.iters, so such a run cannot extend its coarse stage any more."""
        stage = state.get("stage", "coarse")
        if stage not in STAGES:
            raise TrainingError(f"{path} has an unknown stage {stage!r}")
        if stage == "coarse":
            return
        if saved["trainer"]["iters"] != self.config.trainer.iters:
            raise TrainingError(
                f"{path} is in its surface stage, which began after trainer.iters = {saved['trainer']['iters']}; "
                "it cannot be resumed with another --iters"
            )
        self._enter_refine_stage(fit=False)

    def _rank_rng_state(self, state: dict[str, Any]) -> dict[str, torch.Tensor]:
        """This rank's saved random state. "rng" is rank 0's (and a one-process run's); a rank the checkpoint
        has no state for (the run had fewer ranks) keeps the fresh streams of its own ``rank_seed``."""
        rank = self.context.rank
        ranks = state.get("rng_ranks") or [state["rng"]]
        if rank == 0:
            return state["rng"]
        return ranks[rank] if rank < len(ranks) else self.rng.state_dict()


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint dict, turning every way a file can be broken into one TrainingError."""
    if not path.is_file():
        raise TrainingError(f"no checkpoint at {path}; start a new run without --resume")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - pickle, zip and I/O errors all mean a corrupt file
        raise TrainingError(f"{path} is not a readable checkpoint ({type(error).__name__}); it may be truncated") from None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise TrainingError(f"{path} is not a dreamfusion checkpoint of version {CHECKPOINT_VERSION}")
    return state
