"""Cluster ablation: a hand-built two-pathway network, a slow per-cluster recomputation, the specialisation formula."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from engine import ablation as ablation_module
from engine.ablation import ablate, specialisation
from engine.model import build_mlp


def h(p: float) -> float:
    """Binary entropy in nats."""
    return 0.0 if p in (0.0, 1.0) else -p * math.log(p) - (1 - p) * math.log(1 - p)


def two_pathway(n_per_class: int = 1000, seed: int = 0):
    """Weights and data of an 11-128-128-10 network whose fc2 output units 0-63 feed only classes 0-4 and units
    64-127 only classes 5-9, and a noisy dataset it classifies perfectly.

    Inputs: a class indicator (10 features, Gaussian noise 0.1) and a constant 1. fc1: 120 detectors (unit j fires
    for class j % 10) and 8 constant units. fc2: output unit u reads the 12 detectors of its class (u % 5 in the
    first pathway, 5 + u % 5 in the second) and, weakly, the constant units, so every unit is a little active for
    every input. fc3: each class reads only its own pathway's units of that class. Silencing a pathway leaves its
    classes' logits at 0 while the other pathway's are positive: those classes are lost, the others untouched.
    """
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(10).repeat_interleave(n_per_class)
    x = torch.cat([torch.nn.functional.one_hot(y, 10).float() + 0.1 * torch.randn(len(y), 10, generator=gen),
                   torch.ones(len(y), 1)], dim=1)
    fc1 = torch.zeros(128, 11)
    fc1[torch.arange(120), torch.arange(120) % 10] = 1.0
    fc1[120:, 10] = 1.0
    unit_class = torch.cat([torch.arange(64) % 5, 5 + torch.arange(64) % 5])  # the class each fc2 output serves
    fc2 = (unit_class[:, None] == (torch.arange(128) % 10)[None, :]).float()
    fc2[:, 120:] = 0.01
    fc3 = (torch.arange(10)[:, None] == unit_class[None, :]).float()
    return [fc1, fc2, fc3], x, y


def slow_drops(weights, studied, row_labels, k, x, y, n_classes):
    """Independent recomputation: for each cluster zero those rows of fc{studied}, run nn.Sequential, per class."""
    model = build_mlp(weights[0].shape[1], tuple(w.shape[0] for w in weights[:-1]), weights[-1].shape[0], seed=0)
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]

    def per_class(ws):
        with torch.no_grad():
            for layer, w in zip(linears, ws, strict=True):
                layer.weight.copy_(w)
            correct = (model(x).argmax(1) == y).double()
        return np.array([correct[y == c].mean().item() for c in range(n_classes)])

    baseline = per_class(weights)
    rows = torch.as_tensor(row_labels)
    drops = []
    for i in range(k):
        ws = [w.clone() for w in weights]
        ws[studied - 1][rows == i] = 0.0
        drops.append(baseline - per_class(ws))
    return baseline, np.array(drops)


def test_two_pathway_network_gives_blocks_with_the_known_specialisation_and_the_smallest_p():
    weights, x, y = two_pathway()
    labels = [0] * 64 + [1] * 64
    result = ablate(weights, 2, labels, 2, x, y, 10, null_samples=100, seed=0)

    assert result.baseline == (1.0,) * 10
    expected = np.array([[1.0] * 5 + [0.0] * 5, [0.0] * 5 + [1.0] * 5])
    np.testing.assert_array_equal(np.array(result.drop), expected)
    # whole classes lost, the others untouched: the class tells exactly which images are lost
    assert result.specialisation == pytest.approx((1.0, 1.0), abs=1e-12)
    # random halves hit both pathways: some images of a few classes lost, no class carried
    assert result.p_value == (1 / 101, 1 / 101)
    assert max(result.null_mean) < 0.3 and result.null_sizes == (64, 64)


def test_a_cluster_of_one_class_is_fully_specialised():
    weights, x, y = two_pathway()
    labels = [1] * 128
    labels[0:64:5] = [0] * len(range(0, 64, 5))  # every unit serving class 0
    result = ablate(weights, 2, labels, 2, x, y, 10, null_samples=20)
    assert result.drop[0] == (1.0,) + (0.0,) * 9
    assert result.specialisation[0] == pytest.approx(1.0, abs=1e-12)
    assert result.p_value[0] == 1 / 21


@pytest.mark.parametrize(("hidden", "studied", "k"), [((32, 24), 2, 3), ((32, 24, 16), 2, 4), ((32, 24, 16), 3, 2)])
def test_drops_equal_a_slow_per_cluster_recomputation(hidden, studied, k):
    weights = [w.weight.detach().clone() for w in build_mlp(20, hidden, 5, seed=3) if hasattr(w, "weight")]
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(600, 20, generator=gen)
    y = torch.randint(0, 5, (600,), generator=gen)
    labels = torch.randint(0, k, (hidden[studied - 1],), generator=gen).tolist()

    result = ablate(weights, studied, labels, k, x, y, 5, null_samples=7, seed=2)
    baseline, drops = slow_drops(weights, studied, labels, k, x, y, 5)

    assert result.classes == (0, 1, 2, 3, 4)
    np.testing.assert_allclose(result.baseline, baseline, atol=1e-6)
    np.testing.assert_allclose(result.drop, drops, atol=1e-6)
    assert np.abs(drops).max() > 0  # the check compares something
    counts = torch.bincount(y, minlength=5).double()
    expected = specialisation(torch.as_tensor(drops), torch.as_tensor(baseline), counts)
    np.testing.assert_allclose(result.specialisation, expected.numpy(), atol=1e-9)


def test_chunking_and_the_seed_change_nothing_but_the_null_draw(monkeypatch):
    weights = [w.weight.detach().clone() for w in build_mlp(12, (16, 16), 4, seed=0) if hasattr(w, "weight")]
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(300, 12, generator=gen), torch.randint(0, 4, (300,), generator=gen)
    labels = [0] * 5 + [1] * 11
    whole = ablate(weights, 2, labels, 2, x, y, 4, null_samples=30, seed=5)
    monkeypatch.setattr(ablation_module, "_CHUNK_BYTES", 300 * 16 * 4 * 3)  # three masks per chunk
    chunked = ablate(weights, 2, labels, 2, x, y, 4, null_samples=30, seed=5)
    assert chunked.to_dict() == whole.to_dict()
    other_seed = ablate(weights, 2, labels, 2, x, y, 4, null_samples=30, seed=6)
    assert other_seed.drop == whole.drop and other_seed.null_mean != whole.null_mean


def test_random_unit_sets_have_the_clusters_sizes_and_cover_every_unit():
    masks = ablation_module._random_masks(torch.tensor([3, 0, 9]), 12, 200, seed=0)
    silenced = (masks == 0).reshape(3, 200, 12)
    assert silenced.sum(-1).unique(dim=1).tolist() == [[3], [0], [9]]
    frequency = silenced[0].float().mean(0)  # each unit is in a random set of 3 of 12 a quarter of the time
    assert frequency.min() > 0.12 and frequency.max() < 0.38


def test_empty_cluster_and_no_null():
    weights, x, y = two_pathway(n_per_class=10)
    result = ablate(weights, 2, [0] * 128, 2, x, y, 10, null_samples=0)
    assert result.drop[1] == (0.0,) * 10 and result.specialisation[1] == 0.0
    assert result.p_value == (None, None)
    data = result.to_dict()
    assert set(data) == {"units", "classes", "baseline", "drop", "specialisation", "p_value", "null"}
    assert data["null"] == {"samples": 0, "seed": 0, "sizes": [128, 0], "mean": [None, None], "std": [None, None],
                            "drop_mean": None}
    assert "fc2 output units" in data["units"]
    assert json.loads(json.dumps(data)) == data  # plain JSON values only


def test_a_dead_layer_gives_no_drop_and_no_specialisation():
    weights, x, y = two_pathway(n_per_class=10)
    weights[1] = torch.zeros_like(weights[1])  # every unit of the studied layer dead: all logits 0, class 0 wins
    result = ablate(weights, 2, [0] * 64 + [1] * 64, 2, x, y, 10, null_samples=10)
    assert result.baseline == (1.0,) + (0.0,) * 9
    assert result.drop == ((0.0,) * 10,) * 2 and result.specialisation == (0.0, 0.0)
    assert result.p_value == (1.0, 1.0)  # every random set is as (un)specialised


def test_specialisation_is_the_uncertainty_coefficient_of_loss_given_class():
    drops = torch.tensor([
        [0.9, 0, 0, 0],            # one class lost outright (baseline 0.9): 1
        [0.9, 0.8, 0.9, 0.8],      # everything lost: nothing class-specific, 0
        [0.45, 0.4, 0.45, 0.4],    # every class loses half: 0
        [0.45, 0.4, 0, -0.3],      # half of two classes (a rise counts as no loss): hand-computed below
        [0.0, -0.1, 0, 0],         # nothing lost: 0
    ], dtype=torch.float64)
    baseline = torch.tensor([0.9, 0.8, 0.9, 0.8], dtype=torch.float64)
    counts = torch.tensor([100.0, 100.0, 100.0, 100.0], dtype=torch.float64)
    # pi = (0.9, 0.8, 0.9, 0.8) / 3.4 of the correct images; half of classes 0 and 1 lost
    pi = np.array([0.9, 0.8, 0.9, 0.8]) / 3.4
    half_of_two = 1 - (pi[0] + pi[1]) * h(0.5) / h(0.5 * (pi[0] + pi[1]))
    np.testing.assert_allclose(specialisation(drops, baseline, counts).numpy(), [1.0, 0.0, 0.0, half_of_two, 0.0],
                               atol=1e-12)


def test_specialisation_weights_classes_by_their_correct_images():
    drops = torch.tensor([[0.5, 0.0]], dtype=torch.float64)
    baseline = torch.tensor([1.0, 1.0], dtype=torch.float64)
    counts = torch.tensor([300.0, 100.0], dtype=torch.float64)
    expected = 1 - 0.75 * h(0.5) / h(0.375)  # 150 of 400 correct images lost, all from class 0
    assert specialisation(drops, baseline, counts).item() == pytest.approx(expected, abs=1e-12)
