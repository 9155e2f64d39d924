"""Benchmark (not a test): key-to-screen latency of the UI, and its training throughput against the bare engine."""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
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
    parser.add_argument("--rounds", type=int, default=2, help="alternating headless/UI throughput rounds")
    parser.add_argument("--tab", default="1", choices=["1", "2", "3"],
                        help="tab shown while measuring: 1 charts (default), 2 clusters, 3 log")
    parser.add_argument("--size", default="120x40", help="terminal size, COLSxROWS (default 120x40)")
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


async def _ui(name: str, config: Config, args: argparse.Namespace, rates: list[float]) -> list[float]:
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
        for _ in range(args.trials):
            for key_state in ("paused", "training"):
                started = time.perf_counter()
                # Post the key as the terminal driver does: Pilot.press would also wait for the process to go
                # idle, which it never does while training, so it would time its own waiting.
                app.post_message(events.Key("space", " "))
                # "On screen": the control pane's status text shows the new state.
                await _until(pilot, lambda s=key_state: f"[b]{s}[/b]" in str(app.query_one("#status").content))
                latencies.append((time.perf_counter() - started) * 1000)
            await pilot.pause(0.2)  # let training settle between trials, as a user would not press at 1 kHz
        for _ in range(args.rounds):
            start_step, start = app.engine.snapshot().step, time.perf_counter()
            await pilot.pause(args.seconds)  # the UI keeps redrawing charts meanwhile
            rates.append((app.engine.snapshot().step - start_step) / (time.perf_counter() - start))
        app.engine.stop()
        await _until(pilot, lambda: app.live.state == "idle")
        await pilot.press("q")
        await _until(pilot, lambda: app.return_code is not None, timeout=60)
    return latencies


async def _until(pilot, condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark condition not reached")
        await pilot.pause(0.002)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = bench_config(args)
    with tempfile.TemporaryDirectory(prefix="clusterlab-latency-") as root:
        os.environ["CLUSTERLAB_SESSIONS"] = root
        headless = [headless_rate(session_path(f"headless-{i}"), config, args.seconds) for i in range(args.rounds)]
        ui_rates: list[float] = []
        latencies = asyncio.run(_ui("ui", config, args, ui_rates))
        headless += [headless_rate(session_path("headless-after"), config, args.seconds)]
    pause_ms, resume_ms = latencies[0::2], latencies[1::2]
    head, ui = statistics.median(headless), statistics.median(ui_rates)
    print(f"dataset {args.dataset}, device {args.device}, terminal {args.size}, tab {args.tab}, {args.trials} trials")
    print(f"key -> screen, space to 'paused':   median {statistics.median(pause_ms):6.1f} ms, "
          f"max {max(pause_ms):6.1f} ms")
    print(f"key -> screen, space to 'training': median {statistics.median(resume_ms):6.1f} ms, "
          f"max {max(resume_ms):6.1f} ms")
    print(f"all {len(latencies)} presses:               median {statistics.median(latencies):6.1f} ms, "
          f"max {max(latencies):6.1f} ms  (target <= 150 ms)")
    print(f"steps/s headless engine: {', '.join(f'{r:,.0f}' for r in headless)} (median {head:,.0f})")
    print(f"steps/s with the UI open: {', '.join(f'{r:,.0f}' for r in ui_rates)} (median {ui:,.0f})")
    print(f"UI throughput / headless: {ui / head:.0%}  (target >= 80%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
