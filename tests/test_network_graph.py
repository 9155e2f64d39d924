"""Whole-network clustering (`--layer all`): planted blocks are found and measured as such, random networks sit in
their null, dead units are placed, the regulariser raises every layer's block mass, and `run --json` reports it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import binom

from engine import Engine
from engine.config import Config
from engine.errors import ConfigError
from engine.measures import measure_graph
from engine.metrics import clusterability
from engine.network_graph import cluster_network
from engine.regulariser import network_terms
from engine.significance import network_significance
from tests.conftest import MNIST_DIR, needs_mnist, run_json, small_config

SIZES = (12, 10, 8, 6)  # inputs, two hidden layers, outputs


def planted_network(rng: np.random.Generator, k: int, noise: float = 0.0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Layers whose units fall into k planted clusters (each group's units permuted): the weights between units of
    one cluster are 1 + U(0, 1), the others `noise` · N(0, 1). Returns the layers (out x in) and labels per group."""
    labels = [rng.permutation(np.arange(size) % k) for size in SIZES]
    layers = []
    for cols, rows in zip(labels[:-1], labels[1:], strict=True):
        same = rows[:, None] == cols[None, :]
        layers.append(np.where(same, 1 + rng.random(same.shape), noise * rng.standard_normal(same.shape)))
    return layers, labels


def same_partition(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    """Whether two labellings of the groups are one partition up to the clusters' names."""
    x, y = np.concatenate(a), np.concatenate(b)
    return len(set(zip(x.tolist(), y.tolist(), strict=True))) == len(set(x.tolist())) == len(set(y.tolist()))


@pytest.mark.parametrize("k", [2, 3])
def test_block_diagonal_layers_give_the_planted_partition_and_clusterability_one(k):
    rng = np.random.default_rng(k)
    layers, planted = planted_network(rng, k)
    found = [g[0] for g in cluster_network([w[None] for w in layers], k, seed=0)]
    assert same_partition(found, planted)
    measures = measure_graph([w[None] for w in layers], [g[None] for g in found], k)
    assert measures["clusterability"][0] == pytest.approx(1.0)
    assert measures["ncut"][0] == pytest.approx(0.0, abs=1e-12)
    result = network_significance(layers, found, k, samples=19, seed=0)
    assert result.test == "recluster" and result.method == "permute"
    assert all(m.p == pytest.approx(1 / 20) for m in result.measures.values())  # at the floor: no shuffle is as modular


def test_equal_uniform_blocks_give_newman_q_of_one_minus_one_over_k():
    k = 2
    labels = [np.arange(size) % k for size in (4, 6, 4)]
    pairs = zip(labels[:-1], labels[1:], strict=True)
    layers = [(rows[:, None] == cols[None, :]).astype(float) for cols, rows in pairs]
    measures = measure_graph([w[None] for w in layers], [g[None] for g in labels], k)
    assert measures["newman_q"][0] == pytest.approx(1 - 1 / k)


def test_one_layer_as_a_graph_is_the_single_layer_measure():
    from engine.measures import measure_all

    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 7, 5))
    rows, cols = rng.integers(0, 3, (3, 7)), rng.integers(0, 3, (3, 5))
    one, graph = measure_all(w, rows, cols, 3), measure_graph([w], [cols, rows], 3)
    assert all(np.array_equal(one[name], graph[name]) for name in one)


def test_random_networks_are_null_compatible():
    """iid weights carry no modularity: the layer null rejects no more often than a valid test at 0.05 would."""
    rng = np.random.default_rng(7)
    trials, rejections = 40, 0
    for t in range(trials):
        layers = [rng.standard_normal((out, inp)) for inp, out in zip(SIZES[:-1], SIZES[1:], strict=True)]
        found = [g[0] for g in cluster_network([w[None] for w in layers], 2, seed=t)]
        result = network_significance(layers, found, 2, samples=19, seed=t)
        rejections += result.measures["clusterability"].p <= 0.05
    assert rejections <= binom.ppf(0.999, trials, 0.05), rejections


def test_a_speck_of_units_joined_only_to_each_other_does_not_take_a_cluster():
    """A pruned network leaves specks: here input 0 and hidden unit 0 of the first layer, joined only to each other.
    Each component has an eigenvalue of 1, so embedded, the speck would be a cluster of its own."""
    rng = np.random.default_rng(5)
    layers, planted = planted_network(rng, 2, noise=0.05)
    layers[0][0, :] = 0.0
    layers[0][:, 0] = 0.0
    layers[0][0, 0] = 1.0
    layers[1][:, 0] = 0.0
    found = [g[0] for g in cluster_network([w[None] for w in layers], 2, seed=0)]
    assert found[0][0] == found[1][0]  # placed whole
    rest = [g[1:] if i < 2 else g for i, g in enumerate(found)]
    assert same_partition(rest, [g[1:] if i < 2 else g for i, g in enumerate(planted)])


@pytest.mark.parametrize("method", ["permute", "rows", "layer_nonzero"])
def test_dead_units_are_placed_and_every_null_runs(method):
    rng = np.random.default_rng(3)
    layers, planted = planted_network(rng, 2, noise=0.1)
    layers[0][2] = 0.0  # hidden unit 2 of the first layer receives nothing ...
    layers[1][:, 2] = 0.0  # ... and sends nothing: a dead unit
    layers[0][:, 5] = 0.0  # input 5 is never used
    found = [g[0] for g in cluster_network([w[None] for w in layers], 2, seed=0)]
    assert [len(g) for g in found] == list(SIZES) and all(set(g.tolist()) <= {0, 1} for g in found)
    result = network_significance(layers, found, 2, method=method, samples=19, seed=0)
    assert 0 < result.measures["clusterability"].p <= 1


def test_layer_nonzero_keeps_each_layers_zeros_where_they_are():
    from engine.significance import _shuffle_orders

    rng = np.random.default_rng(0)
    weight = np.where(rng.random((6, 5)) < 0.7, 0.0, rng.standard_normal((6, 5)))
    shuffled = weight.ravel()[_shuffle_orders(weight, "layer_nonzero", 8, rng)].reshape(8, 6, 5)
    assert np.array_equal(shuffled != 0, np.broadcast_to(weight != 0, shuffled.shape))
    assert np.allclose(np.sort(shuffled.reshape(8, -1), axis=1), np.sort(weight.ravel()))
    assert not np.array_equal(shuffled[0], weight)


def test_the_network_regulariser_is_the_gradient_of_the_whole_networks_clusterability():
    torch.manual_seed(0)
    weights = [torch.randn(5, 4, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)]
    masks = [torch.rand(5, 4) < 0.5, torch.rand(3, 5) < 0.5]
    leaves = [w.clone().requires_grad_() for w in weights]
    grads = torch.autograd.grad(clusterability(leaves, masks), leaves)
    terms = network_terms(weights, masks, torch.tensor([[2.5]], dtype=torch.float64))
    for term, grad in zip(terms, grads, strict=True):
        torch.testing.assert_close(term, 2.5 * grad)


def test_layer_all_runs_and_finetuning_raises_every_layers_block_mass(sessions):
    engine = Engine.create(sessions / "net", small_config(layer="all", lam=50.0, null_samples=19))
    engine.plan_default()
    assert engine.wait(120)
    snap = engine.snapshot()
    engine.close()
    cluster, finetune = snap.history[1], snap.history[2]
    assert [h["phase"] for h in snap.history] == ["pretrain", "cluster", "finetune"]
    assert cluster["significance"]["test"] == "recluster"
    assert set(cluster["significance"]["measures"]) == {"clusterability", "ncut", "newman_q"}
    assert finetune["clusterability"] > cluster["clusterability"] + 0.1
    assert finetune["significance"]["measures"]["clusterability"]["p"] == pytest.approx(1 / 20)


def test_run_json_reports_the_whole_networks_clusters(sessions):
    result = run_json("run", "--dataset", "synthetic", "--hidden", "16,16", "--steps", "32", "--finetune-epochs",
                      "0", "--layer", "all", "--k", "3", "--null-samples", "19", "--device", "cpu",
                      env_sessions=sessions)
    assert result["config"]["layer"] == "all"
    assert [sum(g) for g in result["clusters"]["group_sizes"]] == [784, 16, 16, 10]
    assert result["clusters"]["algorithm"] == "spectral-network"
    assert result["significance"]["measures"]["clusterability"]["observed"] == pytest.approx(result["clusterability"])
    assert sum(result["clusters"]["shares"]) == pytest.approx(result["clusterability"])


def test_layer_flags_are_checked():
    assert Config(layer="2").layer == 2  # the text of a flag or a UI field
    with pytest.raises(ConfigError, match="--layer all clusters the network's weights only"):
        Config(layer="all", cluster_on="gradients")
    with pytest.raises(ConfigError, match="or be 'all'"):
        Config(layer="every")


@pytest.mark.slow
@needs_mnist
def test_layer_all_on_mnist_finds_clusters_with_their_layer_null(sessions):
    result = run_json("run", "--dataset", "mnist", "--data-dir", str(MNIST_DIR), "--steps", "300",
                      "--finetune-epochs", "0", "--layer", "all", "--k", "4", "--null-samples", "19",
                      "--device", "cpu", env_sessions=sessions, timeout=600)
    assert [sum(g) for g in result["clusters"]["group_sizes"]] == [784, 128, 128, 10]
    significance = result["significance"]
    assert significance["samples"] == 19 and significance["test"] == "recluster"
    assert 0 <= result["clusterability"] <= 1 and significance["measures"]["ncut"]["null_mean"] > 0
