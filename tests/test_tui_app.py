"""Pilot tests of the TUI at 80x24 on synthetic data: the whole loop, reopening, settings, screens, quitting."""

from __future__ import annotations

import json

import pytest
from textual.widgets import DataTable, Input

from engine import Engine
from engine.session import session_path
from tests.test_tui_support import log_text, read_log, send_key, status_text, table_rows, tui_config, until
from tui.app import ClusterlabApp
from tui.screens import ConfirmScreen, HelpScreen, NewSessionScreen, OpenScreen

SIZE = (80, 24)


@pytest.fixture
def tui_sessions(tmp_path, monkeypatch):
    root = tmp_path / "sessions"
    root.mkdir()
    monkeypatch.setenv("CLUSTERLAB_SESSIONS", str(root))
    return root


async def ready(pilot, app) -> None:
    await until(pilot, lambda: app.engine is not None and not app.switching, "the session to open")


async def idle(pilot, app) -> None:
    await until(pilot, lambda: app.live.state == "idle" and app.engine.snapshot().state == "idle"
                and app.engine.wait(0), "the engine to be idle")


def chart_points(app) -> dict:
    data = app.charts.data
    return {name: {phase: runs.lines() for phase, runs in getattr(data, name).items()}
            for name in ("loss", "accuracy", "clusterability")} | {"boundaries": list(data.boundaries)}


async def test_whole_loop_then_reopen_shows_the_same_clusters_and_charts(tui_sessions):
    app = ClusterlabApp("loop", tui_config(epochs=500))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        assert "loop" in str(app.query_one("#session-info").content)
        assert app.check_action("finetune", ()) is None  # no clusters yet: shown disabled

        await pilot.press("t")
        await until(pilot, lambda: "training" in status_text(app), "training on screen")
        await until(pilot, lambda: app.engine.snapshot().step > 0, "steps to be taken")

        send_key(app, "space")
        await until(pilot, lambda: "paused" in status_text(app), "paused on screen")
        assert app.engine.snapshot().state == "paused"
        assert app.check_action("cluster", ()) is None
        assert app.check_action("resume", ()) is True and app.check_action("pause", ()) is False  # footer: Resume
        step = app.engine.snapshot().step
        await pilot.pause(0.3)  # an observation window, not synchronisation: a paused engine takes no steps
        assert app.engine.snapshot().step == step

        send_key(app, "space")
        await until(pilot, lambda: app.engine.snapshot().step > step, "training to go on")
        assert "training" in status_text(app)

        send_key(app, "x")  # stop: 500 epochs would take too long
        await idle(pilot, app)

        await pilot.press("c")
        table = app.query_one("#cluster-table", DataTable)
        await until(pilot, lambda: table.row_count == 3, "a cluster table with k=3 rows")
        snap = app.engine.snapshot()
        assert snap.clusters["k"] == 3
        assert [int(r[1]) for r in table_rows(table)] == list(snap.clusters["row_sizes"])
        await until(pilot, lambda: "vs null" in str(app.query_one("#cluster-summary").content),
                    "the clusterability against its shuffle null")
        assert "p=" in status_text(app)  # the left pane's clust line has the p-value beside it
        await idle(pilot, app)

        assert app.check_action("finetune", ()) is True
        await pilot.press("f")
        await until(pilot, lambda: "finetune" in status_text(app), "finetune on screen")
        await idle(pilot, app)
        assert app.engine.snapshot().history[-1]["phase"] == "finetune"
        assert set(app.charts.data.loss) == {"pretrain", "finetune"}

        await pilot.press("s")
        final_step = app.engine.snapshot().step
        saved_line = f"saved at step {final_step} (request)"
        await until(pilot, lambda: saved_line in log_text(app), "the save in the log")
        await idle(pilot, app)
        rows, charts = table_rows(table), chart_points(app)
        assert charts["boundaries"]  # phase boundaries are drawn

        await pilot.press("q")
        await until(pilot, lambda: app.return_code is not None, "the app to exit")
    assert app.return_code == 0
    saved = json.loads((tui_sessions / "loop" / "session.json").read_text())
    assert saved["step"] == final_step and saved["phase"] == "finetune"

    again = ClusterlabApp("loop", tui_config())
    async with again.run_test(size=SIZE) as pilot:
        await ready(pilot, again)
        table = again.query_one("#cluster-table", DataTable)
        assert table_rows(table) == rows
        assert chart_points(again) == charts
        assert f"step {final_step:,}" in status_text(again)
        await pilot.press("q")
        await until(pilot, lambda: again.return_code is not None, "the app to exit")


async def test_bad_settings_are_explained_and_the_app_keeps_running(tui_sessions):
    app = ClusterlabApp("bad", tui_config())
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        k = app.query_one("#k", Input)
        k.value = "99"
        await until(pilot, lambda: "--k must be a whole number from 2 to 32" in str(app.query_one("#message").content),
                    "the k message")
        assert k.has_class("-invalid")
        await pilot.press("c")  # the app is idle: press returns once the key has been handled
        # Refused in the UI: nothing was sent to the engine.
        assert app.engine.snapshot().plan == ()
        assert "cluster k=" not in await read_log(pilot, app)
        k.value = "2"
        app.query_one("#lam", Input).value = "-1"
        await until(pilot, lambda: "--lam must be a finite number" in str(app.query_one("#message").content),
                    "the lam message")
        app.query_one("#epochs", Input).value = "x"
        await pilot.press("t")
        await until(pilot, lambda: "--epochs must be a whole number" in str(app.query_one("#message").content),
                    "the epochs message")
        assert app.engine.snapshot().plan == () and app.engine.snapshot().step == 0
        assert " train " not in await read_log(pilot, app)
        # The engine's own refusals arrive as events and are shown too.
        app.engine.finetune()
        await until(pilot, lambda: "needs clusters" in log_text(app),
                    "the engine's refusal in the log")
        await pilot.press("q")
        await until(pilot, lambda: app.return_code is not None, "the app to exit")


async def test_t_continues_an_unfinished_plan(tui_sessions):
    engine = Engine.create(session_path("held"), tui_config(epochs=1))
    engine.plan_default()
    engine.close()  # closes before or during the first job: the plan is saved unfinished
    app = ClusterlabApp("held", tui_config())
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        assert app.snap.held and "Unfinished plan" in str(app.query_one("#message").content)
        await pilot.press("t")
        # The plan may run start to end while the key is processed: wait on its result, not on a passing state.
        await until(pilot, lambda: not app.engine.snapshot().plan and not app.snap.held, "the plan to run")
        await idle(pilot, app)
        snap = app.engine.snapshot()
        assert snap.plan == () and [h["phase"] for h in snap.history][-2:] == ["cluster", "finetune"]
        await pilot.press("q")
        await until(pilot, lambda: app.return_code is not None, "the app to exit")


async def test_quit_while_training_asks_then_saves_resumably(tui_sessions):
    app = ClusterlabApp("busy", tui_config(epochs=500))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await pilot.press("t")
        await until(pilot, lambda: app.live.state == "training", "training")
        send_key(app, "q")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the quit question")
        send_key(app, "n")
        await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen), "the question to close")
        assert app.return_code is None
        send_key(app, "q")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the quit question")
        send_key(app, "y")
        await until(pilot, lambda: app.return_code is not None, "the app to exit")
    saved = json.loads((tui_sessions / "busy" / "session.json").read_text())
    assert saved["step"] > 0 and saved["plan"][0]["kind"] == "pretrain"


async def test_help_new_and_open_screens(tui_sessions):
    app = ClusterlabApp("first", tui_config())
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen), "the help screen")
        keys = {str(row[0]) for row in table_rows(app.screen.query_one(DataTable))}
        assert {"t", "space", "c", "f", "s", "x", "o", "n", "1", "2", "3", "? / F1", "q"} <= keys
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, HelpScreen), "help to close")

        await pilot.press("n")
        await until(pilot, lambda: isinstance(app.screen, NewSessionScreen), "the new-session form")
        form = app.screen
        form.query_one("#field-name", Input).value = "second"
        form.query_one("#field-hidden", Input).value = "16,16"
        form.query_one("#field-k", Input).value = "20"
        await pilot.press("enter")
        await until(pilot, lambda: "--k must be" in str(form.query_one("#form-message").content), "the k error")
        form.query_one("#field-k", Input).value = "4"
        await pilot.press("enter")
        await until(pilot, lambda: app.engine is not None and app.engine.name == "second" and not app.switching,
                    "the new session")
        assert app.engine.config.hidden == (16, 16) and app.engine.config.k == 4
        assert (tui_sessions / "first" / "session.json").is_file()  # the first one was saved on leaving

        await pilot.press("o")
        await until(pilot, lambda: isinstance(app.screen, OpenScreen), "the session list")
        table = app.screen.query_one(DataTable)
        await until(pilot, lambda: table.row_count == 2, "two sessions listed")
        names = [row[0] for row in table_rows(table)]
        table.move_cursor(row=names.index("first"))
        await pilot.press("enter")
        await until(pilot, lambda: app.engine is not None and app.engine.name == "first" and not app.switching,
                    "the first session again")
        await pilot.press("q")
        await until(pilot, lambda: app.return_code is not None, "the app to exit")


async def test_a_session_that_cannot_open_is_reported(tui_sessions):
    (tui_sessions / "broken").mkdir()
    (tui_sessions / "broken" / "junk").write_text("x")
    app = ClusterlabApp("broken", tui_config())
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: not app.switching, "the open attempt")
        assert app.engine is None and "session.json" in str(app.query_one("#message").content)
        assert app.check_action("train", ()) is None and app.check_action("new", ()) is True
        await pilot.press("q")
        await until(pilot, lambda: app.return_code is not None, "the app to exit")


async def test_training_keeps_the_footer_still_and_plots_only_what_is_shown_twice_a_second(tui_sessions, monkeypatch):
    import time

    from tui.widgets.charts import PLOT_INTERVAL_S
    from tui.widgets.plot import MatrixPlot

    builds: list[tuple[str, float]] = []
    build = MatrixPlot._build
    monkeypatch.setattr(MatrixPlot, "_build", lambda self: builds.append((self.id, time.monotonic())) or build(self))
    app = ClusterlabApp("quiet", tui_config(epochs=500, autosave_every=16, eval_every=32))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await pilot.press("3")  # the log tab: the charts are hidden
        await pilot.press("t")
        await until(pilot, lambda: "training" in status_text(app), "training on screen")
        footer = []  # each refresh of the key bindings recomposes the footer: a layout of the whole screen
        refresh = app.screen.refresh_bindings
        monkeypatch.setattr(app.screen, "refresh_bindings", lambda: footer.append(1) or refresh())
        builds.clear()
        start = app.engine.snapshot().step
        await until(pilot, lambda: app.engine.snapshot().step >= start + 16 * 8, "eight saves while hidden")
        assert builds == [] and footer == []  # saves and snapshots changed no key; hidden charts built nothing

        send_key(app, "1")
        await until(pilot, lambda: {"loss-chart", "accuracy-chart"} <= {name for name, _ in builds}, "charts shown")
        shown = time.monotonic()
        await pilot.pause(0.75)
        recent = [at for name, at in builds if name == "loss-chart" and at >= shown]
        assert 1 <= len(recent) <= (time.monotonic() - shown) / PLOT_INTERVAL_S + 1  # as it trains, at most 2 Hz
        assert footer == []
        send_key(app, "x")
        await idle(pilot, app)
        assert footer  # the state went back to idle: the footer shows the keys that allows
        await pilot.press("q")
        await until(pilot, lambda: app.return_code is not None, "the app to exit")
