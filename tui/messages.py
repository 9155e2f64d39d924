"""Textual messages: one per engine event type (handled with `@on`), and the results of opening or closing one."""

from __future__ import annotations

from typing import Any

from textual.message import Message

from engine import events as ev
from engine.snapshot import Snapshot


class EngineMessage(Message):
    """An engine event, posted from the engine thread (post_message is thread-safe)."""

    def __init__(self, engine: Any, event: ev.Event) -> None:
        super().__init__()
        self.engine = engine  # which engine sent it: events of a session being closed are ignored
        self.event = event


class StateChanged(EngineMessage):
    event: ev.StateChanged


class ProgressMade(EngineMessage):
    event: ev.Progress


class Evaluated(EngineMessage):
    event: ev.Evaluated


class ClustersFound(EngineMessage):
    event: ev.ClustersFound


class PhaseFinished(EngineMessage):
    event: ev.PhaseFinished


class Saved(EngineMessage):
    event: ev.Saved


class LogLine(EngineMessage):
    event: ev.LogLine


class Failed(EngineMessage):
    event: ev.Failed


class Ablated(EngineMessage):
    event: ev.Ablated


class SignificanceFound(EngineMessage):
    event: ev.SignificanceFound


class FiguresUpdated(EngineMessage):
    event: ev.FiguresUpdated


# Every engine event type has its message; a new event type gets one here and a handler in the app.
MESSAGES: dict[type[ev.Event], type[EngineMessage]] = {
    ev.StateChanged: StateChanged,
    ev.Progress: ProgressMade,
    ev.Evaluated: Evaluated,
    ev.ClustersFound: ClustersFound,
    ev.PhaseFinished: PhaseFinished,
    ev.Saved: Saved,
    ev.LogLine: LogLine,
    ev.Failed: Failed,
    ev.Ablated: Ablated,
    ev.FiguresUpdated: FiguresUpdated,
    ev.SignificanceFound: SignificanceFound,
}


def message_for(engine: Any, event: ev.Event) -> EngineMessage:
    return MESSAGES[type(event)](engine, event)


class EngineReady(Message):
    """A session was opened or created in a worker thread; its metrics log and snapshot were read there too."""

    def __init__(self, engine: Any, history: list[dict], snapshot: Snapshot, created: bool) -> None:
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
