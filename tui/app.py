"""The clusterlab Textual app and `run_app`, which the `clusterlab` command calls to open it.

The app holds no engine rule: what a key may do comes from the engine's `Snapshot.allowed`, the figures from its
events and snapshots. Torch is never imported here: the engine module is loaded in the worker that opens a session.
Over 400 lines because every engine event type has its own small handler here, next to the keys it enables.
"""

from __future__ import annotations

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import Footer, Header, TabbedContent, TabPane

from engine import events as ev
from engine.config import Config
from engine.errors import ConfigError
from engine.format import null_band, null_text
from engine.session import new_name, session_path
from engine.snapshot import Snapshot
from engine.sweep import is_sweep
from tui import messages as msg
from tui.screens import ConfirmScreen, HelpScreen, NewSessionScreen, OpenScreen
from tui.sweep_screen import SweepScreen
from tui.widgets.charts import MetricsCharts
from tui.widgets.clusters import ClusterTable
from tui.widgets.control import ControlPane, Live
from tui.widgets.log import EngineLog
from tui.widgets.modules import ModulesPane

REDRAW_INTERVAL_S = 0.25  # progress text repaints at most 4 times a second, the charts at most twice (charts.py)
QUEUEABLE = ("train", "cluster", "finetune")  # keys pressed while the first session loads run once it is ready


class ClusterlabApp(App[int]):
    """Drives one Engine at a time: commands go to it, its events come back as messages."""

    CSS_PATH = "app.tcss"
    TITLE = "clusterlab"
    ENABLE_COMMAND_PALETTE = False
    AUTO_FOCUS = None  # nothing focused at start, so letter keys reach the app, not a settings field
    BINDINGS = [
        Binding("t", "train", "Train", id="train", tooltip="train (or continue the session's unfinished plan)"),
        # One key, two bindings: the footer names what space does now (check_action hides the other).
        Binding("space", "pause", "Pause", id="pause", key_display="space", tooltip="pause training"),
        Binding("space", "resume", "Resume", id="resume", key_display="space", tooltip="resume paused training"),
        Binding("c", "cluster", "Cluster", id="cluster", tooltip="co-cluster the studied layer with k and source"),
        Binding("f", "finetune", "Finetune", id="finetune", tooltip="finetune with loss = CE - λ·clusterability"),
        Binding("s", "save", "Save", id="save", tooltip="save the session now"),
        Binding("x", "stop", "Stop", id="stop", show=False, tooltip="stop the running job and drop the queued ones"),
        Binding("o", "open", "Open", id="open", tooltip="open another session"),
        Binding("n", "new", "New", id="new", tooltip="create a new session"),
        Binding("1", "tab('charts')", "Charts", id="tab.charts", show=False, tooltip="show the charts"),
        Binding("2", "tab('clusters')", "Clusters", id="tab.clusters", show=False, tooltip="show the cluster table"),
        Binding("3", "tab('log')", "Log", id="tab.log", show=False, tooltip="show the engine log"),
        Binding("4", "tab('modules')", "Modules", id="tab.modules", show=False,
                tooltip="show the layer's blocks and what silencing each cluster costs each class"),
        Binding("question_mark,f1", "help", "Help", id="help", key_display="?", tooltip="list every key"),
        Binding("q", "quit", "Quit", id="quit", tooltip="quit; the session is saved"),
    ]

    def __init__(self, name: str | None, config: Config) -> None:
        super().__init__()
        self.session_name = name or new_name(config.dataset)
        self.config = config
        self.engine = None  # engine.engine.Engine, once a session is open
        self.snap: Snapshot | None = None  # the engine's latest snapshot
        self.live = Live()
        self.switching = True  # an engine is being opened or closed
        self.quitting = False
        self._queued: list[str] = []  # actions asked for while the session loaded
        self._dirty = False
        self._shares_due = False  # a save brought new cluster shares for the table
        self._flags_given = config != Config()  # settings given for the first session, unused if it exists
        self._keys: tuple | None = None  # what check_action read when the footer was last refreshed

    # ----- layout ------------------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="main"):
            yield ControlPane(id="control")
            with TabbedContent(id="tabs", initial="charts"):
                with TabPane("Charts 1", id="charts"):
                    yield MetricsCharts(id="metrics")
                with TabPane("Clusters 2", id="clusters"):
                    yield ClusterTable(id="cluster-pane")
                with TabPane("Log 3", id="log"):
                    yield EngineLog(id="engine-log")
                with TabPane("Modules 4", id="modules"):
                    yield ModulesPane(id="modules-pane")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.sub_title = self.session_name
        self.control.show_session(f"[b]{self.session_name}[/b]\nloading…")
        self.control.show_status(self.live)
        self.set_interval(REDRAW_INTERVAL_S, self._redraw)
        if is_sweep(session_path(self.session_name)):  # `clusterlab tui --session SWEEP`: its view, no session yet
            self._show_sweep(self.session_name)
        else:
            self._load_engine(self.session_name, self.config, None)

    @property
    def control(self) -> ControlPane:
        return self.query_one(ControlPane)

    @property
    def charts(self) -> MetricsCharts:
        return self.query_one(MetricsCharts)

    @property
    def clusters(self) -> ClusterTable:
        return self.query_one(ClusterTable)

    @property
    def log_pane(self) -> EngineLog:
        return self.query_one(EngineLog)

    @property
    def modules(self) -> ModulesPane:
        return self.query_one(ModulesPane)

    @property
    def loading(self) -> bool:
        """A session is being opened (keys for it are queued until it is ready)."""
        return self.switching and self.engine is None and not self.quitting

    # ----- opening and closing sessions (worker threads: importing torch, loading data, saving take seconds) -----

    @work(thread=True, exclusive=True, group="engine")
    def _load_engine(self, name: str, config: Config | None, old) -> None:
        from engine.engine import Engine  # torch: loaded off the UI thread, after the first paint

        if old is not None:
            old.close()  # saves the old session before the new one loads
        path = session_path(name)
        created = not path.exists()
        try:
            engine = Engine.create(path, config or self.config) if created else Engine.open(path)
            history, snapshot = engine.metrics_history(), engine.snapshot()
        except Exception as exc:  # noqa: BLE001 - any failure to open is shown; the app must keep running
            self.post_message(msg.EngineUnavailable(name, str(exc)))
            return

        def forward(event: ev.Event) -> None:
            # Called on the engine thread: only post, the handlers run on the UI's thread.
            self.post_message(msg.message_for(engine, event))

        engine.subscribe(forward)
        self.post_message(msg.EngineReady(engine, history, snapshot, created))

    @work(thread=True, exclusive=True, group="engine")
    def _close_engine(self, engine) -> None:
        step = None
        if engine is not None:
            engine.close()  # stops at a step boundary and saves; the unfinished job stays resumable
            step = engine.snapshot().step
        self.post_message(msg.EngineClosed(step))

    def on_engine_ready(self, message: msg.EngineReady) -> None:
        if self.quitting:  # q came while this session was loading: close it (saving) and go
            self._close_engine(message.engine)
            return
        self.engine, snap = message.engine, message.snapshot
        self.session_name = message.engine.name
        self.sub_title = self.session_name
        self.switching = False
        self.live = Live(state=snap.state, phase=snap.phase, step=snap.step, epoch=snap.epoch,
                         loss=snap.train_loss, accuracy=snap.test_accuracy, clusterability=snap.clusterability)
        self.control.set_session(self.session_name, snap.dataset, snap.device, message.engine.config)
        self.charts.reset(message.history)
        self._take(snap)
        if self._flags_given and not message.created:
            self.log_pane.add(f"session {self.session_name} exists: it keeps its own settings; the settings "
                              "given on the command line were not used", "warning")
            self.control.show_message("This session keeps its own settings; the command line's were not used.")
        self._flags_given = False
        verb = "created" if message.created else "opened"
        self.log_pane.add(f"{verb} session {self.session_name} ({snap.session}) at step {snap.step}")
        if snap.held:
            jobs = ", ".join(job["kind"] for job in snap.plan)
            self.log_pane.add(f"unfinished plan: {jobs}; press t to continue it")
            self.control.show_message(f"Unfinished plan ({jobs}): t continues it.")
        self._changed()
        queued, self._queued = self._queued, []
        for action in queued:
            if self.check_action(action, ()):
                getattr(self, f"action_{action}")()

    def on_engine_unavailable(self, message: msg.EngineUnavailable) -> None:
        self.switching = False
        self._queued = []
        if self.quitting:
            self.exit(0)
            return
        self.live = Live(state="no session")
        self.control.show_session(f"[b]{message.name}[/b]\nnot open: o opens another, n makes one")
        self.log_pane.add(f"session {message.name}: {message.error}", "error")
        self.control.show_message(message.error, error=True)
        self.notify(message.error, title="Cannot open session", severity="error", timeout=10)
        self._changed()

    def on_engine_closed(self, message: msg.EngineClosed) -> None:
        if message.step is not None:
            self.log_pane.add(f"saved {self.session_name} at step {message.step}")
        if self.quitting:
            self.exit(0)

    def _switch(self, name: str, config: Config | None) -> None:
        """Close the current session (saving it) and open or create another."""
        old, self.engine, self.snap = self.engine, None, None
        self.switching = True
        self.live = Live()
        self.session_name = name
        self.sub_title = name
        self.control.show_session(f"[b]{name}[/b]\nopening…")
        self.clusters.clear()
        self.charts.reset()
        self._changed()
        self._load_engine(name, config, old)

    def _take(self, snap: Snapshot) -> None:
        """Adopt a new snapshot: the cluster table follows it, the footer's keys follow its `allowed`."""
        self.snap = snap
        if snap.clusters is None:
            self.clusters.clear()
            self.modules.clear()
        else:
            self._want_picture()
            if snap.picture is not None:
                self.modules.show_picture(snap.picture, layer=f"fc{self.engine.config.studied_layer}",
                                          step=snap.step)
            if snap.ablation is not None:
                self.modules.show_ablation(snap.ablation)
            found = snap.clusters
            self.clusters.show(k=found["k"], source=found["source"], row_sizes=found["row_sizes"],
                               col_sizes=found["col_sizes"], shares=found["shares"],
                               clusterability=snap.clusterability, chance=snap.clusterability_chance,
                               step=snap.cluster_step, significance=snap.significance)
            if snap.significance is not None:
                self.live.significance = snap.significance
        self.refresh_bindings()

    def _refresh(self) -> None:
        if self.engine is not None:
            self.snap = self.engine.snapshot()
            self.refresh_bindings()

    # ----- engine events: one handler per event type ------------------------------------------------------------

    def _current(self, message: msg.EngineMessage) -> bool:
        return message.engine is self.engine  # else a late event from a session that is being closed

    @on(msg.StateChanged)
    def _state_changed(self, message: msg.StateChanged) -> None:
        if not self._current(message):
            return
        event = message.event
        self._refresh()
        self.live.state = event.state
        # Progress is throttled and not sent on pause: the snapshot has the exact step (no torch).
        self.live.step, self.live.epoch, self.live.phase = self.snap.step, self.snap.epoch, self.snap.phase
        self.log_pane.add(f"state: {event.previous} → {event.state}", "debug")
        # State changes are rare and are what a key press waits for: show them now, not on the timer.
        self.control.show_status(self.live)

    @on(msg.ProgressMade)
    def _progress(self, message: msg.ProgressMade) -> None:
        if not self._current(message):
            return
        event, live = message.event, self.live
        live.phase, live.step, live.epoch, live.loss = event.phase, event.step, event.epoch, event.loss
        live.job_step, live.job_total, live.steps_per_s = event.job_step, event.job_total, event.steps_per_s
        self.charts.data.add_loss(event.phase, event.step, event.loss)
        self._dirty = True

    @on(msg.Evaluated)
    def _evaluated(self, message: msg.Evaluated) -> None:
        if not self._current(message):
            return
        event = message.event
        self.live.accuracy = event.test_accuracy
        if event.clusterability is not None:
            self.live.clusterability = event.clusterability
        self.charts.data.add_eval(event.phase, event.step, event.test_accuracy, event.clusterability)
        self._dirty = True

    @on(msg.ClustersFound)
    def _clusters_found(self, message: msg.ClustersFound) -> None:
        if not self._current(message):
            return
        event = message.event
        self.live.clusterability, self.live.significance = event.clusterability, None
        self.clusters.show(k=event.k, source=event.source, row_sizes=event.row_sizes, col_sizes=event.col_sizes,
                           shares=event.shares, clusterability=event.clusterability, chance=event.chance,
                           step=event.step)
        self.charts.data.add_clusters(event.step, event.clusterability, event.chance)
        self.control.show_message(f"Clusters found (k={event.k}); press 2 for the table.")
        self._dirty = True

    @on(msg.PhaseFinished)
    def _phase_finished(self, message: msg.PhaseFinished) -> None:
        if not self._current(message):
            return
        event = message.event
        if event.phase in ("pretrain", "finetune"):
            self.charts.data.add_boundary(event.step, event.phase)
        accuracy = "-" if event.test_accuracy is None else f"{event.test_accuracy:.4f}"
        self.log_pane.add(f"{event.phase} finished at step {event.step} ({event.steps} steps), accuracy {accuracy}")
        self.live.step = max(self.live.step, event.step)
        self._dirty = True

    @on(msg.Saved)
    def _saved(self, message: msg.Saved) -> None:
        if not self._current(message):
            return
        if message.event.reason != "autosave":  # several a second at full speed: they would bury everything else
            self.log_pane.add(f"saved at step {message.event.step} ({message.event.reason})")
        # Training moves the weights: each save's snapshot has the held clusters' current shares; the table
        # takes them on the redraw timer, in place.
        self._shares_due = True

    @on(msg.SignificanceFound)
    def _significance_found(self, message: msg.SignificanceFound) -> None:
        if not self._current(message):
            return
        event = message.event
        found = event.significance
        self.live.significance = found
        self.charts.data.add_null(*null_band(found))
        self.log_pane.add(f"{event.phase} step {event.step}: clusterability {event.clusterability:.4f} "
                          f"{null_text(found)}")
        self._shares_due = True  # the table's summary takes the snapshot's significance on the timer
        self._dirty = True

    @on(msg.Ablated)
    def _ablated(self, message: msg.Ablated) -> None:
        if self._current(message):
            self.modules.show_ablation(message.event.ablation)
            self.log_pane.add(f"ablation at step {message.event.step}: press 4 for what each cluster carries")

    @on(msg.FiguresUpdated)
    def _figures_updated(self, message: msg.FiguresUpdated) -> None:
        if self._current(message):
            self._shares_due = True  # taken on the redraw timer

    @on(ModulesPane.PictureWanted)
    def _want_picture(self) -> None:
        """Tell the engine the size of picture the Modules tab can show (from the next update on)."""
        if self.engine is not None and self.snap is not None and self.snap.clusters is not None:
            size = self.modules.picture_size(self.snap.clusters["k"])
            if size is not None:
                self.engine.set_picture_size(*size)

    @on(msg.LogLine)
    def _log_line(self, message: msg.LogLine) -> None:
        if self._current(message):
            self.log_pane.add(message.event.message, message.event.level)

    @on(msg.Failed)
    def _failed(self, message: msg.Failed) -> None:
        if not self._current(message):
            return
        event = message.event
        self._refresh()
        self.log_pane.add(f"{event.job} failed: {event.message}", "error")
        self.control.show_message(event.message, error=True)
        self.notify(event.message, title=f"{event.job} failed", severity="error")

    def _changed(self) -> None:
        self._dirty = True
        self.control.show_status(self.live)
        self.refresh_bindings()

    def _redraw(self) -> None:
        """The timer: repaint what accumulated since the last tick, at most 4 times a second."""
        if self._dirty:
            self._dirty = False
            self.control.show_status(self.live)
        if self._shares_due and self.engine is not None:
            self._shares_due = False
            self._take(self.engine.snapshot())
        self.charts.redraw()

    # ----- which keys make sense now: the engine says, in its snapshot ----------------------------------------

    def refresh_bindings(self) -> None:
        """Refresh the footer only when what `check_action` reads has changed: each refresh recomposes the footer,
        a layout of the whole screen, and snapshots come several times a second while training. Every screen of the
        stack is told, so the main screen's footer is right again when a dialog over it closes."""
        keys = (self.loading, self.switching, self.engine is None, self.snap.allowed if self.snap else None)
        if keys != self._keys and self._is_mounted:
            self._keys = keys
            for screen in self.screen_stack:
                screen.refresh_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if isinstance(self.screen, SweepScreen):
            return action == "help"  # the sweep view has keys of its own; the session's wait until one is open
        if action in QUEUEABLE and self.loading:
            return True  # remembered and run when the session is ready
        if action in ("train", "cluster", "finetune", "save", "pause", "resume", "stop"):
            allowed = self.snap.allowed if self.snap is not None and not self.switching else frozenset()
            if action == "train":
                return True if {"train", "continue"} & allowed else None
            if action in allowed:
                return True
            if action in ("pause", "resume"):  # space shows one of the two: the other is hidden
                other = "resume" if action == "pause" else "pause"
                return False if other in allowed or action == "resume" else None
            return None
        if action in ("open", "new"):
            idle = self.snap is not None and "train" in self.snap.allowed
            return True if not self.switching and (self.engine is None or idle) else None
        return True

    # ----- actions --------------------------------------------------------------------------------------------

    def action_train(self) -> None:
        if self._queue_if_loading("train"):
            return
        if self.snap is not None and "continue" in self.snap.allowed:
            self._command(lambda engine: engine.continue_plan(), "continuing the unfinished plan")
            return
        try:
            epochs, steps = self.control.train_args()
        except ConfigError as exc:
            self._refuse(exc)
            return
        what = f"train {steps} steps" if steps is not None else f"train {epochs or self.engine.config.epochs} epochs"
        self._command(lambda engine: engine.train(epochs=epochs, steps=steps), what)

    def action_cluster(self) -> None:
        if self._queue_if_loading("cluster"):
            return
        try:
            k, source = self.control.cluster_args()
        except ConfigError as exc:
            self._refuse(exc)
            return
        self._command(lambda engine: engine.cluster(k=k, source=source),
                      f"cluster k={k or self.engine.config.k} on {source}")

    def action_finetune(self) -> None:
        if self._queue_if_loading("finetune"):
            return
        try:
            epochs, lam = self.control.finetune_args()
        except ConfigError as exc:
            self._refuse(exc)
            return
        config = self.engine.config
        self._command(lambda engine: engine.finetune(epochs=epochs, lam=lam),
                      f"finetune {config.finetune_epochs if epochs is None else epochs} epochs, "
                      f"λ={config.lam if lam is None else lam:g}")

    def action_save(self) -> None:
        self._command(lambda engine: engine.save(), "save")

    def action_pause(self) -> None:
        self._command(lambda engine: engine.pause(), "pause")

    def action_resume(self) -> None:
        self._command(lambda engine: engine.resume(), "resume")

    def action_stop(self) -> None:
        self._command(lambda engine: engine.stop(), "stop requested")

    def action_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.key_rows()))

    def action_open(self) -> None:
        self.push_screen(OpenScreen(), self._open_chosen)

    def action_new(self) -> None:
        config = self.engine.config if self.engine is not None else self.config
        self.push_screen(NewSessionScreen(config), self._new_chosen)

    def action_quit(self) -> None:
        if self.quitting:
            return
        if self.snap is not None and "train" not in self.snap.allowed:
            self.push_screen(ConfirmScreen(f"A job is running ({self.snap.state}). Quit? "
                                           "The session is saved and can be continued later."), self._quit_chosen)
            return
        self._quit_chosen(True)

    def _quit_chosen(self, answer: bool | None) -> None:
        if not answer:
            return
        loading = self.switching and self.engine is None  # a session is being opened: let it finish first
        self.quitting = True
        self.switching = True
        self._queued = []
        self.refresh_bindings()
        self.log_pane.add("saving and quitting…")
        self.control.show_message("Saving…")
        if not loading:
            self._close_engine(self.engine)

    def _open_chosen(self, name: str | None) -> None:
        if name and is_sweep(session_path(name)):
            self.push_screen(SweepScreen(session_path(name)), self._open_chosen)  # a member chosen there opens
        elif name and name != self.session_name:
            self._switch(name, None)

    def _show_sweep(self, name: str) -> None:
        """Open on a sweep's view instead of a session: none is open until a member is chosen there."""
        self.switching = False
        self.live = Live(state="no session")
        self.control.show_session(f"[b]sweep {name}[/b]\nno session open: o opens one, n makes one")
        self._changed()
        self._open_chosen(name)

    def _new_chosen(self, result: tuple[str, Config] | None) -> None:
        if result is not None:
            name, config = result
            self._switch(name, config)

    def _queue_if_loading(self, action: str) -> bool:
        if not self.loading:
            return False
        if action not in self._queued:
            self._queued.append(action)
        self.control.show_message(f"Loading the session: {action} starts as soon as it is ready.")
        return True

    def _command(self, send, what: str) -> None:
        """Send one command to the engine; its job's events will say what happened."""
        if self.engine is None:
            return
        send(self.engine)
        self._refresh()  # the engine already counts the command in what it allows
        self.log_pane.add(what)
        if what not in ("pause", "resume"):
            self.control.show_message("")

    def _refuse(self, exc: ConfigError) -> None:
        self.control.show_message(str(exc), error=True)
        self.notify(str(exc), title="Invalid setting", severity="error")

    def key_rows(self) -> list[tuple[str, str]]:
        """(keys, description) of every binding, for the help screen."""
        rows = []
        for binding in self.BINDINGS:
            assert isinstance(binding, Binding)
            keys = binding.key.replace("question_mark", "?").replace("f1", "F1").replace(",", " / ")
            rows.append((keys, binding.tooltip or binding.description))
        rows.append(("tab", "move to a setting; type, then enter or escape returns to the keys"))
        return rows


def run_app(name: str | None, config: Config) -> int:
    """Run the UI on session `name` (opened if it exists, else created), or on a new session."""
    app = ClusterlabApp(name, config)
    try:
        code = app.run()
    finally:
        if app.engine is not None:
            app.engine.close()  # idempotent: makes sure a crash or a signal still saves the session
    return int(code or 0)


__all__ = ["ClusterlabApp", "run_app"]
