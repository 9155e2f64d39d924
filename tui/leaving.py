"""Leaving: q and Ctrl+C end the app; while a job runs they ask whether to stop the run or leave it running."""

from __future__ import annotations

from tui.messages import Command
from tui.screens import ChoiceScreen

DETACHED, QUIT = "detached", "quit"  # how the app ended: the run goes on, or the host was ended (saved)


class Leaving:
    """ClusterlabApp's quit question; detaching itself is the app's `action_detach`."""

    def action_quit(self) -> None:
        snap, state = self.view.snapshot, self.view.live.state  # the live state: a snapshot lags its events 50 ms
        if self.leaving is not None:
            return
        if self.client is None or snap is None:
            self.exit(QUIT)  # nothing attached (or still attaching): a host started for us ends when idle
        elif state != "idle":
            # Decided: the run waits for the answer (a question left open must not let it run on unseen).
            self._paused_to_ask = "pause" in self.view.snapshot.allowed
            if self._paused_to_ask:
                self.post_message(Command("pause"))
            paused = " It is paused while you choose." if self._paused_to_ask else ""
            self.push_screen(ChoiceScreen(f"A job is running ({state}).{paused} Stop the run (it is saved and "
                                          f"`clusterlab resume {snap.name}` continues it), or leave it running and "
                                          "detach?",
                                          [("s", "Stop the run", "stop"), ("d", "Leave it running", "detach")]),
                             self._quit_chosen)
        else:
            self._quit_chosen("stop")

    def action_help_quit(self) -> None:
        """Ctrl+C (Textual's own binding, which only tells how to quit): the same as q."""
        self.action_quit()

    def _quit_chosen(self, answer: str | None) -> None:
        if self._paused_to_ask and answer != "stop":
            self.post_message(Command("resume"))  # the question paused it: it goes on (sent before a detach)
        self._paused_to_ask = False
        if answer == "detach":
            self.call_later(self.action_detach)
        elif answer == "stop" and self.client is not None:
            self.leaving = QUIT
            self.view.closing_host()
            self.post_message(Command("stop-host"))  # the host saves, says bye and closes: then the app exits
