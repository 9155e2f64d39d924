"""Cluster ablation: a hand-built two-pathway network, a slow per-cluster recomputation, the specialisation formula
computed by hand image by image, the lesion statistics against their null."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from engine import ablation as ablation_module
from engine.ablation import ablate, against_null, selectivity, specialisation
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

    def correct(ws):
        with torch.no_grad():
            for layer, w in zip(linears, ws, strict=True):
                layer.weight.copy_(w)
            return (model(x).argmax(1) == y).numpy()

    def per_class(values):
        return np.array([values[y.numpy() == c].sum() for c in range(n_classes)], dtype=np.float64)

    intact = correct(weights)
    baseline = per_class(intact) / per_class(np.ones_like(intact))
    rows = torch.as_tensor(row_labels)
    drops, lost = [], []
    for i in range(k):
        ws = [w.clone() for w in weights]
        ws[studied - 1][rows == i] = 0.0
        silenced = correct(ws)
        drops.append(baseline - per_class(silenced) / per_class(np.ones_like(intact)))
        lost.append(per_class(intact & ~silenced))
    return baseline, np.array(drops), np.array(lost), per_class(intact)


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
    baseline, drops, lost, right = slow_drops(weights, studied, labels, k, x, y, 5)

    assert result.classes == (0, 1, 2, 3, 4)
    np.testing.assert_allclose(result.baseline, baseline, atol=1e-6)
    np.testing.assert_allclose(result.drop, drops, atol=1e-6)
    assert np.abs(drops).max() > 0  # the check compares something
    expected = specialisation(torch.as_tensor(lost), torch.as_tensor(right))
    np.testing.assert_allclose(result.specialisation, expected.numpy(), atol=1e-9)
    importance = (drops * np.bincount(y.numpy(), minlength=5)).sum(1) / len(y)  # net drop of overall accuracy
    np.testing.assert_allclose(result.lesion["importance"].value, importance, atol=1e-9)


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
    assert set(data) == {"units", "classes", "baseline", "drop", "specialisation", "p_value", "null", "lesion"}
    # silencing all 128 units leaves every logit 0: class 0 wins, the other nine classes are lost
    assert data["lesion"]["importance"] == {"value": [0.9, 0.0], "percentile": [None, None],
                                            "p_value": [None, None], "null_mean": [None, None], "fisher_p": None}
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
    right = torch.tensor([90.0, 80.0, 90.0, 80.0], dtype=torch.float64)  # images each class gets right intact
    lost = torch.tensor([
        [90, 0, 0, 0],      # one class lost outright: 1
        [90, 80, 90, 80],   # everything lost: nothing class-specific, 0
        [45, 40, 45, 40],   # every class loses half: 0
        [45, 40, 0, 0],     # half of two classes: hand-computed below
        [0, 0, 0, 0],       # nothing lost: 0
    ], dtype=torch.float64)
    pi = np.array([0.9, 0.8, 0.9, 0.8]) / 3.4  # shares of the correct images
    half_of_two = 1 - (pi[0] + pi[1]) * h(0.5) / h(0.5 * (pi[0] + pi[1]))
    np.testing.assert_allclose(specialisation(lost, right).numpy(), [1.0, 0.0, 0.0, half_of_two, 0.0], atol=1e-12)


def test_specialisation_counts_lost_images_not_net_drops_by_hand():
    """Six images, two classes, computed image by image as README defines U. Intact: images 0-2 (class 0) and
    3-4 (class 1) right, image 5 (class 1) wrong. Silenced: 0 and 1 lost, 3 lost, 5 now right. Lost among the 5
    right images: class 0 loses 2 of 3, class 1 loses 1 of 2, so H(lost) = h(3/5), H(lost | class) =
    3/5 h(2/3) + 2/5 h(1/2). (Class 1's net drop is 0: a net-drop U would say only class 0 lost anything.)"""
    fc3 = torch.tensor([[1.0, 0, 1, 0, 0, 0], [0, 1, 0, 1, 0, 0]])  # logits: h0 + h2 for class 0, h1 + h3 for 1
    weights = [torch.eye(6), torch.eye(6), fc3]
    x = torch.tensor([[2.0, 0, 0, 1, 0, 0],   # class 0: right (2 > 1); unit 0 silenced, 0 < 1: lost
                      [2.0, 0, 0, 1, 0, 0],   # the same
                      [0.0, 0, 2, 1, 0, 0],   # class 0: right either way
                      [0.0, 2, 1, 0, 0, 0],   # class 1: right (2 > 1); unit 1 silenced, 0 < 1: lost
                      [0.0, 0, 1, 2, 0, 0],   # class 1: right either way
                      [2.0, 0, 0, 1, 0, 0]])  # class 1: wrong (2 > 1 for class 0); unit 0 silenced: right
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    labels = [0, 0, 1, 1, 1, 1]  # cluster 0: units 0 and 1
    result = ablate(weights, 2, labels, 2, x, y, 2, null_samples=0)
    assert result.drop[0] == pytest.approx((2 / 3, 0.0))
    expected = 1 - (3 / 5 * h(2 / 3) + 2 / 5 * h(1 / 2)) / h(3 / 5)
    assert result.specialisation[0] == pytest.approx(expected, abs=1e-12)


def test_selectivity_of_a_lesion_is_the_class_selectivity_index():
    drops = torch.tensor([[0.6, 0.2, 0.2, -0.4], [0.3, 0.3, 0.3, 0.3], [0.0, 0.0, 0.0, 0.0], [0.5, 0, 0, 0]],
                         dtype=torch.float64)
    # top 0.6, the rest (0.2 + 0.2 + 0) / 3: (0.6 - 0.4/3) / (0.6 + 0.4/3) = 7/11
    np.testing.assert_allclose(selectivity(drops).numpy(), [7 / 11, 0.0, 0.0, 1.0], atol=1e-12)


def test_lesion_statistics_have_percentiles_p_values_and_fishers_combination():
    observed = torch.tensor([0.9, 0.2], dtype=torch.float64)
    null = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)
    lesion = against_null(observed, null)
    assert lesion.percentile == (100.0, 25.0)  # 0.2 ties with one random set, which counts against it
    assert lesion.p_value == (1 / 5, 4 / 5)
    x = -2 * (math.log(1 / 5) + math.log(4 / 5))  # chi-square with 4 dof: sf = exp(-x/2) (1 + x/2)
    assert lesion.fisher_p == pytest.approx(math.exp(-x / 2) * (1 + x / 2), rel=1e-9)


def test_the_pathways_are_important_and_selective_beyond_random_sets():
    weights, x, y = two_pathway()
    result = ablate(weights, 2, [0] * 64 + [1] * 64, 2, x, y, 10, null_samples=100, seed=0)
    importance, select = result.lesion["importance"], result.lesion["selectivity"]
    assert importance.value == pytest.approx((0.5, 0.5)) and importance.p_value == (1 / 101, 1 / 101)
    assert select.value == pytest.approx((5 / 13, 5 / 13))  # five classes lost whole: (1 - 4/9) / (1 + 4/9)
    assert importance.percentile == (100.0, 100.0)
    x2 = 4 * math.log(101)
    assert importance.fisher_p == pytest.approx(math.exp(-x2 / 2) * (1 + x2 / 2), rel=1e-9)
    assert set(result.to_dict()["lesion"]) == {"importance", "selectivity", "specialisation"}
