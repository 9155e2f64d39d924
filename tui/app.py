"""The clusterlab Textual app, a client of a session's host, and `run_app`, which `clusterlab` calls to open it.

A thin shell: it finds or starts the session's host (`engine.client.ensure_host`), attaches with an AsyncClient,
sends the commands its screens post, and routes what the host sends to the session screen's reactive state. The
engine runs in the host, so the run outlives this process (`d`, a lost terminal) and torch is never imported here.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path

from textual import on, work
from textual.app import App
from textual.binding import Binding

from engine.client import AsyncClient, Resynced, ensure_host
from engine.config import Config
from engine.errors import ClusterlabError
from engine.session import new_name, session_path
from engine.sweep import is_sweep
from tui.leaving import DETACHED, QUIT, Leaving
from tui.messages import Command
from tui.navigation import Navigation
from tui.palette import ClusterlabCommands, save_screenshot
from tui.screens import HelpScreen
from tui.session_screen import SessionScreen
from tui.sweep_screen import SweepScreen


class ClusterlabApp(Navigation, Leaving, App[str]):
    """Attached to one session's host at a time; `o` and `n` detach from it and attach to another."""

    CSS_PATH = "app.tcss"
    TITLE = "clusterlab"
    COMMANDS = {ClusterlabCommands}  # Ctrl+P: every key's action by name (tui/palette.py)
    AUTO_FOCUS = None  # nothing focused at start, so letter keys reach the keys, not a settings field
    BINDINGS = [
        Binding("o", "open", "Open", id="open", tooltip="open another session (this one's run goes on)"),
        # Off the footer so Quit fits at 80 columns; the help lists it, and the open screen says n makes one.
        Binding("n", "new", "New", id="new", show=False, tooltip="create a new session (this one's run goes on)"),
        Binding("d", "detach", "Detach", id="detach",
                tooltip="detach: the run goes on without this terminal; clusterlab attach NAME comes back"),
        Binding("question_mark,f1", "help", "Help", id="help", key_display="?", tooltip="list every key"),
        Binding("ctrl+p", "command_palette", "Commands", id="palette", show=False,
                tooltip="the command palette: every action by name, with its key"),
        Binding("S", "screenshot", "Screenshot", id="screenshot", show=False,
                tooltip="save the screen as SVG in the session's export folder"),
        Binding("q", "quit", "Quit", id="quit",
                tooltip="quit and end the session's host (saved); while a job runs, asks: stop it, or detach"),
    ]

    def __init__(self, name: str | None, config: Config, *, attach: bool = False,
                 ensure: Callable[[str, Config | None], Path] = ensure_host) -> None:
        """`attach`: only attach to a running host, never start one; `ensure(name, config)` finds or starts the
        host of a session and returns its folder (an in-process host in tests)."""
        super().__init__()
        self.session_name, self.config = name or new_name(config.dataset), config
        self.attach_only, self.ensure = attach, ensure
        self.client: AsyncClient | None = None
        self.view: SessionScreen  # the default screen, made by Textual's get_default_screen
        self.switching = True  # attaching to a host
        self.leaving: str | None = None  # QUIT once the host was asked to end: the app exits when it has
        self.shown = asyncio.Event()  # set at the first full screen of an attached session
        self._flags_given = config != Config()  # settings given for the first session, unused if it exists
        self._keys = (True, True, None, (True, False, None))  # what check_action reads, as at the first frame
        self._paused_to_ask = False  # q paused the run while its question is open
        self.sweep: str | None = None  # the sweep whose member is open: escape goes back to its view

    def get_default_screen(self) -> SessionScreen:
        self.view = SessionScreen()
        return self.view

    def on_mount(self) -> None:
        if not self.is_headless:  # the terminal went away (an SSH drop): a detach, the run goes on
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._hangup)
        if is_sweep(session_path(self.session_name)):  # `clusterlab tui --session SWEEP`: its view, no host
            self.call_after_refresh(self._show_sweep)
        elif not self._asked_if_typo(self.session_name):
            self._attach(self.session_name, self.config)  # connecting while the first frame is drawn

    def _hangup(self) -> None:
        """Detach; with no terminal left Textual may never finish exiting, and the run is the host's: end anyway.
        The deadline is a thread of its own: a write to the dead terminal can block the event loop itself (Textual's
        writer queue fills once its thread is gone), so a timer on the loop would never fire."""
        self.call_later(self.action_detach)
        deadline = threading.Timer(2.0, os._exit, args=(0,))
        deadline.daemon = True
        deadline.start()

    # ----- attaching: the host's updates go to the session screen's reactive state ------------------------------

    @work(exclusive=True, group="host")
    async def _attach(self, name: str, config: Config | None) -> None:
        old, self.client = self.client, None
        if old is not None:
            await old.close()  # a detach: its run goes on
        self.switching, self.session_name, self.sub_title = True, name, name
        created = not self.attach_only and not session_path(name).exists()
        connecting = asyncio.ensure_future(self._connect(name, config))
        try:
            await self.view.composed.wait()
            self.view.attaching(name, "attaching" if self.attach_only else "opening")
            client = await connecting
        except ClusterlabError as exc:
            self._unavailable(name, str(exc))
            return
        finally:
            connecting.cancel()  # only if this worker was cancelled (another session chosen) before it was done
        self.client, self.switching = client, False
        self._attached(client, created)
        async for update in client.updates():
            if isinstance(update, Resynced):  # this client fell behind: the charts are rebuilt, a snapshot follows
                self.view.history = tuple(update.history)
            else:
                self.view.take(update)
        self._host_ended(client)

    async def _connect(self, name: str, config: Config | None) -> AsyncClient:
        path = session_path(name) if self.attach_only else await asyncio.to_thread(self.ensure, name, config)
        return await AsyncClient.connect(path, client="tui")

    def _attached(self, client: AsyncClient, created: bool) -> None:
        snap, log = client.snapshot, self.view.log_pane
        self.view.attached(snap, client.history)
        if self._flags_given and not created:
            log.add(f"session {snap.name} exists: it keeps its own settings; the settings given on the command "
                    "line were not used", "warning")
            self.view.control.show_message("This session keeps its own settings; the command line's were not used.")
        self._flags_given = False
        verb = "created" if created else "attached to"
        log.add(f"{verb} session {snap.name} ({snap.session}) at step {snap.step}; its host is pid "
                f"{client.welcome.get('pid')}")
        if snap.held:
            jobs = ", ".join(job["kind"] for job in snap.plan)
            log.add(f"unfinished plan: {jobs}; press t to continue it")
            self.view.control.show_message(f"Unfinished plan ({jobs}): t continues it.")
        self.call_after_refresh(self.shown.set)

    def _unavailable(self, name: str, error: str) -> None:
        self.switching = False
        self.view.detached(f"[b]{name}[/b]\nnot open: o opens another, n makes one", error, error=True)
        self.view.log_pane.add(f"session {name}: {error}", "error")
        self.notify(error, title="Cannot open session", severity="error", timeout=10)

    def _host_ended(self, client: AsyncClient) -> None:
        """The host closed the connection: asked to by q, or ended by another client or `clusterlab stop`."""
        if client is not self.client:
            return  # detached from it on purpose
        self.client = None
        if self.leaving is not None:
            self.exit(self.leaving)
            return
        reason = client.bye or "the connection was lost"
        self.view.detached(f"[b]{self.session_name}[/b]\nits host has ended",
                           f"The host ended ({reason}): o opens a session, n makes one, q quits.")

    @on(Command)
    async def _send(self, command: Command) -> None:
        """Send a screen's command to the host; a refusal is shown, what it starts arrives as events."""
        if self.client is None:
            return
        try:
            reply = await self.client.command(command.kind, **command.args)
        except ClusterlabError as exc:
            reply = {"ok": False, "error": str(exc)}
        if not reply["ok"]:
            self.view.control.show_message(reply["error"], error=True)
            self.view.log_pane.add(f"{command.kind} refused: {reply['error']}", "error")

    # ----- the app's own keys: leaving, switching, help ----------------------------------------------------------

    def refresh_bindings(self) -> None:
        """Refresh the footer only when what a check_action reads has changed: each refresh recomposes the footer, a
        layout of the whole screen, and snapshots come several times a second while training."""
        keys = (self.switching, self.client is None, self.leaving, self.view.keys)
        if keys != self._keys:
            self._keys = keys
            self.screen.refresh_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if self.leaving is not None:
            return None
        if isinstance(self.screen, SweepScreen):
            return True if action == "help" else None  # the sweep view has keys of its own
        if action == "detach":
            return True if self.client is not None else None
        if action == "sweep":
            return True if self.sweep is not None else False
        if action in ("open", "new"):
            return None if self.switching else True
        return True

    async def action_detach(self) -> None:
        """Leave the run to its host and end the app; run_app then says how to come back."""
        client, self.client = self.client, None
        self.workers.cancel_group(self, "host")
        if client is not None:
            await client.close()
        self.exit(DETACHED if client is not None else QUIT)

    def action_screenshot(self, filename: str | None = None, path: str | None = None) -> None:
        """Textual's screenshot, into the session's export folder rather than the working directory."""
        try:
            written = save_screenshot(self)
        except OSError as exc:
            self.view.control.show_message(f"The screenshot was not saved ({exc.strerror}).", error=True)
            return
        self.view.control.show_message(f"Screenshot saved: {written}")
        self.view.log_pane.add(f"screenshot saved: {written}")

    def action_help(self) -> None:
        self.push_screen(HelpScreen([*SessionScreen.BINDINGS, *self.BINDINGS]))



def run_app(name: str | None, config: Config, attach: bool = False) -> int:
    """Run the UI on session `name`: attach to its host, starting one (and creating the session) unless `attach`."""
    app = ClusterlabApp(name, config, attach=attach)
    if app.run() == DETACHED:
        snap, name = app.view.snapshot, app.session_name
        running = snap is not None and app.view.live.state != "idle"
        what = "its run goes on" if running else "its host ends after a minute with no client (saved)"
        try:
            print(f"Detached from {name}: {what}. Come back with: clusterlab attach {name}")
        except OSError:
            pass  # the terminal is gone (SIGHUP): nobody to tell
    return 0


__all__ = ["DETACHED", "QUIT", "ClusterlabApp", "run_app"]
