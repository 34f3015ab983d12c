"""Host-to-device copies that do not make the host wait.

A copy from ordinary (pageable) host memory to a CUDA device waits for all the work already queued on the
device. Staged through pinned memory, the copy joins the device's queue instead, so a training step's small
per-step inputs (cameras, noise, timesteps) leave the host free to queue the next step.
"""

from __future__ import annotations

import torch
from torch import Tensor


def to_device(tensor: Tensor, device: torch.device | str) -> Tensor:
    """``tensor`` on ``device``, copied through pinned memory without a wait when it goes from the CPU to CUDA."""
    device = torch.device(device)
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.contiguous().pin_memory().to(device, non_blocking=True)  # pinning needs one element per address
    return tensor.to(device)
