import pytest
import torch

from dreamfusion.cameras import CameraConfig, sample_cameras
from dreamfusion.transfer import to_device


def test_a_copy_to_the_cpu_is_the_tensor_itself() -> None:
    tensor = torch.arange(6.0).reshape(2, 3)
    assert to_device(tensor, "cpu") is tensor


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_copy_to_cuda_keeps_the_values_and_does_not_wait() -> None:
    tensor = torch.randn(64, 64, 3, generator=torch.Generator().manual_seed(0))
    torch.cuda.set_sync_debug_mode("error")  # a copy that made the host wait would raise here
    try:
        copied = to_device(tensor, "cuda")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert copied.device.type == "cuda" and torch.equal(copied.cpu(), tensor)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cameras_moved_to_cuda_keep_their_angles_on_the_host() -> None:
    cameras = sample_cameras(CameraConfig(resolution=8), 2, torch.Generator().manual_seed(0))
    moved = cameras.to("cuda")
    assert moved.rays_o.device.type == "cuda" and moved.light_position.device.type == "cuda"
    assert moved.azimuth.device.type == "cpu" and torch.equal(moved.azimuth, cameras.azimuth)
    assert torch.equal(moved.rays_d.cpu(), cameras.rays_d)
