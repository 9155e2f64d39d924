"""Sessions on disk: exact resumption in fresh processes, listing, and clear refusals of bad sessions."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
import torch

from engine import Engine, SessionError
from engine import events as ev
from engine.cli import main
from engine.session import load_checkpoint, read_metrics
from tests.conftest import Recorder, run_json, small_config

LONG_STEPS = 10**7


def test_resume_mid_epoch_in_a_fresh_process_is_exact(sessions):
    flags = ["--dataset", "synthetic", "--finetune-epochs", "0", "--device", "cpu"]
    whole = run_json("run", *flags, "--steps", "300", "--session", "whole", env_sessions=sessions)
    half = run_json("run", *flags, "--steps", "150", "--session", "half", env_sessions=sessions)
    assert half["step"] == 150 and half["epoch"] == 2  # 64 steps per epoch: 150 is mid-epoch
    resumed = run_json("resume", "half", "--steps", "150", env_sessions=sessions)
    assert resumed["step"] == whole["step"] == 300
    assert resumed["params_sha256"] == whole["params_sha256"]
    assert resumed["test_accuracy"] == whole["test_accuracy"]
    # more pretraining made the clusters stale: they were found again, on the same weights
    assert resumed["clusters"] == whole["clusters"]
    assert resumed["clusterability"] == whole["clusterability"]


@pytest.fixture
def template(sessions) -> Path:
    """A small, valid, closed session (pretrained and clustered) to copy and break."""
    engine = Engine.create(sessions / "good", small_config(steps=20))
    engine.train()
    engine.cluster()
    assert engine.wait(30)
    engine.close()
    return sessions / "good"


def contents(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def refuse(capsys, name: str, directory: Path, names: str) -> str:
    """`resume NAME` fails with one line naming `names`, exit code 2, and leaves the directory as it was."""
    before = contents(directory)
    rc = main(["resume", name])
    out, err = capsys.readouterr()
    assert rc == 2, (out, err)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and names in lines[0], err
    assert contents(directory) == before
    return lines[0]


def checkpoint_of(directory: Path) -> Path:
    return directory / json.loads((directory / "session.json").read_text())["checkpoint"]


def test_listing_names_good_and_broken_sessions(capsys, template, sessions):
    (sessions / "junk").mkdir()
    assert main(["sessions", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"good", "junk"}
    assert rows["good"]["step"] == 20 and rows["good"]["phase"] == "cluster"
    assert "session.json" in rows["junk"]["error"]


def test_run_refuses_an_existing_session(capsys, template):
    before = contents(template)
    assert main(["run", "--dataset", "synthetic", "--session", "good"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert contents(template) == before


def test_a_directory_that_is_not_a_session(capsys, sessions):
    (sessions / "plain").mkdir()
    (sessions / "plain" / "notes.txt").write_text("hello")
    refuse(capsys, "plain", sessions / "plain", "session.json")


def test_missing_session(capsys, sessions):
    assert main(["resume", "nothing-here"]) == 2
    assert "nothing-here" in capsys.readouterr().err


def test_corrupt_session_json(capsys, template):
    (template / "session.json").write_text('{"format_version": 1, "config": ')
    refuse(capsys, "good", template, str(template / "session.json"))


@pytest.mark.parametrize(
    "field, value",
    [
        ("plan", [{"kind": "pretrain", "bogus": 1}]),
        ("plan", [{"kind": "explode"}]),
        ("plan", 5),
        ("clusters", {"k": 2}),
        ("clusters", {"k": 2, "source": "weights", "row_labels": [0, 1], "col_labels": [1, 0]}),
        ("step", "x"),
        ("history", 5),
        ("config", {"hidden": "zz"}),
    ],
)
def test_session_json_of_the_wrong_shape(capsys, template, field, value):
    data = json.loads((template / "session.json").read_text())
    data[field] = value
    (template / "session.json").write_text(json.dumps(data))
    refuse(capsys, "good", template, str(template / "session.json"))


def test_truncated_checkpoint(capsys, template):
    path = checkpoint_of(template)
    path.write_bytes(path.read_bytes()[:200])
    line = refuse(capsys, "good", template, str(path))
    assert "corrupt" in line or "truncated" in line


def test_newer_format_version(capsys, template):
    data = json.loads((template / "session.json").read_text())
    data["format_version"] = 99
    (template / "session.json").write_text(json.dumps(data))
    line = refuse(capsys, "good", template, str(template / "session.json"))
    assert "upgrade" in line


def test_session_whose_dataset_is_unavailable(capsys, template, tmp_path):
    data = json.loads((template / "session.json").read_text())
    data["config"].update(dataset="mnist", data_dir=str(tmp_path / "no-mnist-here"))
    (template / "session.json").write_text(json.dumps(data))
    line = refuse(capsys, "good", template, str(template))
    assert "--data-dir" in line


class RunsCode:
    """Unpickling this would run code: it writes a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_that_would_run_code_is_refused(capsys, template, tmp_path):
    marker = tmp_path / "pwned"
    path = checkpoint_of(template)
    torch.save({"trainer": RunsCode(marker)}, path)
    _edit(template, lambda d: d.pop("checkpoint_sha256"))  # saved before checksums: nothing stops the load but this
    with pytest.raises(SessionError, match="refused"):
        load_checkpoint(path)
    line = refuse(capsys, "good", template, str(path))
    assert "refused" in line and "weights_only" not in line  # never torch's advice to load it unsafely
    assert not marker.exists()


def _edit(directory: Path, change) -> None:
    data = json.loads((directory / "session.json").read_text())
    change(data)
    (directory / "session.json").write_text(json.dumps(data))


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda d: d.update(history=[{}]), "history[0].phase"),
        (lambda d: d.update(plan=[{"kind": "pretrain", "total": "5"}]), "plan[0].total"),
        (lambda d: d.update(plan=[{"kind": "pretrain", "total": -5}]), "plan[0].total"),
        (lambda d: d.update(metrics_records=-5), "metrics_records"),
        (lambda d: d.update(metrics_records=0), "metrics_records"),
        (lambda d: d.update(format_version=0), "format_version"),
        (lambda d: d.update(format_version=-5), "format_version"),
        (lambda d: d.update(format_version="1"), "format_version"),
        (lambda d: d.update(step=20.5), "step"),
        (lambda d: d["clusters"].update(source="evil"), "clusters.source"),
        (lambda d: d.update(saved_at=5), "saved_at"),
        (lambda d: d["last"].update(test_accuracy="x"), "last.test_accuracy"),
    ],
)
def test_corrupt_values_are_refused_and_change_no_file(capsys, template, change, field):
    _edit(template, change)
    line = refuse(capsys, "good", template, f"{template / 'session.json'}: field '{field}'")
    assert "upgrade" not in line


@pytest.mark.parametrize("name, what", [("metrics.jsonl", "metrics log"), (".lock", "lock file")])
def test_a_log_or_lock_that_is_a_directory(capsys, template, name, what):
    (template / name).unlink()
    (template / name).mkdir()
    refuse(capsys, "good", template, f"is a directory, not a {what}")


def test_links_in_the_sessions_root_are_never_followed(capsys, template, sessions, tmp_path):
    outside = tmp_path / "outside.jsonl"
    log = template / "metrics.jsonl"
    outside.write_bytes(log.read_bytes())
    log.unlink()
    log.symlink_to(outside)
    before = outside.read_bytes()
    refuse(capsys, "good", template, f"{log} is a symbolic link")
    (sessions / "elsewhere").symlink_to(template)
    refuse(capsys, "elsewhere", template, "elsewhere is a symbolic link")
    assert outside.read_bytes() == before


def test_one_bad_session_never_breaks_the_listing(capsys, template, sessions):
    for name, change in [("saved", lambda d: d.update(saved_at=5)),
                         ("last", lambda d: d["last"].update(test_accuracy="x"))]:
        (sessions / name).mkdir()
        (sessions / name / "session.json").write_text((template / "session.json").read_text())
        _edit(sessions / name, change)
    (sessions / "a name").mkdir()
    assert main(["sessions", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["good"]["step"] == 20 and "error" not in rows["good"]
    assert "'saved_at'" in rows["saved"]["error"] and "'last.test_accuracy'" in rows["last"]["error"]
    assert "Invalid session name" in rows["a name"]["error"]
    assert main(["sessions"]) == 0
    assert "Traceback" not in capsys.readouterr().err


def test_a_sessions_root_that_is_a_file(capsys, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("CLUSTERLAB_SESSIONS", str(tmp_path / "file"))
    assert main(["sessions"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "is not a folder" in err


def test_torn_line_and_records_after_the_checkpoint_are_dropped_on_open(template):
    log = template / "metrics.jsonl"
    good = read_metrics(log)
    assert good and max(r["step"] for r in good) == 20
    with open(log, "a") as f:
        f.write(json.dumps({"type": "train", "phase": "pretrain", "step": 25, "loss": 1.0}) + "\n")
        f.write('{"type": "train", "phase": "pretrain", "st')  # torn by a crash
    engine = Engine.open(template)
    try:
        assert engine.metrics_history() == good
        assert engine.snapshot().step == 20
        engine.train(steps=5)
        assert engine.wait(30)
        steps = [r["step"] for r in engine.metrics_history() if r["type"] == "train"]
        assert steps.count(25) == 1 and len(steps) == len(set(steps))
    finally:
        engine.close()
    assert all(json.loads(line) for line in log.read_text().splitlines())


def closed_at_step_30(path: Path, start) -> None:
    """A session of 60 pretraining steps (evaluated every 30), `start`ed, paused and closed at step 30."""
    engine = Engine.create(path, small_config(steps=60, eval_every=30))
    paused = threading.Event()

    def pause_at_step_30(event):
        if isinstance(event, ev.Evaluated) and event.step == 30:
            engine.pause()
        if isinstance(event, ev.StateChanged) and event.state == ev.PAUSED:
            paused.set()

    engine.subscribe(pause_at_step_30)
    start(engine)
    assert paused.wait(30)
    engine.close()


def test_open_continues_the_saved_plan_exactly(sessions):
    reference = Engine.create(sessions / "ref", small_config(steps=60, eval_every=30))
    reference.train()
    assert reference.wait(30)
    reference.close()
    # a session closed halfway through its plan continues it where it stopped
    closed_at_step_30(sessions / "partial", lambda e: e.train())
    reopened = Engine.open(sessions / "partial")
    try:
        assert reopened.snapshot().step == 30
        assert reopened.snapshot().plan == ({"kind": "pretrain", "total": 60, "done": 30},)
        assert reopened.wait(0.1) is True  # the saved plan waits for continue_plan()
        reopened.continue_plan()
        assert reopened.wait(30)
        assert reopened.snapshot().step == 60
        assert reopened.snapshot().params_sha256 == reference.snapshot().params_sha256
    finally:
        reopened.close()


def test_resume_steps_trains_that_many_and_keeps_the_unfinished_plan(sessions, capsys):
    closed_at_step_30(sessions / "p", lambda e: e.plan_default())
    plan = Engine.open(sessions / "p")
    held = plan.snapshot().plan
    plan.close()
    assert [j["kind"] for j in held] == ["pretrain", "cluster", "significance", "finetune"]
    assert main(["resume", "p", "--steps", "10"]) == 0
    said = capsys.readouterr().err.splitlines()[0]  # what it will do, in one line, before doing it
    assert said == ("resume p: pretrain 10 steps; its unfinished plan (pretrain 30 steps, cluster (k=2 on weights), "
                    "its shuffle null, finetune 64 steps at λ=5) stays for 'clusterlab resume p'.")
    engine = Engine.open(sessions / "p")
    assert engine.snapshot().step == 40 and engine.snapshot().plan == held  # 10 more, not the plan too
    engine.close()
    assert main(["resume", "p"]) == 0
    said = capsys.readouterr().err.splitlines()[0]
    assert said.startswith("resume p: continuing its unfinished plan: pretrain 30 steps, cluster")
    engine = Engine.open(sessions / "p")
    assert engine.snapshot().step == 40 + 30 + 64 and engine.snapshot().plan == ()
    engine.close()


def test_save_keeps_an_opened_sessions_unfinished_plan(sessions):
    engine = Engine.create(sessions / "held", small_config(steps=LONG_STEPS, autosave_every=50))
    rec = Recorder()
    engine.subscribe(rec)
    engine.plan_default()
    rec.wait_for(lambda e: isinstance(e, ev.Saved) and e.reason == "autosave")
    engine.close()
    engine = Engine.open(sessions / "held")
    plan = engine.snapshot().plan
    assert [j["kind"] for j in plan] == ["pretrain", "cluster", "significance", "finetune"]
    engine.save()
    assert engine.wait(10)
    assert engine.snapshot().plan == plan
    assert json.loads((sessions / "held" / "session.json").read_text())["plan"] == list(plan)
    engine.close()


def test_a_failed_job_keeps_the_last_saved_plan(sessions):
    engine = Engine.create(sessions / "nan", small_config(lam=1e12))
    engine.plan_default()
    assert engine.wait(60)
    snap = engine.snapshot()
    assert [h["phase"] for h in snap.history] == ["pretrain", "cluster"]  # the finetune diverged
    assert [j["kind"] for j in snap.plan] == ["finetune"] and snap.plan[0]["done"] == 0
    engine.close()
    assert [j["kind"] for j in json.loads((sessions / "nan" / "session.json").read_text())["plan"]] == ["finetune"]


def test_a_refused_extension_keeps_the_plan_held(sessions):
    engine = Engine.create(sessions / "h", small_config())
    engine.plan_default()
    engine.close()  # the plan is saved unfinished
    engine = Engine.open(sessions / "h")
    before = engine.snapshot()
    engine.continue_plan(epochs=-3)
    assert engine.wait(5)
    assert engine.snapshot().plan == before.plan and engine.snapshot().step == before.step
    engine.close()


def test_a_session_is_opened_by_one_engine_at_a_time(sessions):
    engine = Engine.create(sessions / "one", small_config())
    with pytest.raises(SessionError, match="open in another clusterlab"):
        Engine.open(sessions / "one")
    engine.close()
    Engine.open(sessions / "one").close()  # free again once closed


def test_sessions_fits_80_columns_with_every_clusterability_and_its_p(sessions, capsys, monkeypatch):
    from engine.sweep_run import run_sweep

    run_sweep("a-sweep-with-a-long-name", {"dataset": "synthetic", "hidden": (16, 16), "device": "cpu", "steps": 20,
                                           "finetune_epochs": 1}, {"seeds": [1], "lams": [5]})
    engine = Engine.create(sessions / "trained-on", small_config(steps=20, null_samples=19))
    engine.train()
    engine.cluster()
    engine.train(steps=5)  # more pretraining after the clustering: its last evaluation has no clusterability
    assert engine.wait(30)
    snap = engine.snapshot()
    engine.close()
    measured = snap.history[1]
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["sessions"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "dataset", "steps", "accuracy", "clusterability", "p"]
    assert all(len(line) <= 80 for line in lines) and not any("…" in line for line in lines), lines
    p = measured["significance"]["measures"]["clusterability"]["p"]
    assert f"trained-on synthetic 25 {snap.test_accuracy:.4f} {measured['clusterability']:.4f} {p:.3g}" in [
        " ".join(line.split()) for line in lines]
    sweep = lines.index(next(line for line in lines if line.startswith("a-sweep-with-a-long-name ")))
    assert "4/4 done" in lines[sweep] and lines[sweep + 1].split()[0] == ".s1"  # members under it, shortened
    assert any(line.split()[0] == ".s1.weights.k2.lam5" for line in lines[sweep + 1:])
    assert main(["sessions", "--wide"]) == 0
    wide = capsys.readouterr().out
    assert "a-sweep-with-a-long-name.s1.weights.k2.lam5" in wide and "at step" in wide and "null" in wide
