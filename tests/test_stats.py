"""Holm's adjustment against hand-computed values; the seed estimates against known answers."""

from __future__ import annotations

import pytest

from engine.measures import MEASURES, MeasureNull, NullResult
from engine.stats import holm, mean_ci, paired_difference
from engine.sweep_table import HOLM_FAMILY, markdown, p_share, table_rows


def test_holm_matches_a_hand_computed_family():
    # m = 4, sorted 0.01, 0.02, 0.03, 0.5: 4 * 0.01 = 0.04; 3 * 0.02 = 0.06; 2 * 0.03 = 0.06; 1 * 0.5 = 0.5
    result = holm([0.03, 0.5, 0.01, 0.02], family="4 seeds' clusterability")
    assert result.p_adjusted == pytest.approx((0.06, 0.5, 0.04, 0.06))
    assert result.family == "4 seeds' clusterability" and result.p_values == (0.03, 0.5, 0.01, 0.02)


def test_holm_is_monotone_capped_at_one_and_skips_missing_tests():
    # m = 3 (None is not a test): sorted 0.04, 0.3, 0.6 -> 0.12, max(0.12, 0.6) = 0.6, max(0.6, 0.6) = 0.6
    result = holm([0.6, None, 0.04, 0.3], family="f")
    assert result.p_adjusted == pytest.approx((0.6, None, 0.12, 0.6))
    assert holm([0.9, 0.8], family="f").p_adjusted == (1.0, 1.0)
    assert holm([], family="f").p_adjusted == ()


def test_holm_rejects_what_bonferroni_would_and_never_less_than_the_raw_p():
    p = [0.001, 0.011, 0.02, 0.04, 0.3]
    adjusted = holm(p, family="f").p_adjusted
    assert all(a >= q for a, q in zip(adjusted, p, strict=True))
    assert [a <= 0.05 for a in adjusted] == [True, True, False, False, False]  # 0.005, 0.044, 0.06, 0.08, 0.3
    assert all(a <= min(1.0, 5 * q) for a, q in zip(adjusted, p, strict=True))


def test_mean_ci_and_paired_difference_known_answers():
    estimate = mean_ci([1.0, 2.0, 3.0])  # s = 1, t_{0.975, 2} = 4.3027
    assert estimate.mean == 2.0 and estimate.ci == pytest.approx(4.302653 / 3**0.5, rel=1e-5)
    diff = paired_difference({1: 1.0, 2: 2.0, 3: None}, {1: 0.5, 2: 1.0, 4: 9.0})
    assert diff.n == 2 and diff.mean == pytest.approx(0.75)


def seeds(*p_values: float) -> list[dict]:
    """Clustered sweep members, one per p-value, each with a null of 100 shuffles giving that p for every measure."""
    def member(seed: int, p: float) -> dict:
        null = NullResult("permute", "recluster", "weights", 100,
                          {m.name: MeasureNull(0.6, 0.55, 0.01, 5.0, p) for m in MEASURES}).to_dict()
        return {"name": f"m{seed}", "kind": "cluster", "seed": seed, "source": "weights", "k": 2, "lam": None,
                "test_accuracy": 0.9, "clusterability": 0.6, "significance": null, "ablation": None,
                "status": "finished"}

    return [member(seed, p) for seed, p in enumerate(p_values, start=1)]


def test_sweep_rows_count_the_seeds_that_survive_holm_over_the_row():
    # 0.01, 0.02, 0.04 -> 0.03, 0.04, 0.04: all three survive; 0.01, 0.03, 0.04 -> 0.03, 0.06, 0.06: one does
    all_three, one = table_rows(seeds(0.01, 0.02, 0.04))[0], table_rows(seeds(0.01, 0.03, 0.04))[0]
    assert (all_three["clusterability_significant"], all_three["clusterability_significant_holm"]) == (3, 3)
    assert (one["ncut_significant"], one["ncut_significant_holm"]) == (3, 1)
    assert "0.5500 (3/3, Holm 1)" in markdown([one]) and p_share(seeds(0.01, 0.03, 0.04)) == "3/3 (Holm 1)"
    assert "row's seeds" in HOLM_FAMILY
