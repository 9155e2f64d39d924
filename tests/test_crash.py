"""Interrupted runs in real processes: Ctrl-C mid-finetune and SIGKILL after an autosave resume exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import CLUSTERLAB, run_json, uninterrupted

# 100 pretraining steps, clustering, then 30 finetuning epochs (1920 steps): long enough to interrupt.
FLAGS = ["--dataset", "synthetic", "--device", "cpu", "--steps", "100", "--finetune-epochs", "30", "--lam", "5",
         "--k", "2"]
TOTAL = 100 + 30 * 64


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The uninterrupted run's results."""
    return uninterrupted(tmp_path_factory, FLAGS, TOTAL)


def start(sessions: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "CLUSTERLAB_SESSIONS": str(sessions)}
    return subprocess.Popen([*CLUSTERLAB, "run", *FLAGS, *extra], cwd=sessions.parent, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until(proc: subprocess.Popen, condition, what: str, timeout: float = 120.0) -> None:
    """Poll `condition` until it holds; fail if the process ends first or the deadline passes."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended (rc {proc.returncode}) before {what}:\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def records(path: Path) -> list[dict]:
    out = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


def test_ctrl_c_mid_finetune_then_resume_is_exact(sessions, reference):
    proc = start(sessions, "--session", "int")
    log = sessions / "int" / "metrics.jsonl"
    wait_until(proc, lambda: any(r.get("type") == "train" and r.get("phase") == "finetune" for r in records(log)),
               "a finetune record")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "clusterlab resume int" in err
    saved = json.loads((sessions / "int" / "session.json").read_text())
    assert saved["phase"] == "finetune" and 100 < saved["step"] < TOTAL
    resumed = run_json("resume", "int", env_sessions=sessions, timeout=300)
    assert resumed["step"] == TOTAL
    assert resumed["params_sha256"] == reference["params_sha256"]
    assert resumed["history"] == reference["history"]


def test_sigkill_after_an_autosave_then_resume_is_exact(sessions, reference):
    proc = start(sessions, "--session", "killed", "--autosave-every", "50")
    session_file = sessions / "killed" / "session.json"

    def autosaved_mid_training() -> bool:
        try:
            data = json.loads(session_file.read_text())
        except (OSError, json.JSONDecodeError):
            return False
        plan = data.get("plan") or [{}]
        return plan[0].get("kind") in ("pretrain", "finetune") and 0 < plan[0].get("done", 0) < plan[0]["total"]

    wait_until(proc, autosaved_mid_training, "an autosave mid-training")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    resumed = run_json("resume", "killed", env_sessions=sessions, timeout=300)
    assert resumed["step"] == TOTAL
    assert resumed["params_sha256"] == reference["params_sha256"]
    steps = [r["step"] for r in records(sessions / "killed" / "metrics.jsonl") if r["type"] == "train"]
    assert steps and steps[-1] == TOTAL
    assert len(steps) == len(set(steps)), "a train step was logged twice"
