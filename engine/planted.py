"""Generated layers with known structure: planted blocks for recovery, and layers with and without modularity (with a
gradient-like source beside them) for calibrating the nulls. numpy only; every generator takes a numpy Generator."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# Quantiles (0, 1/32, ..., 1) of a trained layer's entries in units of their standard deviation: fc2 of the default
# MLP after `clusterlab run --dataset mnist --epochs 5` (seed 42), and of its gradient importance F in units of its
# mean. The weights are still nearly uniform (excess kurtosis -1.13, from PyTorch's uniform init); F is heavy-tailed
# (excess kurtosis 16.8) and its row and column sums vary by 70% and 92% (coefficient of variation).
TRAINED_W = (-2.3004, -1.5645, -1.4438, -1.3346, -1.2253, -1.1212, -1.0191, -0.9135, -0.8029, -0.6997, -0.5901,
             -0.4855, -0.3741, -0.2749, -0.1593, -0.0485, 0.0577, 0.1625, 0.2646, 0.3621, 0.4764, 0.5839, 0.6952,
             0.8122, 0.9161, 1.02, 1.1218, 1.2266, 1.3378, 1.441, 1.5531, 1.6811, 2.7484)
TRAINED_F = (0.0, 0.0017, 0.0051, 0.011, 0.0195, 0.0313, 0.0475, 0.0674, 0.091, 0.1215, 0.1565, 0.1936, 0.2362,
             0.2818, 0.333, 0.3919, 0.4574, 0.5238, 0.6031, 0.6818, 0.7739, 0.8863, 1.0011, 1.144, 1.3009, 1.4809,
             1.7225, 2.0077, 2.349, 2.8048, 3.4795, 4.6738, 20.3793)

Shape = tuple[int, int]
# A layer generator for calibration: rng, shape, k -> (W, F), F the gradient-like matrix the gradients source
# co-clusters (its partition is then measured on W).
Layer = Callable[[np.random.Generator, Shape, int], tuple[np.ndarray, np.ndarray]]


def block_labels(sizes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Labels of len sum(sizes), group i holding sizes[i] units, in random order."""
    return rng.permutation(np.repeat(np.arange(len(sizes)), sizes))


def sizes_apart(n: int, k: int, ratio: float) -> np.ndarray:
    """k group sizes summing to n, geometrically spaced so the largest is `ratio` times the smallest."""
    weights = ratio ** (np.arange(k) / max(k - 1, 1))
    sizes = np.maximum(np.floor(weights / weights.sum() * n).astype(int), 1)
    sizes[-1] += n - sizes.sum()
    return sizes


def sizes_up_to(n: int, k: int, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """k group sizes summing to n, drawn up to `ratio` times apart."""
    weights = rng.uniform(1.0, ratio, k)
    sizes = np.floor(weights / weights.sum() * n).astype(int)
    sizes[: n - sizes.sum()] += 1
    return sizes


@dataclass(frozen=True)
class Blocks:
    """A planted-block family for recovery: block entries, noise everywhere, group sizes, dead rows."""

    name: str
    noise: str  # "gaussian" (README's table) or "t2" (Student t with 2 degrees of freedom: infinite variance)
    block: str  # "uniform" (1 + U(0, 1), README's table) or "gaussian" (|N(0, 1)|)
    ratio: float  # largest group / smallest
    spread: str  # "up-to" (drawn up to ratio apart) or "apart" (exactly ratio apart, geometric)
    noise_scale: float = 0.2
    dead: int = 3

    def sample(self, shape: Shape, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(matrix, row labels, column labels); dead rows are all zero and labelled -1."""
        r, c = shape
        sizes = sizes_apart if self.spread == "apart" else lambda n, k_, ratio: sizes_up_to(n, k_, ratio, rng)
        rows = block_labels(sizes(r - self.dead, k, self.ratio), rng)
        cols = block_labels(sizes(c, k, self.ratio), rng)
        inside = rows[:, None] == cols[None, :]
        uniform = self.block == "uniform"
        entries = 1.0 + rng.random(inside.shape) if uniform else np.abs(rng.standard_normal(inside.shape))
        noise = rng.standard_normal(inside.shape) if self.noise == "gaussian" else rng.standard_t(2, inside.shape)
        block = inside * entries + self.noise_scale * noise
        live = np.sort(rng.choice(r, r - self.dead, replace=False))
        matrix, labels = np.zeros(shape), np.full(r, -1)
        matrix[live], labels[live] = block, rows
        return matrix, labels, cols


RECOVERY = (
    Blocks("README's: uniform blocks, Gaussian noise 0.2, sizes up to 3x apart", "gaussian", "uniform", 3.0, "up-to"),
    Blocks("Gaussian blocks, heavy-tailed noise (t2, 0.1), up to 3x apart", "t2", "gaussian", 3.0, "up-to", 0.1),
    Blocks("Gaussian blocks, Gaussian noise 0.2, sizes 3x apart", "gaussian", "gaussian", 3.0, "apart"),
    Blocks("Gaussian blocks, Gaussian noise 0.2, sizes 10x apart", "gaussian", "gaussian", 10.0, "apart"),
)


# ----- layers for calibration ------------------------------------------------------------------------------------


def _from_quantiles(quantiles: tuple[float, ...], rng: np.random.Generator, shape: Shape) -> np.ndarray:
    """iid draws from the distribution with these (equally spaced) quantiles, by inverse-CDF interpolation."""
    return np.interp(rng.random(shape), np.linspace(0, 1, len(quantiles)), quantiles)


def gradient_like(rng: np.random.Generator, shape: Shape) -> np.ndarray:
    """An F with no blocks shaped like a trained one: heavy-tailed entries (chi-square, 1 dof) scaled by row and
    column factors (log-normal, so row and column sums vary by about as much as the trained F's)."""
    rows, cols = rng.lognormal(0.0, 0.7, shape[0]), rng.lognormal(0.0, 0.8, shape[1])
    return rows[:, None] * cols[None, :] * rng.chisquare(1, shape)


def iid_normal(rng: np.random.Generator, shape: Shape, k: int) -> tuple[np.ndarray, np.ndarray]:
    return rng.standard_normal(shape), gradient_like(rng, shape)


def heavy_tailed(rng: np.random.Generator, shape: Shape, k: int) -> tuple[np.ndarray, np.ndarray]:
    return rng.standard_t(2, shape), gradient_like(rng, shape)


def trained_shuffled(rng: np.random.Generator, shape: Shape, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The trained layer's entries and its F's, each drawn iid from their distributions (a shuffled trained layer)."""
    return _from_quantiles(TRAINED_W, rng, shape), _from_quantiles(TRAINED_F, rng, shape)


def foreign_blocks(rng: np.random.Generator, shape: Shape, k: int) -> tuple[np.ndarray, np.ndarray]:
    """W without modularity; F with strong blocks of sizes 4x apart that W does not share (the defect of the joint
    null: the observed partition is lopsided, the shuffled F's are not)."""
    rows = block_labels(sizes_apart(shape[0], k, 4.0), rng)
    cols = block_labels(sizes_apart(shape[1], k, 4.0), rng)
    return rng.standard_normal(shape), rng.random(shape) * (1.0 + 2.0 * (rows[:, None] == cols[None, :]))


def row_scaled(rng: np.random.Generator, shape: Shape, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Units of unequal scale (log-normal row factors) and no modularity; F's row factors follow W's, as a gradient's
    do when a unit's outgoing scale sets how much its weights are used."""
    scale = rng.lognormal(0.0, 0.5, shape[0])
    return scale[:, None] * rng.standard_normal(shape), scale[:, None] ** 2 * gradient_like(rng, shape)


def modular(strength: float) -> Layer:
    """k equal planted blocks whose entries are (1 + strength) times as large as those outside; F carries the same
    blocks (squared, as F is a squared gradient) on a gradient-like background."""

    def make(rng: np.random.Generator, shape: Shape, k: int) -> tuple[np.ndarray, np.ndarray]:
        rows = block_labels(sizes_apart(shape[0], k, 1.0), rng)
        cols = block_labels(sizes_apart(shape[1], k, 1.0), rng)
        gain = 1.0 + strength * (rows[:, None] == cols[None, :])
        return gain * rng.standard_normal(shape), gain**2 * gradient_like(rng, shape)

    return make


def prune(layers: list[np.ndarray], fraction: float, how: str, rng: np.random.Generator) -> list[np.ndarray]:
    """The layers with round(fraction · N) of their N entries zeroed: the smallest |w| over all of them together
    (`--prune`'s global magnitude pruning, engine/prune.py) or, `how` "random", entries drawn at random."""
    import torch  # imported on first use: calibrate's default layers need none of it

    from engine.prune import prune_global

    if how == "random":  # uniform scores ranked like magnitudes: the same count zeroed, at random places
        scores = [torch.from_numpy(rng.random(w.shape)) for w in layers]
        keep = prune_global(scores, fraction)
        return [w * mask.numpy() for w, mask in zip(layers, keep, strict=True)]
    copies = [torch.from_numpy(np.array(w, dtype=np.float64)) for w in layers]
    prune_global(copies, fraction)
    return [c.numpy() for c in copies]


def pruned(make: Layer, fraction: float, how: str) -> Layer:
    """`make`'s layers pruned (see `prune`); F, a gradient, stays whole: a pruned weight still has a gradient."""

    def make_pruned(rng: np.random.Generator, shape: Shape, k: int) -> tuple[np.ndarray, np.ndarray]:
        w, f = make(rng, shape, k)
        return prune([w], fraction, how, rng)[0], f

    return make_pruned


# ----- networks for calibrating the whole-network null -----------------------------------------------------------

# A generator of networks: rng, units per group, layers, k -> the layers (each units x units), inputs first.
Network = Callable[[np.random.Generator, int, int, int], list[np.ndarray]]


def network_of(make: Layer) -> Network:
    """A network of `make`'s layers drawn independently (each its own W; F unused)."""
    return lambda rng, units, depth, k: [make(rng, (units, units), k)[0] for _ in range(depth)]


def unit_scaled(rng: np.random.Generator, units: int, depth: int, k: int) -> list[np.ndarray]:
    """A network whose units have unequal scale (log-normal, sigma 0.5) on their incoming and outgoing weights
    alike, as ReLU's rescaling leaves them, with no modularity."""
    scales = [rng.lognormal(0.0, 0.5, units) for _ in range(depth + 1)]
    return [scales[i + 1][:, None] * rng.standard_normal((units, units)) * scales[i][None, :] for i in range(depth)]


def pruned_network(make: Network, fraction: float, how: str) -> Network:
    """`make`'s networks pruned over all their layers together (see `prune`)."""
    return lambda rng, units, depth, k: prune(make(rng, units, depth, k), fraction, how, rng)


def modular_network(strength: float) -> Network:
    """k equal planted clusters of every unit group; a weight joining two units of one cluster is (1 + strength)
    times as large as one joining two clusters."""

    def make(rng: np.random.Generator, units: int, depth: int, k: int) -> list[np.ndarray]:
        labels = [block_labels(sizes_apart(units, k, 1.0), rng) for _ in range(depth + 1)]
        return [(1.0 + strength * (labels[i + 1][:, None] == labels[i][None, :])) * rng.standard_normal((units, units))
                for i in range(depth)]

    return make


def joint_blocks(rows, cols) -> set[tuple[frozenset, frozenset]]:
    """Blocks as (row set, column set) pairs: shared labels pair row cluster i with column cluster i, and label
    names do not matter."""
    rows, cols = np.asarray(rows), np.asarray(cols)
    return {(frozenset(np.flatnonzero(rows == i).tolist()), frozenset(np.flatnonzero(cols == i).tolist()))
            for i in np.unique(np.concatenate([rows, cols]))}


def recovered(found_rows: np.ndarray, found_cols: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> bool:
    """Whether a co-clustering found the planted blocks exactly, up to relabelling (dead rows, labelled -1 in the
    truth, aside)."""
    live = rows >= 0
    return joint_blocks(found_rows[live], found_cols) == joint_blocks(rows[live], cols)


def recovery_rate(family: Blocks, k: int, matrices: int = 200, shape: Shape = (128, 112), seed: int = 0,
                  cluster: Callable | None = None) -> float:
    """Share of `matrices` planted-block matrices of `family` that `cluster` (default: `cocluster_batch`) recovers
    exactly; the batch's seed is `seed`, its matrices are drawn from (seed, k)."""
    from engine.clustering import cocluster_batch

    rng = np.random.default_rng([seed, k])
    samples = [family.sample(shape, k, rng) for _ in range(matrices)]
    found = (cluster or cocluster_batch)(np.stack([m for m, _, _ in samples]), k, seed)
    return float(np.mean([recovered(found.rows[i], found.cols[i], rows, cols)
                          for i, (_, rows, cols) in enumerate(samples)]))


if __name__ == "__main__":  # README's recovery table: python -m engine.planted (engine/readme_tables.py runs it)
    print("| family | k = 2 | 3 | 4 | 5 | 6 | 7 | 8 |\n| --- | --- | --- | --- | --- | --- | --- | --- |")
    for family in RECOVERY:
        print(f"| {family.name} | " + " | ".join(f"{recovery_rate(family, k):.1%}" for k in range(2, 9)) + " |",
              flush=True)
