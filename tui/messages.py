"""The typed messages the UI's screens post to the app, which sends them to the attached host (`@on` there)."""

from __future__ import annotations

from typing import Any

from textual.message import Message


class Command(Message):
    """An engine command for the attached host: `kind` is its name over the socket (train, continue, cluster,
    finetune, pause, resume, stop, save, picture_size), `args` its arguments, `what` the log's words for it."""

    def __init__(self, kind: str, what: str = "", **args: Any) -> None:
        super().__init__()
        self.kind = kind
        self.what = what
        self.args = args
