"""The training control pane: what the session is doing, and the settings the next command uses."""

from __future__ import annotations

from dataclasses import dataclass

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Input, Label, Select, Static

from engine.config import SOURCES, Config
from engine.errors import ConfigError
from tui.validate import parse_count, parse_k, parse_lam

# (input id, label, flag named in messages)
FIELDS = (
    ("epochs", "epochs", "--epochs"),
    ("steps", "or steps", "--steps"),
    ("k", "k", "--k"),
    ("lam", "λ", "--lam"),
    ("finetune-epochs", "ft epochs", "--finetune-epochs"),
)


@dataclass
class Live:
    """The latest figures from engine events; progress is shown on the redraw timer, state changes at once."""

    state: str = "starting"
    phase: str = "-"
    step: int = 0
    epoch: int = 0
    steps_per_s: float | None = None
    loss: float | None = None
    accuracy: float | None = None
    clusterability: float | None = None
    job_step: int = 0
    job_total: int = 0


class ControlPane(Vertical):
    """Session facts, live progress and the editable settings, validated as the CLI validates them."""

    BINDINGS = [Binding("escape", "leave_field", "Keys", id="control.leave", show=False)]

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.layer_shape: tuple[int, int] = (128, 128)
        self._field_error = False  # the message line shows a settings error

    def compose(self) -> ComposeResult:
        yield Static("no session", id="session-info")
        yield Static("", id="status")
        yield Static("settings", classes="pane-title")
        for field_id, label, _flag in FIELDS:
            with Horizontal(classes="field"):
                yield Label(label, classes="field-label")
                yield Input(id=field_id, compact=True, select_on_focus=True)
        with Horizontal(classes="field"):
            yield Label("source", classes="field-label")
            yield Select([(s, s) for s in SOURCES], id="source", allow_blank=False, compact=True)
        yield Static("", id="message")

    def set_session(self, name: str, dataset: str, device: str, config: Config) -> None:
        """Show a newly opened session and load its settings as the commands' defaults."""
        self.layer_shape = config.layer_shape
        rows, cols = config.layer_shape
        self.show_session(f"[b]{name}[/b]\n{dataset}/{device} fc{config.studied_layer} {rows}x{cols}")
        self.query_one("#epochs", Input).value = str(config.epochs)
        self.query_one("#steps", Input).value = "" if config.steps is None else str(config.steps)
        self.query_one("#k", Input).value = str(config.k)
        self.query_one("#lam", Input).value = f"{config.lam:g}"
        self.query_one("#finetune-epochs", Input).value = str(config.finetune_epochs)
        self.query_one("#source", Select).value = config.cluster_on
        self.show_message("")

    def show_session(self, text: str) -> None:
        """The session lines: name and data of an open session, or which one is opening or failed to."""
        self.query_one("#session-info", Static).update(text)

    def show_status(self, live: Live) -> None:
        running = live.state in ("training", "finetuning")
        rate = f"  {live.steps_per_s:,.0f} steps/s" if running and live.steps_per_s is not None else ""
        job = f"job {live.job_step:,}/{live.job_total:,}" if live.job_total and live.state != "idle" else "job -"
        lines = [
            f"[b]{live.state}[/b]  {live.phase}",
            f"step {live.step:,}  epoch {live.epoch}",
            job,
            f"loss {_fmt(live.loss)}{rate}",
            f"acc {_fmt(live.accuracy)}  clust {_fmt(live.clusterability)}",
        ]
        # Always five lines: no layout pass needed, which keeps 4 updates a second cheap.
        self.query_one("#status", Static).update("\n".join(lines), layout=False)

    def show_message(self, text: str, error: bool = False) -> None:
        message = self.query_one("#message", Static)
        message.update(text)
        message.set_class(error, "-error")
        self._field_error = False

    # ----- reading the settings: each raises ConfigError with the CLI's wording --------------------------

    def train_args(self) -> tuple[int, int | None]:
        """(epochs, steps): a steps value, when given, is what `t` trains, as --steps does for `run`."""
        epochs = self._read("epochs", lambda t: parse_count(t, "--epochs"))
        steps = self._read("steps", lambda t: parse_count(t, "--steps") if t.strip() else None)
        return epochs, steps

    def cluster_args(self) -> tuple[int, str]:
        k = self._read("k", lambda t: parse_k(t, self.layer_shape))
        return k, str(self.query_one("#source", Select).value)

    def finetune_args(self) -> tuple[int, float]:
        epochs = self._read("finetune-epochs", lambda t: parse_count(t, "--finetune-epochs"))
        return epochs, self._read("lam", parse_lam)

    def _read(self, field_id: str, parse):
        widget = self.query_one(f"#{field_id}", Input)
        try:
            value = parse(widget.value)
        except ConfigError:
            widget.add_class("-invalid")
            raise
        widget.remove_class("-invalid")
        return value

    def on_input_changed(self, event: Input.Changed) -> None:
        """Check as the user types, so a bad value is flagged before any key uses it."""
        error = self.first_error()
        if error:
            self.show_message(error, error=True)
            self._field_error = True
        elif self._field_error:
            self.show_message("")  # clear only our own complaint, not news such as an unfinished plan

    def first_error(self) -> str | None:
        """Check every field (marking the bad ones); the first problem's message, or None."""
        errors = []
        for reader in (self.train_args, self.cluster_args, self.finetune_args):
            try:
                reader()
            except ConfigError as exc:
                errors.append(str(exc))
        return errors[0] if errors else None

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.action_leave_field()

    def action_leave_field(self) -> None:
        """Enter or escape hands the keys back to the app, so t/c/f work again straight away."""
        self.screen.set_focus(None)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
