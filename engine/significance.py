"""A shuffle null for a clustering: every measure of the registry against shuffles of the layer, with the null that
fits where the clusters came from."""

from __future__ import annotations

import numpy as np

from engine.clustering import cocluster_batch, single_threaded
from engine.config import check_null
from engine.measures import BY_NAME, MeasureNull, NullResult, measure_all

__all__ = ["NullResult", "significance", "RECLUSTER", "FIXED_PARTITION"]

RECLUSTER, FIXED_PARTITION = "recluster", "fixed-partition"
# Shuffled matrices co-clustered at once: a chunk of the null holds about this many floats per matrix copy.
_CHUNK_ELEMENTS = 1 << 22


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
    keeps its weights, only their inputs change. None when `samples` is 0 (the null is off).
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
    test = RECLUSTER if name == "weights" else FIXED_PARTITION
    with single_threaded():  # every sum in the same order on any machine: the same p for the same seed
        observed = measure_all(weight[None], rows[None], cols[None], k)
        null = _null(weight, (rows, cols) if test == FIXED_PARTITION else None, k, method, samples, seed)
    return NullResult(method=method, test=test, source=name, samples=samples,
                      measures={key: _against(key, float(observed[key][0]), values) for key, values in null.items()})


def _against(name: str, observed: float, null: np.ndarray) -> MeasureNull:
    """p = (r + 1) / (n + 1), r the shuffles at least as modular: the observation counts as one of the samples."""
    mean, std = float(null.mean()), float(null.std())
    r = int(BY_NAME[name].as_modular(null, observed).sum())
    return MeasureNull(observed=observed, null_mean=mean, null_std=std,
                       z=(observed - mean) / std if std > 0 else None, p=(r + 1) / (len(null) + 1))


def _null(weight: np.ndarray, partition: tuple[np.ndarray, np.ndarray] | None, k: int, method: str, samples: int,
          seed: int) -> dict[str, np.ndarray]:
    """Every measure (samples,) of the shuffles, a chunk of shuffles at a time: under `partition` when one is
    held, else under each shuffle's own co-clustering."""
    rng = np.random.default_rng(seed)
    out, inp = weight.shape
    chunk = max(1, _CHUNK_ELEMENTS // weight.size)
    parts: list[dict[str, np.ndarray]] = []
    for start in range(0, samples, chunk):
        n = min(chunk, samples - start)
        shuffled = weight.ravel()[_shuffle_orders(weight.shape, method, n, rng)].reshape(n, out, inp)
        if partition is None:
            result = cocluster_batch(shuffled, k, seed)
            labels = result.rows, result.cols
        else:
            labels = tuple(np.broadcast_to(side, (n, *side.shape)) for side in partition)
        parts.append(measure_all(shuffled, *labels, k))
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


def _shuffle_orders(shape: tuple[int, int], method: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """n shuffles (n, out * in) of a layer's flat entries: all of them ("permute"), or within each row ("rows")."""
    out, inp = shape
    if method == "permute":
        return rng.permuted(np.broadcast_to(np.arange(out * inp), (n, out * inp)), axis=1)
    within = rng.permuted(np.broadcast_to(np.arange(inp), (n, out, inp)), axis=2)
    return (within + np.arange(out)[:, None] * inp).reshape(n, -1)  # row i's entries stay in row i
