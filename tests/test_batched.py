"""A batched group trains each member exactly as a Trainer alone would (bit for bit on the CPU), deterministically
and resumably."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from engine import phases
from engine.config import Config
from engine.data import load_dataset
from engine.engine import params_sha256
from engine.errors import ConfigError, SessionError, TrainingError
from engine.metrics import block_mask, clusterability
from engine.model import build_mlp, studied_weight
from engine.plan import Job
from engine.trainer import Trainer, default_workers

CPU = torch.device("cpu")
SEEDS = [3, 11, 42]
LAMS = [3.0, 0.0, 40.0]  # a λ = 0 member must get exactly the unregularised update
PRETRAIN, FINETUNE = 50, 40  # 41 steps per epoch: both phases cross an epoch end with a partial batch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The engine's setting on a 2-core machine. With more threads a Trainer's mm splits its GEMMs across them and
    rounds differently from bmm, which computes each member's GEMM on one thread: close, no longer bit-identical."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", None, 42, CPU)


def _config(**kw) -> Config:
    # batch 100 does not divide the 4096 synthetic samples: every epoch ends with a partial batch
    return Config(dataset="synthetic", batch_size=100, hidden=(32, 24, 16), **kw)


def _masks(shape: tuple[int, int], n: int) -> torch.Tensor:
    rng = np.random.default_rng(0)
    return torch.stack([block_mask(rng.integers(0, 2, shape[0]), rng.integers(0, 2, shape[1])) for _ in range(n)])


def _train(group: Trainer, steps: range, masks: torch.Tensor) -> None:
    lams = torch.tensor(LAMS)
    for s in steps:
        if s < PRETRAIN:
            group.train_step(capture=True)
        else:
            group.train_step(masks, lams)


def _weights(group: Trainer) -> list[torch.Tensor]:
    return [w.clone() for w in group.weights]


@pytest.fixture(scope="module")
def trained(data):
    """A group after pretraining with capture and finetuning with per-member masks and λ."""
    config = _config()
    group = Trainer(config, data, CPU, SEEDS)
    masks = _masks(config.layer_shape, len(SEEDS))
    _train(group, range(PRETRAIN + FINETUNE), masks)
    return config, group, masks


def test_each_member_equals_its_trainer_alone(data, trained):
    config, group, masks = trained
    for i, seed in enumerate(SEEDS):
        alone = Trainer(config.replace(seed=seed), data, CPU)
        for s in range(PRETRAIN + FINETUNE):
            if s < PRETRAIN:
                alone.train_step(capture=True)
            else:
                alone.train_step(masks[i], LAMS[i])
        # bmm and mm run the same CPU kernels per matrix, and the regulariser's gradient is formed as autograd
        # forms it: on the CPU a member is bit-identical to its Trainer, not just close; so are F and the figures.
        assert params_sha256(group.member_model(i)) == params_sha256(alone.model), seed
        assert torch.equal(group.grad_importances[i], alone.grad_importance), seed
        assert torch.equal(group.perm[i], alone.perm[0])
        assert (group.step, group.position) == (alone.step, alone.position)
        assert group.accuracies()[i] == alone.evaluate()
        assert group.clusterabilities(masks)[i] == alone.clusterability_of(masks[i])
    assert group.grad_steps == PRETRAIN


def test_capture_is_the_sum_of_squared_unit_gradients(data):
    """F of each member equals Σ (g/|g|)^2 from nn.Sequential + autograd + SGD on the member's own batches."""
    config = _config()
    group = Trainer(config, data, CPU, SEEDS)
    steps = 45
    for _ in range(steps):
        group.train_step(capture=True)
    for i, seed in enumerate(SEEDS):
        model = build_mlp(data.n_features, config.hidden, data.n_classes, seed)
        weight = studied_weight(model, config.studied_layer)
        optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)
        generator = torch.Generator().manual_seed(seed)
        f_ref = torch.zeros(weight.shape, dtype=torch.float64)
        for s in range(steps):
            if s % group.steps_per_epoch == 0:
                perm = torch.randperm(data.n_train, generator=generator)
            start = (s % group.steps_per_epoch) * config.batch_size
            idx = perm[start : start + config.batch_size]
            loss = torch.nn.functional.cross_entropy(model(data.train_x[idx]), data.train_y[idx])
            optimizer.zero_grad()
            loss.backward()
            g = weight.grad.double()
            f_ref += g.square() / g.square().sum()
            optimizer.step()
        torch.testing.assert_close(group.grad_importances[i], f_ref, rtol=1e-4, atol=1e-7)
        assert group.grad_importances[i].sum().item() == pytest.approx(steps, rel=1e-6)  # each unit gradient adds 1


def test_same_seeds_same_members(data, trained):
    config, group, masks = trained
    again = Trainer(config, data, CPU, SEEDS)
    _train(again, range(PRETRAIN + FINETUNE), masks)
    hashes = [params_sha256(group.member_model(i)) for i in range(len(SEEDS))]
    assert hashes == [params_sha256(again.member_model(i)) for i in range(len(SEEDS))]
    assert len(set(hashes)) == len(SEEDS)
    assert torch.equal(again.grad_importances, group.grad_importances)


def test_members_do_not_depend_on_threads_or_workers(data, trained):
    """bmm computes each member's GEMMs on one thread whatever the count, and shards step the same members: 2
    threads, or 2 worker threads with a shard each, give the same bits as 1."""
    config, group, masks = trained
    torch.set_num_threads(2)
    try:
        two_threads = Trainer(config, data, CPU, SEEDS)
        _train(two_threads, range(PRETRAIN + FINETUNE), masks)
    finally:
        torch.set_num_threads(1)
    two_workers = Trainer(config, data, CPU, SEEDS, workers=2)
    assert [s.m for s in two_workers._shards] == [1, 2]
    _train(two_workers, range(PRETRAIN + FINETUNE), masks)
    for other in (two_threads, two_workers):
        for a, b in zip(_weights(group), _weights(other), strict=True):
            assert torch.equal(a, b)
        assert torch.equal(group.grad_importances, other.grad_importances)
    assert two_threads.take_losses() == two_workers.take_losses()


@pytest.mark.parametrize("split", [37, 41, 63])  # mid-epoch in pretraining, at an epoch end, mid-epoch finetuning
def test_resume_from_member_states_is_bit_identical(data, trained, split):
    config, straight, masks = trained
    first = Trainer(config, data, CPU, SEEDS)
    _train(first, range(split), masks)
    buffer = io.BytesIO()
    torch.save(first.state_dicts(), buffer)  # through a file, as a session's checkpoint goes
    buffer.seek(0)
    states = torch.load(buffer, weights_only=True)
    second = Trainer.from_state_dicts(config, data, CPU, states)
    _train(second, range(split, PRETRAIN + FINETUNE), masks)
    for a, b in zip(_weights(straight), _weights(second), strict=True):
        assert torch.equal(a, b), split
    assert torch.equal(straight.grad_importances, second.grad_importances)
    assert torch.equal(straight.perm, second.perm)
    assert (second.step, second.position, second.grad_steps) == (
        straight.step, straight.position, straight.grad_steps)


def test_member_state_is_a_trainer_state(data, trained):
    """A member's state loads into a plain Trainer, which then steps like the member does in the group."""
    config, group, masks = trained
    states = group.state_dicts()
    for i, seed in enumerate(SEEDS):
        alone = Trainer(config.replace(seed=seed), data, CPU)
        assert set(states[i]) == set(alone.state_dict())
        alone.load_state_dict(states[i])
        assert params_sha256(alone.model) == params_sha256(group.member_model(i))
    continued = Trainer.from_state_dicts(config, data, CPU, states)
    continued.train_step()
    alone.train_step()
    assert params_sha256(continued.member_model(len(SEEDS) - 1)) == params_sha256(alone.model)


def test_losses_and_clusterability_per_member(data, trained):
    config, group, masks = trained
    fresh = Trainer(config, data, CPU, SEEDS)
    assert fresh.take_losses() is None
    for _ in range(5):
        fresh.train_step()
    losses = fresh.take_losses()
    for i, seed in enumerate(SEEDS):
        alone = Trainer(config.replace(seed=seed), data, CPU)
        for _ in range(5):
            alone.train_step()
        assert losses[i] == alone.take_loss()
    assert fresh.take_losses() is None  # taking the loss resets it
    for i, value in enumerate(group.clusterabilities(masks)):
        assert value == pytest.approx(clusterability(group.weight[i], masks[i]).item(), rel=1e-6)


def test_dead_member_never_crashes(data):
    """A member with all-zero weights has zero gradients: F stays zero and its weights stay finite."""
    config = _config()
    group = Trainer(config, data, CPU, [1, 2])
    states = group.state_dicts()
    for name in states[1]["model"]:
        states[1]["model"][name].zero_()
    group.load_state_dicts(states)
    masks = _masks(config.layer_shape, 2)
    for _ in range(3):
        group.train_step(capture=True)
    group.train_step(masks, torch.tensor([5.0, 5.0]))
    assert torch.count_nonzero(group.grad_importances[1]) == 0 and group.grad_importances[0].sum() > 0
    assert all(torch.isfinite(w).all() for w in group.weights)
    assert group.clusterabilities(masks)[1] == 0.0


def test_unfolded_trainer_gradients_are_folded_on_load(data):
    """Raw gradients a Trainer had not folded yet count like captured steps: (3,4)/5 squared gives (9, 16)/25."""
    config = _config()
    group = Trainer(config, data, CPU, [1])
    state = group.state_dicts()[0]
    out_w, in_w = config.layer_shape
    pending = torch.zeros(2, out_w, in_w)
    pending[0, 0, :2] = torch.tensor([3.0, 4.0])
    pending[1, 1, 1] = -2.0
    state["grad_pending"] = pending
    group.load_state_dicts([state])
    expected = torch.zeros(out_w, in_w, dtype=torch.float64)
    expected[0, :2] = torch.tensor([9 / 25, 16 / 25], dtype=torch.float64)
    expected[1, 1] = 1.0
    torch.testing.assert_close(group.grad_importances[0], expected)


def test_members_out_of_step_are_refused(data):
    config = _config()
    group = Trainer(config, data, CPU, [1, 2])
    ahead = Trainer(config, data, CPU, [1, 2])
    ahead.train_step()
    with pytest.raises(SessionError, match="same step"):
        group.load_state_dicts([group.state_dicts()[0], ahead.state_dicts()[1]])
    with pytest.raises(SessionError, match="2 models got 1"):
        group.load_state_dicts(group.state_dicts()[:1])
    with pytest.raises(ConfigError, match="λ per model"):
        group.train_step(_masks(config.layer_shape, 2))
    with pytest.raises(ConfigError, match="at least one seed"):
        Trainer(config, data, CPU, [])


def test_default_workers_fill_the_cores(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert default_workers(CPU) == 2  # the engine's one thread on a 2-core machine leaves one core idle
    torch.set_num_threads(2)
    try:
        assert default_workers(CPU) == 1  # its OpenMP threads already fill both
    finally:
        torch.set_num_threads(1)
    assert default_workers(torch.device("cuda")) == 1


class _Recorded(phases.Hooks):
    def __init__(self) -> None:
        self.records: list[dict] = []

    def record(self, record: dict) -> None:
        self.records.append(record)


def _job(total: int) -> Job:
    return Job(kind="finetune", total=total, lam=0.0)


def test_one_runner_trains_a_group_as_its_members_alone(data):
    """`phases.run` over a group, one lane per member, records for each lane what `phases.train` records for the
    member's model alone: the same evaluations, the same figures, the same weights."""
    config = _config(eval_every=20)
    masks = _masks(config.layer_shape, len(SEEDS))
    group = Trainer(config, data, CPU, SEEDS)
    lanes = [phases.Lane(_job(45), phases.Figures(), _Recorded()) for _ in SEEDS]
    settings = phases.TrainSettings("finetune", masks, tuple(LAMS), eval_every=20)
    assert phases.run(group, lanes, settings) == "done"
    for i, seed in enumerate(SEEDS):
        alone, hooks, figures = Trainer(config.replace(seed=seed), data, CPU), _Recorded(), phases.Figures()
        single = phases.TrainSettings("finetune", masks[i], LAMS[i], eval_every=20)
        assert phases.train(alone, _job(45), single, figures, hooks) == "done"
        evals = [r for r in hooks.records if r["type"] == "eval"]
        assert [r["step"] for r in evals] == [20, 40, 41, 45]  # every 20 steps, the epoch's end, the job's end
        assert [r for r in lanes[i].hooks.records if r["type"] == "eval"] == evals
        assert (lanes[i].figures.test_accuracy, lanes[i].figures.clusterability) == (
            figures.test_accuracy, figures.clusterability)
        assert params_sha256(group.member_model(i)) == params_sha256(alone.model)


def test_a_diverging_lane_leaves_and_the_others_train_on(data):
    config = _config()
    group = Trainer(config, data, CPU, SEEDS)
    states = group.state_dicts()
    states[1]["model"]["fc1.weight"].fill_(float("inf"))  # its loss is NaN from the first step
    group.load_state_dicts(states)
    failed = []
    lanes = [phases.Lane(_job(30), phases.Figures(), phases.Hooks(), fail=failed.append) for _ in SEEDS]
    assert phases.run(group, lanes, phases.TrainSettings("pretrain")) == "done"
    assert len(failed) == 1 and failed[0].startswith("The training loss became nan")
    assert group.n_models == 2 and lanes[0].job.done == lanes[2].job.done == 30
    for i, seed in ((0, SEEDS[0]), (1, SEEDS[2])):
        alone = Trainer(config.replace(seed=seed), data, CPU)
        for _ in range(30):
            alone.train_step()
        assert params_sha256(group.member_model(i)) == params_sha256(alone.model)
    alone_lane = [phases.Lane(_job(30), phases.Figures(), phases.Hooks())]
    poisoned = Trainer.from_state_dicts(config, data, CPU, [states[1]])
    with pytest.raises(TrainingError, match="loss became nan"):  # a session's job has no `fail`: it fails
        phases.run(poisoned, alone_lane, phases.TrainSettings("pretrain"))
