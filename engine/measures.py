"""The measures of a clustering, declared once: what each computes (batched), which way is modular, how it reads.

Everything that reports a clustering (significance, history, `run --json`, sessions, export, sweep tables, the UI)
iterates `MEASURES`, so a new measure is one `Measure(...)` here with its batched function. Also the typed result of
a shuffle null over all of them, `NullResult`, and the one rule for reading a p-value (`significant`). numpy only:
the UI imports this module.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

ALPHA = 0.05  # a test "rejects" when p <= ALPHA; with n shuffles that needs 1 / (n + 1) <= ALPHA

# A batched measure of layered graphs: layers (each (n, out_l, in_l), layer l joining unit group l to group l + 1)
# and labels (each (n, units_g), one per unit group: the first layer's inputs first), k -> float64 (n,). A single
# layer W (out x in) is the graph [W] with labels [cols, rows]; a whole MLP is [W_1, ..., W_L] with its L + 1 groups.
GraphMeasure = Callable[[Sequence[np.ndarray], Sequence[np.ndarray], int], np.ndarray]
_TINY = np.finfo(np.float64).tiny


def clusterability_graph(layers: Sequence[np.ndarray], labels: Sequence[np.ndarray], k: int) -> np.ndarray:
    """Share of each graph's squared edge mass inside its clusters (edges whose two units share a label), float64
    (n,); 0 for an all-zero graph. For one layer: the share of sum W^2 in the diagonal blocks."""
    inside, _, _ = _blocks([np.square(np.asarray(w, dtype=np.float64)) for w in layers], labels, k)
    total = sum(np.square(np.asarray(w, dtype=np.float64)).sum(axis=(1, 2)) for w in layers)
    return sum(block.sum(axis=1) for block in inside) / np.maximum(total, _TINY)


def ncut_graph(layers: Sequence[np.ndarray], labels: Sequence[np.ndarray], k: int) -> np.ndarray:
    """Normalised cut (Shi & Malik; Filan et al. 2021) of each graph of |W|, float64 (n,).

    The nodes are the units, the edges weigh |W_ij|, and cluster c is the set of units labelled c (for one layer:
    R_c + C_c). ncut = sum_c cut(c) / vol(c): cut(c) is the weight of the edges leaving c, vol(c) the summed degree
    of its nodes, so cut(c) = vol(c) - 2 * (the mass of the edges inside c). 0 is perfectly modular, k the worst;
    a cluster with no edges at all (vol 0) adds 0.
    """
    inside, out_mass, in_mass = _blocks([np.abs(np.asarray(w, dtype=np.float64)) for w in layers], labels, k)
    volume = sum(out_mass) + sum(in_mass)
    cut = volume - 2.0 * sum(inside)
    return np.where(volume > 0, cut / np.where(volume > 0, volume, 1.0), 0.0).sum(axis=1)


def newman_q_graph(layers: Sequence[np.ndarray], labels: Sequence[np.ndarray], k: int) -> np.ndarray:
    """Barber's (2007) bipartite modularity of each graph of |W| with the k clusters, float64 (n,), taken layer by
    layer for a layered graph.

    For one layer Q = sum_c [ e_c / m - (a_c / m) (b_c / m) ]: m the total edge weight, e_c the weight inside
    block c, a_c the degree of its rows, b_c of its columns (the null model keeps every unit's degree). For layers
    l = 1..L (edges only between consecutive groups) the null model keeps every unit's degree within each layer:
    Q = sum_l sum_c [ e_lc / m - a_lc b_lc / (m m_l) ], m the whole graph's weight, m_l the layer's; one layer gives
    Barber's Q exactly. 1 - 1/k for k equal, separate, uniform blocks; about 0 for labels unrelated to the weights;
    0 for an all-zero graph.
    """
    masses = [np.abs(np.asarray(w, dtype=np.float64)) for w in layers]
    inside, out_mass, in_mass = _blocks(masses, labels, k)
    per_layer = [mass.sum(axis=(1, 2))[:, None] for mass in masses]
    total = np.maximum(sum(per_layer), _TINY)
    return sum((e / total - a * b / np.maximum(total * m, _TINY)).sum(axis=1)
               for e, a, b, m in zip(inside, out_mass, in_mass, per_layer, strict=True))


def _blocks(masses: Sequence[np.ndarray], labels: Sequence[np.ndarray],
            k: int) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Per layer, per cluster (n, k): the mass of the layer's edges inside the cluster, of its output units' edges
    in the layer, and of its input units'."""
    if len(labels) != len(masses) + 1:
        raise ValueError(f"{len(masses)} layers need {len(masses) + 1} groups of labels, not {len(labels)}")
    inside, out_mass, in_mass = [], [], []
    for mass, cols, rows in zip(masses, labels[:-1], labels[1:], strict=True):
        rows_hot = np.asarray(rows)[..., None] == np.arange(k)  # (n, r, k)
        cols_hot = (np.asarray(cols)[..., None] == np.arange(k)).astype(np.float64)  # (n, c, k)
        per_row = np.matmul(mass, cols_hot)  # (n, r, k): each row's mass towards each cluster's columns
        inside.append(np.where(rows_hot, per_row, 0.0).sum(axis=1))
        out_mass.append(np.where(rows_hot, per_row.sum(axis=2, keepdims=True), 0.0).sum(axis=1))
        in_mass.append(np.matmul(mass.sum(axis=1)[:, None, :], cols_hot)[:, 0])
    return inside, out_mass, in_mass


@dataclass(frozen=True)
class Measure:
    """One measure of a clustering: its JSON key, how it is computed, which way is modular, how it is shown."""

    name: str  # the key in every JSON, record and table
    title: str  # how people see it named
    graph: GraphMeasure
    higher_is_modular: bool
    digits: int = 4

    def batch(self, weights: np.ndarray, rows: np.ndarray, cols: np.ndarray, k: int) -> np.ndarray:
        """The measure of a batch of single layers (n, r, c) under row labels (n, r) and column labels (n, c)."""
        return self.graph([weights], [cols, rows], k)

    def as_modular(self, null: np.ndarray, observed: float) -> np.ndarray:
        """Which null values are at least as modular as the observed one (what a p-value counts)."""
        return null >= observed if self.higher_is_modular else null <= observed

    def text(self, value: float | None) -> str:
        return "-" if value is None else f"{value:.{self.digits}f}"


MEASURES: tuple[Measure, ...] = (
    Measure("clusterability", "clusterability", clusterability_graph, higher_is_modular=True),
    Measure("ncut", "ncut", ncut_graph, higher_is_modular=False),
    Measure("newman_q", "Newman Q", newman_q_graph, higher_is_modular=True),
)
BY_NAME = {m.name: m for m in MEASURES}
# The measure the regulariser raises, the charts draw and single-figure views show: chosen, not derived.
PRIMARY = "clusterability"


def measure_all(weights: np.ndarray, rows: np.ndarray, cols: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Every measure of a batch (n, r, c) under its labels (n, r), (n, c): name -> float64 (n,)."""
    return measure_graph([weights], [cols, rows], k)


def measure_graph(layers: Sequence[np.ndarray], labels: Sequence[np.ndarray], k: int) -> dict[str, np.ndarray]:
    """Every measure of a batch of layered graphs (see GraphMeasure): name -> float64 (n,)."""
    return {m.name: m.graph(layers, labels, k) for m in MEASURES}


# ----- a null's result ---------------------------------------------------------------------------------------------


def significant(p: float | None) -> bool:
    """The one reading of a p-value: it rejects the null at ALPHA."""
    return p is not None and p <= ALPHA


def shuffles_needed(alpha: float = ALPHA) -> int:
    """The fewest shuffles whose smallest p, 1 / (n + 1), reaches `alpha` (19 for 0.05)."""
    return math.ceil(1 / alpha - 1 - 1e-9)


@dataclass(frozen=True)
class MeasureNull:
    """One measure's observed value against its null (null_std: ddof 0; z None when the null has no spread)."""

    observed: float | None
    null_mean: float | None
    null_std: float | None
    z: float | None
    p: float


@dataclass(frozen=True)
class NullResult:
    """A clustering's measures against one shuffle null of `samples` shuffles.

    `method`: how the layer is shuffled (permute or rows); `source`: what the clusters were made from; `test`:
    "recluster" (each shuffle re-co-clustered, for clusters made from W) or "fixed-partition" (the partition held,
    only W shuffled, for clusters made from anything else), or "legacy" for a result saved before per-source nulls
    (for gradient clusters that was the joint null, which is not calibrated). p = (r + 1) / (samples + 1), so
    `p_floor` = 1 / (samples + 1) is the smallest p this null can give; z comes from the same `samples` shuffles.
    """

    method: str
    test: str
    source: str | None
    samples: int
    measures: dict[str, MeasureNull]

    @property
    def p_floor(self) -> float:
        return 1 / (self.samples + 1)

    @property
    def can_reject(self) -> bool:
        """Whether this null is large enough to show p <= ALPHA at all."""
        return self.p_floor <= ALPHA

    @property
    def p_value(self) -> float:
        """The primary measure's p."""
        return self.measures[PRIMARY].p

    def to_dict(self) -> dict:
        return {"method": self.method, "test": self.test, "source": self.source, "samples": self.samples,
                "p_floor": self.p_floor, "measures": {name: asdict(m) for name, m in self.measures.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> NullResult:
        """Read `to_dict()`'s form, or the flat dict sessions saved before the registry (converted)."""
        if "measures" not in data:
            return _legacy(data)
        return cls(method=str(data["method"]), test=str(data["test"]), source=data.get("source"),
                   samples=int(data["samples"]),
                   measures={name: MeasureNull(**values) for name, values in data["measures"].items()})


def _legacy(data: dict) -> NullResult:
    """The flat significance dict of earlier sessions: clusterability and ncut only, observed clusterability
    recovered from z where there was one."""
    mean, std, z = data["null_mean"], data["null_std"], data.get("z")
    observed = mean + z * std if z is not None else None
    measures = {PRIMARY: MeasureNull(observed, mean, std, z, float(data["p_value"]))}
    if "ncut" in data:
        measures["ncut"] = MeasureNull(data["ncut"], data.get("ncut_null_mean"), None, None,
                                       float(data["ncut_p_value"]))
    return NullResult(method=str(data["method"]), test="legacy", source=None, samples=int(data["samples"]),
                      measures=measures)


def readable(data: object) -> bool:
    """Whether `data` is a significance dict, today's or an earlier session's (what session validation asks)."""
    try:
        NullResult.from_dict(data)
    except (KeyError, TypeError, ValueError, AttributeError):
        return False
    return True


def upgraded(data: dict | None) -> dict | None:
    """A saved significance dict in today's form (old sessions still open), with the step it was found at if
    it says."""
    if data is None:
        return None
    return {**NullResult.from_dict(data).to_dict(), **({"step": data["step"]} if "step" in data else {})}
