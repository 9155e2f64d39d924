"""Snapshot tests (pytest-textual-snapshot) of each tab at 80x24 in a finished session: a tiny synthetic run with
a fixed seed, opened from a relative sessions root, the log's clock and the host's pid frozen, and the training
loss masked (the engine averages it over each progress report, which come by the clock), so the screen is the
same on every run. `pytest --snapshot-update tests/test_tui_snapshots.py` rewrites tests/__snapshots__."""

from __future__ import annotations

import os
import types
from dataclasses import replace

import pytest

from engine import Engine
from engine.config import Config
from tests.test_tui_support import InProcessHosts, tui_config, until
from tui.app import ClusterlabApp
from tui.widgets.charts import MetricsCharts
from tui.widgets.control import ControlPane


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A folder holding sessions/snap: pretrained, clustered (with its null), finetuned, ablated."""
    folder = tmp_path_factory.mktemp("snapshots")
    config = tui_config(epochs=1, hidden=(16, 16), null_samples=20, eval_every=32)
    engine = Engine.create(folder / "sessions" / "snap", config)
    engine.plan_default()
    assert engine.wait(300)
    engine.close()
    return folder


@pytest.fixture
def app(finished, monkeypatch):
    monkeypatch.chdir(finished)
    monkeypatch.setenv("CLUSTERLAB_SESSIONS", "sessions")  # relative: the log's session path is the same each run
    monkeypatch.setattr("tui.widgets.log.time", types.SimpleNamespace(strftime=lambda _format: "12:00:00"))
    monkeypatch.setattr("engine.host.os", types.SimpleNamespace(**{**vars(os), "getpid": lambda: 4242}))
    show_status = ControlPane.show_status  # masked in every status drawn, also from a snapshot after run_before's
    monkeypatch.setattr(ControlPane, "show_status", lambda pane, live: show_status(pane, replace(live, loss=None)))
    hosts = InProcessHosts()
    yield ClusterlabApp("snap", Config(), ensure=hosts.ensure)
    hosts.close()


def shown(tab: str, *texts: str):
    """run_before: the session attached and idle, `tab` shown with `texts` on screen."""

    async def run_before(pilot) -> None:
        app = pilot.app
        await until(pilot, lambda: app.shown.is_set() and app.view.live.state == "idle", "the session shown")
        app.view.control.show_status(app.view.live)  # the loss masked: see the module's docstring and `app`
        charts = app.query_one(MetricsCharts)
        charts.data.loss.clear()
        charts.redraw(force=True)
        await pilot.press(tab)

        def on_screen() -> bool:
            text = "\n".join(strip.text for strip in app.screen._compositor.render_strips(app.size))
            return all(t in text for t in texts)

        await until(pilot, on_screen, f"tab {tab} drawn")
        await pilot.wait_for_scheduled_animations()

    return run_before


def test_charts_tab(app, snap_compare):
    assert snap_compare(app, terminal_size=(80, 24), run_before=shown("1", "test accuracy", "null ± 2 sd"))


def test_clusters_tab(app, snap_compare):
    assert snap_compare(app, terminal_size=(80, 24), run_before=shown("2", "against its shuffle null", "share"))


def test_log_tab(app, snap_compare):
    assert snap_compare(app, terminal_size=(80, 24), run_before=shown("3", "4242"))


def test_modules_tab(app, snap_compare):
    assert snap_compare(app, terminal_size=(80, 24), run_before=shown("4", "|fc2|", "accuracy drop"))
