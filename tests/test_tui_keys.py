"""Pilot tests of the keys at 80x24 and 60x15 (issue 23): the footer keeps what matters, a key that does nothing
says why, the help is readable, Ctrl+C is q, and the run waits while the quit question is open."""

from __future__ import annotations

import re

import pytest

from tests import test_tui_app as harness
from tests.test_tui_app import client_app, idle, quit_app, ready
from tests.test_tui_support import send_key, status_text, tui_config, until
from tui.app import QUIT
from tui.screens import ChoiceScreen

hosts, tui_sessions = harness.hosts, harness.tui_sessions  # the fixtures: in-process hosts, a sessions root


def screen_lines(app) -> list[str]:
    return [strip.text for strip in app.screen._compositor.render_strips(app.size)]


def message(app) -> str:
    return str(app.query_one("#message").content)


@pytest.mark.parametrize("size", [(80, 24), (60, 15)])
async def test_the_footer_keeps_stop_the_tabs_help_and_quit(hosts, size):
    app = client_app("footer", tui_config(epochs=500), hosts)
    async with app.run_test(size=size) as pilot:
        await ready(pilot, app)
        await pilot.press("t")
        await until(pilot, lambda: "training" in status_text(app), "training")
        essential = ("x Stop", "1-4 Tabs", "? Help", "q Quit")
        await until(pilot, lambda: all(key in screen_lines(app)[-1] for key in essential), "the essential keys")
        send_key(app, "x")
        await idle(pilot, app, hosts)
        await until(pilot, lambda: "t Train" in screen_lines(app)[-1], "the footer of an idle session")
        assert all(key in screen_lines(app)[-1] for key in essential)  # x shown disabled: pressed, it says why
        await quit_app(pilot, app)


async def test_a_key_that_does_nothing_now_says_why(hosts):
    app = client_app("why", tui_config(epochs=500), hosts)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot, app)
        await pilot.press("f")
        assert message(app) == "Finetuning needs clusters: press c to cluster the layer first."
        await pilot.press("t")
        await until(pilot, lambda: "training" in status_text(app), "training")
        send_key(app, "space")
        await until(pilot, lambda: app.view.snapshot.state == "paused", "paused")
        send_key(app, "s")  # decided: the job saves itself; s saves an idle session
        await until(pilot, lambda: message(app).startswith("s saves an idle session"), "why s does nothing")
        send_key(app, "c")
        await until(pilot, lambda: message(app).startswith("Cluster waits for the paused job"), "why c waits")
        send_key(app, "x")
        await idle(pilot, app, hosts)
        await quit_app(pilot, app)


async def test_the_help_fits_80_columns(hosts):
    app = client_app("help", tui_config(), hosts)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot, app)
        await pilot.press("question_mark")
        await pilot.pause()
        box = app.screen.query_one(".dialog").content_region
        text = " ".join(line[box.x:box.right] for line in screen_lines(app))
        shown = " ".join(re.sub("[▁-▏]", " ", text).split())  # without the scrollbar's blocks
        for binding in app.view.BINDINGS:  # the rows on the first screen of the help
            assert binding.tooltip in shown
        await pilot.press("escape")
        await quit_app(pilot, app)


async def test_ctrl_c_is_q_and_the_run_waits_while_the_quit_question_is_open(hosts):
    app = client_app("ask", tui_config(epochs=500), hosts)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot, app)
        engine = hosts.engine("ask")
        await pilot.press("t")
        await until(pilot, lambda: "training" in status_text(app), "training")
        for key in ("ctrl+c", "ctrl+q"):
            send_key(app, key)
            await until(pilot, lambda: isinstance(app.screen, ChoiceScreen), f"the quit question after {key}")
            await until(pilot, lambda: engine.state == "paused", "the run paused while asking")
            assert "paused while you choose" in str(app.screen.query_one("#question").content)
            send_key(app, "escape")
            await until(pilot, lambda: engine.state == "training", "the run going on after the answer")
        send_key(app, "x")
        await idle(pilot, app, hosts)
        send_key(app, "ctrl+c")  # idle: ends the host, saved, as q does
        await until(pilot, lambda: app.return_code is not None, "the app to exit")
    assert app._return_value == QUIT
