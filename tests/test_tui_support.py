"""Helpers for the TUI tests (no tests here): small configs, waiting on conditions with a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable

from engine import Config


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
    return " ".join(" ".join(strip.text for strip in app.log_pane.lines).split())  # wrapped lines rejoined


async def read_log(pilot, app) -> str:
    """log_text once the log tab has been laid out and its lines rendered."""
    log_text(app)
    await until(pilot, lambda: app.log_pane.size.width > 0, "the log tab to show")
    await pilot.pause()
    return log_text(app)
