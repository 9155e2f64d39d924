"""A scrolling log of what the engine reported, newest last, bounded in length, wrapped at the width shown."""

from __future__ import annotations

import time
from collections import deque

from rich.text import Text
from textual.reactive import reactive, var
from textual.widgets import RichLog

from engine import events as ev
from tui.state import log_line

LEVEL_STYLES = {"error": "bold red", "warning": "yellow", "info": "", "debug": "dim"}
MAX_LINES = 1000


class EngineLog(RichLog):
    """RichLog with a cap so an hour of events never grows memory or redraw cost; it logs each engine event that
    says something (`tui.state.log_line`) and what the UI itself adds.

    RichLog renders a line once, at the width it has when written: a hidden tab has none (the line came out
    blank) and a resize left lines wrapped at the old width. So the lines are kept as text and written again,
    wrapped anew, whenever the width shown changes; while the tab is hidden they wait."""

    event: reactive[ev.Event | None] = var(None, init=False)

    def __init__(self, **kwargs) -> None:
        super().__init__(max_lines=MAX_LINES, min_width=0, wrap=True, markup=False, highlight=False, **kwargs)
        self.entries: deque[Text] = deque(maxlen=MAX_LINES)
        self._wrapped_at = 0  # the width the written lines were wrapped at; 0: none written since a change

    def add(self, message: str, level: str = "info") -> None:
        stamp = time.strftime("%H:%M:%S")
        line = Text.assemble((f"{stamp} ", "dim"), (message, LEVEL_STYLES.get(level, "")))
        self.entries.append(line)
        if self._wrapped_at and self._wrapped_at == self._width():
            self.write(line)
        else:
            self._wrapped_at = 0  # written, wrapped, when the tab is next shown
            self._rewrap()

    def _width(self) -> int:
        return self.scrollable_content_region.width if self.is_on_screen else 0

    def _rewrap(self) -> None:
        width = self._width()
        if width and width != self._wrapped_at:
            self._wrapped_at = width
            self.clear()
            for line in self.entries:
                self.write(line)

    def on_show(self) -> None:
        self.call_after_refresh(self._rewrap)  # laid out by then: on screen, at its width

    def on_resize(self) -> None:
        self._rewrap()

    def watch_event(self, event: ev.Event | None) -> None:
        line = log_line(event) if event is not None else None
        if line is not None:
            self.add(*line)
