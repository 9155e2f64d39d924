"""`clusterlab calibrate`: the false-positive rate and the power of every source x null x measure, on generated layers.

A valid test at level alpha rejects a true null hypothesis ("W has no modularity") in at most alpha of trials, so on
layers generated without modularity the share of p <= alpha must sit in the binomial band around the test's size;
on layers with planted blocks the share is the power.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from engine import planted
from engine.clustering import cocluster_batch
from engine.config import Config, check_int, plain_int
from engine.measures import ALPHA, MEASURES
from engine.significance import significance

SOURCES = ("weights", "gradients")
METHODS = ("permute", "rows")  # layer_nonzero is permute on a layer without zeros
DEFAULT_METHOD = Config.null  # the null a session gets unless it asks for another
LEVEL = 0.95
# Layers without modularity, and the sources they test: a foreign F's blocks mean nothing to the weights source.
NO_MODULARITY: dict[str, tuple[planted.Layer, tuple[str, ...]]] = {
    "iid-normal": (planted.iid_normal, SOURCES),
    "heavy-tailed": (planted.heavy_tailed, SOURCES),
    "trained-shuffled": (planted.trained_shuffled, SOURCES),
    "row-scaled": (planted.row_scaled, SOURCES),
    "foreign-blocks": (planted.foreign_blocks, ("gradients",)),
}
STRENGTHS = (0.25, 0.5, 1.0)


@dataclass(frozen=True)
class Settings:
    """How big a calibration is: trials per cell, shuffles per null, the generated layers' shape and k."""

    trials: int = 200
    null_samples: int = 39  # 40 / (n + 1) * alpha is whole, so the test's size is exactly alpha
    rows: int = 64
    cols: int = 64
    k: int = 2
    seed: int = 0


def exact_size(samples: int, alpha: float = ALPHA) -> float:
    """P(p <= alpha) for a valid null of `samples` shuffles and continuous measures: floor(alpha (n + 1)) / (n + 1)."""
    return math.floor(alpha * (samples + 1) + 1e-9) / (samples + 1)


def binomial_band(trials: int, rate: float, level: float = LEVEL) -> tuple[int, int]:
    """The counts of rejections a test of true size `rate` gives with probability `level` in `trials` trials."""
    from scipy.stats import binom

    low, high = binom.interval(level, trials, rate)
    return int(low), int(high)


def cell(rejections: int, trials: int, band: tuple[int, int] | None = None) -> dict:
    """A rate with its Clopper-Pearson interval; with `band`, whether the count falls inside it."""
    from scipy.stats import binomtest

    interval = binomtest(rejections, trials).proportion_ci(LEVEL)
    out = {"rejections": rejections, "trials": trials, "rate": rejections / trials,
           "ci": [float(interval.low), float(interval.high)]}
    if band is not None:
        out["within_band"] = band[0] <= rejections <= band[1]
    return out


def rejections(settings: Settings, make: planted.Layer, index: int, sources: tuple[str, ...],
               methods: tuple[str, ...] = METHODS) -> dict[str, dict[str, dict[str, int]]]:
    """source -> method -> measure -> trials with p <= ALPHA, on `settings.trials` layers drawn by `make`.

    Trial t draws its layer from the seed (seed, index, t), so every source and null sees the same layers; the
    observed clusterings of all trials run as one batch.
    """
    shape = (settings.rows, settings.cols)
    layers = [make(np.random.default_rng([settings.seed, index, t]), shape, settings.k) for t in range(settings.trials)]
    weights = np.stack([w for w, _ in layers])
    counts: dict[str, dict[str, dict[str, int]]] = {}
    for source in sources:
        clustered = weights if source == "weights" else np.stack([f for _, f in layers])
        found = cocluster_batch(clustered, settings.k, settings.seed)
        counts[source] = {}
        for method in methods:
            total = dict.fromkeys((m.name for m in MEASURES), 0)
            for t in range(settings.trials):
                result = significance(weights[t], found.rows[t], found.cols[t], settings.k, source=source,
                                      method=method, samples=settings.null_samples, seed=settings.seed + t)
                for name, measure in result.measures.items():
                    total[name] += measure.p <= ALPHA
            counts[source][method] = total
    return counts


def calibrate(settings: Settings, progress: Callable[[str], None] | None = None) -> dict:
    """Every source x null x measure's false-positive rate (layers without modularity) and power (planted blocks)."""
    start = time.perf_counter()
    size = exact_size(settings.null_samples)
    band = binomial_band(settings.trials, size)
    tests = {"weights": "recluster", "gradients": "fixed-partition"}
    out = {source: {"null_test": tests[source], "false_positive_rate": {}, "power": {}} for source in SOURCES}
    jobs = [(name, make, sources, "false_positive_rate") for name, (make, sources) in NO_MODULARITY.items()]
    jobs += [(f"planted {s:g}", planted.modular(s), SOURCES, "power") for s in STRENGTHS]
    for index, (name, make, sources, kind) in enumerate(jobs):
        if progress:
            progress(f"{name}: {settings.trials} layers, {len(sources)} source(s) x {len(METHODS)} nulls")
        counts = rejections(settings, make, index, sources)
        for source, by_method in counts.items():
            out[source][kind][name] = {
                method: {measure: cell(n, settings.trials, band if kind == "false_positive_rate" else None)
                         for measure, n in by_measure.items()}
                for method, by_measure in by_method.items()}
    return {"alpha": ALPHA, "test_size": size, "band": list(band), "default_null": DEFAULT_METHOD,
            "settings": asdict(settings), "wall_s": round(time.perf_counter() - start, 1), "sources": out}


def table_rows(result: dict) -> list[list[str]]:
    """One row per source, layer family and null; a cell per measure: the rate in % with its 95% CI, and * when a
    false-positive count falls outside the band of a valid test."""
    rows = []
    for source, parts in result["sources"].items():
        for kind in ("false_positive_rate", "power"):
            for family, by_method in parts[kind].items():
                for method, by_measure in by_method.items():
                    cells = [f"{100 * c['rate']:.1f} ({100 * c['ci'][0]:.1f}-{100 * c['ci'][1]:.1f})"
                             + ("" if c.get("within_band", True) else " *") for c in by_measure.values()]
                    rows.append([source, family, method, *cells])
    return rows


# ----- the command -------------------------------------------------------------------------------------------------


def add_parser(commands) -> None:
    """`clusterlab calibrate`."""
    parser = commands.add_parser(
        "calibrate", help="measure every null's false-positive rate and power on generated layers",
        description="For each cluster source (weights, gradients), shuffle null (permute, rows) and measure, count "
        "how often p <= 0.05 on generated layers with no modularity (the false-positive rate, which a valid test "
        "keeps at 5%%) and with planted blocks (the power), each with its 95%% binomial interval.")
    parser.add_argument("--trials", type=plain_int, default=Settings.trials, help="layers per cell (default 200)")
    parser.add_argument("--null-samples", type=plain_int, default=Settings.null_samples,
                        help="shuffles per null (default 39: a test of size exactly 0.05)")
    parser.add_argument("--seed", type=plain_int, default=Settings.seed,
                        help="seed of the layers and nulls (default 0)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")


def command(args: argparse.Namespace) -> int:
    check_int("--trials", args.trials, 1)
    check_int("--null-samples", args.null_samples, 19)  # fewer cannot give p <= 0.05 at all
    check_int("--seed", args.seed, 0)
    settings = Settings(trials=args.trials, null_samples=args.null_samples, seed=args.seed)
    result = calibrate(settings, None if args.json else lambda line: print(line, flush=True))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None)
    for title in ("source", "layers", "null", *(f"{m.title} %" for m in MEASURES)):
        table.add_column(title, no_wrap=True)
    for row in table_rows(result):
        table.add_row(*row)
    console = Console()
    console.print(table)
    low, high = result["band"]
    console.print("Rows without modularity give the false-positive rate at p <= 0.05, planted ones the power; "
                  "weights: each shuffle re-co-clustered; gradients: the partition held, W shuffled.")
    console.print(f"{settings.trials} layers of {settings.rows}x{settings.cols} per row, k={settings.k}, "
                  f"{settings.null_samples} shuffles (test size {result['test_size']:.3f}); * marks a "
                  f"false-positive count outside the 95% band of a valid test ({low}-{high}). {result['wall_s']} s.")
    return 0
