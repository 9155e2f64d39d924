"""Huge grids (issue 25 item 12): a sweep says its size before it starts, a size past the threshold needs --yes and
is counted without listing the grid, and SIGTERM stops it at once while it plans and writes its manifest."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
from pathlib import Path

import pytest

import engine.sweep
from engine.cli import main
from engine.sweep_size import CONFIRM_ABOVE
from tests.conftest import CLUSTERLAB, REPO
from tests.test_sweep import TINY_FLAGS

MEMORY_LIMIT = 1 << 30  # address space a refusal runs in: a list of 10^8 seeds alone needs more than three times it
LAMS = ",".join(map(str, range(10)))


def clusterlab(args: list[str], sessions: Path, capped: bool = False) -> subprocess.Popen:
    """`clusterlab ARGS` as its own process, its address space capped at MEMORY_LIMIT if `capped` (torch, which a
    sweep that starts imports, maps more)."""
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    return subprocess.Popen([*CLUSTERLAB, *args], cwd=sessions.parent, preexec_fn=cap if capped else None, text=True,
                            env={**os.environ, "CLUSTERLAB_SESSIONS": str(sessions)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.parametrize(("args", "members"), [
    (["sweep", "big", "--seeds", "100000000", "--k", "2", "--lam", "0"], "300,000,000"),
    (["sweep", "big", "--seeds", "100000", "--k", "2,3,4,5,6,7,8", "--lam", LAMS], "7,800,000"),
    (["reproduce", "--seeds", "100000000"], "1,400,000,000"),
])
def test_a_huge_grid_is_refused_without_yes_before_it_is_listed(sessions, args, members):
    proc = clusterlab(args, sessions, capped=True)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("clusterlab: error: "), err
    assert f"has {members} members" in err and "TB of checkpoints" in err and "days of training" in err
    assert f"more than {CONFIRM_ABOVE:,}: add --yes" in err
    assert list(sessions.iterdir()) == []


INTERRUPTED = "clusterlab: sweep {} interrupted; nothing is half-written: run the same command again to continue it."


def test_sigterm_while_a_large_grid_is_planned_stops_at_once(sessions, monkeypatch, capsys):
    """A real SIGTERM while the members of an accepted grid are planned and checked, one by one."""
    check_folder, checked = engine.sweep.check_folder, []

    def signal_on_the_1000th(path: Path, what: str) -> None:
        checked.append(path)
        if len(checked) == 1000:
            os.kill(os.getpid(), signal.SIGTERM)
        check_folder(path, what)

    monkeypatch.setattr(engine.sweep, "check_folder", signal_on_the_1000th)
    assert main(["sweep", "mid", "--seeds", "5000", "--k", "2", "--lam", "0", "--yes", *TINY_FLAGS]) == 130
    out, err = capsys.readouterr()
    assert err.splitlines() == [err.splitlines()[0], INTERRUPTED.format("mid")] and out == ""
    assert err.startswith("Sweep mid: 15,000 members (5,000 pretrainings, ")  # told as soon as it was counted
    assert 1000 <= len(checked) < 15000 and list(sessions.iterdir()) == []  # stopped at once; nothing written


def test_sigterm_once_a_large_sweep_has_said_its_size_stops_it_before_any_member(sessions):
    proc = clusterlab(["sweep", "mid", "--seeds", "50000", "--k", "2", "--lam", "0", "--yes", *TINY_FLAGS],
                      sessions)
    told = proc.stderr.readline()  # said as soon as it is counted: planning 150,000 members, the manifest follow
    assert told.startswith("Sweep mid: 150,000 members (50,000 pretrainings, 50,000 clusterings, 50,000 "
                           "finetunings); rough estimate: up to ")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and out == "" and err == INTERRUPTED.format("mid") + "\n"
    left = [p.name for p in sessions.iterdir()]
    assert left in ([], ["mid"])  # no member started
    if left:  # the signal came after the manifest: it is whole
        assert len(json.loads((sessions / "mid" / "sweep.json").read_text())["members"]) == 150_000


def test_sigterm_while_the_manifest_is_written_leaves_nothing_and_the_rerun_runs(sessions, monkeypatch, capsys):
    args = ["sweep", "sw", "--seeds", "1", "--k", "2", "--lam", "0", *TINY_FLAGS]
    fsync = os.fsync

    def signal_mid_write(fd: int) -> None:
        fsync(fd)
        if ".sweep.json." in os.readlink(f"/proc/self/fd/{fd}"):  # the manifest's temporary file, written
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(os, "fsync", signal_mid_write)
    assert main(args) == 130
    out, err = capsys.readouterr()
    assert err.splitlines()[-1] == INTERRUPTED.format("sw")
    assert list(sessions.iterdir()) == []  # neither a manifest, nor its temporary file, nor the sweep's folder
    monkeypatch.setattr(os, "fsync", fsync)
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert err.splitlines()[0].startswith("Sweep sw: 3 members (1 pretraining, 1 clustering, 1 finetuning); "
                                          "rough estimate: up to ")
    assert (sessions / "sw" / "sweep.json").is_file()


def test_readme_tells_the_size_line_and_the_threshold():
    text = (REPO / "README.md").read_text()
    assert f"more than {CONFIRM_ABOVE:,} members" in text and "--yes" in text
    assert "Sweep NAME: N members (" in text


def test_a_span_counts_what_it_yields():
    from engine.axes import Span

    for span in (Span((), range(1, 6)), Span((3, 9), range(1, 6)), Span((3, 3, 9), range(1, 6)), Span((7,), range(0))):
        assert len(span) == len(list(span)) == len(set(span))
