"""`clusterlab calibrate --parts network,pruned`: the whole-network null and `layer_nonzero` keep their false-positive
rate in the band of a valid test where their assumptions hold, a broken null is flagged outside it, and the JSON
adds its keys without renaming any."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine import calibrate, planted, significance
from engine.calibrate import (
    METHODS,
    NETWORKS,
    PRUNED,
    PRUNED_METHODS,
    PRUNED_NETWORKS,
    SOURCES,
    Settings,
    binomial_band,
    exact_size,
    network_rejections,
    rejections,
    table_rows,
)
from engine.cli import main
from engine.measures import MEASURES

# 150 draws per family, 19 shuffles (size exactly 0.05); layers of 24 x 24, networks of 3 layers of 12 units. The
# file's 45 false-positive cells (null x measure x source x family) are tested together at level 1 - 0.05 / 45
# (Bonferroni): 1 to 17 rejections of 150.
SMALL = Settings(trials=150, null_samples=19, rows=24, cols=24, k=2, seed=1, units=12, depth=3)
BAND = binomial_band(SMALL.trials, exact_size(SMALL.null_samples), level=1 - 0.05 / 45)


def inside(counts: dict) -> bool:
    return all(BAND[0] <= n <= BAND[1] for by_method in counts.values() for by_measure in by_method.values()
               for n in by_measure.values())


def test_the_band_of_the_small_cells():
    assert BAND == (1, 17)


def test_the_whole_network_null_is_calibrated_on_iid_networks():
    counts = network_rejections(SMALL, NETWORKS["iid-normal"], 1, METHODS)
    assert set(counts["network"]) == set(METHODS) and inside(counts), counts


def test_the_whole_network_null_has_power_on_planted_clusters():
    counts = network_rejections(SMALL, planted.modular_network(4.0), 2, ("rows",))["network"]["rows"]
    assert min(counts.values()) >= 140, counts


@pytest.mark.parametrize("family", ["iid-normal, 90% random zeros", "iid-normal, 90% magnitude-pruned"])
def test_every_null_is_calibrated_on_pruned_iid_layers(family):
    counts = rejections(SMALL, PRUNED[family], 3, SOURCES, PRUNED_METHODS)
    assert inside(counts), counts


def test_layer_nonzero_is_calibrated_on_a_pruned_iid_network():
    counts = network_rejections(SMALL, PRUNED_NETWORKS["iid-normal, 90% magnitude-pruned"], 4, ("layer_nonzero",))
    assert inside(counts), counts


def test_permute_over_rejects_on_networks_of_unequal_units_and_rows_does_not():
    """Known and shown by `clusterlab calibrate --parts network` (README: calibrate): `permute` spreads each layer's
    rows of unequal scale over the whole layer; `rows` keeps them."""
    counts = network_rejections(SMALL, NETWORKS["row-scaled"], 5, METHODS)["network"]
    assert counts["permute"]["ncut"] > 3 * BAND[1] and all(BAND[0] <= n <= BAND[1] for n in counts["rows"].values())


def test_layer_nonzero_over_rejects_on_gradient_clusters_of_a_pruned_layer_of_unequal_units():
    """Known (README: calibrate): magnitude pruning keeps the large units' weights, a gradient partition follows
    those units, and shuffling the non-zeros over all rows spreads their mass; `rows` keeps it."""
    layers = Settings(trials=150, null_samples=19, rows=64, cols=64, seed=1)  # 24 x 24 at 90% keeps too few weights
    counts = rejections(layers, PRUNED["row-scaled, 90% magnitude-pruned"], 6, ("gradients",), PRUNED_METHODS)
    held = counts["gradients"]
    assert held["layer_nonzero"]["clusterability"] > BAND[1] and held["permute"]["clusterability"] > BAND[1], held
    assert all(BAND[0] <= n <= BAND[1] for n in held["rows"].values()), held
    assert all(BAND[0] <= n <= BAND[1] for n in held["rows_nonzero"].values()), held  # zeros and units kept


def test_rows_nonzero_keeps_the_zeros_and_each_rows_weights():
    rng = np.random.default_rng(3)
    weight = rng.normal(size=(6, 9)) * (rng.random((6, 9)) < 0.4)
    for order in significance._shuffle_orders(weight, "rows_nonzero", 50, rng):
        shuffled = weight.ravel()[order].reshape(weight.shape)
        assert np.array_equal(shuffled == 0, weight == 0)
        assert np.array_equal(np.sort(shuffled, axis=1), np.sort(weight, axis=1))
    moved = significance._shuffle_orders(weight, "rows_nonzero", 50, rng)
    assert len({tuple(o) for o in moved}) > 1  # it shuffles


def test_rows_nonzero_is_calibrated_on_a_pruned_network_of_unequal_units_where_layer_nonzero_is_not():
    counts = network_rejections(SMALL, PRUNED_NETWORKS["row-scaled, 90% magnitude-pruned"], 8,
                                ("layer_nonzero", "rows_nonzero"))["network"]
    assert all(BAND[0] <= n <= BAND[1] for n in counts["rows_nonzero"].values()), counts


def test_on_iid_networks_at_k_2_the_clusters_are_a_cut_between_layers_and_every_shuffle_ties():
    """Each layer shuffled on its own keeps its mass, so a cut between layers measures the same on every shuffle, up
    to rounding: the test cannot tell anything, its p is set by rounding (README: calibrate)."""
    layers = NETWORKS["iid-normal"](np.random.default_rng(7), 48, 3, 2)
    found = calibrate.cluster_network([w[None] for w in layers], 2, 0)
    assert [sorted(set(group[0].tolist())) for group in found] == [[0], [0], [1], [1]]
    result = calibrate.network_significance(layers, [group[0] for group in found], 2, method="rows", samples=19)
    for measure in ("clusterability", "ncut"):
        one = result.measures[measure]
        assert one.null_std < 1e-12 and abs(one.observed - one.null_mean) < 1e-12, one


def held_partition(layers, labels, k, *, method, samples, seed):
    """A broken whole-network null: the clusters found on W held while W is shuffled (no re-clustering)."""
    return significance._test([np.asarray(w, dtype=np.float64) for w in layers], [np.asarray(g) for g in labels], k,
                              None, method, samples, seed, "weights")


def test_a_null_that_holds_clusters_made_from_w_is_flagged(monkeypatch):
    monkeypatch.setattr(calibrate, "network_significance", held_partition)
    monkeypatch.setattr(calibrate, "NETWORKS", {"iid-normal": NETWORKS["iid-normal"]})
    monkeypatch.setattr(calibrate, "NETWORK_STRENGTHS", ())
    result = calibrate.calibrate(Settings(trials=40, null_samples=19, units=12), parts=("network",))
    cells = result["sources"]["network"]["false_positive_rate"]["iid-normal"]["permute"]
    # Not every trial: clusters that follow the layers keep their measures under shuffles within each layer.
    assert cells["ncut"]["rejections"] > result["band"][1] and not cells["ncut"]["within_band"], cells
    assert ["network", "iid-normal", "permute"] in [row[:3] for row in table_rows(result) if row[4].endswith(" *")]


def test_a_null_that_does_not_shuffle_is_flagged(monkeypatch):
    """Every shuffle the layer itself: p is 1, no rejection at all, below the band of a valid test."""
    monkeypatch.setattr(significance, "_shuffle_orders",
                        lambda weight, method, n, rng: np.broadcast_to(np.arange(weight.size), (n, weight.size)))
    monkeypatch.setattr(calibrate, "NETWORKS", {"iid-normal": NETWORKS["iid-normal"]})
    monkeypatch.setattr(calibrate, "NETWORK_STRENGTHS", ())
    result = calibrate.calibrate(Settings(trials=100, null_samples=19, units=12), parts=("network",))
    assert result["band"] == [1, 10]
    cells = result["sources"]["network"]["false_positive_rate"]["iid-normal"]
    assert all(c["rejections"] == 0 and not c["within_band"] for by in cells.values() for c in by.values()), cells


def test_global_magnitude_pruning_zeroes_the_smallest_over_all_layers():
    rng = np.random.default_rng(0)
    small, large = 0.1 * rng.standard_normal((8, 8)), rng.standard_normal((8, 8))
    pruned = planted.prune([small, large], 0.5, "magnitude", rng)
    assert sum(int((w == 0).sum()) for w in pruned) == 64
    assert (pruned[0] == 0).sum() > (pruned[1] == 0).sum()  # the small layer loses more
    kept = np.concatenate([np.abs(w[w != 0]) for w in pruned])
    assert kept.min() >= np.sort(np.abs(np.concatenate([small.ravel(), large.ravel()])))[63]
    shuffled = planted.prune([small, large], 0.5, "random", rng)
    assert sum(int((w == 0).sum()) for w in shuffled) == 64
    assert (planted.prune([small], 0.0, "random", rng)[0] == small).all()


def test_adding_parts_leaves_the_layer_parts_draws_as_they_were():
    jobs = calibrate.jobs()
    assert [job.part for job in jobs[:8]] == ["layer"] * 8 and all(job.part != "layer" for job in jobs[8:])


def test_the_command_adds_network_and_pruned_rows(capsys):
    assert main(["calibrate", "--json", "--trials", "2", "--null-samples", "19", "--parts", "network,pruned"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["parts"] == ["network", "pruned"] and set(result["sources"]) == {"network", "weights", "gradients"}
    network = result["sources"]["network"]
    assert network["null_test"] == "recluster"
    assert set(network["false_positive_rate"]) == set(NETWORKS) | set(PRUNED_NETWORKS)
    assert set(network["false_positive_rate"]["iid-normal"]) == set(METHODS)
    assert set(network["false_positive_rate"]["iid-normal, 90% random zeros"]) == set(PRUNED_METHODS)
    assert set(network["power"]) == {"planted 1", "planted 2", "planted 4"}
    weights = result["sources"]["weights"]["false_positive_rate"]
    assert set(weights) == set(PRUNED) and set(weights["iid-normal, 50% random zeros"]) == set(PRUNED_METHODS)
    one = weights["iid-normal, 50% random zeros"]["layer_nonzero"]
    assert set(one) == {m.name for m in MEASURES} and one["ncut"]["trials"] == 2
    assert result["settings"]["units"] == 48 and result["settings"]["depth"] == 3


def test_unknown_parts_are_one_line_and_code_2(capsys):
    assert main(["calibrate", "--parts", "layer,whole"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--parts" in err
    assert main(["calibrate", "--k", "9"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
