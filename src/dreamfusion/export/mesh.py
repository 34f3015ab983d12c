"""Mesh export: the surface the renders show -> marching cubes -> floaters dropped -> colours -> file.

The surface is the density level fitted to the field's rendered outlines (``surface``), made watertight where the
object is solid (a signed distance field's surface is its exact zero level instead); its colours are the albedo a
camera sees at it. By default the mesh is simplified, unwrapped and its albedo baked into a UV texture
(``texture``): GLB gets a PBR material with a base colour texture, OBJ a .mtl and a .png beside it; PLY, and any
format with ``vertex_colors``, carries colours per vertex instead.

The mesh is extracted in the NeRF's world coordinates (z up, the object inside the bounding sphere of radius
``field.bound``). glTF (GLB) is y up by specification and most OBJ viewers assume y up too, so
``write_mesh`` rotates z-up to y-up for "glb" and "obj" (x stays, world z becomes +y, world y becomes -z:
a right-handed rotation of -90 degrees about x), and viewers show the object upright. PLY keeps the world
coordinates as they are (tools that read PLY, e.g. MeshLab or Open3D, have no fixed up axis).

trimesh, scikit-image and xatlas are imported lazily: the rest of the package works without them.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from jaxtyping import Float, Int, UInt8

from dreamfusion.errors import DreamfusionError
from dreamfusion.export.surface import (
    SampledField,
    fine_resolution,
    fit_rendered_level,
    sample_coarse,
    sample_near_surface,
    solidify,
    surface_albedo,
)  # fmt: skip
from dreamfusion.files import write_bytes_atomic
from dreamfusion.geometry import Geometry
from dreamfusion.sdf_field import SDFField

MeshFormat = Literal["glb", "obj", "ply"]
MESH_FORMATS: tuple[MeshFormat, ...] = ("glb", "obj", "ply")
MIN_FACES = 8
"""A mesh with fewer faces than this is degenerate (a speck), not an object: export refuses it."""
MAX_TEXTURE_SIZE = 8192

_INSTALL_HINT = "mesh export needs {name}: pip install scikit-image==0.26.0 trimesh==5.2.0"

# z-up (NeRF world) -> y-up (glTF): (x, y, z) -> (x, z, -y).
Z_UP_TO_Y_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


class MeshExportError(DreamfusionError, RuntimeError):
    """Export could not produce a meaningful mesh (empty field, degenerate mesh, missing dependency,
    bad request); the message is for the user. Nothing is written when it is raised."""


@dataclass(frozen=True)
class MeshExportConfig:
    """How a mesh is extracted from a density field."""

    resolution: int = 256
    """Grid samples per side over the bounding cube [-bound, bound]^3 (rounded to a multiple of 3, plus one)."""
    threshold: float | None = None
    """Density level of the surface; None: the level whose outlines match the field's renders (``surface``)."""
    keep_largest: bool = False
    """Keep only the largest connected component (drops every floater)."""
    min_component_fraction: float = 0.05
    """Drop connected components with fewer faces than this fraction of the largest one (floaters)."""
    decimate_faces: int | None = None
    """Simplify to about this many faces (quadric decimation; needs fast-simplification). None: keep every face
    with ``vertex_colors``, and simplify to ``texture_faces`` before unwrapping a textured mesh."""
    texture_size: int = 1024
    """Side of the square albedo texture in texels."""
    texture_faces: int = 20000
    """Faces of a textured mesh when ``decimate_faces`` is None: the texture carries the colour detail, and
    unwrapping time grows quickly with the face count."""
    vertex_colors: bool = False
    """Colours per vertex instead of a UV texture (no xatlas needed)."""
    chunk: int | None = None
    """Points per field evaluation; None: 16384 on a CPU (cache-sized), 262144 on a GPU (fewer launches)."""

    def __post_init__(self) -> None:
        if self.resolution < 8:
            raise ValueError(f"mesh resolution must be at least 8, got {self.resolution}")
        if self.threshold is not None and not (math.isfinite(self.threshold) and self.threshold > 0):
            raise ValueError(f"mesh threshold must be a positive density, got {self.threshold}")
        if self.chunk is not None and self.chunk <= 0:
            raise ValueError("mesh chunk must be positive")
        if not 0 <= self.min_component_fraction <= 1:
            raise ValueError("mesh min_component_fraction must lie in [0, 1]")
        if self.decimate_faces is not None and self.decimate_faces < MIN_FACES:
            raise ValueError(f"mesh decimate_faces must be at least {MIN_FACES}")
        if not 16 <= self.texture_size <= MAX_TEXTURE_SIZE:
            raise ValueError(f"texture size must be from 16 to {MAX_TEXTURE_SIZE} texels, got {self.texture_size}")
        if self.texture_faces < MIN_FACES:
            raise ValueError(f"mesh texture_faces must be at least {MIN_FACES}")


@dataclass
class Mesh:
    """A triangle mesh in the NeRF's world coordinates (z up)."""

    vertices: Float[np.ndarray, "V 3"]
    faces: Int[np.ndarray, "F 3"]
    """Counter-clockwise seen from outside: normals point out of the object."""
    colors: UInt8[np.ndarray, "V 3"]
    """Per-vertex sRGB colour: the albedo the renders show at the vertex."""
    threshold: float
    """The density level the surface was extracted at."""
    uv: Float[np.ndarray, "V 2"] | None = None
    """Texture coordinates (v up), for ``texture``."""
    texture: UInt8[np.ndarray, "T T 3"] | None = None
    """The baked albedo, row 0 at the top (v = 1)."""
    outline_iou: float | None = None
    """How well the level's outlines matched the field's rendered ones when the level was fitted."""

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])

    @property
    def textured(self) -> bool:
        return self.uv is not None and self.texture is not None


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


def _decimate(vertices: np.ndarray, faces: np.ndarray, target: int) -> tuple[np.ndarray, np.ndarray]:
    """Quadric decimation to about ``target`` faces (trimesh, through fast-simplification)."""
    if len(faces) <= target:
        return vertices, faces
    trimesh = _import("trimesh")
    tm = trimesh.Trimesh(vertices, faces, process=False)
    try:
        simple = tm.simplify_quadric_decimation(face_count=target)
    except (ImportError, ModuleNotFoundError, ValueError) as error:
        raise MeshExportError(
            f"decimation needs fast-simplification (pip install fast-simplification==0.2.0): {error}"
        ) from None
    return np.asarray(simple.vertices, np.float32), np.asarray(simple.faces, np.int64)


def vertex_normals(vertices: Float[np.ndarray, "V 3"], faces: Int[np.ndarray, "F 3"]) -> Float[np.ndarray, "V 3"]:
    """Outward unit normals at the vertices: the area-weighted normals of the faces around each."""
    corners = vertices[faces]
    face_normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])  # length = 2 * area
    normals = np.zeros_like(vertices)
    for i in range(3):
        np.add.at(normals, faces[:, i], face_normals)
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    return (normals / np.maximum(length, 1e-12)).astype(np.float32)


def check_threshold(coarse: torch.Tensor, threshold: float) -> None:
    """MeshExportError when no density of the field reaches ``threshold`` (it would give no surface)."""
    peak = float(coarse.max())
    if peak <= threshold:
        raise MeshExportError(
            f"the field is empty at --threshold {threshold:.3g}: its highest density is {peak:.3g}; "
            "pass a lower --threshold, or none to fit the surface to the renders"
        )


def with_exact_level(field: Geometry, config: MeshExportConfig) -> MeshExportConfig:
    """``config`` with a signed distance field's zero level as its threshold, unless one is set: that level is
    known exactly, and fitting one to the outlines could only move it."""
    if config.threshold is None and isinstance(field, SDFField):
        return replace(config, threshold=field.surface_level())
    return config


def extract_mesh(field, config: MeshExportConfig = MeshExportConfig(), device: torch.device | str | None = None) -> Mesh:
    """The surface the field's renders show, as a closed, coloured (and by default textured) triangle mesh.

    Raises MeshExportError when the field renders nothing, or when what is left after dropping floaters has
    fewer than MIN_FACES faces.
    """
    measure = _import("skimage")
    config = with_exact_level(field, config)
    device = _device_of(field, device)
    chunk = config.chunk or (1 << 18 if device.type == "cuda" else 1 << 14)
    resolution = fine_resolution(config.resolution)
    coarse = sample_coarse(field, resolution, device, chunk)
    if not torch.isfinite(coarse).all():
        raise MeshExportError("the field's density has NaN or infinite values; the checkpoint is broken")
    if config.threshold is None:
        try:
            sampled, fit = fit_rendered_level(field, coarse, chunk)
        except ValueError as error:
            raise MeshExportError(f"the field is empty: {error}; train longer") from None
        level, outline_iou = fit.level, fit.outline_iou
    else:
        check_threshold(coarse, config.threshold)
        level, outline_iou = config.threshold, None
        sampled = sample_near_surface(field, coarse, level, chunk)
    density = solidify(sampled.density, level).cpu().numpy()
    # Pad with empty space so surfaces touching the grid's faces close up (a watertight mesh).
    padded = np.pad(density, 1, mode="constant", constant_values=0.0)
    spacing = sampled.spacing
    vertices, faces, _, _ = measure.marching_cubes(padded, level=level, spacing=(spacing,) * 3, allow_degenerate=False)
    vertices = (vertices - sampled.bound - spacing).astype(np.float32)  # grid index 1 (after padding) is -bound
    # skimage orders faces so normals point toward increasing values (into the object): flip to outward.
    faces = faces[:, ::-1].astype(np.int64)
    if len(faces) < MIN_FACES:
        raise MeshExportError(f"the surface at density {level:.3g} is degenerate ({len(faces)} faces)")
    vertices, faces = _drop_small_components(vertices, faces, config.keep_largest, config.min_component_fraction)
    if len(faces) < MIN_FACES:
        raise MeshExportError(f"the surface at density {level:.3g} is degenerate ({len(faces)} faces)")
    target = config.decimate_faces if config.decimate_faces is not None else None if config.vertex_colors else config.texture_faces
    if target is not None:
        vertices, faces = _decimate(vertices, faces, target)
    normals = vertex_normals(vertices, faces)
    colors = _to_bytes(surface_albedo(sampled, torch.from_numpy(vertices), torch.from_numpy(normals)))
    mesh = Mesh(vertices, faces, colors, level, outline_iou=outline_iou)
    return mesh if config.vertex_colors else texture_mesh(mesh, sampled, normals, config.texture_size)


def _to_bytes(colours: torch.Tensor) -> UInt8[np.ndarray, "N 3"]:
    return (colours.clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)


def texture_mesh(mesh: Mesh, sampled: SampledField, normals: np.ndarray, texture_size: int) -> Mesh:
    """``mesh`` unwrapped (seams split its vertices) with its albedo baked into a texture."""
    from dreamfusion.export.texture import UnwrapError, bake, unwrap

    try:
        layout = unwrap(mesh.vertices, mesh.faces, texture_size)
    except UnwrapError as error:
        raise MeshExportError(str(error)) from None
    texture = bake(sampled, mesh.vertices, normals, layout, texture_size)
    return replace(
        mesh, vertices=mesh.vertices[layout.vertex_map], faces=layout.faces, colors=mesh.colors[layout.vertex_map],
        uv=layout.uv, texture=texture,
    )  # fmt: skip


def to_trimesh(mesh: Mesh, up: Literal["z", "y"] = "z", textured: bool = True):
    """The mesh as a trimesh.Trimesh, with its texture (a PBR material: metallic 0, rough) when it has one and
    ``textured``, else vertex colours; ``up="y"`` rotates world z-up to y-up."""
    trimesh = _import("trimesh")
    vertices = mesh.vertices @ Z_UP_TO_Y_UP.T if up == "y" else mesh.vertices
    if textured and mesh.textured:
        from PIL import Image

        material = trimesh.visual.material.PBRMaterial(
            name="albedo", baseColorTexture=Image.fromarray(mesh.texture), metallicFactor=0.0, roughnessFactor=0.9
        )
        visual = trimesh.visual.TextureVisuals(uv=mesh.uv, material=material)
        return trimesh.Trimesh(np.asarray(vertices, np.float64), mesh.faces, visual=visual, process=False)
    alpha = np.full((len(mesh.colors), 1), 255, dtype=np.uint8)
    return trimesh.Trimesh(
        vertices=np.asarray(vertices, dtype=np.float64),
        faces=mesh.faces,
        vertex_colors=np.concatenate([mesh.colors, alpha], axis=1),
        process=False,
    )


def write_mesh(mesh: Mesh, path: Path, format: MeshFormat | None = None) -> list[Path]:
    """Write ``mesh`` as GLB, OBJ or PLY, each file atomically; returns the files written.

    A textured mesh gives a GLB with its texture inside, or an OBJ with a .mtl and a .png of the same stem;
    PLY (and a mesh without texture) keeps colours per vertex ("v x y z r g b" in OBJ). GLB and OBJ are
    written y up (see the module docstring), PLY in the world's z up. ``format`` None takes it from the suffix.
    """
    path = Path(path)
    fmt = (format or path.suffix.lstrip(".")).lower()
    if fmt not in MESH_FORMATS:
        raise MeshExportError(f"unknown mesh format {fmt!r}; choose one of {', '.join(MESH_FORMATS)}")
    if mesh.num_faces < MIN_FACES:
        raise MeshExportError(f"refusing to write a degenerate mesh ({mesh.num_faces} faces)")
    if fmt == "obj" and mesh.textured:
        return _write_textured_obj(mesh, path)
    tm = to_trimesh(mesh, up="z" if fmt == "ply" else "y", textured=fmt == "glb")
    if fmt == "obj":
        data = tm.export(file_type="obj", include_color=True, include_normals=False, include_texture=False)
    else:
        data = tm.export(file_type=fmt)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    if not payload:
        raise MeshExportError(f"trimesh produced an empty {fmt} file")
    return [write_bytes_atomic(path, payload)]


def _write_textured_obj(mesh: Mesh, path: Path) -> list[Path]:
    """OBJ (positions, texture coordinates, faces), its .mtl (a white diffuse colour, so viewers that multiply
    it with the map show the texture as baked) and the texture as .png. The .obj is written last: it names
    the other two, so it never points at a missing file."""
    from PIL import Image

    assert mesh.uv is not None and mesh.texture is not None
    material, image = path.with_suffix(".mtl"), path.with_suffix(".png")
    vertices = mesh.vertices @ Z_UP_TO_Y_UP.T
    lines = [f"mtllib {material.name}", "usemtl albedo"]
    lines += [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in vertices]
    lines += [f"vt {u:.6f} {v:.6f}" for u, v in mesh.uv]
    lines += [f"f {a}/{a} {b}/{b} {c}/{c}" for a, b, c in (mesh.faces + 1)]
    mtl = f"newmtl albedo\nKa 0 0 0\nKd 1 1 1\nKs 0 0 0\nd 1\nillum 1\nmap_Kd {image.name}\n"
    png = io.BytesIO()
    Image.fromarray(mesh.texture).save(png, format="PNG")
    written = [write_bytes_atomic(image, png.getvalue()), write_bytes_atomic(material, mtl.encode("utf-8"))]
    return written + [write_bytes_atomic(path, ("\n".join(lines) + "\n").encode("utf-8"))]


GRID_BYTES_PER_SAMPLE = 28
"""Memory per fine grid point of an extraction, a lower bound: the point itself, its density and its albedo."""


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


def read_mesh(path: Path) -> Mesh:
    """A GLB, OBJ or PLY written by ``write_mesh``, back in world coordinates (z up), with its texture or vertex
    colours (the density level is not stored: ``threshold`` is NaN)."""
    trimesh = _import("trimesh")
    path = Path(path)
    try:
        loaded = trimesh.load(path, force="mesh", process=False)
    except Exception as error:  # noqa: BLE001 - trimesh raises many kinds for a damaged file
        raise MeshExportError(f"cannot read the mesh {path} ({type(error).__name__})") from None
    vertices = np.asarray(loaded.vertices, np.float64)
    if path.suffix.lower() in (".glb", ".obj"):
        vertices = vertices @ Z_UP_TO_Y_UP  # y-up back to the world's z-up
    faces = np.asarray(loaded.faces, np.int64)
    visual = loaded.visual
    uv = texture = None
    if getattr(visual, "kind", None) == "texture" and getattr(visual, "uv", None) is not None:
        material = visual.material
        image = getattr(material, "baseColorTexture", None) or getattr(material, "image", None)
        if image is not None:
            uv, texture = np.asarray(visual.uv, np.float32), np.asarray(image.convert("RGB"))
        colors = np.full((len(vertices), 3), 255, np.uint8)
    else:
        colors = np.asarray(visual.vertex_colors, np.uint8)[:, :3]
    return Mesh(vertices.astype(np.float32), faces, colors, math.nan, uv=uv, texture=texture)
