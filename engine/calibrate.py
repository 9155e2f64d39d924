"""`clusterlab calibrate`: the false-positive rate and the power of every source x null x measure, on generated layers
and networks.

A valid test at level alpha rejects a true null hypothesis ("W has no modularity") in at most alpha of trials, so on
layers generated without modularity the share of p <= alpha must sit in the binomial band around the test's size;
on layers with planted blocks the share is the power. Three parts: `layer` (one layer, its co-clustering), `network`
(the whole network's graph, `--layer all`) and `pruned` (layers and networks with zeros, where `layer_nonzero`
applies).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import numpy as np

from engine import planted
from engine.clustering import cocluster_batch
from engine.config import Config, check_int, plain_int
from engine.errors import ConfigError
from engine.measures import ALPHA, MEASURES, NullResult
from engine.network_graph import cluster_network
from engine.significance import network_significance, significance

SOURCES = ("weights", "gradients")
METHODS = ("permute", "rows")  # layer_nonzero is permute on a layer without zeros
PRUNED_METHODS = (*METHODS, "layer_nonzero", "rows_nonzero")
PARTS = ("layer", "network", "pruned")
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
# A network's planted clusters at strength 1 cut a third of its mass, as does a cut between two of its 3 layers: no
# clustering prefers them there, so the network's power is measured at larger strengths too.
NETWORK_STRENGTHS = (1.0, 2.0, 4.0)
# Pruned layers without modularity (F, a gradient, stays whole). Magnitude pruning of an iid layer zeroes a random
# pattern; of a row-scaled one, mostly the small units' rows: a zero pattern that is structure, not modularity.
PRUNED: dict[str, planted.Layer] = {
    f"{name}, {share:.0%} {how}": planted.pruned(make, share, "random" if how == "random zeros" else "magnitude")
    for name, make, share, how in (
        ("iid-normal", planted.iid_normal, 0.5, "random zeros"),
        ("iid-normal", planted.iid_normal, 0.9, "random zeros"),
        ("iid-normal", planted.iid_normal, 0.5, "magnitude-pruned"),
        ("iid-normal", planted.iid_normal, 0.9, "magnitude-pruned"),
        ("row-scaled", planted.row_scaled, 0.9, "magnitude-pruned"))}
# Networks without modularity, whole and pruned over all their layers (`--prune`'s global magnitude pruning).
NETWORKS: dict[str, planted.Network] = {
    "iid-normal": planted.network_of(planted.iid_normal),
    "heavy-tailed": planted.network_of(planted.heavy_tailed),
    "row-scaled": planted.network_of(planted.row_scaled),
    "unit-scaled": planted.unit_scaled,
}
PRUNED_NETWORKS: dict[str, planted.Network] = {
    "iid-normal, 90% random zeros": planted.pruned_network(NETWORKS["iid-normal"], 0.9, "random"),
    "iid-normal, 90% magnitude-pruned": planted.pruned_network(NETWORKS["iid-normal"], 0.9, "magnitude"),
    "row-scaled, 90% magnitude-pruned": planted.pruned_network(NETWORKS["row-scaled"], 0.9, "magnitude"),
    "unit-scaled, 90% magnitude-pruned": planted.pruned_network(planted.unit_scaled, 0.9, "magnitude"),
}


@dataclass(frozen=True)
class Settings:
    """How big a calibration is: trials per cell, shuffles per null, the generated layers' shape and k."""

    trials: int = 200
    null_samples: int = 39  # 40 / (n + 1) * alpha is whole, so the test's size is exactly alpha
    rows: int = 64
    cols: int = 64
    k: int = 2
    seed: int = 0
    units: int = 48  # units per group of a generated network (its layers units x units)
    depth: int = 3  # layers of a generated network


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
        counts[source] = {
            method: significant(significance(weights[t], found.rows[t], found.cols[t], settings.k, source=source,
                                             method=method, samples=settings.null_samples, seed=settings.seed + t)
                                for t in range(settings.trials))
            for method in methods}
    return counts


def network_rejections(settings: Settings, make: planted.Network, index: int,
                       methods: tuple[str, ...] = METHODS) -> dict[str, dict[str, dict[str, int]]]:
    """{"network": method -> measure -> trials with p <= ALPHA}, on `settings.trials` networks drawn by `make` and
    tested as `--layer all` tests them: clustered whole, each layer shuffled on its own, every shuffle re-clustered.

    Trial t draws its network from the seed (seed, index, t); the observed clusterings run as one batch.
    """
    networks = [make(np.random.default_rng([settings.seed, index, t]), settings.units, settings.depth, settings.k)
                for t in range(settings.trials)]
    found = cluster_network([np.stack(layer) for layer in zip(*networks, strict=True)], settings.k, settings.seed)
    return {"network": {
        method: significant(network_significance(layers, [group[t] for group in found], settings.k, method=method,
                                                 samples=settings.null_samples, seed=settings.seed + t)
                            for t, layers in enumerate(networks))
        for method in methods}}


def significant(results: Iterable[NullResult]) -> dict[str, int]:
    """measure -> how many of the tests' p are at most ALPHA."""
    total = dict.fromkeys((m.name for m in MEASURES), 0)
    for result in results:
        for name, measure in result.measures.items():
            total[name] += measure.p <= ALPHA
    return total


@dataclass(frozen=True)
class Job:
    """One row group of the calibration: a family of generated layers or networks, and what it measures."""

    part: str
    name: str
    kind: str  # "false_positive_rate" or "power"
    count: Callable[[Settings, int], dict[str, dict[str, dict[str, int]]]]  # settings, seed index -> counts
    what: str  # for the progress line


def jobs() -> list[Job]:
    """Every part's families in a fixed order: a family's place seeds its draws, so adding parts after the layer
    part leaves its numbers as they were."""
    out = [Job("layer", name, "false_positive_rate",
               lambda s, i, make=make, sources=sources: rejections(s, make, i, sources), f"{len(sources)} source(s)")
           for name, (make, sources) in NO_MODULARITY.items()]
    out += [Job("layer", f"planted {s:g}", "power", lambda st, i, s=s: rejections(st, planted.modular(s), i, SOURCES),
                "2 sources") for s in STRENGTHS]
    out += [Job("network", name, "false_positive_rate", lambda s, i, make=make: network_rejections(s, make, i),
                "whole networks") for name, make in NETWORKS.items()]
    out += [Job("network", f"planted {s:g}", "power",
                lambda st, i, s=s: network_rejections(st, planted.modular_network(s), i), "whole networks")
            for s in NETWORK_STRENGTHS]
    out += [Job("pruned", name, "false_positive_rate",
                lambda s, i, make=make: rejections(s, make, i, SOURCES, PRUNED_METHODS), "2 sources")
            for name, make in PRUNED.items()]
    out += [Job("pruned", name, "false_positive_rate",
                lambda s, i, make=make: network_rejections(s, make, i, PRUNED_METHODS), "whole networks")
            for name, make in PRUNED_NETWORKS.items()]
    return out


def calibrate(settings: Settings, progress: Callable[[str], None] | None = None,
              parts: tuple[str, ...] = ("layer",)) -> dict:
    """Every source x null x measure's false-positive rate (layers without modularity) and power (planted blocks),
    for the chosen parts (PARTS)."""
    start = time.perf_counter()
    size = exact_size(settings.null_samples)
    band = binomial_band(settings.trials, size)
    tests = {"weights": "recluster", "gradients": "fixed-partition", "network": "recluster"}
    out: dict[str, dict] = {}
    for index, job in enumerate(jobs()):
        if job.part not in parts:
            continue
        if progress:
            progress(f"{job.part}: {job.name}: {settings.trials} trials, {job.what}")
        for source, by_method in job.count(settings, index).items():
            parts_out = out.setdefault(source, {"null_test": tests[source], "false_positive_rate": {}, "power": {}})
            parts_out[job.kind][job.name] = {
                method: {measure: cell(n, settings.trials, band if job.kind == "false_positive_rate" else None)
                         for measure, n in by_measure.items()}
                for method, by_measure in by_method.items()}
    return {"alpha": ALPHA, "test_size": size, "band": list(band), "default_null": DEFAULT_METHOD,
            "parts": list(parts), "settings": asdict(settings), "wall_s": round(time.perf_counter() - start, 1),
            "sources": out}


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
        description="For each cluster source (weights, gradients, the whole network), shuffle null (permute, rows, "
        "layer_nonzero) and measure, count how often p <= 0.05 on generated layers or networks with no modularity "
        "(the false-positive rate, which a valid test keeps at 5%%) and with planted blocks (the power), each with "
        "its 95%% binomial interval.")
    parser.add_argument("--trials", type=plain_int, default=Settings.trials, help="layers per cell (default 200)")
    parser.add_argument("--null-samples", type=plain_int, default=Settings.null_samples,
                        help="shuffles per null (default 39: a test of size exactly 0.05)")
    parser.add_argument("--seed", type=plain_int, default=Settings.seed,
                        help="seed of the layers and nulls (default 0)")
    parser.add_argument("--k", type=plain_int, default=Settings.k, help="clusters, 2 to 8 (default 2)")
    parser.add_argument("--parts", default="layer", metavar="PART,PART",
                        help="what to calibrate, comma-separated: layer (one layer's co-clustering; 5-10 minutes), "
                        "network (the whole-network null of --layer all on 3-layer networks of 48 units a group), "
                        "pruned (layers and networks with 50%%/90%% zeros, with layer_nonzero); network and pruned "
                        "together take about 15 minutes (default layer)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")


def command(args: argparse.Namespace) -> int:
    check_int("--trials", args.trials, 1)
    check_int("--null-samples", args.null_samples, 19)  # fewer cannot give p <= 0.05 at all
    check_int("--seed", args.seed, 0)
    check_int("--k", args.k, 2)
    if args.k > 8:  # the generated layers and networks (48 units a group in the smallest) keep 6 units a cluster
        raise ConfigError(f"--k must be from 2 to 8, not {args.k}.")
    parts = tuple(dict.fromkeys(part.strip() for part in args.parts.split(",")))
    if not parts or any(part not in PARTS for part in parts):
        raise ConfigError(f"--parts must name some of {', '.join(PARTS)}, comma-separated, not {args.parts!r}.")
    settings = Settings(trials=args.trials, null_samples=args.null_samples, seed=args.seed, k=args.k)
    result = calibrate(settings, None if args.json else lambda line: print(line, flush=True), parts)
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
                  "weights: each shuffle re-co-clustered; gradients: the partition held, W shuffled; network: the "
                  "whole network clustered, each layer shuffled on its own, each shuffle re-clustered.")
    console.print(f"{settings.trials} layers of {settings.rows}x{settings.cols} (networks of {settings.depth} "
                  f"{settings.units}x{settings.units} layers) per row, k={settings.k}, "
                  f"{settings.null_samples} shuffles (test size {result['test_size']:.3f}); * marks a "
                  f"false-positive count outside the 95% band of a valid test ({low}-{high}). {result['wall_s']} s.")
    return 0
