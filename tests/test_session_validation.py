"""Session files checked field by field, metrics logs checked before they are cut, no link followed, temps removed."""

from __future__ import annotations

import copy
import json
import os
import pickle
import warnings
from pathlib import Path

import pytest
import torch

from engine.config import Config
from engine.errors import SessionError
from engine.listing import list_sessions
from engine.session import (
    JOB_KINDS,
    MetricsLog,
    SessionLock,
    atomic_write,
    check_metrics,
    check_name,
    load_checkpoint,
    new_name,
    read_metrics,
    read_session,
    record_problem,
    remove_stale_temps,
    session_path,
    sessions_root,
    trim_metrics,
    validate_session,
)

PATH = Path("sessions/x/session.json")
CONFIG = Config(dataset="synthetic", hidden=(8, 6), device="cpu")  # studied layer fc2: 6 rows x 8 columns


def valid() -> dict:
    """A session.json as the engine writes it: pretrained and clustered at step 20, a finetune under way."""
    return {
        "format_version": 1, "name": "x", "saved_at": "2026-11-26T16:15:02+0000", "config": CONFIG.to_dict(),
        "phase": "finetune", "step": 20, "epoch": 0, "checkpoint": "checkpoint-000000020.pt",
        "metrics_records": 6, "plan": [{"kind": "finetune", "total": 10, "done": 0, "lam": 3.0}],
        "clusters": {"k": 2, "source": "weights", "row_sizes": [3, 3], "col_sizes": [4, 4],
                     "row_labels": [0, 1, 0, 1, 0, 1], "col_labels": [0, 0, 1, 1, 0, 0, 1, 1]},
        "history": [
            {"phase": "pretrain", "step": 20, "steps": 20, "test_accuracy": 0.5, "clusterability": None},
            {"phase": "cluster", "step": 20, "steps": 0, "test_accuracy": 0.5, "clusterability": 0.6},
        ],
        "last": {"test_accuracy": 0.5, "train_loss": 2.1, "clusterability": 0.6},
        "device": "cpu", "versions": {"python": "3.11.7", "torch": "2.14.1"},
    }


def records(steps: list[int]) -> list[dict]:
    return [{"type": "train", "phase": "pretrain", "step": s, "epoch": 0, "loss": 1.0} for s in steps]


def write_log(path: Path, lines: list[dict | str]) -> None:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))


def refused(data: dict, kinds=JOB_KINDS) -> str:
    with pytest.raises(SessionError) as info:
        validate_session(data, PATH, kinds)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(PATH))
    return message


def test_what_the_engine_writes_passes():
    data = valid()
    assert validate_session(data, PATH) is data
    for key in ("name", "saved_at", "phase", "epoch", "last", "device", "versions", "clusters"):
        del data[key]  # optional: absent is fine, only a present value is checked
    validate_session(data, PATH)


def _set(data: dict, where: str, value) -> None:
    """Set a field named like the messages name it: 'plan[0].total', 'clusters.row_labels[2]'."""
    *parents, last = where.replace("[", ".").replace("]", "").split(".")
    for key in parents:
        data = data[int(key)] if isinstance(data, list) else data[key]
    if isinstance(data, list):
        data[int(last)] = value
    else:
        data[last] = value


@pytest.mark.parametrize(
    "where, value, field",
    [
        ("format_version", 0, "format_version"),
        ("format_version", -5, "format_version"),
        ("format_version", "1", "format_version"),
        ("format_version", 1.0, "format_version"),
        ("format_version", True, "format_version"),
        ("name", 5, "name"),
        ("saved_at", 5, "saved_at"),
        ("saved_at", None, "saved_at"),
        ("phase", ["x"], "phase"),
        ("step", 264.7, "step"),
        ("step", True, "step"),
        ("step", -1, "step"),
        ("epoch", -1, "epoch"),
        ("checkpoint", "checkpoint-000000019.pt", "checkpoint"),
        ("metrics_records", -5, "metrics_records"),
        ("metrics_records", 0, "metrics_records"),
        ("metrics_records", 1, "metrics_records"),
        ("metrics_records", 7.0, "metrics_records"),
        ("config", {"hidden": "zz"}, "config"),
        ("config", {"lr": "x"}, "config"),
        ("config", {"bogus": 1}, "config"),
        ("config", {"lr": 1e308}, "config"),
        ("config", [], "config"),
        ("plan", 5, "plan"),
        ("plan[0]", "finetune", "plan[0]"),
        ("plan[0].kind", "explode", "plan[0].kind"),
        ("plan[0].kind", ["finetune"], "plan[0].kind"),
        ("plan[0].total", "5", "plan[0].total"),
        ("plan[0].total", -5, "plan[0].total"),
        ("plan[0].done", 11, "plan[0].done"),
        ("plan[0].lam", 1e300, "plan[0].lam"),
        ("plan[0].lam", -1.0, "plan[0].lam"),
        ("plan[0].lam", "x", "plan[0].lam"),
        ("plan[0].bogus", 1, "plan[0]"),
        ("plan[0]", {"kind": "cluster", "source": "weights"}, "plan[0].k"),
        ("plan[0]", {"kind": "cluster", "k": 2, "source": "evil"}, "plan[0].source"),
        ("plan[0]", {"kind": "cluster", "k": 1, "source": "weights"}, "plan[0].k"),
        ("plan[0]", {"kind": "cluster", "k": 7, "source": "weights"}, "plan[0].k"),  # the layer is 6 wide
        ("clusters", 5, "clusters"),
        ("clusters.source", "evil", "clusters.source"),
        ("clusters.k", 2.5, "clusters.k"),
        ("clusters.row_labels", [0, 1], "clusters.row_labels"),
        ("clusters.row_labels[2]", 2, "clusters.row_labels[2]"),
        ("clusters.col_labels[0]", -1, "clusters.col_labels[0]"),
        ("clusters.col_labels[1]", True, "clusters.col_labels[1]"),
        ("history", 5, "history"),
        ("history[0]", {}, "history[0].phase"),
        ("history[0]", 3, "history[0]"),
        ("history[0].step", 21, "history[0].step"),
        ("history[0].steps", -1, "history[0].steps"),
        ("history[0].test_accuracy", 1.5, "history[0].test_accuracy"),
        ("history[1].clusterability", float("nan"), "history[1].clusterability"),
        ("history[0].lam", "x", "history[0].lam"),
        ("history[0].stopped", 1, "history[0].stopped"),
        ("history[0].significance", [], "history[0].significance"),
        ("last", 5, "last"),
        ("last.test_accuracy", "x", "last.test_accuracy"),
        ("last.train_loss", float("inf"), "last.train_loss"),
        ("device", 0, "device"),
        ("versions.torch", 2, "versions.torch"),
    ],
)
def test_a_bad_value_is_refused_naming_the_file_and_field(where, value, field):
    data = valid()
    _set(data, where, value)
    before = copy.deepcopy(data)
    message = refused(data)
    assert f"field '{field}'" in message and message.endswith("the session cannot be opened.")
    assert "upgrade" not in message  # damage, not a newer version
    assert data == before


def test_only_a_larger_whole_version_is_newer():
    data = valid()
    data["format_version"] = 2
    assert "upgrade clusterlab" in refused(data)


def test_required_fields():
    data = valid()
    del data["metrics_records"]
    assert "lacks required field(s) metrics_records" in refused(data)
    for junk in ([1], "x", {"step": 1}):
        assert "no format_version" in refused(junk)


def test_the_known_job_kinds_can_be_extended():
    data = valid()
    data["plan"].append({"kind": "prune"})
    assert "'plan[1].kind'" in refused(data)
    validate_session(data, PATH, (*JOB_KINDS, "prune"))


# ----- the metrics log ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "record, problem",
    [
        ({"type": "train", "phase": "pretrain", "step": 3, "loss": 1.0}, None),
        ({"type": "significance", "step": 3, "p": "anything"}, None),  # an unknown type needs type and step only
        ([1, 2], "not an object"),
        ({"type": "train", "phase": "pretrain", "loss": 1.0}, "'step' is missing"),
        ({"type": "train", "phase": "pretrain", "step": 2.5, "loss": 1.0}, "'step' must be a whole number"),
        ({"type": ["train"], "step": 1}, "'type' must be text"),
        ({"type": "train", "phase": "pretrain", "step": 3, "loss": "x"}, "'loss' must be a finite number"),
        ({"type": "eval", "phase": "pretrain", "step": 3, "test_accuracy": 2, "clusterability": None},
         "'test_accuracy' must be a number from 0 to 1"),
        ({"type": "clusters", "step": 3, "clusterability": 0.5}, "'chance' is missing"),
        ({"type": "phase", "step": 3}, "'phase' is missing"),
    ],
)
def test_record_problem(record, problem):
    found = record_problem(record)
    assert found is None if problem is None else problem in found


def test_a_bad_record_within_the_saved_part_refuses_and_cuts_nothing(tmp_path):
    log = tmp_path / "metrics.jsonl"
    for bad in ['{"type": "train", "phase": "pretrain", "st', '{"type": "train", "step": "x"}', "[]"]:
        write_log(log, [*records([1, 2]), bad, *records([4])])
        before = log.read_bytes()
        with pytest.raises(SessionError, match="line 3 is not a valid metrics record"):
            check_metrics(log, 4, 4)
        assert log.read_bytes() == before


def test_a_count_too_small_for_the_log_is_refused(tmp_path):
    """metrics_records 0 with a log of steps 1..20 saved at step 20 would cut the whole log: refused."""
    log = tmp_path / "metrics.jsonl"
    write_log(log, records(list(range(1, 21))))
    with pytest.raises(SessionError, match="line 1 is of step 1, before the saved step 20.*too small"):
        check_metrics(log, 0, 20)
    check_metrics(log, 20, 20)


def test_a_count_covering_records_after_the_save_is_refused(tmp_path):
    log = tmp_path / "metrics.jsonl"
    write_log(log, records([10, 20, 30]))
    with pytest.raises(SessionError, match="line 3 is of step 30, after the saved step 20"):
        check_metrics(log, 3, 20)


def test_the_torn_end_and_records_after_the_save_are_cut(tmp_path):
    log = tmp_path / "metrics.jsonl"
    write_log(log, [*records([10, 20]), {"type": "clusters", "step": 20, "clusterability": 0.5, "chance": 0.5},
                    *records([25])])
    with open(log, "a") as f:
        f.write('{"type": "train", "st')
    check_metrics(log, 2, 20)  # a clusters record at the saved step may follow the save
    assert trim_metrics(log, 2) == 2
    assert read_metrics(log) == records([10, 20])
    assert log.read_text().count("\n") == 2
    check_metrics(tmp_path / "missing.jsonl", 0, 20)  # a new session's log: nothing to check, nothing to cut
    assert trim_metrics(tmp_path / "missing.jsonl", 0) == 0


@pytest.mark.parametrize("lines", [None, 0, 3])
def test_a_log_shorter_than_the_saved_count_is_refused(tmp_path, lines):
    """A save is written after the log's lines reached the disk: a shorter (or missing) log lost records."""
    log = tmp_path / "metrics.jsonl"
    if lines is not None:
        write_log(log, records(list(range(1, lines + 1))))
    with pytest.raises(SessionError, match=f"holds {lines or 0} records, fewer than the 5 that the last save"):
        check_metrics(log, 5, 20)


def test_reading_skips_torn_and_invalid_records(tmp_path):
    log = tmp_path / "metrics.jsonl"
    write_log(log, [*records([1]), '{"type": "train", "step": "x"}', "7", *records([2]), '{"type": "tr'])
    assert read_metrics(log) == records([1, 2])


# ----- links, folders and files of the wrong kind --------------------------------------------------------------


@pytest.fixture
def session(tmp_path) -> Path:
    """A session folder whose session.json is valid and whose log matches it (the checkpoint is not loaded)."""
    directory = tmp_path / "root" / "x"
    directory.mkdir(parents=True)
    (directory / "session.json").write_text(json.dumps(valid()))
    (directory / "checkpoint-000000020.pt").write_bytes(b"not read here")
    write_log(directory / "metrics.jsonl", records([5, 10, 15, 20, 20, 20]))
    return directory


def test_a_valid_session_reads(session):
    assert read_session(session) == valid()


@pytest.mark.parametrize("name", ["session.json", "checkpoint-000000020.pt", "metrics.jsonl", ".lock"])
def test_a_file_that_is_a_link_is_refused_and_not_followed(session, tmp_path, name):
    outside = tmp_path / "outside"
    outside.write_bytes((session / name).read_bytes() if (session / name).exists() else b"")
    (session / name).unlink(missing_ok=True)
    (session / name).symlink_to(outside)
    with pytest.raises(SessionError, match="is a symbolic link, which clusterlab never follows"):
        read_session(session)
    (row,) = list_sessions(session.parent)
    assert "symbolic link" in row["error"]


@pytest.mark.parametrize("name", ["session.json", "checkpoint-000000020.pt", "metrics.jsonl", ".lock"])
def test_a_file_that_is_a_directory_is_refused(session, name):
    (session / name).unlink(missing_ok=True)
    (session / name).mkdir()
    with pytest.raises(SessionError, match="is a directory, not a"):
        read_session(session)


def test_a_fifo_never_hangs_the_open(session):
    (session / "session.json").unlink()
    os.mkfifo(session / "session.json")
    with pytest.raises(SessionError, match="is a special file"):
        read_session(session)
    os.mkfifo(session / ".lock.fifo")
    (session / ".lock.fifo").rename(session / ".lock")
    with pytest.raises(SessionError, match=r"is a special file \(a FIFO, socket or device\), not a lock file"):
        SessionLock(session)


@pytest.mark.parametrize("text", ["[" * 100_000, "1" * 5000, '{"format_version": 1, "name": "\xff"}'])
def test_json_that_python_cannot_read_is_corrupt(session, text):
    (session / "session.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(SessionError, match="session.json is corrupt"):
        read_session(session)


def test_a_session_folder_that_is_a_link_is_refused(session):
    link = session.parent / "y"
    link.symlink_to(session)
    with pytest.raises(SessionError, match="y is a symbolic link"):
        read_session(link)
    rows = {row["name"]: row for row in list_sessions(session.parent)}
    assert "error" not in rows["x"] and "symbolic link" in rows["y"]["error"]


def test_writes_never_go_through_a_link(session, tmp_path):
    outside = tmp_path / "outside"
    outside.write_text("keep\n")
    (session / "metrics.jsonl").unlink()
    (session / "metrics.jsonl").symlink_to(outside)
    with pytest.raises(SessionError, match="symbolic link"):
        MetricsLog(session / "metrics.jsonl", 0)
    (session / ".lock").symlink_to(tmp_path / "lock-outside")
    with pytest.raises(SessionError, match="symbolic link"):
        SessionLock(session)
    assert outside.read_text() == "keep\n" and not (tmp_path / "lock-outside").exists()
    atomic_write(session / "metrics.jsonl", b"new\n")  # replaces the link itself, not its target
    assert not (session / "metrics.jsonl").is_symlink() and outside.read_text() == "keep\n"


def test_a_lock_or_log_that_is_a_directory_is_one_sentence(session):
    (session / ".lock").mkdir()
    (session / "metrics.jsonl").unlink()
    (session / "metrics.jsonl").mkdir()
    with pytest.raises(SessionError, match="is a directory, not a lock file"):
        SessionLock(session)
    with pytest.raises(SessionError, match="is a directory, not a metrics log"):
        MetricsLog(session / "metrics.jsonl", 0)


# ----- the listing -----------------------------------------------------------------------------------------------


def test_one_bad_session_never_breaks_the_listing(session):
    root = session.parent
    for name, change in [("a", {"saved_at": 5}), ("b", {"last": {"test_accuracy": "x"}}), ("c", {"history": [{}]}),
                         ("d", {"saved_at": "2030-01-01T00:00:00+0000"})]:
        (root / name).mkdir()
        (root / name / "session.json").write_text(json.dumps({**valid(), **change}))
    (root / "bad name").mkdir()
    (root / "-dash").mkdir()  # an earlier version's name: still listed as a session
    (root / "-dash" / "session.json").write_text(json.dumps(valid()))
    (root / "notes.txt").write_text("a file, not a session")
    (root / ".hidden").mkdir()
    rows = list_sessions(root)
    names = [row["name"] for row in rows]
    assert names[0] == "d" and set(names[1:3]) == {"x", "-dash"}  # newest first, then the unreadable ones
    errors = {row["name"]: row["error"] for row in rows if "error" in row}
    assert set(errors) == {"a", "b", "c", "bad name"}
    assert "'saved_at'" in errors["a"] and "'last.test_accuracy'" in errors["b"]
    assert "'history[0].phase'" in errors["c"] and "Invalid session name" in errors["bad name"]
    assert rows[names.index("x")] == {"name": "x", "dataset": "synthetic", "phase": "finetune", "step": 20,
                                      "test_accuracy": 0.5, "clusterability": 0.6, "significance": None,
                                      "measured_at": 20, "saved_at": "2026-11-26T16:15:02+0000"}


def test_a_sessions_root_that_is_a_file(tmp_path, monkeypatch):
    root = tmp_path / "file"
    root.write_text("")
    monkeypatch.setenv("CLUSTERLAB_SESSIONS", str(root))
    for call in (sessions_root, list_sessions, lambda: session_path("x")):
        with pytest.raises(SessionError, match="is not a folder"):
            call()
    monkeypatch.setenv("CLUSTERLAB_SESSIONS", str(tmp_path / "none-yet"))
    assert list_sessions() == []


def test_new_names_start_with_no_dash_and_skip_dangling_links(tmp_path):
    with pytest.raises(SessionError, match="cannot start with '-'"):
        check_name("-dash")
    with pytest.raises(SessionError, match=r"^Invalid session name '\.x': use 1-64 letters"):  # word for word
        check_name(".x")
    assert session_path("-dash", tmp_path) == tmp_path / "-dash"  # existing ones stay openable
    first = new_name("digits", tmp_path)
    (tmp_path / first).symlink_to(tmp_path / "nowhere")
    assert new_name("digits", tmp_path) != first


# ----- temporary files and checkpoints -------------------------------------------------------------------------


def test_left_over_temps_are_removed(session, tmp_path):
    temps = [".session.json.a1b2c3_d.tmp", ".checkpoint-000000020.pt.zz9_xy12.tmp", ".metrics.jsonl.q8w7e6r5.tmp"]
    for name in temps:
        (session / name).write_bytes(b"half a save")
    outside = tmp_path / "target"
    outside.write_text("keep")
    (session / ".session.json.link0000.tmp").symlink_to(outside)
    (session / ".metrics.jsonl.folder00.tmp").mkdir()
    (session / ".other.tmp").write_text("not ours")
    before = set(os.listdir(session))
    assert remove_stale_temps(session) == sorted([*temps, ".session.json.link0000.tmp"])
    assert before - set(os.listdir(session)) == {*temps, ".session.json.link0000.tmp"}
    assert outside.read_text() == "keep"
    read_session(session)


def test_atomic_writes_temp_names_are_recognised(session, monkeypatch):
    """The temps that atomic_write makes are the ones removed (kill it between writing and renaming)."""
    def no_rename(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", no_rename)
    monkeypatch.setattr(Path, "unlink", lambda self, missing_ok=False: None)  # as if killed before clean-up
    for name in ("session.json", "metrics.jsonl", "checkpoint-000000040.pt"):
        with pytest.raises(KeyboardInterrupt):
            atomic_write(session / name, b"x")
    monkeypatch.undo()
    assert len(remove_stale_temps(session)) == 3
    assert not [name for name in os.listdir(session) if name.endswith(".tmp")]


class RunsCode:
    def __reduce__(self):
        return (os.system, ("true",))


@pytest.mark.parametrize("how", ["zip", "raw pickle", "truncated"])
def test_a_bad_checkpoint_message_never_advises_weights_only_false(tmp_path, how):
    path = tmp_path / "checkpoint-000000020.pt"
    if how == "zip":
        torch.save({"trainer": RunsCode()}, path)
    elif how == "raw pickle":
        path.write_bytes(pickle.dumps({"trainer": RunsCode()}, protocol=4))
    else:
        torch.save({"trainer": {"w": torch.zeros(100)}}, path)
        path.write_bytes(path.read_bytes()[:300])
    with warnings.catch_warnings(record=True) as caught, pytest.raises(SessionError) as info:
        warnings.simplefilter("always")
        load_checkpoint(path)
    message = str(info.value)
    assert "weights_only" not in message and "False" not in message and "\n" not in message
    assert ("refused" if how != "truncated" else "corrupt or truncated") in message
    assert not caught  # torch's warnings about the pickle protocol do not reach the user either
