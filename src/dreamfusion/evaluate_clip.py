"""CLIP R-Precision of a run, as in DreamFusion (Poole et al. 2022, section 5).

The object is rendered from ``views`` azimuths evenly spaced around it at 30 degrees elevation, once in colour
and once textureless ("geo": white albedo under the point light, so only the shape can match the caption).
For every view, CLIP ranks all captions of a caption set by cosine similarity to the image; R-Precision (R = 1)
is the fraction of views whose top caption is the run's own prompt.

Colour renders use the "albedo" shading by default (the object's colours with no lighting, the closest render
to "textured"); ``color_shading="lambertian"`` evaluates the lit renders instead. Both are reported under the
name in ``ClipEvalConfig.color_shading``.

CLIP is loaded from a local transformers-format folder only (``local_files_only=True``; nothing is downloaded).
Images are preprocessed here with torch (shortest side resized to the model's input size with bicubic
antialiasing, centre crop, normalization with the mean/std of the folder's preprocessor_config.json), the way
CLIPImageProcessor does it, without torchvision.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from jaxtyping import Float, Int, UInt8
from torch import Tensor

from dreamfusion.errors import DreamfusionError
from dreamfusion.files import write_text_atomic

if TYPE_CHECKING:
    from dreamfusion.cameras import CameraBatch
    from dreamfusion.renderer import RenderOutput
    from dreamfusion.scene import Scene

FETCH_HINT = "huggingface-cli download openai/clip-vit-base-patch32 --local-dir DIR"
# OpenAI CLIP's normalization, for folders without a preprocessor_config.json.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipEvalError(DreamfusionError, RuntimeError):
    """A missing or unusable CLIP folder or caption file; the message (one line) is for the user."""


@dataclass(frozen=True)
class ClipEvalConfig:
    views: int = 16
    """Azimuths evenly spaced around the object."""
    elevation: float = 30.0
    """Degrees (the paper's 30)."""
    resolution: int = 128
    """Rendered side in pixels; the renders are resized to CLIP's input size."""
    distance: float | None = None
    """Camera distance; None uses the run's turntable distance."""
    color_shading: Literal["albedo", "lambertian"] = "albedo"
    batch_size: int = 16
    """Images per CLIP forward pass."""

    def __post_init__(self) -> None:
        if self.views <= 0 or self.resolution <= 0 or self.batch_size <= 0:
            raise ValueError("clip eval views, resolution and batch_size must be positive")
        if self.distance is not None and self.distance <= 0:
            raise ValueError("clip eval distance must be positive")
        if self.color_shading not in ("albedo", "lambertian"):
            raise ValueError(f"clip eval color_shading must be albedo or lambertian, got {self.color_shading!r}")


@dataclass
class RPrecision:
    """The ranking of the captions for each view."""

    precision: float
    """Fraction of views whose top-ranked caption is the true one (R-Precision with R = 1), in [0, 1]."""
    true_ranks: list[int]
    """Rank of the true caption in each view, 1 = best (ties counted against it)."""
    rankings: list[list[int]]
    """Per view, the caption indices from most to least similar (a permutation of range(captions))."""


@dataclass
class ModeResult:
    mode: str
    r_precision: float
    true_ranks: list[int]
    top_captions: list[str]
    """The best caption of each view."""


@dataclass
class ClipEvalResult:
    prompt: str
    clip: str
    num_captions: int
    views: int
    elevation: float
    resolution: int
    modes: dict[str, ModeResult] = field(default_factory=dict)

    @property
    def summary(self) -> dict[str, float]:
        return {name: result.r_precision for name, result in self.modes.items()}

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "r_precision": self.summary}, indent=2)


def r_precision(
    image_embeddings: Float[Tensor, "V D"], caption_embeddings: Float[Tensor, "C D"], true_index: int
) -> RPrecision:
    """Rank the captions for each image by cosine similarity; precision = share of images ranking ``true_index`` first.

    Ties with the true caption count against it (a caption set of identical embeddings scores 0, not 1).
    """
    if not 0 <= true_index < caption_embeddings.shape[0]:
        raise ValueError(f"true_index {true_index} outside the {caption_embeddings.shape[0]} captions")
    images = torch.nn.functional.normalize(image_embeddings.float(), dim=-1)
    captions = torch.nn.functional.normalize(caption_embeddings.float(), dim=-1)
    similarity = images @ captions.T  # V C
    true_similarity = similarity[:, true_index : true_index + 1]
    others = torch.ones_like(similarity, dtype=torch.bool)
    others[:, true_index] = False
    # 1 + captions at least as similar as the true one (other than itself).
    true_ranks = 1 + ((similarity >= true_similarity) & others).sum(dim=1)
    # The stable sort puts the true caption after the ties, matching true_ranks.
    rankings = torch.stack([_rank_row(row, true_index) for row in similarity])
    precision = (true_ranks == 1).float().mean().item()
    return RPrecision(precision=precision, true_ranks=true_ranks.tolist(), rankings=rankings.tolist())


def _rank_row(row: Float[Tensor, " C"], true_index: int) -> Int[Tensor, " C"]:
    # Sort by descending similarity; among equal similarities the true caption goes last.
    tie_break = torch.zeros_like(row)
    tie_break[true_index] = 1
    keys = np.lexsort((tie_break.numpy(), -row.numpy()))
    return torch.from_numpy(keys)


def default_captions() -> list[str]:
    text = resources.files("dreamfusion").joinpath("assets/captions.txt").read_text(encoding="utf-8")
    return _parse_captions(text)


def _parse_captions(text: str) -> list[str]:
    captions = [" ".join(line.split()) for line in text.splitlines()]
    return list(dict.fromkeys(caption for caption in captions if caption and not caption.startswith("#")))


def read_captions(path: Path | None) -> list[str]:
    """Captions, one per line (blank lines and # comments skipped, duplicates dropped); None: the built-in set."""
    if path is None:
        return default_captions()
    try:
        captions = _parse_captions(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise ClipEvalError(f"cannot read captions from {path}: {getattr(error, 'strerror', None) or error}") from None
    if len(captions) < 2:
        raise ClipEvalError(f"{path} has {len(captions)} caption(s); R-Precision needs at least 2 to rank")
    return captions


def caption_set(prompt: str, captions: list[str]) -> tuple[list[str], int]:
    """The captions with the prompt added (at the end) if absent; returns them and the prompt's index."""
    prompt = " ".join(prompt.split())
    lowered = [caption.lower() for caption in captions]
    if prompt.lower() in lowered:
        return captions, lowered.index(prompt.lower())
    return [*captions, prompt], len(captions)


@dataclass
class ClipModel:
    """A CLIP model, its tokenizer and our image preprocessing."""

    model: torch.nn.Module
    tokenizer: object
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    device: torch.device
    name: str

    def preprocess(self, images: UInt8[np.ndarray, "B H W 3"] | Float[Tensor, "B H W 3"]) -> Float[Tensor, "B 3 S S"]:
        """Resize the shortest side to image_size (bicubic, antialiased), centre crop, normalize."""
        pixels = torch.as_tensor(images)
        pixels = pixels.float() / 255 if pixels.dtype == torch.uint8 else pixels.float()
        pixels = pixels.permute(0, 3, 1, 2).to(self.device)
        height, width = pixels.shape[-2:]
        scale = self.image_size / min(height, width)
        size = (max(self.image_size, round(height * scale)), max(self.image_size, round(width * scale)))
        pixels = torch.nn.functional.interpolate(pixels, size=size, mode="bicubic", antialias=True, align_corners=False)
        top, left = (size[0] - self.image_size) // 2, (size[1] - self.image_size) // 2
        pixels = pixels[..., top : top + self.image_size, left : left + self.image_size].clamp(0, 1)
        mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1)
        return (pixels - mean) / std

    @torch.no_grad()
    def embed_images(self, images, batch_size: int = 16) -> Float[Tensor, "B D"]:
        parts = [
            _features(self.model.get_image_features(pixel_values=self.preprocess(images[start : start + batch_size])))
            for start in range(0, len(images), batch_size)
        ]
        return torch.nn.functional.normalize(torch.cat(parts).float(), dim=-1).cpu()

    @torch.no_grad()
    def embed_texts(self, texts: list[str], batch_size: int = 64) -> Float[Tensor, "C D"]:
        parts = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(texts[start : start + batch_size], padding=True, truncation=True, return_tensors="pt")  # type: ignore[operator]
            tokens = {key: value.to(self.device) for key, value in tokens.items() if key in ("input_ids", "attention_mask")}
            parts.append(_features(self.model.get_text_features(**tokens)))
        return torch.nn.functional.normalize(torch.cat(parts).float(), dim=-1).cpu()


def _features(output) -> Tensor:
    """get_*_features returns a tensor in transformers 4 and an output with pooler_output in 5."""
    if isinstance(output, Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if pooled is None:
        raise ClipEvalError("this transformers version returns CLIP features in an unknown form")
    return pooled


def load_clip(directory: Path, device: torch.device | str = "cpu") -> ClipModel:
    """CLIPModel and tokenizer from a local transformers folder (never downloads)."""
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise ClipEvalError(f"no CLIP model in {directory} (config.json missing); fetch one with: {FETCH_HINT}")
    try:
        from transformers import AutoTokenizer, CLIPModel
    except ImportError:
        raise ClipEvalError("CLIP evaluation needs transformers: pip install transformers==5.24.0") from None
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no "Loading weights" bar in the CLI's output
    except ImportError:
        pass
    try:
        model = CLIPModel.from_pretrained(directory, local_files_only=True).to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ClipEvalError(f"cannot load CLIP from {directory} ({first}); fetch one with: {FETCH_HINT}") from None
    image_size = int(model.config.vision_config.image_size)
    mean, std = CLIP_MEAN, CLIP_STD
    preprocessor = directory / "preprocessor_config.json"
    if preprocessor.is_file():
        try:
            settings = json.loads(preprocessor.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ClipEvalError(f"cannot read {preprocessor}: {error}") from None
        mean = tuple(settings.get("image_mean", mean))  # type: ignore[assignment]
        std = tuple(settings.get("image_std", std))  # type: ignore[assignment]
        crop = settings.get("crop_size", image_size)
        image_size = int(crop.get("height", image_size) if isinstance(crop, dict) else crop)
    return ClipModel(model, tokenizer, image_size, mean, std, torch.device(device), directory.name)  # type: ignore[arg-type]


def render_views(scene: Scene, config: ClipEvalConfig, distance: float) -> dict[str, UInt8[np.ndarray, "V H W 3"]]:
    """The colour and textureless ("geo") renders of the evaluation orbit."""
    from dreamfusion.cameras import TurntableConfig, turntable_cameras
    from dreamfusion.scene import to_bytes

    cameras = turntable_cameras(
        TurntableConfig(frames=config.views, elevation=config.elevation, distance=distance, resolution=config.resolution)
    )

    def colour_bytes(out: RenderOutput, part: CameraBatch) -> UInt8[Tensor, "b h w 3"]:
        return to_bytes(out.rgb)

    return {
        config.color_shading: scene.render_views(cameras, colour_bytes, mode=config.color_shading).numpy(),
        "geo": scene.render_views(cameras, colour_bytes, mode="textureless").numpy(),
    }


def evaluate_views(
    clip: ClipModel, renders: dict[str, np.ndarray], prompt: str, captions: list[str], batch_size: int = 16
) -> dict[str, ModeResult]:
    captions, true_index = caption_set(prompt, captions)
    text = clip.embed_texts(captions)
    results = {}
    for mode, images in renders.items():
        ranking = r_precision(clip.embed_images(images, batch_size), text, true_index)
        results[mode] = ModeResult(
            mode=mode,
            r_precision=ranking.precision,
            true_ranks=ranking.true_ranks,
            top_captions=[captions[order[0]] for order in ranking.rankings],
        )
    return results


def evaluate_run_clip(
    run_dir: Path,
    clip_dir: Path,
    captions_file: Path | None = None,
    config: ClipEvalConfig = ClipEvalConfig(),
    device: str = "auto",
    out: Path | None = None,
) -> ClipEvalResult:
    """CLIP R-Precision of a run, written to ``out`` (default RUN_DIR/eval_clip.json) as JSON.

    Raises RunError for a directory that is not a run and ClipEvalError for the CLIP folder or captions.
    """
    from dreamfusion.memory import check_size
    from dreamfusion.run import lock_for_writing

    captions = read_captions(captions_file)  # cheap checks before the slow loads
    path = Path(out) if out is not None else Path(run_dir) / "eval_clip.json"
    into_run = Path(run_dir).is_dir() and path.parent.resolve() == Path(run_dir).resolve()
    with lock_for_writing(Path(run_dir)) if into_run else contextlib.nullcontext():
        check_size("--resolution", config.resolution, lambda side: render_bytes(config.views, side), "cpu")
        check_size("--views", config.views, lambda views: render_bytes(views, config.resolution), "cpu")
        result = _evaluate(Path(run_dir), clip_dir, captions, config, device)
        write_text_atomic(path, result.to_json() + "\n")
    return result


def render_bytes(views: int, resolution: int) -> float:
    """Memory the evaluation renders hold at once, a lower bound: two shading modes of float32 RGB images."""
    return 2.0 * views * float(resolution) ** 2 * 3 * 4


def _evaluate(run_dir: Path, clip_dir: Path, captions: list[str], config: ClipEvalConfig, device: str) -> ClipEvalResult:
    from dreamfusion.run import load_scene

    run_config, scene = load_scene(run_dir, device)
    clip = load_clip(clip_dir, next(scene.field.parameters()).device)
    distance = config.distance if config.distance is not None else run_config.turntable.distance
    renders = render_views(scene, config, distance)
    captions_with_prompt, _ = caption_set(run_config.prompt, captions)
    result = ClipEvalResult(
        prompt=run_config.prompt,
        clip=str(clip_dir),
        num_captions=len(captions_with_prompt),
        views=config.views,
        elevation=config.elevation,
        resolution=config.resolution,
        modes=evaluate_views(clip, renders, run_config.prompt, captions, config.batch_size),
    )
    return result
