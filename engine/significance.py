"""A shuffle null for a clustering: every measure of the registry against shuffles of the layer, with the null that
fits where the clusters came from."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from engine.clustering import cocluster_batch, single_threaded
from engine.config import check_null
from engine.measures import BY_NAME, MeasureNull, NullResult, measure_graph
from engine.network_graph import cluster_network

__all__ = ["NullResult", "significance", "network_significance", "RECLUSTER", "FIXED_PARTITION"]

RECLUSTER, FIXED_PARTITION = "recluster", "fixed-partition"
# Shuffled matrices co-clustered at once: a chunk of the null holds about this many floats per matrix copy.
_CHUNK_ELEMENTS = 1 << 22
# Re-clusters a chunk of shuffled graphs (layers, each (n, out, in)) with k and a seed: labels per unit group.
Recluster = Callable[[list[np.ndarray], int, int], list[np.ndarray]]


def significance(weight: np.ndarray, rows, cols, k: int, *, source: str | np.ndarray | None = None,
                 method: str = "permute", samples: int = 100, seed: int = 0) -> NullResult | None:
    """Every measure of `weight` (out x in) under the labels (rows, cols) against a null of `samples` shuffles.

    `source` is what the clusters were made from: None or "weights" (the layer itself), else another source's
    name or matrix (the gradient importance F). The null follows it, so that under "W has no modularity" p is
    uniform:
    - clusters made from W depend on W, so each shuffle is re-co-clustered with the same k and algorithm (seeded by
      `seed`) and measured the same way ("recluster");
    - clusters made from anything else do not depend on W, so the partition is held fixed and only W is shuffled
      ("fixed-partition", a conditional permutation test: does W concentrate in these blocks more than its own
      entries placed at random would?).
    `method` "permute" permutes all entries of the layer; "rows" permutes within each row, so every output unit
    keeps its weights, only their inputs change; "layer_nonzero" permutes only the non-zero entries (a pruned
    layer keeps its zeros). None when `samples` is 0 (the null is off).
    """
    check_null(method, samples)
    weight = np.asarray(weight, dtype=np.float64)
    rows, cols = np.asarray(rows), np.asarray(cols)
    if rows.shape != weight.shape[:1] or cols.shape != weight.shape[1:] or (
            isinstance(source, np.ndarray) and source.shape != weight.shape):
        raise ValueError(f"labels {rows.shape} x {cols.shape} or source {np.shape(source)} do not fit the layer "
                         f"{weight.shape}")
    if samples == 0:
        return None
    name = "weights" if source is None else source if isinstance(source, str) else "matrix"
    held = name != "weights"
    return _test([weight], [cols, rows], k, None if held else _recluster_layer, method, samples, seed, name)


def network_significance(layers: Sequence[np.ndarray], labels: Sequence[np.ndarray], k: int, *,
                         method: str = "permute", samples: int = 100, seed: int = 0) -> NullResult | None:
    """Every measure of a whole network's graph (layers: each out x in, in order) under its clusters (labels per
    unit group, inputs first) against the null of `samples` networks whose every layer is shuffled on its own and
    re-clustered (engine/network_graph.py) with the same k and seed: the clusters come from the weights.

    "permute" shuffles each layer's entries (Filan et al.'s `layer` null), "rows" each row's, "layer_nonzero" only
    each layer's non-zero entries (Filan's null for pruned networks: the zero pattern stays, so does its count).
    None when `samples` is 0.
    """
    check_null(method, samples)
    if samples == 0:
        return None
    return _test([np.asarray(w, dtype=np.float64) for w in layers], [np.asarray(g) for g in labels], k,
                 _recluster_network, method, samples, seed, "weights")


def _recluster_layer(shuffled: list[np.ndarray], k: int, seed: int) -> list[np.ndarray]:
    result = cocluster_batch(shuffled[0], k, seed)
    return [result.cols, result.rows]


def _recluster_network(shuffled: list[np.ndarray], k: int, seed: int) -> list[np.ndarray]:
    return cluster_network(shuffled, k, seed)


def _test(layers: list[np.ndarray], labels: list[np.ndarray], k: int, recluster: Recluster | None, method: str,
          samples: int, seed: int, source: str) -> NullResult:
    """The observed measures of a layered graph against its null: each shuffle re-clustered by `recluster`, or
    under the held `labels` when it is None."""
    with single_threaded():  # every sum in the same order on any machine: the same p for the same seed
        observed = measure_graph([w[None] for w in layers], [g[None] for g in labels], k)
        null = _null(layers, labels if recluster is None else None, k, recluster, method, samples, seed)
    return NullResult(method=method, test=FIXED_PARTITION if recluster is None else RECLUSTER, source=source,
                      samples=samples,
                      measures={key: _against(key, float(observed[key][0]), values) for key, values in null.items()})


def _against(name: str, observed: float, null: np.ndarray) -> MeasureNull:
    """p = (r + 1) / (n + 1), r the shuffles at least as modular: the observation counts as one of the samples."""
    mean, std = float(null.mean()), float(null.std())
    r = int(BY_NAME[name].as_modular(null, observed).sum())
    return MeasureNull(observed=observed, null_mean=mean, null_std=std,
                       z=(observed - mean) / std if std > 0 else None, p=(r + 1) / (len(null) + 1))


def _null(layers: list[np.ndarray], partition: list[np.ndarray] | None, k: int, recluster: Recluster | None,
          method: str, samples: int, seed: int) -> dict[str, np.ndarray]:
    """Every measure (samples,) of the shuffles, a chunk of shuffles at a time: under `partition` when one is
    held, else under each shuffle's own clustering."""
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_ELEMENTS // sum(w.size for w in layers))
    parts: list[dict[str, np.ndarray]] = []
    for start in range(0, samples, chunk):
        n = min(chunk, samples - start)
        shuffled = [w.ravel()[_shuffle_orders(w, method, n, rng)].reshape(n, *w.shape) for w in layers]
        if partition is None:
            labels = recluster(shuffled, k, seed)
        else:
            labels = [np.broadcast_to(side, (n, *side.shape)) for side in partition]
        parts.append(measure_graph(shuffled, labels, k))
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


def _shuffle_orders(weight: np.ndarray, method: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """n shuffles (n, out * in) of a layer's flat entries: all of them ("permute"), within each row ("rows"), only
    the non-zero ones, the zeros staying where they are ("layer_nonzero"), or the non-zero ones within each row
    ("rows_nonzero": a pruned layer's zero pattern and each unit's weights both kept)."""
    out, inp = weight.shape
    if method == "permute":
        return rng.permuted(np.broadcast_to(np.arange(out * inp), (n, out * inp)), axis=1)
    if method == "layer_nonzero":
        orders = np.tile(np.arange(out * inp), (n, 1))
        nonzero = np.flatnonzero(weight)
        orders[:, nonzero] = rng.permuted(np.broadcast_to(nonzero, (n, len(nonzero))), axis=1)
        return orders
    if method == "rows_nonzero":
        zero = np.asarray(weight) == 0
        slots = np.argsort(zero, axis=1, kind="stable")  # each row's non-zero columns first, then its zeros
        keys = np.where(zero, 2.0, rng.random((n, out, inp)))  # zeros sort last: they stay where they are
        drawn = np.argsort(keys, axis=2, kind="stable")  # the row's non-zero columns in a random order, then zeros
        within = np.empty((n, out, inp), dtype=np.int64)
        np.put_along_axis(within, np.broadcast_to(slots, (n, out, inp)),
                          np.where(np.sort(zero, axis=1)[None], slots[None], drawn), axis=2)
        return (within + np.arange(out)[:, None] * inp).reshape(n, -1)
    within = rng.permuted(np.broadcast_to(np.arange(inp), (n, out, inp)), axis=2)
    return (within + np.arange(out)[:, None] * inp).reshape(n, -1)  # row i's entries stay in row i
