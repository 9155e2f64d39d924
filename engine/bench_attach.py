"""`clusterlab bench --clients`: what attached UIs cost a training host, and how soon `clusterlab attach` shows it.

The engine trains in a host process, as `clusterlab` runs it. Each UI is a real `clusterlab attach NAME` process
on a pseudo-terminal of 120x40 whose output this process reads and throws away, as a terminal emulator would.
Windows with 0, 1 and 3 UIs attached alternate in rounds, so a shared machine's drifting load falls on all three
alike; the step rate is the host's own (its `status`, asked over a short connection that is not attached). The
attach time runs from starting `clusterlab attach NAME` to the first full screen: the status with the run's phase
and rate, the charts drawn from the host's history, the footer.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from pathlib import Path

from engine.client import Client, start_host
from engine.config import Config, plain_float, plain_int

CLIENT_COUNTS = (0, 1, 3)
SIZE = (120, 40)
BRAILLE = tuple(chr(c) for c in range(0x2801, 0x2900))  # plotext's chart points: drawn from the history
SHOWN = ("steps/s", "Quit")  # besides the run's phase: the status has its rate, the footer is there
SETTLE_S = 1.0  # after the last UI's first screen, before a window starts


class Terminal:
    """`clusterlab attach NAME` on a pseudo-terminal; `shown_s` is the seconds to its first full screen."""

    def __init__(self, name: str, env: dict[str, str], phase: str) -> None:
        self.markers = (phase, *SHOWN)
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", SIZE[1], SIZE[0], 0, 0))
        self.started = time.perf_counter()
        self.proc = subprocess.Popen([*clusterlab_command(), "attach", name], stdin=slave, stdout=slave,
                                     stderr=slave, env=env, start_new_session=True)
        os.close(slave)
        self.master = master
        self.shown = threading.Event()
        self.shown_s: float | None = None
        self._reader = threading.Thread(target=self._read, name="bench-terminal", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        found: set[str] = set()
        tail = ""
        while True:
            try:
                data = os.read(self.master, 1 << 16)
            except OSError:
                return  # the UI closed its terminal
            if not data:
                return
            if self.shown.is_set():
                continue
            text = tail + data.decode(errors="ignore")
            found.update(marker for marker in self.markers if marker in text)
            if any(point in text for point in BRAILLE):
                found.add("chart")
            tail = text[-32:]  # a marker split between two reads
            if len(found) == len(self.markers) + 1:
                self.shown_s = time.perf_counter() - self.started
                self.shown.set()

    def wait_shown(self, timeout: float = 60.0) -> float:
        if not self.shown.wait(timeout):
            raise TimeoutError(f"clusterlab attach showed no full screen within {timeout:.0f} s")
        return self.shown_s  # type: ignore[return-value]

    def detach(self) -> None:
        """Press d, as a user leaving the run does; wait for the UI to end."""
        os.write(self.master, b"d")
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)
        self._reader.join(timeout=5)


def clusterlab_command() -> list[str]:
    """The `clusterlab` script of this Python, else its module (`tui.cli` is the script's entry point)."""
    script = Path(sys.executable).with_name("clusterlab")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "tui.cli"]


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _step(client: Client) -> tuple[int, float]:
    return client.command("status")["result"]["step"], time.perf_counter()


def _window(client: Client, host_pid: int, uis: list[Terminal], seconds: float) -> tuple[float, float, float]:
    """Over `seconds`: the host's steps per second, its CPU milliseconds per step (its own threads besides the
    engine's serve the clients, under the same GIL), and the UIs' CPU as a share of one core, together."""
    start_step, start = _step(client)
    host0, ui0 = _cpu_s(host_pid), sum(_cpu_s(ui.proc.pid) for ui in uis)
    time.sleep(seconds)
    end_step, end = _step(client)
    host1, ui1 = _cpu_s(host_pid), sum(_cpu_s(ui.proc.pid) for ui in uis)
    steps = max(1, end_step - start_step)
    return steps / (end - start), 1000 * (host1 - host0) / steps, (ui1 - ui0) / (end - start)


def measure(config: Config, rounds: int, seconds: float, phase: str = "pretrain") -> dict:
    """Rounds of windows with 0, 1 and 3 UIs attached to one host training in `phase` (pretrain, or finetune
    after 200 steps and a clustering, so snapshots carry the block picture); every attach is timed."""
    rates: dict[int, list[float]] = {n: [] for n in CLIENT_COUNTS}
    host_ms: dict[int, list[float]] = {n: [] for n in CLIENT_COUNTS}
    ui_cpu: dict[int, list[float]] = {n: [] for n in CLIENT_COUNTS}
    attach_s: list[float] = []
    with tempfile.TemporaryDirectory(prefix="clusterlab-attach-") as root:
        env = {**os.environ, "CLUSTERLAB_SESSIONS": root, "TERM": os.environ.get("TERM", "xterm-256color")}
        os.environ["CLUSTERLAB_SESSIONS"] = root  # for start_host, which passes it to the host
        path = start_host("bench", config)
        with Client.connect(path, client="bench", attach=False) as control:
            host_pid = control.welcome["pid"]
            try:
                if phase == "finetune":
                    control.command("train", steps=200)
                    control.command("cluster")
                    control.command("finetune", epochs=10_000)
                else:
                    control.command("train")
                while _step(control)[0] < 300:  # past the first steps and evaluation (and the clustering)
                    time.sleep(0.05)
                for _ in range(rounds):
                    for n in CLIENT_COUNTS:
                        terminals = []
                        for _ in range(n):  # one at a time: each attach is timed on its own
                            terminals.append(Terminal("bench", env, phase))
                            attach_s.append(terminals[-1].wait_shown())
                        time.sleep(SETTLE_S)
                        rate, ms, cpu = _window(control, host_pid, terminals, seconds)
                        rates[n].append(rate)
                        host_ms[n].append(ms)
                        ui_cpu[n].append(cpu)
                        for terminal in terminals:
                            terminal.detach()
            finally:
                control.command("stop-host")
        while Path(f"/proc/{host_pid}").exists():  # it saves, then ends: only then may its folder go
            time.sleep(0.05)
    return {
        "dataset": config.dataset, "device": config.device, "phase": phase, "terminal": f"{SIZE[0]}x{SIZE[1]}",
        "rounds": rounds, "window_s": seconds, "cpus": os.cpu_count(),
        "steps_per_s": {str(n): [round(r, 1) for r in rates[n]] for n in CLIENT_COUNTS},
        "median_steps_per_s": {str(n): round(statistics.median(rates[n]), 1) for n in CLIENT_COUNTS},
        # Per attached UI: the median round's loss against no UI, divided by the UIs attached.
        "cost_per_ui": {str(n): round((1 - statistics.median(r / z for r, z in zip(rates[n], rates[0],
                                                                                   strict=True))) / n, 4)
                        for n in CLIENT_COUNTS if n},
        "host_cpu_ms_per_step": {str(n): round(statistics.median(host_ms[n]), 4) for n in CLIENT_COUNTS},
        "ui_cpu_share": {str(n): round(statistics.median(ui_cpu[n]), 3) for n in CLIENT_COUNTS if n},
        "attach_to_first_screen_s": {"median": round(statistics.median(attach_s), 3),
                                     "max": round(max(attach_s), 3), "samples": len(attach_s)},
    }


def run_attach_bench(args: argparse.Namespace) -> int:
    """The figures for `clusterlab bench --clients` (its --dataset, --data-dir, --device, --json)."""
    config = Config(dataset=args.dataset, data_dir=args.data_dir, device=args.device, epochs=10_000)
    result = measure(config, rounds=getattr(args, "rounds", 3), seconds=getattr(args, "seconds", 4.0),
                     phase=getattr(args, "phase", "pretrain"))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"host in {result['phase']} on {result['dataset']}, {result['device']} ({result['cpus']} CPUs); UIs at "
          f"{result['terminal']}; {result['rounds']} rounds of {result['window_s']:g} s windows")
    for n in CLIENT_COUNTS:
        rates = ", ".join(f"{r:,.0f}" for r in result["steps_per_s"][str(n)])
        cost = f", cost per UI {result['cost_per_ui'][str(n)]:+.1%}" if n else ""
        cpu = f", the UIs' CPU {result['ui_cpu_share'][str(n)]:.1%} of a core" if n else ""
        print(f"{n} UI(s) attached: steps/s {rates} (median {result['median_steps_per_s'][str(n)]:,.0f}{cost}); "
              f"host CPU {result['host_cpu_ms_per_step'][str(n)]:.3f} ms/step{cpu}")
    attach = result["attach_to_first_screen_s"]
    print(f"clusterlab attach -> first full screen: median {attach['median']:.2f} s, max {attach['max']:.2f} s "
          f"({attach['samples']} attaches, while training)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.bench_attach", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist", choices=["mnist", "synthetic"])
    parser.add_argument("--data-dir", help="folder with MNIST's IDX files")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--rounds", type=plain_int, default=3, help="rounds of 0, 1 and 3 UIs (default 3)")
    parser.add_argument("--seconds", type=plain_float, default=4.0, help="each window's length (default 4)")
    parser.add_argument("--phase", default="pretrain", choices=["pretrain", "finetune"],
                        help="the phase measured: finetune holds clusters, so snapshots carry the block picture")
    parser.add_argument("--json", action="store_true")
    return run_attach_bench(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
