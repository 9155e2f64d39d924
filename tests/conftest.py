"""Shared fixtures: sessions under tmp_path, small engines on synthetic data, the clusterlab command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from engine import Config, Engine
from engine import events as ev

REPO = Path(__file__).resolve().parents[1]
MNIST_DIR = (REPO / ".." / "shared" / "datasets" / "mnist").resolve()
_SCRIPT = Path(sys.executable).with_name("clusterlab")
CLUSTERLAB = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "engine.cli"]
needs_mnist = pytest.mark.skipif(
    not (MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(), reason=f"MNIST IDX files not found in {MNIST_DIR}"
)


@pytest.fixture
def sessions(tmp_path, monkeypatch) -> Path:
    """An empty sessions root in tmp_path, named by $CLUSTERLAB_SESSIONS, so nothing lands in the repo."""
    root = tmp_path / "sessions"
    root.mkdir()
    monkeypatch.setenv("CLUSTERLAB_SESSIONS", str(root))
    return root


def small_config(**changes) -> Config:
    """A fast synthetic config: small hidden layers, CPU, no autosave in the way."""
    base = {"dataset": "synthetic", "hidden": (32, 32), "device": "cpu", "steps": 64, "finetune_epochs": 1,
            "lam": 5.0, "autosave_every": 10**6, "eval_every": 10**6}
    base.update(changes)
    return Config(**base)


class Recorder:
    """A subscriber that keeps every event (with its arrival time) and signals chosen ones."""

    def __init__(self) -> None:
        self.events: list[ev.Event] = []
        self.times: list[float] = []
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)

    def __call__(self, event: ev.Event) -> None:
        import time

        with self.changed:
            self.events.append(event)
            self.times.append(time.monotonic())
            self.changed.notify_all()

    def of(self, kind: type) -> list:
        with self.lock:
            return [e for e in self.events if isinstance(e, kind)]

    def wait_for(self, predicate, timeout: float = 10.0):
        """The first recorded event matching `predicate`, waiting up to `timeout` seconds for it."""
        with self.changed:
            found = self.changed.wait_for(lambda: next((e for e in self.events if predicate(e)), None), timeout)
        assert found is not None, f"no matching event within {timeout} s; got {self.events[-5:]}"
        return found


@pytest.fixture
def make_engine(sessions):
    """Create engines in the sessions root; every one is closed at the end of the test."""
    engines: list[Engine] = []

    def make(name: str = "s", **changes) -> Engine:
        engine = Engine.create(sessions / name, small_config(**changes))
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


def run_cli(*args: str, env_sessions: Path, timeout: float = 120, check_rc: int | None = 0):
    """Run `clusterlab ARGS` in a fresh process; returns the CompletedProcess."""
    env = {**os.environ, "CLUSTERLAB_SESSIONS": str(env_sessions)}
    proc = subprocess.run([*CLUSTERLAB, *args], cwd=env_sessions.parent, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if check_rc is not None:
        assert proc.returncode == check_rc, f"rc {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def run_json(*args: str, env_sessions: Path, timeout: float = 120) -> dict:
    proc = run_cli(*args, "--json", env_sessions=env_sessions, timeout=timeout)
    return json.loads(proc.stdout)


def uninterrupted(tmp_path_factory, flags: list[str], total: int) -> dict:
    """`clusterlab run FLAGS --json` from start to end in a fresh sessions root: the result an interrupted run with
    the same flags must reach exactly."""
    root = tmp_path_factory.mktemp("reference") / "sessions"
    root.mkdir()
    result = run_json("run", *flags, "--session", "ref", env_sessions=root, timeout=300)
    assert result["step"] == total
    return result
