"""Live plotext charts of training loss, test accuracy and clusterability against the step."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.reactive import reactive, var
from textual.widgets import Static

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
            with Vertical(id="clusterability-box"):
                yield MatrixPlot(id="clusterability-chart")
                yield Static("", id="clusterability-legend")

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
            self._legend("[red]──[/] null ± 2 sd  [gray]──[/] mean")
            return [(mean - 2 * std, "red"), (mean, "gray"), (mean + 2 * std, "red")]
        self._legend("[gray]──[/] uniform-mass chance" if self.data.chance is not None else "")
        return [(self.data.chance, "gray")] if self.data.chance is not None else []

    def _legend(self, text: str) -> None:
        legend = self.query_one("#clusterability-legend", Static)
        if str(legend.content) != text:
            legend.update(text)

    def _plot(self, widget: MatrixPlot, title: str, series: dict[str, Runs], levels) -> None:
        plt = widget.plt
        plt.clear_figure()
        plt.title(title)
        # Braille packs two points per column: more would be invisible and only cost build time.
        limit = max(32, 2 * widget.size.width)
        lines = [(phase, xs, ys) for phase, runs in series.items() for xs, ys in runs.lines(limit) if xs]
        if lines:
            width, height = widget.size
            xs_all = [x for _, xs, _ in lines for x in xs]
            ys_all = [y for _, _, ys in lines for y in ys] + [level for level, _ in levels or ()]
            axis(plt.xlim, plt.xticks, min(xs_all), max(xs_all), max(2, width // 10), step_label, whole=True)
            axis(plt.ylim, plt.yticks, min(ys_all), max(ys_all), max(2, height // 3), value_label)
            for phase, xs, ys in lines:
                color = PHASE_COLORS.get(phase, "white")
                if len(xs) == 1:  # one braille dot is lost in a chart: a marker, and its value beside it
                    plt.text(f"● {ys[0]:.4f}", xs[0], ys[0], color=color, alignment="left")  # the text starts at x
                else:
                    plt.plot(xs, ys, marker="braille", color=color)
            for step, kind in self.data.boundaries:
                plt.vline(step, BOUNDARY_COLORS.get(kind, "gray"))
            for level, color in levels or ():
                plt.hline(level, color)
        widget.replot()


def nice_step(span: float, count: int, whole: bool = False) -> float:
    """The round tick spacing (1, 2 or 5 times a power of ten) that cuts `span` into at most about `count`
    intervals; at least 1 when `whole` (steps)."""
    raw = span / max(1, count) if span > 0 else 1.0
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    return max(1.0, step) if whole else step


def axis(limit: Callable, ticks: Callable, lo: float, hi: float, count: int, label: Callable[[float, float], str],
         whole: bool = False) -> None:
    """Set one axis to run between round multiples of a round step around [lo, hi], with a tick at each."""
    if hi <= lo:  # one value: a small span around it
        pad = max(abs(lo) * 0.05, 1.0 if whole else 0.01)
        lo, hi = lo - pad, hi + pad
    step = nice_step(hi - lo, count, whole)
    first, last = math.floor(lo / step), math.ceil(hi / step)
    values = [i * step for i in range(first, last + 1)]
    limit(values[0], values[-1])
    ticks(values, [label(v, step) for v in values])


def step_label(value: float, step: float) -> str:
    """'500', '1.5k', '12k': steps, short."""
    return f"{value / 1000:g}k" if abs(value) >= 1000 else f"{value:g}"


def value_label(value: float, step: float) -> str:
    """A value with as many decimals as the tick step needs: '0.45', '2.20'."""
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    return f"{value:.{decimals}f}"
