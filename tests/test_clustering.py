"""Co-clustering recovers planted blocks, shares labels between rows and columns, survives dead units."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.clustering import Clusters, cocluster, gradient_clusters
from engine.config import Config
from engine.data import Dataset, load_dataset
from engine.errors import TrainingError
from engine.metrics import block_mask, chance_level, clusterability
from engine.model import studied_weight
from engine.trainer import Trainer


def planted(row_sizes, col_sizes, noise=0.05, seed=0):
    """A block-diagonal matrix (block i = row group i x column group i) plus small noise, rows/cols shuffled."""
    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(len(row_sizes)), row_sizes)
    cols = np.repeat(np.arange(len(col_sizes)), col_sizes)
    rows, cols = rng.permutation(rows), rng.permutation(cols)
    matrix = (rows[:, None] == cols[None, :]) * (1.0 + rng.random((len(rows), len(cols))))
    matrix = matrix + noise * rng.standard_normal(matrix.shape)
    return matrix, rows, cols


def partition(labels) -> set[frozenset[int]]:
    """The partition of indices that a labelling induces (label names don't matter)."""
    labels = np.asarray(labels)
    return {frozenset(np.flatnonzero(labels == c).tolist()) for c in np.unique(labels)}


def joint_partition(rows, cols) -> set[tuple[frozenset, frozenset]]:
    """Blocks as (row set, column set) pairs: shared labels pair row cluster i with column cluster i."""
    rows, cols = np.asarray(rows), np.asarray(cols)
    return {(frozenset(np.flatnonzero(rows == c).tolist()), frozenset(np.flatnonzero(cols == c).tolist()))
            for c in np.unique(np.concatenate([rows, cols]))}


@pytest.mark.parametrize("k, row_sizes, col_sizes", [(2, (20, 12), (10, 22)), (4, (10, 8, 12, 6), (9, 9, 7, 11))])
def test_planted_blocks_are_recovered_exactly(k, row_sizes, col_sizes):
    matrix, true_rows, true_cols = planted(row_sizes, col_sizes, seed=k)
    rows, cols = cocluster(matrix, k, seed=0)
    assert joint_partition(rows, cols) == joint_partition(true_rows, true_cols)
    c = clusterability(torch.as_tensor(matrix), block_mask(rows, cols)).item()
    assert c > 0.98
    assert c > chance_level(rows, cols, k) + 0.3


def test_labels_are_shared_so_block_i_is_heavy():
    matrix, _, _ = planted((15, 15, 10), (12, 8, 20), seed=3)
    rows, cols = cocluster(matrix, 3, seed=1)
    a = np.abs(matrix)
    for i in range(3):
        diagonal = a[np.ix_(rows == i, cols == i)].mean()
        off = [a[np.ix_(rows == i, cols == j)].mean() for j in range(3) if j != i]
        assert diagonal > 5 * max(off), f"block {i} x {i} is not the heavy one"


def test_labels_are_canonical():
    matrix, _, _ = planted((10, 10, 10), (10, 10, 10), seed=5)
    rows, cols = cocluster(matrix, 3, seed=0)
    # Numbered by first appearance: row 0 is in cluster 0, and every label shows up in order.
    seen = list(dict.fromkeys(np.concatenate([rows, cols]).tolist()))
    assert seen == [0, 1, 2]
    # The same partition under a relabelled input ordering prints the same labels.
    rows2, cols2 = cocluster(matrix, 3, seed=7)
    assert joint_partition(rows, cols) == joint_partition(rows2, cols2)
    assert rows.tolist() == rows2.tolist() and cols.tolist() == cols2.tolist()


def test_dead_rows_and_columns_do_not_crash_and_live_blocks_survive():
    matrix, true_rows, true_cols = planted((12, 12), (10, 14), seed=2)
    dead_rows, dead_cols = [0, 5, 17], [3, 4]
    matrix[dead_rows, :] = 0.0
    matrix[:, dead_cols] = 0.0
    rows, cols = cocluster(matrix, 2, seed=0)
    assert rows.shape == (24,) and cols.shape == (24,)
    assert set(rows.tolist()) <= {0, 1} and set(cols.tolist()) <= {0, 1}
    live_r = np.setdiff1d(np.arange(24), dead_rows)
    live_c = np.setdiff1d(np.arange(24), dead_cols)
    assert joint_partition(rows[live_r], cols[live_c]) == joint_partition(true_rows[live_r], true_cols[live_c])
    c = clusterability(torch.as_tensor(matrix), block_mask(rows, cols)).item()
    assert np.isfinite(c) and c > 0.98


def test_too_few_live_units_is_a_clear_error():
    matrix = np.zeros((6, 6))
    matrix[0, 0] = 1.0
    with pytest.raises(TrainingError, match="too few"):
        cocluster(matrix, 2)


def test_all_zero_layer_gives_zero_not_nan():
    mask = block_mask([0, 1], [0, 1])
    assert clusterability(torch.zeros(2, 2), mask).item() == 0.0


def test_gradient_clusters_group_inputs_by_affinity_and_rows_follow_weight():
    # S: inputs {0..5} and {6..11} move together; weight rows 0-3 draw on inputs 0-5, rows 4-9 on 6-11.
    groups = np.repeat([0, 1], 6)
    s = (groups[:, None] == groups[None, :]) * 1.0 + 0.01
    weight = np.zeros((10, 12))
    weight[:4, :6] = 1.0
    weight[4:, 6:] = 1.0
    weight += 0.01
    rows, cols = gradient_clusters(s, weight, 2)
    assert partition(cols) == partition(groups)
    assert joint_partition(rows, cols) == joint_partition(np.repeat([0, 1], [4, 6]), groups)


def test_clusters_round_trip():
    c = Clusters(3, "weights", (0, 1, 2, 2), (2, 1, 0))
    assert Clusters.from_dict(c.to_dict()) == c
    assert c.row_sizes == [1, 1, 2] and c.col_sizes == [1, 1, 1]


def _trainer(**changes) -> Trainer:
    config = Config(**{"dataset": "synthetic", "hidden": (32, 32), "device": "cpu", **changes})
    data = load_dataset(config.dataset, None, config.seed, torch.device("cpu"))
    return Trainer(config, data, torch.device("cpu"))


def test_gradient_accumulator_is_the_sum_of_normalised_gram_matrices():
    # One batch is the whole training set, so every step's gradient can be recomputed independently of the
    # trainer: a fresh forward/backward of a copy of the model on all samples, before the step.
    config = Config(dataset="synthetic", hidden=(32, 24), device="cpu", batch_size=64, lr=0.05)
    full = load_dataset("synthetic", None, config.seed, torch.device("cpu"))
    data = Dataset("synthetic", full.train_x[:64], full.train_y[:64], full.test_x, full.test_y, 10, "test")
    trainer = Trainer(config, data, torch.device("cpu"))
    n = 40  # more than one float32 partial sum's worth of steps
    expected = torch.zeros(32, 32, dtype=torch.float64)
    for _ in range(n):
        model = copy.deepcopy(trainer.model)
        F.cross_entropy(model(data.train_x), data.train_y).backward()
        g = studied_weight(model, config.studied_layer).grad.double()
        unit = g / g.norm()
        expected += unit.T @ unit
        trainer.train_step(capture=True)
    before = trainer.grad_sum.clone()
    trainer.train_step(capture=False)  # not captured
    got = trainer.grad_sum
    assert trainer.grad_steps == n
    assert got.dtype == torch.float64 and got.shape == (32, 32)
    assert torch.equal(got, before)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    # trace(S) = sum of |unit g|^2 = number of captured steps
    assert torch.diagonal(got).sum().item() == pytest.approx(n, rel=1e-5)


def test_regulariser_raises_clusterability():
    results = {}
    for lam in (0.0, 20.0):
        trainer = _trainer(lr=0.05)
        for _ in range(150):
            trainer.train_step()
        rows, cols = cocluster(trainer.weight.detach().double().numpy(), 2, seed=0)
        mask = block_mask(rows, cols)
        before = trainer.clusterability_of(mask)
        for _ in range(150):
            trainer.train_step(mask, lam)
        results[lam] = (before, trainer.clusterability_of(mask))
    (before0, after0), (before20, after20) = results[0.0], results[20.0]
    assert before0 == pytest.approx(before20)  # same start
    assert after20 > after0 + 0.1
    assert after20 > before20 + 0.1


def test_inputs_that_never_fired_join_the_cluster_their_weight_goes_to():
    # S has no gradient for input units 2 and 5 (never fired), but W still sends their weight somewhere.
    rng = np.random.default_rng(0)
    s = np.zeros((8, 8))
    s[np.ix_([0, 1, 3], [0, 1, 3])] = 1.0
    s[np.ix_([4, 6, 7], [4, 6, 7])] = 1.0
    s += 0.01 * rng.random((8, 8)) * (s > 0)
    weight = np.full((6, 8), 0.01)
    weight[np.ix_([0, 1, 2], [0, 1, 3])] = 1.0  # outputs 0-2 read inputs 0, 1, 3
    weight[np.ix_([3, 4, 5], [4, 6, 7])] = 1.0  # outputs 3-5 read inputs 4, 6, 7
    weight[3:, 2] = 1.0  # dead input 2 feeds outputs 3-5
    weight[:3, 5] = 1.0  # dead input 5 feeds outputs 0-2
    rows, cols = gradient_clusters(s, weight, 2)
    assert rows[0] == rows[1] == rows[2] != rows[3] == rows[4] == rows[5]
    assert cols[2] == rows[3] and cols[5] == rows[0]
