"""The session's screen: panes bound to one reactive snapshot and the live progress, and the session's own keys.

The app routes what the host sends here (`take`); each pane watches the part it shows (`data_bind`). The keys
post `Command` messages; what they may do now is the engine's `Snapshot.allowed`, never decided here.
"""

from __future__ import annotations

import asyncio

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.events import Key
from textual.reactive import reactive, var
from textual.screen import Screen
from textual.widgets import Header, TabbedContent, TabPane

from engine import events as ev
from engine.errors import ConfigError
from engine.snapshot import Snapshot
from tui.messages import Command
from tui.state import RUNNING, Live, fold, live_from
from tui.widgets.charts import MetricsCharts
from tui.widgets.clusters import ClusterTable
from tui.widgets.control import ControlPane
from tui.widgets.footer import FitFooter
from tui.widgets.log import EngineLog
from tui.widgets.modules import ModulesPane

QUEUEABLE = ("train", "cluster", "finetune")  # keys pressed while attaching run once the snapshot is in
COMMANDS = ("train", "cluster", "finetune", "save", "pause", "resume", "stop")


class SessionScreen(Screen[None]):
    """Control pane and tabs of the attached session; empty (and its keys off) while none is attached."""

    BINDINGS = [
        Binding("t", "train", "Train", id="train", tooltip="train (or continue the session's unfinished plan)"),
        # One key, two bindings: the footer names what space does now (check_action hides the other).
        Binding("space", "pause", "Pause", id="pause", key_display="space", tooltip="pause training"),
        Binding("space", "resume", "Resume", id="resume", key_display="space", tooltip="resume paused training"),
        Binding("c", "cluster", "Cluster", id="cluster", tooltip="co-cluster the studied layer with k and source"),
        Binding("f", "finetune", "Finetune", id="finetune", tooltip="finetune with loss = CE - λ·clusterability"),
        Binding("s", "save", "Save", id="save", tooltip="save the session now"),
        Binding("x", "stop", "Stop", id="stop", tooltip="stop the running job (saved) and drop the queued ones"),
        # The footer has room for one entry for the four tabs.
        Binding("1", "tab('charts')", "Tabs", id="tab.charts", key_display="1-4", tooltip="show the charts"),
        Binding("2", "tab('clusters')", "Clusters", id="tab.clusters", show=False, tooltip="show the cluster table"),
        Binding("3", "tab('log')", "Log", id="tab.log", show=False, tooltip="show the engine log"),
        Binding("4", "tab('modules')", "Modules", id="tab.modules", show=False,
                tooltip="show the layer's blocks and what silencing each cluster costs each class"),
        Binding("escape", "app.sweep", "Sweep", id="sweep", show=False,
                tooltip="back to the sweep's view, from a member opened there"),
    ]

    # `var`s, not plain reactives: a change repaints nothing by itself (the screen would be repainted whole 20 times
    # a second); each pane repaints what it shows when its watcher says so.
    snapshot: reactive[Snapshot | None] = var(None, init=False)  # the host's latest
    live: reactive[Live] = var(Live, init=False)  # ahead of the snapshot: folded from each event
    event: reactive[ev.Event | None] = var(None, always_update=True, init=False)  # the latest event
    history: reactive[tuple[dict, ...]] = var(tuple, always_update=True, init=False)  # the metrics log

    def __init__(self) -> None:
        super().__init__()
        self.waiting = True  # attaching: t, c and f pressed now are queued until the snapshot is in
        self.closing = False  # the host is being ended: no key sends it anything any more
        self._queued: list[str] = []
        self._picture_size: tuple[int, int] | None = None  # the size last asked of the host
        self.composed = asyncio.Event()  # the panes are mounted: the app may route updates here

    def on_mount(self) -> None:
        self.composed.set()

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="main"):
            yield ControlPane(id="control").data_bind(SessionScreen.snapshot, SessionScreen.live,
                                                      SessionScreen.event)
            with TabbedContent(id="tabs", initial="charts"):
                with TabPane("Charts 1", id="charts"):
                    yield MetricsCharts(id="metrics").data_bind(SessionScreen.history, SessionScreen.event)
                with TabPane("Clusters 2", id="clusters"):
                    yield ClusterTable(id="cluster-pane").data_bind(SessionScreen.snapshot)
                with TabPane("Log 3", id="log"):
                    yield EngineLog(id="engine-log").data_bind(SessionScreen.event)
                with TabPane("Modules 4", id="modules"):
                    yield ModulesPane(id="modules-pane").data_bind(SessionScreen.snapshot)
        yield FitFooter(show_command_palette=False)  # ^p takes room the run's keys need; ? and ^p list it

    @property
    def control(self) -> ControlPane:
        return self.query_one(ControlPane)

    @property
    def log_pane(self) -> EngineLog:
        return self.query_one(EngineLog)

    # ----- the state, as the app routes it from the host ---------------------------------------------------------

    def attaching(self, name: str, verb: str) -> None:
        """Forget the shown session: another is being attached (`verb`: opening, attaching…)."""
        self.waiting = True
        self._picture_size = None
        self.live = Live()
        self.snapshot = None
        self.history = ()
        self.control.show_session(f"[b]{name}[/b]\n{verb}…")
        self.app.refresh_bindings()

    def attached(self, snapshot: Snapshot, history: list[dict]) -> None:
        """The host's full state: the charts from its metrics log, then the panes from its snapshot; keys pressed
        while attaching run now."""
        self.history = tuple(history)
        self.take(snapshot)
        self.waiting = False
        self.app.refresh_bindings()
        queued, self._queued = self._queued, []
        for action in queued:
            if self.check_action(action, ()):
                getattr(self, f"action_{action}")()

    def detached(self, text: str, message: str, error: bool = False) -> None:
        """No session shown: why (`text` under the name, `message` on the message line)."""
        self.waiting = False
        self._queued = []
        self.live = Live(state="no session")
        self.snapshot = None
        self.control.show_session(text)
        self.control.show_message(message, error=error)
        self.app.refresh_bindings()

    def closing_host(self) -> None:
        """The host was asked to save and end: no key sends it anything any more."""
        self.closing = True
        self.app.refresh_bindings()
        self.log_pane.add("saving and ending the host…")
        self.control.show_message("Saving…")

    def take(self, update: Snapshot | ev.Event) -> None:
        """One update from the host: a snapshot replaces the last, an event moves the live figures."""
        if isinstance(update, Snapshot):
            self.live = live_from(update, self.live)
            self.snapshot = update
        else:
            self.live = fold(self.live, update)
            self.event = update

    def watch_snapshot(self) -> None:
        self.app.refresh_bindings()
        self._want_picture()

    # ----- which keys make sense now: the engine says, in its snapshot ----------------------------------------

    @property
    def keys(self) -> tuple:
        """What `check_action` reads: the footer is refreshed when it changes (the app's refresh_bindings)."""
        return self.waiting, self.closing, self.snapshot.allowed if self.snapshot is not None else None

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if self.closing and action in COMMANDS:
            return None
        if action in QUEUEABLE and self.waiting:
            return True  # remembered and run when the session is attached
        if action not in COMMANDS:
            return True
        allowed = self.snapshot.allowed if self.snapshot is not None else frozenset()
        if action == "train":
            return True if {"train", "continue"} & allowed else None
        if action in allowed:
            return True
        if action in ("pause", "resume"):  # space shows one of the two: the other is hidden
            other = "resume" if action == "pause" else "pause"
            return False if other in allowed or action == "resume" else None
        return None

    def on_key(self, event: Key) -> None:
        """A command key that does nothing now says why, in one line (a key that acts never gets here)."""
        actions = [b.action for b in self.BINDINGS if event.key in b.key.split(",") and b.action in COMMANDS]
        if actions and not any(self.check_action(action, ()) for action in actions):
            self.control.show_message(why_not(actions[0], self.snapshot, self.closing), error=True)

    # ----- keys ---------------------------------------------------------------------------------------------------

    def action_train(self) -> None:
        if not self.waiting and "continue" in self.snapshot.allowed:
            self._send(Command("continue", "continuing the unfinished plan"))
        else:
            self._from_fields("train", self._train)

    def action_cluster(self) -> None:
        self._from_fields("cluster", self._cluster)

    def action_finetune(self) -> None:
        self._from_fields("finetune", self._finetune)

    def _from_fields(self, action: str, make) -> None:
        """t, c and f: the command `make` builds from the settings pane, each value checked as the CLI checks it
        (a bad one is explained, nothing is sent); remembered while attaching."""
        if self._queue_if_loading(action):
            return
        try:
            command = make()
        except ConfigError as exc:
            self.control.show_message(str(exc), error=True)
            self.notify(str(exc), title="Invalid setting", severity="error")
            return
        self._send(command)

    def _train(self) -> Command:
        epochs, steps = self.control.train_args()
        what = f"train {steps} steps" if steps is not None else f"train {epochs or self.control.config.epochs} epochs"
        return Command("train", what, epochs=epochs, steps=steps)

    def _cluster(self) -> Command:
        k, source = self.control.cluster_args()
        return Command("cluster", f"cluster k={k or self.control.config.k} on {source}", k=k, source=source)

    def _finetune(self) -> Command:
        epochs, lam = self.control.finetune_args()
        config = self.control.config
        return Command("finetune", f"finetune {config.finetune_epochs if epochs is None else epochs} epochs, "
                                  f"λ={config.lam if lam is None else lam:g}", epochs=epochs, lam=lam)

    def action_save(self) -> None:
        self._send(Command("save", "save"))

    def action_pause(self) -> None:
        self._send(Command("pause", "pause"))

    def action_resume(self) -> None:
        self._send(Command("resume", "resume"))

    def action_stop(self) -> None:
        self._send(Command("stop", "stop requested"))

    def action_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab

    def _queue_if_loading(self, action: str) -> bool:
        if not self.waiting:
            return False
        if action not in self._queued:
            self._queued.append(action)
        self.control.show_message(f"Loading the session: {action} starts as soon as it is ready.")
        return True

    def _send(self, command: Command) -> None:
        """Post a command for the app to send; its job's events will say what happened."""
        self.post_message(command)
        self.log_pane.add(command.what)
        if command.kind not in ("pause", "resume"):
            self.control.show_message("")

    @on(ModulesPane.PictureWanted)
    def _want_picture(self) -> None:
        """Ask the host for the picture size the Modules tab can show (when that size changed)."""
        if self.snapshot is None or self.snapshot.clusters is None:
            return
        size = self.query_one(ModulesPane).picture_size(self.snapshot.clusters["k"])
        if size is not None and size != self._picture_size:
            self._picture_size = size
            self.post_message(Command("set_picture_size", rows=size[0], cols=size[1]))


def why_not(action: str, snap: Snapshot | None, closing: bool) -> str:
    """Why command `action` cannot run now, in one line."""
    if closing:
        return "The session is being saved and its host ended: no command now."
    if snap is None:
        return "No session is open: o opens one, n makes one."
    state = snap.state
    if action in ("pause", "resume") and state not in (*RUNNING, "paused"):
        return "Nothing is training: space pauses or resumes a training job."
    if action == "stop":
        return "No job is running: x stops one."
    if action == "save" and state == "paused":  # decided: the job saves itself (autosave, x, q), s only when idle
        return "s saves an idle session: x stops the paused job and saves it, q saves and quits."
    if state != "idle":
        return f"{action.capitalize()} waits for the {state} job: space pauses it, x stops it."
    if action == "finetune" and snap.clusters is None:
        return "Finetuning needs clusters: press c to cluster the layer first."
    return f"{action.capitalize()} is not possible now."
