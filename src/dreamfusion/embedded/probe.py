"""A probe classifier of the procedural domain: object (13), colour (10) and view (4) from a 64x64 render.

    python -m dreamfusion.embedded.probe --out runs/probe [--minutes 3] [--steps N] [--batch-size 256]

It is a measuring instrument, not part of generation: ``dreamfusion.evaluate`` renders a trained NeRF from
known cameras and asks the probe what it sees (which object, which colour, and whether a back view looks like
a front: the Janus problem), and bench/prior_quality.py asks it about the embedded prior's samples. It
therefore trains on every colour x object pair (``held_out="include"``), held-out pairs included.

Training follows embedded/train.py: procedural renders kept in a pool on the device (render_pool.py), bf16
autocast on CUDA, loss accumulated on the device, a time or step budget, metrics.jsonl, and fp16 safetensors
(config and label names in the metadata) written atomically. Augmentation (small shifts and zooms, random
blur, a little noise) stands in for the softer, noisier look of NeRF renders. No horizontal flips: a flip
turns the mug's front (handle on the right) into its back.

The colour loss skips textureless renders (they are white-shaded whatever the caption says), and view
accuracy is only attainable on kinds whose back differs from their front (see VIEW_SYMMETRIC_KINDS).
"""

from __future__ import annotations

import argparse
import json
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from dreamfusion.cameras import VIEW_LABELS
from dreamfusion.embedded.budget import Budget
from dreamfusion.embedded.model import parameter_count
from dreamfusion.embedded.render_pool import RenderFeed, check_pool_settings, render_labels
from dreamfusion.errors import PriorError
from dreamfusion.files import write_atomic
from dreamfusion.procedural.dataset import COLOUR_NAMES, ProceduralBatch, ProceduralDataConfig, sample_batch
from dreamfusion.procedural.objects import OBJECT_KINDS
from dreamfusion.schedules import WarmupCosine
from dreamfusion.shading import SHADING_MODES
from dreamfusion.typed_config import from_dict, to_dict

FORMAT = "dreamfusion-probe/1"
WEIGHTS = "probe.safetensors"
METRICS = "metrics.jsonl"
SHIPPED_PROBE = Path(__file__).resolve().parent / "weights" / WEIGHTS

VIEW_SYMMETRIC_KINDS: frozenset[str] = frozenset({"table", "cube", "sphere", "cylinder", "cone", "torus"})
"""Kinds whose back looks like their front (the solids of revolution and the cube from every side, the table
by its 180-degree symmetry): no image tells their views apart, so view accuracy and the Janus rate are only
meaningful for the other kinds."""

_LABELS = json.dumps({"objects": list(OBJECT_KINDS), "colours": list(COLOUR_NAMES), "views": list(VIEW_LABELS)})
_TEXTURELESS = SHADING_MODES.index("textureless")


@dataclass(frozen=True)
class ProbeModelConfig:
    """Architecture; the defaults are the shipped probe (~1.4M parameters, ~2.8 MB in fp16)."""

    widths: tuple[int, ...] = (32, 64, 128, 192)
    """Channels of the stem (full resolution) and of each residual stage, each at half the previous side."""
    groups: int = 8
    """GroupNorm groups (per-image normalization, so NeRF renders with other contrast are judged alike)."""
    head_hidden: int = 256
    resolution: int = 64
    """Input side; other sizes are resized by ``Probe.classify``."""

    def __post_init__(self) -> None:
        if len(self.widths) < 2 or any(w <= 0 or w % self.groups for w in self.widths):
            raise ValueError(f"probe widths need >= 2 entries, each a positive multiple of groups={self.groups}")
        if self.head_hidden <= 0 or self.resolution < 2 ** (len(self.widths) - 1):
            raise ValueError("probe head_hidden must be positive and the resolution survive the downsampling")


class _Residual(nn.Module):
    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.GroupNorm(groups, channels), nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.GroupNorm(groups, channels),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return F.silu(x + self.body(x))


def _conv(c_in: int, c_out: int, stride: int, groups: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.GroupNorm(groups, c_out), nn.SiLU()
    )


class ProbeNet(nn.Module):
    """Stem, then per stage a strided conv and a residual block; average and max pooling (max keeps small
    details such as the rocket's porthole) feed three linear heads through a shared hidden layer."""

    def __init__(self, config: ProbeModelConfig = ProbeModelConfig()) -> None:
        super().__init__()
        self.config = config
        w, g = config.widths, config.groups
        layers: list[nn.Module] = [_conv(3, w[0], 1, g)]
        for c_in, c_out in zip(w[:-1], w[1:], strict=True):
            layers += [_conv(c_in, c_out, 2, g), _Residual(c_out, g)]
        self.features = nn.Sequential(*layers)
        self.hidden = nn.Sequential(nn.Linear(2 * w[-1], config.head_hidden), nn.SiLU())
        self.object_head = nn.Linear(config.head_hidden, len(OBJECT_KINDS))
        self.colour_head = nn.Linear(config.head_hidden, len(COLOUR_NAMES))
        self.view_head = nn.Linear(config.head_hidden, len(VIEW_LABELS))

    def forward(
        self, images: Float[Tensor, "B 3 H W"]
    ) -> tuple[Float[Tensor, "B 13"], Float[Tensor, "B 10"], Float[Tensor, "B 4"]]:
        """Logits of object, colour and view, from rgb in [0, 1]."""
        x = self.features(images * 2.0 - 1.0)
        h = self.hidden(torch.cat((x.mean(dim=(2, 3)), x.amax(dim=(2, 3))), dim=1))
        return self.object_head(h), self.colour_head(h), self.view_head(h)


# ----- weights ---------------------------------------------------------------------------------------


def save_probe(network: ProbeNet, path: str | Path) -> Path:
    """float16 weights with the config and label names as metadata, written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().to(torch.float16).contiguous() for k, v in network.state_dict().items()}
    metadata = {"format": FORMAT, "config": json.dumps(to_dict(network.config)), "labels": _LABELS}
    def write(temporary: Path) -> None:
        save_file(tensors, str(temporary), metadata=metadata)
        temporary.chmod(0o644)  # safetensors writes 0600; the file is meant to ship inside the package

    return write_atomic(path, write)


@dataclass
class ProbePrediction:
    """What the probe sees in each image: the argmax labels (indices into OBJECT_KINDS, COLOUR_NAMES and
    VIEW_LABELS) and the softmax probabilities they come from."""

    object_ids: Int[Tensor, " B"]
    colour_ids: Int[Tensor, " B"]
    view_ids: Int[Tensor, " B"]
    object_probs: Float[Tensor, "B 13"]
    colour_probs: Float[Tensor, "B 10"]
    view_probs: Float[Tensor, "B 4"]

    @classmethod
    def from_probs(cls, objects: Tensor, colours: Tensor, views: Tensor) -> ProbePrediction:
        return cls(objects.argmax(1), colours.argmax(1), views.argmax(1), objects, colours, views)

    @classmethod
    def mean(cls, predictions: list[ProbePrediction]) -> ProbePrediction:
        """Average the probabilities of several looks at the same images (e.g. two shading modes)."""
        stack = lambda name: torch.stack([getattr(p, name) for p in predictions]).mean(0)  # noqa: E731
        return cls.from_probs(stack("object_probs"), stack("colour_probs"), stack("view_probs"))

    def __len__(self) -> int:
        return self.object_ids.shape[0]

    def __getitem__(self, index: Tensor | slice) -> ProbePrediction:
        """The predictions of a subset of the images (a mask, indices or a slice)."""
        return ProbePrediction(*(getattr(self, f)[index] for f in self.__dataclass_fields__))

    def cpu(self) -> ProbePrediction:
        return ProbePrediction(*(getattr(self, f).cpu() for f in self.__dataclass_fields__))


class Probe:
    """A trained probe on a device, in eval mode and float32."""

    def __init__(self, network: ProbeNet, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.network = network.to(self.device, torch.float32).eval().requires_grad_(False)
        self.resolution = network.config.resolution

    def classify(self, images: Float[Tensor, "B 3 H W"], chunk: int = 512) -> ProbePrediction:
        """Classify rgb images in [0, 1] (resized, antialiased, to the probe's resolution if needed)."""
        return predict(self.network, images, chunk)


@torch.no_grad()
def predict(network: ProbeNet, images: Float[Tensor, "B 3 H W"], chunk: int = 512) -> ProbePrediction:
    """The network's prediction in float32, on the network's device, ``chunk`` images at a time."""
    device, side = next(network.parameters()).device, network.config.resolution
    parts = []
    for part in images.split(chunk):
        part = part.to(device, torch.float32)
        if part.shape[-2:] != (side, side):
            part = F.interpolate(part, size=(side, side), mode="bilinear", antialias=True)
        parts.append([logits.float().softmax(1) for logits in network(part)])
    return ProbePrediction.from_probs(*(torch.cat(p) for p in zip(*parts, strict=True)))


def load_probe(path: str | Path | None = None, device: torch.device | str = "cpu") -> Probe:
    """Load a probe weights file (a folder stands for its probe.safetensors); None is the shipped probe."""
    path = SHIPPED_PROBE if path is None else Path(path).expanduser()
    path = path / WEIGHTS if path.is_dir() else path
    if not path.is_file():
        raise PriorError(
            f"probe weights not found at {path}; train them with `python -m dreamfusion.embedded.probe --out DIR` "
            f"and pass DIR/{WEIGHTS} (or copy it to {SHIPPED_PROBE})"
        )
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if metadata.get("format") != FORMAT:
        raise PriorError(f"{path} is not a probe weights file (format {metadata.get('format')!r})")
    if json.loads(metadata.get("labels", "{}")) != json.loads(_LABELS):
        raise PriorError(f"{path} was trained on other objects, colours or views; retrain the probe")
    network = ProbeNet(from_dict(ProbeModelConfig, json.loads(metadata["config"])))
    network.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    return Probe(network, device)


# ----- training --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeConfig:
    """How the probe is trained."""

    model: ProbeModelConfig = field(default_factory=ProbeModelConfig)
    data: ProceduralDataConfig = field(default_factory=lambda: ProceduralDataConfig(held_out="include"))
    """Every pair, held-out ones included: the probe measures, it is not tested for generalization."""
    batch_size: int = 256
    lr: float = 2e-3
    """Peak AdamW learning rate; linear warm-up, then cosine decay to 2% of it over the budget."""
    warmup_steps: int = 100
    weight_decay: float = 0.05
    label_smoothing: float = 0.05
    """Keeps the probabilities calibrated for averaging over views and shadings."""
    minutes: float | None = 3.0
    """Wall-clock budget, pool filling and validation included; None for no time limit."""
    max_steps: int | None = None
    seed: int = 0
    shift: float = 0.1
    """Random translation, as a fraction of the half image side (0.1 is +-3 px at 64 px)."""
    zoom: float = 0.12
    """Random scale in [1 - zoom, 1 + zoom]."""
    blur_probability: float = 0.5
    """Fraction of images blended with a 1-pixel Gaussian blur of themselves, by a random weight."""
    noise: float = 0.02
    """Pixel noise of standard deviation uniform in [0, noise]."""
    val_size: int = 1024
    """The fixed validation batch (its own seed); rendered once, never augmented."""
    pool_size: int = 16384
    """Renders kept on the device (see embedded/render_pool.py); 0 renders every batch fresh."""
    pool_refresh: int = 256
    pool_refresh_every: int = 4
    log_every: int = 100
    eval_every: int = 1000
    """Steps between validations (each also writes the weights)."""
    mixed_precision: bool = True
    """bf16 autocast on CUDA (ignored on CPU)."""

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.lr <= 0 or self.warmup_steps < 0 or self.weight_decay < 0:
            raise ValueError("probe batch_size and lr must be positive, warmup_steps and weight_decay >= 0")
        if self.minutes is None and self.max_steps is None:
            raise ValueError("set a time budget (minutes), a step budget (max_steps), or both")
        if (self.minutes is not None and self.minutes <= 0) or (self.max_steps is not None and self.max_steps < 1):
            raise ValueError("minutes must be positive and max_steps at least 1")
        if not 0 <= self.zoom < 1 or self.shift < 0 or self.noise < 0 or not 0 <= self.blur_probability <= 1:
            raise ValueError("zoom must lie in [0, 1), shift and noise be >= 0, blur_probability in [0, 1]")
        if self.val_size < 1 or self.log_every < 1 or self.eval_every < 1 or self.pool_refresh_every < 1:
            raise ValueError("val_size, log_every, eval_every and pool_refresh_every must be >= 1")
        check_pool_settings(self)

    @property
    def lr_schedule(self) -> WarmupCosine:
        """Over the whole budget, down to 2% of ``lr``."""
        return WarmupCosine(self.warmup_steps, min_factor=0.02)


@dataclass(frozen=True)
class ProbeValidation:
    """Accuracies on the fixed validation batch."""

    count: int
    object_accuracy: float
    colour_accuracy: float
    """On albedo and lambertian renders (textureless ones carry no colour)."""
    colour_accuracy_albedo: float
    """On albedo renders alone (lambertian ones confuse grey with white, brown with orange when dimly lit)."""
    view_accuracy: float
    """On every render; bounded well below 1 by the view-symmetric kinds."""
    view_accuracy_identifiable: float
    """On the kinds not in VIEW_SYMMETRIC_KINDS: the number to hold against a view-accuracy target."""


@dataclass
class ProbeTrainResult:
    steps: int
    seconds: float
    final_loss: float
    validation: ProbeValidation
    weights_path: Path
    metrics_path: Path


def _gaussian_blur(images: Float[Tensor, "B 3 H W"], sigma: float = 1.0) -> Float[Tensor, "B 3 H W"]:
    taps = torch.arange(-2, 3, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = (kernel / kernel.sum()).repeat(3, 1)
    x = F.conv2d(F.pad(images, (2, 2, 0, 0), mode="replicate"), kernel.view(3, 1, 1, 5), groups=3)
    return F.conv2d(F.pad(x, (0, 0, 2, 2), mode="replicate"), kernel.view(3, 1, 5, 1), groups=3)


def augment(
    images: Float[Tensor, "B 3 H W"], config: ProbeConfig, generator: torch.Generator
) -> Float[Tensor, "B 3 H W"]:
    """Random shift and zoom (border-replicated, the backgrounds are smooth), blur and noise; all draws
    from ``generator``, which lives on the images' device."""
    b, device = images.shape[0], images.device

    def uniform(*shape: int) -> Tensor:
        return torch.rand(shape, device=device, generator=generator)

    scale = 1.0 + config.zoom * (2 * uniform(b) - 1)
    theta = torch.zeros(b, 2, 3, device=device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / scale
    theta[:, :, 2] = config.shift * (2 * uniform(b, 2) - 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    weight = (uniform(b) < config.blur_probability).float() * uniform(b)
    images = torch.lerp(images, _gaussian_blur(images), weight[:, None, None, None])
    noise = torch.randn(images.shape, device=device, generator=generator) * config.noise * uniform(b, 1, 1, 1)
    return (images + noise).clamp(0.0, 1.0)


def identifiable_views(object_ids: Int[Tensor, " B"]) -> Bool[Tensor, " B"]:
    """Whether each object kind's views can be told apart (not in VIEW_SYMMETRIC_KINDS)."""
    table = torch.tensor([k not in VIEW_SYMMETRIC_KINDS for k in OBJECT_KINDS], device=object_ids.device)
    return table[object_ids]


def probe_loss(
    logits: tuple[Tensor, Tensor, Tensor], labels: Int[Tensor, "B 4"], label_smoothing: float = 0.0
) -> Float[Tensor, ""]:
    """Sum of the three cross-entropies; the colour term is the mean over renders that are not textureless
    (0 if none is), without a host sync."""
    objects, colours, views = (x.float() for x in logits)
    coloured = (labels[:, 3] != _TEXTURELESS).float()
    colour = F.cross_entropy(colours, labels[:, 1], reduction="none", label_smoothing=label_smoothing)
    return (
        F.cross_entropy(objects, labels[:, 0], label_smoothing=label_smoothing)
        + (colour * coloured).sum() / coloured.sum().clamp(min=1.0)
        + F.cross_entropy(views, labels[:, 2], label_smoothing=label_smoothing)
    )


def validate(network: ProbeNet, images: Float[Tensor, "N 3 H W"], labels: Int[Tensor, "N 4"]) -> ProbeValidation:
    prediction = predict(network.eval(), images)
    network.train()
    hit_object = prediction.object_ids == labels[:, 0]
    hit_colour = prediction.colour_ids == labels[:, 1]
    hit_view = prediction.view_ids == labels[:, 2]
    identifiable = identifiable_views(labels[:, 0])

    def mean(x: Tensor) -> float:
        return x.float().mean().item() if x.numel() else float("nan")

    coloured, albedo = labels[:, 3] != _TEXTURELESS, labels[:, 3] == SHADING_MODES.index("albedo")
    return ProbeValidation(
        count=len(labels), object_accuracy=mean(hit_object), colour_accuracy=mean(hit_colour[coloured]),
        colour_accuracy_albedo=mean(hit_colour[albedo]), view_accuracy=mean(hit_view),
        view_accuracy_identifiable=mean(hit_view[identifiable]),
    )


def train_probe(
    config: ProbeConfig,
    out_dir: str | Path,
    device: torch.device | str = "cuda",
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> ProbeTrainResult:
    """Train until the step or time budget is spent; validate and write ``probe.safetensors`` every
    ``eval_every`` steps and at the end. A fresh run each time: metrics.jsonl is rewritten, not resumed
    (a run is minutes long). ``progress`` receives every metrics record."""
    started = time.monotonic()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights_path, metrics_path = out / WEIGHTS, out / METRICS
    device = torch.device(device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(config.seed)
    network = ProbeNet(config.model).to(device)
    if cuda:
        network = network.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=cuda)
    data_generator = torch.Generator().manual_seed(config.seed)
    device_generator = torch.Generator(device).manual_seed(config.seed + 1)

    def source(n: int, generator: torch.Generator) -> ProceduralBatch:
        return sample_batch(config.data, n, generator, device)

    val_batch = source(config.val_size, torch.Generator().manual_seed(config.seed + 10_000))
    val_images, val_labels = val_batch.images, render_labels(val_batch)
    feed = RenderFeed(config, source, data_generator, device_generator)
    feed.fill()
    budget, lr_schedule = Budget(config.minutes, config.max_steps, started), config.lr_schedule
    print(f"probe: {parameter_count(network) / 1e6:.2f}M parameters, batch {config.batch_size}, device {device}, "
          f"ready after {budget.elapsed():.1f} s", flush=True)
    step, final_loss = 0, float("nan")
    loss_sum, loss_count = torch.zeros((), device=device), 0
    validation = ProbeValidation(0, *[float("nan")] * 5)
    last_time, last_step = time.monotonic(), 0

    def evaluate_and_save(record: dict[str, Any]) -> None:
        nonlocal validation
        validation = validate(network, val_images, val_labels)
        save_probe(network, weights_path)
        record.update({f"val_{k}": v for k, v in vars(validation).items() if k != "count"})

    try:
        with metrics_path.open("w") as metrics:
            while (fraction := budget.fraction(step)) < 1.0:
                images, labels = feed.next_batch(step)
                images = augment(images, config, device_generator)
                if cuda:
                    images = images.contiguous(memory_format=torch.channels_last)
                for group in optimizer.param_groups:
                    group["lr"] = lr_schedule.learning_rate(config.lr, step, fraction)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda and config.mixed_precision):
                    logits = network(images)
                loss = probe_loss(logits, labels, config.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach()
                loss_count += 1
                step += 1
                done = budget.fraction(step) >= 1.0
                if step % config.log_every == 0 or step % config.eval_every == 0 or done:
                    final_loss = (loss_sum / loss_count).item()
                    loss_sum.zero_()
                    loss_count = 0
                    now = time.monotonic()
                    rate = (step - last_step) / max(now - last_time, 1e-9)
                    last_time, last_step = now, step
                    record = {"step": step, "loss": final_loss, "it_per_s": rate,
                              "images_per_s": rate * config.batch_size, "lr": optimizer.param_groups[0]["lr"],
                              "elapsed_s": now - started}
                    line = f"step {step:6d}  loss {final_loss:.4f}  {rate:6.2f} it/s  {record['elapsed_s']:6.0f} s"
                    if step % config.eval_every == 0 or done:
                        evaluate_and_save(record)
                        v = validation
                        line += (f"  val object {v.object_accuracy:.3f} colour {v.colour_accuracy:.3f}"
                                 f" view {v.view_accuracy:.3f} ({v.view_accuracy_identifiable:.3f} asymmetric)")
                    metrics.write(json.dumps(record) + "\n")
                    metrics.flush()
                    print(line, flush=True)
                    if progress is not None:
                        progress(record)
    except KeyboardInterrupt:
        print("interrupted: writing the weights", flush=True)
        save_probe(network, weights_path)
        raise
    if validation.count == 0:  # the budget ran out before the first step
        validation = validate(network, val_images, val_labels)
        save_probe(network, weights_path)
    return ProbeTrainResult(step, budget.elapsed(), final_loss, validation, weights_path, metrics_path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the probe (object, colour, view) on procedural renders.")
    parser.add_argument("--out", required=True, type=Path, help="output folder (probe.safetensors, metrics.jsonl)")
    parser.add_argument("--minutes", type=float, default=3.0, help="wall-clock budget, setup included (default 3)")
    parser.add_argument("--steps", type=int, default=None, help="step budget (default: none)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--pool-size", type=int, default=None, help="renders kept on the device (0: fresh batches)")
    parser.add_argument("--val-size", type=int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {"minutes": args.minutes, "max_steps": args.steps, "seed": args.seed}
    for name in ("batch_size", "pool_size", "val_size"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    config = replace(ProbeConfig(), **overrides)
    if config.pool_size and config.pool_size < config.batch_size:
        config = replace(config, pool_size=config.batch_size, pool_refresh=min(config.pool_refresh, config.batch_size))
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `timeout` stops with SIGTERM: save as on Ctrl-C
    result = train_probe(config, args.out, args.device)
    print(f"to ship it: cp {result.weights_path} {SHIPPED_PROBE}", flush=True)
    print(json.dumps({"steps": result.steps, "seconds": round(result.seconds, 1), "final_loss": result.final_loss,
                      **{k: v for k, v in vars(result.validation).items()}, "weights": str(result.weights_path)}),
          flush=True)


if __name__ == "__main__":
    main()
