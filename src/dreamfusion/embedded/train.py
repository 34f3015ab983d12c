"""Train the embedded prior on procedural renders, within a time budget, resumably.

    python -m dreamfusion.embedded.train --out runs/prior --minutes 9 [--resume] [--steps N] [--batch-size B]

Writes into the output folder:
  checkpoint.pt      model, EMA, optimizer, step, elapsed time and RNG states (atomic, every N steps and at the end)
  metrics.jsonl      one line per log interval: step, loss, it/s, images/s, lr, elapsed
  prior.safetensors  the EMA weights in float16 (what ships as src/dreamfusion/embedded/weights/prior.safetensors)
  samples.png        (command line only) DDIM samples after training: a row per object kind, a column per view

Throughput matters more than anything else in a 9-minute budget, so the step avoids host syncs (the loss is
accumulated on the device and read once per log interval), uses bf16 autocast, fused AdamW, and builds
caption tokens from the dataset's integer labels on the device instead of tokenizing strings.

Training choices (see schedule.py for the parameterization): v-prediction with the min-SNR-5 weight, uniform
timesteps, 10% caption dropout for classifier-free guidance, plus dropping just the colour (5%) or just the view
(10%) so "a chair" and "a red chair" without a view are in-distribution too. Textureless renders lose
their colour word ("a chair, side view"): a white render says nothing about the colour, and the NeRF trainer
scores its textureless renders under the colourless prompt too. Captioning them with the colour taught the
model that "a red chair" may be white, which both weakened colour in samples and let SDS fake colour with
shading. Learning rate: linear warm-up,
then cosine decay to ``final_lr_fraction`` over the budget (steps or minutes, whichever ends first). EMA
weights are exported: at this training length they sample better than the raw weights.
"""

from __future__ import annotations

import argparse
import copy
import json
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from dreamfusion.embedded import vocabulary as vocab
from dreamfusion.embedded.budget import Budget
from dreamfusion.embedded.model import EmbeddedDiffusion, EmbeddedModelConfig, parameter_count, save_weights
from dreamfusion.embedded.render_pool import BatchSource, RenderFeed, check_pool_settings
from dreamfusion.embedded.schedule import min_snr_weight, v_target
from dreamfusion.files import write_atomic
from dreamfusion.procedural.dataset import ProceduralDataConfig, sample_batch
from dreamfusion.schedules import WarmupCosine
from dreamfusion.sds import add_noise
from dreamfusion.shading import SHADING_MODES
from dreamfusion.typed_config import to_dict

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
WEIGHTS = "prior.safetensors"


@dataclass(frozen=True)
class TrainPriorConfig:
    """How the embedded prior is trained."""

    model: EmbeddedModelConfig = field(default_factory=EmbeddedModelConfig)
    data: ProceduralDataConfig = field(default_factory=ProceduralDataConfig)
    batch_size: int = 256
    lr: float = 5e-4
    """Peak AdamW learning rate."""
    final_lr_fraction: float = 0.1
    """The cosine decay ends at lr * final_lr_fraction when the budget runs out."""
    warmup_steps: int = 250
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    """EMA of the weights, exported for sampling; warmed up as min(decay, (1 + step) / (10 + step))."""
    p_uncond: float = 0.1
    """Caption dropout to the unconditional caption (classifier-free guidance)."""
    p_drop_colour: float = 0.05
    p_drop_view: float = 0.1
    colourless_shading: tuple[str, ...] = ("textureless",)
    """Shading modes whose renders lose the colour word in their captions."""
    min_snr_gamma: float = 5.0
    minutes: float | None = 9.0
    """Wall-clock budget for the whole run, resumed parts included; None for no time limit."""
    max_steps: int | None = None
    """Step budget; None for no step limit. At least one of minutes and max_steps must be set."""
    seed: int = 0
    checkpoint_every: int = 2000
    log_every: int = 200
    mixed_precision: bool = True
    """bf16 autocast on CUDA (ignored on CPU)."""
    compile: bool = False
    """torch.compile the network; its compile time counts against the budget."""
    pool_size: int = 16384
    """Renders kept on the device (float16, ~400 MB) and drawn from at random; 0 renders every batch fresh.
    Sphere tracing a batch is not cheap next to a training step, so the pool renders a quarter of what it trains on."""
    pool_refresh: int = 256
    """Renders replaced in the pool (the oldest first) every ``pool_refresh_every`` steps: with the defaults
    each render is drawn ~4 times before it is replaced."""
    pool_refresh_every: int = 4

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.lr <= 0 or self.warmup_steps < 0 or self.grad_clip <= 0:
            raise ValueError("batch_size and lr must be positive, warmup_steps >= 0, grad_clip > 0")
        if not 0.0 <= self.final_lr_fraction <= 1.0 or not 0.0 <= self.ema_decay < 1.0:
            raise ValueError("final_lr_fraction must lie in [0, 1] and ema_decay in [0, 1)")
        for name in ("p_uncond", "p_drop_colour", "p_drop_view"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must lie in [0, 1), got {getattr(self, name)}")
        if self.minutes is None and self.max_steps is None:
            raise ValueError("set a time budget (minutes), a step budget (max_steps), or both")
        if (self.minutes is not None and self.minutes <= 0) or (self.max_steps is not None and self.max_steps < 1):
            raise ValueError("minutes must be positive and max_steps at least 1")
        if self.checkpoint_every < 1 or self.log_every < 1 or self.min_snr_gamma <= 0 or self.weight_decay < 0:
            raise ValueError("checkpoint_every and log_every must be >= 1, min_snr_gamma > 0, weight_decay >= 0")
        check_pool_settings(self)
        if self.pool_refresh_every < 1:
            raise ValueError("pool_refresh_every must be >= 1")
        unknown = set(self.colourless_shading) - set(SHADING_MODES)
        if unknown:
            raise ValueError(f"unknown shading modes {sorted(unknown)}; known: {SHADING_MODES}")

    @property
    def lr_schedule(self) -> WarmupCosine:
        """Over the whole budget, down to ``final_lr_fraction`` of ``lr``."""
        return WarmupCosine(self.warmup_steps, self.final_lr_fraction)


@dataclass
class TrainPriorResult:
    steps: int
    seconds: float
    """Wall-clock seconds of the whole run, resumed parts included."""
    final_loss: float
    weights_path: Path
    checkpoint_path: Path


def drop_slots(
    tokens: Int[Tensor, "B 4"], draws: Float[Tensor, "B 3"], p_uncond: float, p_colour: float, p_view: float,
    colourless: Tensor | None = None,
) -> Int[Tensor, "B 4"]:
    """Empty caption slots at random (uniform ``draws``): all of them, only the colour, only the view."""
    uncond = draws[:, 0] < p_uncond
    drop_colour = uncond | (draws[:, 1] < p_colour)
    if colourless is not None:
        drop_colour = drop_colour | colourless
    keep = torch.stack((torch.ones_like(uncond), ~drop_colour, ~uncond, ~(uncond | (draws[:, 2] < p_view))), dim=1)
    return torch.where(keep, tokens, torch.full_like(tokens, vocab.PAD_ID))


class PriorTrainer:
    """Model, EMA, optimizer, data and RNG of one training run; ``step`` runs one optimization step."""

    def __init__(self, config: TrainPriorConfig, device: torch.device | str, source: BatchSource | None = None) -> None:
        self.config = config
        self.device = torch.device(device)
        source = source or (lambda n, g: sample_batch(config.data, n, g, self.device))
        torch.manual_seed(config.seed)
        self.model = EmbeddedDiffusion(config.model).to(self.device)
        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        cuda = self.device.type == "cuda"
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay, fused=cuda
        )
        self.network = torch.compile(self.model) if config.compile else self.model
        self.autocast = cuda and config.mixed_precision
        self.data_generator = torch.Generator().manual_seed(config.seed)
        self.noise_generator = torch.Generator(self.device).manual_seed(config.seed + 1)
        self.colourless = torch.tensor(
            [SHADING_MODES.index(m) for m in config.colourless_shading], dtype=torch.long, device=self.device
        )
        self.lr_schedule = config.lr_schedule
        self.feed = RenderFeed(config, source, self.data_generator, self.noise_generator)
        self.step_count = 0
        self.elapsed_before = 0.0
        self.loss_sum = torch.zeros((), device=self.device)
        self.loss_count = 0
        self._params = [p for p in self.model.parameters()]
        self._ema_params = [p for p in self.ema.parameters()]

    def step(self, progress: float) -> None:
        """One optimization step; ``progress`` in [0, 1] is the fraction of the budget spent (for the lr)."""
        config, model = self.config, self.model
        images, labels = self.feed.next_batch(self.step_count)
        batch = images.shape[0]
        tokens = vocab.caption_tokens(labels[:, 0], labels[:, 1], labels[:, 2])
        draws = torch.rand((batch, 3), device=self.device, generator=self.noise_generator)
        colourless = torch.isin(labels[:, 3], self.colourless)
        tokens = drop_slots(tokens, draws, config.p_uncond, config.p_drop_colour, config.p_drop_view, colourless)
        clean = images * 2.0 - 1.0
        alphas_cumprod = model.alphas_cumprod
        generator = self.noise_generator
        timesteps = torch.randint(0, alphas_cumprod.shape[0], (batch,), device=self.device, generator=generator)
        noise = torch.randn(clean.shape, device=self.device, generator=generator)
        noisy = add_noise(clean, noise, alphas_cumprod, timesteps)
        target = v_target(clean, noise, alphas_cumprod, timesteps)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_schedule.learning_rate(config.lr, self.step_count, progress)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            prediction = self.network(noisy, timesteps, model.encode_text(tokens))
        per_image = (prediction.float() - target).square().mean(dim=(1, 2, 3))
        loss = (min_snr_weight(alphas_cumprod, timesteps, config.min_snr_gamma) * per_image).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self._params, config.grad_clip, foreach=True)
        self.optimizer.step()
        decay = min(config.ema_decay, (1 + self.step_count) / (10 + self.step_count))
        with torch.no_grad():
            torch._foreach_lerp_(self._ema_params, self._params, 1.0 - decay)
        self.loss_sum += loss.detach()
        self.loss_count += 1
        self.step_count += 1

    def take_mean_loss(self) -> float:
        """Mean loss since the last call (one host sync)."""
        value = (self.loss_sum / max(1, self.loss_count)).item()
        self.loss_sum.zero_()
        self.loss_count = 0
        return value

    def state_dict(self, elapsed: float) -> dict[str, Any]:
        return {
            "model_config": to_dict(self.config.model),
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step_count,
            "elapsed": elapsed,
            "data_generator": self.data_generator.get_state(),
            "noise_generator": self.noise_generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["model_config"] != to_dict(self.config.model):
            raise ValueError("the checkpoint was written for another model config; use another --out folder")
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step_count = int(state["step"])
        self.elapsed_before = float(state["elapsed"])
        self.data_generator.set_state(state["data_generator"])
        self.noise_generator.set_state(state["noise_generator"])


def _atomic_save(obj: Any, path: Path) -> None:
    write_atomic(path, lambda temporary: torch.save(obj, temporary))


def train_prior(
    config: TrainPriorConfig,
    out_dir: str | Path,
    device: torch.device | str = "cuda",
    resume: bool = False,
    progress: Callable[[dict[str, Any]], None] | None = None,
    source: BatchSource | None = None,
) -> TrainPriorResult:
    """Train until the step or time budget is spent, then checkpoint and export the EMA weights.

    ``resume`` continues from ``out_dir/checkpoint.pt`` (same model config), counting the time already spent
    against ``config.minutes``; without it an existing checkpoint is an error rather than silently overwritten.
    ``progress`` receives each metrics record; ``source`` replaces the procedural renderer (tests).
    """
    started = time.monotonic()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint_path, weights_path = out / CHECKPOINT, out / WEIGHTS
    device = torch.device(device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    if checkpoint_path.exists() and not resume:
        raise FileExistsError(f"{checkpoint_path} exists; pass resume=True (--resume) or use another folder")
    trainer = PriorTrainer(config, device, source)
    if checkpoint_path.exists():
        trainer.load_state_dict(torch.load(checkpoint_path, map_location=device, weights_only=True))
    budget = Budget(config.minutes, config.max_steps, started, trainer.elapsed_before)

    def save() -> None:
        _atomic_save(trainer.state_dict(budget.elapsed()), checkpoint_path)
        save_weights(trainer.ema, weights_path)

    print(f"embedded prior: {parameter_count(trainer.model) / 1e6:.2f}M parameters, batch {config.batch_size}, "
          f"device {device}, starting at step {trainer.step_count}", flush=True)
    final_loss = float("nan")
    last_time, last_step = time.monotonic(), trainer.step_count
    try:
        with (out / METRICS).open("a") as metrics:
            while budget.fraction(trainer.step_count) < 1.0:
                trainer.step(budget.fraction(trainer.step_count))
                step = trainer.step_count
                if step % config.log_every == 0 or budget.fraction(step) >= 1.0:
                    final_loss = trainer.take_mean_loss()
                    now = time.monotonic()
                    rate = (step - last_step) / max(now - last_time, 1e-9)
                    last_time, last_step = now, step
                    images_per_s = rate * config.batch_size
                    record = {"step": step, "loss": final_loss, "it_per_s": rate, "images_per_s": images_per_s,
                              "lr": trainer.optimizer.param_groups[0]["lr"], "elapsed_s": budget.elapsed()}
                    metrics.write(json.dumps(record) + "\n")
                    metrics.flush()
                    print(f"step {step:6d}  loss {final_loss:.4f}  {rate:6.2f} it/s  {images_per_s:8.0f} img/s"
                          f"  {record['elapsed_s']:6.0f} s", flush=True)
                    if progress is not None:
                        progress(record)
                if step % config.checkpoint_every == 0:
                    save()
    except KeyboardInterrupt:
        print("interrupted: writing the checkpoint and weights", flush=True)
        save()
        raise
    if trainer.loss_count:
        final_loss = trainer.take_mean_loss()
    save()
    return TrainPriorResult(trainer.step_count, budget.elapsed(), final_loss, weights_path, checkpoint_path)


def write_sample_sheet(weights: Path, out_png: Path, device: torch.device | str, steps: int = 50) -> Path:
    """A grid to judge the prior by eye: one row per object kind, one column per view; colours cycle over the
    rows, skipping held-out (never trained) pairs."""
    import numpy as np
    from PIL import Image

    from dreamfusion.cameras import VIEW_LABELS
    from dreamfusion.priors.embedded import SAMPLING_GUIDANCE_SCALE, EmbeddedPrior, EmbeddedPriorConfig
    from dreamfusion.priors.sampling import ddim_sample
    from dreamfusion.procedural.objects import is_held_out

    prior = EmbeddedPrior(EmbeddedPriorConfig(model=str(weights)), device)
    conditional, unconditional = [], []
    colours = vocab.COLOUR_NAMES
    for row, kind in enumerate(vocab.OBJECT_NAMES):
        cycle = [colours[(row + i) % len(colours)] for i in range(len(colours))]
        colour = next(c for c in cycle if not is_held_out(c, kind))
        cond, uncond = prior.encode_prompt(f"a {colour} {kind}").for_views(VIEW_LABELS)
        conditional.append(cond)
        unconditional.append(uncond)
    count = len(vocab.OBJECT_NAMES) * len(VIEW_LABELS)
    images = ddim_sample(prior, (torch.cat(conditional), torch.cat(unconditional)), count, steps=steps,
                         guidance_scale=SAMPLING_GUIDANCE_SCALE, generator=torch.Generator().manual_seed(0))
    rows, columns, size = len(vocab.OBJECT_NAMES), len(VIEW_LABELS), prior.resolution
    grid = images.view(rows, columns, 3, size, size).permute(0, 3, 1, 4, 2).reshape(rows * size, columns * size, 3)
    picture = Image.fromarray((grid.cpu().numpy() * 255).round().astype(np.uint8))
    write_atomic(out_png, lambda tmp: picture.save(tmp, format="PNG"))
    return out_png


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the embedded 64x64 diffusion prior on procedural renders.")
    parser.add_argument("--out", required=True, type=Path, help="output folder (checkpoint, metrics, weights)")
    parser.add_argument("--minutes", type=float, default=9.0, help="wall-clock budget of the whole run (default 9)")
    parser.add_argument("--steps", type=int, default=None, help="step budget (default: none)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--pool-size", type=int, default=None, help="renders kept on the device (0: fresh batches)")
    parser.add_argument("--pool-refresh-every", type=int, default=None, help="steps between pool refreshes")
    parser.add_argument("--no-samples", action="store_true", help="skip OUT/samples.png (DDIM, objects x views)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {"minutes": args.minutes, "max_steps": args.steps, "seed": args.seed,
                                 "compile": args.compile}
    for name in ("batch_size", "pool_size", "pool_refresh_every"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    config = replace(TrainPriorConfig(), **overrides)
    # `timeout` and job schedulers stop with SIGTERM: save the checkpoint as Ctrl-C would.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    result = train_prior(config, args.out, args.device, resume=args.resume)
    print(json.dumps({"steps": result.steps, "seconds": round(result.seconds, 1), "final_loss": result.final_loss,
                      "weights": str(result.weights_path)}), flush=True)
    if not args.no_samples:
        print(f"samples: {write_sample_sheet(result.weights_path, args.out / 'samples.png', args.device)}", flush=True)


if __name__ == "__main__":
    main()
