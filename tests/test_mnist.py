"""The issue-2 acceptance run on real MNIST (slow: deselect with -m 'not slow')."""

from __future__ import annotations

import pytest

from tests.conftest import MNIST_DIR, needs_mnist, run_json


@pytest.mark.slow
@needs_mnist
def test_finetuning_makes_mnist_modular_without_losing_accuracy(sessions):
    result = run_json("run", "--dataset", "mnist", "--data-dir", str(MNIST_DIR), "--epochs", "1", "--k", "2",
                      "--finetune-epochs", "1", "--lam", "40", env_sessions=sessions, timeout=1800)
    phases = {entry["phase"]: entry for entry in result["history"]}
    assert list(phases) == ["pretrain", "cluster", "finetune"]
    assert result["step"] == 2 * 938
    pretrained, finetuned = phases["pretrain"], phases["finetune"]
    assert finetuned["clusterability"] >= 0.95
    assert result["clusterability"] >= 0.95
    assert finetuned["test_accuracy"] >= pretrained["test_accuracy"]
    assert result["clusterability_chance"] == pytest.approx(0.5, abs=0.1)
