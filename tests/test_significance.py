"""The shuffle null: planted blocks are significant, random matrices are not, the same seed gives the same p."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

from engine import significance as sig
from engine.clustering import cocluster
from engine.config import Config
from engine.data import load_dataset
from engine.errors import ConfigError
from engine.metrics import clusterability_batch
from engine.significance import Significance, significance
from engine.trainer import Trainer
from tests.conftest import MNIST_DIR, needs_mnist
from tests.test_clustering import planted

KEYS = ["method", "samples", "null_mean", "null_std", "z", "p_value", "ncut", "ncut_null_mean", "ncut_p_value"]


def clustered(matrix: np.ndarray, k: int, seed: int = 0):
    result = cocluster(matrix, k, seed)
    return result.rows, result.cols


@pytest.mark.parametrize("method", ["permute", "rows"])
def test_planted_blocks_beat_every_shuffle(method):
    matrix, _, _ = planted((40, 24), (30, 34), noise=0.05, seed=1)
    rows, cols = clustered(matrix, 2)
    result = significance(matrix, rows, cols, 2, method=method, samples=50, seed=0)
    assert clusterability_batch(matrix[None], rows[None], cols[None], 2)[0] > 0.99
    assert result.p_value == pytest.approx(1 / 51) and result.ncut_p_value == pytest.approx(1 / 51)
    assert result.null_mean < 0.7 and result.z > 20
    assert result.ncut < 0.1 < 0.5 < result.ncut_null_mean


def test_random_matrices_give_spread_p_values():
    """Under the null the observed clustering is one more draw of it: p is roughly uniform on (0, 1]."""
    rng = np.random.default_rng(5)
    p_values = []
    for _ in range(20):
        matrix = rng.standard_normal((24, 20))
        p_values.append(significance(matrix, *clustered(matrix, 2), 2, samples=30, seed=1).p_value)
    p = np.array(p_values)
    assert not (p < 0.05).all() and not (p > 0.95).all()
    assert 4 <= (p < 0.5).sum() <= 16, p  # a uniform p puts 10 +- 2.2 of 20 below 0.5


def test_same_seed_same_null_on_1_and_2_threads_and_the_seed_matters():
    rng = np.random.default_rng(2)
    matrix = rng.standard_normal((32, 32))
    rows, cols = clustered(matrix, 3)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with threadpool_limits(limits=threads):
                results.append(significance(matrix, rows, cols, 3, samples=20, seed=7))
    finally:
        torch.set_num_threads(before)
    a = results[0]
    assert results[1] == a
    assert significance(matrix, rows, cols, 3, samples=20, seed=8).null_mean != a.null_mean


def test_a_separate_source_is_shuffled_with_the_weights():
    rng = np.random.default_rng(4)
    weight = rng.standard_normal((20, 16))
    rows, cols = clustered(weight, 2)
    # A source equal to the weights must give exactly the weights' null: the same permutation hits both.
    assert significance(weight, rows, cols, 2, source=weight.copy(), samples=15) == significance(
        weight, rows, cols, 2, samples=15)
    # Blocks planted in the source only: the weights, measured under the source's clusters, are not modular.
    source, _, _ = planted((10, 10), (8, 8), seed=3)
    rows, cols = clustered(source, 2)
    result = significance(weight, rows, cols, 2, source=source, samples=30)
    assert result.p_value > 0.05


def test_shuffles_permute_all_entries_or_within_rows():
    rng = np.random.default_rng(0)
    weight = np.arange(12.0).reshape(3, 4)
    for method in ("permute", "rows"):
        order = sig._shuffle_orders(weight.shape, method, 5, rng)
        assert order.shape == (5, 12)
        for o in order:
            assert sorted(o.tolist()) == list(range(12))  # a permutation of the layer's entries
            shuffled = weight.ravel()[o].reshape(3, 4)
            if method == "rows":
                assert (np.sort(shuffled, axis=1) == weight).all()  # each row keeps its own entries
        assert len({tuple(o) for o in order}) > 1


def test_a_null_without_spread_has_no_z():
    # One shuffle has no spread: z would be infinite, so it is None, and the dict stays valid JSON.
    matrix = np.random.default_rng(3).standard_normal((12, 12))
    result = significance(matrix, *clustered(matrix, 2), 2, samples=1)
    assert result.null_std == 0.0 and result.z is None and result.p_value in (0.5, 1.0)
    assert json.loads(json.dumps(result.to_dict()))["z"] is None


def test_dict_round_trip_has_exactly_the_documented_keys():
    rng = np.random.default_rng(1)
    matrix = rng.standard_normal((16, 16))
    result = significance(matrix, *clustered(matrix, 2), 2, samples=5)
    data = json.loads(json.dumps(result.to_dict()))
    assert list(data) == KEYS
    assert Significance.from_dict(data) == result
    assert data["method"] == "permute" and data["samples"] == 5


def test_off_and_bad_settings():
    matrix = np.random.default_rng(0).standard_normal((8, 8))
    rows, cols = clustered(matrix, 2)
    assert significance(matrix, rows, cols, 2, samples=0) is None
    with pytest.raises(ConfigError, match="--null must be"):
        significance(matrix, rows, cols, 2, method="columns")
    for bad in (-1, 2.5, True):
        with pytest.raises(ConfigError, match="--null-samples"):
            significance(matrix, rows, cols, 2, samples=bad)
    with pytest.raises(ValueError, match="do not fit"):
        significance(matrix, rows[:-1], cols, 2)


def reference_coclustering(matrix: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Dhillon's co-clustering written out independently: a full LAPACK SVD and scikit-learn's KMeans.

    (scikit-learn's own SpectralCoclustering(svd_method="arpack") cannot serve: scipy's svds returns singular values
    in ascending order, so it discards the wrong vector and keeps the trivial one; scikit-learn issue #12863.)
    """
    from sklearn.cluster import KMeans

    a = np.abs(matrix)
    d_r, d_c = np.sqrt(a.sum(axis=1)), np.sqrt(a.sum(axis=0))
    u, _, vt = np.linalg.svd(a / d_r[:, None] / d_c[None, :])
    z = np.vstack([u[:, 1:k] / d_r[:, None], vt[1:k].T / d_c[:, None]])
    labels = KMeans(k, n_init=10, random_state=0).fit(z).labels_
    return labels[: len(a)], labels[len(a):]


@pytest.mark.slow
@needs_mnist
def test_mnist_null_agrees_with_an_independent_implementation():
    """One epoch of MNIST, fc2 at k=2: on the same 40 shuffles the null mean matches a full-SVD + scikit-learn
    KMeans co-clustering to 0.01, and p falls on the same side of 0.05."""
    config = Config(dataset="mnist", data_dir=str(MNIST_DIR), epochs=1, device="cpu")
    data = load_dataset(config.dataset, config.data_dir, config.seed, torch.device("cpu"))
    trainer = Trainer(config, data, torch.device("cpu"))
    for _ in range(trainer.steps_per_epoch):
        trainer.train_step()
    weight = trainer.weight.detach().double().numpy()
    rows, cols = clustered(weight, 2, config.seed)
    ours = significance(weight, rows, cols, 2, samples=40, seed=config.seed)

    reference = []
    for order in sig._shuffle_orders(weight.shape, "permute", 40, np.random.default_rng(config.seed)):
        shuffled = weight.ravel()[order].reshape(weight.shape)
        ref_rows, ref_cols = reference_coclustering(shuffled, 2)
        reference.append(clusterability_batch(shuffled[None], ref_rows[None], ref_cols[None], 2)[0])
    observed = clusterability_batch(weight[None], rows[None], cols[None], 2)[0]
    reference_p = (np.sum(np.array(reference) >= observed) + 1) / 41
    assert ours.null_mean == pytest.approx(np.mean(reference), abs=0.01)
    assert (ours.p_value < 0.05) == (reference_p < 0.05)
