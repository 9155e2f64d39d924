"""Modal screens: help, a question with a few answers, the session list to open, the new-session form."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Input, Label, Static

from engine.config import Config
from engine.errors import ClusterlabError, ConfigError
from engine.format import SESSION_COLUMNS, session_cells
from engine.listing import list_sessions
from engine.options import OPTIONS, config_from_texts
from engine.session import check_name, close_names, new_name, session_path

HELP_WIDTH = 50  # the help's action column, in cells


class HelpScreen(ModalScreen[None]):
    """Every key binding given and what it does."""

    BINDINGS = [Binding("escape,q,question_mark,f1,enter", "dismiss", "Close", id="help.close")]

    def __init__(self, bindings: list) -> None:
        super().__init__()
        self.rows = []
        for binding in bindings:
            keys = binding.key.replace("question_mark", "?").replace("f1", "F1").replace(",", " / ")
            self.rows.append((keys, binding.tooltip or binding.description))
        self.rows.append(("tab", "move to a setting; type, then enter or escape returns to the keys"))
        self.rows.append(("^c / ^q", "ctrl+c and ctrl+q: the same as q"))

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static("Keys", classes="dialog-title")
            table: DataTable = DataTable(id="help-table", cursor_type="row")
            table.add_column("key")
            # Wrapped, never cut: the dialog is 68 cells inside at 80 columns (keys, paddings, a scrollbar).
            table.add_column("action", width=HELP_WIDTH)
            for key, description in self.rows:
                table.add_row(key, Text(description), height=None)
            yield table
            yield Static("escape, enter, q, ? or F1 closes this.", classes="dialog-hint")


class ChoiceScreen(ModalScreen[str | None]):
    """A question with a few answers, each a key and a button; escape answers None (nothing is done)."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel", id="choice.cancel")]

    def __init__(self, question: str, choices: list[tuple[str, str, str]]) -> None:
        """`choices`: (key, label, answer) each, in the order shown."""
        super().__init__()
        self.question = question
        self.choices = choices

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog dialog-small"):
            yield Static(self.question, id="question")
            with Horizontal(classes="buttons"):
                for key, label, answer in self.choices:
                    yield Button(f"{label} ({key})", id=f"choice-{answer}", compact=True)
                yield Button("Cancel (esc)", id="choice-cancel", compact=True)

    def on_key(self, event) -> None:
        answer = next((answer for key, _, answer in self.choices if key == event.key), None)
        if answer is not None:
            event.stop()
            self.dismiss(answer)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        answer = str(event.button.id).removeprefix("choice-")
        self.dismiss(None if answer == "cancel" else answer)


class OpenScreen(ModalScreen[str | None]):
    """The saved sessions, newest first; enter opens the highlighted one."""

    BINDINGS = [Binding("escape,q", "dismiss(None)", "Cancel", id="open.cancel")]
    AUTO_FOCUS = "#session-table"

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static("Open a session (enter opens, escape cancels)", classes="dialog-title")
            table: DataTable = DataTable(id="session-table", cursor_type="row")
            for key, title in SESSION_COLUMNS:
                table.add_column(title, key=key)
            yield table
            yield Static("", id="open-message", classes="dialog-hint")

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        rows = list_sessions()
        for row in rows:
            table.add_row(*session_cells(row), key=row["name"])
        self.errors = {row["name"]: row["error"] for row in rows if "error" in row}
        if not rows:
            self.query_one("#open-message", Static).update("No sessions yet: escape, then n makes one.")

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        """Say why a session is unreadable when its row is highlighted (the table has no room for it)."""
        self.query_one("#open-message", Static).update(self.errors.get(str(event.row_key.value), ""))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.dismiss(str(event.row_key.value))


class NewSessionScreen(ModalScreen[tuple[str, Config] | None]):
    """A form with the session name and every config field; invalid values are explained, not fatal."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel", id="new.cancel")]
    AUTO_FOCUS = "#field-name"

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static("New session (enter creates, escape cancels; empty = default)", classes="dialog-title")
            with VerticalScroll(id="form"):
                with Horizontal(classes="field"):
                    yield Label("name", classes="form-label")
                    yield Input(new_name(self.config.dataset), id="field-name", compact=True)
                for option in OPTIONS:
                    with Horizontal(classes="field"):
                        yield Label(option.label, classes="form-label")
                        yield Input(option.text(getattr(self.config, option.name)), id=f"field-{option.name}",
                                    compact=True, tooltip=option.help, placeholder=option.help)
            yield Static("", id="form-message", classes="dialog-hint")
            with Horizontal(classes="buttons"):
                yield Button("Create", id="create", variant="primary", compact=True)
                yield Button("Cancel", id="cancel", compact=True)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self._create()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "create":
            self._create()
        else:
            self.dismiss(None)

    def _create(self) -> None:
        try:
            result = self.read_form()
        except ClusterlabError as exc:
            message = self.query_one("#form-message", Static)
            message.update(str(exc))
            message.add_class("-error")
            return
        close = close_names(result[0])
        if not close:
            self.dismiss(result)
            return
        def answered(answer: str | None) -> None:
            if answer == "create":
                self.dismiss(result)  # not returned: Textual would await it from the question's handler

        # a name one typo away from an existing session's: make sure a new one is meant (escape: back to the form)
        self.app.push_screen(ChoiceScreen(f"A session called {' and '.join(close)} exists. Create {result[0]} as "
                                          "well?", [("c", f"Create {result[0]}", "create")]), answered)

    def read_form(self) -> tuple[str, Config]:
        """The name and a validated Config; ConfigError/SessionError name the bad field as the CLI would."""
        name = check_name(self.query_one("#field-name", Input).value.strip())
        if session_path(name).exists():
            raise ConfigError(f"A session called {name!r} already exists: choose another name, or open it with o.")
        texts = {option.name: self.query_one(f"#field-{option.name}", Input).value for option in OPTIONS}
        return name, config_from_texts(texts)
