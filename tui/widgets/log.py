"""A scrolling log of what the engine reported, newest last, bounded in length."""

from __future__ import annotations

import time

from rich.text import Text
from textual.reactive import reactive, var
from textual.widgets import RichLog

from engine import events as ev
from tui.state import log_line

LEVEL_STYLES = {"error": "bold red", "warning": "yellow", "info": "", "debug": "dim"}


class EngineLog(RichLog):
    """RichLog with a cap so an hour of events never grows memory or redraw cost; it logs each engine event that
    says something (`tui.state.log_line`) and what the UI itself adds."""

    event: reactive[ev.Event | None] = var(None, init=False)

    def __init__(self, **kwargs) -> None:
        super().__init__(max_lines=1000, min_width=0, wrap=True, markup=False, highlight=False, **kwargs)

    def add(self, message: str, level: str = "info") -> None:
        stamp = time.strftime("%H:%M:%S")
        line = Text.assemble((f"{stamp} ", "dim"), (message, LEVEL_STYLES.get(level, "")))
        self.write(line)

    def watch_event(self, event: ev.Event | None) -> None:
        line = log_line(event) if event is not None else None
        if line is not None:
            self.add(*line)
