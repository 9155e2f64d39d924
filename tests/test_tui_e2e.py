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
    """One detached tmux session running a command; keys in, screen text out."""

    def __init__(self, command: str, cwd: Path, env: dict[str, str], size: tuple[int, int] = (80, 24)) -> None:
        self.name = f"clusterlab-test-{uuid.uuid4().hex[:8]}"
        env_args = [arg for key, value in env.items() for arg in ("-e", f"{key}={value}")]
        subprocess.run([TMUX, "new-session", "-d", "-s", self.name, "-x", str(size[0]), "-y", str(size[1]),
                        "-c", str(cwd), *env_args, command], check=True)

    def keys(self, *keys: str) -> None:
        subprocess.run([TMUX, "send-keys", "-t", self.name, *keys], check=True)

    def screen(self) -> str:
        result = subprocess.run([TMUX, "capture-pane", "-p", "-t", self.name], capture_output=True, text=True)
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

    def kill(self) -> None:
        subprocess.run([TMUX, "kill-session", "-t", self.name], capture_output=True)


def cluster_rows(screen: str) -> int:
    """Rows of the cluster table: the right-hand pane's lines that read 'n rows cols share'."""
    return sum(1 for line in screen.splitlines() if CLUSTER_ROW.match(line.split("▕")[-1]))


@contextmanager
def clusterlab_in_tmux(tmp_path: Path, flags: str, size: tuple[int, int] = (80, 24)) -> Iterator[Tmux]:
    """The real `clusterlab FLAGS` in a tmux terminal of `size`, sessions under tmp_path; the block quits it with
    q and checks the exit code is 0."""
    app = " ".join(shlex.quote(part) for part in clusterlab_command())
    # The tmux server may be older than this test: its environment is passed explicitly.
    env = {"CLUSTERLAB_SESSIONS": str(tmp_path / "sessions"), "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    # The shell prints the exit code, then lingers so the final screen can still be captured.
    tmux = Tmux(f"{app} {flags}; echo CLUSTERLAB-EXIT=$?; sleep 60", tmp_path, env, size)
    try:
        yield tmux
        tmux.keys("q")
        tmux.wait_for(lambda s: "CLUSTERLAB-EXIT=0" in s, "a clean exit")
    finally:
        tmux.kill()


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
        screen = tmux.wait_for(lambda s: "by cluster (k=2)" in s and "accuracy drop" in s, "the Modules tab")
        picture_rows = [line for line in screen.splitlines() if line.count("▀") >= 10]
        assert len(picture_rows) >= 4  # the reordered |W| as half-block cells
        right = [line.split("▕")[-1].strip() for line in screen.splitlines() if "▀" not in line]
        assert {"1", "2"} <= {cells.split()[0] for cells in right if cells.split()}  # a drop row per cluster
