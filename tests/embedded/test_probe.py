"""The probe classifier: network shapes and size, a tiny CPU training run, the weights file, augmentation, and
(when it ships) the trained probe on clean renders."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from dreamfusion.cameras import VIEW_LABELS, cameras_from_angles
from dreamfusion.embedded import probe as probe_module
from dreamfusion.embedded.model import parameter_count
from dreamfusion.embedded.probe import (
    SHIPPED_PROBE,
    VIEW_SYMMETRIC_KINDS,
    ProbeConfig,
    ProbeModelConfig,
    ProbeNet,
    ProbePrediction,
    augment,
    load_probe,
    probe_loss,
    save_probe,
    train_probe,
)
from dreamfusion.priors.base import PriorError
from dreamfusion.procedural import COLOUR_NAMES, OBJECT_KINDS, ProceduralDataConfig, TraceConfig, render_views

TINY_MODEL = ProbeModelConfig(widths=(8, 16, 32), head_hidden=16)
SMALL_DATA = ProceduralDataConfig(
    held_out="include", resolution=32, supersample=1, trace=TraceConfig(grid_resolution=64)
)


def test_network_shapes_and_shipped_size() -> None:
    network = ProbeNet()
    objects, colours, views = network(torch.rand(2, 3, 64, 64))
    assert objects.shape == (2, 13) and colours.shape == (2, 10) and views.shape == (2, 4)
    assert parameter_count(network) * 2 <= 4 * 2**20  # fp16 file of at most 4 MiB


def test_loss_ignores_colour_of_textureless_renders() -> None:
    logits = (torch.zeros(2, 13), torch.randn(2, 10), torch.zeros(2, 4))
    labels = torch.tensor([[0, 1, 0, 0], [3, 4, 1, 2]])  # (object, colour, view, shading): albedo, textureless
    base = probe_loss(logits, labels)
    for row, ignored in ((1, True), (0, False)):
        colours = logits[1].clone()
        colours[row] += 5.0 * torch.randn(10)
        assert torch.allclose(probe_loss((logits[0], colours, logits[2]), labels), base) == ignored
    all_textureless = labels.clone()
    all_textureless[:, 3] = 2
    assert torch.isfinite(probe_loss(logits, all_textureless))


def test_augment_keeps_shape_range_and_is_seeded() -> None:
    images = torch.rand(4, 3, 32, 32)
    config = ProbeConfig()
    first = augment(images, config, torch.Generator().manual_seed(0))
    again = augment(images, config, torch.Generator().manual_seed(0))
    assert first.shape == images.shape and torch.equal(first, again)
    assert 0.0 <= first.min() and first.max() <= 1.0 and not torch.equal(first, images)
    still = dataclasses.replace(config, shift=0.0, zoom=0.0, blur_probability=0.0, noise=0.0)
    assert torch.allclose(augment(images, still, torch.Generator().manual_seed(0)), images, atol=1e-5)


def test_tiny_training_run_writes_weights_and_metrics(tmp_path) -> None:
    config = ProbeConfig(
        model=TINY_MODEL, data=SMALL_DATA, batch_size=4, minutes=None, max_steps=3, val_size=8, pool_size=0,
        log_every=1, eval_every=2, warmup_steps=1,
    )
    records = []
    result = train_probe(config, tmp_path, "cpu", progress=records.append)
    assert result.steps == 3 and result.final_loss == result.final_loss  # not NaN
    assert result.weights_path == tmp_path / "probe.safetensors" and result.weights_path.is_file()
    lines = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3] and records[-1]["step"] == 3
    assert "val_object_accuracy" in lines[1] and "val_object_accuracy" not in lines[0]
    v = result.validation
    assert v.count == 8 and all(0.0 <= x <= 1.0 for x in (v.object_accuracy, v.view_accuracy))


def test_save_load_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    network = ProbeNet(TINY_MODEL)
    path = save_probe(network, tmp_path / "probe.safetensors")
    assert load_probe(path).network.config == TINY_MODEL
    probe = load_probe(tmp_path)  # a folder stands for its probe.safetensors
    assert probe.network.config == TINY_MODEL
    images = torch.rand(5, 3, 64, 64)
    with torch.no_grad():
        expected = [x.softmax(1) for x in network.eval()(images)]
    got = probe.classify(images)
    assert isinstance(got, ProbePrediction) and len(got) == 5
    for mine, theirs in zip((got.object_probs, got.colour_probs, got.view_probs), expected, strict=True):
        assert torch.allclose(mine, theirs, atol=2e-2)  # fp16 weights
    assert probe.classify(torch.rand(2, 3, 32, 32)).object_ids.shape == (2,)  # resized to 64 px


def test_missing_or_foreign_weights_raise_prior_error(tmp_path, monkeypatch) -> None:
    with pytest.raises(PriorError, match="python -m dreamfusion.embedded.probe"):
        load_probe(tmp_path / "nothing.safetensors")
    monkeypatch.setattr(probe_module, "SHIPPED_PROBE", tmp_path / "absent.safetensors")
    with pytest.raises(PriorError, match="probe weights not found"):
        load_probe()
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"), metadata={"format": "something-else"})
    with pytest.raises(PriorError, match="not a probe"):
        load_probe(tmp_path / "other.safetensors")


def test_config_rejects_bad_numbers() -> None:
    for change in ({"batch_size": 0}, {"minutes": None, "max_steps": None}, {"zoom": 1.0}, {"pool_size": 2}):
        with pytest.raises(ValueError):
            dataclasses.replace(ProbeConfig(), **change)
    with pytest.raises(ValueError):
        ProbeModelConfig(widths=(8, 12))


@pytest.mark.skipif(not SHIPPED_PROBE.is_file(), reason="no shipped probe (python -m dreamfusion.embedded.probe)")
def test_shipped_probe_reads_clean_renders() -> None:
    """13 objects x 2 colours x front and side views, albedo over white, as evaluate.py frames them."""
    probe = load_probe()
    cameras = cameras_from_angles(torch.full((2,), 15.0), torch.tensor([0.0, 90.0]), torch.full((2,), 1.25),
                                  torch.ones(2), 64)
    images, objects, colours = [], [], []
    for kind in OBJECT_KINDS:
        for colour in ("red", "blue"):
            images.append(render_views(kind, colour, cameras))
            objects += [OBJECT_KINDS.index(kind)] * 2
            colours += [COLOUR_NAMES.index(colour)] * 2
    prediction = probe.classify(torch.cat(images))
    views = torch.tensor([VIEW_LABELS.index("front"), VIEW_LABELS.index("side")] * (len(objects) // 2))
    identifiable = torch.tensor([OBJECT_KINDS[o] not in VIEW_SYMMETRIC_KINDS for o in objects])
    assert (prediction.object_ids == torch.tensor(objects)).float().mean() >= 0.9
    assert (prediction.colour_ids == torch.tensor(colours)).float().mean() >= 0.9
    assert (prediction.view_ids == views)[identifiable].float().mean() >= 0.85
