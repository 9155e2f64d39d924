"""Startup cost: `clusterlab run --dataset mnist --steps 1 --finetune-epochs 0` against a bare `import torch`.

Run from anywhere with the project's Python:  .venv/bin/python benchmarks/startup.py [--repeats 7]
Both commands run as fresh processes, interleaved, after one untimed run that fills the dataset cache; the
figures are medians of wall time and of CPU time (user + system, which a busy machine inflates less).
With --load it also times load_dataset('mnist') alone in a fresh process, cold (empty cache) and warm.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tomllib  # standard library since 3.11; ruff sorts it as third-party as it targets 3.10

REPO = Path(__file__).resolve().parents[1]
TARGET_S = 1.5
# What the installed `clusterlab` script runs, read from this checkout's pyproject.toml (the script itself may
# come from another checkout's install).
_MODULE, _FUNCTION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]["clusterlab"].split(":")
CLUSTERLAB = [sys.executable, "-c", f"import sys; from {_MODULE} import {_FUNCTION}; sys.exit({_FUNCTION}())"]
RUN = [*CLUSTERLAB, "run", "--dataset", "mnist", "--steps", "1", "--finetune-epochs", "0", "--json"]
TORCH = [sys.executable, "-c", "import torch"]
LOAD = [sys.executable, "-c", "import time, torch; from engine.data import load_dataset; t = time.perf_counter(); "
        "load_dataset('mnist', None, 0, torch.device('cpu')); print(time.perf_counter() - t)"]


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (user + system) and stdout of one run, which must succeed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(command)} failed (rc {proc.returncode}):\n{proc.stderr}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), proc.stdout


def median_of(samples: list[tuple[float, float, str]]) -> tuple[float, float]:
    return statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples)


def startup(repeats: int, env: dict[str, str]) -> None:
    first = timed(RUN, env)[0]
    runs, torches = [], []
    for _ in range(repeats):
        runs.append(timed(RUN, env))
        torches.append(timed(TORCH, env))
    (run_wall, run_cpu), (torch_wall, torch_cpu) = median_of(runs), median_of(torches)
    print(f"untimed first run (fills the dataset cache if empty): {first:.2f} s wall")
    rows = [("clusterlab " + " ".join(RUN[len(CLUSTERLAB):]), run_wall, run_cpu),
            ('python -c "import torch"', torch_wall, torch_cpu),
            ("difference", run_wall - torch_wall, run_cpu - torch_cpu)]
    width = max(len(label) for label, _, _ in rows)
    print(f"{f'medians of {repeats} runs each, interleaved':<{width + 2}}{'wall':>8}{'cpu':>9}")
    for label, wall, cpu in rows:
        print(f"  {label:<{width}} {wall:6.2f} s {cpu:6.2f} s")
    verdict = "within" if run_wall - torch_wall <= TARGET_S else "OVER"
    print(f"the wall-time difference is {verdict} the {TARGET_S} s target")


def load_times(repeats: int, env: dict[str, str]) -> None:
    cold, warm = [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="clusterlab-cache-") as cache:
            fresh = {**env, "CLUSTERLAB_CACHE": cache}
            cold.append(float(timed(LOAD, fresh)[2]))
            warm.append(float(timed(LOAD, fresh)[2]))
    print(f"load_dataset('mnist') in a fresh process, medians of {repeats}: "
          f"cold (decode + fill the cache) {statistics.median(cold) * 1e3:.0f} ms, "
          f"warm (from the cache) {statistics.median(warm) * 1e3:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--load", action="store_true", help="also time load_dataset cold and warm")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="clusterlab-startup-") as sessions:
        env = {**os.environ, "CLUSTERLAB_SESSIONS": sessions,
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        startup(args.repeats, env)
        if args.load:
            load_times(max(1, args.repeats // 2), env)


if __name__ == "__main__":
    main()
