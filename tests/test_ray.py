"""The Ray executor on a local Ray (2 CPUs, loopback only): the in-process table, retried workers, the CLI."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

from engine.cli import main
from engine.sweep_run import run_sweep
from tests.conftest import run_cli

SETTINGS = {"dataset": "digits", "hidden": (16, 16), "device": "cpu", "lr": 0.05, "epochs": 1, "finetune_epochs": 1,
            "null_samples": 4}
GRID = {"seeds": [1, 2], "lams": [0, 5]}
FLAGS = ["--seeds", "1,2", "--lam", "0,5", "--dataset", "digits", "--hidden", "16,16", "--device", "cpu", "--lr",
         "0.05", "--epochs", "1", "--finetune-epochs", "1", "--null-samples", "4", "--json"]


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module, started as the executor starts one (tasks' workers then stay warm)."""
    if importlib.util.find_spec("ray") is None:
        pytest.skip("ray is not installed (pip install -e '.[ray]')")
    from engine.ray_executor import connect

    ray, started = connect()
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def in_process(tmp_path_factory):
    return run_sweep("sw", SETTINGS, GRID, root=tmp_path_factory.mktemp("inprocess")).to_dict()


def test_ray_sweep_gives_the_in_process_table(local_ray, in_process, tmp_path):
    from engine.ray_executor import RayExecutor

    result = run_sweep("sw", SETTINGS, GRID, root=tmp_path, executor=RayExecutor())
    assert result.ran == 8 and result.to_dict() == in_process  # every member's params_sha256 and figures
    finetuned = tmp_path / "sw.s2.weights.k2.lam5"
    assert sorted(p.name for p in finetuned.iterdir() if not p.name.startswith(".")) == [
        "checkpoint-000000046.pt", "metrics.jsonl", "session.json"]
    assert not [p for p in tmp_path.rglob("*.tmp")]


def flaky(settings: dict, shipped: dict):
    """A task whose first run of the pretraining of seed 1 loses its worker process, and whose first run of that
    seed's clustering raises an OSError; it counts its runs beside the sessions root (one filesystem here)."""
    from engine.ray_executor import run_shipped

    attempts = Path(settings["root"]).parent / "attempts"
    attempts.mkdir(exist_ok=True)
    with open(attempts / settings["name"], "a") as f:
        f.write("x")
    first = (attempts / settings["name"]).read_text() == "x"
    if first and settings["name"] == "sw.s1":
        os._exit(1)  # the worker dies mid-task, as on a lost node
    if first and settings["name"] == "sw.s1.weights.k2":
        raise OSError("disk full on the worker")
    return run_shipped(settings, shipped)


def always_failing(settings: dict, shipped: dict):
    raise OSError("no space left on the worker")


def test_a_lost_worker_and_an_os_error_are_retried(local_ray, in_process, tmp_path):
    from engine.ray_executor import RayExecutor

    root = tmp_path / "sessions"
    result = run_sweep("sw", SETTINGS, GRID, root=root, executor=RayExecutor(task=flaky))
    assert result.to_dict() == in_process
    runs = {p.name: len(p.read_text()) for p in (tmp_path / "attempts").iterdir()}
    assert runs["sw.s1"] == runs["sw.s1.weights.k2"] == 2 and runs["sw.s2"] == 1


def test_retries_run_out_as_a_failed_member(local_ray, tmp_path):
    from engine.ray_executor import RayExecutor

    result = run_sweep("sw", SETTINGS, {"seeds": [1], "lams": [0]}, root=tmp_path,
                       executor=RayExecutor(task=always_failing, max_retries=1))
    errors = {m["name"]: m["error"] for m in result.failures}
    assert errors["sw.s1"] == "its Ray task failed after 1 retries: OSError: no space left on the worker"
    assert errors["sw.s1.weights.k2"] == "not run: sw.s1 did not finish"


def test_cli_joins_a_ray_cluster_by_address(local_ray, in_process, sessions):
    address = local_ray.get_runtime_context().gcs_address
    assert address.startswith("127.0.0.1:")  # the local Ray listens on the loopback interface only
    proc = run_cli("sweep", "sw", *FLAGS, "--executor", "ray", "--ray-address", address, env_sessions=sessions)
    assert json.loads(proc.stdout) == in_process


def test_missing_ray_is_one_sentence(capsys, sessions, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    assert main(["sweep", "sw", *FLAGS, "--executor", "ray"]) == 2
    out, err = capsys.readouterr()
    assert err == "clusterlab: error: Ray is not installed; install the ray extra: pip install -e '.[ray]'.\n"
    assert list(sessions.iterdir()) == []  # nothing started
