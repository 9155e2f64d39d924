"""`clusterlab calibrate`: each source's default null keeps its false-positive rate in the binomial band of a valid
test on layers without modularity, has power on planted blocks, and the command's JSON has the promised keys."""

from __future__ import annotations

import json

import pytest

from engine import calibrate, planted
from engine.calibrate import (
    DEFAULT_METHOD,
    METHODS,
    NO_MODULARITY,
    SOURCES,
    Settings,
    binomial_band,
    exact_size,
    rejections,
)
from engine.cli import main
from engine.measures import MEASURES

# 150 layers of 24 x 24 per family, 19 shuffles (size exactly 0.05). The cells (family x source x null x measure)
# are tested together, so each count must fall in its band at level 1 - 0.05 / cells (Bonferroni): 1 to 18
# rejections of 150. The gradient source's old joint null rejected 100% on foreign blocks, 0% on gradient-like F's.
SMALL = Settings(trials=150, null_samples=19, rows=24, cols=24, k=2, seed=1)
CELLS = sum(len(sources) for _, sources in NO_MODULARITY.values()) * len(METHODS) * len(MEASURES)
# `permute` treats all entries as exchangeable; on units of unequal scale that is false (README: calibrate).
MISCALIBRATED = {("row-scaled", "permute")}


def test_the_size_of_a_shuffle_test_and_its_band_are_known():
    assert exact_size(39) == 0.05 and exact_size(19) == 0.05
    assert exact_size(100) == pytest.approx(5 / 101)
    assert binomial_band(200, 0.05) == (4, 16) and binomial_band(100, 0.05) == (1, 10)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", list(NO_MODULARITY))
def test_each_null_is_calibrated_on_layers_without_modularity(family, method):
    make, sources = NO_MODULARITY[family]
    band = binomial_band(SMALL.trials, exact_size(SMALL.null_samples), level=1 - 0.05 / CELLS)
    assert band == (1, 18)
    counts = rejections(SMALL, make, list(NO_MODULARITY).index(family), sources, methods=(method,))
    found = {(source, m.name): counts[source][method][m.name] for source in sources for m in MEASURES}
    if (family, method) not in MISCALIBRATED:
        assert all(band[0] <= n <= band[1] for n in found.values()), found
    else:  # known and shown by `clusterlab calibrate`: some measure of some source leaves the band
        assert not all(band[0] <= n <= band[1] for n in found.values()), found


def test_the_default_null_is_calibrated_wherever_its_assumption_holds():
    assert DEFAULT_METHOD in METHODS
    assert all(method != DEFAULT_METHOD or family == "row-scaled" for family, method in MISCALIBRATED)


def test_planted_blocks_are_found_by_both_sources():
    counts = rejections(SMALL, planted.modular(1.0), 99, SOURCES, methods=(DEFAULT_METHOD,))
    for source in SOURCES:
        assert counts[source][DEFAULT_METHOD]["ncut"] >= 50, counts


def test_the_command_prints_rates_with_intervals_per_source(capsys):
    assert main(["calibrate", "--json", "--trials", "4", "--null-samples", "19"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["sources"]) == {"weights", "gradients"}
    gradients = result["sources"]["gradients"]
    assert gradients["null_test"] == "fixed-partition"
    assert set(gradients["false_positive_rate"]) == set(NO_MODULARITY)
    assert "foreign-blocks" not in result["sources"]["weights"]["false_positive_rate"]
    one = gradients["false_positive_rate"]["foreign-blocks"]["rows"]["newman_q"]
    assert one["trials"] == 4 and 0 <= one["ci"][0] <= one["rate"] <= one["ci"][1] <= 1
    assert set(gradients["power"]["planted 0.5"]["permute"]) == {m.name for m in MEASURES}
    assert result["test_size"] == 0.05 and result["wall_s"] >= 0


def test_too_few_shuffles_is_one_line_and_code_2(capsys):
    assert main(["calibrate", "--null-samples", "10"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert calibrate.Settings().trials >= 200
