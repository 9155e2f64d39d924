"""Textual messages that carry engine events and engine open/close results onto the UI's thread."""

from __future__ import annotations

from typing import Any

from textual.message import Message

from engine.events import Event


class EngineEvent(Message):
    """One engine event, posted from the engine thread (post_message is thread-safe)."""

    def __init__(self, engine: Any, event: Event) -> None:
        super().__init__()
        self.engine = engine  # which engine sent it: events of a session being closed are ignored
        self.event = event


class EngineReady(Message):
    """A session was opened or created in a worker thread; its metrics log and snapshot were read there too."""

    def __init__(self, engine: Any, history: list[dict], snapshot: dict, created: bool) -> None:
        super().__init__()
        self.engine = engine
        self.history = history
        self.snapshot = snapshot
        self.created = created


class EngineUnavailable(Message):
    """Opening or creating a session failed; the app stays up without one."""

    def __init__(self, name: str, error: str) -> None:
        super().__init__()
        self.name = name
        self.error = error


class EngineClosed(Message):
    """The engine was closed (and so saved) in a worker thread; the app may now exit."""

    def __init__(self, step: int | None) -> None:
        super().__init__()
        self.step = step
