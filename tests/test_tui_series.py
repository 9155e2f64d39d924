"""Unit tests of the TUI's pure parts: bounded chart series, chart data rebuilt from a log, field parsing."""

from __future__ import annotations

import pytest

from tui.series import ChartData, Series


def test_series_stays_bounded_and_keeps_its_span():
    series = Series(cap=100)
    for step in range(1, 100_001):
        series.add(step, float(step))
    xs, ys = series.points()
    assert len(xs) <= 101
    assert xs[0] < 2_000 and xs[-1] == 100_000  # the whole history is still there, merged
    assert all(a < b for a, b in zip(xs, xs[1:], strict=False))
    assert ys[-1] == pytest.approx(xs[-1], rel=0.05)


def test_points_are_thinned_to_a_limit_and_keep_the_newest():
    series = Series(cap=1000)
    for step in range(500):
        series.add(step, 1.0)
    xs, _ = series.points(limit=50)
    assert len(xs) <= 51 and xs[0] == 0 and xs[-1] == 499


def test_chart_data_loads_a_metrics_log():
    data = ChartData()
    data.load([
        {"type": "train", "phase": "pretrain", "step": 10, "epoch": 0, "loss": 2.0},
        {"type": "eval", "phase": "pretrain", "step": 64, "epoch": 1, "test_accuracy": 0.5, "clusterability": None},
        {"type": "phase", "phase": "pretrain", "step": 64, "steps": 64, "test_accuracy": 0.5, "clusterability": None},
        {"type": "clusters", "step": 64, "k": 2, "source": "weights", "row_sizes": [1, 1], "col_sizes": [1, 1],
         "shares": [0.3, 0.3], "clusterability": 0.6, "chance": 0.5},
        {"type": "train", "phase": "finetune", "step": 70, "epoch": 1, "loss": 1.5},
    ])
    assert set(data.loss) == {"pretrain", "finetune"}
    assert data.accuracy["pretrain"].lines() == [([64], [0.5])]
    assert data.clusterability["cluster"].lines() == [([64], [0.6])]
    assert data.boundaries == [(64, "pretrain"), (64, "cluster")]
    assert data.chance == 0.5


def test_a_phase_trained_again_starts_a_new_line():
    data = ChartData()
    data.add_loss("pretrain", 10, 2.0)
    data.add_loss("pretrain", 20, 1.8)
    data.add_boundary(20, "pretrain")
    data.add_loss("finetune", 30, 1.5)
    data.add_boundary(30, "finetune")
    data.add_loss("pretrain", 40, 1.4)
    assert data.loss["pretrain"].lines() == [([10, 20], [2.0, 1.8]), ([40], [1.4])]


def test_live_events_make_the_charts_the_log_makes_and_the_log_overlap_is_not_drawn_twice():
    from engine import events as ev

    records = [{"type": "train", "phase": "pretrain", "step": s, "epoch": 0, "loss": 1 / s} for s in (10, 20, 30)]
    records.append({"type": "eval", "phase": "pretrain", "step": 30, "epoch": 0, "test_accuracy": 0.5,
                    "clusterability": None})
    from_log = ChartData()
    from_log.load(records)
    live = ChartData()
    for record in records[:3]:
        live.apply(ev.Progress("pretrain", record["step"], 0, record["loss"], record["step"], 100, 1.0))
    live.apply(ev.Evaluated("pretrain", 30, 0, 0.5, None))
    assert live.loss["pretrain"].lines() == from_log.loss["pretrain"].lines()
    assert live.accuracy["pretrain"].lines() == from_log.accuracy["pretrain"].lines()

    attached = ChartData()  # attached while training: the host's first events repeat the log's last records
    attached.load(records[:2])
    for record in records[1:3]:
        attached.apply(ev.Progress("pretrain", record["step"], 0, record["loss"], record["step"], 100, 1.0))
    attached.apply(ev.Evaluated("pretrain", 30, 0, 0.5, None))
    assert attached.loss["pretrain"].lines() == from_log.loss["pretrain"].lines()
    attached.apply(ev.Progress("pretrain", 30, 0, 1 / 30, 30, 100, 1.0))  # past the log: every event counts
    assert attached.loss["pretrain"].lines()[0][0] == [10, 20, 30, 30]
