"""The threaded Engine: commands return at once, pause/stop/close are prompt, failures leave it usable."""

from __future__ import annotations

import dataclasses
import json
import threading
import time

import pytest

from engine import events as ev
from engine.cli import main
from tests.conftest import Recorder

LONG = 10**7  # steps: a job that would run for hours


def training(make_engine):
    """An engine busy with a long pretraining job that has reported progress, and its event recorder."""
    engine = make_engine()
    rec = Recorder()
    engine.subscribe(rec)
    engine.train(steps=LONG)
    rec.wait_for(lambda e: isinstance(e, ev.Progress))
    return engine, rec


def test_commands_return_at_once(make_engine):
    engine = make_engine()
    rec = Recorder()
    engine.subscribe(rec)
    started = time.monotonic()
    engine.train(steps=LONG)
    engine.cluster()
    engine.finetune(epochs=1)
    assert time.monotonic() - started < 0.5
    rec.wait_for(lambda e: isinstance(e, ev.Progress))
    assert engine.state == ev.TRAINING
    assert [j["kind"] for j in engine.snapshot().plan] == ["pretrain", "cluster", "significance", "finetune"]


def test_pause_takes_effect_within_100_ms_and_resume_goes_on(make_engine):
    engine, rec = training(make_engine)
    asked = time.monotonic()
    engine.pause()
    paused = rec.wait_for(lambda e: isinstance(e, ev.StateChanged) and e.state == ev.PAUSED, timeout=5)
    latency = rec.times[rec.events.index(paused)] - asked
    assert latency < 0.1, f"pause took {latency:.3f} s"
    step = engine.snapshot().step
    assert engine.wait(0.2) is False  # paused is busy, not idle
    assert engine.snapshot().step == step  # and no step ran meanwhile
    engine.resume()
    rec.wait_for(lambda e: isinstance(e, ev.Progress) and e.step > step)
    assert engine.state == ev.TRAINING


def test_pause_and_resume_change_nothing(make_engine):
    plain = make_engine("plain", eval_every=50)
    plain.train(steps=150)
    assert plain.wait(30)

    paused = make_engine("paused", eval_every=50)
    was_paused = threading.Event()

    def pause_mid_job(event):
        if isinstance(event, ev.Evaluated) and event.step == 50:
            paused.pause()  # on the engine thread: takes effect at the next step boundary
        if isinstance(event, ev.StateChanged) and event.state == ev.PAUSED:
            was_paused.set()

    paused.subscribe(pause_mid_job)
    paused.train(steps=150)
    assert was_paused.wait(10)
    assert paused.snapshot().step == 50
    paused.resume()
    assert paused.wait(30)
    assert paused.snapshot().step == plain.snapshot().step == 150
    assert paused.snapshot().params_sha256 == plain.snapshot().params_sha256
    assert paused.snapshot().params_sha256 == plain.snapshot().params_sha256


def test_a_raising_subscriber_does_not_kill_the_engine(make_engine):
    engine = make_engine()

    def broken(event):
        raise RuntimeError("subscriber bug")

    rec = Recorder()
    engine.subscribe(broken)
    engine.subscribe(rec)
    engine.train(steps=30)
    assert engine.wait(30)
    finished = rec.of(ev.PhaseFinished)
    assert [(f.phase, f.step) for f in finished] == [("pretrain", 30)]
    assert rec.of(ev.Progress)[-1].job_step == 30
    assert engine.state == ev.IDLE


def test_failure_mid_job_then_a_successful_job(make_engine):
    engine = make_engine()
    rec = Recorder()
    engine.subscribe(rec)
    real_step = engine.study.trainer.train_step
    calls = {"n": 0}

    def failing_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 20:
            raise RuntimeError("device fell over")
        return real_step(*args, **kwargs)

    engine.study.trainer.train_step = failing_step
    engine.train(steps=50)
    engine.cluster()  # queued behind the failing job: it does not run
    assert engine.wait(30)
    failed = rec.of(ev.Failed)
    assert len(failed) == 1 and failed[0].job == "pretrain" and "device fell over" in failed[0].message
    assert rec.of(ev.ClustersFound) == []
    snap = engine.snapshot()
    assert snap.step == 0  # back to the last save: the plan, saved before its first step, held for a retry
    assert snap.held and snap.plan[0]["kind"] == "pretrain" and "continue" in snap.allowed

    engine.study.trainer.train_step = real_step
    engine.train(steps=40)
    engine.cluster()
    assert engine.wait(30)
    assert len(rec.of(ev.Failed)) == 1
    assert [f.phase for f in rec.of(ev.PhaseFinished)] == ["pretrain", "cluster"]
    assert engine.snapshot().step == 40


def test_diverging_loss_fails_the_job_and_keeps_the_engine(make_engine):
    engine = make_engine(lr=1e30)
    rec = Recorder()
    engine.subscribe(rec)
    engine.train(steps=100)
    assert engine.wait(30)
    (failed,) = rec.of(ev.Failed)
    assert "loss became" in failed.message
    assert engine.state == ev.IDLE
    engine.cluster()  # still takes commands
    assert engine.wait(30)
    assert len(rec.of(ev.ClustersFound)) == 1


def test_impossible_commands_are_refused_with_failed_events(make_engine):
    engine = make_engine()
    rec = Recorder()
    engine.subscribe(rec)
    engine.finetune()  # no clusters yet
    engine.cluster(k=33)  # wider than the 32-unit layer
    engine.cluster(k=1)
    engine.cluster(source="biases")
    engine.finetune(lam=-1.0)
    engine.finetune(lam=float("nan"))
    engine.train(steps=-1)
    engine.train(epochs=-1)
    assert engine.wait(10)
    failed = rec.of(ev.Failed)
    assert [f.job for f in failed] == ["finetune", "cluster", "cluster", "cluster", "finetune", "finetune", "train",
                                       "train"]
    assert "cluster" in failed[0].message
    assert "--k" in failed[1].message and "--lam" in failed[4].message
    engine.cluster(source="gradients")  # nothing captured yet: fails in the job, not on this thread
    assert engine.wait(10)
    assert rec.of(ev.Failed)[-1].job == "cluster"
    assert engine.snapshot().plan == () and engine.snapshot().step == 0
    engine.train(steps=20)
    engine.cluster(source="gradients")
    engine.finetune(epochs=1)
    assert engine.wait(30)
    assert [f.phase for f in rec.of(ev.PhaseFinished)] == ["pretrain", "cluster", "finetune"]


def test_close_while_training_is_prompt_and_leaves_no_thread(make_engine):
    engine, rec = training(make_engine)
    started = time.monotonic()
    engine.close()
    assert time.monotonic() - started < 2.0
    assert not engine._thread.is_alive()
    assert not [t for t in threading.enumerate() if t.name == "clusterlab-engine"]
    assert engine.state == ev.CLOSED
    # the unfinished job was saved in the plan, to be continued later
    session = json.loads((engine.path / "session.json").read_text())
    assert session["plan"][0]["kind"] == "pretrain" and 0 < session["plan"][0]["done"] < LONG
    assert session["step"] == session["plan"][0]["done"]


def test_progress_is_throttled_and_the_last_step_arrives(make_engine):
    engine = make_engine()
    rec = Recorder()
    engine.subscribe(rec)
    engine.train(steps=600)
    assert engine.wait(60)
    with rec.lock:
        progress = [(e, t) for e, t in zip(rec.events, rec.times, strict=True) if isinstance(e, ev.Progress)]
    assert progress, "no progress at all"
    last, _ = progress[-1]
    assert last.job_step == last.job_total == 600 and last.step == 600
    # Between consecutive reports at least 1/20 s passes (the last one may come sooner):
    # n reports need (n - 2) intervals, so at most ~20 events per second of training.
    span = progress[-1][1] - progress[0][1]
    assert (len(progress) - 2) / 20 <= span + 0.02, (len(progress), span)
    steps = [e.job_step for e, _ in progress]
    assert steps == sorted(steps)


def test_the_events_a_plan_sends_are_frozen_dataclasses(make_engine):
    engine = make_engine()
    rec = Recorder()
    engine.subscribe(rec)
    engine.plan_default()
    assert engine.wait(30)
    kinds = {type(e) for e in rec.events}
    assert {ev.StateChanged, ev.Progress, ev.Evaluated, ev.ClustersFound, ev.PhaseFinished, ev.Saved,
            ev.LogLine} <= kinds
    for event in rec.events:
        assert isinstance(event, ev.Event) and dataclasses.is_dataclass(event)
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(event, dataclasses.fields(event)[0].name, 1)


def test_stop_ends_the_running_job_and_drops_the_queue(make_engine):
    engine = make_engine()
    rec = Recorder()
    engine.subscribe(rec)
    engine.train(steps=LONG)
    engine.cluster()
    engine.finetune()
    rec.wait_for(lambda e: isinstance(e, ev.Progress))
    engine.stop()
    assert engine.wait(5)
    assert engine.state == ev.IDLE
    assert engine.snapshot().plan == ()
    # The stopped job is recorded as such (with the steps it ran); nothing queued after it ran.
    [stopped] = rec.of(ev.PhaseFinished)
    assert stopped.phase == "pretrain" and stopped.stopped and 0 < stopped.steps < LONG
    assert rec.of(ev.ClustersFound) == []
    assert engine.snapshot().history[-1]["stopped"] is True
    step = engine.snapshot().step
    assert 0 < step < LONG
    engine.train(steps=10)  # usable afterwards
    assert engine.wait(10)
    assert engine.snapshot().step == step + 10


def test_snapshot_has_the_keys_of_run_json(make_engine, capsys):
    engine = make_engine()
    engine.train(steps=10)
    assert engine.wait(10)
    assert main(["run", "--dataset", "synthetic", "--hidden", "16,16", "--device", "cpu", "--steps", "10",
                 "--finetune-epochs", "0", "--session", "cli", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(engine.snapshot().to_dict()) == set(printed)
    assert printed["step"] == 10 and printed["dataset"] == "synthetic"


def test_a_command_right_after_stop_still_runs(make_engine):
    engine, rec = training(make_engine)
    engine.stop()
    engine.train(steps=20)  # before the stop has taken effect
    assert engine.wait(10)
    history = engine.snapshot().history
    assert [h["phase"] for h in history] == ["pretrain", "pretrain"]
    assert history[0].get("stopped") and history[1]["steps"] == 20 and not history[1].get("stopped")


def test_a_pause_sent_while_idle_does_not_hold_the_next_job(make_engine):
    engine = make_engine()
    engine.pause()
    engine.train(steps=20)
    assert engine.wait(10)
    assert engine.snapshot().step == 20


def test_refusals_arrive_on_the_engine_thread(make_engine):
    engine = make_engine()
    threads = []
    engine.subscribe(lambda e: threads.append(threading.current_thread().name) if isinstance(e, ev.Failed) else None)
    engine.cluster(k=10**6)
    assert engine.wait(5)
    assert threads == ["clusterlab-engine"]


def test_a_failing_rollback_leaves_a_usable_engine(make_engine, monkeypatch):
    from engine import study as study_module

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    engine = make_engine(lr=1e30, steps=200)
    monkeypatch.setattr(study_module, "trim_metrics", disk_full)
    rec = Recorder()
    engine.subscribe(rec)
    engine.train()
    assert engine.wait(10), "the engine thread must survive a failure while recovering from a failure"
    assert any("could not return to the last save" in e.message for e in rec.of(ev.LogLine))
    assert engine.state == ev.IDLE
