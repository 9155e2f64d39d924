"""A shuffle null for a clustering: how clusterable (and how cut) re-co-clustered shuffles of the layer are."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

from engine.clustering import cocluster_batch, single_threaded
from engine.config import check_null
from engine.metrics import clusterability_batch, ncut_batch

# Shuffled matrices co-clustered at once: a chunk of the null holds about this many floats per matrix copy.
_CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class Significance:
    """Observed clustering against its shuffle null.

    p_value = (r + 1) / (samples + 1), r = null samples at least as clusterable as observed (so 1 / (samples + 1)
    is the smallest p a null of that size can give); z = (observed - null_mean) / null_std, None when every
    shuffle scored the same (null_std 0: a z would be infinite or undefined, and JSON has no infinity). null_std
    is the null sample's standard deviation (ddof 0). ncut is the observed normalised cut (lower = more modular),
    ncut_p_value = (r + 1) / (samples + 1) with r = null samples whose ncut is at most the observed one.
    """

    method: str
    samples: int
    null_mean: float
    null_std: float
    z: float | None
    p_value: float
    ncut: float
    ncut_null_mean: float
    ncut_p_value: float

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Significance:
        values = {f.name: data[f.name] for f in fields(cls)}
        values["samples"] = int(values["samples"])
        return cls(**values)


def significance(weight: np.ndarray, rows, cols, k: int, *, source: np.ndarray | None = None,
                 method: str = "permute", samples: int = 100, seed: int = 0) -> Significance | None:
    """Compare the clusterability and ncut of `weight` (out x in) under the labels (rows, cols) with a shuffle null.

    Each of `samples` shuffles of the layer is re-co-clustered with the same k and algorithm (`cocluster_batch`,
    seeded by `seed`) and measured the same way. `method` "permute" permutes all entries of the layer; "rows"
    permutes within each row, so every output unit keeps its weights, only their inputs change. When the clusters
    were made from another matrix of the same shape (`source`: the gradient importance F), F and W are shuffled by
    the same permutation, the shuffled F is clustered and the shuffled W measured, as for the observed clusters.
    Clusterability and ncut are always of the weights. None when `samples` is 0 (the null is off).
    """
    check_null(method, samples)
    weight = np.asarray(weight, dtype=np.float64)
    rows, cols = np.asarray(rows), np.asarray(cols)
    if rows.shape != weight.shape[:1] or cols.shape != weight.shape[1:] or (
            source is not None and np.shape(source) != weight.shape):
        raise ValueError(f"labels {rows.shape} x {cols.shape} or source {np.shape(source)} do not fit the layer "
                         f"{weight.shape}")
    if samples == 0:
        return None
    with single_threaded():  # every sum in the same order on any machine: the same p for the same seed
        observed = clusterability_batch(weight[None], rows[None], cols[None], k)[0]
        observed_ncut = ncut_batch(weight[None], rows[None], cols[None], k)[0]
        null, null_ncut = _null(weight, None if source is None else np.asarray(source, dtype=np.float64), k,
                                method, samples, seed)
    null_mean, null_std = float(null.mean()), float(null.std())
    return Significance(
        method=method,
        samples=samples,
        null_mean=null_mean,
        null_std=null_std,
        z=(float(observed) - null_mean) / null_std if null_std > 0 else None,
        p_value=_p_value(int((null >= observed).sum()), samples),
        ncut=float(observed_ncut),
        ncut_null_mean=float(null_ncut.mean()),
        ncut_p_value=_p_value(int((null_ncut <= observed_ncut).sum()), samples),
    )


def _null(weight: np.ndarray, source: np.ndarray | None, k: int, method: str, samples: int,
          seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Clusterability and ncut (samples,) of the re-co-clustered shuffles, a chunk of shuffles at a time."""
    rng = np.random.default_rng(seed)
    out, inp = weight.shape
    chunk = max(1, _CHUNK_ELEMENTS // weight.size)
    clusterabilities, ncuts = np.empty(samples), np.empty(samples)
    for start in range(0, samples, chunk):
        n = min(chunk, samples - start)
        order = _shuffle_orders(weight.shape, method, n, rng)
        shuffled = weight.ravel()[order].reshape(n, out, inp)
        clustered = shuffled if source is None else source.ravel()[order].reshape(n, out, inp)
        result = cocluster_batch(clustered, k, seed)
        part = slice(start, start + n)
        clusterabilities[part] = clusterability_batch(shuffled, result.rows, result.cols, k)
        ncuts[part] = ncut_batch(shuffled, result.rows, result.cols, k)
    return clusterabilities, ncuts


def _shuffle_orders(shape: tuple[int, int], method: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """n shuffles (n, out * in) of a layer's flat entries: all of them ("permute"), or within each row ("rows")."""
    out, inp = shape
    if method == "permute":
        return rng.permuted(np.broadcast_to(np.arange(out * inp), (n, out * inp)), axis=1)
    within = rng.permuted(np.broadcast_to(np.arange(inp), (n, out, inp)), axis=2)
    return (within + np.arange(out)[:, None] * inp).reshape(n, -1)  # row i's entries stay in row i


def _p_value(at_least_as_extreme: int, samples: int) -> float:
    """(r + 1) / (n + 1): the observation counts as one of the samples, so p is never 0."""
    return (at_least_as_extreme + 1) / (samples + 1)
