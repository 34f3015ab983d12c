"""Captioned training images of the procedural objects, for the embedded prior and the probe classifier.

Every random choice (pair, camera, shading mode, background, colour jitter) is drawn from the caller's
CPU generator in a fixed order, so a seed gives the same batch on any device. Images are rendered the way
the trainer renders the NeRF: the same camera sampler, view labels, shading formula and mode
probabilities (albedo / lambertian / textureless after the albedo warm-up), over a random solid or smooth
environment background.

Captions and labels name the object's colour for every shading mode, textureless included (the labels
say what was drawn); the prior's training decides which captions keep the colour word
(``TrainPriorConfig.colourless_shading``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from dreamfusion.cameras import VIEW_LABELS, CameraBatch, CameraConfig, sample_cameras
from dreamfusion.procedural.objects import COLOURS, HELD_OUT_PAIRS, OBJECT_KINDS, caption
from dreamfusion.procedural.render import Backgrounds, TraceConfig, render_objects
from dreamfusion.shading import SHADING_MODES, ShadingConfig, ShadingMode, sample_shading_mode

HeldOut = Literal["exclude", "only", "include"]
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
"""Colour index order of ``ProceduralBatch.colour_ids``."""


@dataclass
class ProceduralBatch:
    images: Float[Tensor, "B 3 H W"]
    """rgb in [0, 1], on the requested device."""
    object_ids: Int[Tensor, " B"]
    """Index into OBJECT_KINDS."""
    colour_ids: Int[Tensor, " B"]
    """Index into list(COLOURS)."""
    view_ids: Int[Tensor, " B"]
    """Index into cameras.VIEW_LABELS."""
    shading_ids: Int[Tensor, " B"]
    """Index into shading.SHADING_MODES."""
    captions: list[str]
    """E.g. "a red chair, front view"; the view is the rendering camera's label."""
    cameras: CameraBatch
    """The rendering cameras (angles, lights), on the requested device."""


@dataclass(frozen=True)
class ProceduralDataConfig:
    resolution: int = 64
    """Output image side; it replaces ``camera.resolution``."""
    supersample: int = 2
    """Render at this multiple of the resolution and average-pool: soft, anti-aliased edges."""
    held_out: HeldOut = "exclude"
    """"exclude": training pairs only; "only": held-out pairs only (evaluation); "include": all pairs."""
    camera: CameraConfig = field(default_factory=CameraConfig)
    shading: ShadingConfig = field(default_factory=ShadingConfig)
    """Shading modes are drawn as the trainer draws them after the albedo warm-up (by default albedo 0.25,
    lambertian 0.375, textureless 0.375); ambient and diffuse light come from here too."""
    environment_probability: float = 0.5
    """Probability of a smooth random environment background instead of a random solid colour."""
    colour_jitter: float = 0.04
    """Per-image uniform noise on each albedo channel, in [-jitter, jitter]."""
    trace: TraceConfig = field(default_factory=TraceConfig)

    def __post_init__(self) -> None:
        if self.resolution <= 0 or self.supersample <= 0:
            raise ValueError("procedural resolution and supersample must be positive")
        if self.held_out not in ("exclude", "only", "include"):
            raise ValueError(f"held_out must be 'exclude', 'only' or 'include', got {self.held_out!r}")
        if not 0.0 <= self.environment_probability <= 1.0 or self.colour_jitter < 0.0:
            raise ValueError("environment_probability must lie in [0, 1] and colour_jitter be >= 0")


def allowed_pairs(held_out: HeldOut) -> tuple[tuple[int, int], ...]:
    """(object_id, colour_id) pairs a batch may contain, in a fixed order."""
    pairs = []
    for o, kind in enumerate(OBJECT_KINDS):
        for c, colour in enumerate(COLOUR_NAMES):
            excluded = (colour, kind) in HELD_OUT_PAIRS
            if held_out == "include" or (held_out == "only") == excluded:
                pairs.append((o, c))
    return tuple(pairs)


def sample_pairs(
    held_out: HeldOut, batch_size: int, generator: torch.Generator
) -> tuple[Int[Tensor, " B"], Int[Tensor, " B"]]:
    """Object and colour ids drawn uniformly among the allowed pairs (cheap: no rendering)."""
    pairs = torch.tensor(allowed_pairs(held_out))
    chosen = pairs[torch.randint(len(pairs), (batch_size,), generator=generator)]
    return chosen[:, 0], chosen[:, 1]


def sample_batch(
    config: ProceduralDataConfig,
    batch_size: int,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
) -> ProceduralBatch:
    """A batch of random captioned renders; all randomness from the CPU ``generator``."""
    if generator.device.type != "cpu":
        raise ValueError("sample_batch draws from a CPU generator")
    object_ids, colour_ids = sample_pairs(config.held_out, batch_size, generator)
    cameras = sample_cameras(replace(config.camera, resolution=config.resolution), batch_size, generator)
    past_warmup = config.shading.albedo_warmup_steps
    modes = [sample_shading_mode(config.shading, past_warmup, generator) for _ in range(batch_size)]
    backgrounds = Backgrounds.sample(batch_size, config.environment_probability, generator)
    base = torch.tensor([COLOURS[COLOUR_NAMES[c]] for c in colour_ids.tolist()]).view(batch_size, 3)
    jitter = (2.0 * torch.rand(batch_size, 3, generator=generator) - 1.0) * config.colour_jitter
    body = (base + jitter).clamp(0.0, 1.0)

    cameras = cameras.to(device)
    images, _ = render_objects(
        object_ids.to(device),
        body,
        cameras,
        modes,
        backgrounds,
        supersample=config.supersample,
        ambient=config.shading.ambient,
        diffuse=config.shading.diffuse,
        config=config.trace,
    )
    captions = [
        caption(COLOUR_NAMES[c], OBJECT_KINDS[o], label)
        for o, c, label in zip(object_ids.tolist(), colour_ids.tolist(), cameras.view_labels, strict=True)
    ]
    return ProceduralBatch(
        images=images,
        object_ids=object_ids.to(device),
        colour_ids=colour_ids.to(device),
        view_ids=torch.tensor([VIEW_LABELS.index(v) for v in cameras.view_labels], device=device),
        shading_ids=torch.tensor([SHADING_MODES.index(m) for m in modes], device=device),
        captions=captions,
        cameras=cameras,
    )


def render_views(
    kind: str,
    colour: str | tuple[float, float, float],
    cameras: CameraBatch,
    mode: ShadingMode = "albedo",
    background: Literal["white"] | tuple[float, float, float] = "white",
    device: torch.device | str | None = None,
    supersample: int = 2,
    shading: ShadingConfig = ShadingConfig(),
    trace: TraceConfig = TraceConfig(),
) -> Float[Tensor, "B 3 H W"]:
    """Deterministic renders of one object (colour name or rgb) from given cameras, for evaluation and tests."""
    device = cameras.rays_o.device if device is None else torch.device(device)
    batch = cameras.batch_size
    rgb = COLOURS[colour] if isinstance(colour, str) else colour
    bg = (1.0, 1.0, 1.0) if background == "white" else background
    images, _ = render_objects(
        torch.full((batch,), OBJECT_KINDS.index(kind), dtype=torch.long),
        torch.tensor(rgb).expand(batch, 3),
        cameras.to(device),
        [mode] * batch,
        Backgrounds.solid(torch.tensor(bg, dtype=torch.float32).expand(batch, 3).contiguous()),
        supersample=supersample,
        ambient=shading.ambient,
        diffuse=shading.diffuse,
        config=trace,
    )
    return images
