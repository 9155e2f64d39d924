"""End to end: the real `clusterlab` command in tmux at 80x24, driven by keys, checked on the captured screen."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

TMUX = shutil.which("tmux")
pytestmark = pytest.mark.skipif(TMUX is None, reason="tmux is not installed")
CLUSTER_ROW = re.compile(r"^\s*\d+\s+\d+\s+\d+\s+\d\.\d{4}\s*$")


def clusterlab_command() -> list[str]:
    script = Path(sys.executable).with_name("clusterlab")
    if script.is_file():
        return [str(script)]
    found = shutil.which("clusterlab")
    return [found] if found else [sys.executable, "-m", "engine.cli"]


class Tmux:
    """One detached tmux session running a command, on a tmux server of its own; keys in, screen text out."""

    def __init__(self, command: str, cwd: Path, env: dict[str, str], size: tuple[int, int] = (80, 24)) -> None:
        self.name = f"clusterlab-test-{uuid.uuid4().hex[:8]}"
        self.tmux = [TMUX, "-L", self.name]  # its own server: killing it (an SSH drop) touches nothing else
        env_args = [arg for key, value in env.items() for arg in ("-e", f"{key}={value}")]
        subprocess.run([*self.tmux, "new-session", "-d", "-s", self.name, "-x", str(size[0]), "-y", str(size[1]),
                        "-c", str(cwd), *env_args, command], check=True)

    def keys(self, *keys: str) -> None:
        subprocess.run([*self.tmux, "send-keys", "-t", self.name, *keys], check=True)

    def screen(self) -> str:
        result = subprocess.run([*self.tmux, "capture-pane", "-p", "-t", self.name], capture_output=True, text=True)
        return result.stdout

    def wait_for(self, condition, what: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen()
            if condition(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; screen:\n{text}")
            time.sleep(0.1)

    def ui_pid(self) -> int:
        """The pid of the command the pane's shell runs (the clusterlab UI)."""
        shell = subprocess.run([*self.tmux, "display-message", "-p", "-t", self.name, "#{pane_pid}"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return int(Path(f"/proc/{shell}/task/{shell}/children").read_text().split()[0])

    def kill(self) -> None:
        """End the terminal and everything in it, as a dropped SSH connection does (the UI gets SIGHUP)."""
        subprocess.run([*self.tmux, "kill-server"], capture_output=True)


def cluster_rows(screen: str) -> int:
    """Rows of the cluster table: the right-hand pane's lines that read 'n rows cols share'."""
    return sum(1 for line in screen.splitlines() if CLUSTER_ROW.match(line.split("▕")[-1]))


def terminal(tmp_path: Path, args: str, size: tuple[int, int] = (80, 24)) -> Tmux:
    """The real `clusterlab ARGS` in a new tmux terminal of `size`, sessions under tmp_path."""
    app = " ".join(shlex.quote(part) for part in clusterlab_command())
    # The tmux server may be older than this test: its environment is passed explicitly.
    env = {"CLUSTERLAB_SESSIONS": str(tmp_path / "sessions"), "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    # The shell prints the exit code, then lingers so the final screen can still be captured.
    return Tmux(f"{app} {args}; echo CLUSTERLAB-EXIT=$?; sleep 60", tmp_path, env, size)


@contextmanager
def clusterlab_in_tmux(tmp_path: Path, flags: str, size: tuple[int, int] = (80, 24)) -> Iterator[Tmux]:
    """`terminal(tmp_path, flags)`; the block quits it with q (idle: the host ends too) and checks the exit code
    is 0."""
    tmux = terminal(tmp_path, flags, size)
    try:
        yield tmux
        tmux.keys("q")
        tmux.wait_for(lambda s: "CLUSTERLAB-EXIT=0" in s, "a clean exit")
    finally:
        tmux.kill()


@pytest.fixture
def host_sessions(tmp_path, monkeypatch) -> Iterator[Path]:
    """Sessions under tmp_path for hosts that outlive their terminal: any host still running at the end is
    stopped (saved), so no test leaves a process behind."""
    from engine.client import Client, running_hosts
    from engine.errors import SessionError

    root = tmp_path / "sessions"
    monkeypatch.setenv("CLUSTERLAB_SESSIONS", str(root))
    yield root
    for _name, path in running_hosts(root):
        try:
            with Client.connect(path, client="test", attach=False) as client:
                client.command("stop-host")
        except SessionError:
            pass  # already gone


def host_step(session: Path) -> int:
    """The step of the session's host, asked over its socket as `clusterlab ps` does."""
    from engine.client import Client

    with Client.connect(session, client="test", attach=False) as client:
        return client.command("status")["result"]["step"]


def shown_step(screen: str) -> int:
    """The step the control pane shows ('step 1,234  epoch 5')."""
    return int(re.search(r"step ([\d,]+)  epoch", screen).group(1).replace(",", ""))


LONG = "--dataset synthetic --hidden 32,32 --device cpu --epochs 5000"  # trains far longer than any test


def test_clusterlab_in_tmux(tmp_path):
    flags = "--dataset synthetic --hidden 32,32 --device cpu --epochs 2 --finetune-epochs 1 --k 3 --session e2e"
    with clusterlab_in_tmux(tmp_path, flags) as tmux:
        tmux.wait_for(lambda s: "training loss" in s and "test accuracy" in s and "clusterability" in s
                      and "idle" in s, "the charts and an idle session")
        tmux.keys("t")
        tmux.wait_for(lambda s: "step 128" in s and "idle" in s, "two epochs (128 steps) of training")
        tmux.keys("c")
        tmux.wait_for(lambda s: "Clusters found" in s, "clusters")
        tmux.keys("2")
        tmux.wait_for(lambda s: cluster_rows(s) == 3 and "idle" in s and "vs null" in s,
                      "a cluster table with 3 rows against its shuffle null, the null and ablation done")
        tmux.keys("1", "f")
        tmux.wait_for(lambda s: "finetune" in s and "step 192" in s and "idle" in s, "finetuning to step 192")
    saved = json.loads((tmp_path / "sessions" / "e2e" / "session.json").read_text())
    assert saved["step"] == 192 and saved["phase"] == "finetune"


def test_t_pressed_at_first_paint_trains(tmp_path):
    """The first key is never lost: `t` pressed the moment the screen shows, before the session has loaded,
    starts training once it has."""
    with clusterlab_in_tmux(tmp_path, "--dataset synthetic --hidden 32,32 --device cpu --epochs 2") as tmux:
        tmux.wait_for(lambda s: "Quit" in s and "Train" in s, "the first paint")
        tmux.keys("t")
        tmux.wait_for(lambda s: "step 128" in s and "idle" in s, "two epochs (128 steps) of training")


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_the_modules_tab_shows_the_blocks_and_the_ablation(tmp_path, size):
    flags = "--dataset synthetic --hidden 32,32 --device cpu --epochs 2 --k 2"
    with clusterlab_in_tmux(tmp_path, flags, size) as tmux:
        tmux.wait_for(lambda s: "Quit" in s and "Train" in s, "the first paint")
        tmux.keys("t")
        tmux.wait_for(lambda s: "step 128" in s and "idle" in s, "two epochs of training")
        tmux.keys("c")
        tmux.wait_for(lambda s: "Clusters found" in s and "idle" in s, "clusters, their null and ablation")
        tmux.keys("4")
        # the picture is drawn at the size the tab has, which the UI asks the host for once the tab is shown
        screen = tmux.wait_for(lambda s: "by cluster (k=2)" in s and "accuracy drop" in s
                               and len([line for line in s.splitlines() if line.count("▀") >= 10]) >= 4,
                               "the Modules tab with the reordered |W| as half-block cells")
        right = [line.split("▕")[-1].strip() for line in screen.splitlines() if "▀" not in line]
        assert {"1", "2"} <= {cells.split()[0] for cells in right if cells.split()}  # a drop row per cluster


def test_a_dropped_terminal_leaves_the_run_going_and_attach_comes_back_to_it(tmp_path, host_sessions):
    """The SSH drop: the tmux server under a UI attached to a training run is killed; the host trains on, `ps`
    lists it, and `clusterlab attach NAME` in a new terminal shows the run, live."""
    first = terminal(tmp_path, f"{LONG} --session drop")
    try:
        first.wait_for(lambda s: "Quit" in s and "idle" in s, "the UI attached to an idle host")
        first.keys("t")
        first.wait_for(lambda s: "training" in s and "steps/s" in s, "training")
        ui = first.ui_pid()
        first.keys("4")  # the drop comes in the middle of drawing another tab
    finally:
        first.kill()  # the terminal is gone: the UI gets SIGHUP
    deadline = time.monotonic() + 15
    while Path(f"/proc/{ui}").exists() and Path(f"/proc/{ui}/stat").read_text().split()[2] != "Z":
        assert time.monotonic() < deadline, "the UI process outlived its terminal"  # detached, it must end
        time.sleep(0.05)
    session = host_sessions / "drop"
    step = host_step(session)
    deadline = time.monotonic() + 30
    while host_step(session) <= step:  # the run goes on with no terminal at all
        assert time.monotonic() < deadline, "the host's step did not advance after the terminal was killed"
        time.sleep(0.05)
    listed = subprocess.run([*clusterlab_command(), "ps", "--json"], capture_output=True, text=True, check=True,
                            env={**os.environ, "CLUSTERLAB_SESSIONS": str(host_sessions)})
    assert [(row["name"], row["state"]) for row in json.loads(listed.stdout)] == [("drop", "training")]

    again = terminal(tmp_path, "attach drop")
    try:
        screen = again.wait_for(lambda s: "training" in s and "steps/s" in s and "loss" in s,
                                "the run in the new terminal")
        assert shown_step(screen) > step
        screen = again.wait_for(lambda s: shown_step(s) > shown_step(screen), "the step moving on screen")
        again.keys("q")
        again.wait_for(lambda s: "Stop the run" in s and "Leave it running" in s, "the question")
        again.keys("s")  # stop the run: saved, the host ends
        again.wait_for(lambda s: "CLUSTERLAB-EXIT=0" in s, "a clean exit")
    finally:
        again.kill()
    saved = json.loads((session / "session.json").read_text())
    assert saved["step"] > step and saved["plan"][0]["kind"] == "pretrain"  # resumable where it stopped


def test_d_detaches_and_says_how_to_come_back(tmp_path, host_sessions):
    tmux = terminal(tmp_path, f"{LONG} --session away")
    try:
        tmux.wait_for(lambda s: "Quit" in s and "idle" in s, "the UI attached to an idle host")
        tmux.keys("t")
        tmux.wait_for(lambda s: "training" in s and "steps/s" in s, "training")
        tmux.keys("d")
        screen = tmux.wait_for(lambda s: "CLUSTERLAB-EXIT=0" in s, "the shell again")
    finally:
        tmux.kill()
    assert "Detached from away: its run goes on. Come back with: clusterlab attach away" in " ".join(screen.split())
    step = host_step(host_sessions / "away")
    deadline = time.monotonic() + 30
    while host_step(host_sessions / "away") <= step:
        assert time.monotonic() < deadline, "the run stopped when the UI detached"
        time.sleep(0.05)


def test_two_uis_attached_see_the_same_run(tmp_path, host_sessions):
    one = terminal(tmp_path, f"{LONG} --session both")
    two = None
    try:
        one.wait_for(lambda s: "Quit" in s and "idle" in s, "the first UI attached to an idle host")
        two = terminal(tmp_path, "attach both")
        two.wait_for(lambda s: "Quit" in s and "idle" in s, "the second UI attached to the same host")
        one.keys("t")  # a key in one terminal…
        for tmux in (one, two):
            tmux.wait_for(lambda s: "training" in s and "steps/s" in s, "…trains in both")
        two.keys("space")  # …and one in the other
        one.wait_for(lambda s: "paused" in s, "paused")
        step = host_step(host_sessions / "both")  # paused: it stays
        for tmux in (one, two):
            tmux.wait_for(lambda s: "paused" in s and shown_step(s) == step, f"paused at step {step} in both")
        one.keys("x")
        for tmux in (one, two):
            tmux.wait_for(lambda s: "idle" in s and "paused" not in s, "idle in both")
        one.keys("q")  # idle: ends the host; the other UI is told
        one.wait_for(lambda s: "CLUSTERLAB-EXIT=0" in s, "the first UI to exit")
        two.wait_for(lambda s: "The host ended" in " ".join(s.split()), "the second UI told the host has ended")
        two.keys("q")
        two.wait_for(lambda s: "CLUSTERLAB-EXIT=0" in s, "the second UI to exit")
    finally:
        one.kill()
        if two is not None:
            two.kill()
