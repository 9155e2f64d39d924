"""Cluster stability: ARI's permutation null on known answers, a session's comparisons saved and shown, a sweep's."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats as scipy_stats

from engine.cli import main
from engine.engine import Engine
from engine.session import read_session
from engine.stability import Labels, agreement, permuted_aris, profile_agreement, summary
from tests.conftest import needs_mnist, small_config


def _labels(rng: np.random.Generator, k: int, rows: int, cols: int) -> Labels:
    return Labels(rng.integers(0, k, rows), rng.integers(0, k, cols))


def test_identical_labellings_give_ari_1_and_the_smallest_p():
    a = _labels(np.random.default_rng(0), 3, 60, 50)
    found = agreement(a, a, samples=99, seed=1)
    assert found["ari"] == 1 and found["nmi"] == pytest.approx(1)
    assert found["p"] == pytest.approx(1 / 100) and abs(found["null_mean"]) < 0.02
    renamed = Labels((a.rows + 1) % 3, (a.cols + 1) % 3)  # the same clusters under other names
    assert agreement(a, renamed, samples=19)["ari"] == 1


def test_a_partly_changed_labelling_agrees_beyond_chance_but_not_fully():
    rng = np.random.default_rng(1)
    a = _labels(rng, 2, 100, 100)
    changed = Labels(np.where(rng.random(100) < 0.2, 1 - a.rows, a.rows), a.cols)
    found = agreement(a, changed, samples=99)
    assert 0.3 < found["ari"] < 1 and found["p"] == pytest.approx(1 / 100)


def test_independent_labellings_give_ari_near_0_and_uniform_p():
    aris, ps = [], []
    for i in range(300):
        rng = np.random.default_rng(100 + i)
        found = agreement(_labels(rng, 2, 100, 100), _labels(rng, 2, 100, 100), samples=99, seed=i)
        aris.append(found["ari"])
        ps.append(found["p"])
    assert abs(np.mean(aris)) < 0.002
    low, high = scipy_stats.binom.interval(0.99, 300, 0.05)  # a valid test rejects 5% of the time
    assert low <= sum(p <= 0.05 for p in ps) <= high
    # uniform but for ties (ARI takes few values near 0; a tie counts against rejecting): a little conservative
    assert 0.35 < np.mean(np.array(ps) <= 0.5) <= 0.55


def test_the_batched_null_ari_is_scikit_learns():
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng(3)
    for k in (1, 2, 5):
        x, y = rng.integers(0, k, 70), rng.integers(0, 3, 70) if k > 1 else np.zeros(70, int)
        ys = np.stack([rng.permutation(y) for _ in range(6)])
        assert permuted_aris(x, ys) == pytest.approx([adjusted_rand_score(x, row) for row in ys])


def test_ablation_profiles_agree_whatever_the_order_of_the_clusters():
    rng = np.random.default_rng(2)
    profile = rng.random((3, 10))
    same = [profile, profile[[2, 0, 1]] + 0.01 * rng.random((3, 10)), profile[[1, 2, 0]]]
    found = profile_agreement(same, 99, 0)
    assert found["r"] > 0.99 and found["p"] == pytest.approx(1 / 100)
    unrelated = profile_agreement([rng.random((3, 10)) for _ in range(3)], 99, 0)
    assert unrelated["r"] < 0.9 and unrelated["p"] > found["p"]


def test_a_finetuned_session_is_compared_four_ways_saved_and_shown(sessions, capsys):
    engine = Engine.create(sessions / "st", small_config(steps=64, finetune_epochs=2, null_samples=0))
    engine.plan_default()
    engine.wait()
    steps = [e["step"] for e in engine.metrics_history() if e.get("type") == "recluster"]
    engine.close()
    assert len(steps) == 2  # one re-clustering at each finetune epoch's end

    assert main(["stability", "st", "--seeds", "2", "--samples", "19", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["ari"]) == {"sources", "seeds", "halves", "checkpoints"}
    assert [s["seed"] for s in result["ari"]["seeds"]] == [43, 44]
    assert [c["step"] for c in result["ari"]["checkpoints"]] == steps
    for found in [result["ari"]["sources"], result["ari"]["halves"], *result["ari"]["seeds"]]:
        assert -1 <= found["ari"] <= 1 and 0 < found["p"] <= 1 and found["samples"] == 19
    assert read_session(sessions / "st")["stability"] == result

    reopened = Engine.open(sessions / "st")  # kept by the session, in the snapshot the UI gets
    assert reopened.snapshot().stability == result
    reopened.close()
    line = summary(result)
    assert line.startswith("stability, ARI vs permuted labels: sources ") and "checkpoints" in line

    assert main(["stability", "st"]) == 0
    text = capsys.readouterr().out
    assert "held vs re-clustered at step" in text and "beyond chance" in text


def test_stability_refuses_bad_input_in_one_sentence(sessions, capsys):
    assert main(["stability", "nothing"]) == 2
    assert main(["stability", "nothing", "--samples", "0"]) == 2
    assert main(["stability", "nothing", "--samples", "10000000"]) == 2  # never tried: it would fill the memory
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "--samples" in err[1] and "at most 100,000" in err[2]
    assert main(["stability", "nothing", "--seeds", "1e3"]) == 2
    assert "plain decimal" in capsys.readouterr().err


def test_a_sweep_compares_cluster_sizes_and_ablation_profiles_across_seeds(sessions, capsys):
    flags = ["--dataset", "synthetic", "--hidden", "16,16", "--device", "cpu", "--steps", "30", "--finetune-epochs",
             "0", "--null-samples", "0", "--seeds", "3", "--k", "2"]
    assert main(["sweep", "sw", *flags, "--json"]) == 0
    capsys.readouterr()
    assert main(["stability", "sw", "--samples", "19", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["neurons_aligned"] is False and "not aligned" in result["note"]
    (group,) = result["groups"]
    assert group["seeds"] == [1, 2, 3] and group["point"] == {"source": "weights", "k": 2}
    assert all(len(s) == 2 and sum(s) == pytest.approx(1) and s[0] >= s[1] for s in group["size_shares"])
    assert 0 < group["ablation_profiles"]["p"] <= 1


@pytest.mark.slow
@needs_mnist
def test_stability_on_mnist(sessions, capsys):
    from tests.conftest import MNIST_DIR

    config = small_config(dataset="mnist", data_dir=str(MNIST_DIR), hidden=(128, 128), steps=None, epochs=1,
                          finetune_epochs=1, lam=3.0, null_samples=0)
    engine = Engine.create(sessions / "m", config)
    engine.plan_default()
    engine.wait()
    engine.close()
    assert main(["stability", "m", "--seeds", "2", "--samples", "99", "--json"]) == 0
    ari = json.loads(capsys.readouterr().out)["ari"]
    # the exact eigen-solve makes re-clustering with another k-means seed find the same blocks
    assert all(s["ari"] == 1 and s["p"] == pytest.approx(0.01) for s in ari["seeds"])
    assert len(ari["checkpoints"]) == 1 and ari["sources"] is not None and ari["halves"]["samples"] == 99
