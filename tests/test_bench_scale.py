"""`clusterlab bench` measures the roofline and batched training, and refuses a --data-dir without MNIST."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from engine import bench
from engine.bench_reference import Roofline
from engine.cli import main
from engine.config import Config
from engine.data import load_dataset
from engine.trainer import Trainer

CPU = torch.device("cpu")


def test_bench_reports_roofline_and_batched_training(capsys, monkeypatch):
    monkeypatch.setattr(bench, "WIDE", 96)
    monkeypatch.setattr(bench, "WARMUP_STEPS", 5)
    monkeypatch.setattr(bench, "BATCHED_SIZES", (1, 4))
    monkeypatch.setattr(bench, "BATCHED_ROUNDS", 2)
    assert main(["bench", "--dataset", "synthetic", "--steps", "30", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["roofline_steps_per_s"] > 0 and r["roofline_share"] > 0
    assert r["engine_steps_per_s"] > 0  # the figures that were there stay
    sequential = r["sequential_model_steps_per_s"]
    assert sequential > 0 and set(r["batched_model_steps_per_s"]) == {"1", "4"}
    for m, rate in r["batched_model_steps_per_s"].items():
        assert rate > 0 and r["batched_speedups"][m] == pytest.approx(rate / sequential)
    assert r["batched_speedup"] == r["batched_speedups"]["4"]
    assert isinstance(r["batched_workers"], int) and r["batched_workers"] >= 1
    assert "cuda_graph_steps_per_s" not in r  # a CUDA-only figure


def test_bench_data_dir_without_mnist_is_an_error(capsys, tmp_path):
    assert main(["bench", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--data-dir" in err and str(tmp_path) in err and "Traceback" not in err


def _gemms(run) -> Counter:
    """The matrix products `run` does, as a multiset of (rows, inner, cols)."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        run()
    found: Counter = Counter()
    for event in prof.events():
        shapes = event.input_shapes
        if event.name == "aten::mm":
            (m, k), (_, n) = shapes[0], shapes[1]
        elif event.name == "aten::addmm_":
            (m, k), (_, n) = shapes[1], shapes[2]
        else:
            continue
        found[(m, k, n)] += 1
    return found


def test_roofline_times_exactly_the_steps_gemms():
    """Same products, same sizes: the forward, input-gradient and weight-gradient GEMMs of one training step."""
    data = load_dataset("synthetic", None, 42, CPU)
    config = Config(dataset="synthetic", hidden=(32, 24, 16), batch_size=50)
    trainer = Trainer(config, data, CPU)
    trainer.train_step()
    roofline = Roofline(config, data, CPU)
    step = _gemms(lambda: trainer.train_step(capture=True))
    assert _gemms(lambda: roofline.run(1, lambda: None)) == step
    assert sum(step.values()) == 4 + 3 + 4  # four layers: forwards, input gradients (not the first), updates
