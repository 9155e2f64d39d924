"""Reading a session while another clusterlab is saving it (issue 25 item 9): every save deletes the checkpoint two
saves back, so a reader must take session.json and its checkpoint from one save, or say the session is running;
it must never call a healthy running session broken, nor leave an empty export folder behind."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from engine import Engine
from engine import session as session_module
from engine.cli import main
from engine.errors import SessionError
from engine.export import export_session
from engine.session import load_saved
from tests.conftest import small_config


@pytest.fixture
def live(sessions):
    """A clustered session held open by an Engine that saves after every step: the other process's run."""
    engine = Engine.create(sessions / "live", small_config(hidden=(8, 6), steps=4, k=2, null_samples=3,
                                                           autosave_every=1))
    engine.train()
    engine.cluster()
    assert engine.wait(60)
    yield engine
    engine.close()


def race(engine: Engine, monkeypatch, times: int | None = None) -> list[Path]:
    """Make each load of a checkpoint (up to `times` of them) come after two more saves of `engine`, deterministically:
    the checkpoint the reader's session.json names has been pruned by then. Returns the paths the reader asked for."""
    load, asked = session_module.load_checkpoint, []

    def late(path: Path, sha256: str | None = None) -> dict:
        asked.append(path)
        if times is None or len(asked) <= times:
            engine.train(steps=2)  # two saves: the step's checkpoint and the one before it are the only ones kept
            assert engine.wait(60)
            assert not path.exists()
        return load(path, sha256)

    monkeypatch.setattr(session_module, "load_checkpoint", late)
    return asked


def saved_step(path: Path) -> int:
    return json.loads((path / "session.json").read_text())["step"]


def test_export_of_a_session_saved_between_its_reads_exports_the_newer_save(live, monkeypatch, capsys):
    before = saved_step(live.path)
    asked = race(live, monkeypatch, times=1)
    assert main(["export", "live"]) == 0
    out, err = capsys.readouterr()
    assert "cannot be resumed" not in out + err and "Error" not in err
    assert {Path(line).name for line in out.splitlines()} >= {"metrics.csv", "clusters.json", "weights.png"}
    assert len(asked) == 2 and asked[0].name != asked[1].name  # the pruned checkpoint, then the newer save's
    with open(live.path / "export" / "metrics.csv", newline="") as file:
        steps = [int(row["step"]) for row in csv.DictReader(file)]
    assert max(steps) == saved_step(live.path) == before + 2  # one save's log and weights, the newer one


def test_every_reader_of_a_running_session_follows_its_saves(live, monkeypatch):
    race(live, monkeypatch, times=1)
    saved, state = load_saved(live.path)  # stability, sweep members and resume read through it
    assert saved.step == state["trainer"]["step"] == saved_step(live.path)


def test_a_session_saved_on_every_read_is_said_to_be_running_and_leaves_no_export_folder(live, monkeypatch, tmp_path):
    monkeypatch.setattr(session_module, "SNAPSHOT_TRIES", 3, raising=False)
    race(live, monkeypatch)
    with pytest.raises(SessionError) as caught:
        export_session(live.path, tmp_path / "new" / "out")
    assert "is running" in str(caught.value) and "try again" in str(caught.value)
    assert "cannot be resumed" not in str(caught.value)
    assert not (tmp_path / "new").exists()


def test_a_checkpoint_gone_from_a_session_at_rest_is_still_reported(live, tmp_path):
    live.close()
    (live.path / json.loads((live.path / "session.json").read_text())["checkpoint"]).unlink()
    with pytest.raises(SessionError, match="checkpoint is gone"):
        export_session(live.path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_exports_while_a_run_saves_every_step_all_succeed(sessions, tmp_path):
    """A real concurrent writer: an Engine training on its own thread, saving after every step, exported and read
    again and again until it is done (no race is forced: the reads land wherever the saves are)."""
    with Engine.create(sessions / "busy", small_config(hidden=(8, 6), steps=2, k=2, null_samples=3,
                                                       autosave_every=1)) as engine:
        engine.train()
        engine.cluster()
        assert engine.wait(60)
        engine.train(steps=60)
        exports = reads = 0
        while not engine.wait(0):
            export_session(engine.path, tmp_path / f"out{exports}")
            exports += 1
            for _ in range(20):
                saved, state = load_saved(engine.path)
                assert saved.step == state["trainer"]["step"]
                reads += 1
    assert exports >= 1 and reads >= 20
