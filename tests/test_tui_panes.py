"""Pilot tests of what each pane says (issue 23): lines logged while the log is hidden, re-wrapped on resize;
a stopped job called stopped; every figure with the step it was measured at."""

from __future__ import annotations

from tests import test_tui_app as harness
from tests.test_tui_app import client_app, idle, quit_app, ready
from tests.test_tui_support import log_text, send_key, status_text, tui_config, until

hosts, tui_sessions = harness.hosts, harness.tui_sessions  # the fixtures: in-process hosts, a sessions root

SIZE = (80, 24)


def log_strips(app) -> list[str]:
    return [strip.text.rstrip() for strip in app.view.log_pane.lines]


async def test_lines_logged_while_the_log_is_hidden_show_and_rewrap_on_resize(hosts):
    app = client_app("logged", tui_config(epochs=500), hosts)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await pilot.press("3")  # the log is laid out once, then hidden behind the charts while the job runs
        await pilot.press("1")
        await pilot.press("t")
        await until(pilot, lambda: "training" in status_text(app), "training")
        send_key(app, "x")
        await idle(pilot, app, hosts)
        step = hosts.engine("logged").snapshot().step
        await until(pilot, lambda: f"pretrain stopped at step {step}" in log_text(app), "the stop, in the log")
        strips = log_strips(app)
        assert all(strips) and "finished" not in log_text(app)  # no blank row, and a stop is no finish
        narrow = max(map(len, strips))
        await pilot.resize_terminal(120, 40)
        await until(pilot, lambda: max(map(len, log_strips(app))) > narrow, "the lines re-wrapped wider")
        assert len(log_strips(app)) < len(strips) and all(log_strips(app))
        await quit_app(pilot, app)
