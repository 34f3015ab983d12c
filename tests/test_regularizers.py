"""The geometry regularizers on renders built by hand: the orientation loss and the opacity loss against
values worked out on paper, and which inputs their gradients reach."""

from __future__ import annotations

import math

import pytest
import torch

from dreamfusion.regularizers import loss_opacity, loss_orientation
from dreamfusion.renderer import RenderOutput


def _render(
    weights: torch.Tensor,
    sample_normals: torch.Tensor | None,
    ray_directions: torch.Tensor,
    opacity: torch.Tensor | None = None,
) -> RenderOutput:
    """A RenderOutput of one image of 1 x R pixels whose per-pixel maps are zeros (the losses never read them),
    except ``opacity`` when given."""
    batch, rays = ray_directions.shape[:2]
    return RenderOutput(
        rgb=torch.zeros(batch, 1, rays, 3),
        opacity=torch.zeros(batch, 1, rays, 1) if opacity is None else opacity,
        depth=torch.zeros(batch, 1, rays, 1),
        normals=torch.zeros(batch, 1, rays, 3),
        weights=weights,
        sample_normals=sample_normals,
        ray_directions=ray_directions,
    )


def _two_rays() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ray 0 looks down -z, ray 1 along +x; two samples each, one facing the camera and one facing away.

    Facing-away terms max(0, n . d)^2: ray 0's second normal (0, 0.6, -0.8) gives 0.8^2 = 0.64, ray 1's first
    normal (1, 0, 0) gives 1; the others face the camera and give 0.
    """
    directions = torch.tensor([[[0.0, 0.0, -1.0], [1.0, 0.0, 0.0]]])
    normals = torch.tensor([[[[0.0, 0.0, 1.0], [0.0, 0.6, -0.8]], [[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]]]])
    weights = torch.tensor([[[0.5, 0.25], [0.2, 0.7]]])
    return weights, normals, directions


def test_orientation_loss_matches_the_hand_computed_sum() -> None:
    """Ray 0: 0.5 * 0 + 0.25 * 0.64 = 0.16; ray 1: 0.2 * 1 + 0.7 * 0 = 0.2; mean over rays 0.18."""
    weights, normals, directions = _two_rays()
    assert loss_orientation(_render(weights, normals, directions)).item() == pytest.approx(0.18, abs=1e-7)


def test_orientation_loss_is_zero_when_every_normal_faces_the_camera() -> None:
    weights, _, directions = _two_rays()
    facing = -directions[:, :, None, :].expand(1, 2, 2, 3).clone()
    assert loss_orientation(_render(weights, facing, directions)).item() == 0.0


def test_orientation_loss_is_a_mean_over_images_and_rays() -> None:
    """Two copies of the batch, the second with doubled weights: (0.18 + 0.36) / 2."""
    weights, normals, directions = _two_rays()
    render = _render(torch.cat((weights, 2 * weights)), normals.repeat(2, 1, 1, 1), directions.repeat(2, 1, 1))
    assert loss_orientation(render).item() == pytest.approx(0.27, abs=1e-7)


def test_orientation_loss_moves_normals_but_not_weights() -> None:
    """The weights are stop-gradient; d/dn of w (n . d)^2 / R is 2 w (n . d) d / R for a normal facing away."""
    weights, normals, directions = _two_rays()
    weights.requires_grad_(True)
    normals.requires_grad_(True)
    loss_orientation(_render(weights, normals, directions)).backward()
    assert weights.grad is None
    expected = torch.zeros_like(normals)
    expected[0, 0, 1] = 2 * 0.25 * 0.8 * torch.tensor([0.0, 0.0, -1.0]) / 2
    expected[0, 1, 0] = 2 * 0.2 * 1.0 * torch.tensor([1.0, 0.0, 0.0]) / 2
    torch.testing.assert_close(normals.grad, expected)


def test_orientation_loss_refuses_a_render_without_normals() -> None:
    weights, _, directions = _two_rays()
    with pytest.raises(ValueError, match="needs a render with normals"):
        loss_orientation(_render(weights, None, directions))


def test_opacity_loss_matches_the_hand_computed_mean() -> None:
    """sqrt(o^2 + 0.01) for o = 0, 0.3, 0.4, 1: (0.1 + sqrt(0.1) + sqrt(0.17) + sqrt(1.01)) / 4."""
    weights, normals, directions = _two_rays()
    opacity = torch.tensor([0.0, 0.3, 0.4, 1.0]).view(2, 1, 2, 1)
    render = _render(weights.repeat(2, 1, 1), normals.repeat(2, 1, 1, 1), directions.repeat(2, 1, 1), opacity)
    expected = (0.1 + math.sqrt(0.1) + math.sqrt(0.17) + math.sqrt(1.01)) / 4
    assert loss_opacity(render).item() == pytest.approx(expected, abs=1e-7)


def test_opacity_loss_of_an_empty_render_is_its_floor_with_no_gradient() -> None:
    """At opacity 0 the loss is sqrt(0.01) = 0.1 and its slope o / sqrt(o^2 + 0.01) is 0: nothing pushes an
    empty ray; a full ray is pushed toward empty with slope 1 / sqrt(1.01), divided by the ray count."""
    weights, normals, directions = _two_rays()
    opacity = torch.tensor([0.0, 1.0]).view(1, 1, 2, 1).requires_grad_(True)
    loss = loss_opacity(_render(weights, normals, directions, opacity))
    loss.backward()
    assert loss.item() == pytest.approx((0.1 + math.sqrt(1.01)) / 2, abs=1e-7)
    assert opacity.grad.flatten().tolist() == pytest.approx([0.0, 1.0 / math.sqrt(1.01) / 2], abs=1e-7)
