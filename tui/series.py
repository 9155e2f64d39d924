"""Bounded, downsampled chart series so redraw cost stays flat however long a session trains."""

from __future__ import annotations

from dataclasses import dataclass, field

from engine import events as ev
from engine.format import null_band

SERIES_CAP = 1000  # points kept per series; older history is merged pairwise, never dropped
BOUNDARY_CAP = 64  # phase boundaries kept per chart (the most recent ones)
CHARTS = ("loss", "accuracy", "clusterability")
# The metrics log's record type of each event the charts take.
EVENT_RECORDS = {ev.Progress: "train", ev.Evaluated: "eval", ev.ClustersFound: "clusters",
                 ev.SignificanceFound: "significance", ev.PhaseFinished: "phase"}


class Series:
    """Append-only (x, y) points; past `cap` points, neighbours are averaged in pairs and the bucket doubles."""

    def __init__(self, cap: int = SERIES_CAP) -> None:
        self.cap = max(2, cap)
        self.xs: list[float] = []
        self.ys: list[float] = []
        self._stride = 1  # raw points per stored point from now on
        self._sum = 0.0
        self._count = 0
        self._last_x = 0.0

    def __len__(self) -> int:
        return len(self.xs) + (1 if self._count else 0)

    def add(self, x: float, y: float) -> None:
        self._last_x, self._sum, self._count = x, self._sum + y, self._count + 1
        if self._count >= self._stride:
            self.xs.append(self._last_x)
            self.ys.append(self._sum / self._count)
            self._sum, self._count = 0.0, 0
            if len(self.xs) > self.cap:
                self._halve()

    def _halve(self) -> None:
        # Averaging pairs keeps the curve's shape and its full time span in half the points.
        n = len(self.xs) // 2 * 2
        xs = self.xs[1:n:2] + self.xs[n:]
        ys = [(a + b) / 2 for a, b in zip(self.ys[0:n:2], self.ys[1:n:2], strict=True)] + self.ys[n:]
        self.xs, self.ys = xs, ys
        self._stride *= 2

    def points(self, limit: int | None = None) -> tuple[list[float], list[float]]:
        """The stored points plus the partial bucket, thinned to at most `limit` (for a plot's width)."""
        xs, ys = list(self.xs), list(self.ys)
        if self._count:
            xs.append(self._last_x)
            ys.append(self._sum / self._count)
        if limit and len(xs) > limit:
            step = -(-len(xs) // limit)
            # Keep the newest point, so the curve reaches the current step, and the first, so it starts where
            # the data does and the axis range does not jump as points are dropped.
            keep = list(range(len(xs) - 1, 0, -step))[::-1]
            keep.insert(0, 0)
            xs, ys = [xs[i] for i in keep], [ys[i] for i in keep]
        return xs, ys


class Runs:
    """One phase's points as separate lines: a phase trained again after another phase starts a new run, so
    the chart draws no line across the phase in between."""

    def __init__(self) -> None:
        self.series: list[Series] = []
        self._broken = True

    def add(self, x: float, y: float) -> None:
        if self._broken:
            self.series.append(Series())
            self._broken = False
        self.series[-1].add(x, y)

    def break_line(self) -> None:
        self._broken = True

    def lines(self, limit: int | None = None) -> list[tuple[list[float], list[float]]]:
        """Each run's points; `limit` is shared among the runs so the plotting cost stays bounded."""
        share = None if limit is None else max(8, limit // max(1, len(self.series)))
        return [run.points(share) for run in self.series]


@dataclass
class ChartData:
    """Everything the three charts show, fed by engine events or rebuilt from the metrics log."""

    loss: dict[str, Runs] = field(default_factory=dict)
    accuracy: dict[str, Runs] = field(default_factory=dict)
    clusterability: dict[str, Runs] = field(default_factory=dict)
    boundaries: list[tuple[int, str]] = field(default_factory=list)  # (step, "pretrain"|"finetune"|"cluster")
    chance: float | None = None
    null: tuple[float, float] | None = None  # the latest clusterability null: mean, std
    # Per chart, bumped on every change to it: a chart is re-plotted only when its own version moved, so the
    # accuracy and clusterability charts (a few evaluations a second) do not re-plot at the loss's rate.
    versions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CHARTS, 0))
    # Per record type, the last step `load` read: the host's first live events may repeat the log's last records.
    loaded: dict[str, int] = field(default_factory=dict)

    def add_loss(self, phase: str, step: int, loss: float) -> None:
        self.loss.setdefault(phase, Runs()).add(step, loss)
        self.versions["loss"] += 1

    def add_eval(self, phase: str, step: int, accuracy: float, clusterability: float | None) -> None:
        self.accuracy.setdefault(phase, Runs()).add(step, accuracy)
        self.versions["accuracy"] += 1
        if clusterability is not None:
            self.clusterability.setdefault(phase, Runs()).add(step, clusterability)
            self.versions["clusterability"] += 1

    def add_clusters(self, step: int, clusterability: float, chance: float) -> None:
        self.clusterability.setdefault("cluster", Runs()).add(step, clusterability)
        self.chance, self.null = chance, None
        self.add_boundary(step, "cluster")

    def add_null(self, mean: float, std: float) -> None:
        """What clustering shuffled layers gives: the chart draws mean ± 2 std."""
        self.null = (mean, std)
        self.versions["clusterability"] += 1

    def add_boundary(self, step: int, kind: str) -> None:
        if (step, kind) not in self.boundaries[-4:]:
            self.boundaries = (self.boundaries + [(step, kind)])[-BOUNDARY_CAP:]
        for chart in CHARTS:  # every chart draws the boundaries, and no line crosses one
            self.versions[chart] += 1
            for runs in getattr(self, chart).values():
                runs.break_line()

    def apply(self, event: ev.Event) -> None:
        """Add what a live engine event brings to the charts (the same points `load` reads from the log)."""
        kind = EVENT_RECORDS.get(type(event))
        if kind in self.loaded:
            if event.step <= self.loaded[kind]:  # type: ignore[attr-defined]
                return  # already read from the log
            del self.loaded[kind]  # past the log's end: every later event of this kind is new
        match event:
            case ev.Progress():
                self.add_loss(event.phase, event.step, event.loss)
            case ev.Evaluated():
                self.add_eval(event.phase, event.step, event.test_accuracy, event.clusterability)
            case ev.ClustersFound():
                self.add_clusters(event.step, event.clusterability, event.chance)
            case ev.SignificanceFound():
                self.add_null(*null_band(event.significance))
            case ev.PhaseFinished() if event.phase in ("pretrain", "finetune"):
                self.add_boundary(event.step, event.phase)

    def load(self, records: list[dict]) -> None:
        """Rebuild from `Engine.metrics_history()` records (train, eval, clusters, phase)."""
        for record in records:
            kind = record.get("type")
            if kind in EVENT_RECORDS.values():
                self.loaded[kind] = record["step"]
            if kind == "train":
                self.add_loss(record["phase"], record["step"], record["loss"])
            elif kind == "eval":
                self.add_eval(record["phase"], record["step"], record["test_accuracy"], record.get("clusterability"))
            elif kind == "clusters":
                self.add_clusters(record["step"], record["clusterability"], record["chance"])
            elif kind == "significance":
                self.add_null(*null_band(record))
            elif kind == "phase" and record.get("phase") in ("pretrain", "finetune"):
                self.add_boundary(record["step"], record["phase"])
