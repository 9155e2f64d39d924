"""Pruning (`--prune`, `--prune-recover`): the smallest weights of the whole network are zeroed at the end of
pretraining and stay zero through recovery, the control, finetuning and a reopened session."""

from __future__ import annotations

import pytest
import torch

from engine import Engine
from engine.config import Config
from engine.errors import ConfigError
from engine.prune import prune_global
from tests.conftest import MNIST_DIR, needs_mnist, run_json, small_config


def zeros(weights) -> int:
    return sum(int((w == 0).sum()) for w in weights)


def test_global_pruning_zeroes_the_smallest_weights_of_all_layers_once():
    a = torch.tensor([[0.5, -0.125], [2.0, 0.375]])
    b = torch.tensor([[-0.0625, 1.0, 0.25]])
    keep = prune_global([a, b], 3 / 7)  # three of seven weights: |-0.0625|, |-0.125|, |0.25|
    assert a.tolist() == [[0.5, 0.0], [2.0, 0.375]] and b.tolist() == [[0.0, 1.0, 0.0]]
    assert [m.tolist() for m in keep] == [[[True, False], [True, True]], [[False, True, False]]]
    again = prune_global([a, b], 3 / 7)  # pruning a pruned network again changes nothing
    assert [m.tolist() for m in again] == [m.tolist() for m in keep] and b.tolist() == [[0.0, 1.0, 0.0]]


def model_weights(engine: Engine) -> list[torch.Tensor]:
    return [w.detach().clone() for w in engine.study.trainer.model.parameters()]


def test_the_pruned_weights_stay_zero_through_recovery_control_finetune_and_a_reopen(sessions):
    config = small_config(prune=0.6, prune_recover=1, control=True, lam=20.0, null_samples=0)
    engine = Engine.create(sessions / "p", config)
    engine.plan_default()
    assert engine.wait(120)
    snap = engine.snapshot()
    weights = model_weights(engine)
    engine.close()
    assert [h["phase"] for h in snap.history] == ["pretrain", "pretrain", "cluster", "control", "finetune"]
    total = sum(w.numel() for w in weights)
    assert zeros(weights) == round(0.6 * total)  # every pruned weight is still exactly zero, and no more
    reopened = Engine.open(sessions / "p")
    reopened.finetune(epochs=1, lam=20.0)
    assert reopened.wait(120)
    after = model_weights(reopened)
    reopened.close()
    assert [torch.equal(w == 0, v == 0) for w, v in zip(weights, after, strict=True)] == [True] * len(weights)
    assert not all(torch.equal(w, v) for w, v in zip(weights, after, strict=True))  # it did train


def test_the_prune_flags_are_checked():
    with pytest.raises(ConfigError, match="--prune must be a share"):
        Config(prune=1.0)
    with pytest.raises(ConfigError, match="--prune-recover must be a whole number"):
        Config(prune=0.5, prune_recover=-1)


@pytest.mark.slow
@needs_mnist
def test_pruning_on_mnist_keeps_its_zeros_and_reports_the_layer_nonzero_null(sessions):
    result = run_json("run", "--dataset", "mnist", "--data-dir", str(MNIST_DIR), "--steps", "300", "--prune", "0.9",
                      "--finetune-epochs", "0", "--layer", "all", "--k", "4", "--null", "layer_nonzero",
                      "--null-samples", "19", "--device", "cpu", env_sessions=sessions, timeout=600)
    significance = result["significance"]
    assert significance["method"] == "layer_nonzero" and significance["samples"] == 19
    assert result["test_accuracy"] > 0.3  # a 90%-pruned network still classifies
    checkpoint = max((sessions / result["session"].split("/")[-1]).glob("checkpoint-*.pt"))
    model = torch.load(checkpoint, weights_only=True)["trainer"]["model"]
    total = sum(w.numel() for w in model.values())
    assert zeros(model.values()) == round(0.9 * total)


def test_prune_is_a_sweep_axis_and_a_pruned_member_finishes(tmp_path):
    from engine.sweep import make_grid, plan_members
    from engine.sweep_run import run_sweep

    grid = make_grid({"seeds": [1], "sources": ["weights"], "k": [2], "lam": [0], "prune": [0.9, 0]})
    members = plan_members("sw", grid)
    roots = [m for m in members if m.parent is None]
    assert [m.name for m in roots] == ["sw.s1.p0", "sw.s1.p0.9"]
    assert roots[1].config(small_config()).prune == 0.9
    settings = {"dataset": "synthetic", "hidden": [16, 16], "device": "cpu", "steps": 16, "prune_recover": 1,
                "finetune_epochs": 0, "null_samples": 0, "layer": "all"}
    result = run_sweep("sw", settings, {"seeds": [1], "lam": [0], "prune": [0, 0.5]}, root=tmp_path)
    assert not result.failures
    clustered = [r for r in result.table if r["stage"] == "clustered"]
    assert [r["prune"] for r in clustered] == [0, 0.5] and all(r["clusterability"] for r in clustered)
