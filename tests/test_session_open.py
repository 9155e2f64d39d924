"""What a session must be to open, tried adversarially on one real saved session (made once, then damaged per case):
nested fields of session.json, plan totals, the checkpoint's trainer fields and shapes, its checksum, and a folder
whose creation was killed before its first session.json."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine import Engine
from engine.cli import main
from engine.config import MAX_STEPS
from engine.errors import ConfigError, SessionError
from engine.export import export_session
from engine.member import open_member
from engine.session import SessionLock, claim_directory, read_session
from tests.conftest import REPO, run_cli, small_config

CONFIG = small_config(hidden=(8, 6), steps=20, k=2, lam=1.0, control=True, null_samples=5)
N_TRAIN, BATCH = 4096, 64  # the synthetic dataset's training images, the config's batch


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A finished session: pretrained, clustered with its null, a λ=0 control, finetuned and ablated."""
    path = tmp_path_factory.mktemp("saved") / "s"
    with Engine.create(path, CONFIG) as engine:
        engine.plan_default()
        engine.wait()
        engine.ablate()
        engine.wait()
    data = json.loads((path / "session.json").read_text())
    assert data["control"] and data["ablation"] and data["significance"] and data["checkpoint_sha256"]
    return path


@pytest.fixture
def session(saved, tmp_path) -> Path:
    """A copy of the saved session to damage."""
    path = tmp_path / "sessions" / "s"
    shutil.copytree(saved, path)
    return path


def edit_json(path: Path, change) -> None:
    data = json.loads((path / "session.json").read_text())
    change(data)
    (path / "session.json").write_text(json.dumps(data))


def edit_checkpoint(path: Path, change) -> None:
    """Change the trainer state and write the checkpoint back, its checksum dropped from session.json (as a session
    saved before checksums), so that only the field checks stand between it and a load."""
    data = json.loads((path / "session.json").read_text())
    file = path / data["checkpoint"]
    state = torch.load(file, weights_only=True)
    change(state["trainer"])
    torch.save(state, file)
    edit_json(path, lambda d: d.pop("checkpoint_sha256"))


def refusal(path: Path) -> str:
    """Opening the session is refused in one sentence that names the session's folder; nothing in it changes."""
    before = {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()}
    with pytest.raises(SessionError) as info:
        Engine.open(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "Traceback" not in message
    assert {p.name: p.read_bytes() for p in path.iterdir() if p.is_file() and p.name != ".lock"} == {
        name: data for name, data in before.items() if name != ".lock"}
    return message


def _set(data, where: str, value) -> None:
    """Set (or, with value DELETE, remove) a field named as messages name it: 'ablation.drop[0][1]'."""
    *parents, last = where.replace("]", "").replace("[", ".").split(".")
    for key in parents:
        data = data[int(key)] if isinstance(data, list) else data[key]
    key = int(last) if isinstance(data, list) else last
    if value is DELETE:
        del data[key]
    else:
        data[key] = value


DELETE = object()

# ----- nested fields of session.json ----------------------------------------------------------------------------

NESTED = [  # (where, the value put there, the field the message names)
    ("control.test_accuracy", "x", "control.test_accuracy"),
    ("control.test_accuracy", 1.5, "control.test_accuracy"),
    ("control.test_accuracy", DELETE, "control.test_accuracy"),
    ("control.clusterability", [0.5], "control.clusterability"),
    ("control.step", -1, "control.step"),
    ("control.params_sha256", 5, "control.params_sha256"),
    ("control.significance", "x", "control.significance"),
    ("control.significance.samples", "5", "control.significance.samples"),
    ("control.significance.measures.clusterability.p", "x", "control.significance.measures.clusterability.p"),
    ("control.significance.measures.clusterability", DELETE, "control.significance.measures.clusterability"),
    ("control.significance.measures.ncut.z", float("inf"), "control.significance.measures.ncut.z"),
    ("control.significance.measures.ncut.bogus", 1, "control.significance.measures.ncut"),
    ("significance.method", None, "significance.method"),
    ("significance.samples", -1, "significance.samples"),
    ("significance.measures", [], "significance.measures"),
    ("significance.measures.newman_q.observed", "x", "significance.measures.newman_q.observed"),
    ("significance.measures.clusterability.p", 2, "significance.measures.clusterability.p"),
    ("history[1].significance.measures.clusterability.p", -0.5, "history[1].significance.measures.clusterability.p"),
    ("history[1].significance.test", 3, "history[1].significance.test"),
    ("ablation.units", 3, "ablation.units"),
    ("ablation.classes[0]", -1, "ablation.classes"),
    ("ablation.classes[1]", 1.5, "ablation.classes"),
    ("ablation.baseline[0]", "x", "ablation.baseline"),
    ("ablation.baseline[0]", 1.5, "ablation.baseline"),
    ("ablation.baseline", [0.5], "ablation.baseline"),
    ("ablation.drop", DELETE, "ablation.drop"),
    ("ablation.drop", [[0.0]], "ablation.drop"),
    ("ablation.drop[0]", [0.1], "ablation.drop[0]"),
    ("ablation.drop[0][0]", "x", "ablation.drop"),
    ("ablation.drop[0][0]", 2.0, "ablation.drop"),
    ("ablation.drop[1][0]", None, "ablation.drop"),
    ("ablation.specialisation", [0.5], "ablation.specialisation"),
    ("ablation.specialisation[0]", -1, "ablation.specialisation"),
    ("ablation.p_value[0]", 7, "ablation.p_value"),
    ("ablation.p_value", "x", "ablation.p_value"),
    ("ablation.null", 5, "ablation.null"),
    ("ablation.null.samples", -1, "ablation.null.samples"),
    ("ablation.null.sizes", [1], "ablation.null.sizes"),
    ("ablation.null.mean[0]", "x", "ablation.null.mean"),
    ("ablation.null.drop_mean[0][0]", "x", "ablation.null.drop_mean"),
    ("ablation.lesion", [], "ablation.lesion"),
    ("ablation.lesion.importance", 5, "ablation.lesion.importance"),
    ("ablation.lesion.importance.fisher_p", 2, "ablation.lesion.importance.fisher_p"),
    ("ablation.lesion.importance.value", [1.0], "ablation.lesion.importance.value"),
    ("ablation.lesion.selectivity.p_value[0]", "x", "ablation.lesion.selectivity.p_value"),
]


@pytest.mark.parametrize("where, value, field", NESTED)
def test_a_bad_nested_field_is_refused_at_open_naming_it(session, where, value, field):
    """Before: accepted at open, and a traceback (or a wrong figure) later."""
    edit_json(session, lambda d: _set(d, where, value))
    message = refusal(session)
    assert f"session.json: field '{field}' " in message and message.endswith("the session cannot be opened.")


def test_a_legacy_significance_still_opens_and_its_fields_are_checked(session):
    legacy = {"method": "permute", "samples": 5, "null_mean": 0.5, "null_std": 0.01, "z": 1.0, "p_value": 0.2,
              "ncut": 0.7, "ncut_null_mean": 0.8, "ncut_p_value": 0.3}
    edit_json(session, lambda d: d.update(significance={**legacy, "null_std": "x"}))
    assert "field 'significance.null_std' must be a finite number" in refusal(session)
    edit_json(session, lambda d: d.update(significance=legacy))
    Engine.open(session).close()


def test_the_issue_case_a_control_accuracy_of_text_is_one_line_at_resume(session, capsys, monkeypatch):
    """Before: accepted, the whole finetune ran, then the save failed and every later resume printed a traceback."""
    monkeypatch.setenv("CLUSTERLAB_SESSIONS", str(session.parent))
    edit_json(session, lambda d: d["control"].update(test_accuracy="x"))
    for command in (["resume", "s", "--steps", "2"], ["ablate", "s"]):
        assert main(command) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "field 'control.test_accuracy' must be null or a number from 0 to 1" in err


# ----- plan totals -------------------------------------------------------------------------------------------------


def test_a_plan_total_past_the_bound_is_refused(session):
    edit_json(session, lambda d: d.update(plan=[{"kind": "finetune", "total": 10**15, "done": 0, "lam": 1.0}]))
    assert "field 'plan[0].total' must be a whole number from 0 to 1,000,000,000" in refusal(session)
    edit_json(session, lambda d: d.update(plan=[{"kind": "finetune", "total": MAX_STEPS, "done": 0, "lam": 1.0}]))
    Engine.open(session).close()  # the bound itself is fine


@pytest.mark.parametrize("change", [{"steps": 10**15}, {"epochs": 10**15}, {"finetune_epochs": MAX_STEPS}])
def test_flags_cannot_make_a_plan_past_the_bound(change):
    with pytest.raises(ConfigError, match="1,000,000,000"):
        small_config(**change)


# ----- the checkpoint's trainer fields and shapes ------------------------------------------------------------------


def _swap_first_two(t):
    t["perm"][[0, 1]] = t["perm"][[1, 0]]


TRAINER = [
    ("perm", lambda t: t.update(perm=t["perm"][:-1])),
    ("perm", lambda t: t.update(perm=torch.cat([t["perm"], t["perm"][:1]]))),
    ("perm", lambda t: t["perm"].__setitem__(0, N_TRAIN)),
    ("perm", lambda t: t["perm"].__setitem__(0, -1)),
    ("perm", lambda t: t["perm"].__setitem__(0, t["perm"][1].item())),
    ("perm", lambda t: t.update(perm=t["perm"].double())),
    ("perm", lambda t: t.update(perm=None)),
    ("perm", lambda t: t.update(perm=[1, 2])),
    ("position", lambda t: t.update(position=10**12)),
    ("position", lambda t: t.update(position=-5)),
    ("position", lambda t: t.update(position=t["position"] + BATCH)),
    ("position", lambda t: t.update(position=float(t["position"]))),
    ("step", lambda t: t.update(step="x")),
    ("grad_steps", lambda t: t.update(grad_steps=t["step"] + 1)),
    ("grad_steps", lambda t: t.update(grad_steps=-1)),
    ("grad_pending", lambda t: t.update(grad_pending=torch.zeros(40, 6, 8))),
    ("grad_pending", lambda t: t.update(grad_pending=torch.zeros(1, 8, 6))),
    ("grad_importance", lambda t: t.update(grad_importance=torch.zeros(8, 6, dtype=torch.float64))),
    ("grad_importance", lambda t: t["grad_importance"].__setitem__((0, 0), float("nan"))),
    ("grad_importance", lambda t: t["grad_importance"].__setitem__((0, 0), -1.0)),
    ("generator", lambda t: t.update(generator=t["generator"][:100])),
    ("generator", lambda t: t.pop("generator")),
    ("optimizer", lambda t: t["optimizer"].update(lr=10.0)),
    ("optimizer", lambda t: t.update(optimizer="sgd")),
    ("legacy_gradients", lambda t: t.update(legacy_gradients="no")),
    ("model.fc2.weight", lambda t: t["model"]["fc2.weight"].__setitem__((0, 0), float("nan"))),
    ("model.fc1.weight", lambda t: t["model"].update({"fc1.weight": t["model"]["fc1.weight"].double()})),
]


@pytest.mark.parametrize("field, change", TRAINER)
def test_a_bad_trainer_field_is_refused_at_open(session, field, change):
    """Before: a perm of the wrong length or position 10**12 finished with another result and no word; an
    out-of-range perm or position -5 failed mid-job, every retry alike."""
    edit_checkpoint(session, change)
    message = refusal(session)
    assert f"trainer field '{field}'" in message and "checkpoint-" in message and "restore" in message, message


def test_a_sweep_member_is_checked_the_same_way(session):
    """A member (alone or batched, its state goes through its own Study first) is refused in the same sentence."""
    edit_checkpoint(session, lambda t: t.update(position=-5))
    edit_json(session, lambda d: d.update(plan=[{"kind": "finetune", "total": 64, "done": 0, "lam": 1.0}]))
    settings = {"root": str(session.parent), "name": "s", "kind": "finetune", "config": CONFIG.to_dict(),
                "parent": None}
    with pytest.raises(SessionError, match=r"trainer field 'position' must be \d+ \(where step"):
        open_member(settings)


def test_the_trainer_checks_pass_what_runs_save(saved, tmp_path):
    """A session saved mid-epoch, mid-fold and at step 0 opens (the checks refuse nothing a run saves)."""
    for steps in (0, 1, 63, 64, 65, 100):
        path = tmp_path / f"s{steps}"
        with Engine.create(path, CONFIG) as engine:
            engine.train(steps=steps)
            engine.wait()
        with Engine.open(path) as engine:
            assert engine.snapshot().step == steps


def test_shapes_that_disagree_with_the_config_are_one_sentence(session):
    """Before: torch's multi-line size-mismatch list, or the first mismatch only with nothing to do."""
    def wider(t):
        t["model"]["fc1.weight"] = torch.zeros(10, t["model"]["fc1.weight"].shape[1])
        t["model"]["fc2.weight"] = torch.zeros(6, 10)
    edit_checkpoint(session, wider)
    message = refusal(session)
    assert "size mismatch" not in message
    assert "fc1.weight is (10, 784), not (8, 784); fc2.weight is (6, 10), not (6, 8)" in message
    assert "--hidden 10,6" in message and "session.json's config" in message and "start a new session" in message


def test_a_model_with_other_layers_is_one_sentence(session):
    edit_checkpoint(session, lambda t: t["model"].pop("fc3.weight"))
    assert "holds the layers ['fc1.weight', 'fc2.weight'], not the" in refusal(session)


# ----- the checkpoint's checksum -----------------------------------------------------------------------------------


def _overwrite_fc2(path: Path) -> None:
    """Overwrite the fc2 tensor's bytes in the checkpoint with 0x7f: same size, still a valid zip."""
    data = json.loads((path / "session.json").read_text())
    file = path / data["checkpoint"]
    raw = file.read_bytes()
    weights = torch.load(file, weights_only=True)["trainer"]["model"]["fc2.weight"].numpy().tobytes()
    at = raw.index(weights)
    file.write_bytes(raw[:at] + b"\x7f" * len(weights) + raw[at + len(weights):])


def test_every_save_records_its_checkpoints_sha256(saved):
    data = read_session(saved)
    assert data["checkpoint_sha256"] == hashlib.sha256((saved / data["checkpoint"]).read_bytes()).hexdigest()


def test_overwritten_bytes_are_refused_everywhere_and_nothing_is_overwritten(session, capsys, monkeypatch, tmp_path):
    """Before: ablate exited 0 with every class at accuracy 0 and replaced the good ablation; export and resume
    accepted the file too."""
    monkeypatch.setenv("CLUSTERLAB_SESSIONS", str(session.parent))
    _overwrite_fc2(session)
    before = (session / "session.json").read_bytes()
    assert "is corrupt or was changed after its save" in refusal(session)
    for command in (["ablate", "s"], ["resume", "s", "--steps", "2"]):
        assert main(command) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "its SHA-256 is not the one session.json recorded" in err
    with pytest.raises(SessionError, match="is corrupt or was changed after its save"):
        export_session(session, tmp_path / "out")
    settings = {"root": str(session.parent), "name": "s", "kind": "finetune", "config": CONFIG.to_dict(),
                "parent": None}
    with pytest.raises(SessionError, match="is corrupt or was changed after its save"):
        open_member(settings)  # a sweep member resumed from its own save
    assert (session / "session.json").read_bytes() == before  # the saved ablation is untouched


def test_a_session_saved_before_checksums_opens_and_gains_one(session):
    edit_json(session, lambda d: d.pop("checkpoint_sha256"))
    with Engine.open(session) as engine:
        engine.train(steps=1)
        engine.wait()
    data = read_session(session)
    assert data["checkpoint_sha256"] == hashlib.sha256((session / data["checkpoint"]).read_bytes()).hexdigest()


@pytest.mark.parametrize("value", ["abc", 5, None, "A" * 64])
def test_a_malformed_checksum_field_is_refused(session, value):
    edit_json(session, lambda d: d.update(checkpoint_sha256=value))
    assert "field 'checkpoint_sha256' must be a SHA-256 digest" in refusal(session)


# ----- a creation killed before its first session.json ------------------------------------------------------------


def _cut_creation(path: Path, saved: Path) -> None:
    """What a kill between the first checkpoint and the first session.json leaves: a lock, the metrics log, the
    checkpoint, perhaps session.json's temp file."""
    path.mkdir(parents=True)
    (path / ".lock").write_bytes(b"")
    (path / "metrics.jsonl").write_bytes(b"")
    (path / "checkpoint-000000000.pt").write_bytes((saved / read_session(saved)["checkpoint"]).read_bytes())
    (path / ".session.json.ab12cd34.tmp").write_text("{")


def test_a_cut_creation_says_what_to_do_and_run_takes_it_over(saved, tmp_path, capsys, monkeypatch):
    root = tmp_path / "sessions"
    monkeypatch.setenv("CLUSTERLAB_SESSIONS", str(root))
    _cut_creation(root / "k", saved)
    assert main(["resume", "k"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "was cut off while it was being created" in err and "run --session k" in err
    assert main(["run", "--session", "k", "--dataset", "synthetic", "--hidden", "8,6", "--steps", "3",
                 "--finetune-epochs", "0", "--null-samples", "0", "--device", "cpu"]) == 0
    assert read_session(root / "k")["step"] == 3


def test_a_creation_in_progress_is_never_taken_over(saved, tmp_path):
    """While the creator still holds its lock, another create is refused and deletes nothing."""
    path = tmp_path / "k"
    _cut_creation(path, saved)
    lock = SessionLock(path)
    before = sorted(os.listdir(path))
    with pytest.raises(SessionError, match="already exists"):
        claim_directory(path)
    assert sorted(os.listdir(path)) == before
    lock.release()
    (path / "notes.txt").write_text("the user's")  # not a session's own file: the folder is not taken over
    with pytest.raises(SessionError, match="already exists"):
        claim_directory(path)


KILL_AT_FIRST_SESSION_JSON = """
import os, signal, sys
import engine.study
engine.study.write_session = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
from engine.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_real_sigkill_right_after_the_first_checkpoint(tmp_path):
    """A real process killed by SIGKILL at the moment its first checkpoint is on disk and session.json is not."""
    root = tmp_path / "sessions"
    root.mkdir()
    flags = ["--dataset", "synthetic", "--hidden", "8,6", "--steps", "3", "--finetune-epochs", "0",
             "--null-samples", "0", "--device", "cpu"]
    killed = subprocess.run([sys.executable, "-c", KILL_AT_FIRST_SESSION_JSON, "run", "--session", "k", *flags],
                            cwd=REPO, env={**os.environ, "CLUSTERLAB_SESSIONS": str(root)}, capture_output=True,
                            timeout=120)
    assert killed.returncode == -signal.SIGKILL
    assert "checkpoint-000000000.pt" in os.listdir(root / "k") and not (root / "k" / "session.json").exists()
    resumed = run_cli("resume", "k", env_sessions=root, check_rc=2)
    assert resumed.stderr.count("\n") == 1 and "was cut off while it was being created" in resumed.stderr
    assert json.loads(run_cli("run", "--session", "k", *flags, "--json", env_sessions=root).stdout)["step"] == 3
