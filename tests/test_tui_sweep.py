"""The sweep view at 80x24: a real tiny sweep's table, Pareto chart and members, live while the sweep runs, and a
member opened from it showing the figures of its row."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time

import pytest
from textual.widgets import DataTable

from engine.config import Config
from engine.format import fmt
from engine.sweep_run import InProcess, run_sweep
from engine.sweep_table import markdown, table_cells
from engine.sweep_table import table_rows as engine_table_rows
from tests.test_tui_support import status_text, table_rows, until
from tui.app import ClusterlabApp
from tui.screens import OpenScreen
from tui.sweep_data import SweepWatcher
from tui.sweep_screen import SweepScreen, member_of, readable_order, row_key

SIZE = (80, 24)
TINY = {"dataset": "synthetic", "hidden": (16, 16), "device": "cpu", "steps": 20, "finetune_epochs": 1,
        "autosave_every": 10**6, "eval_every": 10**6, "null_samples": 20}
GRID = {"seeds": [1, 2], "lams": [0, 5]}  # 8 members: per seed a pretraining, a clustering, two finetunings


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A finished sweep 'sw' (run once for the module) and its table.json."""
    root = tmp_path_factory.mktemp("sweep")
    run_sweep("sw", TINY, GRID, root=root)
    return root, json.loads((root / "sw" / "table.json").read_text())


@pytest.fixture
def swept(built, tmp_path, monkeypatch):
    """A copy of the finished sweep as this test's sessions root (opening a member saves it)."""
    root, table = built
    copy = tmp_path / "sessions"
    shutil.copytree(root, copy)
    monkeypatch.setenv("CLUSTERLAB_SESSIONS", str(copy))
    return copy, table


def view(app) -> SweepScreen:
    assert isinstance(app.screen, SweepScreen)
    return app.screen


def screen_text(app) -> str:
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips(app.size))


def on_screen(app, *texts: str) -> bool:
    text = screen_text(app)
    return all(t in text for t in texts)


async def shown(pilot, app, finished: int, total: int) -> SweepScreen:
    await until(pilot, lambda: isinstance(app.screen, SweepScreen) and f"{finished}/{total} members finished"
                in str(app.screen.query_one("#sweep-status").content), f"{finished}/{total} members in the view")
    return view(app)


def test_the_view_reads_the_sweeps_own_table_and_only_what_changed(built, monkeypatch):
    root, table = built
    watcher = SweepWatcher(root / "sw")
    state = watcher.poll()
    assert state.rows == table["table"]  # the same rows as the sweep wrote, from the members' sessions alone
    figures = ("name", "status", "test_accuracy", "clusterability", "significance", "ablation")
    assert [{k: m[k] for k in figures} for m in state.members] == [{k: m[k] for k in figures}
                                                                    for m in table["members"]]
    assert state.finished == 8 and state.ended
    assert watcher.poll() is None  # nothing changed: nothing re-read, nothing to redraw

    read = []
    monkeypatch.setattr("tui.sweep_data.member_row", lambda directory, member: read.append(member.name) or {
        "name": member.name, "status": "unfinished"})
    session = root / "sw.s2.weights.k2.lam5" / "session.json"
    session.write_text(session.read_text() + " ")  # a save of one member
    assert watcher.poll() is not None and read == ["sw.s2.weights.k2.lam5"]


def test_after_a_run_the_view_shows_its_table_json_and_while_one_runs_the_members(swept, monkeypatch):
    root, table = swept
    later = time.time() + 60
    os.utime(root / "sw" / "table.json", (later, later))  # the run's table is newer than every member's save
    live = [{"stage": "live"}]
    monkeypatch.setattr("tui.sweep_data.table_rows", lambda members: live)
    watcher = SweepWatcher(root / "sw")
    assert watcher.poll().rows == table["table"]
    session = root / "sw.s1" / "session.json"
    os.utime(session, (later + 1, later + 1))  # a member saved since: a run is under way again
    assert watcher.poll().rows == live


def test_rows_of_a_swept_axis_have_their_own_keys_and_members():
    def member(name, seed, hidden):
        return {"name": name, "kind": "pretrain", "seed": seed, "source": None, "k": None, "lam": None,
                "hidden": hidden, "status": "finished", "test_accuracy": 0.5, "clusterability": None,
                "significance": None, "ablation": None}

    members = [member("a", 1, [8, 8]), member("b", 1, [16, 16]), member("c", 2, [8, 8])]
    rows = engine_table_rows(members)
    assert [row_key(r) for r in rows] == ["pretrained/[8, 8]/None/None/None", "pretrained/[16, 16]/None/None/None"]
    assert [m["name"] for m in members if member_of(rows[0], m)] == ["a", "c"]
    assert table_cells(rows)[1][1][:2] == ("pretrained", "16x16")


async def test_sweep_view_at_80x24_table_chart_members(swept):
    root, table = swept
    app = ClusterlabApp("sw", Config())  # what `clusterlab tui --session sw` runs
    async with app.run_test(size=SIZE) as pilot:
        screen = await shown(pilot, app, 8, 8)
        assert app.client is None  # no session is open behind the view
        rows = screen.query_one("#sweep-rows", DataTable)
        # each row as the sweep's printed Markdown table has it, the columns read first first
        header, cells = table_cells(table["table"])
        order = readable_order(header)
        assert [c.label.plain for c in rows.ordered_columns] == [header[i] for i in order]
        assert table_rows(rows) == [[c[i] for i in order] for c in cells]
        assert [c[0] for c in cells] == [line.split(" | ")[0][2:] for line in markdown(table["table"]).splitlines()[2:]]
        await until(pilot, lambda: on_screen(app, "esc Back", "finetuned   weights  2  5  2", "cost vs λ=0"),
                    "the table's rows, its cost column and the view's keys on screen")
        await pilot.resize_terminal(120, 40)
        await until(pilot, lambda: on_screen(app, "specialisation"), "the specialisation column whole at 120")
        await pilot.resize_terminal(*SIZE)
        text = screen_text(app)
        assert "the last run ended" in text
        assert "t Train" not in text  # the session's keys wait until one is open

        await pilot.press("2")
        await until(pilot, lambda: "λ=5" in screen_text(app), "the Pareto chart")
        text = screen_text(app)
        assert "λ=0" in text and "test accuracy vs clusterability" in text and "clusterability" in text

        await pilot.press("3")
        members = screen.query_one("#sweep-member-table", DataTable)
        assert [r[0] for r in table_rows(members)] == [m["name"] for m in table["members"]]
        assert all(r[1] == "finished" for r in table_rows(members))
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, SweepScreen), "the view to close")
        assert "no session open" in str(app.query_one("#session-info").content)
        await pilot.press("q")
        await until(pilot, lambda: app.return_code is not None, "the app to exit")


async def test_a_member_opened_from_the_view_shows_the_figures_of_its_row(swept):
    root, table = swept
    app = ClusterlabApp("sw", Config())
    async with app.run_test(size=SIZE) as pilot:
        screen = await shown(pilot, app, 8, 8)
        rows = screen.query_one("#sweep-rows", DataTable)
        keys = [key.value for key in rows.rows]
        rows.move_cursor(row=keys.index("finetuned/weights/2/5.0"))
        await pilot.press("enter")  # a result row: the members tab, on the first seed it averages
        members = screen.query_one("#sweep-member-table", DataTable)
        await until(pilot, lambda: members.has_focus, "the members tab")
        member = next(m for m in table["members"] if m["name"] == "sw.s1.weights.k2.lam5")
        row = table_rows(members)[members.cursor_row]
        assert row[0] == member["name"]
        assert row[3:5] == [fmt(member["test_accuracy"]), fmt(member["clusterability"])]

        await pilot.press("enter")
        await until(pilot, lambda: app.client is not None and app.view.snapshot is not None, "the member to open")
        assert app.session_name == member["name"]
        snap = app.view.snapshot
        assert (snap.test_accuracy, snap.clusterability) == (member["test_accuracy"], member["clusterability"])
        assert snap.params_sha256 == member["params_sha256"]
        assert f"acc {row[3]}\nclust {row[4]}" in status_text(app)  # the same figures on screen as in its row

        await pilot.press("o")  # the session picker lists the sweep; choosing it shows the view again
        await until(pilot, lambda: isinstance(app.screen, OpenScreen), "the session list")
        picker = app.screen.query_one(DataTable)
        await until(pilot, lambda: picker.row_count > 0, "the sessions listed")
        names = [r[0] for r in table_rows(picker)]
        picker.move_cursor(row=names.index("sw"))
        await pilot.press("enter")
        await shown(pilot, app, 8, 8)
        await pilot.press("escape")
        await until(pilot, lambda: app.client is not None and app.session_name == member["name"], "the member again")
        await pilot.press("q")
        await until(pilot, lambda: app.return_code is not None, "the app to exit")


class Gated(InProcess):
    """Runs each member only when the test lets it: the sweep's progress, one member at a time."""

    def __init__(self) -> None:
        super().__init__()
        self.go = threading.Semaphore(0)

    def __call__(self, settings, report, progress):
        def gated(result):
            report(result)
            self.go.acquire()

        self.go.acquire()
        super().__call__(settings, gated, progress)


async def test_the_view_follows_a_sweep_while_it_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("CLUSTERLAB_SESSIONS", str(tmp_path))
    monkeypatch.setattr("tui.sweep_screen.POLL_S", 0.1)  # once a second in use; the test need not wait that long
    executor = Gated()
    sweep = threading.Thread(target=run_sweep, args=("live", TINY, {"seeds": [1], "lams": [0, 5]}),
                             kwargs={"executor": executor})
    sweep.start()
    try:
        await until_file(tmp_path / "live" / "sweep.json")
        app = ClusterlabApp("live", Config())
        async with app.run_test(size=SIZE) as pilot:
            screen = await shown(pilot, app, 0, 4)
            rows = screen.query_one("#sweep-rows", DataTable)
            assert rows.row_count == 0 and "the last run ended" not in str(screen.query_one("#sweep-status").content)
            for done in range(1, 5):
                executor.go.release()  # one more member runs in the sweep's thread; the view reads its session
                await shown(pilot, app, done, 4)
            assert [r[0] for r in table_rows(rows)] == ["pretrained", "clustered", "finetuned", "finetuned"]
            executor.go.release()
            await until(pilot, lambda: "the last run ended" in str(screen.query_one("#sweep-status").content),
                        "the end of the run")
            await pilot.press("2")
            await until(pilot, lambda: "λ=5" in screen_text(app), "the Pareto chart of the finished sweep")
            await pilot.press("q", "q")
            await until(pilot, lambda: app.return_code is not None, "the app to exit")
    finally:
        for _ in range(6):
            executor.go.release()
        sweep.join(timeout=60)
    assert not sweep.is_alive()


async def until_file(path, timeout: float = 30.0) -> None:
    import asyncio
    import time

    deadline = time.monotonic() + timeout
    while not path.is_file():
        assert time.monotonic() < deadline, f"timed out waiting for {path}"
        await asyncio.sleep(0.01)


async def test_failed_members_say_why(tmp_path, monkeypatch):
    monkeypatch.setenv("CLUSTERLAB_SESSIONS", str(tmp_path))
    run_sweep("bad", {**TINY, "lr": 1e30}, {"seeds": [1], "lams": [5]})  # the loss blows up in pretraining
    app = ClusterlabApp("bad", Config())
    async with app.run_test(size=SIZE) as pilot:
        screen = await shown(pilot, app, 0, 4)
        await until(pilot, lambda: "4 failed" in str(screen.query_one("#sweep-status").content), "the failures")
        await pilot.press("3")
        members = screen.query_one("#sweep-member-table", DataTable)
        assert [r[1] for r in table_rows(members)] == ["failed"] * 4
        await until(pilot, lambda: "bad.s1 failed: " in str(screen.query_one("#sweep-message").content)
                    and "loss became" in str(screen.query_one("#sweep-message").content), "why the first failed")
        await pilot.press("down")
        await until(pilot, lambda: "did not finish" in str(screen.query_one("#sweep-message").content),
                    "why its child was not run")
        await pilot.press("enter")  # it has no session: nothing is opened (or created)
        assert "has no session to open" in str(screen.query_one("#sweep-message").content)
        assert isinstance(app.screen, SweepScreen) and not (tmp_path / "bad.s1.weights.k2").exists()
        await pilot.press("escape", "q")
        await until(pilot, lambda: app.return_code is not None, "the app to exit")


async def test_escape_returns_from_a_member_to_the_sweep_and_viewing_it_saves_nothing(swept):
    root, table = swept
    name = "sw.s1.weights.k2.lam5"
    session = root / name / "session.json"
    saved = session.stat()
    app = ClusterlabApp("sw", Config())
    async with app.run_test(size=SIZE) as pilot:
        screen = await shown(pilot, app, 8, 8)
        await pilot.press("3")
        members = screen.query_one("#sweep-member-table", DataTable)
        members.move_cursor(row=[r[0] for r in table_rows(members)].index(name))
        await pilot.press("enter")
        await until(pilot, lambda: app.client is not None and app.view.snapshot is not None, "the member to open")
        await pilot.press("escape")
        await shown(pilot, app, 8, 8)  # back in the sweep's view
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, SweepScreen) and app.session_name == name,
                    "the member again")
        await pilot.press("q")  # ends the member's host: nothing changed, nothing is written
        await until(pilot, lambda: app.return_code is not None, "the app to exit")
    assert (session.stat().st_ino, session.stat().st_mtime_ns) == (saved.st_ino, saved.st_mtime_ns)
