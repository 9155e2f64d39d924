"""Live plotext charts of training loss, test accuracy and clusterability against the step."""

from __future__ import annotations

import time

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.reactive import reactive, var

from engine import events as ev
from tui.series import ChartData, Runs
from tui.widgets.plot import MatrixPlot

# One colour per phase so the pretrain/finetune split reads at a glance, plus vertical lines at boundaries.
PHASE_COLORS = {"pretrain": "cyan", "finetune": "orange", "control": "green", "cluster": "magenta"}
BOUNDARY_COLORS = {"pretrain": "gray", "finetune": "gray", "cluster": "magenta"}
TICK_S = 0.25  # how often the charts look for new points
PLOT_INTERVAL_S = 0.45  # every other tick: plotting is most of the UI's time while training


class MetricsCharts(Vertical):
    """Three charts redrawn from bounded series, only when the data changed since the last redraw: rebuilt from
    the metrics log the host sends on attach (`history`), then fed each live event."""

    history: reactive[tuple[dict, ...]] = var(tuple, init=False)
    event: reactive[ev.Event | None] = var(None, init=False)

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.data = ChartData()
        self._drawn: dict[str, int] = {}
        self._plotted_at = 0.0

    def compose(self) -> ComposeResult:
        yield MatrixPlot(id="loss-chart")
        with Horizontal(id="eval-charts"):
            yield MatrixPlot(id="accuracy-chart")
            yield MatrixPlot(id="clusterability-chart")

    def on_mount(self) -> None:
        self.redraw(force=True)
        self.set_interval(TICK_S, self.redraw)

    def watch_history(self, records: tuple[dict, ...]) -> None:
        self.reset(list(records))

    def watch_event(self, event: ev.Event | None) -> None:
        if event is not None:
            self.data.apply(event)  # plotted on the timer, never per event

    def reset(self, records: list[dict] | None = None) -> None:
        """Forget the shown session; rebuild from a metrics log if given."""
        self.data = ChartData()
        if records:
            self.data.load(records)
        self.redraw(force=True)

    def on_show(self) -> None:
        self.redraw(force=True)  # plotted while hidden (no width), the charts were left for now

    def on_resize(self) -> None:
        self.redraw(force=True)  # points are thinned to the width: a new width wants a new plot

    def redraw(self, force: bool = False) -> None:
        """Re-plot the charts whose data moved on (at most every PLOT_INTERVAL_S unless forced)."""
        now = time.monotonic()
        if not force and now - self._plotted_at < PLOT_INTERVAL_S:
            return
        self._plotted_at = now
        charts = {
            "loss": ("#loss-chart", "training loss", self.data.loss, None),
            "accuracy": ("#accuracy-chart", "test accuracy", self.data.accuracy, None),
            "clusterability": ("#clusterability-chart", "clusterability", self.data.clusterability, self._levels()),
        }
        for chart, (selector, title, series, hline) in charts.items():
            if not force and self._drawn.get(chart) == self.data.versions[chart]:
                continue
            widget = self.query_one(selector, MatrixPlot)
            if not widget.is_on_screen:
                continue  # a hidden tab: plotted when shown (on_show), at the width it then has
            self._drawn[chart] = self.data.versions[chart]
            self._plot(widget, title, series, hline)

    def _levels(self) -> list[tuple[float, str]]:
        """Horizontal lines of the clusterability chart: the shuffle null's band (mean ± 2 std) when there is one,
        else the uniform-mass chance level."""
        if self.data.null is not None:
            mean, std = self.data.null
            return [(mean - 2 * std, "red"), (mean, "gray"), (mean + 2 * std, "red")]
        return [(self.data.chance, "gray")] if self.data.chance is not None else []

    def _plot(self, widget: MatrixPlot, title: str, series: dict[str, Runs], levels) -> None:
        plt = widget.plt
        plt.clear_figure()
        plt.title(title)
        if series:
            # Braille packs two points per column: more would be invisible and only cost build time.
            limit = max(32, 2 * widget.size.width)
            for phase, runs in series.items():
                for xs, ys in runs.lines(limit):
                    if xs:
                        plt.plot(xs, ys, marker="braille", color=PHASE_COLORS.get(phase, "white"))
            for step, kind in self.data.boundaries:
                plt.vline(step, BOUNDARY_COLORS.get(kind, "gray"))
            for level, color in levels or ():
                plt.hline(level, color)
        widget.replot()
