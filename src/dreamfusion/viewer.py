"""`dreamfusion view RUN_DIR`: a local, interactive viewer of a run, built on viser.

It shows the run's mesh (RUN_DIR/mesh.glb, or one exported to a temporary GLB when the run has none) with
orbit controls, the turntable GIF playing in the side panel, and the run's prompt and metrics (the last line
of metrics.jsonl, and eval.json / eval_clip.json when present).

The server listens on 127.0.0.1 only. viser serves its web client from files inside its wheel
(viser/client/build) and its environment maps from viser/_assets; the page needs nothing from the internet
(tests/test_viewer.py checks every request a headless Chromium makes goes to the local server).
"""

from __future__ import annotations

import base64
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dreamfusion.errors import DreamfusionError
from dreamfusion.files import read_jsonl

# Rotation taking the GLB's y-up coordinates back to the NeRF's z-up world (viser's default up axis):
# +90 degrees about x, as a wxyz quaternion.
_Y_UP_TO_Z_UP_WXYZ = (float(np.cos(np.pi / 4)), float(np.sin(np.pi / 4)), 0.0, 0.0)


class ViewerError(DreamfusionError, RuntimeError):
    """The viewer cannot start (missing viser, not a run directory, port taken); the message is for the user."""


@dataclass
class RunSummary:
    """What the viewer shows beside the 3D view."""

    prompt: str
    metrics: dict | None = None
    evaluations: dict[str, dict] = field(default_factory=dict)
    mesh_note: str | None = None

    def markdown(self) -> str:
        lines = [f"### {self.prompt}"]
        if self.mesh_note:
            lines += ["", f"*{self.mesh_note}*"]
        if self.metrics:
            lines += ["", "**Last metrics**", "", "| key | value |", "| --- | --- |"]
            lines += [f"| {key} | {_fmt(value)} |" for key, value in self.metrics.items()]
        for name, data in self.evaluations.items():
            lines += ["", f"**{name}**", "", "| key | value |", "| --- | --- |"]
            lines += [f"| {key} | {_fmt(value)} |" for key, value in _flatten(data).items()]
        return "\n".join(lines)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def _flatten(data: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}."))
        elif isinstance(value, list):
            out[name] = f"[{len(value)} values]" if len(value) > 4 else value
        else:
            out[name] = value
    return out


def read_summary(run_dir: Path) -> RunSummary:
    """The prompt (config.yaml), the last metrics line and any eval*.json of a run directory."""
    import yaml

    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise ViewerError(f"{run_dir} is not a dreamfusion run (no config.yaml)")
    try:
        prompt = str((yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}).get("prompt", ""))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ViewerError(f"cannot read {config_path}: {str(error).splitlines()[0]}") from None
    metrics = None
    records = read_jsonl(run_dir / "metrics.jsonl").records  # complete lines only: a run being written may end mid-line
    if records:
        metrics = records[-1]
    evaluations = {}
    for path in sorted(run_dir.glob("eval*.json")):
        try:
            evaluations[path.name] = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, OSError):
            continue
    return RunSummary(prompt=prompt or "(no prompt)", metrics=metrics, evaluations=evaluations)


def _mesh_bytes(run_dir: Path, device: str, resolution: int) -> tuple[bytes | None, str | None]:
    """The run's mesh.glb, or a GLB exported to a temporary file; (None, why) when there is no mesh."""
    existing = run_dir / "mesh.glb"
    if existing.is_file():
        return existing.read_bytes(), None
    if not (run_dir / "checkpoint.pt").is_file():
        return None, "no checkpoint.pt: nothing to show in 3D"
    from dreamfusion.export.mesh import MeshExportConfig, MeshExportError
    from dreamfusion.run import RunError, export_run

    with tempfile.TemporaryDirectory(prefix="dreamfusion-view-") as tmp:
        try:
            (path,) = export_run(
                run_dir, "glb", device=device, out=Path(tmp) / "mesh.glb", config=MeshExportConfig(resolution=resolution)
            )
        except (MeshExportError, RunError) as error:
            return None, f"no mesh: {error}"
        return path.read_bytes(), f"mesh exported at resolution {resolution} (not saved; see `dreamfusion export`)"


def serve(
    run_dir: Path,
    port: int = 8080,
    block: bool = True,
    host: str = "127.0.0.1",
    device: str = "auto",
    mesh_resolution: int = 128,
    verbose: bool = False,
):
    """Start the viewer for ``run_dir`` on http://host:port and return the viser.ViserServer.

    With ``block`` it serves until Ctrl-C and then stops the server. Without, the caller stops it with
    ``server.stop()``.
    """
    try:
        import viser
    except ImportError:
        raise ViewerError("the viewer needs viser: pip install viser==1.1.1") from None
    run_dir = Path(run_dir)
    summary = read_summary(run_dir)
    glb, note = _mesh_bytes(run_dir, device, mesh_resolution)
    summary.mesh_note = note
    try:
        server = viser.ViserServer(host=host, port=port, label=f"dreamfusion: {summary.prompt}", verbose=verbose)
    except OSError as error:
        raise ViewerError(f"cannot listen on {host}:{port}: {error.strerror}; pass another --port") from None

    server.scene.set_up_direction("+z")
    server.initial_camera.position = (1.6, -1.6, 1.0)
    server.initial_camera.look_at = (0.0, 0.0, 0.0)
    server.scene.add_grid("/ground", width=2.8, height=2.8, cell_size=0.2, position=(0.0, 0.0, -1.0))
    if glb is not None:
        server.scene.add_glb("/mesh", glb, wxyz=_Y_UP_TO_Z_UP_WXYZ)

    server.gui.add_markdown(summary.markdown())
    gif = run_dir / "turntable.gif"
    preview = run_dir / "preview.png"
    if gif.is_file():
        # The browser plays the GIF itself (an <img> with a data: URI: nothing fetched, nothing streamed).
        # Pushing frames from Python instead (GuiImageHandle.image at 10 fps) trips React's "maximum update
        # depth" error in viser 1.1.1's client.
        encoded = base64.b64encode(gif.read_bytes()).decode("ascii")
        server.gui.add_html(
            f'<img alt="turntable" src="data:image/gif;base64,{encoded}" '
            'style="width:100%;image-rendering:pixelated;display:block" />'
        )
    if preview.is_file():
        from PIL import Image

        with Image.open(preview) as image:
            server.gui.add_image(np.asarray(image.convert("RGB")), label="preview")

    if block:
        run_until_interrupted(server)
    return server


def run_until_interrupted(server) -> None:
    """Keep serving until Ctrl-C, then stop the server."""
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
