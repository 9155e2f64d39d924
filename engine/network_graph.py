"""Whole-network clustering (`--layer all`): the MLP as one weighted graph of all its units, cut into k clusters by
normalised spectral clustering (Filan et al. 2021's construction), batched like the single-layer co-clustering."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine.clustering import _canonical, _kmeans, single_threaded
from engine.errors import TrainingError
from engine.measures import _blocks

ALGORITHM = "spectral-network"
# A connected component with fewer units than this share of an equal cluster (total / k) is a speck, placed after
# the spectral step: a quarter, so a planted cluster (about total / k units) is always embedded.
SPECK_SHARE = 0.25


def group_sizes(layers: Sequence[np.ndarray]) -> list[int]:
    """Units per group of a stack of layers (each (.., out, in)): the first layer's inputs, then each layer's
    outputs."""
    return [layers[0].shape[-1], *(w.shape[-2] for w in layers)]


def adjacency(layers: Sequence[np.ndarray]) -> np.ndarray:
    """The symmetric |W| adjacency (N x N) of one network's units, groups in order: W_l joins group l (its inputs)
    to group l + 1 (its outputs); units of one group, and of groups two apart, share no edge."""
    offsets = np.cumsum([0, *group_sizes(layers)])
    a = np.zeros((offsets[-1], offsets[-1]))
    for i, w in enumerate(layers):
        inputs, outputs = slice(offsets[i], offsets[i + 1]), slice(offsets[i + 1], offsets[i + 2])
        a[outputs, inputs] = np.abs(w)
        a[inputs, outputs] = np.abs(w).T
    return a


def cluster_network(layers: Sequence[np.ndarray], k: int, seed: int = 0) -> list[np.ndarray]:
    """k clusters of the units of each network of a batch (layers: each (n, out_l, in_l)); labels per group, each
    (n, units_g), the first layer's inputs first.

    Normalised spectral clustering (Shi & Malik 2000, as Filan et al. 2021 apply it to whole MLPs through
    scikit-learn): A the |W| adjacency, its normalised form D^-1/2 A D^-1/2, the eigenvectors of its k largest
    eigenvalues (exact, LAPACK, float64) scaled back by D^-1/2 embed the units, and k-means (k-means++, 10 starts,
    seeded) labels them. For one layer this is Dhillon's co-clustering without its clipping and refinement.
    Only connected components of at least SPECK_SHARE / k of the units (and always the largest) are embedded: every
    component has an eigenvalue of 1 of its own, so the specks a pruned network leaves (a dead unit, a few units
    joined only to each other) would take the top eigenvectors and the clusters would be those specks. Specks join
    the clusters afterwards whole, largest first, each to the cluster with the fewest units (cutting no edge).
    Labels are renumbered by first appearance, so equal partitions print equally.
    """
    import scipy.linalg  # imported on first use: it adds to every start
    from scipy.sparse.csgraph import connected_components

    n, sizes = layers[0].shape[0], group_sizes(layers)
    total = sum(sizes)
    embedding, live = np.zeros((n, total, k)), np.zeros((n, total), dtype=bool)
    components = np.zeros((n, total), dtype=int)
    with single_threaded():
        for b in range(n):
            a = adjacency([w[b] for w in layers])
            degree = a.sum(axis=1)
            components[b] = connected_components(a != 0, directed=False)[1]
            counts = np.bincount(components[b])[components[b]]
            live[b] = (counts >= SPECK_SHARE * total / k) | (counts == counts.max())
            if live[b].sum() < k:
                raise TrainingError(f"The network's largest connected parts have only {int(live[b].sum())} units, "
                                    f"too few for k={k} clusters; use a smaller --k.")
            inv = np.where(live[b], 1.0 / np.sqrt(np.where(live[b], degree, 1.0)), 0.0)
            normalised = a * inv[:, None] * inv[None, :]
            _, vectors = scipy.linalg.eigh(normalised, subset_by_index=[total - k, total - 1], driver="evr",
                                           check_finite=False, overwrite_a=True)
            embedding[b] = vectors[:, ::-1] * inv[:, None]
        labels, _ = _kmeans(embedding, live, k, np.random.default_rng(seed))
    labels = np.stack([_place_components(row, comps, is_live, k)
                       for row, comps, is_live in zip(labels, components, live, strict=True)])
    labels = _canonical(labels, k)
    return np.split(labels, np.cumsum(sizes)[:-1], axis=1)


def _place_components(labels: np.ndarray, components: np.ndarray, live: np.ndarray, k: int) -> np.ndarray:
    """Labels of one network with each component outside the embedded one given whole, largest first, to the
    cluster with the fewest units."""
    labels = np.where(live, labels, -1)
    sizes = np.bincount(labels[live], minlength=k)
    counts = np.bincount(components)
    for c in sorted(set(components[~live].tolist()), key=lambda c: (-counts[c], c)):
        target = int(sizes.argmin())
        labels[components == c] = target
        sizes[target] += counts[c]
    return labels


def chance_level(units: Sequence[Sequence[int]], k: int) -> float:
    """The whole network's uniform-mass chance: the share of its edges (all pairs of units in consecutive groups)
    whose two units share a cluster."""
    counts = [np.bincount(np.asarray(group), minlength=k) for group in units]
    pairs = sum(len(a) * len(b) for a, b in zip(units[:-1], units[1:], strict=True))
    return float(sum(a @ b for a, b in zip(counts[:-1], counts[1:], strict=True))) / pairs


def cluster_shares(layers: Sequence[np.ndarray], units: Sequence[Sequence[int]], k: int) -> list[float]:
    """Each cluster's share of the whole network's squared weight mass (edges inside it; they sum to its
    clusterability)."""
    squared = [np.square(np.asarray(w, dtype=np.float64))[None] for w in layers]
    inside, _, _ = _blocks(squared, [np.asarray(group)[None] for group in units], k)
    total = max(sum(float(s.sum()) for s in squared), np.finfo(np.float64).tiny)
    return (sum(inside)[0] / total).tolist()
