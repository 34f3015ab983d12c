"""Mesh export: marching cubes on analytic fields, cleanup, the three file formats, errors, glTF validity."""

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
from torch import nn

from dreamfusion.field import FieldConfig, FieldOutput

pytest.importorskip("skimage", reason="mesh export needs scikit-image")
trimesh = pytest.importorskip("trimesh", reason="mesh export needs trimesh")

from dreamfusion.export.mesh import (  # noqa: E402
    Mesh, MeshExportConfig, MeshExportError, export_run, extract_mesh, to_trimesh, write_mesh,
)  # fmt: skip

REPO = Path(__file__).resolve().parents[2]
RED, BLUE = (0.9, 0.1, 0.1), (0.1, 0.2, 0.9)


class BallsField(nn.Module):
    """Balls of given centres and radii: density 20 * exp(10 * (r - distance)) (20 exactly on the surface,
    smooth, positive); albedo red where x > 0 and blue elsewhere."""

    def __init__(self, balls: list[tuple[tuple[float, float, float], float]], scale: float = 1.0) -> None:
        super().__init__()
        self.config = FieldConfig()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.centres = torch.tensor([centre for centre, _ in balls])
        self.radii = torch.tensor([radius for _, radius in balls])
        self.scale = scale

    def density(self, x: torch.Tensor) -> torch.Tensor:
        distance = (x[:, None, :] - self.centres[None]).norm(dim=-1)  # N B
        return self.scale * 20 * torch.exp(10 * (self.radii[None] - distance)).amax(dim=1) + 0 * self.anchor

    def forward(self, x: torch.Tensor, with_normals: bool = False) -> FieldOutput:
        albedo = torch.where(x[:, :1] > 0, torch.tensor(RED), torch.tensor(BLUE))
        normals = None
        if with_normals:  # outward from the nearest centre
            nearest = (x[:, None, :] - self.centres[None]).norm(dim=-1).argmin(dim=1)
            normals = torch.nn.functional.normalize(x - self.centres[nearest], dim=-1)
        return FieldOutput(self.density(x), albedo, normals)


SPHERE = [((0.0, 0.0, 0.0), 0.6)]


def test_sphere_gives_a_closed_mesh_of_the_right_radius_and_colours() -> None:
    mesh = extract_mesh(BallsField(SPHERE), MeshExportConfig(resolution=64, threshold=20.0))
    assert mesh.threshold == 20.0
    tm = to_trimesh(mesh)
    assert tm.is_watertight
    assert tm.volume > 0  # faces wound counter-clockwise from outside: normals point out
    radii = np.linalg.norm(mesh.vertices, axis=1)
    assert np.abs(radii / 0.6 - 1).max() < 0.02
    assert abs(tm.volume / (4 / 3 * math.pi * 0.6**3) - 1) < 0.02
    red = (np.array(RED) * 255 + 0.5).astype(np.uint8)
    blue = (np.array(BLUE) * 255 + 0.5).astype(np.uint8)
    assert (mesh.colors[mesh.vertices[:, 0] > 0.01] == red).all()
    assert (mesh.colors[mesh.vertices[:, 0] < -0.01] == blue).all()


def test_automatic_threshold_is_half_opacity_of_one_render_sample() -> None:
    config = MeshExportConfig(resolution=32)
    assert config.level(1.4) == pytest.approx(math.log(2) / (2 * 1.4 / 64))
    mesh = extract_mesh(BallsField(SPHERE), config)
    assert mesh.threshold == pytest.approx(config.level(1.4))
    # Level 15.8 < 20 lies just outside the r = 0.6 surface: 0.6 + ln(20 / 15.8) / 10.
    expected = 0.6 + math.log(20 / config.level(1.4)) / 10
    assert abs(np.linalg.norm(mesh.vertices, axis=1).mean() / expected - 1) < 0.02


def test_floaters_are_dropped() -> None:
    field = BallsField([((0.0, 0.0, 0.0), 0.5), ((0.9, 0.0, 0.6), 0.08)])
    kept = extract_mesh(field, MeshExportConfig(resolution=48, threshold=20.0))
    assert to_trimesh(kept).body_count == 1 and np.linalg.norm(kept.vertices, axis=1).max() < 0.55
    both = extract_mesh(field, MeshExportConfig(resolution=48, threshold=20.0, min_component_fraction=0.0))
    assert to_trimesh(both).body_count == 2
    largest = extract_mesh(field, MeshExportConfig(resolution=48, threshold=20.0, min_component_fraction=0.0, keep_largest=True))
    assert largest.num_faces == kept.num_faces


@pytest.mark.parametrize("fmt", ["glb", "obj", "ply"])
def test_formats_reload_in_trimesh_upright(fmt: str, tmp_path: Path) -> None:
    mesh = extract_mesh(BallsField([((0.0, 0.0, 0.3), 0.4)]), MeshExportConfig(resolution=40, threshold=20.0))
    path = write_mesh(mesh, tmp_path / f"mesh.{fmt}")
    assert path.is_file() and not list(tmp_path.glob(".*tmp*"))
    loaded = trimesh.load(path, force="mesh", process=False)
    assert len(loaded.faces) == mesh.num_faces
    centre = loaded.bounds.mean(axis=0)
    # World z-up for PLY; y-up (world z -> +y) for GLB and OBJ.
    up = 2 if fmt == "ply" else 1
    assert centre[up] == pytest.approx(0.3, abs=0.02)
    assert np.abs(np.delete(centre, up)).max() < 0.02
    colours = np.asarray(loaded.visual.vertex_colors)[:, :3]
    assert {tuple(c) for c in colours} <= {tuple((np.array(c) * 255 + 0.5).astype(np.uint8)) for c in (RED, BLUE)}


def test_empty_field_raises_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(MeshExportError, match="the field is empty"):
        extract_mesh(BallsField(SPHERE, scale=1e-4), MeshExportConfig(resolution=16, threshold=20.0))
    with pytest.raises(MeshExportError, match="denser than the surface level"):
        extract_mesh(BallsField(SPHERE, scale=1e12), MeshExportConfig(resolution=16, threshold=20.0))
    tiny = Mesh(np.zeros((3, 3), np.float32), np.array([[0, 1, 2]]), np.zeros((3, 3), np.uint8), 1.0)
    with pytest.raises(MeshExportError, match="degenerate"):
        write_mesh(tiny, tmp_path / "tiny.glb")
    with pytest.raises(MeshExportError, match="unknown mesh format"):
        write_mesh(tiny, tmp_path / "mesh.stl")

    # export_run on a run whose field is empty: an error, and no file at all in the run directory.
    import dreamfusion.run
    from dreamfusion.export.video import Scene

    class _Config:
        class renderer:  # noqa: N801 - stands in for RendererConfig
            num_samples = 64

    scene = Scene(BallsField(SPHERE, scale=0.0), None, None, None)  # type: ignore[arg-type]
    monkeypatch.setattr(dreamfusion.run, "load_scene", lambda run_dir, device: (_Config, scene))
    (tmp_path / "config.yaml").write_text("prompt: a ball\n")
    with pytest.raises(MeshExportError, match="empty"):
        export_run(tmp_path, "glb", resolution=16, device="cpu")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "config.yaml"]  # no mesh, no temporary file


def test_bad_config_values() -> None:
    for bad in ({"resolution": 4}, {"threshold": 0.0}, {"threshold": float("nan")}, {"min_component_fraction": 2.0}):
        with pytest.raises(ValueError):
            MeshExportConfig(**bad)  # type: ignore[arg-type]


def _validator_prefix() -> Path:
    return Path(os.environ.get("GLTF_VALIDATOR_PREFIX", REPO / ".node"))


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed (the glTF validator is a JS library)")
def test_glb_passes_the_khronos_gltf_validator(tmp_path: Path) -> None:
    modules = _validator_prefix() / "node_modules"
    if not (modules / "gltf-validator").is_dir():
        pytest.skip(f"gltf-validator not installed: npm install --prefix {_validator_prefix()} gltf-validator@2.0.0-dev.3.10")
    mesh = extract_mesh(BallsField(SPHERE), MeshExportConfig(resolution=32, threshold=20.0))
    path = write_mesh(mesh, tmp_path / "mesh.glb")
    result = subprocess.run(
        ["node", str(REPO / "tests" / "gltf_validate.cjs"), str(path)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "NODE_PATH": str(modules)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["numErrors"] == 0, report["errors"]


def test_decimation_reduces_faces_and_keeps_colours() -> None:
    pytest.importorskip("fast_simplification", reason="decimation needs fast-simplification")
    full = extract_mesh(BallsField(SPHERE), MeshExportConfig(resolution=48, threshold=20.0))
    mesh = extract_mesh(BallsField(SPHERE), MeshExportConfig(resolution=48, threshold=20.0, decimate_faces=500))
    assert mesh.num_faces <= 600 < full.num_faces
    assert np.abs(np.linalg.norm(mesh.vertices, axis=1) / 0.6 - 1).max() < 0.05
    assert len(mesh.colors) == len(mesh.vertices)
    assert (mesh.colors[mesh.vertices[:, 0] > 0.05] == (np.array(RED) * 255 + 0.5).astype(np.uint8)).all()


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
    from dreamfusion.export.video import PANELS, Scene, render_panels
    from dreamfusion.renderer import RendererConfig
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
