"""Sweeps: the CI maths, pairing by seed, members as sessions, resuming after a stop or a SIGKILL, the CLI."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from scipy import stats as scipy_stats

from engine.axes import AXES, parse_seeds, parse_shapes
from engine.cli import main
from engine.config import Config
from engine.engine import Engine
from engine.member import run_member
from engine.reproduce import compare
from engine.stats import mean_ci, paired_difference, prediction_interval
from engine.sweep import make_grid, plan_members, sweep_row
from engine.sweep_run import InProcess, run_sweep, stop_on_signals
from engine.sweep_table import markdown, table_rows, to_csv
from tests.conftest import CLUSTERLAB, needs_mnist, run_cli

TINY = {"dataset": "synthetic", "hidden": (16, 16), "device": "cpu", "steps": 20, "finetune_epochs": 1,
        "autosave_every": 10**6, "eval_every": 10**6}
TINY_FLAGS = ["--dataset", "synthetic", "--hidden", "16,16", "--device", "cpu", "--steps", "20",
              "--finetune-epochs", "1", "--autosave-every", "16", "--eval-every", "1000000"]


# ----- statistics -------------------------------------------------------------------------------------------------


def test_mean_ci_is_student_t_by_hand_and_by_scipy():
    sample = [0.91, 0.93, 0.90, 0.94, 0.92]
    estimate = mean_ci(sample)
    # by hand: mean 0.92, squared deviations sum to 0.001, s = sqrt(0.001 / 4), t(0.975, 4) = 2.776445
    assert estimate.n == 5 and estimate.mean == pytest.approx(0.92)
    assert estimate.ci == pytest.approx(2.776445 * math.sqrt(0.001 / 4) / math.sqrt(5), rel=1e-6)
    low, high = scipy_stats.t.interval(0.95, 4, loc=0.92, scale=scipy_stats.sem(sample))
    assert estimate.interval == pytest.approx((low, high))
    one_run = 2.776445 * math.sqrt(0.001 / 4) * math.sqrt(1 + 1 / 5)
    assert prediction_interval(sample) == pytest.approx((0.92 - one_run, 0.92 + one_run), rel=1e-6)


def test_mean_ci_of_one_value_and_of_none():
    assert (mean_ci([0.5]).mean, mean_ci([0.5]).ci) == (0.5, None)
    assert (mean_ci([]).mean, mean_ci([None]).n) == (None, 0)
    assert prediction_interval([0.5]) is None


def _member(kind, seed, accuracy, lam=None, **extra):
    source, k = (None, None) if kind == "pretrain" else ("weights", 2)
    return {"name": f"m.{kind}.{seed}.{lam}", "kind": kind, "seed": seed, "source": source, "k": k, "lam": lam,
            "test_accuracy": accuracy, "clusterability": extra.pop("clusterability", 0.5), "significance": None,
            "ablation": None, "status": "finished", **extra}


def test_accuracy_cost_is_paired_by_seed():
    control = {1: 0.90, 2: 0.80, 3: 0.70}
    treated = {3: 0.65, 1: 0.88, 2: 0.79, 4: 0.10}  # seed 4 has no control: left out of the pairing
    members = ([_member("finetune", s, a, lam=0.0) for s, a in control.items()]
               + [_member("finetune", s, a, lam=10.0) for s, a in treated.items()])
    rows = {r["lam"]: r for r in table_rows(members)}
    differences = [0.02, 0.01, 0.05]
    expected = mean_ci(differences)
    assert rows[10.0]["accuracy_cost"] == pytest.approx(sum(differences) / 3)
    assert rows[10.0]["accuracy_cost_ci"] == pytest.approx(expected.ci)
    assert rows[10.0]["n"] == 4 and rows[10.0]["seeds"] == [1, 2, 3, 4]
    assert rows[0.0]["accuracy_cost"] == 0.0
    # unpaired, the means would differ by (0.8 - 0.605) = 0.195, not 0.0267
    assert paired_difference(control, treated).mean == pytest.approx(0.026667, abs=1e-6)


def test_significance_and_ablation_figures_are_read_where_present():
    # nulls in the flat form sessions saved before the measures registry: read as today's
    significance = [{"method": "permute", "samples": 100, "null_mean": nm, "null_std": 0.01, "z": 1.0, "p_value": p,
                     "ncut": nc, "ncut_null_mean": 0.5, "ncut_p_value": 0.5}
                    for nm, p, nc in ((0.55, 0.01, 0.4), (0.57, 0.2, 0.6))]
    members = [_member("cluster", 1, 0.8, significance=significance[0],
                       ablation={"specialisation": [0.2, 0.4], "p_value": [0.1, 0.2]}),
               _member("cluster", 2, 0.9, significance=significance[1], ablation=None),
               _member("pretrain", 1, 0.8), _member("pretrain", 2, 0.9)]
    rows = {r["stage"]: r for r in table_rows(members)}
    clustered, pretrained = rows["clustered"], rows["pretrained"]
    assert clustered["clusterability_null_mean"] == pytest.approx(0.56) and clustered["ncut"] == pytest.approx(0.5)
    assert clustered["clusterability_significant"] == 1 and clustered["clusterability_tested"] == 2
    assert clustered["specialisation"] == pytest.approx(0.3)  # the one member with an ablation
    assert pretrained["clusterability_null_mean"] is None and pretrained["clusterability_tested"] == 0
    text = markdown(table_rows(members))
    assert "| 0.5600 (1/2, Holm 1) |" in text  # Holm over 0.01 and 0.2: 0.02 and 0.2
    assert text.splitlines()[-1].count("| - ") >= 5  # the pretrained row: no clusters, no null, no cost
    csv_lines = to_csv(table_rows(members)).splitlines()
    assert csv_lines[0].startswith("stage,source,k,lam,n,seeds,test_accuracy")
    assert len(csv_lines) == 3


# ----- the grid ---------------------------------------------------------------------------------------------------


def _grid(seeds, sources, ks, lams, **more):
    return make_grid({"seeds": seeds, "sources": sources, "k": ks, "lam": lams, **more})


def test_grid_parsing_and_member_tree():
    assert list(parse_seeds("3")) == [1, 2, 3] and parse_seeds("4,9") == [4, 9] and list(parse_seeds("7..7")) == [7]
    grid = _grid([2, 1, 2], ["gradients", "weights"], [4, 2], [10, 3])
    assert grid.values == {"seed": (2, 1), "source": ("gradients", "weights"), "k": (2, 4), "lam": (0.0, 3.0, 10.0)}
    members = plan_members("sw", _grid([1], ["weights"], [2], [0.5]))
    assert [(m.name, m.parent) for m in members] == [
        ("sw.s1", None), ("sw.s1.weights.k2", "sw.s1"), ("sw.s1.weights.k2.lam0", "sw.s1.weights.k2"),
        ("sw.s1.weights.k2.lam0.5", "sw.s1.weights.k2")]
    assert len(plan_members("x", grid)) == 2 * (1 + 2 * 2 * (1 + 3))


def test_every_axis_names_members_and_sets_their_config():
    assert parse_shapes("32,64x16x8,8*3") == [[32, 32], [64, 16, 8], [8, 8, 8]]
    grid = _grid([1], ["weights"], [2], [3], hidden=[[16, 16], [8, 8]], lr=[0.1, 0.01], epochs=[2])
    assert grid.version == 2 and _grid([1], ["weights"], [2], [3]).version == 1
    members = plan_members("sw", grid)
    assert len(members) == 2 * 2 * (1 + 1 + 2)
    first = members[-1]
    assert first.name == "sw.s1.h16x16.lr0.1.e2.weights.k2.lam3"
    assert first.parent == "sw.s1.h16x16.lr0.1.e2.weights.k2"
    config = first.config(Config(**TINY))
    assert (config.hidden, config.lr, config.epochs, config.lam, config.seed) == ((16, 16), 0.1, 2, 3.0, 1)
    # every axis's flag parses into the grid key it is saved under
    assert {a.key for a in AXES} == {"seeds", "hidden", "lr", "epochs", "prune", "sources", "k", "lam"}


def test_hidden_is_an_axis_with_its_own_column(tmp_path):
    result = run_sweep("sw", {k: v for k, v in TINY.items() if k != "hidden"},
                       {"seeds": [1], "lam": [5], "hidden": [[8, 8], [16, 16]]}, root=tmp_path)
    assert [r["hidden"] for r in result.table if r["stage"] == "pretrained"] == [[8, 8], [16, 16]]
    control = {tuple(r["hidden"]): r for r in result.table if r["stage"] == "finetuned" and r["lam"] == 0}
    assert set(control) == {(8, 8), (16, 16)}  # each width's λ=5 is paired with its own control
    head = markdown(result.table).splitlines()[0]
    assert head.startswith("| stage | hidden | source | k | λ |")
    assert "| pretrained | 8x8 | - | - | - |" in markdown(result.table)
    assert to_csv(result.table).splitlines()[1].startswith("pretrained,8x8,,,,1,")
    saved = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert saved["grid"]["hidden"] == [[8, 8], [16, 16]] and "hidden" not in saved["settings"]
    assert json.loads((tmp_path / "sw.s1.h16x16" / "session.json").read_text())["config"]["hidden"] == [16, 16]
    # one value is a setting, as in every sweep before axes were declared: no name part, no column
    single = run_sweep("one", TINY, {"seeds": [1], "lam": [5], "hidden": [[16, 16]]}, root=tmp_path)
    assert "hidden" not in single.table[0] and single.members[0]["name"] == "one.s1"


def test_a_sweep_saved_before_axes_were_declared_continues(tmp_path):
    """tests/data/sweep_v1: a sweep written by the code before this change (one seed, finished). Its members keep
    their names and configs (so a stopped one resumes), are not run again, and the grid grows around them."""
    root = tmp_path / "sessions"
    shutil.copytree(Path(__file__).parent / "data" / "sweep_v1", root)
    before = json.loads((root / "old" / "table.json").read_text())
    manifest = json.loads((root / "old" / "sweep.json").read_text())
    members = plan_members("old", make_grid(manifest["grid"]))
    assert [m.name for m in members] == manifest["members"]
    base = Config.from_dict(manifest["settings"])
    for member in members:
        saved = json.loads((root / member.name / "session.json").read_text())["config"]
        assert member.config(base) == Config.from_dict(saved)  # fields added since read as their defaults
    counting = Counting()
    grown = run_sweep("old", {}, {"seeds": [1, 2]}, root=root, executor=counting)
    assert grown.skipped == 4 and counting.given == ["old.s2", "old.s2.weights.k2", "old.s2.weights.k2.lam0",
                                                     "old.s2.weights.k2.lam5"]
    keys = ("name", "kind", "seed", "source", "k", "lam", "status", "step", "params_sha256", "test_accuracy",
            "clusterability")
    assert [{k: m[k] for k in keys} for m in grown.members[:4]] == [{k: m[k] for k in keys}
                                                                    for m in before["members"]]
    assert json.loads((root / "old" / "sweep.json").read_text())["format_version"] == 1


def test_seed_has_no_meaning_in_a_sweep_and_flags_are_not_abbreviated(capsys, sessions):
    error = _one_line_error(capsys, ["sweep", "sw", "--seed", "3", *TINY_FLAGS])
    assert "--seed has no meaning in a sweep" in error and "--seeds" in error
    assert "unrecognized arguments: --see" in _one_line_error(capsys, ["sweep", "sw", "--see", "3", *TINY_FLAGS])
    assert list(sessions.iterdir()) == []


def test_an_axis_a_saved_sweep_does_not_vary_is_refused(capsys, sessions):
    assert main(["sweep", "sw", "--seeds", "1", "--lam", "5", *TINY_FLAGS]) == 0
    capsys.readouterr()
    assert "does not vary --hidden" in _one_line_error(capsys, ["sweep", "sw", "--hidden", "8,16"])


# ----- running ----------------------------------------------------------------------------------------------------


class Counting(InProcess):
    """The in-process executor, keeping the names of the members it is given; it stops the sweep once
    `stop_after` members have ended."""

    def __init__(self, stop_after: int | None = None) -> None:
        super().__init__(threading.Event())
        self.given: list[str] = []
        self.stop_after = stop_after
        self.ended = 0

    def __call__(self, settings, report, progress):
        self.given = [s["name"] for s in settings]

        def counted(result):
            report(result)
            self.ended += 1
            if self.ended == self.stop_after:
                self.stop.set()

        super().__call__(settings, counted, progress)


def test_resume_runs_only_unfinished_members_and_gives_the_same_table(tmp_path):
    grid = {"seeds": [1, 2], "lams": [0, 5]}
    fresh = run_sweep("sw", TINY, grid, root=tmp_path / "a")
    assert fresh.ran == 8 and not fresh.failures

    first = Counting(stop_after=3)
    stopped = run_sweep("sw", TINY, grid, root=tmp_path / "b", executor=first)
    assert len(first.given) == 8 and stopped.ran == 3
    leftover = tmp_path / "b" / "sw.s2"  # a creation cut before its first save: only our own files in it
    leftover.mkdir()
    (leftover / "metrics.jsonl").write_text('{"type":"train"}\n')
    second = Counting()
    resumed = run_sweep("sw", {}, {}, root=tmp_path / "b", executor=second)  # the manifest alone continues it
    assert len(second.given) == 5 and resumed.skipped == 3 and resumed.ran == 5
    assert resumed.to_dict() == fresh.to_dict()
    again = Counting()
    run_sweep("sw", {}, {}, root=tmp_path / "b", executor=again)
    assert again.given == []


def test_sigterm_stops_a_member_mid_job_and_it_resumes_from_its_own_save(tmp_path):
    grid, settings = {"seeds": [1], "lams": [5]}, {**TINY, "autosave_every": 16}  # progress reported every 16 steps
    fresh = run_sweep("sw", settings, grid, root=tmp_path / "a")
    stop = threading.Event()

    class SignalHalfway(InProcess):
        """Sends this process SIGTERM once the λ=5 member is halfway through its finetuning."""

        def __call__(self, settings, report, progress):
            def watch(name, share):
                progress(name, share)
                if name.endswith("lam5") and share >= 0.5 and not stop.is_set():
                    os.kill(os.getpid(), signal.SIGTERM)

            super().__call__(settings, report, watch)

    with stop_on_signals(stop):
        stopped = run_sweep("sw", settings, grid, root=tmp_path / "b", executor=SignalHalfway(stop))
    assert stopped.stopped and not stopped.failures
    assert {m["name"] for m in stopped.members if m["status"] == "unfinished"} == {"sw.s1.weights.k2.lam5"}
    saved = json.loads((tmp_path / "b" / "sw.s1.weights.k2.lam5" / "session.json").read_text())
    assert saved["plan"][0]["kind"] == "finetune" and 0 < saved["plan"][0]["done"] < saved["plan"][0]["total"]
    assert saved["step"] > 20  # past its parent's state: it trained, and resumes from there
    resumed = run_sweep("sw", settings, grid, root=tmp_path / "b")
    assert resumed.ran == 1 and resumed.to_dict() == fresh.to_dict()
    assert sweep_row(tmp_path / "b" / "sw")["finished"] == 4


def test_members_are_ordinary_sessions(tmp_path, monkeypatch):
    monkeypatch.setenv("CLUSTERLAB_SESSIONS", str(tmp_path))
    result = run_sweep("sw", TINY, {"seeds": [3], "lams": [5]})
    by_kind = {m["kind"]: m for m in result.members if m["lam"] != 0.0}
    assert by_kind["pretrain"]["params_sha256"] == by_kind["cluster"]["params_sha256"]  # clustering trains nothing
    finetuned = by_kind["finetune"]
    engine = Engine.open(tmp_path / finetuned["name"])
    try:
        snapshot = engine.snapshot()
    finally:
        engine.close()
    assert snapshot.params_sha256 == finetuned["params_sha256"]
    assert (snapshot.test_accuracy, snapshot.clusterability) == (finetuned["test_accuracy"],
                                                                 finetuned["clusterability"])
    assert [h["phase"] for h in snapshot.history] == ["pretrain", "cluster", "finetune"]
    assert snapshot.plan == () and snapshot.config["seed"] == 3 and snapshot.config["lam"] == 5.0
    settings = plan_members("sw", _grid([3], ["weights"], [2], [5]))[-1].settings(Config(**TINY), tmp_path)
    assert run_member(settings) == finetuned  # a finished member is not run again: its result is read back


def test_a_failing_member_is_reported_and_its_children_are_not_run(tmp_path):
    result = run_sweep("sw", {**TINY, "lr": 1e30}, {"seeds": [1], "lams": [5]}, root=tmp_path)
    errors = {m["name"]: m["error"] for m in result.failures}
    assert "loss became" in errors["sw.s1"]
    assert errors["sw.s1.weights.k2"] == "not run: sw.s1 did not finish"
    assert result.table == []


# ----- the command line -------------------------------------------------------------------------------------------


def _one_line_error(capsys, argv) -> str:
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("clusterlab: error: "), err
    return lines[0]


@pytest.mark.parametrize("args, word", [
    (["--k", "2,1"], "--k"), (["--lam", "0,-1"], "--lam"), (["--cluster-on", "weights,biases"], "--cluster-on"),
    (["--seeds", "0"], "--seeds"), (["--seeds", "a,b"], "--seeds"), (["--k", "99"], "--k"), (["--lr", "0"], "--lr"),
])
def test_bad_sweep_input(capsys, sessions, args, word):
    assert word in _one_line_error(capsys, ["sweep", "sw", "--seeds", "2", *TINY_FLAGS, *args])
    assert list(sessions.iterdir()) == []


def test_sweep_names_and_settings_are_checked(capsys, sessions):
    assert "--seeds" in _one_line_error(capsys, ["sweep", "new", *TINY_FLAGS])
    assert "too long" in _one_line_error(capsys, ["sweep", "n" * 60, "--seeds", "1", *TINY_FLAGS])
    (sessions / "taken").mkdir()
    (sessions / "taken" / "session.json").write_text("{}")
    assert "not a sweep" in _one_line_error(capsys, ["sweep", "taken", "--seeds", "1", *TINY_FLAGS])
    assert main(["sweep", "sw", "--seeds", "1", "--lam", "5", *TINY_FLAGS]) == 0
    capsys.readouterr()
    assert "--lr (was 0.001)" in _one_line_error(capsys, ["sweep", "sw", "--lr", "0.5"])


def test_sweep_survives_sigkill_and_gives_the_same_table(tmp_path):
    """SIGKILL the CLI halfway through; the same command then runs only what is left and prints the same JSON."""
    args = ["sweep", "sw", "--seeds", "2", "--lam", "0,5", *TINY_FLAGS, "--json"]
    fresh = run_sweep("sw", {**TINY, "autosave_every": 16}, {"seeds": [1, 2], "lams": [0, 5]}, root=tmp_path / "a")
    root = tmp_path / "b"
    root.mkdir()
    env = {**os.environ, "CLUSTERLAB_SESSIONS": str(root)}
    proc = subprocess.Popen([*CLUSTERLAB, *args], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:  # one line per finished member; kill as the fourth of eight is reported
            if "(4/8 members)" in line:
                break
        else:
            pytest.fail(f"the sweep ended before its fourth member (rc {proc.wait()})")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    rerun = run_cli(*args, env_sessions=root)
    assert "of 8 members already finished" in rerun.stderr
    assert json.loads(rerun.stdout) == fresh.to_dict()
    assert json.loads((root / "sw" / "table.json").read_text()) == fresh.to_dict()


def test_acceptance_digits_sweep(sessions):
    started = time.perf_counter()
    proc = run_cli("sweep", "s1", "--dataset", "digits", "--lr", "0.05", "--epochs", "5", "--seeds", "3", "--k", "2",
                   "--lam", "0,10", "--finetune-epochs", "3", "--json", env_sessions=sessions)
    elapsed = time.perf_counter() - started
    result = json.loads(proc.stdout)
    assert result["sweep"] == "s1" and len(result["members"]) == 3 * 4
    assert all(len(m["params_sha256"]) == 64 for m in result["members"])
    rows = {(r["stage"], r["lam"]): r for r in result["table"]}
    assert set(rows) == {("pretrained", None), ("clustered", None), ("finetuned", 0.0), ("finetuned", 10.0)}
    assert all(r["n"] == 3 and r["test_accuracy_ci"] > 0 for r in rows.values())
    assert rows["finetuned", 10.0]["clusterability"] > rows["finetuned", 0.0]["clusterability"] + 0.2
    assert rows["finetuned", 0.0]["test_accuracy"] > 0.7
    assert json.loads((sessions / "s1" / "table.json").read_text()) == result
    assert (sessions / "s1" / "table.csv").read_text().count("\n") == 5
    listed = {r["name"] for r in json.loads(run_cli("sessions", "--json", env_sessions=sessions).stdout)}
    assert {"s1.s1", "s1.s3.weights.k2.lam10"} <= listed
    print(f"acceptance sweep: {elapsed:.1f} s")


@pytest.mark.slow
@needs_mnist
def test_reproduce_smoke_on_mnist(sessions):
    from tests.conftest import MNIST_DIR

    proc = run_cli("reproduce", "--seeds", "1", "--epochs", "1", "--finetune-epochs", "1", "--data-dir",
                   str(MNIST_DIR), "--device", "cpu", "--json", env_sessions=sessions, timeout=600)
    result = json.loads(proc.stdout)
    assert result["sweep"] == "reproduce-e1-f1" and len(result["members"]) == 1 + 2 * 3
    (setup,) = result["setups"]
    assert setup["pretrain_epochs"] == 1 and setup["primary"] is True
    figures = {r["figure"]: r for r in setup["reference"]}
    assert figures["pretrained accuracy"]["reference"] is None  # 0.8771 was logged in a 5-epoch run
    assert figures["finetuned accuracy (λ=3)"]["verdict"] == "cannot tell from fewer than two seeds"
    assert 0.3 < figures["clusterability, k=2 on weights"]["mean"] < 1
    assert compare(result["members"])[0].estimate.n == 1


@pytest.mark.slow
@needs_mnist
def test_width_and_depth_on_mnist_each_get_their_rows(sessions):
    """The README's width x depth question, small: two widths by two depths on MNIST, every shape its own rows."""
    from tests.conftest import MNIST_DIR

    proc = run_cli("sweep", "wd", "--dataset", "mnist", "--data-dir", str(MNIST_DIR), "--device", "cpu",
                   "--hidden", "16*2,32*2,16*3", "--seeds", "2", "--lr", "0.05", "--steps", "200",
                   "--finetune-epochs", "0", "--null-samples", "19", "--json", env_sessions=sessions, timeout=600)
    table = json.loads(proc.stdout)["table"]
    clustered = {tuple(r["hidden"]): r for r in table if r["stage"] == "clustered"}
    assert set(clustered) == {(16, 16), (32, 32), (16, 16, 16)}
    for row in clustered.values():
        assert row["seeds"] == [1, 2] and 0 < row["clusterability"] < 1
        assert row["clusterability_tested"] == 2 and 0 < row["clusterability_null_mean"] < 1  # beside its null
    assert all(r["test_accuracy"] > 0.5 for r in table if r["stage"] == "pretrained")  # it learned MNIST
