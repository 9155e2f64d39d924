"""Benchmark (not a test): key-to-screen latency of the UI, its training throughput against the bare engine, and
the CPU its own thread takes (what the engine's thread waits for: both need the GIL)."""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from engine import Config, Engine
from engine.session import session_path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tui.latency", description=__doc__)
    parser.add_argument("--dataset", default="synthetic", choices=["synthetic", "mnist"])
    parser.add_argument("--data-dir", help="folder with MNIST's IDX files (e.g. ../shared/datasets/mnist)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--trials", type=int, default=10, help="pause/resume key presses timed (default 10)")
    parser.add_argument("--seconds", type=float, default=5.0, help="throughput window per measurement (default 5)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of a headless window then a UI window (default 3); keys are timed in the first")
    parser.add_argument("--tab", default="1", choices=["1", "2", "3"],
                        help="tab shown while measuring: 1 charts (default), 2 clusters, 3 log")
    parser.add_argument("--size", default="120x40", help="terminal size, COLSxROWS (default 120x40)")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="print the UI thread's N costliest calls in each UI window (cProfile: it slows the UI)")
    return parser.parse_args(argv)


def bench_config(args: argparse.Namespace) -> Config:
    # Long enough never to finish during the benchmark; eval and autosave as in a normal run.
    return Config(dataset=args.dataset, data_dir=args.data_dir, device=args.device, epochs=10_000)


def headless_rate(path: Path, config: Config, seconds: float) -> float:
    """Steps per second of the engine alone, measured over a window after training got going."""
    engine = Engine.create(path, config)
    try:
        engine.train()
        while engine.snapshot().step < 20:
            time.sleep(0.01)
        return _window(engine, seconds)
    finally:
        engine.stop()
        engine.close()


def _window(engine: Engine, seconds: float) -> float:
    start_step, start = engine.snapshot().step, time.perf_counter()
    time.sleep(seconds)
    return (engine.snapshot().step - start_step) / (time.perf_counter() - start)


@dataclass
class UIRun:
    """One app run: key-to-screen latencies (first round only) and a throughput window with the UI's share of a
    CPU spent on its own thread (the GIL time the engine's thread cannot have)."""

    latencies: list[float]
    rate: float
    ui_cpu: float
    profile: str | None = None


async def _ui(name: str, config: Config, args: argparse.Namespace, trials: int) -> UIRun:
    from textual import events

    from tui.app import ClusterlabApp

    cols, rows = (int(n) for n in args.size.lower().split("x"))
    app = ClusterlabApp(name, config)
    latencies: list[float] = []
    async with app.run_test(size=(cols, rows)) as pilot:
        await _until(pilot, lambda: app.engine is not None and not app.switching)
        await pilot.press(args.tab)
        await pilot.press("t")
        await _until(pilot, lambda: app.live.state == "training" and app.engine.snapshot().step > 20)
        for _ in range(trials):
            for key_state in ("paused", "training"):
                started = time.perf_counter()
                # Post the key as the terminal driver does: Pilot.press would also wait for the process to go
                # idle, which it never does while training, so it would time its own waiting.
                app.post_message(events.Key("space", " "))
                # "On screen": the control pane's status text shows the new state.
                await _until(pilot, lambda s=key_state: f"[b]{s}[/b]" in str(app.query_one("#status").content))
                latencies.append((time.perf_counter() - started) * 1000)
            await pilot.pause(0.2)  # let training settle between trials, as a user would not press at 1 kHz
        profiler = cProfile.Profile() if args.profile else None
        start_step, start, start_cpu = app.engine.snapshot().step, time.perf_counter(), time.thread_time()
        if profiler is not None:
            profiler.enable()
        await pilot.pause(args.seconds)  # the UI keeps redrawing charts meanwhile
        if profiler is not None:
            profiler.disable()
        wall = time.perf_counter() - start
        run = UIRun(latencies, (app.engine.snapshot().step - start_step) / wall,
                    (time.thread_time() - start_cpu) / wall, _top(profiler, args.profile))
        app.engine.stop()
        await _until(pilot, lambda: app.live.state == "idle")
        await pilot.press("q")
        await _until(pilot, lambda: app.return_code is not None, timeout=60)
    return run


def _top(profiler: cProfile.Profile | None, count: int) -> str | None:
    if profiler is None:
        return None
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(count)
    return out.getvalue()


async def _until(pilot, condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark condition not reached")
        await pilot.pause(0.002)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = bench_config(args)
    headless: list[float] = []
    runs: list[UIRun] = []
    with tempfile.TemporaryDirectory(prefix="clusterlab-latency-") as root:
        os.environ["CLUSTERLAB_SESSIONS"] = root
        # Rounds pair a headless window with a UI window next to it, so the load of a shared machine drifts less
        # between the two figures a ratio compares.
        for i in range(args.rounds):
            headless.append(headless_rate(session_path(f"headless-{i}"), config, args.seconds))
            runs.append(asyncio.run(_ui(f"ui-{i}", config, args, args.trials if i == 0 else 0)))
    latencies = runs[0].latencies
    pause_ms, resume_ms = latencies[0::2], latencies[1::2]
    ratios = [run.rate / head for run, head in zip(runs, headless, strict=True)]
    print(f"dataset {args.dataset}, device {args.device}, terminal {args.size}, tab {args.tab}, {args.trials} trials, "
          f"{args.rounds} rounds of {args.seconds:g} s")
    if latencies:
        print(f"key -> screen, space to 'paused':   median {statistics.median(pause_ms):6.1f} ms, "
              f"max {max(pause_ms):6.1f} ms")
        print(f"key -> screen, space to 'training': median {statistics.median(resume_ms):6.1f} ms, "
              f"max {max(resume_ms):6.1f} ms")
        print(f"all {len(latencies)} presses:               median {statistics.median(latencies):6.1f} ms, "
              f"max {max(latencies):6.1f} ms  (target <= 150 ms)")
    print(f"steps/s headless engine: {', '.join(f'{r:,.0f}' for r in headless)} "
          f"(median {statistics.median(headless):,.0f})")
    print(f"steps/s with the UI open: {', '.join(f'{run.rate:,.0f}' for run in runs)} "
          f"(median {statistics.median(run.rate for run in runs):,.0f})")
    print(f"UI throughput / headless, per round: {', '.join(f'{r:.0%}' for r in ratios)} "
          f"(median {statistics.median(ratios):.0%}; target >= 85%)")
    print(f"UI thread's CPU while training: {', '.join(f'{run.ui_cpu:.1%}' for run in runs)} of one core "
          f"(median {statistics.median(run.ui_cpu for run in runs):.1%})")
    for i, run in enumerate(runs):
        if run.profile:
            print(f"\nround {i + 1}, the UI thread's calls by cumulative time:\n{run.profile}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
