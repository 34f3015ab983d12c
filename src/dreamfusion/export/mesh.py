"""Mesh export: density on a grid -> marching cubes -> vertex colours from the albedo -> cleanup -> file.

The mesh is extracted in the NeRF's world coordinates (z up, the object inside the bounding sphere of radius
``field.config.bound``). glTF (GLB) is y up by specification and most OBJ viewers assume y up too, so
``write_mesh`` rotates z-up to y-up for "glb" and "obj" (x stays, world z becomes +y, world y becomes -z:
a right-handed rotation of -90 degrees about x), and viewers show the object upright. PLY keeps the world
coordinates as they are (tools that read PLY, e.g. MeshLab or Open3D, have no fixed up axis).

trimesh and scikit-image are imported lazily: the rest of the package works without them.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from jaxtyping import Float, Int, UInt8

from dreamfusion.errors import DreamfusionError
from dreamfusion.files import write_bytes_atomic

MeshFormat = Literal["glb", "obj", "ply"]
MESH_FORMATS: tuple[MeshFormat, ...] = ("glb", "obj", "ply")
MIN_FACES = 8
"""A mesh with fewer faces than this is degenerate (a speck), not an object: export refuses it."""

_INSTALL_HINT = "mesh export needs {name}: pip install scikit-image==0.26.0 trimesh==5.2.0"

# z-up (NeRF world) -> y-up (glTF): (x, y, z) -> (x, z, -y).
Z_UP_TO_Y_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


class MeshExportError(DreamfusionError, RuntimeError):
    """Export could not produce a meaningful mesh (empty field, degenerate mesh, missing dependency,
    bad request); the message is for the user. Nothing is written when it is raised."""


@dataclass(frozen=True)
class MeshExportConfig:
    """How a mesh is extracted from a density field.

    ``threshold`` is the density level of the surface. None picks it automatically as the density at which
    one sample of the renderer is half opaque: 1 - exp(-sigma * step) = 1/2, so sigma = ln 2 / step, with
    step = 2 * bound / ``auto_samples`` the spacing of ``auto_samples`` samples across the bounding sphere
    (the renderer's ``num_samples``, 64 by default: sigma ~= 15.8 for bound 1.4). This is a physically
    meaningful level tied to what the renders show - a region denser than this looks solid in the video -
    rather than a fraction of the density distribution, which moves with how much empty space the grid
    holds. It does not depend on the extraction ``resolution``, so finer grids give the same surface.
    """

    resolution: int = 256
    """Grid samples per side over the bounding cube [-bound, bound]^3."""
    threshold: float | None = None
    """Density level of the surface; None: ln 2 / (2 * bound / auto_samples), see the class docstring."""
    auto_samples: int = 64
    """Samples across the bounding sphere that define the automatic threshold (the renderer's num_samples)."""
    keep_largest: bool = False
    """Keep only the largest connected component (drops every floater)."""
    min_component_fraction: float = 0.05
    """Drop connected components with fewer faces than this fraction of the largest one (floaters)."""
    decimate_faces: int | None = None
    """Simplify to about this many faces (quadric decimation; needs fast-simplification). None keeps all."""
    chunk: int = 65536
    """Points per field evaluation."""

    def __post_init__(self) -> None:
        if self.resolution < 8:
            raise ValueError(f"mesh resolution must be at least 8, got {self.resolution}")
        if self.threshold is not None and not (math.isfinite(self.threshold) and self.threshold > 0):
            raise ValueError(f"mesh threshold must be a positive density, got {self.threshold}")
        if self.auto_samples <= 0 or self.chunk <= 0:
            raise ValueError("mesh auto_samples and chunk must be positive")
        if not 0 <= self.min_component_fraction <= 1:
            raise ValueError("mesh min_component_fraction must lie in [0, 1]")
        if self.decimate_faces is not None and self.decimate_faces < MIN_FACES:
            raise ValueError(f"mesh decimate_faces must be at least {MIN_FACES}")

    def level(self, bound: float) -> float:
        """The density level used for a field of bounding radius ``bound``."""
        if self.threshold is not None:
            return self.threshold
        return math.log(2.0) / (2.0 * bound / self.auto_samples)


@dataclass
class Mesh:
    """A triangle mesh in the NeRF's world coordinates (z up)."""

    vertices: Float[np.ndarray, "V 3"]
    faces: Int[np.ndarray, "F 3"]
    """Counter-clockwise seen from outside: normals point out of the object."""
    colors: UInt8[np.ndarray, "V 3"]
    """Per-vertex sRGB colour: the field's albedo at the vertex."""
    threshold: float
    """The density level the surface was extracted at."""

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])


def _import(name: str):
    try:
        if name == "skimage":
            from skimage import measure

            return measure
        import trimesh

        return trimesh
    except ImportError:
        raise MeshExportError(_INSTALL_HINT.format(name="scikit-image" if name == "skimage" else "trimesh")) from None


def _device_of(field: torch.nn.Module, device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    parameter = next(field.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


@torch.no_grad()
def density_grid(field, resolution: int, device: torch.device, chunk: int = 65536) -> Float[np.ndarray, "R R R"]:
    """Density at the ``resolution``^3 grid points spanning [-bound, bound]^3 (corners included), chunked."""
    bound = field.config.bound
    axis = torch.linspace(-bound, bound, resolution, device=device)
    out = np.empty((resolution,) * 3, dtype=np.float32)
    flat = out.reshape(resolution, -1)
    yz = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), dim=-1).reshape(-1, 2)
    # One x-slab at a time keeps memory at resolution^2 points, whatever the resolution.
    for i in range(resolution):
        points = torch.cat((axis[i].expand(yz.shape[0], 1), yz), dim=1)
        values = torch.cat([field.density(part) for part in points.split(chunk)])
        flat[i] = values.float().cpu().numpy()
    return out


@torch.no_grad()
def _albedo(field, points: Float[np.ndarray, "V 3"], device: torch.device, chunk: int) -> UInt8[np.ndarray, "V 3"]:
    tensor = torch.from_numpy(points.astype(np.float32)).to(device)
    albedo = torch.cat([field(part, with_normals=False).albedo for part in tensor.split(chunk)]) if len(tensor) else tensor
    return (albedo.clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)


def _drop_small_components(
    vertices: np.ndarray, faces: np.ndarray, keep_largest: bool, min_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """Remove connected components (by shared vertices) that are floaters; re-index the kept vertices."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(vertices)
    rows = np.concatenate([faces[:, 0], faces[:, 1], faces[:, 2]])
    cols = np.concatenate([faces[:, 1], faces[:, 2], faces[:, 0]])
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    face_labels = labels[faces[:, 0]]
    sizes = np.bincount(face_labels)
    largest = sizes.max()
    keep_labels = np.flatnonzero(sizes == largest)[:1] if keep_largest else np.flatnonzero(sizes >= min_fraction * largest)
    keep_faces = faces[np.isin(face_labels, keep_labels)]
    used = np.unique(keep_faces)
    remap = np.full(n, -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    return vertices[used], remap[keep_faces]


def _decimate(mesh: Mesh, target: int) -> Mesh:
    """Quadric decimation to about ``target`` faces (trimesh, through fast-simplification)."""
    if mesh.num_faces <= target:
        return mesh
    trimesh = _import("trimesh")
    tm = trimesh.Trimesh(mesh.vertices, mesh.faces, vertex_colors=mesh.colors, process=False)
    try:
        simple = tm.simplify_quadric_decimation(face_count=target)
    except (ImportError, ModuleNotFoundError, ValueError) as error:
        raise MeshExportError(
            f"decimation needs fast-simplification (pip install fast-simplification==0.2.0): {error}"
        ) from None
    # Simplification drops the colours: take them from the nearest original vertex.
    from scipy.spatial import cKDTree

    _, nearest = cKDTree(mesh.vertices).query(np.asarray(simple.vertices))
    return Mesh(np.asarray(simple.vertices, np.float32), np.asarray(simple.faces, np.int64), mesh.colors[nearest], mesh.threshold)


def extract_mesh(field, config: MeshExportConfig = MeshExportConfig(), device: torch.device | str | None = None) -> Mesh:
    """Marching cubes on the field's density at ``config.level(bound)``, coloured by the albedo at each vertex.

    Raises MeshExportError when nothing in the grid is denser than the level, or when what is left after
    dropping floaters has fewer than MIN_FACES faces.
    """
    measure = _import("skimage")
    device = _device_of(field, device)
    bound = float(field.config.bound)
    level = config.level(bound)
    density = density_grid(field, config.resolution, device, config.chunk)
    if not np.isfinite(density).all():
        raise MeshExportError("the field's density has NaN or infinite values; the checkpoint is broken")
    peak = float(density.max())
    if peak <= level:
        raise MeshExportError(
            f"the field is empty: its highest density {peak:.3g} is below the surface level {level:.3g}; "
            "train longer or pass a lower --threshold"
        )
    if float(density.min()) >= level:
        raise MeshExportError(
            f"the whole bounding cube is denser than the surface level {level:.3g}; pass a higher --threshold"
        )
    # Pad with empty space so surfaces touching the cube's faces close up (a watertight mesh).
    padded = np.pad(density, 1, mode="constant", constant_values=0.0)
    spacing = 2 * bound / (config.resolution - 1)
    vertices, faces, _, _ = measure.marching_cubes(padded, level=level, spacing=(spacing,) * 3, allow_degenerate=False)
    vertices = vertices - bound - spacing  # grid index 1 (after padding) is -bound
    # skimage orders faces so normals point toward increasing values (into the object): flip to outward.
    faces = faces[:, ::-1].astype(np.int64)
    if len(faces) < MIN_FACES:
        raise MeshExportError(f"the surface at density {level:.3g} is degenerate ({len(faces)} faces)")
    vertices, faces = _drop_small_components(vertices, faces, config.keep_largest, config.min_component_fraction)
    if len(faces) < MIN_FACES:
        raise MeshExportError(f"the surface at density {level:.3g} is degenerate ({len(faces)} faces)")
    mesh = Mesh(vertices.astype(np.float32), faces, _albedo(field, vertices, device, config.chunk), level)
    if config.decimate_faces is not None:
        mesh = _decimate(mesh, config.decimate_faces)
    return mesh


def to_trimesh(mesh: Mesh, up: Literal["z", "y"] = "z"):
    """The mesh as a trimesh.Trimesh with vertex colours; ``up="y"`` rotates world z-up to y-up."""
    trimesh = _import("trimesh")
    vertices = mesh.vertices @ Z_UP_TO_Y_UP.T if up == "y" else mesh.vertices
    alpha = np.full((len(mesh.colors), 1), 255, dtype=np.uint8)
    return trimesh.Trimesh(
        vertices=np.asarray(vertices, dtype=np.float64),
        faces=mesh.faces,
        vertex_colors=np.concatenate([mesh.colors, alpha], axis=1),
        process=False,
    )


def write_mesh(mesh: Mesh, path: Path, format: MeshFormat | None = None) -> Path:
    """Write ``mesh`` as GLB, OBJ (+ vertex colours as "v x y z r g b") or PLY, atomically (temp + rename).

    GLB and OBJ are written y up (see the module docstring), PLY in the world's z up. ``format`` None
    takes it from the suffix.
    """
    path = Path(path)
    fmt = (format or path.suffix.lstrip(".")).lower()
    if fmt not in MESH_FORMATS:
        raise MeshExportError(f"unknown mesh format {fmt!r}; choose one of {', '.join(MESH_FORMATS)}")
    if mesh.num_faces < MIN_FACES:
        raise MeshExportError(f"refusing to write a degenerate mesh ({mesh.num_faces} faces)")
    tm = to_trimesh(mesh, up="z" if fmt == "ply" else "y")
    if fmt == "obj":
        data = tm.export(file_type="obj", include_color=True, include_normals=False, include_texture=False)
    else:
        data = tm.export(file_type=fmt)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    if not payload:
        raise MeshExportError(f"trimesh produced an empty {fmt} file")
    return write_bytes_atomic(path, payload)


GRID_BYTES_PER_SAMPLE = 8
"""Memory per grid sample of an extraction, a lower bound: the float32 density grid and its padded copy
that marching cubes reads."""


def mesh_format(format: str | None, out: Path | None) -> MeshFormat:
    """The format of an export: ``out``'s suffix, which ``format`` (when given) must agree with; "glb" when
    neither says."""
    if format is not None and format not in MESH_FORMATS:
        raise MeshExportError(f"unknown mesh format {format!r}; choose one of {', '.join(MESH_FORMATS)}")
    if out is None:
        return format or "glb"  # type: ignore[return-value]
    suffix = Path(out).suffix.lower().lstrip(".")
    if suffix not in MESH_FORMATS:
        raise MeshExportError(f"--out {out} must end in .glb, .obj or .ply (the suffix says the format)")
    if format is not None and format != suffix:
        raise MeshExportError(f"--format {format} contradicts --out {out}, a .{suffix} file; make them agree")
    return suffix  # type: ignore[return-value]


def export_run(
    run_dir: Path,
    format: MeshFormat | None = None,
    resolution: int = 256,
    device: str = "auto",
    threshold: float | None = None,
    out: Path | None = None,
    config: MeshExportConfig | None = None,
) -> Path:
    """Extract the mesh of a run and write it to ``out`` (default RUN_DIR/mesh.FORMAT); returns the path.
    The format comes from ``out``'s suffix or ``format`` (see ``mesh_format``). Writing into the run takes
    its writer lock, so a run that is being trained is not written into; writing elsewhere only reads it.

    The automatic threshold uses the run's own renderer ``num_samples``. Raises RunError for a directory
    that is not a run (or is in use) and MeshExportError when no mesh can be made.
    """
    from dataclasses import replace

    from dreamfusion.memory import check_size
    from dreamfusion.run import load_scene, lock_for_writing

    run_dir = Path(run_dir)
    fmt = mesh_format(format, out)
    target = Path(out) if out is not None else run_dir / f"mesh.{fmt}"
    if config is None:
        try:
            config = MeshExportConfig(resolution=resolution, threshold=threshold)
        except ValueError as error:
            raise MeshExportError(str(error)) from None
    check_size("--resolution", config.resolution, lambda side: float(side) ** 3 * GRID_BYTES_PER_SAMPLE, "cpu")
    into_run = run_dir.is_dir() and target.parent.resolve() == run_dir.resolve()
    hint = "; or export while it trains with --out outside the run"
    with lock_for_writing(run_dir, hint) if into_run else contextlib.nullcontext():
        run_config, scene = load_scene(run_dir, device)
        if config.threshold is None:
            config = replace(config, auto_samples=run_config.renderer.num_samples)
        mesh = extract_mesh(scene.field, config)
        return write_mesh(mesh, target, fmt)
