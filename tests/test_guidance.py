"""The guidance object: mode and scale resolved against the prior, image preparation, one SDS call per step."""

import pytest
import torch

from dreamfusion.cameras import cameras_from_angles
from dreamfusion.guidance import Guidance, GuidanceConfig
from dreamfusion.priors.analytic import AnalyticPrior, AnalyticPriorConfig
from dreamfusion.schedules import TimestepRange
from dreamfusion.sds import score_distillation

CPU = torch.device("cpu")


def _cameras(azimuths: list[float]):
    n = torch.ones(len(azimuths))
    return cameras_from_angles(n * 15, torch.tensor(azimuths), n * 1.2, n, 8)


class RecordingPrior(AnalyticPrior):
    """The analytic prior with view prompts that differ by view, counting the images each call denoises."""

    view_prompts = True

    def __init__(self) -> None:
        super().__init__(AnalyticPriorConfig(resolution=16))
        self.batches: list[int] = []

    def encode_prompt(self, prompt: str, negative_prompt: str = ""):
        embeddings = super().encode_prompt(prompt, negative_prompt)
        for i, label in enumerate(embeddings.by_view):
            embeddings.by_view[label] = embeddings.by_view[label] * (1.0 - 0.1 * i)
        return embeddings

    def predict_noise(self, noisy, timesteps, embeddings):
        self.batches.append(noisy.shape[0])
        return super().predict_noise(noisy, timesteps, embeddings)


def test_auto_takes_the_priors_mode_and_scale_and_config_overrides_them() -> None:
    prior = RecordingPrior()
    auto = Guidance(GuidanceConfig(), prior, "a ball", CPU)
    assert (auto.mode, auto.scale) == ("cfg", prior.default_guidance_scale)
    chosen = Guidance(GuidanceConfig(mode="perp_neg", guidance_scale=3.0), prior, "a ball", CPU)
    assert (chosen.mode, chosen.scale) == ("perp_neg", 3.0)


def test_cfg_call_is_score_distillation_on_the_resized_render() -> None:
    prior = RecordingPrior()
    guidance = Guidance(GuidanceConfig(guidance_scale=5.0, timesteps=TimestepRange((0.2, 0.6))), prior, "a ball", CPU)
    rgb = torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    cameras = _cameras([0.0, 180.0])
    out = guidance(rgb, cameras, False, 0.0, torch.Generator().manual_seed(4))

    images = torch.nn.functional.interpolate(rgb.permute(0, 3, 1, 2), size=(16, 16), mode="bilinear", align_corners=False)
    cond, uncond = guidance.embeddings.for_views(cameras.view_labels)
    expected = score_distillation(prior, images * 2 - 1, cond, uncond, 5.0, (0.2, 0.6), "sds", torch.Generator().manual_seed(4))
    assert torch.equal(out.gradient, expected.gradient) and torch.equal(out.timesteps, expected.timesteps)
    assert prior.batches == [4, 4]  # text and unconditional, for two views


def test_perp_neg_evaluates_only_negatives_with_weight() -> None:
    prior = RecordingPrior()
    guidance = Guidance(GuidanceConfig(mode="perp_neg"), prior, "a ball", CPU)
    rgb = torch.rand(1, 16, 16, 3, generator=torch.Generator().manual_seed(0))
    guidance(rgb, _cameras([0.0]), False, 0.0, torch.Generator().manual_seed(0))
    # A front camera: the side and back prompts are negatives, its own view is not.
    assert prior.batches == [4]
    no_negatives = Guidance(GuidanceConfig(mode="perp_neg", perp_neg_weights=(0.0, 0.0, 0.0)), prior, "a ball", CPU)
    plain = Guidance(GuidanceConfig(mode="cfg"), prior, "a ball", CPU)
    first = no_negatives(rgb, _cameras([0.0]), False, 0.0, torch.Generator().manual_seed(0))
    second = plain(rgb, _cameras([0.0]), False, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(first.gradient, second.gradient)
    assert prior.batches[1:] == [2, 2]


def test_timestep_schedule_follows_progress() -> None:
    prior = RecordingPrior()
    guidance = Guidance(GuidanceConfig(timesteps=TimestepRange((0.9, 0.9), (0.1, 0.1))), prior, "a ball", CPU)
    rgb = torch.rand(1, 16, 16, 3)
    early = guidance(rgb, _cameras([0.0]), False, 0.0, torch.Generator().manual_seed(0)).timesteps
    late = guidance(rgb, _cameras([0.0]), False, 1.0, torch.Generator().manual_seed(0)).timesteps
    assert int(early[0]) == round(0.9 * 999) and int(late[0]) == round(0.1 * 999)


def test_guidance_config_refuses_negative_numbers() -> None:
    with pytest.raises(ValueError, match="guidance_scale"):
        GuidanceConfig(guidance_scale=-1.0)
    with pytest.raises(ValueError, match="perp_neg_weights"):
        GuidanceConfig(perp_neg_weights=(1.0, -1.0, 0.0))
