"""`clusterlab bench` runs and reports, and the hand-written training step is exact and resumable."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine import bench
from engine.cli import main
from engine.config import Config
from engine.data import load_dataset
from engine.metrics import block_mask, clusterability
from engine.model import build_mlp
from engine.trainer import Trainer

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", None, 42, CPU)


def test_bench_json(capsys, monkeypatch):
    monkeypatch.setattr(bench, "WIDE", 96)  # the 1024x1024 clustering is a benchmark figure, not a test
    monkeypatch.setattr(bench, "WARMUP_STEPS", 5)
    assert main(["bench", "--dataset", "synthetic", "--steps", "30", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("engine_steps_per_s", "reference_steps_per_s", "speedup", "engine_nocapture_steps_per_s", "eval_ms",
                "cocluster_k2_ms", "cocluster_k8_ms", "cocluster_1024_k8_ms", "clusterability_ms",
                "clusterability_1024_ms"):
        assert isinstance(result[key], float) and result[key] > 0, key
    assert isinstance(result["capture_share"], float)  # a difference of two timings: may be noise-negative
    assert result["device"] == "cpu" and result["dataset"] == "synthetic"
    assert result["threads"] >= 1 and result["torch"] == torch.__version__
    assert result["reference_steps"] == 30 and result["reference_grads_seen"] >= 30


def test_bench_rejects_bad_steps(capsys):
    assert main(["bench", "--dataset", "synthetic", "--steps", "0"]) == 2
    assert "--steps" in capsys.readouterr().err


def _config(**kw) -> Config:
    # batch 100 does not divide the 4096 synthetic samples: every epoch ends with a partial batch
    return Config(dataset="synthetic", batch_size=100, **kw)


def _params(trainer: Trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.model.parameters()]


def _run(trainer: Trainer, steps: range, mask=None, capture_until=70) -> None:
    for s in steps:
        regular = mask is not None and s >= capture_until
        trainer.train_step(mask if regular else None, 3.0, capture=s < capture_until)


def _mask(trainer: Trainer) -> torch.Tensor:
    rng = np.random.default_rng(0)
    out_w, in_w = trainer.weight.shape
    return block_mask(rng.integers(0, 2, out_w), rng.integers(0, 2, in_w))


@pytest.mark.parametrize("hidden", [(128, 128), (32, 24, 16)])
def test_resume_is_bit_identical(data, hidden):
    """N steps straight == N/2, state_dict -> new Trainer -> load, N/2; split mid-epoch and mid-fold."""
    config = _config(hidden=hidden)
    straight = Trainer(config, data, CPU)
    mask = _mask(straight)
    _run(straight, range(100), mask)
    for split in (37, 41, 75):  # mid-epoch (41 steps per epoch), right after an epoch, during finetuning
        first = Trainer(config, data, CPU)
        _run(first, range(split), mask)
        first.take_loss()
        assert first.grad_sum.shape == (first.weight.shape[1],) * 2  # reading S must not change what follows
        state = first.state_dict()
        second = Trainer(config, data, CPU)
        second.load_state_dict(state)
        _run(second, range(split, 100), mask)
        for a, b in zip(_params(straight), _params(second), strict=True):
            assert torch.equal(a, b), split
        assert torch.equal(straight.grad_sum, second.grad_sum), split
        assert (second.step, second.epoch, second.position, second.grad_steps) == (
            straight.step, straight.epoch, straight.position, straight.grad_steps)
        assert torch.equal(second.perm, straight.perm)


def test_same_seed_same_parameters_and_capture_changes_nothing(data):
    config = _config()
    a, b, c = Trainer(config, data, CPU), Trainer(config, data, CPU), Trainer(config, data, CPU)
    _run(a, range(90))
    _run(b, range(90))
    _run(c, range(90), capture_until=0)  # no capture at all
    for pa, pb, pc in zip(_params(a), _params(b), _params(c), strict=True):
        assert torch.equal(pa, pb) and torch.equal(pa, pc)
    assert torch.equal(a.grad_sum, b.grad_sum) and c.grad_steps == 0


def test_step_matches_autograd_sgd(data):
    """The hand-written step equals nn.Sequential + autograd + SGD (to float rounding), regulariser included."""
    config = _config(hidden=(32, 24, 16))
    trainer = Trainer(config, data, CPU)
    model = build_mlp(data.n_features, config.hidden, data.n_classes, config.seed)
    weight = model.get_submodule(f"fc{config.studied_layer}").weight
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)
    mask = _mask(trainer)
    s_ref = torch.zeros(weight.shape[1], weight.shape[1], dtype=torch.float64)
    for s in range(50):
        regular = s >= 25
        idx = trainer.perm[trainer.position: trainer.position + 100] if trainer.perm is not None and \
            trainer.position < trainer.perm.numel() else None
        trainer.train_step(mask if regular else None, 3.0, capture=not regular)
        if idx is None:
            idx = trainer.perm[:100]
        x, y = data.train_x[idx], data.train_y[idx]
        loss = torch.nn.functional.cross_entropy(model(x), y)
        total = loss - 3.0 * clusterability(weight, mask) if regular else loss
        optimizer.zero_grad()
        total.backward()
        if not regular:
            g = weight.grad.double()
            s_ref += g.T @ g / (g * g).sum()
        optimizer.step()
    for mine, ref in zip(trainer.model.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(mine, ref, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(trainer.grad_sum, s_ref, rtol=1e-4, atol=1e-6)
