"""Live plotext charts of training loss, test accuracy and clusterability against the step."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual_plotext import PlotextPlot

from tui.series import CHARTS, ChartData, Series

# One colour per phase so the pretrain/finetune split reads at a glance, plus vertical lines at boundaries.
PHASE_COLORS = {"pretrain": "cyan", "finetune": "orange", "cluster": "magenta"}
BOUNDARY_COLORS = {"pretrain": "gray", "finetune": "gray", "cluster": "magenta"}


class MetricsCharts(Vertical):
    """Three charts redrawn from bounded series, only when the data changed since the last redraw."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.data = ChartData()
        self._drawn: dict[str, int] = {}

    def compose(self) -> ComposeResult:
        yield PlotextPlot(id="loss-chart")
        with Horizontal(id="eval-charts"):
            yield PlotextPlot(id="accuracy-chart")
            yield PlotextPlot(id="clusterability-chart")

    def on_mount(self) -> None:
        self.redraw(force=True)

    def reset(self, records: list[dict] | None = None) -> None:
        """Forget the shown session; rebuild from a metrics log if given."""
        self.data = ChartData()
        if records:
            self.data.load(records)
        self.redraw(force=True)

    def redraw(self, force: bool = False) -> bool:
        """Re-plot the charts whose data moved on; called from the app's timer, never per event."""
        stale = [c for c in CHARTS if force or self._drawn.get(c) != self.data.versions[c]]
        for chart in stale:
            self._drawn[chart] = self.data.versions[chart]
            if chart == "loss":
                self._plot("#loss-chart", "training loss", self.data.loss)
            elif chart == "accuracy":
                self._plot("#accuracy-chart", "test accuracy", self.data.accuracy)
            else:
                self._plot("#clusterability-chart", "clusterability", self.data.clusterability, self.data.chance)
        return bool(stale)

    def _plot(self, selector: str, title: str, series: dict[str, Series], hline: float | None = None) -> None:
        widget = self.query_one(selector, PlotextPlot)
        plt = widget.plt
        plt.clear_figure()
        plt.title(title)
        # Braille packs two points per column: more would be invisible and only cost build time.
        limit = max(32, 2 * widget.size.width)
        for phase, points in series.items():
            xs, ys = points.points(limit)
            if xs:
                plt.plot(xs, ys, marker="braille", color=PHASE_COLORS.get(phase, "white"))
        for step, kind in self.data.boundaries:
            plt.vline(step, BOUNDARY_COLORS.get(kind, "gray"))
        if hline is not None:
            plt.hline(hline, "red")  # chance level: the clusterability of mass spread evenly
        widget.refresh()
