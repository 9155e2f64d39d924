"""`clusterlab serve`: the UI in a real (headless) Chromium, attached to a session's running host."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import CLUSTERLAB, run_cli

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH (apt-get install chromium)")
pytest.importorskip("textual_serve", reason="the serve extra is not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, what: str, timeout: float = 60.0):
    """Poll `condition` until it returns something true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.1)
    return found


def accepts(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class Browser:
    """Headless Chromium driven over the DevTools protocol (aiohttp's websocket client): it loads a page, keeps
    what the page's websockets receive, and takes screenshots."""

    def __init__(self, profile: Path) -> None:
        self.process = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--window-size=1280,720",
             "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.endpoint = wait_until(self._devtools_port, "Chromium's DevTools port", 30)

    def _devtools_port(self) -> str | None:
        line = self.process.stderr.readline()
        assert line or self.process.poll() is None, "Chromium exited before it listened"
        return line.split("listening on ")[1].strip() if "DevTools listening on ws://" in line else None

    def close(self) -> None:
        self.process.kill()
        self.process.wait()

    async def watch(self, url: str, drawn) -> tuple[bytes, bytes]:
        """Load `url` until `drawn(frames, screenshot)` holds: (what the page's websockets received, the PNG)."""
        import aiohttp

        async with aiohttp.ClientSession() as http:
            # the browser's endpoint and a flat session on a page of our own: unlike the page's own endpoint, it
            # stays attached when loading the page moves it to another renderer process
            async with http.ws_connect(self.endpoint, max_msg_size=0) as cdp:
                calls = iter(range(1, 10**6))
                frames = bytearray()
                session: dict = {}

                async def call(method: str, **params) -> dict | None:
                    """The command's result; None for a page between two documents, which has none to give."""
                    number = next(calls)
                    await cdp.send_json({"id": number, "method": method, "params": params, **session})
                    while True:
                        message = json.loads((await cdp.receive()).data)
                        if message.get("method") == "Network.webSocketFrameReceived":
                            response = message["params"]["response"]
                            data = response["payloadData"]
                            frames.extend(base64.b64decode(data) if response["opcode"] == 2 else data.encode())
                        elif message.get("id") == number:
                            if "Not attached to an active page" in message.get("error", {}).get("message", ""):
                                return None
                            assert "result" in message, f"{method}: {message}"
                            return message["result"]

                target = (await call("Target.createTarget", url="about:blank"))["targetId"]
                session["sessionId"] = (await call("Target.attachToTarget", targetId=target, flatten=True))[
                    "sessionId"]
                await call("Network.enable")
                await call("Page.navigate", url=url)
                deadline = time.monotonic() + 60
                while True:
                    taken = await call("Page.captureScreenshot", format="png")
                    shot = base64.b64decode(taken["data"]) if taken else b""
                    if shot and drawn(bytes(frames), shot):
                        return bytes(frames), shot
                    assert time.monotonic() < deadline, f"the page never drew: {bytes(frames)[-300:]!r}"
                    await asyncio.sleep(0.25)


def colours(png: bytes) -> tuple[int, float]:
    """(distinct colours, the share of pixels not of the commonest colour)."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    counts = image.getcolors(maxcolors=1 << 24)
    return len(counts), 1 - max(c for c, _ in counts) / (image.width * image.height)


@needs_chromium
def test_serve_shows_the_running_session_in_a_real_browser(sessions, tmp_path):
    name = "served"
    run_cli("run", "--session", name, "--dataset", "synthetic", "--hidden", "16,16", "--device", "cpu",
            "--epochs", "100000", "--detach", env_sessions=sessions)
    port = free_port()
    env = {**os.environ, "CLUSTERLAB_SESSIONS": str(sessions)}
    server = subprocess.Popen([*CLUSTERLAB, "serve", name, "--port", str(port)], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    browser = None
    try:
        wait_until(lambda: accepts(port) or server.poll() is not None, "the server to listen")
        assert server.poll() is None, server.stdout.read()
        browser = Browser(Path(tempfile.mkdtemp(dir=tmp_path, prefix="chromium-")))

        def drawn(frames: bytes, shot: bytes) -> bool:  # the app wrote the session's name and the page shows it
            return name.encode() in frames and b"training" in frames and colours(shot)[0] > 20

        frames, shot = asyncio.run(browser.watch(f"http://127.0.0.1:{port}/", drawn))
        (tmp_path / "served.png").write_bytes(shot)
        count, share = colours(shot)
        assert share > 0.05, f"the page is nearly blank ({share:.1%} not background, {count} colours)"
        status = json.loads(run_cli("remote", name, "status", "--json", env_sessions=sessions).stdout)["result"]
        assert status["clients"] >= 1 and status["state"] == "training"  # the browser's app is one more client
    finally:
        if browser is not None:
            browser.close()
        os.killpg(server.pid, signal.SIGINT)  # the server and the app it started for the tab
        server.wait(30)
        run_cli("stop", name, env_sessions=sessions)  # succeeds only if the host outlived the tab and the server
    assert "serving session served at http://127.0.0.1" in server.stdout.read()


def test_serve_refuses_a_bad_port_in_one_sentence(sessions):
    proc = run_cli("serve", "x", "--port", "70000", env_sessions=sessions, check_rc=2)
    assert proc.stderr.strip() == "clusterlab: error: --port must be a whole number from 1 to 65535, not 70000."
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        proc = run_cli("serve", "x", "--port", str(port), env_sessions=sessions, check_rc=2)
    assert proc.stdout == "" and proc.stderr.startswith(f"clusterlab: error: Cannot serve on 127.0.0.1:{port} (")
    assert proc.stderr.strip().endswith("pick another --port.") and proc.stderr.count("\n") == 1
