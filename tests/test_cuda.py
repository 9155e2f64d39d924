"""The GPU path: eager and CUDA-graph steps equal autograd, runs repeat, batched members equal single models, and a
session saved on a GPU continues on a CPU. Run with `pytest -m cuda` (benchmarks/gpu.sh does); skipped without CUDA.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from engine import Engine
from engine.config import Config
from engine.data import load_dataset
from engine.engine import params_sha256
from engine.metrics import block_mask, clusterability
from engine.model import build_mlp, studied_weight
from engine.trainer import Trainer
from tests.conftest import REPO, small_config

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]

CUDA = torch.device("cuda")
LAM = 3.0
STEPS, REGULAR_FROM = 90, 60  # 41 steps per epoch (batch 100 of 4096): partial batches stay eager, the rest replay


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", None, 42, CUDA)


def _config(**kw) -> Config:
    return Config(dataset="synthetic", batch_size=100, device="cuda", **kw)


def _mask(shape: tuple[int, int], seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return block_mask(rng.integers(0, 2, shape[0]), rng.integers(0, 2, shape[1]), CUDA)


def _train(trainer: Trainer, mask: torch.Tensor) -> None:
    for s in range(STEPS):
        regular = s >= REGULAR_FROM
        trainer.train_step(mask if regular else None, LAM, capture=not regular)


def _trainer(config: Config, data, graphs: bool, monkeypatch) -> Trainer:
    monkeypatch.setenv("CLUSTERLAB_CUDA_GRAPHS", "1" if graphs else "0")
    return Trainer(config, data, CUDA)


@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "cuda-graph"])
def test_step_equals_autograd(data, graphs, monkeypatch):
    """The hand-written step, eager or replayed from a graph, equals nn.Sequential + autograd + torch.optim.SGD."""
    config = _config()
    trainer = _trainer(config, data, graphs, monkeypatch)
    model = build_mlp(data.n_features, config.hidden, data.n_classes, config.seed).to(CUDA)
    weight = studied_weight(model, config.studied_layer)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)
    mask = _mask(config.layer_shape)
    generator = torch.Generator().manual_seed(config.seed)
    for s in range(STEPS):
        regular = s >= REGULAR_FROM
        trainer.train_step(mask if regular else None, LAM, capture=not regular)
        if s % trainer.steps_per_epoch == 0:
            perm = torch.randperm(data.n_train, generator=generator).to(CUDA)
        start = (s % trainer.steps_per_epoch) * config.batch_size
        idx = perm[start : start + config.batch_size]
        loss = torch.nn.functional.cross_entropy(model(data.train_x[idx]), data.train_y[idx])
        total = loss - LAM * clusterability(weight, mask) if regular else loss
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    assert bool(trainer._graphs) == graphs  # the path under test really ran
    for mine, ref in zip(trainer.model.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(mine, ref, rtol=1e-4, atol=1e-5)


def test_graph_and_eager_capture_the_same_gradients(data, monkeypatch):
    config = _config()
    graph, eager = (_trainer(config, data, g, monkeypatch) for g in (True, False))
    mask = _mask(config.layer_shape)
    _train(graph, mask)
    _train(eager, mask)
    assert graph._graphs and eager._graphs is None
    torch.testing.assert_close(graph.grad_importances, eager.grad_importances, rtol=1e-4, atol=1e-6)
    assert graph.grad_steps == eager.grad_steps == REGULAR_FROM


def test_runs_repeat_exactly(data):
    config = _config()
    runs = [Trainer(config, data, CUDA) for _ in range(2)]
    groups = [Trainer(config, data, CUDA, [1, 2, 3]) for _ in range(2)]
    masks = torch.stack([_mask(config.layer_shape, seed) for seed in range(3)])
    lams = torch.full((3,), LAM, device=CUDA)
    for s in range(STEPS):
        regular = s >= REGULAR_FROM
        for run in runs:
            run.train_step(masks[0] if regular else None, LAM, capture=not regular)
        for group in groups:
            group.train_step(masks if regular else None, lams, capture=not regular)
    assert params_sha256(runs[0].model) == params_sha256(runs[1].model)
    assert torch.equal(runs[0].grad_importances, runs[1].grad_importances)
    for i in range(3):
        assert params_sha256(groups[0].member_model(i)) == params_sha256(groups[1].member_model(i))
    assert torch.equal(groups[0].grad_importances, groups[1].grad_importances)


def test_batched_members_equal_single_models(data):
    config = _config()
    seeds, lams = [3, 11, 42], [3.0, 0.0, 40.0]
    group = Trainer(config, data, CUDA, seeds)
    masks = torch.stack([_mask(config.layer_shape, seed) for seed in range(3)])
    lam_tensor = torch.tensor(lams, device=CUDA)
    for s in range(STEPS):
        regular = s >= REGULAR_FROM
        group.train_step(masks if regular else None, lam_tensor, capture=not regular)
    assert group._graphs  # full unregularised batches replayed the group's graph
    accuracies = group.accuracies()
    for i, seed in enumerate(seeds):
        alone = Trainer(config.replace(seed=seed), data, CUDA)
        for s in range(STEPS):
            regular = s >= REGULAR_FROM
            alone.train_step(masks[i] if regular else None, lams[i], capture=not regular)
        for mine, ref in zip(group.member_model(i).parameters(), alone.model.parameters(), strict=True):
            torch.testing.assert_close(mine, ref, rtol=0, atol=1e-5)
        assert accuracies[i] == pytest.approx(alone.evaluate(), abs=2 / data.test_y.numel())


def test_session_saved_on_gpu_resumes_on_cpu(tmp_path):
    """A session trained and saved on the GPU opens where there is none (CUDA hidden) and trains on."""
    path = tmp_path / "gpu-session"
    engine = Engine.create(path, small_config(device="cuda"))
    try:
        assert engine.device.type == "cuda"
        engine.train(steps=40)
        assert engine.wait(timeout=120)
    finally:
        engine.close()
    saved = engine.snapshot()
    script = (
        "import json, sys\n"
        "from engine import Engine\n"
        "engine = Engine.open(sys.argv[1])\n"
        "opened = engine.snapshot()\n"
        "engine.train(steps=10)\n"
        "engine.wait(timeout=120)\n"
        "engine.close()\n"
        "print(json.dumps({'opened': opened, 'after': engine.snapshot()}))\n"
    )
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", script, str(path)], env=env, capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    opened, after = result["opened"], result["after"]
    assert opened["device"] == "cpu"
    assert opened["step"] == saved["step"] == 40
    assert opened["params_sha256"] == saved["params_sha256"]
    assert after["step"] == 50
