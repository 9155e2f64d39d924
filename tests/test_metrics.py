"""Clusterability and chance: hand-computed values, random matrices near chance, an exact gradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.clustering import cocluster
from engine.metrics import block_mask, chance_level, cluster_shares, clusterability


def test_hand_computed_clusterability_and_chance():
    # rows in clusters [0, 0, 1], columns in [0, 1]: blocks are rows {0,1} x col {0} and row {2} x col {1}
    weight = torch.tensor([[1.0, 2.0], [3.0, 0.0], [1.0, 1.0]])
    rows, cols = [0, 0, 1], [0, 1]
    mask = block_mask(rows, cols)
    assert mask.tolist() == [[True, False], [True, False], [False, True]]
    # inside: 1 + 9 + 1 = 11; total: 1 + 4 + 9 + 0 + 1 + 1 = 16
    assert clusterability(weight, mask).item() == pytest.approx(11 / 16)
    # chance: (|R0||C0| + |R1||C1|) / (3 * 2) = (2*1 + 1*1) / 6
    assert chance_level(rows, cols, 2) == pytest.approx(3 / 6)
    shares = cluster_shares(weight, rows, cols, 2)
    assert shares == pytest.approx([10 / 16, 1 / 16])
    assert sum(shares) == pytest.approx(11 / 16)


def test_chance_counts_an_empty_cluster_as_nothing():
    assert chance_level([0, 0, 0, 0], [0, 1, 1, 1], 3) == pytest.approx(4 / 16)


@pytest.mark.parametrize("k", [2, 4])
def test_random_matrix_is_near_chance(k):
    rng = np.random.default_rng(k)
    matrix = rng.standard_normal((128, 128))
    rows, cols = cocluster(matrix, k, seed=0)
    c = clusterability(torch.as_tensor(matrix), block_mask(rows, cols)).item()
    chance = chance_level(rows, cols, k)
    # Co-clustering finds only the small excess that any random matrix has, far from a planted block's ~1.
    assert chance - 0.02 < c < chance + 0.1, (c, chance)


def test_gradient_matches_analytic_form_and_finite_differences():
    torch.manual_seed(0)
    weight = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    mask = block_mask([0, 1, 1, 2, 0, 2], [2, 0, 1, 1, 0])
    c = clusterability(weight, mask)
    (grad,) = torch.autograd.grad(c, weight)
    w = weight.detach()
    total = w.square().sum()
    # d/dW (sum_M W^2 / sum W^2) = 2 W (M - c) / sum W^2
    analytic = 2 * w * (mask.double() - c.detach()) / total
    torch.testing.assert_close(grad, analytic)
    assert torch.autograd.gradcheck(lambda x: clusterability(x, mask), (weight,))
