"""What a hostile user tried: kills at any moment, concurrent creates, repeated signals, slow saves, bad subscribers."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from engine import Engine
from engine import engine as engine_module  # noqa: I001 - after `events`, as the module is named
from engine import events as ev
from engine.errors import SessionError
from engine.session import claim_directory
from tests.conftest import CLUSTERLAB, run_cli, run_json, small_config
from tests.test_crash import FLAGS, TOTAL, records, reference, start, wait_until  # noqa: F401 - a fixture


def first_record(path) -> bool:
    return any(r.get("type") == "train" for r in records(path))


def test_kills_at_ten_random_moments_resume_to_the_uninterrupted_result(sessions, reference):  # noqa: F811
    chooser = random.Random(7)
    log = sessions / "chaos" / "metrics.jsonl"
    proc = start(sessions, "--session", "chaos", "--autosave-every", "300")
    env = {**os.environ, "CLUSTERLAB_SESSIONS": str(sessions)}
    for kill in range(10):
        if kill == 0:  # the first kill comes right after the first progress, before any autosave
            wait_until(proc, lambda: first_record(log), "the first train record", timeout=120)
        else:
            time.sleep(chooser.uniform(0.0, 1.2))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        proc = subprocess.Popen([*CLUSTERLAB, "resume", "chaos"], cwd=sessions.parent, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err  # it finished the run (or found it finished: "nothing left to do")
    resumed = run_json("resume", "chaos", "--steps", "0", env_sessions=sessions, timeout=300)
    assert resumed["step"] == TOTAL
    assert resumed["params_sha256"] == reference["params_sha256"]
    logged = records(log)
    steps = [r["step"] for r in logged if r["type"] == "train"]
    assert steps == sorted(set(steps)), "a train step was logged twice or out of order"
    evals = [(r["phase"], r["step"], r["test_accuracy"]) for r in logged if r["type"] == "eval"]
    expected = [(r["phase"], r["step"], r["test_accuracy"])
                for r in records(Path(reference["session"]) / "metrics.jsonl") if r["type"] == "eval"]
    assert evals == expected, "an evaluation is missing or logged twice"


def _claim(root: str, barrier, results) -> None:
    from pathlib import Path

    barrier.wait()
    try:
        lock = claim_directory(Path(root) / "same")
        (Path(root) / "same" / "mine.txt").write_text(str(os.getpid()))
        results.put(("won", os.getpid()))
        time.sleep(0.05)
        lock.release()
    except SessionError as exc:
        results.put(("lost", str(exc)))


def test_twenty_synchronised_creates_leave_one_winner_and_its_files(tmp_path):
    context = multiprocessing.get_context("fork")
    for attempt in range(20):
        root = tmp_path / f"r{attempt}"
        root.mkdir()
        barrier, results = context.Barrier(3), context.Queue()
        procs = [context.Process(target=_claim, args=(str(root), barrier, results)) for _ in range(3)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(30)
        outcomes = [results.get(timeout=5) for _ in procs]
        winners = [pid for what, pid in outcomes if what == "won"]
        assert len(winners) == 1, outcomes
        assert all("already exists" in str(why) for what, why in outcomes if what == "lost")
        assert (root / "same" / "mine.txt").read_text() == str(winners[0])  # nobody deleted the winner's work
        assert (root / "same" / ".lock").exists()


def test_three_simultaneous_cli_creates_of_one_name(sessions):
    env = {**os.environ, "CLUSTERLAB_SESSIONS": str(sessions)}
    command = [*CLUSTERLAB, "run", "--dataset", "synthetic", "--hidden", "16,16", "--device", "cpu", "--steps", "20",
               "--finetune-epochs", "0", "--session", "race"]
    procs = [subprocess.Popen(command, cwd=sessions.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(3)]
    outcomes = [(p.wait(120), p.communicate()[1]) for p in procs]
    assert sorted(rc for rc, _ in outcomes) == [0, 2, 2], outcomes
    assert all("Traceback" not in err for _, err in outcomes)
    assert all("already exists" in err or "open in another" in err for rc, err in outcomes if rc == 2)
    assert run_json("resume", "race", "--steps", "0", env_sessions=sessions)["step"] == 20


def test_repeated_sigterm_during_the_stop_never_cuts_the_final_save(sessions):
    proc = start(sessions, "--session", "term", "--autosave-every", "100000")
    log = sessions / "term" / "metrics.jsonl"
    wait_until(proc, lambda: first_record(log), "the first train record")
    for _ in range(3):
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.01)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "terminate called" not in err and "Traceback" not in err
    saved = json.loads((sessions / "term" / "session.json").read_text())
    assert saved["step"] == max(r["step"] for r in records(log))  # the final save covers every logged step


def test_wait_returns_only_after_every_event_was_delivered(make_engine):
    engine = make_engine()
    delivered = []

    def slow(event: ev.Event) -> None:
        if isinstance(event, ev.StateChanged) and event.state == ev.IDLE and event.previous != ev.IDLE:
            time.sleep(0.5)
            delivered.append(event)
        if isinstance(event, ev.Failed):
            time.sleep(0.3)
            delivered.append(event)

    engine.subscribe(slow)
    engine.train(steps=5)
    assert engine.wait(30)
    assert delivered and isinstance(delivered[-1], ev.StateChanged)
    engine.finetune()  # refused: no clusters
    assert engine.wait(30)
    assert isinstance(delivered[-1], ev.Failed)


def test_close_waits_for_a_slow_save_and_says_so(make_engine, monkeypatch, capsys):
    engine = make_engine()
    engine.study.unsaved = lambda plan: True  # a change to save (one closed as it was opened is not written)
    real_save = engine.study.save
    finished = []

    def slow_save(*args, **kwargs):
        time.sleep(0.6)
        real_save(*args, **kwargs)
        finished.append(True)

    monkeypatch.setattr(engine_module, "CLOSE_NOTICE_S", 0.1)
    engine.study.save = slow_save
    engine.close()
    assert finished  # close() returned only once the final save was written
    assert "still saving" in capsys.readouterr().err


def test_a_raising_subscriber_is_reported_once_then_counted(make_engine, caplog):
    engine = make_engine()

    def broken(event: ev.Event) -> None:
        raise RuntimeError("subscriber bug")

    engine.subscribe(broken)
    with caplog.at_level(logging.WARNING, logger="clusterlab"):
        engine.train(steps=30)
        assert engine.wait(30)
        engine.close()
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1
    assert any("raised" in r.getMessage() and "more times" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("flags, word", [(["--lr", "1e308"], "--lr"), (["--lam", "1e300"], "--lam"),
                                         (["--hidden", "100000,100000"], "memory"),
                                         (["--batch-size", "99999999999999999999"], "--batch-size"),
                                         (["--seed", "99999999999999999999"], "--seed")])
def test_impossible_settings_are_refused_before_any_work(sessions, flags, word):
    proc = run_cli("run", "--dataset", "synthetic", "--device", "cpu", *flags, env_sessions=sessions, check_rc=2)
    assert word in proc.stderr and "Traceback" not in proc.stderr
    assert list(sessions.iterdir()) == []


def test_session_names_are_never_cut_at_80_columns(sessions):
    names = ["digits-20261126-161502-12", "a-rather-long-but-valid-session-name-for-a-sweep.s3.weights.k2.lam10"]
    for name in names:
        Engine.create(sessions / name, small_config()).close()
    env = {**os.environ, "CLUSTERLAB_SESSIONS": str(sessions), "COLUMNS": "80"}
    out = subprocess.run([*CLUSTERLAB, "sessions"], cwd=sessions.parent, env=env, capture_output=True, text=True,
                         check=True).stdout
    for name in names:
        assert name in out  # whole, on one line: the string `resume` needs
    assert max(len(line) for line in out.splitlines()) <= 80


def test_a_session_closed_as_it_was_opened_is_not_written_again(make_engine, sessions):
    make_engine("same").close()
    session = sessions / "same" / "session.json"
    written = session.stat()
    Engine.open(sessions / "same").close()  # opened to look (the UI viewing a sweep member), then closed
    assert (session.stat().st_ino, session.stat().st_mtime_ns) == (written.st_ino, written.st_mtime_ns)
