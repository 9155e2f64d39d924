"""Pilot tests of the TUI at 80x24 on synthetic data, attached to a host served in this process over its real Unix
socket: the whole loop, re-attaching, settings, screens, quitting, detaching."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
from textual.widgets import DataTable, Input

from engine import Engine
from engine.session import session_path
from tests.test_tui_support import (
    InProcessHosts,
    log_text,
    read_log,
    send_key,
    status_text,
    table_rows,
    tui_config,
    until,
)
from tui.app import DETACHED, QUIT, ClusterlabApp
from tui.screens import ChoiceScreen, HelpScreen, NewSessionScreen, OpenScreen

SIZE = (80, 24)


@pytest.fixture
def tui_sessions(tmp_path, monkeypatch):
    root = tmp_path / "sessions"
    root.mkdir()
    monkeypatch.setenv("CLUSTERLAB_SESSIONS", str(root))
    return root


@pytest.fixture
def hosts(tui_sessions):
    served = InProcessHosts()
    yield served
    served.close()


def client_app(name, config, hosts, **kwargs) -> ClusterlabApp:
    return ClusterlabApp(name, config, ensure=hosts.ensure, **kwargs)


async def ready(pilot, app) -> None:
    await until(pilot, lambda: app.client is not None and not app.switching and app.view.snapshot is not None,
                "the session to be attached")


async def idle(pilot, app, hosts) -> None:
    engine = hosts.engine(app.session_name)
    await until(pilot, lambda: engine.wait(0) and app.view.live.state == "idle"
                and app.view.snapshot.state == "idle" and app.view.snapshot.step == engine.snapshot().step,
                "the engine to be idle, and the screen to say so")


async def quit_app(pilot, app) -> None:
    await pilot.press("q")
    await until(pilot, lambda: app.return_code is not None, "the app to exit")


async def quit_while_training(pilot, app) -> None:
    """Attach, train, press q: the question what to do with the run is on screen."""
    await ready(pilot, app)
    await pilot.press("t")
    await until(pilot, lambda: app.view.live.state == "training", "training")
    send_key(app, "q")
    await until(pilot, lambda: isinstance(app.screen, ChoiceScreen), "the quit question")


def chart_points(app) -> dict:
    data = app.query_one("#metrics").data
    return {name: {phase: runs.lines() for phase, runs in getattr(data, name).items()}
            for name in ("loss", "accuracy", "clusterability")} | {"boundaries": list(data.boundaries)}


async def test_whole_loop_then_reattach_shows_the_same_clusters_and_charts(hosts, tui_sessions):
    app = client_app("loop", tui_config(epochs=500), hosts)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        engine = hosts.engine("loop")
        assert "loop" in str(app.query_one("#session-info").content)
        assert app.view.check_action("finetune", ()) is None  # no clusters yet: shown disabled

        await pilot.press("t")
        await until(pilot, lambda: "training" in status_text(app), "training on screen")
        await until(pilot, lambda: engine.snapshot().step > 0, "steps to be taken")

        send_key(app, "space")
        await until(pilot, lambda: "paused" in status_text(app), "paused on screen")
        assert engine.snapshot().state == "paused"
        await until(pilot, lambda: app.view.snapshot.state == "paused", "the host's snapshot")
        assert app.view.check_action("cluster", ()) is None
        assert app.view.check_action("resume", ()) is True and app.view.check_action("pause", ()) is False
        step = engine.snapshot().step
        await pilot.pause(0.3)  # an observation window, not synchronisation: a paused engine takes no steps
        assert engine.snapshot().step == step

        send_key(app, "space")
        await until(pilot, lambda: engine.snapshot().step > step, "training to go on")
        await until(pilot, lambda: "training" in status_text(app), "training on screen again")

        send_key(app, "x")  # stop: 500 epochs would take too long
        await idle(pilot, app, hosts)

        await pilot.press("c")
        table = app.query_one("#cluster-table", DataTable)
        await until(pilot, lambda: table.row_count == 3, "a cluster table with k=3 rows")
        snap = engine.snapshot()
        assert snap.clusters["k"] == 3
        assert [int(r[1]) for r in table_rows(table)] == list(snap.clusters["row_sizes"])
        await until(pilot, lambda: "vs null" in str(app.query_one("#cluster-summary").content),
                    "the clusterability against its shuffle null")
        await until(pilot, lambda: "p=" in status_text(app), "the p-value beside the left pane's clusterability")
        await idle(pilot, app, hosts)

        assert app.view.check_action("finetune", ()) is True
        await pilot.press("f")
        await until(pilot, lambda: "finetune" in status_text(app), "finetune on screen")
        await idle(pilot, app, hosts)
        assert engine.snapshot().history[-1]["phase"] == "finetune"
        assert set(app.query_one("#metrics").data.loss) == {"pretrain", "finetune"}

        await pilot.press("s")
        final_step = engine.snapshot().step
        saved_line = f"saved at step {final_step} (request)"
        await until(pilot, lambda: saved_line in log_text(app), "the save in the log")
        await idle(pilot, app, hosts)
        rows, charts = table_rows(table), chart_points(app)
        assert charts["boundaries"]  # phase boundaries are drawn

        await quit_app(pilot, app)  # idle: q ends the host, saved
    assert app.return_code == 0 and app._return_value == QUIT and "loop" not in hosts.served
    saved = json.loads((tui_sessions / "loop" / "session.json").read_text())
    assert saved["step"] == final_step and saved["phase"] == "finetune"

    again = client_app("loop", tui_config(), hosts)  # a new host opens the saved session; charts from its log
    async with again.run_test(size=SIZE) as pilot:
        await ready(pilot, again)
        table = again.query_one("#cluster-table", DataTable)
        await until(pilot, lambda: table_rows(table) == rows, "the same cluster table")
        assert chart_points(again) == charts
        assert f"step {final_step:,}" in status_text(again)
        await quit_app(pilot, again)


async def test_bad_settings_are_explained_and_the_app_keeps_running(hosts):
    app = client_app("bad", tui_config(), hosts)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        engine = hosts.engine("bad")
        k = app.query_one("#k", Input)
        k.value = "99"
        await until(pilot, lambda: "--k must be a whole number from 2 to 32" in str(app.query_one("#message").content),
                    "the k message")
        assert k.has_class("-invalid")
        await pilot.press("c")  # the app is idle: press returns once the key has been handled
        # Refused in the UI: nothing was sent to the host.
        assert engine.snapshot().plan == ()
        assert "cluster k=" not in await read_log(pilot, app)
        k.value = "2"
        app.query_one("#lam", Input).value = "-1"
        await until(pilot, lambda: "--lam must be a finite number" in str(app.query_one("#message").content),
                    "the lam message")
        app.query_one("#epochs", Input).value = "x"
        await pilot.press("t")
        await until(pilot, lambda: "--epochs must be a whole number" in str(app.query_one("#message").content),
                    "the epochs message")
        assert engine.snapshot().plan == () and engine.snapshot().step == 0
        assert " train " not in await read_log(pilot, app)
        # The engine's own refusals arrive as events over the socket and are shown too.
        engine.finetune()
        await until(pilot, lambda: "needs clusters" in log_text(app), "the engine's refusal in the log")
        await quit_app(pilot, app)


async def test_t_continues_an_unfinished_plan(hosts):
    engine = Engine.create(session_path("held"), tui_config(epochs=1))
    engine.plan_default()
    engine.close()  # closes before or during the first job: the plan is saved unfinished
    app = client_app("held", tui_config(), hosts)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        assert app.view.snapshot.held and "Unfinished plan" in str(app.query_one("#message").content)
        await pilot.press("t")
        engine = hosts.engine("held")
        # The plan may run start to end while the key is processed: wait on its result, not on a passing state.
        await until(pilot, lambda: not app.view.snapshot.plan and not app.view.snapshot.held, "the plan to run")
        await idle(pilot, app, hosts)
        snap = engine.snapshot()
        assert snap.plan == () and [h["phase"] for h in snap.history][-2:] == ["cluster", "finetune"]
        await quit_app(pilot, app)


async def test_keys_pressed_while_attaching_run_once_attached(hosts, tui_sessions):
    gate = threading.Event()

    def slow_ensure(name, config):
        gate.wait(30)  # a host that takes its time to start (torch, the data)
        return hosts.ensure(name, config)

    app = ClusterlabApp("early", tui_config(), ensure=slow_ensure)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("t")
        assert "starts as soon as it is ready" in str(app.query_one("#message").content)
        gate.set()
        await ready(pilot, app)
        await until(pilot, lambda: hosts.engine("early").snapshot().step > 0, "the queued t to train")
        await idle(pilot, app, hosts)
        await quit_app(pilot, app)


async def test_q_while_training_asks_stop_ends_the_host_saved_and_resumable(hosts, tui_sessions):
    app = client_app("busy", tui_config(epochs=500), hosts)
    async with app.run_test(size=SIZE) as pilot:
        await quit_while_training(pilot, app)
        send_key(app, "escape")
        await until(pilot, lambda: not isinstance(app.screen, ChoiceScreen), "the question to close")
        # the question paused the run; closing it sends resume, which the host takes in its own time
        await until(pilot, lambda: hosts.engine("busy").state == "training", "the run to go on")
        assert app.return_code is None
        send_key(app, "q")
        await until(pilot, lambda: isinstance(app.screen, ChoiceScreen), "the quit question")
        send_key(app, "s")
        await until(pilot, lambda: app.return_code is not None, "the app to exit")
    assert app._return_value == QUIT and "busy" not in hosts.served
    saved = json.loads((tui_sessions / "busy" / "session.json").read_text())
    assert saved["step"] > 0 and saved["plan"][0]["kind"] == "pretrain"


async def test_d_and_q_leave_it_running_detach_and_a_new_ui_attaches_to_the_run(hosts):
    app = client_app("run", tui_config(epochs=500), hosts)
    async with app.run_test(size=SIZE) as pilot:
        await quit_while_training(pilot, app)
        send_key(app, "d")  # leave it running
        await until(pilot, lambda: app.return_code is not None, "the app to exit")
    assert app._return_value == DETACHED
    engine = hosts.engine("run")
    step = engine.snapshot().step
    await asyncio.to_thread(lambda: engine.wait(0.3))  # an observation window: no client, and the run goes on
    assert engine.state == "training" and engine.snapshot().step > step

    again = client_app("run", tui_config(), hosts, attach=True)
    async with again.run_test(size=SIZE) as pilot:
        await ready(pilot, again)
        await until(pilot, lambda: again.view.live.step > step and "training" in status_text(again),
                    "the run, live, in the new UI")
        assert again.query_one("#metrics").data.loss["pretrain"].series  # the charts from the host's history
        await pilot.press("d")
        await until(pilot, lambda: again.return_code is not None, "the app to exit")
    assert again._return_value == DETACHED and engine.state == "training"
    engine.stop()


async def test_the_ui_says_when_its_host_ends(hosts):
    app = client_app("gone", tui_config(), hosts)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await asyncio.to_thread(hosts.end, "gone")  # as `clusterlab stop gone` from another terminal does
        await until(pilot, lambda: "The host ended" in str(app.query_one("#message").content), "the news")
        assert app.client is None and app.view.check_action("train", ()) is None
        assert app.check_action("open", ()) is True
        await quit_app(pilot, app)
    assert app._return_value == QUIT


async def test_help_new_and_open_screens(hosts, tui_sessions):
    app = client_app("first", tui_config(), hosts)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen), "the help screen")
        keys = {str(row[0]) for row in table_rows(app.screen.query_one(DataTable))}
        assert {"t", "space", "c", "f", "s", "x", "o", "n", "d", "1", "2", "3", "4", "? / F1", "q"} <= keys
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
        await ready(pilot, app)
        await until(pilot, lambda: app.session_name == "second" and app.view.snapshot.name == "second",
                    "the new session")
        assert hosts.engine("second").config.hidden == (16, 16) and hosts.engine("second").config.k == 4
        assert app.view.control.config.k == 4  # its settings are the fields' defaults
        assert (tui_sessions / "first" / "session.json").is_file()

        await pilot.press("o")
        await until(pilot, lambda: isinstance(app.screen, OpenScreen), "the session list")
        table = app.screen.query_one(DataTable)
        await until(pilot, lambda: table.row_count == 2, "two sessions listed")
        names = [row[0] for row in table_rows(table)]
        table.move_cursor(row=names.index("first"))
        await pilot.press("enter")
        await until(pilot, lambda: app.client is not None and app.view.snapshot is not None
                    and app.view.snapshot.name == "first", "the first session again")
        await quit_app(pilot, app)


async def test_a_session_that_cannot_open_is_reported(hosts, tui_sessions):
    (tui_sessions / "broken").mkdir()
    (tui_sessions / "broken" / "junk").write_text("x")
    app = client_app("broken", tui_config(), hosts)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: not app.switching, "the open attempt")
        assert app.client is None and "session.json" in str(app.query_one("#message").content)
        assert app.view.check_action("train", ()) is None and app.check_action("new", ()) is True
        await quit_app(pilot, app)


async def test_training_keeps_the_footer_still_and_plots_only_what_is_shown_twice_a_second(hosts, monkeypatch):
    import time

    from tui.widgets.charts import PLOT_INTERVAL_S
    from tui.widgets.plot import MatrixPlot

    builds: list[tuple[str, float]] = []
    build = MatrixPlot._build
    monkeypatch.setattr(MatrixPlot, "_build", lambda self: builds.append((self.id, time.monotonic())) or build(self))
    app = client_app("quiet", tui_config(epochs=500, autosave_every=16, eval_every=32), hosts)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        engine = hosts.engine("quiet")
        await pilot.press("3")  # the log tab: the charts are hidden
        await pilot.press("t")
        await until(pilot, lambda: "training" in status_text(app), "training on screen")
        footer = []  # each refresh of the key bindings recomposes the footer: a layout of the whole screen
        refresh = app.screen.refresh_bindings
        monkeypatch.setattr(app.screen, "refresh_bindings", lambda: footer.append(1) or refresh())
        builds.clear()
        start = app.view.live.step
        await until(pilot, lambda: app.view.live.step >= start + 16 * 8, "eight saves while hidden")
        assert builds == [] and footer == []  # saves and snapshots changed no key; hidden charts built nothing

        send_key(app, "1")
        await until(pilot, lambda: {"loss-chart", "accuracy-chart"} <= {name for name, _ in builds}, "charts shown")
        shown = time.monotonic()

        def recent() -> list[float]:
            return [at for name, at in builds if name == "loss-chart" and at >= shown]

        await until(pilot, lambda: len(recent()) >= 3, "the loss chart plotted again as it trains")
        assert len(recent()) <= (time.monotonic() - shown) / PLOT_INTERVAL_S + 1  # at most 2 Hz
        assert footer == []
        send_key(app, "x")
        await idle(pilot, app, hosts)
        assert footer and engine.state == "idle"  # back to idle: the footer shows the keys that allows
        await quit_app(pilot, app)


def test_clusterlab_tui_attached_to_a_host_never_loads_torch(tui_sessions):
    """`clusterlab tui` in a fresh process, run to its first full screen of a session served by a real host
    process, then quit (which ends the host): the engine ran in the host, torch never came into the UI."""
    import subprocess
    import sys

    code = """
import sys
from textual.app import App
from tui import app as ui
from tui.cli import main

def headless(self):
    async def quit_when_shown():
        await self.shown.wait()
        self.action_quit()
    self.call_later(lambda: self.run_worker(quit_when_shown()))
    return App.run(self, headless=True, size=(80, 24))

ui.ClusterlabApp.run = headless
code = main(["tui", "--session", "light", "--dataset", "synthetic", "--hidden", "16,16", "--device", "cpu"])
print(code, "torch" in sys.modules, "textual" in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["0", "False", "True"], result.stderr
    assert json.loads((tui_sessions / "light" / "session.json").read_text())["step"] == 0  # created, then saved
