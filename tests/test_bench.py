"""`clusterlab bench` runs and reports."""

from __future__ import annotations

import json

import torch

from engine import bench
from engine.cli import main


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
