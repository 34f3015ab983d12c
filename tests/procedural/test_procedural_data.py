"""The renderer and the captioned data: determinism, labels, held-out pairs, and what the renders show."""

from __future__ import annotations

import pytest
import torch

from dreamfusion.cameras import VIEW_LABELS, cameras_from_angles, view_label
from dreamfusion.procedural import (
    COLOUR_NAMES,
    COLOURS,
    HELD_OUT_PAIRS,
    OBJECT_KINDS,
    Backgrounds,
    ProceduralDataConfig,
    TraceConfig,
    allowed_pairs,
    caption,
    render_objects,
    render_views,
    sample_batch,
    sample_pairs,
)
from dreamfusion.shading import SHADING_MODES

TRACE = TraceConfig(grid_resolution=64)  # coarser bake than the default, for speed
SMALL = ProceduralDataConfig(resolution=24, supersample=1, trace=TRACE)
ASYMMETRIC = ("chair", "house", "mug", "snowman", "car", "lamp")
MAGENTA = (1.0, 0.0, 1.0)  # no detail has this colour


def _views(resolution: int) -> object:
    """Front, side, back at elevation 15 and distance 1.25."""
    return cameras_from_angles(
        torch.full((3,), 15.0), torch.tensor([0.0, 90.0, 180.0]), torch.full((3,), 1.25), torch.ones(3), resolution
    )


def _render(kind: str, rgb: tuple[float, float, float], resolution: int = 48, supersample: int = 1) -> tuple:
    cameras = _views(resolution)
    return render_objects(
        torch.full((3,), OBJECT_KINDS.index(kind)),
        torch.tensor(rgb).expand(3, 3),
        cameras,
        ["albedo"] * 3,
        Backgrounds.white(3),
        supersample=supersample,
        config=TRACE,
    )


def test_same_seed_same_batch_other_seed_other_batch() -> None:
    first = sample_batch(SMALL, 6, torch.Generator().manual_seed(0))
    again = sample_batch(SMALL, 6, torch.Generator().manual_seed(0))
    other = sample_batch(SMALL, 6, torch.Generator().manual_seed(1))
    assert first.images.shape == (6, 3, 24, 24) and first.images.dtype == torch.float32
    assert 0.0 <= first.images.min() and first.images.max() <= 1.0
    assert torch.equal(first.images, again.images) and first.captions == again.captions
    for name in ("object_ids", "colour_ids", "view_ids", "shading_ids"):
        assert torch.equal(getattr(first, name), getattr(again, name))
    assert not torch.equal(first.images, other.images) and first.captions != other.captions


def test_captions_and_ids_agree_with_the_cameras() -> None:
    batch = sample_batch(SMALL, 12, torch.Generator().manual_seed(3))
    cams = batch.cameras
    for i, text in enumerate(batch.captions):
        label = view_label(float(cams.elevation[i]), float(cams.azimuth[i]))
        assert VIEW_LABELS[int(batch.view_ids[i])] == label
        kind, colour = OBJECT_KINDS[int(batch.object_ids[i])], COLOUR_NAMES[int(batch.colour_ids[i])]
        assert text == caption(colour, kind, label)
        assert (colour, kind) not in HELD_OUT_PAIRS
    assert set(batch.shading_ids.tolist()) <= set(range(len(SHADING_MODES)))
    assert COLOUR_NAMES == tuple(COLOURS)


def test_held_out_pairs() -> None:
    gen = torch.Generator().manual_seed(0)
    objects, colours = sample_pairs("exclude", 2000, gen)
    pairs = {(COLOUR_NAMES[c], OBJECT_KINDS[o]) for o, c in zip(objects.tolist(), colours.tolist())}
    assert not pairs & set(HELD_OUT_PAIRS)
    assert len(pairs) == len(allowed_pairs("exclude")) == len(COLOURS) * len(OBJECT_KINDS) - 10
    objects, colours = sample_pairs("only", 500, gen)
    pairs = {(COLOUR_NAMES[c], OBJECT_KINDS[o]) for o, c in zip(objects.tolist(), colours.tolist())}
    assert pairs == set(HELD_OUT_PAIRS)
    assert len(allowed_pairs("include")) == len(COLOURS) * len(OBJECT_KINDS)
    batch = sample_batch(ProceduralDataConfig(resolution=8, supersample=1, held_out="only", trace=TRACE), 5, gen)
    for o, c in zip(batch.object_ids.tolist(), batch.colour_ids.tolist()):
        assert (COLOUR_NAMES[c], OBJECT_KINDS[o]) in HELD_OUT_PAIRS


def test_shading_mode_frequencies_follow_the_trainer() -> None:
    batch = sample_batch(ProceduralDataConfig(resolution=4, supersample=1, trace=TRACE), 400, torch.Generator())
    freq = torch.bincount(batch.shading_ids, minlength=3).float() / 400
    assert torch.allclose(freq, torch.tensor([0.25, 0.375, 0.375]), atol=0.08)


@pytest.mark.parametrize("kind", OBJECT_KINDS)
def test_every_kind_renders_with_its_body_colour_dominant(kind: str) -> None:
    rgb, alpha = _render(kind, MAGENTA)
    foreground = alpha[:, 0] > 0.5
    fraction = foreground.float().mean((1, 2))
    assert (fraction > 0.03).all() and (fraction < 0.8).all(), fraction
    body = ((rgb - torch.tensor(MAGENTA)[:, None, None]).abs().amax(1) < 0.05) & foreground
    assert (body.sum((1, 2)) > 0.7 * foreground.sum((1, 2))).all()


def test_front_side_and_back_differ_for_asymmetric_kinds() -> None:
    sphere, _ = _render("sphere", COLOURS["blue"], resolution=32, supersample=2)
    assert (sphere[0] - sphere[2]).abs().mean() < 5e-4 and (sphere[0] - sphere[1]).abs().mean() < 5e-4
    for kind in ASYMMETRIC:
        rgb, _ = _render(kind, COLOURS["blue"], resolution=32, supersample=2)
        for a, b in ((0, 1), (0, 2), (1, 2)):
            assert (rgb[a] - rgb[b]).abs().mean() > 3e-3, (kind, a, b)


def test_textureless_ignores_the_colour_and_lambertian_darkens() -> None:
    cameras = _views(16)
    red = render_views("cube", "red", cameras, mode="textureless", trace=TRACE)
    blue = render_views("cube", "blue", cameras, mode="textureless", trace=TRACE)
    assert torch.equal(red, blue)
    albedo = render_views("cube", "red", cameras, mode="albedo", trace=TRACE)
    lit = render_views("cube", "red", cameras, mode="lambertian", trace=TRACE)
    assert (lit <= albedo + 1e-5).all() and (lit < albedo - 0.01).any()


def test_backgrounds_and_soft_edges() -> None:
    gen = torch.Generator().manual_seed(0)
    backgrounds = Backgrounds.sample(64, 0.5, gen)
    directions = torch.nn.functional.normalize(torch.randn(64, 8, 8, 3, generator=gen), dim=-1)
    colours = backgrounds.colour(directions)
    varying = colours.flatten(1, 2).std(1).amax(-1) > 1e-4
    assert 10 < varying.sum() < 54  # about half environments, half solid
    assert 0.0 <= colours.min() and colours.max() <= 1.0
    _, alpha = _render("sphere", COLOURS["red"], resolution=32, supersample=2)
    partial = (alpha > 0.1) & (alpha < 0.9)
    assert partial.any() and torch.equal(alpha[:, :, 0, 0], torch.zeros(3, 1))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    cpu = sample_batch(SMALL, 8, torch.Generator().manual_seed(5))
    cuda = sample_batch(SMALL, 8, torch.Generator().manual_seed(5), device="cuda")
    assert cpu.captions == cuda.captions and cuda.images.device.type == "cuda"
    assert (cpu.images - cuda.images.cpu()).abs().mean() < 1e-2
