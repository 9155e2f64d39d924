"""The training control pane: what the session is doing, and the settings the next command uses."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.reactive import reactive, var
from textual.validation import ValidationResult, Validator
from textual.widgets import Input, Label, Select, Static

from engine import events as ev
from engine.config import SOURCES, Config
from engine.errors import ConfigError
from engine.format import fmt, p_lines
from engine.options import BY_NAME, Option
from engine.snapshot import Snapshot
from tui.state import RUNNING, Live, p_shown

STATUS_INTERVAL_S = 0.25  # progress repaints at most 4 times a second; a state change at once

# (Config field, label): the settings the keys t, c and f use, each checked as its CLI flag is.
FIELDS = (
    ("epochs", "epochs"),
    ("steps", "or steps"),
    ("k", "k"),
    ("lam", "λ"),
    ("finetune_epochs", "ft epochs"),
)


class OptionValidator(Validator):
    """A field's text checked by its option against the session's config: the CLI's words, as the user types."""

    def __init__(self, pane: ControlPane, option: Option) -> None:
        super().__init__()
        self.pane, self.option = pane, option

    def validate(self, value: str) -> ValidationResult:
        try:
            self.option.check(self.pane.config, value)
        except ConfigError as exc:
            return self.failure(str(exc))
        return self.success()


class ControlPane(Vertical):
    """Session facts, live progress and the editable settings, validated as the CLI validates them."""

    BINDINGS = [Binding("escape", "leave_field", "Keys", id="control.leave", show=False)]

    snapshot: reactive[Snapshot | None] = var(None, init=False)
    live: reactive[Live] = var(Live, init=False)
    event: reactive[ev.Event | None] = var(None, init=False)

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.config = Config()  # the open session's: its defaults fill empty fields, its layer bounds k
        self._field_error: str | None = None  # the field whose error the message line shows (not news)
        self._session: str | None = None  # the folder of the session whose settings the fields hold
        self._dirty = False  # live figures came since the status was last painted
        self._status_rows = 0  # the status's height in rows as last laid out

    def compose(self) -> ComposeResult:
        yield Static("no session", id="session-info")
        yield Static("", id="status")
        yield Static("settings", classes="pane-title")
        for name, label in FIELDS:
            with Horizontal(classes="field"):
                yield Label(label, classes="field-label")
                yield Input(id=name, compact=True, select_on_focus=True, tooltip=BY_NAME[name].help,
                            validators=[OptionValidator(self, BY_NAME[name])])
        with Horizontal(classes="field"):
            yield Label("source", classes="field-label")
            yield Select([(s, s) for s in SOURCES], id="source", allow_blank=False, compact=True)
        yield Static("", id="message")

    def on_mount(self) -> None:
        self.show_status(self.live)
        self.set_interval(STATUS_INTERVAL_S, self._repaint)

    def watch_snapshot(self, snap: Snapshot | None) -> None:
        """A newly attached session's settings become the fields' defaults; later snapshots leave them be."""
        session = snap.session if snap is not None else None
        if session is not None and session != self._session:
            self.set_session(snap.name, snap.dataset, snap.device, Config.from_dict(snap.config))
        self._session = session

    def watch_live(self, old: Live, new: Live) -> None:
        # State changes are rare and are what a key press waits for: shown now, progress on the timer.
        if old.state != new.state:
            self.show_status(new)
        else:
            self._dirty = True

    def watch_event(self, event: ev.Event | None) -> None:
        if isinstance(event, ev.ClustersFound):
            self.show_message(f"Clusters found (k={event.k}); press 2 for the table.")
        elif isinstance(event, ev.Failed):
            self.show_message(event.message, error=True)
            self.notify(event.message, title=f"{event.job} failed", severity="error")

    def _repaint(self) -> None:
        if self._dirty:
            self._dirty = False
            self.show_status(self.live)

    def set_session(self, name: str, dataset: str, device: str, config: Config) -> None:
        """Show a newly opened session and load its settings as the commands' defaults."""
        self.config = config
        rows, cols = config.layer_shape
        self.show_session(f"[b]{name}[/b]\n{dataset}/{device} fc{config.studied_layer} {rows}x{cols}")
        for name_, _label in FIELDS:
            self.query_one(f"#{name_}", Input).value = BY_NAME[name_].text(getattr(config, name_))
        self.query_one("#source", Select).value = config.cluster_on
        self.show_message("")

    def show_session(self, text: str) -> None:
        """The session lines: name and data of an open session, or which one is opening or failed to."""
        self.query_one("#session-info", Static).update(text)

    def show_status(self, live: Live) -> None:
        running = live.state in RUNNING
        rate = f"  {live.steps_per_s:,.0f} steps/s" if running and live.steps_per_s is not None else ""
        job = f"job {live.job_step:,}/{live.job_total:,}" if live.job_total and live.state != "idle" else "job -"
        p, *floor = p_lines(live.significance) if p_shown(live) else [""]
        tag = p or ("live" if running and live.clusterability is not None else "")
        measured = live.clusterability_step
        if tag != "live" and measured is not None and measured != live.step:  # a figure of an earlier step
            floor.insert(0, f"  measured at step {measured:,}")
        lines = [
            f"{live.state}  {live.phase}",
            f"step {live.step:,}  epoch {live.epoch}",
            job,
            f"loss {fmt(live.loss)}{rate}",
            f"acc {fmt(live.accuracy)}",
            f"clust {fmt(live.clusterability)}{'  ' + tag if tag else ''}",
            *floor,
        ]
        status = self.query_one("#status", Static)
        # A layout pass only when the height changes (a p or a note wraps onto another row): 4 updates a second
        # stay cheap, and a line that wraps is never left cut off.
        width = max(1, status.content_region.width)
        rows = sum(max(1, -(-len(line) // width)) for line in lines)
        status.update(f"[b]{lines[0]}[/b]\n" + "\n".join(lines[1:]), layout=rows != self._status_rows)
        self._status_rows = rows

    def show_message(self, text: str, error: bool = False) -> None:
        message = self.query_one("#message", Static)
        message.update(text)
        message.set_class(error, "-error")
        self._field_error = None

    # ----- reading the settings: each raises ConfigError with the CLI's wording --------------------------

    def value(self, name: str) -> object:
        """The checked value of field `name` (None when empty: the session's default applies)."""
        return BY_NAME[name].check(self.config, self.query_one(f"#{name}", Input).value)

    def train_args(self) -> tuple[int | None, int | None]:
        """(epochs, steps): a steps value, when given, is what `t` trains, as --steps does for `run`."""
        return self.value("epochs"), self.value("steps")

    def cluster_args(self) -> tuple[int | None, str]:
        return self.value("k"), str(self.query_one("#source", Select).value)

    def finetune_args(self) -> tuple[int | None, float | None]:
        return self.value("finetune_epochs"), self.value("lam")

    def on_input_changed(self, event: Input.Changed) -> None:
        """Say what is wrong as the user types, so a bad value is flagged before any key uses it."""
        result = event.validation_result
        if result is not None and not result.is_valid:
            self.show_message(result.failure_descriptions[0], error=True)
            self._field_error = event.input.id
        elif self._field_error == event.input.id:  # fixed: a valid value in another field leaves the error shown
            self.show_message("")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.action_leave_field()

    def action_leave_field(self) -> None:
        """Enter or escape hands the keys back to the app, so t/c/f work again straight away."""
        self.screen.set_focus(None)
