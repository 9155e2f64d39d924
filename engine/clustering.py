"""Joint bipartite spectral co-clustering (Dhillon 2001) of a layer's weights or gradient importance, batched."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from engine.errors import TrainingError

# The algorithm of clusterings made by this module; clusters saved before it existed read as "legacy" (scikit-learn's
# randomized-SVD co-clustering, and for gradients an in x in source whose output units were placed afterwards);
# "dhillon-joint" was this module's before the clipping and the refinement.
ALGORITHM = "dhillon-joint-refined"
# Exact spectra for layers up to this many units on each side; a randomized SVD only beyond.
EXACT_MAX = 4096
# k-means restarts per matrix (scikit-learn's default) and the cap on Lloyd iterations.
N_INIT, MAX_ITER = 10, 300
# Singular values below this (relative to the top one, which is 1) are zero: their vectors carry no structure. Taken
# from the Gram matrix's eigenvalues (absolute error ~1e-16), a zero singular value can read as ~1e-8, hence 1e-6.
_RANK_TOL = 1e-6
# |M| is clipped at this quantile of its entries before the spectral step, so a few huge entries (a heavy tail)
# cannot each pull a block of their own; and the labels are then refined by block density for up to REFINE_ITER
# rounds. Both chosen by measurement (README: planted recovery).
CLIP_QUANTILE, REFINE_ITER = 0.99, 5


@dataclass(frozen=True)
class Clusters:
    """Row (output unit) and column (input unit) labels of one layer; label i names block i on both sides. Clusters
    of a whole network (`--layer all`) also hold `units`, the labels of every unit group (inputs first); their
    rows and columns are then the studied layer's groups (what the ablation and the picture use)."""

    k: int
    source: str
    row_labels: tuple[int, ...]
    col_labels: tuple[int, ...]
    algorithm: str = "legacy"
    svd: str = "randomized"
    units: tuple[tuple[int, ...], ...] | None = None

    @classmethod
    def found(cls, k: int, source: str, result: Coclustering) -> Clusters:
        """The clusters of one `cocluster` result, made from `source` ("weights" or "gradients")."""
        return cls(k, source, tuple(result.rows.tolist()), tuple(result.cols.tolist()), ALGORITHM, result.svd)

    @classmethod
    def of_network(cls, k: int, groups: list[np.ndarray], layer: int, algorithm: str) -> Clusters:
        """A whole network's clusters from the labels of its unit groups; `layer` (1-based) is the studied one."""
        units = tuple(tuple(int(v) for v in group) for group in groups)
        return cls(k, "weights", units[layer], units[layer - 1], algorithm, "exact", units)

    @property
    def row_sizes(self) -> list[int]:
        return np.bincount(self.row_labels, minlength=self.k).tolist()

    @property
    def col_sizes(self) -> list[int]:
        return np.bincount(self.col_labels, minlength=self.k).tolist()

    @property
    def group_sizes(self) -> list[list[int]] | None:
        """A whole network's cluster sizes in each unit group (inputs first); None for one layer's clusters."""
        return None if self.units is None else [np.bincount(g, minlength=self.k).tolist() for g in self.units]

    def to_dict(self) -> dict:
        return {
            "k": self.k,
            "source": self.source,
            "algorithm": self.algorithm,
            "svd": self.svd,
            "row_sizes": self.row_sizes,
            "col_sizes": self.col_sizes,
            "row_labels": list(self.row_labels),
            "col_labels": list(self.col_labels),
            **({} if self.units is None else {"units": [list(group) for group in self.units]}),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Clusters:
        return cls(
            k=int(data["k"]),
            source=str(data["source"]),
            row_labels=tuple(int(v) for v in data["row_labels"]),
            col_labels=tuple(int(v) for v in data["col_labels"]),
            algorithm=str(data.get("algorithm", "legacy")),
            svd=str(data.get("svd", "randomized")),
            units=None if data.get("units") is None else tuple(tuple(int(v) for v in g) for g in data["units"]),
        )


@dataclass(frozen=True)
class Coclustering:
    """Joint labels: `rows` (.., r) and `cols` (.., c), one leading axis per matrix for a batch; `svd` says how the
    spectrum was taken ("exact" or "randomized"), `vectors` how many singular vectors embedded the units."""

    rows: np.ndarray
    cols: np.ndarray
    svd: str
    vectors: int


def default_vectors(k: int) -> int:
    """Singular vectors (after the trivial first) that embed the units: k - 1, chosen by measurement.

    On planted blocks (tests/test_clustering.py's generator: 128 x 112, k = 2..8 unequal blocks, noise 0.2, three
    dead rows, 200 matrices per k) k - 1 recovered every matrix exactly; ceil(log2 k), as Dhillon and scikit-learn
    use, 86% at k = 4 and 1% at k = 8; k (one vector of noise more) 99-99.5% for k = 3, 6, 7, 8.
    """
    return k - 1


def cocluster(matrix: np.ndarray, k: int, seed: int = 0) -> Coclustering:
    """Co-cluster |matrix| (r x c) into k non-empty blocks; `cocluster_batch` on a batch of one."""
    result = cocluster_batch(np.asarray(matrix)[None], k, seed)
    return Coclustering(result.rows[0], result.cols[0], result.svd, result.vectors)


def cocluster_batch(matrices: np.ndarray, k: int, seed: int = 0, *, vectors: int | None = None) -> Coclustering:
    """Co-cluster each |matrix| of a batch (n, r, c) into k blocks with labels shared between rows and columns.

    Dhillon's method on A = |matrix| clipped at its CLIP_QUANTILE: A_n = D_r^-1/2 A D_c^-1/2, its singular vectors
    2..1+`vectors`, scaled back by D^-1/2, embed rows and columns in one space, and ONE k-means over the stacked
    embeddings labels both, so row cluster i and column cluster i are the same block i; `_refine` then moves units
    to their densest block. The spectrum is exact (top eigenpairs of the smaller Gram matrix A_n A_n^T
    or A_n^T A_n, LAPACK, float64) up to EXACT_MAX units a side. All-zero rows and columns (D^-1/2 infinite) are left
    out of the spectral step and k-means, then spread over the clusters, smallest first, changing no block's mass.
    No block is ever empty: a cluster k-means leaves without rows (or columns) gets the one whose move costs least.
    Everything runs on one BLAS thread, so the labels do not depend on the thread count. Labels are renumbered
    by first appearance (rows, then columns), so equal partitions print equally.
    """
    a = np.abs(np.asarray(matrices, dtype=np.float64))
    n, r, c = a.shape
    vectors = default_vectors(k) if vectors is None else vectors
    vectors = min(vectors, min(r, c) - 1)
    live_rows, live_cols = a.sum(axis=2) > 0, a.sum(axis=1) > 0
    n_live = min(int(live_rows.sum(axis=1).min()), int(live_cols.sum(axis=1).min()))
    if n_live < k:
        raise TrainingError(
            f"Only {n_live} units of the layer carry any weight, too few for k={k} clusters; use a smaller --k."
        )
    with single_threaded():
        a = np.minimum(a, np.quantile(a.reshape(n, -1), CLIP_QUANTILE, axis=1)[:, None, None])
        embedding, svd = _embedding(a, live_rows, live_cols, vectors, seed)
        live = np.concatenate([live_rows, live_cols], axis=1)
        labels, centers = _kmeans(embedding, live, k, np.random.default_rng(seed))
        labels = np.where(live, labels, -1)
        for b in range(n):
            _fill_empty_sides(labels[b], embedding[b], centers[b], r, k)
        labels = _refine(a, labels, k)
    for b in range(n):
        if not live[b].all():
            labels[b, :r] = _place_unlabelled(labels[b, :r], k)
            labels[b, r:] = _place_unlabelled(labels[b, r:], k)
    labels = _canonical(labels, k)
    return Coclustering(labels[:, :r], labels[:, r:], svd, vectors)


def _refine(a: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Move each live row to the cluster whose columns it weighs most on average, then each live column likewise
    against the rows, for up to REFINE_ITER rounds (n, r + c labels, -1 dead). Spectral k-means favours clusters
    of equal spread, so it splits big blocks and merges small ones; mean block density does not care about size.
    A matrix whose round would leave a cluster without rows or columns keeps its labels and stops there."""
    r = a.shape[1]
    labels = labels.copy()
    active = np.arange(len(a))
    for _ in range(REFINE_ITER):
        rows, cols = labels[active, :r], labels[active, r:]
        m = a[active]
        col_hot = (cols[..., None] == np.arange(k)).astype(np.float64)  # dead units (-1) are in no cluster
        new_rows = np.where(rows >= 0, _densest(np.matmul(m, col_hot), col_hot.sum(axis=1)), -1)
        row_hot = (new_rows[..., None] == np.arange(k)).astype(np.float64)
        new_cols = np.where(cols >= 0, _densest(np.matmul(m.transpose(0, 2, 1), row_hot), row_hot.sum(axis=1)), -1)
        new = np.concatenate([new_rows, new_cols], axis=1)
        full = (row_hot.sum(axis=1) > 0).all(axis=1) & ((new_cols[..., None] == np.arange(k)).any(axis=1)).all(axis=1)
        moved = full & (new != labels[active]).any(axis=1)
        labels[active[moved]] = new[moved]
        active = active[moved]
        if not len(active):
            break
    return labels


def _densest(mass: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Each unit's cluster of highest mean weight (n, units): mass (n, units, k) over sizes (n, k)."""
    return (mass / np.maximum(sizes, 1.0)[:, None, :]).argmax(axis=2)


def _embedding(a: np.ndarray, live_rows: np.ndarray, live_cols: np.ndarray, vectors: int,
               seed: int) -> tuple[np.ndarray, str]:
    """Rows then columns of each matrix embedded by singular vectors 2..1+vectors (n, r + c, vectors)."""
    inv_r = np.where(live_rows, 1.0 / np.sqrt(np.where(live_rows, a.sum(axis=2), 1.0)), 0.0)
    inv_c = np.where(live_cols, 1.0 / np.sqrt(np.where(live_cols, a.sum(axis=1), 1.0)), 0.0)
    normalised = a * inv_r[:, :, None] * inv_c[:, None, :]
    transposed = a.shape[1] > a.shape[2]  # work on the smaller side's Gram matrix
    if transposed:
        normalised = normalised.transpose(0, 2, 1)
    exact = max(a.shape[1:]) <= EXACT_MAX
    u, s = _top_exact(normalised, vectors + 1) if exact else _top_randomized(normalised, vectors + 1, seed)
    keep = s > _RANK_TOL * s[:, :1]
    u = np.where(keep[:, None, :], u, 0.0)
    v = np.matmul(normalised.transpose(0, 2, 1), u) / np.where(keep, s, 1.0)[:, None, :]
    if transposed:
        u, v = v, u
    rows = u[:, :, 1:] * inv_r[:, :, None]
    cols = v[:, :, 1:] * inv_c[:, :, None]
    return np.concatenate([rows, cols], axis=1), "exact" if exact else "randomized"


def _top_exact(m: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Top `count` left singular vectors and values of each m (n, p, q), p <= q, from the eigenpairs of m m^T.

    Only the top pairs are computed (LAPACK's MRRR on a subset): 4-5x faster than a full SVD of the same matrix, and
    in float64 the vectors' error, about eps / (s_i^2 - s_i+1^2), stays far below what could move a label.
    """
    import scipy.linalg  # imported on first use: it adds to every start

    gram = np.matmul(m, m.transpose(0, 2, 1))
    p = m.shape[1]
    u = np.empty((m.shape[0], p, count))
    s = np.empty((m.shape[0], count))
    for b, g in enumerate(gram):
        values, vecs = scipy.linalg.eigh(g, subset_by_index=[p - count, p - 1], driver="evr", check_finite=False,
                                         overwrite_a=True)
        u[b], s[b] = vecs[:, ::-1], np.sqrt(np.clip(values[::-1], 0.0, None))
    return u, s


def _top_randomized(m: np.ndarray, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Randomized top singular triplets (Halko et al.), for layers too large for an exact spectrum."""
    from sklearn.utils.extmath import randomized_svd

    u = np.empty((m.shape[0], m.shape[1], count))
    s = np.empty((m.shape[0], count))
    for b, x in enumerate(m):
        u[b], s[b], _ = randomized_svd(x, count, random_state=seed)
    return u, s


def _kmeans(points: np.ndarray, live: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means of each point set (n, P, d) over its live points from N_INIT k-means++ starts, all starts of
    all sets at once; returns the labels and centres of each set's lowest-inertia start.

    A start whose labels stop changing has converged and leaves the computation, so the slow few cost little.
    """
    n, p, _ = points.shape
    starts = np.repeat(points, N_INIT, axis=0)  # (S, P, d), S = n * N_INIT
    weight = np.repeat(live, N_INIT, axis=0).astype(np.float64)  # dead points pull no centre
    centers = _kmeans_plus_plus(starts, weight, k, rng.random((len(starts), k)))
    labels = np.full((len(starts), p), -1)
    active = np.arange(len(starts))
    for _ in range(MAX_ITER):
        new = _nearest(starts[active], centers[active])
        changed = (new != labels[active]).any(axis=1)
        active, new = active[changed], new[changed]
        if not len(active):
            break
        labels[active] = new
        centers[active] = _means(starts[active], weight[active], new, centers[active])
    inertia = (_squared_distances(starts, centers).min(axis=2) * weight).sum(axis=1).reshape(n, N_INIT)
    best = np.arange(n) * N_INIT + inertia.argmin(axis=1)  # the first of equally good starts
    return labels[best], centers[best]


def _kmeans_plus_plus(points: np.ndarray, weight: np.ndarray, k: int, draws: np.ndarray) -> np.ndarray:
    """k-means++ starts (S, k, d) for point sets (S, P, d): each next centre drawn among live points with odds D^2."""
    s, p, d = points.shape
    centers = np.empty((s, k, d))
    odds, nearest = weight, np.full((s, p), np.inf)
    for j in range(k):
        cumulative = np.cumsum(odds, axis=1)
        # Every live point already sits on a centre (fewer distinct points than k): draw among them uniformly.
        cumulative = np.where(cumulative[:, -1:] > 0, cumulative, np.cumsum(weight, axis=1))
        target = draws[:, j, None] * cumulative[:, -1:]
        chosen = np.minimum((cumulative <= target).sum(axis=1), p - 1)  # the first point whose odds pass the draw
        centers[:, j] = points[np.arange(s), chosen]
        nearest = np.minimum(nearest, np.square(points - centers[:, j, None]).sum(axis=2))
        odds = nearest * weight
    return centers


def _squared_distances(points: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """(S, P, k) squared distances of points (S, P, d) to centres (S, k, d), never negative."""
    cross = np.matmul(points, centers.transpose(0, 2, 1))
    norms = np.square(points).sum(axis=2)[:, :, None] + np.square(centers).sum(axis=2)[:, None, :]
    return np.maximum(norms - 2.0 * cross, 0.0)


def _nearest(points: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Index of each point's nearest centre (S, P); |x|^2 is the same for every centre, so it is left out."""
    return (np.square(centers).sum(axis=2)[:, None, :] - 2.0 * np.matmul(points, centers.transpose(0, 2, 1))).argmin(
        axis=2)


def _means(points: np.ndarray, weight: np.ndarray, labels: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Each cluster's mean of its live points (S, k, d); a cluster left without points keeps its centre."""
    s, k, d = centers.shape
    flat = (np.arange(s)[:, None] * k + labels).ravel()
    counts = np.bincount(flat, weights=weight.ravel(), minlength=s * k).reshape(s, k, 1)
    sums = np.stack([np.bincount(flat, weights=(points[:, :, j] * weight).ravel(), minlength=s * k)
                     for j in range(d)], axis=1).reshape(s, k, d)
    return np.where(counts > 0, sums / np.maximum(counts, 1.0), centers)


def _fill_empty_sides(labels: np.ndarray, points: np.ndarray, centers: np.ndarray, r: int, k: int) -> None:
    """Give every cluster at least one live row and one live column, in place.

    A cluster without rows (or columns) takes the live row (column) whose move there costs least in k-means terms,
    from a cluster that keeps at least one; refused when that side has fewer than k distinct embedded units, since
    the split would then be arbitrary.
    """
    for side in (slice(0, r), slice(r, len(labels))):
        side_labels, side_points = labels[side], points[side]
        live = side_labels >= 0
        if np.all(np.bincount(side_labels[live], minlength=k) > 0):
            continue
        scale = max(float(np.abs(side_points[live]).max()), np.finfo(np.float64).tiny)
        if len(np.unique(np.round(side_points[live] / scale, 9), axis=0)) < k:
            raise TrainingError(
                f"The layer's structure cannot carry k={k} non-empty blocks (its units embed at fewer than {k} "
                "distinct points); use a smaller --k."
            )
        to = np.square(side_points[:, None, :] - centers[None]).sum(axis=2)  # (units, k)
        for cluster in range(k):
            sizes = np.bincount(side_labels[live], minlength=k)
            if sizes[cluster]:
                continue
            own = to[np.arange(len(side_labels)), np.maximum(side_labels, 0)]
            cost = np.where(live & (sizes[np.maximum(side_labels, 0)] > 1), to[:, cluster] - own, np.inf)
            side_labels[int(cost.argmin())] = cluster
        labels[side] = side_labels


def _place_unlabelled(labels: np.ndarray, k: int) -> np.ndarray:
    """Give units labelled -1 (no mass to go by) to the clusters, smallest first."""
    labels = labels.copy()
    sizes = np.bincount(labels[labels >= 0], minlength=k)
    for i in np.flatnonzero(labels < 0):
        c = int(sizes.argmin())
        labels[i] = c
        sizes[c] += 1
    return labels


def _canonical(labels: np.ndarray, k: int) -> np.ndarray:
    """Renumber each row of labels (n, units) by first appearance, so equal partitions print equally."""
    first = np.where(labels[:, None, :] == np.arange(k)[None, :, None], np.arange(labels.shape[1]), labels.shape[1])
    order = np.argsort(first.min(axis=2), axis=1, kind="stable")
    remap = np.empty_like(order)
    np.put_along_axis(remap, order, np.arange(k)[None, :].repeat(len(labels), axis=0), axis=1)
    return np.take_along_axis(remap, labels, axis=1)


@contextmanager
def single_threaded() -> Iterator[None]:
    """One BLAS/OpenMP thread inside: results then do not depend on the machine's thread count, and the many small
    products of co-clustering lose more to thread wake-ups than they gain. Re-entrant."""
    global _controller
    import scipy.linalg  # noqa: F401 - loaded before the controller looks, so that its BLAS is limited too
    from threadpoolctl import ThreadpoolController

    if _controller is None:
        _controller = ThreadpoolController()  # inspects every loaded library: once
    with _controller.limit(limits=1):
        yield


_controller = None
