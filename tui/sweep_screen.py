"""The sweep view: a sweep's result table, its Pareto chart and its members, live while the sweep runs elsewhere.

The sweep runs in its own process (`clusterlab sweep`); this screen reads its folder at most once a second in a
worker thread (tui.sweep_data: only member sessions whose session.json changed are read again) and updates the
tables in place. Enter on a member dismisses the screen with its name, which the app opens like `o` does.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static, TabbedContent, TabPane
from textual.worker import get_current_worker

from engine.errors import SessionError
from engine.format import fmt, p_cell
from engine.sweep import FAILED, FINISHED, UNFINISHED
from engine.sweep_table import STAGES, pareto_chart, table_axes, table_cells
from tui.sweep_data import SweepState, SweepWatcher, ago

POLL_S = 1.0  # the sweep's files are read at most once a second
PLOTEXT = threading.Lock()  # pareto_chart draws on plotext's one global figure
MEMBER_COLUMNS = ("member", "status", "step", "test accuracy", "clusterability", "p")


READ_FIRST = ("cost vs λ=0", "clusterability", "specialisation")  # after test accuracy, in this order


def readable_order(header: tuple[str, ...]) -> list[int]:
    """Column indices for the view: test accuracy, then what a reader compares it with (its cost, the
    clusterability, the specialisation), then the nulls and other measures, so 80 columns show the cost and
    120 the specialisation; the DataTable scrolls sideways to the rest."""
    at = header.index("test accuracy") + 1
    first = [header.index(title) for title in READ_FIRST if title in header]
    return [*range(at), *first, *(i for i in range(at, len(header)) if i not in first)]


def row_key(row: dict) -> str:
    """A table row's key: its stage and grid point ('finetuned/weights/2/3.0')."""
    return "/".join(str(row[key]) for key in ("stage", *(axis.name for axis in table_axes([row]))))


def member_cells(member: dict) -> tuple[str, ...]:
    status = member["status"]
    if status == UNFINISHED and member["total"]:
        status = f"{UNFINISHED} {member['done']}/{member['total']}"
    return (member["name"], status, "-" if member["step"] is None else f"{member['step']:,}",
            fmt(member["test_accuracy"]), fmt(member["clusterability"]), p_cell(member["significance"]))


def member_of(row: dict, member: dict) -> bool:
    """The member is one of the seeds a result row averages."""
    return STAGES[member["kind"]] == row["stage"] and all(member.get(axis.name) == row[axis.name]
                                                          for axis in table_axes([row]))


def fill(table: DataTable, header: tuple[str, ...], rows: list[tuple[str, tuple[str, ...]]]) -> None:
    """Show keyed rows. With the same keys and widths only the cells that changed are updated, so the cursor stays
    put; else the table is rebuilt with each column as wide as its widest cell, the cursor kept on its row. (Widths
    are set, not measured by DataTable later: a paint before that measurement left cells cut short.)"""
    widths = [max(map(len, column)) for column in zip(header, *(cells for _, cells in rows), strict=True)]
    keys = [key for key, _ in rows]
    if keys == [key.value for key in table.rows] and widths == [c.width for c in table.ordered_columns]:
        columns = list(table.columns)
        for key, cells in rows:
            for column, new, old in zip(columns, cells, table.get_row(key), strict=True):
                if new != old:
                    table.update_cell(key, column, new)
        return
    current = keys[table.cursor_row] if 0 <= table.cursor_row < len(keys) else None
    table.clear(columns=True)
    for title, width in zip(header, widths, strict=True):
        table.add_column(title, width=width)
    for key, cells in rows:
        table.add_row(*cells, key=key)
    if current in keys:
        table.move_cursor(row=keys.index(current))


class ParetoView(Static):
    """Test accuracy against clusterability per λ (engine.sweep_table.pareto_chart), built in a thread when the
    rows change or the pane's size does, and only while it is shown."""

    def __init__(self, **kwargs) -> None:
        super().__init__("", **kwargs)
        self.rows: list[dict] = []
        self._drawn: tuple | None = None  # (rows, size) of the chart shown

    def show_rows(self, rows: list[dict]) -> None:
        self.rows = rows
        self._draw()

    def on_show(self) -> None:
        self._draw()

    def on_resize(self) -> None:
        self._draw()

    def _draw(self) -> None:
        size = (self.content_region.width, self.content_region.height)
        if not self.is_on_screen or not all(size) or (self.rows, size) == self._drawn:
            return
        self._drawn = (self.rows, size)
        self._build(self.rows, *size)

    @work(thread=True, exclusive=True, group="pareto")
    def _build(self, rows: list[dict], width: int, height: int) -> None:
        with PLOTEXT:  # a build for an older size may still be running: it draws on the same global figure
            chart = pareto_chart(rows, width, height) if rows else None
        if not get_current_worker().is_cancelled:  # else a newer build replaces this one
            text = chart or "No finetuned member has finished yet: each λ's mean ± CI appears here as they do."
            self.app.call_from_thread(self.update, Text(text, no_wrap=True))


class SweepScreen(Screen[str | None]):
    """One sweep, read from its folder (`directory`); dismissed with the name of the member to open, or None."""

    BINDINGS = [
        Binding("escape,q", "dismiss(None)", "Back", id="sweep.back", tooltip="back to the session"),
        Binding("1", "tab('sweep-table')", "Table", id="sweep.table", tooltip="the result table"),
        Binding("2", "tab('sweep-pareto')", "Pareto", id="sweep.pareto", tooltip="accuracy vs clusterability"),
        Binding("3", "tab('sweep-members')", "Members", id="sweep.members", tooltip="every member; enter opens one"),
    ]

    AUTO_FOCUS = "#sweep-rows"

    class Read(Message):
        """A poll's result: the sweep's new state, or why it cannot be read."""

        def __init__(self, state: SweepState | None, error: str | None = None) -> None:
            super().__init__()
            self.state = state
            self.error = error

    def __init__(self, directory: Path) -> None:
        super().__init__()
        self.watcher = SweepWatcher(directory)
        self.state: SweepState | None = None
        self._polling = False

    def compose(self) -> ComposeResult:
        yield Static(f"[b]sweep {self.watcher.name}[/b]", id="sweep-title")
        yield Static("reading…", id="sweep-status")
        with TabbedContent(id="sweep-tabs", initial="sweep-table"):
            with TabPane("Table 1", id="sweep-table"):
                yield DataTable(id="sweep-rows", cursor_type="row", zebra_stripes=True)
            with TabPane("Pareto 2", id="sweep-pareto"):
                yield ParetoView(id="pareto")
            with TabPane("Members 3", id="sweep-members"):
                yield DataTable(id="sweep-member-table", cursor_type="row", zebra_stripes=True)
        yield Static("enter on a row shows its members; enter on a member opens it", id="sweep-message")
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        self._poll()
        self.set_interval(POLL_S, self._poll)

    def _poll(self) -> None:
        if not self._polling:  # a slow disk: never more than one read at a time
            self._polling = True
            self._read()

    @work(thread=True, group="sweep-poll")
    def _read(self) -> None:
        try:
            self.post_message(self.Read(self.watcher.poll()))
        except SessionError as exc:
            self.post_message(self.Read(None, str(exc)))

    @on(Read)
    def _show(self, message: Read) -> None:
        self._polling = False
        if message.error is not None:
            self.query_one("#sweep-status", Static).update(Text(message.error, style="red"))
            return
        if message.state is not None:
            self.state = message.state
            header, cells = table_cells(self.state.rows)
            order = readable_order(header)
            fill(self.query_one("#sweep-rows", DataTable), tuple(header[i] for i in order),
                 [(row_key(r), tuple(c[i] for i in order)) for r, c in zip(self.state.rows, cells, strict=True)])
            fill(self.query_one("#sweep-member-table", DataTable), MEMBER_COLUMNS,
                 [(m["name"], member_cells(m)) for m in self.state.members])
            self.query_one(ParetoView).show_rows(self.state.rows)
        if self.state is not None:
            self.query_one("#sweep-status", Static).update(status_line(self.state, time.time()), layout=False)

    def action_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab

    @on(TabbedContent.TabActivated)
    def _tab_shown(self, event: TabbedContent.TabActivated) -> None:
        """Arrows and enter go to the table of the tab shown."""
        tables = event.pane.query(DataTable)
        if tables:
            tables.first().focus()

    @on(DataTable.RowSelected, "#sweep-rows")
    def _row_chosen(self, event: DataTable.RowSelected) -> None:
        """Enter on a result row: the members tab, on the first of the seeds it averages."""
        row = next(r for r in self.state.rows if row_key(r) == event.row_key.value) if self.state else None
        if row is None:
            return
        names = [m["name"] for m in self.state.members]
        first = next(i for i, m in enumerate(self.state.members) if member_of(row, m))
        self.action_tab("sweep-members")
        self.query_one("#sweep-member-table", DataTable).move_cursor(row=first)
        self.message(f"{row['n']} members make this row, from {names[first]}; enter opens one")

    @on(DataTable.RowHighlighted, "#sweep-member-table")
    def _member_highlighted(self, event: DataTable.RowHighlighted) -> None:
        """A failed member's error has no room in the table: the line below says it."""
        member = self._member(str(event.row_key.value))
        if member is not None and member["status"] == FAILED:
            self.message(f"{member['name']} failed: {member.get('error') or 'see the sweep command output'}")

    def _member(self, name: str) -> dict | None:
        return next((m for m in self.state.members if m["name"] == name), None) if self.state else None

    @on(DataTable.RowSelected, "#sweep-member-table")
    def _member_chosen(self, event: DataTable.RowSelected) -> None:
        name = str(event.row_key.value)
        member = self._member(name)
        if member is None or not member["saved"]:
            self.message(f"{name} has no session to open: the sweep has not run it.")
            return
        self.dismiss(name)

    def message(self, text: str) -> None:
        self.query_one("#sweep-message", Static).update(text)


def status_line(state: SweepState, now: float) -> str:
    """'3/8 members finished · last save 4 s ago: sw.s2 at step 1,200 (640/938)'; and how the last run ended."""
    text = f"{state.finished}/{len(state.members)} members finished"
    failed = sum(m["status"] == FAILED for m in state.members)
    if failed:
        text += f", {failed} failed"
    if state.last_member is not None and state.last_saved is not None:
        member = next(m for m in state.members if m["name"] == state.last_member)
        progress = f" ({member['done']}/{member['total']})" if member["status"] != FINISHED and member["total"] else ""
        step = f" at step {member['step']:,}" if member["step"] is not None else ""
        text += f" · last save {ago(state.last_saved, now)} ago: {state.last_member}{step}{progress}"
    if state.ended:
        text += " · the last run ended"
    return text
