"""Scene.render_views: renders of many cameras in bounded chunks of rays, assembled on the CPU."""

from __future__ import annotations

import pytest
import torch
from helpers import empty_tiny_field, tiny_config

from dreamfusion.cameras import CameraBatch, TurntableConfig, turntable_cameras
from dreamfusion.field import NeRFField
from dreamfusion.renderer import OccupancyGrid, RendererConfig, RenderOutput
from dreamfusion.scene import Scene, to_bytes
from dreamfusion.shading import Background, BackgroundConfig, ShadingConfig


def _scene(field: NeRFField) -> Scene:
    grid = OccupancyGrid.from_field(field, resolution=16)  # coarse: the default grid costs more than the renders
    return Scene(field, Background(BackgroundConfig()), RendererConfig(num_samples=16), ShadingConfig(), occupancy=grid)


def _blob_scene() -> Scene:
    torch.manual_seed(0)
    return _scene(NeRFField(tiny_config().field))


def _cameras(frames: int = 2, resolution: int = 12) -> CameraBatch:
    return turntable_cameras(TurntableConfig(frames=frames, resolution=resolution))


def _colour_and_depth(out: RenderOutput, cameras: CameraBatch) -> torch.Tensor:
    return torch.cat((out.rgb, out.depth), dim=-1)


@pytest.mark.parametrize("max_rays", [5, 30, 144 + 7])  # under a row, bands of rows, whole images
def test_chunked_views_equal_one_chunk(max_rays: int) -> None:
    scene, cameras = _blob_scene(), _cameras()
    rays_per_call: list[int] = []

    def recorded(out: RenderOutput, part: CameraBatch) -> torch.Tensor:
        rays_per_call.append(part.rays_o.shape[:3].numel())
        return _colour_and_depth(out, part)

    whole = scene.render_views(cameras, _colour_and_depth, mode="lambertian", max_rays=10**9)
    chunked = scene.render_views(cameras, recorded, mode="lambertian", max_rays=max_rays)
    assert whole.shape == (2, 12, 12, 4) and whole.device.type == "cpu" and not whole.requires_grad
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-6)
    assert sum(rays_per_call) == 2 * 12 * 12 and max(rays_per_call) <= max(max_rays, 12)  # at least a row a call


def test_zero_cameras_give_an_empty_result_of_the_image_shape() -> None:
    views = _blob_scene().render_views(_cameras().subset(slice(0, 0)), _colour_and_depth)
    assert views.shape == (0, 12, 12, 4)


def test_a_given_background_replaces_the_scenes_own() -> None:
    scene = _scene(empty_tiny_field())
    black = Background(BackgroundConfig(kind="random_solid", eval_colour=(0.0, 0.0, 0.0)))
    assert torch.equal(scene.render_views(_cameras()), torch.ones(2, 12, 12, 3))  # the default: white
    assert torch.equal(scene.render_views(_cameras(), background=black), torch.zeros(2, 12, 12, 3))


def test_to_bytes_clamps_and_rounds() -> None:
    colours = torch.tensor([-0.5, 0.0, 0.5 / 255, 0.499 / 255, 0.5, 1.0, 2.0])
    assert to_bytes(colours).tolist() == [0, 0, 1, 0, 128, 255, 255]
