"""What a hostile or unlucky user tried on sweeps, exports and the command line: unwritable folders, a full disk,
links out of the sessions root, shrinking grids, huge grids, numbers that are not plain decimals."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from engine.cli import main
from engine.sweep_run import run_sweep
from tests.test_sweep import TINY, TINY_FLAGS, _one_line_error

RUN_FLAGS = ["--dataset", "synthetic", "--hidden", "16,16", "--device", "cpu", "--steps", "20",
             "--finetune-epochs", "0"]


@contextmanager
def unwritable(path: Path) -> Iterator[None]:
    """`path` (a folder, or a file) cannot be written while inside: by its mode, or (as root, whom modes do not
    stop) by the immutable attribute."""
    if os.geteuid() != 0:
        if path.is_file():
            pytest.skip("only root may make a file immutable, and a file's mode does not stop os.replace over it")
        mode = path.stat().st_mode
        path.chmod(0o555)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"running as root, whom modes do not stop, and chattr +i failed: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def _refusal(capsys, argv: list[str]) -> str:
    """Run `argv`: it must end with rc 2 and one error sentence, after the progress lines it printed."""
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2 and "Traceback" not in err, (out, err)
    errors = [line for line in err.splitlines() if line.startswith("clusterlab: error: ")]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err
    return errors[0]


# ----- 11: a read-only sessions root -------------------------------------------------------------------------------


def test_run_and_sweep_in_a_read_only_sessions_root_say_so_in_one_sentence(capsys, sessions):
    with unwritable(sessions):
        error = _one_line_error(capsys, ["run", "--session", "a", *RUN_FLAGS])
        assert str(sessions / "a") in error and "writable" in error
        error = _one_line_error(capsys, ["sweep", "sw", "--seeds", "1", *TINY_FLAGS])
        assert str(sessions / "sw") in error and "writable" in error
    assert list(sessions.iterdir()) == []


# ----- 15: unwritable export and sweep files -----------------------------------------------------------------------


def test_export_into_an_unwritable_folder_or_over_an_immutable_file_is_one_sentence(capsys, sessions, tmp_path):
    assert main(["run", "--session", "e", *RUN_FLAGS]) == 0
    capsys.readouterr()
    out = tmp_path / "out"
    out.mkdir()
    with unwritable(out):
        error = _one_line_error(capsys, ["export", "e", "--out", str(out)])
    assert str(out / "metrics.csv") in error and "writable" in error
    assert main(["export", "e", "--out", str(out)]) == 0
    capsys.readouterr()
    with unwritable(out / "metrics.csv"):
        error = _one_line_error(capsys, ["export", "e", "--out", str(out)])
    assert str(out / "metrics.csv") in error and "writable" in error


def test_a_sweep_whose_folder_or_table_cannot_be_written_is_one_sentence(capsys, sessions):
    args = ["sweep", "sw", "--seeds", "1", "--lam", "5", *TINY_FLAGS]
    assert main(args) == 0
    capsys.readouterr()
    with unwritable(sessions / "sw"):
        error = _one_line_error(capsys, args)
    assert str(sessions / "sw" / "sweep.json") in error and "writable" in error
    with unwritable(sessions / "sw" / "table.json"):
        error = _refusal(capsys, args)  # after the members, all finished
    assert str(sessions / "sw" / "table.json") in error and "writable" in error


# ----- 16: a --data-dir that does not exist --------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["reproduce", "--seeds", "2", "--epochs", "1", "--finetune-epochs", "1"],
    ["sweep", "sw", "--seeds", "2", "--dataset", "mnist", "--steps", "5"],
])
def test_a_missing_data_dir_is_refused_before_any_member_runs(capsys, sessions, tmp_path, argv):
    missing = tmp_path / "nowhere"
    error = _one_line_error(capsys, [*argv, "--data-dir", str(missing)])
    assert str(missing) in error and "--data-dir" in error
    assert list(sessions.iterdir()) == []


# ----- 7: links out of the sessions root --------------------------------------------------------------------------


def test_a_sweep_folder_that_is_a_link_out_of_the_root_is_refused(capsys, sessions, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (sessions / "sw").symlink_to(outside)
    error = _one_line_error(capsys, ["sweep", "sw", "--seeds", "1", *TINY_FLAGS])
    assert str(sessions / "sw") in error and "symbolic link" in error
    assert list(outside.iterdir()) == [] and sorted(p.name for p in sessions.iterdir()) == ["sw"]


def test_a_sweep_json_or_member_that_is_a_link_out_of_the_root_is_refused(capsys, sessions, tmp_path):
    args = ["sweep", "sw", "--seeds", "1", "--lam", "5", *TINY_FLAGS]
    assert main(args) == 0
    capsys.readouterr()
    outside = tmp_path / "outside"
    outside.mkdir()
    manifest = sessions / "sw" / "sweep.json"
    manifest.rename(outside / "sweep.json")
    manifest.symlink_to(outside / "sweep.json")
    error = _one_line_error(capsys, args)
    assert str(manifest) in error and "symbolic link" in error
    manifest.unlink()
    (outside / "sweep.json").rename(manifest)
    member = sessions / "sw.s1.weights.k2.lam5"
    member.rename(outside / member.name)
    member.symlink_to(outside / member.name)
    error = _one_line_error(capsys, args)
    assert str(member) in error and "symbolic link" in error


# ----- 14: a smaller grid never drops finished members --------------------------------------------------------------


def test_rerunning_a_sweep_with_a_smaller_grid_keeps_every_finished_member(tmp_path):
    first = run_sweep("sw", TINY, {"seeds": [1, 2], "k": [2, 3], "lams": [0, 5]}, root=tmp_path)
    assert first.ran == 14 and not first.failures
    again = run_sweep("sw", TINY, {"seeds": [2], "k": [3], "lams": [0]}, root=tmp_path)
    assert again.ran == 0 and again.to_dict() == first.to_dict()
    grid = json.loads((tmp_path / "sw" / "sweep.json").read_text())["grid"]
    assert grid == {"seeds": [1, 2], "sources": ["weights"], "k": [2, 3], "lam": [0.0, 5.0]}
    grown = run_sweep("sw", TINY, {"seeds": [3], "lams": [0]}, root=tmp_path)
    assert grown.ran == 7 and len(grown.members) == 21


# ----- 18: plain decimals, damaged sweep.json, one rule for a damaged member ----------------------------------------


@pytest.mark.parametrize("argv, flag", [
    (["sweep", "sw", "--seeds", "7,", *TINY_FLAGS], "--seeds"),
    (["sweep", "sw", "--seeds", "1", "--k", "2,", *TINY_FLAGS], "--k"),
    (["sweep", "sw", "--seeds", "1", "--lam", ",3", *TINY_FLAGS], "--lam"),
    (["sweep", "sw", "--seeds", "1", "--lr", "1_0,0.1", *TINY_FLAGS], "--lr"),
    (["sweep", "sw", "--seeds", "1_0", *TINY_FLAGS], "--seeds"),
    (["run", "--lr", "1_0", *RUN_FLAGS], "--lr"),
    (["reproduce", "--seeds", "1_0"], "--seeds"),
    (["reproduce", "--epochs", "0x1"], "--epochs"),
    (["resume", "x", "--steps", "1_0"], "--steps"),
    (["bench", "--steps", " 5"], "--steps"),
])
def test_numbers_on_the_command_line_are_plain_decimals(capsys, sessions, argv, flag):
    assert flag in _one_line_error(capsys, argv)
    assert list(sessions.iterdir()) == []


def test_seeds_name_one_seed_as_a_range(tmp_path):
    from engine.axes import parse_seeds

    assert list(parse_seeds("7..7")) == [7] and list(parse_seeds("3..5")) == [3, 4, 5] and parse_seeds("2,9") == [2, 9]


def _damage(path: Path, where: str, key: str, value) -> None:
    data = json.loads(path.read_text())
    data[where][key] = value
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("where, key, value", [
    ("grid", "seeds", "abc"), ("grid", "k", [10**30]), ("grid", "k", [40]), ("grid", "lam", "x"),
    ("settings", "lr", "x"),
])
def test_a_damaged_sweep_json_names_the_file_and_the_field(capsys, sessions, where, key, value):
    assert main(["sweep", "sw", "--seeds", "1", "--lam", "5", *TINY_FLAGS]) == 0
    capsys.readouterr()
    manifest = sessions / "sw" / "sweep.json"
    _damage(manifest, where, key, value)
    error = _one_line_error(capsys, ["sweep", "sw"])
    assert str(manifest) in error and f"{where}.{key}" in error


@pytest.mark.parametrize("damage", ["json", "field"])
def test_a_member_whose_session_json_is_damaged_fails_alone(capsys, sessions, damage):
    assert main(["sweep", "sw", "--seeds", "1", "--lam", "5", *TINY_FLAGS]) == 0
    capsys.readouterr()
    session = sessions / "sw.s1.weights.k2" / "session.json"
    if damage == "json":
        session.write_text('{"step": ')
    else:
        _damage(session, "config", "lr", "x")
    assert main(["sweep", "sw", "--seeds", "1", "--lam", "5", *TINY_FLAGS, "--json"]) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    members = {m["name"]: m for m in json.loads(out)["members"]}
    assert members["sw.s1.weights.k2"]["status"] == "failed" and str(session) in members["sw.s1.weights.k2"]["error"]
    assert members["sw.s1.weights.k2.lam5"]["status"] == "finished" and members["sw.s1"]["status"] == "finished"


# ----- 10: out of disk at the first save --------------------------------------------------------------------------


def test_a_full_disk_at_the_first_checkpoint_keeps_the_plan_and_says_what_to_do(make_engine, sessions, monkeypatch):
    import errno
    import tempfile

    from engine import Engine
    from engine import events as ev
    from tests.conftest import Recorder

    engine = make_engine("full", autosave_every=16, finetune_epochs=0)
    real_mkstemp = tempfile.mkstemp

    def full_disk(*args, prefix: str = "", **kwargs):
        if prefix.startswith(".checkpoint-"):  # session.json (small) still fits; a checkpoint does not
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_mkstemp(*args, prefix=prefix, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", full_disk)
    recorder = Recorder()
    engine.subscribe(recorder)
    engine.plan_default()
    engine.wait()
    engine.close()
    failed = recorder.of(ev.Failed)[0].message
    assert "disk is full" in failed and "free some space" in failed and "clusterlab resume full" in failed
    saved = json.loads((sessions / "full" / "session.json").read_text())
    assert saved["step"] == 0 and [job["kind"] for job in saved["plan"]][:2] == ["pretrain", "cluster"]
    monkeypatch.setattr(tempfile, "mkstemp", real_mkstemp)  # space freed
    resumed = Engine.open(sessions / "full")
    try:
        resumed.continue_plan()
        resumed.wait()
        snapshot = resumed.snapshot()
    finally:
        resumed.close()
    assert snapshot.step == 64 and snapshot.plan == () and snapshot.clusters is not None
