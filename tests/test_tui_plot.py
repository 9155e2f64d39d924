"""MatrixPlot: the same screen cells as textual-plotext's PlotextPlot, without its text round trip, built only
when shown."""

from __future__ import annotations

import pytest
from textual.app import App, ComposeResult
from textual.containers import Horizontal
from textual.widgets import TabbedContent, TabPane
from textual_plotext import PlotextPlot

from tui.widgets.plot import MatrixPlot


def draw(plt) -> None:
    """A figure with what the charts use: braille lines in phase colours, a title, vertical and horizontal lines."""
    plt.clear_figure()
    plt.title("training loss")
    plt.plot([1, 2, 3, 4, 5], [3.0, 1.0, 2.0, 0.5, 0.2], marker="braille", color="cyan")
    plt.plot([5, 6, 7], [0.2, 0.3, 0.1], marker="braille", color="orange")
    plt.vline(5, "gray")
    plt.hline(1.0, "red")


class Pair(App):
    def compose(self) -> ComposeResult:
        with TabbedContent():
            with TabPane("plots", id="plots"), Horizontal():
                yield PlotextPlot(id="reference")
                yield MatrixPlot(id="matrix")
            with TabPane("other", id="other"):
                yield MatrixPlot(id="hidden")


def cells(app, widget) -> list[list[tuple]]:
    """(character, colour, background, bold) of every cell of a widget as composed on screen."""
    strips = app.screen._compositor.render_strips(app.size)
    region = widget.region
    rows = []
    for y in range(region.y, region.bottom):
        line = strips[y].crop(region.x, region.right)
        rows.append([(segment.text, segment.style.color, segment.style.bgcolor, segment.style.bold)
                     for x in range(region.width) for segment in line.crop(x, x + 1)])
    return rows


@pytest.mark.parametrize("size", [(80, 24), (160, 40)])
async def test_matrix_plot_shows_what_plotext_plot_shows(size):
    app = Pair()
    async with app.run_test(size=size) as pilot:
        reference, matrix = app.query_one("#reference", PlotextPlot), app.query_one("#matrix", MatrixPlot)
        draw(reference.plt)
        draw(matrix.plt)
        reference.refresh()
        matrix.replot()
        await pilot.pause()
        shown = cells(app, matrix)
        assert shown == cells(app, reference)
        assert any(char not in " " for row in shown for char, *_ in row)  # a plot, not two blank panes


async def test_matrix_plot_builds_only_when_shown_and_changed(monkeypatch):
    app = Pair()
    builds = []
    build = MatrixPlot._build
    monkeypatch.setattr(MatrixPlot, "_build", lambda self: builds.append(self.id) or build(self))
    async with app.run_test(size=(80, 24)) as pilot:
        hidden, matrix = app.query_one("#hidden", MatrixPlot), app.query_one("#matrix", MatrixPlot)
        await pilot.pause()
        builds.clear()
        draw(hidden.plt)
        hidden.replot()
        await pilot.pause()
        assert "hidden" not in builds  # another tab is shown: nothing built
        matrix.refresh()  # a repaint without a new figure reuses the lines built
        await pilot.pause()
        assert builds == []
        app.query_one(TabbedContent).active = "other"
        await pilot.pause()
        assert builds.count("hidden") == 1
