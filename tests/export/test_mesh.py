"""Mesh export: the surface the renders show on analytic fields, colours from the visible surface, UV texture
baking, cleanup, the three file formats, errors, glTF validity."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("skimage", reason="mesh export needs scikit-image")
trimesh = pytest.importorskip("trimesh", reason="mesh export needs trimesh")

from export_fields import BLUE, GREEN, RED, AnalyticField, BallsField, SoftBall  # noqa: E402

from dreamfusion.export.mesh import (  # noqa: E402
    Mesh,
    MeshExportConfig,
    MeshExportError,
    extract_mesh,
    read_mesh,
    to_trimesh,
    write_mesh,
)  # fmt: skip

REPO = Path(__file__).resolve().parents[2]


def _bytes(colour: tuple[float, float, float]) -> np.ndarray:
    return (np.array(colour) * 255 + 0.5).astype(np.uint8)


SPHERE = [((0.0, 0.0, 0.0), 0.6)]
VERTEX = {"vertex_colors": True}


def test_sphere_gives_a_closed_mesh_of_the_right_radius_and_colours() -> None:
    mesh = extract_mesh(BallsField(SPHERE), MeshExportConfig(resolution=64, threshold=20.0, **VERTEX))
    assert mesh.threshold == 20.0 and not mesh.textured
    tm = to_trimesh(mesh)
    assert tm.is_watertight
    assert tm.volume > 0  # faces wound counter-clockwise from outside: normals point out
    radii = np.linalg.norm(mesh.vertices, axis=1)
    assert np.abs(radii / 0.6 - 1).max() < 0.02
    assert abs(tm.volume / (4 / 3 * math.pi * 0.6**3) - 1) < 0.02
    assert _close(mesh.colors[mesh.vertices[:, 0] > 0.1], RED) and _close(mesh.colors[mesh.vertices[:, 0] < -0.1], BLUE)


def _close(colours: np.ndarray, colour: tuple[float, float, float], tolerance: int = 3) -> bool:
    """Every colour within ``tolerance`` (of 255) of ``colour``: composited albedo is rounded once more."""
    return len(colours) > 0 and bool(np.abs(colours.astype(int) - _bytes(colour)).max() <= tolerance)


def test_a_soft_ball_below_any_fixed_level_gives_its_true_radius() -> None:
    # Peak density 10: below the old automatic level (15.8), which found no surface at all.
    mesh = extract_mesh(SoftBall(peak=10.0), MeshExportConfig(resolution=128, **VERTEX))
    radii = np.linalg.norm(mesh.vertices, axis=1)
    assert abs(radii.mean() / 0.5 - 1) < 0.02 and np.abs(radii / 0.5 - 1).max() < 0.05
    assert 0 < mesh.threshold < 10.0 and mesh.outline_iou is not None and mesh.outline_iou > 0.95
    assert to_trimesh(mesh).is_watertight


@pytest.mark.slow
def test_a_solid_in_coloured_haze_takes_its_colours_from_the_solid() -> None:
    # A thin blue haze (transparent: optical depth 0.3 across it) around a red ball.
    field = SoftBall(peak=200.0, radius=0.4, haze=0.15, inside=RED, outside=BLUE)
    for config in (MeshExportConfig(resolution=128, **VERTEX), MeshExportConfig(resolution=128, texture_size=128)):
        mesh = extract_mesh(field, config)
        assert abs(np.linalg.norm(mesh.vertices, axis=1).mean() / 0.4 - 1) < 0.03  # the ball, not the haze
        colours = mesh.texture.reshape(-1, 3) if mesh.textured else mesh.colors
        assert np.abs(colours.astype(int) - _bytes(RED)).max() <= 6, colours.mean(0)


def test_two_hemispheres_bake_into_the_texture_without_seam_bleed() -> None:
    field = SoftBall(peak=100.0, inside=RED, outside=RED, below=GREEN)
    mesh = extract_mesh(field, MeshExportConfig(resolution=64, texture_size=256))
    assert mesh.textured and mesh.texture.shape == (256, 256, 3) and mesh.uv.shape == (len(mesh.vertices), 2)
    assert (mesh.texture.astype(int).sum(axis=-1) > 200).all()  # dilation left no empty (black) texel anywhere
    # Every vertex sits on a chart's edge or inside one: sampled bilinearly there, the texture must give its
    # hemisphere's colour, with nothing of the space between charts mixed in.
    size = mesh.texture.shape[0]
    x, y = mesh.uv[:, 0] * size - 0.5, (1 - mesh.uv[:, 1]) * size - 0.5
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]

    def texel(yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        return mesh.texture[np.clip(yy, 0, size - 1), np.clip(xx, 0, size - 1)].astype(float)

    sampled = ((1 - fy) * ((1 - fx) * texel(y0, x0) + fx * texel(y0, x0 + 1))
               + fy * ((1 - fx) * texel(y0 + 1, x0) + fx * texel(y0 + 1, x0 + 1)))  # fmt: skip
    z = mesh.vertices[:, 2]
    assert np.abs(sampled[z > 0.06] - _bytes(RED)).max() <= 8
    assert np.abs(sampled[z < -0.06] - _bytes(GREEN)).max() <= 8
    # The vertex colours agree with the texture.
    assert _close(mesh.colors[z > 0.06], RED) and _close(mesh.colors[z < -0.06], GREEN)


def test_floaters_are_dropped() -> None:
    field = BallsField([((0.0, 0.0, 0.0), 0.5), ((0.9, 0.0, 0.6), 0.08)])
    kept = extract_mesh(field, MeshExportConfig(resolution=48, threshold=20.0, **VERTEX))
    assert to_trimesh(kept).body_count == 1 and np.linalg.norm(kept.vertices, axis=1).max() < 0.55
    both = extract_mesh(field, MeshExportConfig(resolution=48, threshold=20.0, min_component_fraction=0.0, **VERTEX))
    assert to_trimesh(both).body_count == 2
    largest = extract_mesh(
        field, MeshExportConfig(resolution=48, threshold=20.0, min_component_fraction=0.0, keep_largest=True, **VERTEX)
    )
    assert largest.num_faces == kept.num_faces


def test_a_sealed_cavity_and_a_pinhole_are_closed() -> None:
    class Shell(AnalyticField):
        """A hollow ball (a shell 0.5 to 0.6) with a hole of one grid step through its wall on the +x axis."""

        def density(self, x: torch.Tensor) -> torch.Tensor:
            r = x.norm(dim=-1)
            wall = ((r > 0.5) & (r < 0.6)).float() * 50.0
            pinhole = (x[:, 0] > 0) & (x[:, 1:].norm(dim=-1) < 0.015)
            return wall.masked_fill(pinhole, 0.0) + 0 * self.anchor

        def albedo(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tensor(RED).expand(x.shape[0], 3)

    mesh = extract_mesh(Shell(), MeshExportConfig(resolution=64, threshold=25.0, **VERTEX))
    tm = to_trimesh(mesh)
    assert tm.is_watertight and tm.body_count == 1  # no inner shell, no tunnel through the wall
    assert np.linalg.norm(mesh.vertices, axis=1).min() > 0.55


@pytest.mark.parametrize("fmt", ["glb", "obj", "ply"])
@pytest.mark.parametrize("textured", [True, False])
def test_formats_reload_upright_with_their_colours(fmt: str, textured: bool, tmp_path: Path) -> None:
    config = MeshExportConfig(resolution=40, threshold=20.0, texture_size=64, vertex_colors=not textured)
    mesh = extract_mesh(BallsField([((0.0, 0.0, 0.3), 0.4)]), config)
    paths = write_mesh(mesh, tmp_path / f"mesh.{fmt}")
    names = sorted(path.name for path in paths)
    expected = ["mesh.mtl", "mesh.obj", "mesh.png"] if fmt == "obj" and textured else [f"mesh.{fmt}"]
    assert names == expected and sorted(p.name for p in tmp_path.iterdir()) == expected  # no temporary files
    loaded = trimesh.load(tmp_path / f"mesh.{fmt}", force="mesh", process=False)
    assert len(loaded.faces) == mesh.num_faces
    centre = loaded.bounds.mean(axis=0)
    # World z-up for PLY; y-up (world z -> +y) for GLB and OBJ.
    up = 2 if fmt == "ply" else 1
    assert centre[up] == pytest.approx(0.3, abs=0.02)
    assert np.abs(np.delete(centre, up)).max() < 0.02
    back = read_mesh(tmp_path / f"mesh.{fmt}")
    assert np.abs(back.vertices.mean(0) - mesh.vertices.mean(0)).max() < 1e-4  # z-up again
    if textured and fmt != "ply":
        assert loaded.visual.kind == "texture" and np.array_equal(back.texture, mesh.texture)
        assert np.abs(back.uv - mesh.uv).max() < 1e-5
    else:
        colours = np.asarray(loaded.visual.vertex_colors)[:, :3]
        x = mesh.vertices[:, 0]
        assert _close(colours[x > 0.1], RED) and _close(colours[x < -0.1], BLUE)


def test_textured_obj_material_shows_the_texture_as_baked(tmp_path: Path) -> None:
    mesh = extract_mesh(BallsField(SPHERE), MeshExportConfig(resolution=32, threshold=20.0, texture_size=32))
    write_mesh(mesh, tmp_path / "chair.obj")
    mtl = (tmp_path / "chair.mtl").read_text()
    assert "map_Kd chair.png" in mtl and "Kd 1 1 1" in mtl  # a white diffuse colour does not tint the map
    assert (tmp_path / "chair.obj").read_text().startswith("mtllib chair.mtl\n")


def test_empty_field_raises_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(MeshExportError, match="the field is empty at --threshold 20"):
        extract_mesh(BallsField(SPHERE, scale=1e-4), MeshExportConfig(resolution=16, threshold=20.0))
    with pytest.raises(MeshExportError, match="the field is empty: the field renders nothing opaque"):
        extract_mesh(BallsField(SPHERE, scale=1e-9), MeshExportConfig(resolution=16))
    tiny = Mesh(np.zeros((3, 3), np.float32), np.array([[0, 1, 2]]), np.zeros((3, 3), np.uint8), 1.0)
    with pytest.raises(MeshExportError, match="degenerate"):
        write_mesh(tiny, tmp_path / "tiny.glb")
    with pytest.raises(MeshExportError, match="unknown mesh format"):
        write_mesh(tiny, tmp_path / "mesh.stl")

    # export_run on a run whose field is empty: an error, and no mesh file in the run directory.
    import dreamfusion.run
    from dreamfusion.run import export_run
    from dreamfusion.scene import Scene

    scene = Scene(BallsField(SPHERE, scale=0.0), None, None, None)  # type: ignore[arg-type]
    monkeypatch.setattr(dreamfusion.run, "load_scene", lambda run_dir, device: (None, scene))
    (tmp_path / "config.yaml").write_text("prompt: a ball\n")
    with pytest.raises(MeshExportError, match="empty"):
        export_run(tmp_path, "glb", device="cpu", config=MeshExportConfig(resolution=16))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "config.yaml"]  # no mesh, no temporary file


def test_bad_config_values() -> None:
    for bad in ({"resolution": 4}, {"threshold": 0.0}, {"threshold": float("nan")}, {"min_component_fraction": 2.0},
                {"texture_size": 8}, {"texture_size": 100000}, {"decimate_faces": 3}):  # fmt: skip
        with pytest.raises(ValueError):
            MeshExportConfig(**bad)  # type: ignore[arg-type]


def _validator_prefix() -> Path:
    return Path(os.environ.get("GLTF_VALIDATOR_PREFIX", REPO / ".node"))


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed (the glTF validator is a JS library)")
@pytest.mark.parametrize("textured", [True, False])
def test_glb_passes_the_khronos_gltf_validator(textured: bool, tmp_path: Path) -> None:
    modules = _validator_prefix() / "node_modules"
    if not (modules / "gltf-validator").is_dir():
        pytest.skip(f"gltf-validator not installed: npm install --prefix {_validator_prefix()} gltf-validator@2.0.0-dev.3.10")
    config = MeshExportConfig(resolution=32, threshold=20.0, texture_size=64, vertex_colors=not textured)
    (path,) = write_mesh(extract_mesh(BallsField(SPHERE), config), tmp_path / "mesh.glb")
    result = subprocess.run(
        ["node", str(REPO / "tests" / "gltf_validate.cjs"), str(path)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "NODE_PATH": str(modules)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["numErrors"] == 0, report["errors"]
    if textured:
        document = trimesh.load(path)
        material = next(iter(document.geometry.values())).visual.material
        assert material.baseColorTexture is not None and material.metallicFactor == 0.0


def test_decimation_reduces_faces_and_keeps_colours() -> None:
    pytest.importorskip("fast_simplification", reason="decimation needs fast-simplification")
    full = extract_mesh(BallsField(SPHERE), MeshExportConfig(resolution=48, threshold=20.0, **VERTEX))
    mesh = extract_mesh(BallsField(SPHERE), MeshExportConfig(resolution=48, threshold=20.0, decimate_faces=500, **VERTEX))
    assert mesh.num_faces <= 600 < full.num_faces
    assert np.abs(np.linalg.norm(mesh.vertices, axis=1) / 0.6 - 1).max() < 0.05
    assert len(mesh.colors) == len(mesh.vertices)
    assert _close(mesh.colors[mesh.vertices[:, 0] > 0.1], RED)
    # A textured mesh is simplified before unwrapping, to texture_faces by default.
    textured = extract_mesh(BallsField(SPHERE), MeshExportConfig(resolution=48, threshold=20.0, texture_faces=400, texture_size=64))
    assert textured.num_faces <= 480 and textured.textured


# Turntable panels (export/video.py), kept here beside the other export tests.


def test_parse_panels() -> None:
    from dreamfusion.export.video import DEFAULT_PANELS, PANELS, parse_panels

    assert parse_panels(None) == parse_panels(" ") == DEFAULT_PANELS
    assert parse_panels("normals, Depth,normals") == ("normals", "depth")
    assert parse_panels(",".join(PANELS)) == PANELS
    with pytest.raises(ValueError, match="unknown panel 'shiny'"):
        parse_panels("albedo,shiny")


def test_every_panel_renders_and_depth_is_consistent_across_chunks() -> None:
    from dreamfusion.cameras import TurntableConfig, turntable_cameras
    from dreamfusion.export.video import PANELS, render_panels
    from dreamfusion.renderer import RendererConfig
    from dreamfusion.scene import Scene
    from dreamfusion.shading import Background, BackgroundConfig, ShadingConfig

    field = BallsField([((0.0, 0.0, 0.0), 0.4)], scale=10.0)
    scene = Scene(field, Background(BackgroundConfig()), RendererConfig(num_samples=48), ShadingConfig())
    cameras = turntable_cameras(TurntableConfig(frames=3, resolution=16))
    frames = render_panels(scene, cameras, PANELS, max_rays=16 * 16)  # one camera per chunk
    assert frames.shape == (3, 16, 16 * len(PANELS), 3) and frames.dtype == np.uint8
    depth = frames[..., 16 * PANELS.index("depth") : 16 * (PANELS.index("depth") + 1), :]
    # A ball centred on the orbit looks the same from every azimuth: the same depth image in every chunk.
    assert np.abs(depth.astype(int) - depth[:1].astype(int)).max() <= 2
    assert depth[:, 8, 8].min() > depth[:, 0, 0].max()  # the ball's front is brighter than the empty corner
    with pytest.raises(ValueError, match="panels"):
        render_panels(scene, cameras, ("shiny",))  # type: ignore[arg-type]
