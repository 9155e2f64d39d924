"""Pilot tests of what each pane says (issue 23): lines logged while the log is hidden, re-wrapped on resize;
a stopped job called stopped; every figure with the step it was measured at."""

from __future__ import annotations

from textual.widgets import Input

from engine import Engine
from engine.session import session_path
from tests import test_tui_app as harness
from tests.test_tui_app import client_app, idle, quit_app, ready
from tests.test_tui_support import log_text, send_key, status_text, tui_config, until
from tui.widgets.modules import NO_CLUSTERS

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


def screen_text(app) -> str:
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips(app.size))


def clustered(name: str, **changes) -> None:
    """A session trained, clustered and tested against its null, saved: what the UI then opens."""
    engine = Engine.create(session_path(name), tui_config(epochs=1, null_samples=20, **changes))
    engine.train(epochs=1)
    engine.cluster()
    assert engine.wait(120)
    engine.close()


async def test_the_p_value_shows_at_once_beside_the_clusterability_of_its_step(hosts):
    clustered("measured")
    app = client_app("measured", tui_config(), hosts)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await until(pilot, lambda: "clust 0." in screen_text(app), "the clusterability on screen")
        line = next(line for line in screen_text(app).splitlines() if "clust 0." in line)
        assert "p=0." in line  # on screen at the first frame, not cut off until a resize
        await quit_app(pilot, app)


async def test_a_live_clusterability_has_no_p_and_every_figure_says_its_step(hosts):
    clustered("moving", eval_every=16)
    app = client_app("moving", tui_config(), hosts)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        cluster_step = app.view.snapshot.cluster_step
        app.query_one("#finetune_epochs", Input).value = "500"
        await pilot.press("2")
        await pilot.press("f")
        summary = app.query_one("#cluster-summary")
        await until(pilot, lambda: "live" in status_text(app) and "p=" not in status_text(app),
                    "the live clusterability, without a p")
        await until(pilot, lambda: "(live): clusterability" in str(summary.content), "the live figure")
        send_key(app, "x")
        await idle(pilot, app, hosts)
        snap = app.view.snapshot
        assert snap.figures_step > cluster_step and snap.significance["step"] == snap.figures_step
        await until(pilot, lambda: f"at step {snap.figures_step:,}, against its shuffle null" in str(summary.content),
                    "the null of the step shown")
        assert f"step {snap.figures_step:,}: clusterability" in str(summary.content)
        assert f"found at step {cluster_step:,}" in str(summary.content) and "p=" in status_text(app)
        await pilot.press("4")
        await until(pilot, lambda: f"step {snap.figures_step:,}: |fc2|" in screen_text(app), "the picture's step")
        assert f"accuracy drop (points) at step {cluster_step:,}" in screen_text(app)  # a stopped finetune: none
        await quit_app(pilot, app)


async def test_the_modules_tab_of_a_clustered_session_opened_small(hosts):
    clustered("small")
    app = client_app("small", tui_config(), hosts)
    async with app.run_test(size=(60, 15)) as pilot:
        await ready(pilot, app)
        await pilot.press("4")
        step = app.view.snapshot.figures_step
        await until(pilot, lambda: f"step {step}: |fc2|" in screen_text(app), "the picture's title")
        assert NO_CLUSTERS not in screen_text(app)
        await pilot.resize_terminal(80, 24)
        await until(pilot, lambda: "by cluster (k=3)" in screen_text(app), "the title, whole at 80 columns")
        assert NO_CLUSTERS not in screen_text(app)
        await quit_app(pilot, app)


def test_chart_axes_tick_at_round_steps_and_even_values():
    from tui.widgets.charts import axis, step_label, value_label

    got = {}
    axis(lambda lo, hi: got.update(x=(lo, hi)), lambda ticks, labels: got.update(xt=labels), 18, 1979.5, 3,
         step_label, whole=True)
    assert got == {"x": (0, 2000), "xt": ["0", "1k", "2k"]}  # not "18.0 998.8 1979.5"
    axis(lambda lo, hi: got.update(y=(lo, hi)), lambda ticks, labels: got.update(yt=(ticks, labels)), 0.4355, 0.4869,
         6, value_label)
    ticks, labels = got["yt"]
    assert labels == ["0.43", "0.44", "0.45", "0.46", "0.47", "0.48", "0.49"]
    assert len({round(b - a, 9) for a, b in zip(ticks, ticks[1:], strict=False)}) == 1  # evenly spaced


async def test_one_clusterability_is_a_marker_with_its_value_and_the_null_band_has_a_legend(hosts):
    clustered("charted")
    app = client_app("charted", tui_config(), hosts)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        value = app.view.snapshot.clusterability
        await until(pilot, lambda: f"● {value:.4f}" in screen_text(app), "the clustering's marker and value")
        assert "── null ± 2 sd  ── mean" in screen_text(app)
        await quit_app(pilot, app)
