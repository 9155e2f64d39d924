"""The `clusterlab` command: run, resume, sessions, bench, and the terminal UI (the default)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from engine import events as ev
from engine.config import DATASETS, DEVICES, SOURCES, Config, check_int
from engine.errors import ClusterlabError
from engine.session import check_name, list_sessions, new_name, session_path

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130

# (flag, Config field, type, help): one table so run, tui and their help agree.
CONFIG_FLAGS: list[tuple[str, str, type, str]] = [
    ("--dataset", "dataset", str, f"data set: {', '.join(DATASETS)} (default mnist)"),
    ("--data-dir", "data_dir", str, "folder with the dataset's four IDX files, .gz or not, flat or torchvision layout"),
    ("--hidden", "hidden", str, "hidden layer widths, comma-separated (default 128,128)"),
    ("--layer", "layer", int, "studied Linear layer, 1-based; must be hidden-to-hidden (default: the middle one)"),
    ("--lr", "lr", float, "SGD learning rate (default 0.001)"),
    ("--batch-size", "batch_size", int, "batch size (default 64)"),
    ("--seed", "seed", int, "seed of weights and batch order (default 42)"),
    ("--epochs", "epochs", int, "pretraining epochs (default 5)"),
    ("--steps", "steps", int, "pretrain for exactly this many optimizer steps instead of --epochs"),
    ("--eval-every", "eval_every", int, "test accuracy every N steps, and at each epoch's end (default 400)"),
    ("--k", "k", int, "number of clusters (default 2)"),
    ("--cluster-on", "cluster_on", str, f"what to co-cluster: {' or '.join(SOURCES)} (default weights)"),
    ("--finetune-epochs", "finetune_epochs", int, "regularised finetuning epochs; 0 skips finetuning (default 10)"),
    ("--lam", "lam", float, "regulariser strength: loss = CE - lam * clusterability (default 3.0)"),
    ("--device", "device", str, f"compute device: {', '.join(DEVICES)} (default auto: CUDA when present)"),
    ("--autosave-every", "autosave_every", int, "save the session every N steps (default 500)"),
]


_METAVARS = {"dataset": "NAME", "data_dir": "PATH", "hidden": "W,W", "cluster_on": "SOURCE", "device": "DEVICE"}


class UsageError(ClusterlabError):
    """Bad command-line input."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit code 2, like every other bad input
        raise UsageError(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="clusterlab",
        description="Train an MLP, find clusters of neurons in a hidden layer by spectral co-clustering, "
        "measure their clusterability, and finetune for modularity. Without a command, opens the terminal UI.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    tui = commands.add_parser("tui", help="open the terminal UI (the default command)",
                              description="Open the terminal UI on a session (created if it does not exist).")
    tui.add_argument("--session", metavar="NAME", help="session to open, or to create with the flags given")
    _add_config_flags(tui)
    run = commands.add_parser("run", help="pretrain, cluster and finetune headless, in a new session",
                              description="Run the whole plan headless: pretrain, co-cluster, finetune. "
                              "The session is saved as it goes; Ctrl-C stops it resumably.")
    run.add_argument("--session", metavar="NAME", help="name of the new session (default: dataset and time)")
    _add_config_flags(run)
    run.add_argument("--json", action="store_true", help="print one JSON object with the results at the end")
    resume = commands.add_parser("resume", help="continue a saved session",
                                 description="Continue a session's unfinished plan, or train N more "
                                 "epochs/steps of its current phase (then re-cluster after more pretraining).")
    resume.add_argument("name", metavar="NAME", help="session name")
    more = resume.add_mutually_exclusive_group()
    more.add_argument("--epochs", type=int, help="train this many more epochs")
    more.add_argument("--steps", type=int, help="train this many more optimizer steps")
    resume.add_argument("--json", action="store_true", help="print one JSON object with the results at the end")
    sessions = commands.add_parser("sessions", help="list saved sessions",
                                   description="List the sessions under $CLUSTERLAB_SESSIONS or ./sessions.")
    sessions.add_argument("--json", action="store_true", help="print the list as JSON")
    bench = commands.add_parser("bench", help="measure training speed against a reference loop",
                                description="Measure the engine's training step side by side with a "
                                "reference DataLoader loop, plus evaluation and clustering times.")
    bench.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device (default cpu)")
    bench.add_argument("--steps", type=int, default=1000, help="timed steps per loop (default 1000)")
    bench.add_argument("--dataset", default="mnist", choices=["mnist", "synthetic"], help="data (default mnist)")
    bench.add_argument("--data-dir", help="folder with MNIST's IDX files")
    bench.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    return parser


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("experiment settings")
    for flag, dest, kind, help_text in CONFIG_FLAGS:
        metavar = _METAVARS.get(dest, {int: "N", float: "X"}.get(kind, dest.upper()))
        group.add_argument(flag, dest=dest, type=kind, default=None, metavar=metavar, help=help_text)


def config_from_args(args: argparse.Namespace) -> Config:
    given = {dest: getattr(args, dest) for _, dest, _, _ in CONFIG_FLAGS if getattr(args, dest, None) is not None}
    return Config(**given)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # SIGTERM (a scheduler, `kill`) is handled like Ctrl-C: stop at a step boundary and save.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        if argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
            argv = ["tui", *argv]  # `clusterlab --dataset ...` means `clusterlab tui --dataset ...`
        args = parser.parse_args(argv)
        command = args.command or "tui"
        if command == "tui" and args.command is None:
            args = parser.parse_args(["tui", *argv])
        return COMMANDS[command](args)
    except ClusterlabError as exc:
        print(f"clusterlab: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # before any work started (loading data, say): nothing to save
        print("clusterlab: interrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)


def cmd_tui(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    name = check_name(args.session) if args.session else None
    from tui.app import run_app  # imported here so that `engine` never imports textual

    return run_app(name, config)


def cmd_run(args: argparse.Namespace) -> int:
    config = config_from_args(args)  # every flag is checked before torch is even imported
    path = session_path(args.session or new_name(config.dataset))
    from engine.engine import Engine

    engine = Engine.create(path, config)
    return _drive(engine, path.name, args.json, lambda: engine.plan_default())


def cmd_resume(args: argparse.Namespace) -> int:
    for flag in ("epochs", "steps"):
        if getattr(args, flag) is not None:
            check_int(f"--{flag}", getattr(args, flag), 0)
    path = session_path(args.name)
    from engine.engine import Engine

    engine = Engine.open(path)
    if not engine.snapshot()["plan"] and args.epochs is None and args.steps is None:
        engine.close()
        print(f"clusterlab: session {args.name} has nothing left to do; give --epochs or --steps to train more.",
              file=sys.stderr)
        if args.json:
            _print_json(engine.snapshot())
        return 0
    return _drive(engine, args.name, args.json, lambda: engine.continue_plan(epochs=args.epochs, steps=args.steps))


def cmd_sessions(args: argparse.Namespace) -> int:
    rows = list_sessions()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "dataset", "phase", "steps", "accuracy", "clusterability", "last saved", box=None)
    for row in rows:
        if "error" in row:
            table.add_row(row["name"], f"[red]{row['error']}[/red]", "", "", "", "", "")
            continue
        table.add_row(row["name"], str(row["dataset"]), str(row["phase"]), str(row["step"]),
                      _fmt(row["test_accuracy"]), _fmt(row["clusterability"]), str(row["saved_at"] or ""))
    Console().print(table if rows else "No sessions yet; start one with 'clusterlab run' or 'clusterlab'.")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from engine.bench import run_bench

    return run_bench(args)


COMMANDS = {"tui": cmd_tui, "run": cmd_run, "resume": cmd_resume, "sessions": cmd_sessions, "bench": cmd_bench}


def _drive(engine, name: str, as_json: bool, start: Callable[[], None]) -> int:
    """Subscribe, then `start` the jobs (so no early failure goes unheard), and show progress until the engine
    is idle; Ctrl-C (or SIGTERM) stops resumably."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    failures: list[ev.Failed] = []
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[info]}"), TimeRemainingColumn(), transient=as_json,
                        console=Console(stderr=True), disable=not sys.stderr.isatty())
    tasks: dict[str, int] = {}

    def on_event(event: ev.Event) -> None:
        if isinstance(event, ev.Progress):
            if event.phase not in tasks:
                tasks[event.phase] = progress.add_task(event.phase, total=event.job_total, info="")
            progress.update(tasks[event.phase], completed=event.job_step, total=event.job_total,
                            info=f"loss {event.loss:.4f}  {event.steps_per_s:,.0f} steps/s")
        elif isinstance(event, ev.ClustersFound) and not as_json:
            progress.console.print(f"clusters: k={event.k} on {event.source}, clusterability "
                                   f"{event.clusterability:.4f} (chance {event.chance:.4f})", soft_wrap=True)
        elif isinstance(event, ev.Failed):
            failures.append(event)
            progress.console.print(f"{event.job} failed: {event.message}", style="red", markup=False, soft_wrap=True)

    engine.subscribe(on_event)
    try:
        start()
        with progress:
            while not engine.wait(timeout=0.2):
                pass
    except KeyboardInterrupt:
        engine.close()
        print(f"clusterlab: stopped at step {engine.snapshot()['step']} and saved; continue with "
              f"'clusterlab resume {name}'.", file=sys.stderr)
        if as_json:
            _print_json(engine.snapshot())
        return EXIT_INTERRUPTED
    engine.close()
    snapshot = engine.snapshot()
    if as_json:
        _print_json(snapshot)
    else:
        _print_summary(snapshot, name)
    return EXIT_FAILED if failures else 0


def _print_json(snapshot: dict) -> None:
    print(json.dumps({k: v for k, v in snapshot.items() if k != "state"}, indent=2))


def _print_summary(snapshot: dict, name: str) -> None:
    print(f"session {name} ({Path(snapshot['session'])}): {snapshot['dataset']} on {snapshot['device']}, "
          f"step {snapshot['step']}")
    for entry in snapshot["history"]:
        print(f"  {entry['phase']:<9} step {entry['step']:>7}  accuracy {_fmt(entry['test_accuracy'])}  "
              f"clusterability {_fmt(entry['clusterability'])}")
    if snapshot["clusters"]:
        c = snapshot["clusters"]
        print(f"  clusters k={c['k']} ({c['source']}): rows {c['row_sizes']} cols {c['col_sizes']}; "
              f"clusterability {_fmt(snapshot['clusterability'])} vs chance {_fmt(snapshot['clusterability_chance'])}")


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
