"""The batched executor: members trained as one stacked model equal their in-process runs, session for session."""

from __future__ import annotations

import json
import math
import threading

import pytest

from engine.batched_executor import Batched
from engine.cli import main
from engine.engine import Engine
from engine.session import read_metrics
from engine.sweep_run import InProcess, run_sweep
from engine.trainer import Trainer

# Digits: the data do not depend on the seed, so every seed's pretraining is one group. Evaluations, autosaves and
# epoch ends fall inside the jobs, so the group's evaluations, saves and per-epoch nulls are all exercised.
DIGITS = {"dataset": "digits", "hidden": (16, 16), "device": "cpu", "lr": 0.05, "epochs": 2, "finetune_epochs": 2,
          "eval_every": 10, "autosave_every": 16, "null_samples": 8}
GRID = {"seeds": [1, 2, 3], "lams": [0, 5], "sources": ["weights", "gradients"]}
_STAMPS = ("saved_at", "created_at", "updated_at")


def _session(path) -> dict:
    """session.json but for the clock's doing: times, and the loss records (how many, the last one's loss), which
    are reported at most every 50 ms and so differ between any two runs."""
    data = json.loads((path / "session.json").read_text())
    data["last"].pop("train_loss")
    return {key: value for key, value in data.items() if key not in (*_STAMPS, "metrics_records")}


def _records(path) -> list[dict]:
    """The metrics log without its loss records (reported by the clock, so they differ between any two runs)."""
    return sorted((r for r in read_metrics(path / "metrics.jsonl") if r["type"] != "train"),
                  key=lambda r: (r["step"], json.dumps(r, sort_keys=True)))


@pytest.fixture(scope="module")
def in_process(tmp_path_factory):
    root = tmp_path_factory.mktemp("inprocess")
    return root, run_sweep("sw", DIGITS, GRID, root=root)


@pytest.fixture
def group_sizes(monkeypatch) -> list[int]:
    """The size of every group's Trainer the executor makes, in order."""
    sizes = []

    class Spy(Trainer):
        def __init__(self, config, data, device, seeds=None, workers=1):
            sizes.append(len(seeds))
            super().__init__(config, data, device, seeds, workers)

    monkeypatch.setattr("engine.batched_executor.Trainer", Spy)
    return sizes


def test_batched_members_equal_their_in_process_runs(in_process, tmp_path, group_sizes):
    root, fresh = in_process
    notes = []
    batched = run_sweep("sw", DIGITS, GRID, root=tmp_path, executor=Batched(say=notes.append))
    assert group_sizes == [3, 6, 6]  # the seeds' pretrainings; per source, every seed's λs
    assert not fresh.failures and batched.ran == len(fresh.members) == 3 * (1 + 2 * 3)
    assert batched.to_dict() == fresh.to_dict()  # every figure and params_sha256, and the table
    assert notes == []  # digits: nothing to say, every seed trains in one group
    for member in fresh.members:  # ordinary sessions, as the in-process run leaves them
        name = member["name"]
        assert _session(tmp_path / name) == _session(root / name), name
        assert _records(tmp_path / name) == _records(root / name), name
    finetuned = next(m for m in batched.members if m["lam"] == 5.0)
    engine = Engine.open(tmp_path / finetuned["name"])  # as `clusterlab resume` and the UI open it
    try:
        snapshot = engine.snapshot()
    finally:
        engine.close()
    assert (snapshot.params_sha256, snapshot.test_accuracy, snapshot.clusterability) == (
        finetuned["params_sha256"], finetuned["test_accuracy"], finetuned["clusterability"])


def test_a_stopped_group_resumes_from_its_saves(in_process, tmp_path):
    """Stop while the finetuning group is halfway; the members keep their group's save and, rerun, form the group
    again and end as an uninterrupted run does."""
    stop = threading.Event()

    def halfway(name, share):
        if ".lam" in name and share >= 0.5:
            stop.set()

    stopped = run_sweep("sw", DIGITS, GRID, root=tmp_path, executor=Batched(stop),
                        display=_Watching(halfway))
    assert stopped.stopped and not stopped.failures
    left = [m["name"] for m in stopped.members if m["status"] == "unfinished"]
    assert all(".lam" in name for name in left)
    group = [name for name in left if (tmp_path / name / "session.json").is_file()]  # the next group never opened
    assert len(group) == 3 * 2
    steps = set()
    for name in group:
        saved = json.loads((tmp_path / name / "session.json").read_text())
        assert saved["plan"][0]["kind"] == "finetune" and 0 < saved["plan"][0]["done"] < saved["plan"][0]["total"]
        steps.add(saved["step"])
    assert len(steps) == 1  # saved together
    resumed = run_sweep("sw", {}, {}, root=tmp_path, executor=Batched())
    assert resumed.ran == len(left) and resumed.to_dict() == in_process[1].to_dict()


def test_members_at_different_points_train_in_separate_groups(in_process, tmp_path, group_sizes):
    """A member stopped mid-pretraining in-process resumes alone; the others start as one group; same table."""
    stop = threading.Event()

    def halfway(name, share):
        if name == "sw.s1" and share >= 0.5:
            stop.set()

    run_sweep("sw", DIGITS, GRID, root=tmp_path, executor=InProcess(stop), display=_Watching(halfway))
    assert 0 < json.loads((tmp_path / "sw.s1" / "session.json").read_text())["plan"][0]["done"]
    assert not (tmp_path / "sw.s2").exists()
    resumed = run_sweep("sw", {}, {}, root=tmp_path, executor=Batched())
    assert group_sizes == [2, 6, 6]  # sw.s1 resumed alone, as an ordinary member
    assert resumed.to_dict() == in_process[1].to_dict()


def test_seed_dependent_data_batch_only_the_lams_of_one_seed(tmp_path, group_sizes):
    settings = {"dataset": "synthetic", "hidden": (16, 16), "device": "cpu", "steps": 20, "finetune_epochs": 1,
                "null_samples": 4}
    grid = {"seeds": [1, 2], "lams": [0, 5]}
    notes = []
    batched = run_sweep("sw", settings, grid, root=tmp_path / "b", executor=Batched(say=notes.append))
    assert batched.to_dict() == run_sweep("sw", settings, grid, root=tmp_path / "a").to_dict()
    assert notes and all("synthetic data depend on the seed" in n for n in notes)
    assert group_sizes == [2, 2]  # no pretraining groups; each seed's two λs


def test_a_diverging_member_fails_alone_and_reruns(in_process, tmp_path, monkeypatch):
    """One member's loss turns NaN mid-group: it fails as it would alone (keeping its last save), the rest of its
    group trains on to the in-process results, and a rerun finishes it too."""
    poisoned = []
    take_losses = Trainer.take_losses

    def nan_once(self):
        losses = take_losses(self)
        if losses is not None and self.step > 46 and len(losses) == 6 and not poisoned:  # the finetuning group
            losses[1] = math.nan
            poisoned.append(self.step)
        return losses

    monkeypatch.setattr(Trainer, "take_losses", nan_once)
    first = run_sweep("sw", DIGITS, GRID, root=tmp_path, executor=Batched())
    assert [m["name"] for m in first.failures] == ["sw.s1.weights.k2.lam5"]
    assert first.failures[0]["error"].startswith("The training loss became nan near step")
    fresh = {m["name"]: m for m in in_process[1].members}
    assert all(m == fresh[m["name"]] for m in first.members if m["status"] == "finished")
    assert len(first.members) - len(first.failures) == len(fresh) - 1
    monkeypatch.undo()
    rerun = run_sweep("sw", {}, {}, root=tmp_path, executor=Batched())
    assert rerun.ran == 1 and rerun.to_dict() == in_process[1].to_dict()


def test_cli_executor_flag(capsys, sessions):
    args = ["sweep", "sw", "--seeds", "2", "--lam", "0,5", "--dataset", "digits", "--hidden", "16,16", "--device",
            "cpu", "--epochs", "1", "--finetune-epochs", "1", "--null-samples", "4", "--json"]
    assert main([*args, "--executor", "batched"]) == 0
    batched = json.loads(capsys.readouterr().out)
    assert len(batched["members"]) == 2 * 4 and all(m["status"] == "finished" for m in batched["members"])
    assert main([*args, "--executor", "threads"]) == 2
    assert capsys.readouterr().err.strip() == ("clusterlab: error: --executor must be one of inprocess, batched, "
                                               "ray, not 'threads'.")
    assert main([*args, "--ray-address", "auto"]) == 2
    assert "--ray-address is only for --executor ray" in capsys.readouterr().err


class _Watching:
    """A quiet sweep display that also passes each member's progress to `watch`."""

    def __init__(self, watch) -> None:
        from engine.sweep_run import SweepDisplay

        self.display, self.watch = SweepDisplay("sw", quiet=True), watch

    def __getattr__(self, name):
        return getattr(self.display, name)

    def member_progress(self, name: str, share: float) -> None:
        self.display.member_progress(name, share)
        self.watch(name, share)

    def __enter__(self):
        self.display.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.display.__exit__(*exc)
