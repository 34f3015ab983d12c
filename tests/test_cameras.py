import math

import pytest
import torch

from dreamfusion.cameras import (
    CameraConfig,
    TurntableConfig,
    cameras_from_angles,
    sample_cameras,
    turntable_cameras,
    view_label,
    view_suffix,
)


def test_sampled_values_stay_in_the_paper_ranges() -> None:
    config = CameraConfig()
    batch = sample_cameras(config, 512, torch.Generator().manual_seed(0))
    assert batch.elevation.min() >= -10.0 - 1e-4 and batch.elevation.max() <= 90.0 + 1e-4
    assert batch.azimuth.min() >= 0.0 and batch.azimuth.max() < 360.0
    assert batch.distance.min() >= 1.0 and batch.distance.max() <= 1.5
    focal = batch.intrinsics[:, 0, 0] / config.resolution
    assert focal.min() >= 0.7 - 1e-5 and focal.max() <= 1.35 + 1e-5
    light_distance = batch.light_position.norm(dim=-1)
    assert light_distance.min() >= 0.8 - 1e-4 and light_distance.max() <= 1.5 + 1e-4
    # Jitter moves the camera by at most 0.1 per axis from its spherical position.
    assert (batch.c2w[:, :3, 3].norm(dim=-1) - batch.distance).abs().max() <= math.sqrt(3) * 0.1 + 1e-4
    # Half the elevations are uniform in area, which puts more mass near the horizon than uniform in angle.
    assert (batch.elevation > 60).float().mean() < 0.35


def test_sampling_is_deterministic_by_seed() -> None:
    a = sample_cameras(CameraConfig(), 4, torch.Generator().manual_seed(3))
    b = sample_cameras(CameraConfig(), 4, torch.Generator().manual_seed(3))
    c = sample_cameras(CameraConfig(), 4, torch.Generator().manual_seed(4))
    assert torch.equal(a.rays_d, b.rays_d) and a.view_labels == b.view_labels
    assert not torch.equal(a.rays_d, c.rays_d)


@pytest.mark.parametrize(
    ("elevation", "azimuth", "label"),
    [
        (0, 0, "front"),
        (0, 44.9, "front"),
        (0, -44.9, "front"),
        (0, 315.1, "front"),
        (0, 45, "side"),
        (0, 90, "side"),
        (0, 135, "side"),
        (0, 135.1, "back"),
        (0, 180, "back"),
        (0, 224.9, "back"),
        (0, 225, "side"),
        (0, 315, "side"),
        (60, 0, "front"),
        (60.1, 0, "overhead"),
        (89, 180, "overhead"),
        (-10, 180, "back"),
    ],
)
def test_view_labels_at_the_boundaries(elevation: float, azimuth: float, label: str) -> None:
    assert view_label(elevation, azimuth) == label


def test_view_suffix() -> None:
    assert "a red chair" + view_suffix("front") == "a red chair, front view"


def test_ray_directions_are_unit_and_the_centre_ray_hits_the_look_at_point() -> None:
    batch = sample_cameras(CameraConfig(resolution=32), 16, torch.Generator().manual_seed(1))
    assert torch.allclose(batch.rays_d.norm(dim=-1), torch.ones(16, 32, 32), atol=1e-5)
    cams = cameras_from_angles(
        torch.tensor([20.0, -5.0]), torch.tensor([30.0, 200.0]), torch.tensor([1.2, 1.4]), torch.tensor([1.0, 0.8]), 32
    )
    # The optical axis is -z of the camera; pixel centres straddle it, so average the 4 middle rays.
    centre = cams.rays_d[:, 15:17, 15:17].mean(dim=(1, 2))
    origin = cams.rays_o[:, 0, 0]
    closest = origin + (centre * -origin).sum(-1, keepdim=True) * centre  # closest approach to the origin
    assert closest.norm(dim=-1).max() < 0.02


def test_camera_at_azimuth_zero_sits_on_plus_x_and_looks_at_the_origin() -> None:
    cams = turntable_cameras(TurntableConfig(frames=4, elevation=0.0, distance=1.0))
    assert torch.allclose(cams.rays_o[0, 0, 0], torch.tensor([1.0, 0.0, 0.0]), atol=1e-5)
    assert cams.view_labels == ("front", "side", "back", "side")
    # Up in the image is +z in the world.
    top, bottom = cams.rays_d[0, 0, 32], cams.rays_d[0, -1, 32]
    assert top[2] > 0 > bottom[2]


def test_bad_camera_config_is_refused() -> None:
    with pytest.raises(ValueError, match="resolution"):
        CameraConfig(resolution=0)
    with pytest.raises(ValueError, match="distance_range"):
        CameraConfig(distance_range=(2.0, 1.0))


@pytest.mark.parametrize("max_rays", [1, 7, 16, 40, 64, 100, 10**6])
def test_ray_chunks_cover_every_ray_once_in_order(max_rays: int) -> None:
    cameras = turntable_cameras(TurntableConfig(frames=3, resolution=4))
    seen = torch.zeros(3, 4, 4, dtype=torch.long)
    order = []
    for camera_slice, row_slice in cameras.ray_chunks(max_rays):
        part = cameras.subset(camera_slice, row_slice)
        assert part.rays_o.shape[0] * part.rays_o.shape[1] * 4 <= max(max_rays, 4)  # at least one row
        assert torch.equal(part.rays_d, cameras.rays_d[camera_slice, row_slice])
        assert torch.equal(part.distance, cameras.distance[camera_slice])
        assert part.view_labels == cameras.view_labels[camera_slice]
        seen[camera_slice, row_slice] += 1
        order.append((camera_slice.start, row_slice.start))
    assert (seen == 1).all() and order == sorted(order)
    with pytest.raises(ValueError, match="max_rays"):
        cameras.ray_chunks(0)
