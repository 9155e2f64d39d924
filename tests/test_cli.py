"""The clusterlab command: every bad input is one line on stderr and exit code 2; results are reproducible."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from engine import Engine
from engine.cli import main
from tests.conftest import REPO, run_cli, small_config

FAST = ["--dataset", "synthetic", "--hidden", "16,16", "--device", "cpu"]


def one_line_error(capsys, argv) -> str:
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2, (out, err)
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("clusterlab: error: ")
    return lines[0]


@pytest.mark.parametrize(
    "args, words",
    [
        (["--k", "1"], ["--k"]),
        (["--k", "17"], ["--k", "16"]),
        (["--lam", "-1"], ["--lam"]),
        (["--lam", "nan"], ["--lam"]),
        (["--lam", "inf"], ["--lam"]),
        (["--lr", "0"], ["--lr"]),
        (["--lr", "-0.1"], ["--lr"]),
        (["--batch-size", "0"], ["--batch-size"]),
        (["--epochs", "-1"], ["--epochs"]),
        (["--steps", "-5"], ["--steps"]),
        (["--finetune-epochs", "-1"], ["--finetune-epochs"]),
        (["--dataset", "cifar"], ["--dataset"]),
        (["--hidden", "128"], ["--hidden"]),
        (["--hidden", "a,b"], ["--hidden"]),
        (["--hidden", "128,0"], ["--hidden"]),
        (["--k", "two"], ["--k"]),
        (["--frobnicate"], ["--frobnicate"]),
    ],
)
def test_bad_run_input(capsys, sessions, args, words):
    argv = ["run", "--dataset", "synthetic", "--hidden", "16,16", "--device", "cpu", *args]
    line = one_line_error(capsys, argv)
    for word in words:
        assert word in line
    assert list(sessions.iterdir()) == []  # nothing was created


@pytest.mark.parametrize("argv", [["resume", "x", "--steps", "-1"], ["resume", "x", "--epochs", "-2"],
                                  ["bogus-command"], ["sessions", "--frobnicate"],
                                  ["resume", "x", "--step", "5"],  # no abbreviations: --step is not --steps
                                  ["run", *FAST, "--detach", "--idle-exit", "-1"],
                                  ["run", *FAST, "--detach", "--idle-exit", "nan"],
                                  ["remote", "x", "explode"], ["remote", "x", "train", "steps"],
                                  ["remote", "x", "train", "steps=many"]])
def test_bad_other_input(capsys, sessions, argv):
    one_line_error(capsys, argv)


@pytest.mark.parametrize("argv", [["remote", "ghost", "status"], ["tail", "ghost"], ["stop", "ghost"],
                                  ["remote", "idle", "pause"], ["tail", "idle"], ["stop", "idle"]])
def test_host_commands_without_a_host(capsys, sessions, argv):
    (sessions / "idle").mkdir()  # a session folder, but no host serves it
    line = one_line_error(capsys, argv)
    assert ("There is no session ghost" in line) if argv[1] == "ghost" else ("No host runs for idle" in line)


def test_attach_without_a_running_host(capsys, sessions):
    from tui.cli import main as tui_main

    rc = tui_main(["attach"])
    assert rc == 2 and "No session host is running" in capsys.readouterr().err
    rc = tui_main(["attach", "ghost"])
    assert rc == 2 and "No host runs for ghost" in capsys.readouterr().err


def test_ps_with_no_host(capsys, sessions):
    assert main(["ps", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_missing_mnist_data_dir(capsys, sessions, tmp_path):
    line = one_line_error(capsys, ["run", "--dataset", "mnist", "--data-dir", str(tmp_path / "nowhere"),
                                   "--device", "cpu", "--session", "m"])
    assert "--data-dir" in line and "digits" in line
    assert not (sessions / "m").exists()


def test_existing_session_name_is_refused(capsys, sessions):
    (sessions / "taken").mkdir()
    (sessions / "taken" / "keep.txt").write_text("mine")
    line = one_line_error(capsys, ["run", *FAST, "--session", "taken"])
    assert "taken" in line
    assert [p.name for p in (sessions / "taken").iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", "n" * 65])
def test_path_traversal_in_session_names(capsys, sessions, name):
    one_line_error(capsys, ["run", *FAST, "--session", name])
    one_line_error(capsys, ["resume", name])
    assert list(sessions.iterdir()) == []
    assert not (sessions.parent / "x").exists()


def test_import_engine_does_not_import_textual():
    code = "import sys, engine, engine.engine, engine.cli; print('textual' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_same_flags_give_the_same_parameters(sessions):
    flags = ["run", "--dataset", "synthetic", "--steps", "100", "--finetune-epochs", "1", "--device", "cpu"]
    first = json.loads(run_cli(*flags, "--session", "a", "--json", env_sessions=sessions).stdout)
    second = json.loads(run_cli(*flags, "--session", "b", "--json", env_sessions=sessions).stdout)
    assert first["params_sha256"] == second["params_sha256"]
    assert first["step"] == second["step"] == 164
    assert [h["phase"] for h in first["history"]] == ["pretrain", "cluster", "finetune"]
    assert first["history"] == second["history"]


def test_diverging_loss_stops_with_a_clear_message(sessions):
    proc = run_cli("run", *FAST, "--steps", "200", "--finetune-epochs", "0", "--lr", "1e30", "--session", "nan",
                   "--json", env_sessions=sessions, check_rc=1)
    assert "Traceback" not in proc.stderr
    assert "loss became" in proc.stderr and "--lr" in proc.stderr
    result = json.loads(proc.stdout)  # stdout stays one JSON object
    assert [h["phase"] for h in result["history"]] == []  # the failed phase left no history entry
    assert result["step"] < 200


def test_sessions_lists_sessions_as_json(capsys, sessions):
    assert main(["run", *FAST, "--steps", "10", "--finetune-epochs", "0", "--session", "listed"]) == 0
    capsys.readouterr()
    assert main(["sessions", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["listed"]
    assert rows[0]["dataset"] == "synthetic" and rows[0]["step"] == 10
    assert 0.0 <= rows[0]["clusterability"] <= 1.0


def test_every_printed_clusterability_has_its_null_and_p(sessions):
    proc = run_cli("run", *FAST, "--steps", "40", "--finetune-epochs", "1", "--lam", "5", "--control",
                   "--null-samples", "20", "--session", "printed", env_sessions=sessions)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if "clusterability 0." in line]
    assert lines
    for line in lines:
        assert "follows" in line or ("vs null" in line and " p " in line and "20 shuffles" in line), line
    assert "against the λ=0 control" in proc.stdout


def test_ablate_without_clusters_is_bad_input(capsys, sessions):
    engine = Engine.create(sessions / "raw", small_config(steps=5))
    engine.train()
    assert engine.wait(30)
    engine.close()
    line = one_line_error(capsys, ["ablate", "raw"])
    assert "no clusters" in line and "clusterlab tui --session raw" in line


def test_the_run_prints_its_phases_in_the_order_they_ran(sessions):
    """The control trains first, on a twin that runs ahead: its line comes at the step it branched from, not at
    its twin's later step, so no line reads as if the control came after the finetune it controls."""
    proc = run_cli("run", *FAST, "--steps", "40", "--finetune-epochs", "1", "--control", "--null-samples", "19",
                   "--session", "ordered", env_sessions=sessions)
    live = [line.split(":")[0].split(" at step ") for line in proc.stderr.splitlines() if " at step " in line]
    assert [phase for phase, _ in live] == ["cluster", "control", "finetune", "finetune"], proc.stderr
    steps = [int(step) for _, step in live]
    assert steps == sorted(steps), proc.stderr
    summary = [line.split()[0] for line in proc.stdout.splitlines()[1:] if " step " in line]
    assert summary == ["pretrain", "cluster", "control", "finetune"], proc.stdout
