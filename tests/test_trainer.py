"""The hand-written training step is exact and resumable, its gradient importance F is the sum of normalised
squared gradients, old checkpoints still load, and the regulariser does what it says."""

from __future__ import annotations

import copy
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.clustering import cocluster
from engine.config import Config
from engine.data import Dataset, load_dataset
from engine.metrics import block_mask, clusterability
from engine.model import build_mlp, studied_weight
from engine.trainer import Trainer

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", None, 42, CPU)


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
    for split in (37, 41, 75):  # mid-epoch and mid-fold (41 steps per epoch), right after an epoch, in finetuning
        first = Trainer(config, data, CPU)
        _run(first, range(split), mask)
        first.take_loss()
        assert first.grad_importance.shape == first.weight.shape  # reading F must not change what follows
        state = first.state_dict()
        assert "epoch" not in state  # epochs are step // steps_per_epoch
        second = Trainer(config, data, CPU)
        second.load_state_dict(state)
        _run(second, range(split, 100), mask)
        for a, b in zip(_params(straight), _params(second), strict=True):
            assert torch.equal(a, b), split
        assert torch.equal(straight.grad_importance, second.grad_importance), split
        assert (second.step, second.position, second.grad_steps) == (
            straight.step, straight.position, straight.grad_steps)
        assert torch.equal(second.perm, straight.perm)
        assert not second.legacy_gradients


def _legacy_state(state: dict, in_w: int) -> dict:
    """A checkpoint as written before F: S (in x in) under "grad_sum", an "epoch" counter, no legacy flag."""
    old = {key: value for key, value in state.items() if key not in ("grad_importance", "legacy_gradients")}
    old["grad_sum"] = torch.rand(in_w, in_w, dtype=torch.float64)
    old["epoch"] = 1
    return old


def test_old_checkpoints_load_without_their_gradients(data):
    config = _config(hidden=(32, 24, 16))
    straight = Trainer(config, data, CPU)
    _run(straight, range(60), capture_until=0)
    first = Trainer(config, data, CPU)
    _run(first, range(45), capture_until=40)  # 5 captured steps still pending: an old checkpoint held them as S's
    old = Trainer(config, data, CPU)
    old.load_state_dict(_legacy_state(first.state_dict(), first.weight.shape[1]))
    assert old.legacy_gradients and old.grad_steps == 0
    assert torch.equal(old.grad_importance, torch.zeros(first.weight.shape, dtype=torch.float64))
    _run(old, range(45, 60), capture_until=0)
    for a, b in zip(_params(straight), _params(old), strict=True):
        assert torch.equal(a, b)  # the training state itself comes back whole
    again = Trainer(config, data, CPU)
    again.load_state_dict(old.state_dict())  # saved again, it still says where its gradients went
    assert again.legacy_gradients


def test_same_seed_same_parameters_and_capture_changes_nothing(data):
    config = _config()
    a, b, c = Trainer(config, data, CPU), Trainer(config, data, CPU), Trainer(config, data, CPU)
    _run(a, range(90))
    _run(b, range(90))
    _run(c, range(90), capture_until=0)  # no capture at all
    for pa, pb, pc in zip(_params(a), _params(b), _params(c), strict=True):
        assert torch.equal(pa, pb) and torch.equal(pa, pc)
    assert torch.equal(a.grad_importance, b.grad_importance) and c.grad_steps == 0


def test_step_matches_autograd_sgd(data):
    """The hand-written step equals nn.Sequential + autograd + SGD (to float rounding), regulariser included, and
    F equals the autograd gradients' normalised squares summed."""
    config = _config(hidden=(32, 24, 16))
    trainer = Trainer(config, data, CPU)
    model = build_mlp(data.n_features, config.hidden, data.n_classes, config.seed)
    weight = model.get_submodule(f"fc{config.studied_layer}").weight
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)
    mask = _mask(trainer)
    f_ref = torch.zeros(weight.shape, dtype=torch.float64)
    for s in range(50):
        regular = s >= 25
        idx = trainer.perm[0, trainer.position: trainer.position + 100] if trainer.perm is not None and \
            trainer.position < trainer.perm.shape[1] else None
        trainer.train_step(mask if regular else None, 3.0, capture=not regular)
        if idx is None:
            idx = trainer.perm[0, :100]
        x, y = data.train_x[idx], data.train_y[idx]
        loss = torch.nn.functional.cross_entropy(model(x), y)
        total = loss - 3.0 * clusterability(weight, mask) if regular else loss
        optimizer.zero_grad()
        total.backward()
        if not regular:
            g = weight.grad.double()
            f_ref += g * g / (g * g).sum()
        optimizer.step()
    for mine, ref in zip(trainer.model.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(mine, ref, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(trainer.grad_importance, f_ref, rtol=1e-4, atol=1e-6)


def test_gradient_importance_is_the_sum_of_normalised_squared_gradients():
    # One batch is the whole training set, so every step's gradient can be recomputed independently of the
    # trainer: a fresh forward/backward of a copy of the model on all samples, before the step.
    config = Config(dataset="synthetic", hidden=(32, 24), device="cpu", batch_size=64, lr=0.05)
    full = load_dataset("synthetic", None, config.seed, CPU)
    data = Dataset("synthetic", full.train_x[:64], full.train_y[:64], full.test_x, full.test_y, 10, "test")
    trainer = Trainer(config, data, CPU)
    n = 40  # one fold of 32 steps and 8 pending
    expected = torch.zeros(24, 32, dtype=torch.float64)
    for _ in range(n):
        model = copy.deepcopy(trainer.model)
        F.cross_entropy(model(data.train_x), data.train_y).backward()
        g = studied_weight(model, config.studied_layer).grad.double()
        expected += (g / g.norm()).square()
        trainer.train_step(capture=True)
    before = trainer.grad_importance
    trainer.train_step(capture=False)  # not captured
    got = trainer.grad_importance
    assert trainer.grad_steps == n
    assert got.dtype == torch.float64 and got.shape == (24, 32)  # out x in
    assert torch.equal(got, before)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6 * expected.abs().max().item())
    assert got.sum().item() == pytest.approx(n, rel=1e-9)  # each step's normalised squares sum to 1


def test_regulariser_raises_clusterability():
    results = {}
    for lam in (0.0, 20.0):
        config = Config(dataset="synthetic", hidden=(32, 32), device="cpu", lr=0.05)
        trainer = Trainer(config, load_dataset("synthetic", None, config.seed, CPU), CPU)
        for _ in range(150):
            trainer.train_step()
        clustered = cocluster(trainer.weight.detach().double().numpy(), 2, seed=0)
        mask = block_mask(clustered.rows, clustered.cols)
        before = trainer.clusterability_of(mask)
        for _ in range(150):
            trainer.train_step(mask, lam)
        results[lam] = (before, trainer.clusterability_of(mask))
    (before0, after0), (before20, after20) = results[0.0], results[20.0]
    assert before0 == pytest.approx(before20)  # same start
    assert after20 > after0 + 0.1
    assert after20 > before20 + 0.1


# ----- today's numbers, pinned: recorded with the Trainer of commit 68e8e29 (before one trainer served both a
# session and a batched group), on one CPU thread. The run pretrains with capture across two folds and two epoch
# ends, finetunes at λ=3, then trains with a mask at λ=0 (as the control does).
GOLDEN = {
    (32, 24, 16): {
        "params": "89105a19c0b22669b195d56a23663879f3b20fadf0798e42724ca8a6dd2498f0",
        "F": "0871cea233045d878f6581204ecb157c75d9e57c40ba83e595473b4ee8b22a28",
        "losses": ["2.312383460998535", "2.3062101364135743", "2.30441837310791", "2.3056121826171876",
                   "2.3022533416748048", "2.2999900817871093", "2.2960586547851562", "2.2996240615844727",
                   "2.295171356201172", "2.294627380371094", "2.2933204650878904", "2.28732967376709",
                   "2.289256477355957"],
        "accuracy": "0.1220703125", "clusterability": "0.49126893281936646",
    },
    (128, 128): {
        "params": "2afcd6edc8dc238ebb65f99bf089fe7e63b4b37f79b6e8a153060ac8f49a21d4",
        "F": "acd47f244d055d2818de16a52b9ad9c1faa8a0147a41f572c3170ce9bcd624cd",
        "losses": ["2.3117841720581054", "2.301896667480469", "2.2851655960083006", "2.278441619873047",
                   "2.2651599884033202", "2.2536827087402345", "2.2447076797485352", "2.2351591110229494",
                   "2.2247215270996095", "2.2108583450317383", "2.1995864868164063", "2.1858503341674806",
                   "2.177273178100586"],
        "accuracy": "0.6484375", "clusterability": "0.5014345049858093",
    },
}


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("hidden", list(GOLDEN))
def test_same_numbers_as_before(data, hidden, one_thread):
    """Bit for bit what the Trainer gave before the batched group's step became its step: weights, F, every
    reported loss, the accuracy and the clusterability."""
    from engine.study import params_sha256

    config = _config(hidden=hidden)
    trainer = Trainer(config, data, CPU)
    mask = _mask(trainer)
    losses = []
    for s in range(130):
        if s < 90:
            trainer.train_step(capture=True)
        else:
            trainer.train_step(mask, 3.0 if s < 120 else 0.0)
        if s % 10 == 9:
            losses.append(repr(trainer.take_loss()))
    expected = GOLDEN[hidden]
    assert params_sha256(trainer.model) == expected["params"]
    assert hashlib.sha256(trainer.grad_importance.numpy().tobytes()).hexdigest() == expected["F"]
    assert losses == expected["losses"]
    assert repr(trainer.evaluate()) == expected["accuracy"]
    assert repr(trainer.clusterability_of(mask)) == expected["clusterability"]


def test_a_session_saved_before_resumes_to_the_same_numbers(tmp_path, one_thread):
    """tests/fixtures/session-v1: digits, hidden (8, 8), 40 pretraining steps with 8 captured gradients not yet
    folded into F, saved by the code of commit 68e8e29. Resumed, clustered on gradients and finetuned, it gives
    what that code gave."""
    from engine.engine import Engine

    path = tmp_path / "old"
    shutil.copytree(Path(__file__).parent / "fixtures" / "session-v1", path)
    with Engine.open(path) as engine:
        assert engine.snapshot().step == 40
        engine.train(steps=10)
        engine.cluster(k=2, source="gradients")
        engine.finetune(epochs=1, lam=3.0)
        engine.wait()
        snapshot = engine.snapshot()
    assert snapshot.params_sha256 == "6f190d8742e66bf83adaa7b94db1cfab4c37ff07aa52a35912ca9cbd59f5f85b"
    assert snapshot.step == 73
    assert (snapshot.clusters["row_sizes"], snapshot.clusters["col_sizes"]) == ([6, 2], [6, 2])
    assert repr(snapshot.test_accuracy) == "0.20334261838440112"
    assert repr(snapshot.clusterability) == "0.9938781261444092"
