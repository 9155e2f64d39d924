"""Opening, creating and switching sessions and sweeps: the part of ClusterlabApp behind o, n and escape."""

from __future__ import annotations

from functools import partial

from engine.config import Config
from engine.session import close_names, session_path
from engine.sweep import is_sweep
from tui.screens import ChoiceScreen, NewSessionScreen, OpenScreen
from tui.sweep_screen import SweepScreen


class Navigation:
    """ClusterlabApp's session switching; it attaches through the app's `_attach`."""

    def _asked_if_typo(self, name: str) -> bool:
        """Before creating `name` when a session's name is close to it (`--session tuil` where tui exists): ask
        whether that one was meant; True if asked (the answer attaches)."""
        close = [] if self.attach_only or session_path(name).exists() else close_names(name)
        if not close:
            return False

        def answered(answer: str | None) -> None:
            if answer is None:
                self.switching = False
                self.view.detached(f"[b]{name}[/b]\nnot created: o opens a session, n makes one", "")
            else:
                self._attach(*((name, self.config) if answer == "create" else (close[0], None)))

        self.push_screen(ChoiceScreen(f"There is no session {name}, but there is {' and '.join(close)}. Open "
                                      f"{close[0]}, or create {name}?", [("o", f"Open {close[0]}", "open"),
                                                                         ("c", f"Create {name}", "create")]),
                         answered)
        return True

    def _show_sweep(self) -> None:
        self.switching, self.sub_title = False, self.session_name
        self.view.detached(f"[b]sweep {self.session_name}[/b]\nno session open: o opens one, n makes one", "")
        self._open_chosen(self.session_name)

    def action_open(self) -> None:
        self.push_screen(OpenScreen(), self._open_chosen)

    def action_new(self) -> None:
        config = self.view.control.config if self.client is not None else self.config
        self.push_screen(NewSessionScreen(config), self._new_chosen)

    def _open_chosen(self, name: str | None) -> None:
        if name and is_sweep(session_path(name)):
            self.push_screen(SweepScreen(session_path(name)), partial(self._member_chosen, name))
        elif name and (name != self.session_name or self.client is None):
            self._new_chosen((name, None))

    def _member_chosen(self, sweep: str, name: str | None) -> None:
        """A member chosen in a sweep's view opens; escape on its screen shows the view again."""
        self._open_chosen(name)
        if name:
            self.sweep = sweep

    def action_sweep(self) -> None:
        if self.sweep is not None:
            self._open_chosen(self.sweep)

    def _new_chosen(self, result: tuple[str, Config | None] | None) -> None:
        if result is not None:
            self.sweep = None
            self.attach_only = False  # another session: its host is started if none runs
            self._attach(*result)
