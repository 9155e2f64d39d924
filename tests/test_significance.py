"""The shuffle null: planted blocks are significant, random matrices are not, the null of each source is calibrated,
the same seed gives the same p, small nulls say they cannot reject, old sessions' nulls still read."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.stats import binom
from threadpoolctl import threadpool_limits

from engine import Engine
from engine import significance as sig
from engine.clustering import cocluster, cocluster_batch
from engine.config import Config
from engine.data import load_dataset
from engine.errors import ConfigError, SessionError
from engine.format import null_text, p_lines
from engine.listing import list_sessions
from engine.measures import (
    ALPHA,
    BY_NAME,
    MEASURES,
    MeasureNull,
    NullResult,
    shuffles_needed,
    significant,
    upgraded,
)
from engine.metrics import chance_level
from engine.session import SESSION_FILE
from engine.significance import significance
from engine.sweep_table import markdown, p_share, table_rows
from engine.trainer import Trainer
from tests.conftest import MNIST_DIR, needs_mnist, small_config
from tests.test_clustering import planted

KEYS = ["method", "test", "source", "samples", "p_floor", "measures"]
MEASURE_KEYS = ["observed", "null_mean", "null_std", "z", "p"]


def clustered(matrix: np.ndarray, k: int, seed: int = 0):
    result = cocluster(matrix, k, seed)
    return result.rows, result.cols


@pytest.mark.parametrize("method", ["permute", "rows"])
def test_planted_blocks_beat_every_shuffle_on_every_measure(method):
    matrix, _, _ = planted((40, 24), (30, 34), noise=0.05, seed=1)
    rows, cols = clustered(matrix, 2)
    result = significance(matrix, rows, cols, 2, method=method, samples=50, seed=0)
    assert result.test == "recluster" and result.source == "weights"
    assert list(result.measures) == [m.name for m in MEASURES]
    assert all(one.p == pytest.approx(1 / 51) for one in result.measures.values())
    assert result.p_value == result.measures["clusterability"].p  # what outside callers read
    c, ncut, q = (result.measures[name] for name in ("clusterability", "ncut", "newman_q"))
    assert c.observed > 0.99 and c.null_mean < 0.7 and c.z > 20
    assert ncut.observed < 0.1 < 0.5 < ncut.null_mean and ncut.z < -20  # lower ncut is more modular
    assert q.observed > 0.45 > 0.1 > q.null_mean


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
    other = significance(matrix, rows, cols, 3, samples=20, seed=8)
    assert other.measures["newman_q"].null_mean != a.measures["newman_q"].null_mean


def test_clusters_from_another_source_hold_the_partition_and_shuffle_only_w():
    """Gradient clusters do not depend on W: the null keeps them and shuffles W, so its clusterability averages
    the partition's uniform-mass chance, and W's own blocks are found only where they line up with the partition."""
    source, _, _ = planted((6, 18), (5, 15), noise=0.05, seed=3)  # unequal blocks, as gradient clusters often are
    rows, cols = clustered(source, 2)
    weight = np.random.default_rng(4).standard_normal((24, 20))
    result = significance(weight, rows, cols, 2, source="gradients", samples=400, seed=0)
    assert result.test == "fixed-partition" and result.source == "gradients"
    assert result.measures["clusterability"].null_mean == pytest.approx(chance_level(rows, cols, 2), abs=0.01)
    assert result.measures["newman_q"].null_mean == pytest.approx(0.0, abs=0.01)
    aligned = np.where(rows[:, None] == cols[None, :], 3.0, 0.3) * weight  # W modular along the partition
    found = significance(aligned, rows, cols, 2, source=source, samples=50)  # a matrix works as the source too
    assert found.test == "fixed-partition" and all(one.p == pytest.approx(1 / 51) for one in found.measures.values())


def false_positive_rates(trials: int, samples: int, source: str, seed: int) -> dict[str, float]:
    """Per measure, the share of `trials` layers with NO modularity (iid |N| weights) whose default null rejects
    at ALPHA. For the weights source the clusters are W's own; for gradients, those of a foreign source with
    planted unequal blocks, unrelated to W (the defect of the old joint null: 65.5% on this kind of layer)."""
    rng = np.random.default_rng(seed)
    weights = np.abs(rng.standard_normal((trials, 24, 20)))
    if source == "weights":
        labels = cocluster_batch(weights, 2, 0)
    else:
        labels = cocluster_batch(np.stack([planted((6, 18), (5, 15), noise=0.3, seed=seed + t)[0]
                                           for t in range(trials)]), 2, 0)
    nulls = [significance(weights[t], labels.rows[t], labels.cols[t], 2, source=source, samples=samples,
                          seed=seed + t) for t in range(trials)]
    return {m.name: float(np.mean([significant(null.measures[m.name].p) for null in nulls])) for m in MEASURES}


@pytest.mark.parametrize("source", ["weights", "gradients"])
def test_the_default_null_of_each_source_is_calibrated_for_every_measure(source):
    """On layers with no modularity p <= 0.05 happens in 5% of trials: within the binomial 95% band of 600
    trials (3.3-6.8%), for every measure. (The old joint null rejected on 52% of such gradient-clustered layers.)"""
    trials = 600
    low, high = binom.interval(0.95, trials, ALPHA)
    rates = false_positive_rates(trials, samples=19, source=source, seed=11)
    assert all(low / trials <= rate <= high / trials for rate in rates.values()), (source, rates, low, high)


def test_p_floor_says_when_a_null_is_too_small_to_reject():
    matrix = np.random.default_rng(6).standard_normal((12, 12))
    rows, cols = clustered(matrix, 2)
    small = significance(matrix, rows, cols, 2, samples=10)
    assert small.p_floor == pytest.approx(1 / 11) and not small.can_reject
    assert small.to_dict()["p_floor"] == pytest.approx(1 / 11)
    note = "10 shuffles cannot show p ≤ 0.05; use ≥ 19"
    assert note in null_text(small.to_dict()) and note in p_lines(small.to_dict())
    assert shuffles_needed() == 19 and significance(matrix, rows, cols, 2, samples=19).can_reject
    assert "cannot" not in null_text(significance(matrix, rows, cols, 2, samples=19).to_dict())


def test_shuffles_permute_all_entries_or_within_rows():
    rng = np.random.default_rng(0)
    weight = np.arange(12.0).reshape(3, 4)
    for method in ("permute", "rows"):
        order = sig._shuffle_orders(weight, method, 5, rng)
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
    one = result.measures["clusterability"]
    assert one.null_std == 0.0 and one.z is None and one.p in (0.5, 1.0)
    assert json.loads(json.dumps(result.to_dict()))["measures"]["clusterability"]["z"] is None


def test_dict_round_trip_has_exactly_the_documented_keys():
    rng = np.random.default_rng(1)
    matrix = rng.standard_normal((16, 16))
    result = significance(matrix, *clustered(matrix, 2), 2, samples=5)
    data = json.loads(json.dumps(result.to_dict()))
    assert list(data) == KEYS and list(data["measures"]) == ["clusterability", "ncut", "newman_q"]
    assert all(list(one) == MEASURE_KEYS for one in data["measures"].values())
    assert NullResult.from_dict(data) == result
    assert data["method"] == "permute" and data["samples"] == 5 and data["p_floor"] == pytest.approx(1 / 6)


def test_a_significance_saved_before_the_registry_reads_as_today():
    old = {"method": "permute", "samples": 100, "null_mean": 0.55, "null_std": 0.01, "z": 2.0, "p_value": 0.03,
           "ncut": 0.9, "ncut_null_mean": 0.93, "ncut_p_value": 0.2}
    found = NullResult.from_dict(old)
    assert found.test == "legacy" and found.p_value == 0.03 and found.samples == 100
    assert found.measures["clusterability"].observed == pytest.approx(0.57)  # null mean + z * std
    assert found.measures["ncut"].observed == 0.9 and found.measures["ncut"].p == 0.2
    assert upgraded(old) == found.to_dict() and upgraded(upgraded(old)) == upgraded(old)
    assert "vs null 0.5500 ± 0.0100 (z 2.00 of 100 shuffles, p 0.03)" in null_text(old)


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
    for order in sig._shuffle_orders(weight, "permute", 40, np.random.default_rng(config.seed)):
        shuffled = weight.ravel()[order].reshape(weight.shape)
        ref_rows, ref_cols = reference_coclustering(shuffled, 2)
        reference.append(BY_NAME["clusterability"].batch(shuffled[None], ref_rows[None], ref_cols[None], 2)[0])
    observed = BY_NAME["clusterability"].batch(weight[None], rows[None], cols[None], 2)[0]
    reference_p = (np.sum(np.array(reference) >= observed) + 1) / 41
    assert ours.measures["clusterability"].null_mean == pytest.approx(np.mean(reference), abs=0.01)
    assert (ours.p_value < 0.05) == (reference_p < 0.05)


def legacy(null: dict) -> dict:
    """A null in the flat form sessions saved before the measures registry."""
    c, ncut = null["measures"]["clusterability"], null["measures"]["ncut"]
    return {"method": null["method"], "samples": null["samples"], "null_mean": c["null_mean"],
            "null_std": c["null_std"], "z": c["z"], "p_value": c["p"], "ncut": ncut["observed"],
            "ncut_null_mean": ncut["null_mean"], "ncut_p_value": ncut["p"]}


def test_every_measure_has_its_null_in_run_json_history_and_sessions_and_old_sessions_still_open(sessions):
    path = sessions / "measured"
    engine = Engine.create(path, small_config(null_samples=19, cluster_on="gradients"))
    engine.plan_default()
    assert engine.wait(60)
    engine.close()
    out = engine.snapshot().to_dict()
    names = [m.name for m in MEASURES]
    assert list(out["significance"]["measures"]) == names  # newman_q among them
    assert out["significance"]["test"] == "fixed-partition" and out["significance"]["source"] == "gradients"
    with_null = [entry for entry in out["history"] if "significance" in entry]
    assert [entry["phase"] for entry in with_null] == ["cluster", "finetune"]
    assert all(list(entry["significance"]["measures"]) == names for entry in with_null)
    row = next(r for r in list_sessions() if r["name"] == "measured")
    assert row["significance"] == out["significance"]

    # the same session as today's code would have saved it, flat nulls everywhere: it opens, in today's form
    data = json.loads((path / SESSION_FILE).read_text())
    data["significance"] = legacy(data["significance"])
    for entry in data["history"]:
        if "significance" in entry:
            entry["significance"] = legacy(entry["significance"])
    (path / SESSION_FILE).write_text(json.dumps(data))
    reopened = Engine.open(path)
    snap = reopened.snapshot()
    reopened.close()
    assert snap.significance["test"] == "legacy" and snap.significance["measures"]["clusterability"]["p"] == (
        out["significance"]["measures"]["clusterability"]["p"])
    assert all(NullResult.from_dict(e["significance"]).test == "legacy" for e in snap.history if "significance" in e)
    assert next(r for r in list_sessions() if r["name"] == "measured")["significance"] == snap.significance
    assert "vs null" in null_text(data["significance"])

    for damage in ({"measures": 5}, {"method": "permute"}):  # neither today's form nor the old one: one sentence
        data["history"][1]["significance"] = damage
        (path / SESSION_FILE).write_text(json.dumps(data))
        with pytest.raises(SessionError, match=r"field 'history\[1\].significance(\.\w+)?'.*cannot be opened"):
            Engine.open(path)


def test_a_null_too_small_to_reject_is_no_evidence_in_the_sweep_table_or_reproduce():
    def member(seed: int, samples: int, p: float) -> dict:
        null = NullResult("permute", "recluster", "weights", samples,
                          {m.name: MeasureNull(0.6, 0.55, 0.01, 5.0, p) for m in MEASURES}).to_dict()
        return {"name": f"m{seed}", "kind": "cluster", "seed": seed, "source": "weights", "k": 2, "lam": None,
                "test_accuracy": 0.9, "clusterability": 0.6, "significance": null, "ablation": None,
                "status": "finished"}

    small = [member(1, 10, 1 / 11), member(2, 10, 1 / 11)]  # every shuffle beaten, yet p cannot reach 0.05
    row = table_rows(small)[0]
    assert row["newman_q_tested"] == 0 and row["newman_q_significant"] is None
    assert "0.5500 (too few shuffles)" in markdown([row]) and p_share(small) == "-"
    mixed = [*small, member(3, 19, 1 / 20), member(4, 100, 0.5)]  # only the two that could reject are counted
    row = table_rows(mixed)[0]
    assert row["clusterability_significant"] == 1 and row["clusterability_tested"] == 2
    # Holm over the two: 2 x 0.05 = 0.1, then max(0.1, 0.5): neither survives
    assert "0.5500 (1/2, Holm 0)" in markdown([row]) and p_share(mixed) == "1/2 (Holm 0)"


def test_the_cluster_table_shows_every_measure_against_its_null_and_a_small_null_says_so():
    from tui.widgets.clusters import summary

    matrix = np.random.default_rng(6).standard_normal((12, 12))
    rows, cols = clustered(matrix, 2)
    found = {**significance(matrix, rows, cols, 2, samples=10).to_dict(), "step": 1200}
    lines = summary(2, "weights", 938, 0.61, 0.5, 1200, found).splitlines()
    assert lines[:3] == ["k=2 on weights, found at step 938", "step 1,200: clusterability 0.6100 (uniform-mass "
                         "chance 0.5000)", "at step 1,200, against its shuffle null:"]
    assert [line.split(" vs null")[0].rsplit(" ", 1)[0] for line in lines[3:6]] == [m.title for m in MEASURES]
    assert lines[6] == "10 shuffles cannot show p ≤ 0.05; use ≥ 19"
    live = summary(2, "weights", 938, 0.64, 0.5, 1500, None, live=True)  # before the null: no p
    assert live.splitlines()[1:] == ["step 1,500 (live): clusterability 0.6400 (uniform-mass chance 0.5000)"]
