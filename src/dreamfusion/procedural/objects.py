"""The procedural object library: SDFs of 13 captionable objects, their colours and held-out pairs.

Conventions follow ``dreamfusion.cameras``: z is up, an object's front faces +x (seen by the camera at
azimuth 0), +y is the image's right in that front view. Objects stand on a ground at z ~ -0.45 (the
geometric solids are centred at the origin instead) and fit inside a radius of 0.65, so the renderer's
bounding sphere and the 3D IoU grids can rely on it.

Each object is a list of parts, each with a material: ``None`` is the body, painted with the caption's
colour; a few small details have a fixed colour (snowman nose, car windows, house door, ...) and stay well
under 30% of the visible pixels so the caption's colour is unambiguous.

Asymmetric objects and how they read from the cameras:

* chair: seat facing +x, backrest at the back (-x).
* house: gable roof with its ridge along x; door on the +x gable, windows on both sides (+-y), a plain back
  and a chimney on the rear half of the +y slope.
* mug: handle on the +y side (the right of the front view, the left of the back view).
* snowman: carrot nose, eyes and buttons facing +x, twig arms along +-y.
* car: long axis along x; headlights at the +x nose, red tail lights at -x, the cabin set back.
* lamp: desk lamp whose arm leans toward +x, the shade (and its bulb) facing front and down.
* rocket: four diagonal fins, a porthole facing +x. Table, cube, sphere, cylinder, cone, torus: symmetric.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from dreamfusion.cameras import ViewLabel, view_suffix
from dreamfusion.procedural import sdf as S

Rgb = tuple[float, float, float]
Part = tuple[Tensor, Rgb | None]
"""Distances of one part, and its fixed colour (None: the caption's colour)."""

OBJECT_KINDS: tuple[str, ...] = (
    "chair", "table", "house", "mug", "snowman", "car", "lamp", "rocket",
    "cube", "sphere", "cylinder", "cone", "torus",
)  # fmt: skip

COLOURS: dict[str, Rgb] = {
    "red": (0.85, 0.12, 0.10),
    "orange": (0.96, 0.52, 0.08),
    "yellow": (0.95, 0.86, 0.15),
    "green": (0.15, 0.62, 0.20),
    "blue": (0.12, 0.30, 0.85),
    "purple": (0.52, 0.20, 0.68),
    "pink": (0.98, 0.58, 0.72),
    "white": (0.92, 0.92, 0.92),
    "brown": (0.45, 0.27, 0.12),
    "grey": (0.50, 0.50, 0.50),
}

HELD_OUT_PAIRS: tuple[tuple[str, str], ...] = (
    ("blue", "chair"), ("red", "mug"), ("green", "car"), ("yellow", "house"), ("purple", "snowman"),
    ("orange", "lamp"), ("pink", "rocket"), ("white", "cube"), ("brown", "torus"), ("grey", "cone"),
)  # fmt: skip
"""(colour, object) pairs never rendered for training, to test compositional generalization."""

OBJECT_RADIUS = 0.65
"""Every object lies inside this radius around the origin."""

# Fixed colours of small details.
_DARK: Rgb = (0.08, 0.08, 0.09)
_GLASS: Rgb = (0.14, 0.18, 0.26)
_CARROT: Rgb = (0.96, 0.50, 0.10)
_TWIG: Rgb = (0.30, 0.19, 0.09)
_DOOR: Rgb = (0.16, 0.10, 0.06)
_LIGHT: Rgb = (1.00, 0.95, 0.65)
_TAIL: Rgb = (0.80, 0.06, 0.06)


def is_held_out(colour: str, obj: str) -> bool:
    return (colour, obj) in HELD_OUT_PAIRS


def training_pairs() -> tuple[tuple[str, str], ...]:
    """All (colour, object) pairs except the held-out ones, in a fixed order."""
    return tuple((c, o) for o in OBJECT_KINDS for c in COLOURS if not is_held_out(c, o))


def caption(colour: str, kind: str, view_label: ViewLabel | None = None) -> str:
    """ "a red chair", "an orange lamp, side view" (the article agrees with the colour word)."""
    article = "an" if colour[0] in "aeiou" else "a"
    text = f"{article} {colour} {kind}"
    return text if view_label is None else text + view_suffix(view_label)


# ----- the objects, as parts -------------------------------------------------------------------------


def _chair(p: Tensor) -> list[Part]:
    seat = S.box(S.translate(p, (0.0, 0.0, -0.08)), (0.24, 0.24, 0.03), rounding=0.01)
    legs = S.capped_cylinder(S.translate(S.mirror(p, "xy"), (0.2, 0.2, -0.28)), 0.025, 0.17)
    backrest = S.box(S.translate(p, (-0.215, 0.0, 0.17)), (0.025, 0.24, 0.21), rounding=0.01)
    return [(S.union(seat, legs, backrest), None)]


def _table(p: Tensor) -> list[Part]:
    top = S.box(p, (0.28, 0.4, 0.025), rounding=0.01)
    legs = S.capped_cylinder(S.translate(S.mirror(p, "xy"), (0.23, 0.34, -0.225)), 0.025, 0.225)
    return [(S.union(top, legs), None)]


def _house(p: Tensor) -> list[Part]:
    walls = S.box(S.translate(p, (0.0, 0.0, -0.25)), (0.3, 0.27, 0.2))
    # Gable roof, ridge along x at z = 0.2, eaves overhanging the walls.
    folded = S.mirror(p, "y")
    roof = S.intersection(
        S.half_space(folded, (0.0, 0.3, 0.34), (0.0, 0.34, -0.1)),
        S.half_space(p, (0.0, 0.0, -1.0), (0.0, 0.0, -0.1)),
        p[..., 0].abs() - 0.34,
    )
    chimney = S.box(S.translate(p, (-0.14, 0.16, 0.14)), (0.045, 0.045, 0.12))
    door = S.box(S.translate(p, (0.3, 0.0, -0.345)), (0.012, 0.07, 0.105))
    windows = S.box(S.translate(S.mirror(p, "xy"), (0.14, 0.27, -0.23)), (0.065, 0.012, 0.055))
    return [(S.union(walls, roof, chimney), None), (door, _DOOR), (windows, _GLASS)]


def _mug(p: Tensor) -> list[Part]:
    outer = S.capped_cylinder(S.translate(p, (0.0, 0.0, -0.2)), 0.22, 0.25)
    inner = S.capped_cylinder(S.translate(p, (0.0, 0.0, -0.14)), 0.185, 0.25)
    ring = S.torus(S.swizzle(S.translate(p, (0.0, 0.22, -0.2)), "x"), 0.115, 0.03)
    handle = S.intersection(ring, 0.2 - p[..., 1])
    return [(S.union(S.subtraction(outer, inner), handle), None)]


def _snowman(p: Tensor) -> list[Part]:
    bottom = S.sphere(S.translate(p, (0.0, 0.0, -0.25)), 0.21)
    middle = S.sphere(S.translate(p, (0.0, 0.0, 0.04)), 0.155)
    head = S.sphere(S.translate(p, (0.0, 0.0, 0.27)), 0.11)
    body = S.smooth_union(S.smooth_union(bottom, middle, 0.04), head, 0.03)
    nose = S.capped_cone(S.align_z(p, (0.165, 0.0, 0.265), (1.0, 0.0, 0.0)), 0.08, 0.032, 0.004)
    folded = S.mirror(p, "y")
    eyes = S.sphere(S.translate(folded, (0.094, 0.044, 0.31)), 0.024)
    # Three buttons down the front of the middle ball (elevations 35, 5 and -25 degrees from its centre).
    button_xz = ((0.125, 0.127), (0.151, 0.053), (0.138, -0.024))
    buttons = S.union(*(S.sphere(S.translate(p, (x, 0.0, z)), 0.026) for x, z in button_xz))
    arms = S.capsule(folded, (0.0, 0.12, 0.07), (0.0, 0.32, 0.2), 0.016)
    return [(body, None), (nose, _CARROT), (S.union(eyes, buttons), _DARK), (arms, _TWIG)]


def _car(p: Tensor) -> list[Part]:
    hull = S.box(S.translate(p, (0.0, 0.0, -0.25)), (0.38, 0.19, 0.085), rounding=0.04)
    cabin_box = S.box(S.translate(p, (-0.07, 0.0, -0.1)), (0.2, 0.16, 0.085), rounding=0.05)
    # A raked windscreen: cut the cabin's front with a slanted plane.
    cabin = S.intersection(cabin_box, S.half_space(p, (0.75, 0.0, 0.66), (0.08, 0.0, -0.1)))
    body = S.smooth_union(hull, cabin, 0.03)
    band = S.intersection(cabin + 0.008, (p[..., 2] + 0.09).abs() - 0.04)
    wheels = S.capped_cylinder(S.swizzle(S.translate(S.mirror(p, "xy"), (0.23, 0.16, -0.36)), "y"), 0.09, 0.04)
    folded = S.mirror(p, "y")
    headlights = S.sphere(S.translate(folded, (0.36, 0.12, -0.22)), 0.035)
    tail = S.box(S.translate(folded, (-0.38, 0.13, -0.21)), (0.012, 0.04, 0.02))
    return [(body, None), (band, _GLASS), (wheels, _DARK), (headlights, _LIGHT), (tail, _TAIL)]


_SHADE_APEX = (0.08, 0.0, 0.27)
_SHADE_AXIS = (0.8, 0.0, -0.6)


def _lamp(p: Tensor) -> list[Part]:
    base = S.capped_cylinder(S.translate(p, (-0.12, 0.0, -0.425)), 0.15, 0.025)
    lower = S.capsule(p, (-0.12, 0.0, -0.41), (-0.2, 0.0, 0.1), 0.022)
    joint = S.sphere(S.translate(p, (-0.2, 0.0, 0.1)), 0.035)
    upper = S.capsule(p, (-0.2, 0.0, 0.1), _SHADE_APEX, 0.022)
    # A hollow conical shade opening along the axis (front and down), a bulb inside.
    local = S.align_z(p, _SHADE_APEX, _SHADE_AXIS)
    outer = S.capped_cone(local - local.new_tensor((0.0, 0.0, 0.1)), 0.1, 0.055, 0.16)
    inner = S.capped_cone(local - local.new_tensor((0.0, 0.0, 0.135)), 0.1, 0.035, 0.14)
    shade = S.subtraction(outer, inner)
    bulb = S.sphere(local - local.new_tensor((0.0, 0.0, 0.09)), 0.05)
    return [(S.union(base, lower, joint, upper, shade), None), (bulb, _LIGHT)]


def _rocket(p: Tensor) -> list[Part]:
    hull = S.capped_cylinder(S.translate(p, (0.0, 0.0, -0.06)), 0.11, 0.24)
    nose = S.capped_cone(S.translate(p, (0.0, 0.0, 0.315)), 0.135, 0.11, 0.0)
    body = S.smooth_union(hull, nose, 0.02)
    # Four fins on the diagonals: fold the rotated space and place one fin along x, one along y.
    q = S.mirror(S.rotate(p, "z", 45.0), "xy")
    fin_x = S.box(S.translate(q, (0.16, 0.0, -0.32)), (0.08, 0.012, 0.1))
    fin_y = S.box(S.translate(q, (0.0, 0.16, -0.32)), (0.012, 0.08, 0.1))
    fin_x = S.intersection(fin_x, S.half_space(q, (0.6, 0.0, 0.8), (0.11, 0.0, -0.2)))
    fin_y = S.intersection(fin_y, S.half_space(q, (0.0, 0.6, 0.8), (0.0, 0.11, -0.2)))
    nozzle = S.capped_cone(S.translate(p, (0.0, 0.0, -0.34)), 0.04, 0.08, 0.06)
    porthole = S.capped_cylinder(S.swizzle(S.translate(p, (0.1, 0.0, 0.06)), "x"), 0.045, 0.018)
    return [(S.union(body, fin_x, fin_y), None), (nozzle, _DARK), (porthole, _GLASS)]


def _cube(p: Tensor) -> list[Part]:
    return [(S.box(p, (0.28, 0.28, 0.28), rounding=0.02), None)]


def _sphere(p: Tensor) -> list[Part]:
    return [(S.sphere(p, 0.38), None)]


def _cylinder(p: Tensor) -> list[Part]:
    return [(S.capped_cylinder(p, 0.26, 0.32), None)]


def _cone(p: Tensor) -> list[Part]:
    return [(S.capped_cone(S.translate(p, (0.0, 0.0, 0.02)), 0.36, 0.32, 0.0), None)]


def _torus(p: Tensor) -> list[Part]:
    return [(S.torus(p, 0.3, 0.12), None)]


_PARTS: dict[str, Callable[[Tensor], list[Part]]] = {
    "chair": _chair, "table": _table, "house": _house, "mug": _mug, "snowman": _snowman, "car": _car,
    "lamp": _lamp, "rocket": _rocket, "cube": _cube, "sphere": _sphere, "cylinder": _cylinder,
    "cone": _cone, "torus": _torus,
}  # fmt: skip
assert tuple(_PARTS) == OBJECT_KINDS
DETAILED_KINDS: frozenset[str] = frozenset(k for k in OBJECT_KINDS if len(_PARTS[k](torch.zeros(1, 3))) > 1)
"""Kinds with fixed-colour details; the others are painted entirely in the caption's colour."""


def object_parts(kind: str, points: Float[Tensor, "N 3"]) -> tuple[Float[Tensor, "P N"], Float[Tensor, "P 4"]]:
    """Distances to each part of ``kind`` and each part's material: (r, g, b, is_body)."""
    parts = _PARTS[kind](points)
    distances = torch.stack([d for d, _ in parts])
    materials = torch.tensor(
        [(0.0, 0.0, 0.0, 1.0) if rgb is None else (*rgb, 0.0) for _, rgb in parts], device=points.device
    )
    return distances, materials


def _sdf_of(kind: str) -> Callable[[Tensor], Tensor]:
    def sdf(points: Float[Tensor, "N 3"]) -> Float[Tensor, " N"]:
        return S.union(*(d for d, _ in _PARTS[kind](points)))

    sdf.__name__ = f"sdf_{kind}"
    sdf.__doc__ = f"Signed distance to the {kind} (negative inside)."
    return sdf


sdf_chair = _sdf_of("chair")
sdf_table = _sdf_of("table")
sdf_house = _sdf_of("house")
sdf_mug = _sdf_of("mug")
sdf_snowman = _sdf_of("snowman")
sdf_car = _sdf_of("car")
sdf_lamp = _sdf_of("lamp")
sdf_rocket = _sdf_of("rocket")
sdf_cube = _sdf_of("cube")
sdf_sphere = _sdf_of("sphere")
sdf_cylinder = _sdf_of("cylinder")
sdf_cone = _sdf_of("cone")
sdf_torus = _sdf_of("torus")
SDF_FUNCTIONS: dict[str, Callable[[Tensor], Tensor]] = {kind: globals()[f"sdf_{kind}"] for kind in OBJECT_KINDS}


def object_sdf(kind_index: Int[Tensor, " N"] | int, points: Float[Tensor, "N 3"]) -> Float[Tensor, " N"]:
    """Signed distances to the objects ``OBJECT_KINDS[kind_index]``, one kind per point (or one for all);
    each kind's SDF runs once, on its own points."""
    if isinstance(kind_index, int):
        return SDF_FUNCTIONS[OBJECT_KINDS[kind_index]](points)
    kind_index = kind_index.to(points.device)
    out = points.new_empty(points.shape[0])
    for k in torch.unique(kind_index).tolist():
        mask = kind_index == k
        out[mask] = SDF_FUNCTIONS[OBJECT_KINDS[k]](points[mask])
    return out


def object_albedo(
    kind: str, points: Float[Tensor, "N 3"], colour_rgb: Rgb | Float[Tensor, "*N 3"]
) -> Float[Tensor, "N 3"]:
    """Albedo of surface points: the caption colour on the body, fixed colours on the nearest detail part."""
    distances, materials = object_parts(kind, points)
    material = materials[distances.argmin(dim=0)]
    body = torch.as_tensor(colour_rgb, dtype=points.dtype, device=points.device).expand(points.shape[0], 3)
    return material[:, 3:] * body + (1.0 - material[:, 3:]) * material[:, :3]


def grid_points(resolution: int, bound: float, device: torch.device | str = "cpu") -> Float[Tensor, "R R R 3"]:
    """Regular grid of points over [-bound, bound]^3, ``resolution`` samples per axis (ends included),
    indexed [ix, iy, iz]."""
    axis = torch.linspace(-bound, bound, resolution, device=device)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)


def occupancy_grid(
    kind: str,
    resolution: int = 64,
    bound: float = 1.0,
    turn_degrees: float = 0.0,
    scale: float = 1.0,
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> Bool[Tensor, "R R R"]:
    """Inside (sdf < 0) on a regular grid over [-bound, bound]^3, indexed [x, y, z] ("ij"): entry [i, j, k]
    is the point (-bound + 2 bound i / (R - 1), same for j along y, k along z). For the 3D IoU metric.
    The object is turned by ``turn_degrees`` about the vertical (z) axis (counter-clockwise seen from above),
    then scaled by ``scale`` and moved by ``offset``."""
    points = grid_points(resolution, bound).reshape(-1, 3)
    # A point of the moved object is the original point moved back: shifted, scaled, then turned back.
    points = (points - torch.tensor(offset)) / scale
    if turn_degrees:
        angle = math.radians(turn_degrees)
        cos, sin = math.cos(angle), math.sin(angle)
        x, y = points[:, 0], points[:, 1]
        points = torch.stack((cos * x + sin * y, -sin * x + cos * y, points[:, 2]), dim=1)
    distances = torch.cat([SDF_FUNCTIONS[kind](chunk) for chunk in points.split(1 << 20)])
    return (distances < 0.0).reshape(resolution, resolution, resolution)
