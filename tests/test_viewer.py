"""The viewer in a real browser: headless Chromium driven through the Chrome DevTools Protocol.

Checks that the page loads without console errors or uncaught exceptions, that every request stays on the
local server (viser's client comes from its wheel, nothing from a CDN), and that the 3D canvas shows
something. The screenshot is kept as tests/artifacts/viewer.png.

Needs Debian's chromium (apt-get install -y chromium) and viser; skipped without them.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import TINY_OVERRIDES
from PIL import Image
from typer.testing import CliRunner

CHROMIUM = next((path for name in ("chromium", "chromium-browser") if (path := shutil.which(name))), None)
ARTIFACTS = Path(__file__).parent / "artifacts"
SETTLE_S = 8.0
"""Seconds the page gets after its load event, for the websocket scene and software WebGL to draw."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class DevTools:
    """A minimal Chrome DevTools Protocol client over one page's websocket."""

    def __init__(self, url: str) -> None:
        from websockets.sync.client import connect

        self.socket = connect(url, max_size=None, open_timeout=10)
        self.events: list[dict] = []
        self._next_id = 0

    def call(self, method: str, timeout: float = 30.0, **params) -> dict:
        self._next_id += 1
        call_id = self._next_id
        self.socket.send(json.dumps({"id": call_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(self.socket.recv(timeout=max(0.1, deadline - time.monotonic())))
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def pump(self, seconds: float) -> None:
        """Collect events for ``seconds``."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                self.events.append(json.loads(self.socket.recv(timeout=left)))
            except TimeoutError:
                return

    def wait_for(self, method: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not any(event.get("method") == method for event in self.events):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                self.events.append(json.loads(self.socket.recv(timeout=left)))
            except TimeoutError:
                return False
        return True

    def close(self) -> None:
        self.socket.close()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dreamfusion.cli import app

    root = tmp_path_factory.mktemp("viewer")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump({k: v for k, v in TINY_OVERRIDES.items() if k not in ("device", "prior")}))
    out = root / "run"
    args = ["generate", "a red ball", "--prior", "analytic", "--config", str(config), "--iters", "2", "--out", str(out), "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (out / "eval.json").write_text(json.dumps({"clip_r_precision": {"color": 0.5}}))
    return out


def _errors(events: list[dict]) -> list[str]:
    errors = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            errors.append(f"exception: {details.get('exception', {}).get('description') or details.get('text')}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            errors.append("console: " + " ".join(str(arg.get("value", arg.get("description", ""))) for arg in params.get("args", [])))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            errors.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}")
        elif method == "Network.loadingFailed" and not params.get("canceled"):
            errors.append(f"network: {params.get('errorText')}")
    return errors


def _remote_requests(events: list[dict], port: int) -> list[str]:
    local = (f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}", "data:", "blob:", "about:")
    urls = [event["params"]["request"]["url"] for event in events if event.get("method") == "Network.requestWillBeSent"]
    urls += [event["params"]["url"] for event in events if event.get("method") == "Network.webSocketCreated"]
    return [url for url in urls if not url.startswith(local)]


def _centre_is_green(png: bytes) -> bool:
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    h, w = image.shape[0] // 2, image.shape[1] // 2
    red, green, blue = image[h - 10 : h + 10, w - 10 : w + 10].reshape(-1, 3).mean(axis=0)
    return green > red + 40 and green > blue + 40


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")
def test_viewer_page_renders_the_run_in_headless_chromium(run_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("viser", reason="the viewer needs viser")
    pytest.importorskip("websockets", reason="the DevTools client needs websockets")
    from dreamfusion.export.mesh import read_mesh, write_mesh
    from dreamfusion.viewer import serve

    # The run's mesh.glb with its texture painted green: the viewer must show the texture, not a plain mesh.
    shown = tmp_path / "run"
    shutil.copytree(run_dir, shown)
    mesh = read_mesh(shown / "mesh.glb")
    assert mesh.textured
    mesh.texture = np.full_like(mesh.texture, (20, 200, 40))
    write_mesh(mesh, shown / "mesh.glb")
    port = _free_port()
    server = serve(shown, port=port, block=False, device="cpu", mesh_resolution=48)
    profile = tmp_path / "profile"
    browser = subprocess.Popen(
        [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
            "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--disable-extensions", f"--user-data-dir={profile}", "--window-size=800,600",
            "--remote-debugging-port=0", "--remote-allow-origins=*", "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    devtools = None
    try:
        active = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 20
        while not (active.is_file() and active.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert active.is_file(), "chromium did not open its DevTools port"
        debug_port = int(active.read_text().splitlines()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{debug_port}/json/list", timeout=10) as response:
            targets = json.load(response)
        page = next(target for target in targets if target.get("type") == "page")
        devtools = DevTools(page["webSocketDebuggerUrl"])
        for domain in ("Runtime", "Log", "Network", "Page"):
            devtools.call(f"{domain}.enable")
        url = f"http://127.0.0.1:{port}/"
        devtools.call("Page.navigate", url=url)
        assert devtools.wait_for("Page.loadEventFired", timeout=20), "the page did not finish loading"
        devtools.pump(SETTLE_S)
        # A loaded machine draws the scene late: look again until the mesh shows (or give up after 30 s).
        deadline = time.monotonic() + 30
        while True:
            png = base64.b64decode(devtools.call("Page.captureScreenshot", format="png")["data"])
            if _centre_is_green(png) or time.monotonic() > deadline:
                break
            devtools.pump(1.0)
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "viewer.png").write_bytes(png)

        assert _errors(devtools.events) == []
        assert _remote_requests(devtools.events, port) == []
        image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
        # The 3D canvas: the left part of the window, below the notification corner, beside the GUI panel.
        canvas = image[image.shape[0] // 4 :, : image.shape[1] // 2]
        colours = np.unique(canvas.reshape(-1, 3), axis=0)
        background = np.median(canvas.reshape(-1, 3), axis=0)
        differs = (np.abs(canvas.astype(int) - background).sum(-1) > 30).mean()
        assert len(colours) > 50, f"the canvas looks blank ({len(colours)} colours)"
        assert differs > 0.01, f"only {differs:.1%} of the canvas differs from its background"
        # The camera looks at the origin, where the object is: the middle of the window shows the mesh.
        h, w = image.shape[0] // 2, image.shape[1] // 2
        centre = image[h - 10 : h + 10, w - 10 : w + 10].reshape(-1, 3).astype(int)
        assert (np.abs(centre - background).sum(-1) > 30).mean() > 0.9, "no mesh at the centre of the view"
        red, green, blue = centre.mean(axis=0)
        assert green > red + 40 and green > blue + 40, f"the mesh is not drawn with its (green) texture: {centre.mean(axis=0)}"
    finally:
        if devtools is not None:
            devtools.close()
        browser.terminate()
        try:
            browser.wait(timeout=10)
        except subprocess.TimeoutExpired:
            browser.kill()
        server.stop()


def test_read_summary_reports_prompt_metrics_and_eval(run_dir: Path) -> None:
    from dreamfusion.viewer import read_summary

    summary = read_summary(run_dir)
    assert summary.prompt == "a red ball"
    assert summary.metrics is not None and "step" in summary.metrics
    assert summary.evaluations["eval.json"]["clip_r_precision"]["color"] == 0.5
    assert "a red ball" in summary.markdown() and "clip_r_precision.color" in summary.markdown()
