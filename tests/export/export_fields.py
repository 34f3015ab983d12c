"""Analytic fields for the export tests: densities and colours given by formulas of the position."""

from __future__ import annotations

import torch
from torch import nn

from dreamfusion.field import FieldConfig, FieldOutput

RED, BLUE, GREEN = (0.9, 0.1, 0.1), (0.1, 0.2, 0.9), (0.1, 0.8, 0.2)


class AnalyticField(nn.Module):
    """A field given by formulas of the position, in the bounding sphere of the default FieldConfig."""

    bound = FieldConfig().bound

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # a parameter: where the field lives

    def albedo(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, with_normals: bool = False) -> FieldOutput:
        return FieldOutput(self.density(x), self.albedo(x), None)


class BallsField(AnalyticField):
    """Balls of given centres and radii: density 20 * exp(10 * (r - distance)) (20 exactly on the surface,
    smooth, positive); albedo red where x > 0 and blue elsewhere."""

    def __init__(self, balls: list[tuple[tuple[float, float, float], float]], scale: float = 1.0) -> None:
        super().__init__()
        self.centres = torch.tensor([centre for centre, _ in balls])
        self.radii = torch.tensor([radius for _, radius in balls])
        self.scale = scale

    def density(self, x: torch.Tensor) -> torch.Tensor:
        distance = (x[:, None, :] - self.centres[None]).norm(dim=-1)  # N B
        return self.scale * 20 * torch.exp(10 * (self.radii[None] - distance)).amax(dim=1) + 0 * self.anchor

    def albedo(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x[:, :1] > 0, torch.tensor(RED), torch.tensor(BLUE))

    def forward(self, x: torch.Tensor, with_normals: bool = False) -> FieldOutput:
        normals = None
        if with_normals:  # outward from the nearest centre
            nearest = (x[:, None, :] - self.centres[None]).norm(dim=-1).argmin(dim=1)
            normals = torch.nn.functional.normalize(x - self.centres[nearest], dim=-1)
        return FieldOutput(self.density(x), self.albedo(x), normals)


class SoftBall(AnalyticField):
    """A ball of ``peak`` density inside ``radius`` (an edge 0.01 wide), optionally in a uniform ``haze`` out to
    radius 1; albedo ``inside`` in the ball, ``outside`` in the haze, or ``below`` where z < 0 when given."""

    def __init__(self, peak: float, radius: float = 0.5, haze: float = 0.0, inside=RED, outside=BLUE, below=None) -> None:
        super().__init__()
        self.peak, self.radius, self.haze = peak, radius, haze
        self.inside, self.outside, self.below = torch.tensor(inside), torch.tensor(outside), below

    def density(self, x: torch.Tensor) -> torch.Tensor:
        r = x.norm(dim=-1)
        ball = self.peak * ((self.radius - r) / 0.01 + 0.5).clamp(0, 1)
        return torch.maximum(ball, self.haze * (r < 1.0).float()) + 0 * self.anchor

    def albedo(self, x: torch.Tensor) -> torch.Tensor:
        in_ball = x.norm(dim=-1, keepdim=True) < self.radius + 0.005  # the ball's colour out to where its edge ends
        colour = torch.where(in_ball, self.inside, self.outside)
        if self.below is not None:
            colour = torch.where(x[:, 2:] < 0, torch.tensor(self.below), colour)
        return colour.expand(x.shape[0], 3)
