"""Helpers for the TUI tests (no tests here): small configs, waiting with a deadline, hosts served in-process."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from engine.config import Config


def tui_config(**changes) -> Config:
    """Synthetic data and small layers: an epoch is 64 steps and takes well under a second."""
    base = {"dataset": "synthetic", "hidden": (32, 32), "device": "cpu", "epochs": 2, "finetune_epochs": 1,
            "k": 3, "autosave_every": 10**6}
    base.update(changes)
    return Config(**base)


async def until(pilot, condition: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    """Let the app run until `condition()` holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await pilot.pause(0.02)


def send_key(app, key: str) -> None:
    """Deliver a key as the terminal driver does. Pilot.press also waits for the app to go idle, which it
    never does while training: that wait would add seconds and time nothing."""
    from textual import events

    app.post_message(events.Key(key, " " if key == "space" else key))


def status_text(app) -> str:
    """The control pane's live status as plain text (what the screen shows there)."""
    from textual.content import Content

    return Content.from_markup(str(app.query_one("#status").content)).plain


def table_rows(table) -> list[list[str]]:
    return [[str(cell) for cell in table.get_row(key)] for key in table.rows]


def log_text(app) -> str:
    """The engine log as the user reads it on tab 3; the tab is shown, since a hidden log renders nothing."""
    from textual.widgets import TabbedContent

    app.query_one(TabbedContent).active = "log"
    return " ".join(" ".join(strip.text for strip in app.view.log_pane.lines).split())  # wrapped lines rejoined


async def read_log(pilot, app) -> str:
    """log_text once the log tab has been laid out and its lines rendered."""
    log_text(app)
    await until(pilot, lambda: app.view.log_pane.size.width > 0, "the log tab to show")
    await pilot.pause()
    return log_text(app)


class InProcessHosts:
    """What `ensure_host` does, in this process: each session's Engine served by `engine.host.serve` on its real
    Unix socket, so an app under Pilot talks to it exactly as to a host process. `stop-host` saves and ends it."""

    def __init__(self) -> None:
        self.served: dict[str, tuple] = {}  # name -> (engine, host) while it serves
        self.lock = threading.Lock()

    def ensure(self, name: str, config: Config | None) -> Path:
        from engine.engine import Engine
        from engine.host import serve
        from engine.session import session_path

        path = session_path(name)
        with self.lock:
            if name not in self.served:
                engine = Engine.open(path) if path.exists() else Engine.create(path, config or Config())
                host = serve(engine, on_stop=lambda reason: threading.Thread(target=self.end, args=(name,)).start())
                self.served[name] = (engine, host)
        return path

    def engine(self, name: str):
        return self.served[name][0]

    def end(self, name: str) -> None:
        """As the host process ends: save (close the engine), then say bye and stop serving."""
        with self.lock:
            served = self.served.pop(name, None)
        if served is not None:
            engine, host = served
            engine.close()
            host.close("the host has saved and ended")

    def close(self) -> None:
        for name in list(self.served):
            self.end(name)
