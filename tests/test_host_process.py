"""Hosts in real processes: detach, tail, remote pause/resume, stop, SIGKILL, SIGTERM, SIGHUP, idle exit; exact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from engine.client import Client, probe, socket_path, start_host
from engine.errors import SessionError
from engine.snapshot import Snapshot
from tests.conftest import CLUSTERLAB, run_cli, run_json, uninterrupted

# 3000 pretraining steps (seconds even on a fast CPU: time for `remote` to act mid-run), clustering, then 6
# finetuning epochs of 64 steps.
PRETRAIN = 3000
FLAGS = ["--dataset", "synthetic", "--device", "cpu", "--steps", str(PRETRAIN), "--finetune-epochs", "6",
         "--lam", "5", "--k", "2"]
TOTAL = PRETRAIN + 6 * 64
DEADLINE_S = 180.0


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The same settings run uninterrupted, in the foreground."""
    return uninterrupted(tmp_path_factory, FLAGS, TOTAL)


class Tail:
    """`clusterlab tail NAME --json` in its own process; its events collected by a thread as they come."""

    def __init__(self, sessions: Path, name: str) -> None:
        env = {**os.environ, "CLUSTERLAB_SESSIONS": str(sessions)}
        self.proc = subprocess.Popen([*CLUSTERLAB, "tail", name, "--json"], env=env, cwd=sessions.parent,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.events: list[dict] = []
        self.ended = False
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self.changed:
                self.events.append(json.loads(line))
                self.changed.notify_all()
        with self.changed:
            self.ended = True
            self.changed.notify_all()

    def wait_for(self, predicate, what: str, after: int = 0) -> dict:
        """The first event from index `after` on that satisfies `predicate`, as soon as tail prints it."""
        def found():
            return next((e for e in self.events[after:] if predicate(e)), None) or (self.ended and "ended")

        with self.changed:
            event = self.changed.wait_for(found, DEADLINE_S)
        assert event and event != "ended", f"tail saw no {what} (ended: {self.ended}); last: {self.events[-3:]}"
        return event

    def state(self, state: str, after: int = 0) -> dict:
        return self.wait_for(lambda e: e["kind"] == "StateChanged" and e["state"] == state, f"state {state}", after)

    def end(self) -> int:
        rc = self.proc.wait(DEADLINE_S)
        self.reader.join(DEADLINE_S)
        assert "Traceback" not in self.proc.stderr.read()
        return rc


def cli(sessions: Path, *args: str, rc: int = 0) -> subprocess.CompletedProcess:
    return run_cli(*args, env_sessions=sessions, timeout=DEADLINE_S, check_rc=rc)


def host_pid(sessions: Path, name: str) -> int:
    welcome = probe(sessions / name)
    assert welcome is not None, f"no host answers for {name}"
    return welcome["pid"]


def gone(pid: int) -> bool:
    """The process has ended (a zombie awaiting its reaper counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX"
    except (FileNotFoundError, ProcessLookupError):
        return True


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def saved(sessions: Path, name: str) -> dict:
    return json.loads((sessions / name / "session.json").read_text())


def test_detached_tailed_paused_stopped_and_resumed_is_exact(sessions, reference):
    out = cli(sessions, "run", *FLAGS, "--session", "d", "--detach").stdout
    assert out.strip() == "d"
    tail = Tail(sessions, "d")
    tail.wait_for(lambda e: e["kind"] == "Progress", "progress")
    ps = json.loads(cli(sessions, "ps", "--json").stdout)
    assert [(r["name"], r["clients"]) for r in ps] == [("d", 1)] and ps[0]["pid"] == host_pid(sessions, "d")
    cli(sessions, "remote", "d", "pause")
    paused = len(tail.events)
    tail.state("paused")
    with Client.connect(sessions / "d") as ui:  # a second client attaches, sees the paused run, and detaches
        assert ui.snapshot.state == "paused" and ui.history
    cli(sessions, "remote", "d", "resume")
    tail.wait_for(lambda e: e["kind"] == "StateChanged" and e["previous"] == "paused", "the resume", paused)
    resumed = len(tail.events)
    tail.wait_for(lambda e: e["kind"] == "Progress", "progress again", resumed)
    cli(sessions, "remote", "d", "pause")
    tail.state("paused", resumed)
    stopped = cli(sessions, "stop", "d")
    assert "clusterlab resume d" in stopped.stderr
    assert tail.end() == 0  # the tail ends with the host
    assert 0 < saved(sessions, "d")["step"] < TOTAL
    assert probe(sessions / "d") is None and not socket_path(sessions / "d").exists()
    resumed = run_json("resume", "d", env_sessions=sessions, timeout=300)
    assert resumed["step"] == TOTAL
    assert resumed["params_sha256"] == reference["params_sha256"]
    assert resumed["history"] == reference["history"]


@pytest.mark.parametrize("moment", ["pretraining", "paused", "finetuning"])
def test_sigkill_of_the_host_then_resume_is_exact(sessions, reference, moment):
    cli(sessions, "run", *FLAGS, "--session", "k", "--detach", "--autosave-every", "50")
    pid = host_pid(sessions, "k")
    tail = Tail(sessions, "k")
    if moment == "paused":
        tail.wait_for(lambda e: e["kind"] == "Progress", "progress")
        cli(sessions, "remote", "k", "pause")
        tail.state("paused")
    else:
        phase = "pretrain" if moment == "pretraining" else "finetune"
        tail.wait_for(lambda e: e["kind"] == "Saved" and e["reason"] == "autosave" and e["step"] > 0
                      and (phase == "pretrain") == (e["step"] <= PRETRAIN), f"an autosave while {moment}")
    os.kill(pid, signal.SIGKILL)
    tail.end()
    wait_until(lambda: gone(pid), "the killed host to go")
    assert socket_path(sessions / "k").exists() and probe(sessions / "k") is None  # stale: nobody listens
    assert json.loads(cli(sessions, "ps", "--json").stdout) == []
    if moment == "finetuning":  # a new host replaces the stale socket and continues the saved plan
        start_host("k", plan="continue", idle_exit_s=600)
        with Client.connect(sessions / "k") as client:
            if client.snapshot.plan:
                client.wait_for(lambda s: isinstance(s, Snapshot) and s.state == "idle" and not s.plan, DEADLINE_S)
            status = client.command("status")["result"]
            assert client.command("stop-host")["ok"]
            list(client.updates())
        assert (status["step"], status["params_sha256"]) == (TOTAL, reference["params_sha256"])
    else:
        resumed = run_json("resume", "k", env_sessions=sessions, timeout=300)
        assert resumed["step"] == TOTAL and resumed["params_sha256"] == reference["params_sha256"]
    steps = [r["step"] for r in map(json.loads, (sessions / "k" / "metrics.jsonl").read_text().splitlines())
             if r["type"] == "train"]
    assert len(steps) == len(set(steps)), "a train step was logged twice"


def test_the_host_ignores_sighup_and_saves_on_sigterm(sessions):
    cli(sessions, "run", *FLAGS, "--session", "t", "--detach")
    pid = host_pid(sessions, "t")
    assert os.getsid(pid) == pid  # its own session: no controlling terminal to lose
    tail = Tail(sessions, "t")
    tail.wait_for(lambda e: e["kind"] == "Progress", "progress")
    os.kill(pid, signal.SIGHUP)  # what a closed terminal sends; the host has none, and ignores it anyway
    tail.wait_for(lambda e: e["kind"] == "Progress", "progress after SIGHUP", len(tail.events))
    assert probe(sessions / "t")["pid"] == pid
    refused = cli(sessions, "resume", "t", rc=2).stderr  # a second process must not open the session it runs
    assert f"t is running in a host (pid {pid})" in refused and len(refused.splitlines()) == 1
    os.kill(pid, signal.SIGTERM)
    closed = tail.wait_for(lambda e: e["kind"] == "Saved" and e["reason"] == "close", "the final save")
    tail.end()
    wait_until(lambda: gone(pid), "the host to end")
    assert saved(sessions, "t")["step"] == closed["step"] > 0
    log = (sessions / "t" / "host.log").read_text()
    assert "SIGTERM" in log and "Traceback" not in log


def test_the_host_ends_by_itself_once_done_and_unattended(sessions):
    started = json.loads(cli(sessions, "run", "--dataset", "synthetic", "--device", "cpu", "--steps", "20",
                             "--finetune-epochs", "0", "--session", "i", "--detach", "--idle-exit", "0.5",
                             "--json").stdout)
    pid = started["pid"]
    assert started["name"] == "i" and Path(started["session"]) == sessions / "i"
    wait_until(lambda: gone(pid), "the idle host to end")
    assert saved(sessions, "i")["step"] == 20 and not socket_path(sessions / "i").exists()
    assert "no client and nothing to run" in (sessions / "i" / "host.log").read_text()


def test_a_host_that_cannot_start_says_why(sessions, make_engine):
    make_engine("busy")  # this process holds the session open
    started = time.monotonic()
    with pytest.raises(SessionError, match="open in another clusterlab"):
        start_host("busy")
    assert time.monotonic() - started < 60  # answered by the host itself, not by the starter's timeout
    line = cli(sessions, "run", *FLAGS, "--session", "busy", "--detach", rc=2).stderr.strip()
    assert line.startswith("clusterlab: error: ") and "already exists" in line and len(line.splitlines()) == 1


def test_sighup_stops_a_foreground_run_and_saves(sessions):
    env = {**os.environ, "CLUSTERLAB_SESSIONS": str(sessions)}
    proc = subprocess.Popen([*CLUSTERLAB, "run", *FLAGS, "--session", "f"], cwd=sessions.parent, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = sessions / "f" / "metrics.jsonl"
    wait_until(lambda: log.is_file() and '"type":"train"' in log.read_text(), "a train record")
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == 130 and "Traceback" not in err and "clusterlab resume f" in err
    steps = [r["step"] for r in map(json.loads, log.read_text().splitlines()) if r["type"] == "train"]
    assert saved(sessions, "f")["step"] >= steps[-1] > 0  # saved at the step it stopped: nothing lost
