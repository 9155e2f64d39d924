"""The headless `clusterlab` commands: run, resume, sessions, ablate, export, bench; the host commands are in
engine/cli_host.py, sweep and reproduce in engine/cli_sweep.py. The UI's entry point (`tui.cli`) adds `tui` and
`attach`."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from engine import calibrate
from engine import events as ev
from engine.cli_host import COMMANDS as HOST_COMMANDS
from engine.cli_host import add_host_parsers, attach_target, not_hosted, run_detached
from engine.cli_sweep import add_sweep_parsers, cmd_reproduce, cmd_sweep
from engine.config import Config, check_int, plain_float, plain_int
from engine.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, ClusterlabError, ConfigError
from engine.format import fmt, null_text, plan_text
from engine.listing import list_sessions, print_sessions
from engine.options import OPTIONS, config_from_texts, metavar
from engine.session import check_name, close_names, new_name, session_path

# Opens the terminal UI on a session name (or a new one) with these settings; with None, attaches to NAME's host.
UiRunner = Callable[[str | None, Config | None], int]
# Serves the terminal UI on a session (None: the only running host's) in a browser at (host, port).
UiServer = Callable[[str | None, str, int], int]


class UsageError(ClusterlabError):
    """Bad command-line input."""


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)  # --step must not silently mean --steps
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # one line and exit code 2, like every other bad input
        raise UsageError(f"{message} (see {self.prog} --help)")


def build_parser(with_ui: bool = False) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="clusterlab",
        description="Train an MLP, find clusters of neurons in a hidden layer by spectral co-clustering, "
        "measure their clusterability, and finetune for modularity."
        + (" Without a command, opens the terminal UI." if with_ui else ""),
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    if with_ui:
        tui = commands.add_parser("tui", help="open the terminal UI (the default command)",
                                  description="Open the terminal UI on a session (created if it does not exist).")
        tui.add_argument("--session", metavar="NAME", help="session to open, or to create with the flags given")
        add_config_flags(tui)
        attach = commands.add_parser("attach", help="attach the terminal UI to a running session host",
                                     description="Attach the terminal UI to the host of a running session (without "
                                     "NAME: the only one running). 'd' detaches again; the run goes on.")
        attach.add_argument("name", metavar="NAME", nargs="?", help="session name (see 'clusterlab ps')")
        serve = commands.add_parser("serve", help="the terminal UI in a browser (textual-serve)",
                                    description="Serve the terminal UI on a session in a browser: each tab is one "
                                    "more client of the session's host (started if none runs, as 'clusterlab tui "
                                    "--session NAME' does). Without NAME: the only session whose host runs. Over "
                                    "SSH: ssh -L PORT:127.0.0.1:PORT HOST, then open http://127.0.0.1:PORT.")
        serve.add_argument("name", metavar="NAME", nargs="?", help="session name")
        serve.add_argument("--port", type=plain_int, default=8000, help="port (default 8000)")
        serve.add_argument("--host", default="127.0.0.1",
                           help="address to listen on (default 127.0.0.1: only this machine, or an SSH tunnel)")
    run = commands.add_parser("run", help="pretrain, cluster and finetune headless, in a new session",
                              description="Run the whole plan headless: pretrain, co-cluster, finetune. "
                              "The session is saved as it goes; Ctrl-C stops it resumably.")
    run.add_argument("--session", metavar="NAME", help="name of the new session (default: dataset and time)")
    add_config_flags(run)
    run.add_argument("--json", action="store_true", help="print one JSON object with the results at the end")
    run.add_argument("--detach", action="store_true", help="run in a background host and return at once, printing "
                     "the session's name (follow it with tail, attach, remote, stop)")
    run.add_argument("--idle-exit", type=plain_float, default=60.0, metavar="SECONDS",
                     help="with --detach: the host ends this long after its plan is done with no client attached")
    resume = commands.add_parser("resume", help="continue a saved session",
                                 description="Continue a session's unfinished plan, or (with --epochs or "
                                 "--steps) train N more epochs/steps of its current phase instead (then re-cluster "
                                 "after more pretraining), keeping the unfinished plan for a later resume. It says "
                                 "in one line what it will do first.")
    resume.add_argument("name", metavar="NAME", help="session name")
    more = resume.add_mutually_exclusive_group()
    more.add_argument("--epochs", type=plain_int, help="train this many more epochs")
    more.add_argument("--steps", type=plain_int, help="train this many more optimizer steps")
    resume.add_argument("--json", action="store_true", help="print one JSON object with the results at the end")
    sessions = commands.add_parser("sessions", help="list saved sessions",
                                   description="List the sessions under $CLUSTERLAB_SESSIONS or ./sessions.")
    sessions.add_argument("--wide", action="store_true", help="every column, whole names (the default fits 80 "
                          "columns: name, dataset, steps, accuracy, clusterability and its p)")
    sessions.add_argument("--json", action="store_true", help="print the list as JSON")
    ablate = commands.add_parser("ablate", help="silence each cluster of a saved session; per-class accuracy drops",
                                 description="Silence each cluster's output units of the studied layer in turn, "
                                 "measure the per-class test accuracy drop, and compare each cluster's "
                                 "specialisation with random unit sets of the same size. Saved in the session.")
    ablate.add_argument("name", metavar="NAME", help="session name")
    ablate.add_argument("--json", action="store_true", help="print the ablation as JSON")
    stability = commands.add_parser(
        "stability", help="how far clusterings of one network agree (ARI, NMI) against permuted labels",
        description="Compare the clusterings of a saved session's network: weights vs gradients, re-clustered with "
        "other seeds, F from two disjoint halves of the data, and the held clusters vs re-clustering at each "
        "finetune epoch; each ARI against a label-permutation null. Saved in the session (the UI's Modules tab "
        "shows it). For a sweep: agreement of cluster sizes and per-class ablation profiles across seeds.")
    stability.add_argument("name", metavar="NAME", help="session or sweep name")
    stability.add_argument("--seeds", type=plain_int, default=4, help="re-clusterings with other seeds (default 4)")
    stability.add_argument("--samples", type=plain_int, default=200, help="label permutations per ARI (default 200)")
    stability.add_argument("--json", action="store_true", help="print the result as JSON")
    export = commands.add_parser("export", help="write a session's metrics, clusters, ablation and figures",
                                 description="Write metrics.csv, clusters.json, ablation.csv and figures (PNG and "
                                 "SVG) of a saved session.")
    export.add_argument("name", metavar="NAME", help="session name")
    export.add_argument("--out", metavar="DIR", help="output folder (default: the session's export/ folder)")
    export.add_argument("--tensorboard", metavar="DIR", help="instead, write TensorBoard event files into the logdir "
                        "DIR: every scalar of the metrics log, phases as text, the block picture, settings as "
                        "hparams; a sweep's members as one run each (pip install -e '.[tensorboard]')")
    bench = commands.add_parser("bench", help="measure training speed against a reference loop",
                                description="Measure the engine's training step side by side with a "
                                "reference DataLoader loop, plus evaluation and clustering times.")
    bench.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device (default cpu)")
    bench.add_argument("--steps", type=plain_int, default=1000, help="timed steps per loop (default 1000)")
    bench.add_argument("--dataset", default="mnist", choices=["mnist", "synthetic"], help="data (default mnist)")
    bench.add_argument("--data-dir", help="folder with MNIST's IDX files")
    bench.add_argument("--study", action="store_true",
                       help="also time the whole default study on MNIST as `clusterlab run` (about half a minute)")
    bench.add_argument("--clients", action="store_true",
                       help="the engine's steps/s with 0, 1 and 3 UIs attached (at 120x40) and the time from "
                       "'clusterlab attach' to the first full screen; only these figures")
    bench.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    add_sweep_parsers(commands)
    add_host_parsers(commands)
    calibrate.add_parser(commands)
    return parser


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """Every Config option as a flag; values stay text here and are parsed and checked as the UI's fields are."""
    group = parser.add_argument_group("experiment settings")
    for option in OPTIONS:
        if option.kind is bool:  # a switch: given means yes
            group.add_argument(option.flag, dest=option.name, action="store_const", const="yes", help=option.help)
        else:
            group.add_argument(option.flag, dest=option.name, default=None, metavar=metavar(option), help=option.help)


def config_from_args(args: argparse.Namespace) -> Config:
    return config_from_texts({option.name: getattr(args, option.name, None) for option in OPTIONS})


def main(argv: Sequence[str] | None = None, ui: UiRunner | None = None, serve: UiServer | None = None) -> int:
    """Run one command; with `ui`, also `tui`, which is then the default command, and `attach`; with `serve`,
    `serve`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(with_ui=ui is not None)
    # SIGTERM (a scheduler, `kill`, `timeout`) is handled like Ctrl-C: stop at a step boundary and save.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    previous_hup = signal.getsignal(signal.SIGHUP)
    try:
        if ui is not None and (not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help"))):
            argv = ["tui", *argv]  # `clusterlab --dataset ...` means `clusterlab tui --dataset ...`
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        if args.command == "tui":
            config = config_from_args(args)
            return ui(check_name(args.session) if args.session else None, config)
        if args.command == "attach":  # to a running host only: no settings, so nothing is created
            return ui(attach_target(args.name), None)
        if args.command == "serve":
            return serve(args.name, args.host, args.port)
        signal.signal(signal.SIGHUP, _raise_interrupt)  # a lost terminal saves and stops a foreground run too
        return COMMANDS[args.command](args)
    except ClusterlabError as exc:
        print(f"clusterlab: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # before any work started (loading data, say): nothing to save
        print("clusterlab: interrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader of our output (head, a closed pipe) has gone: nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    finally:
        if signal.getsignal(signal.SIGTERM) is _raise_interrupt:
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGHUP, previous_hup)
        # else a stop is under way: further signals keep being answered with "still saving" until the process
        # exits, since restoring the default would let a late one kill it after the save


def cmd_run(args: argparse.Namespace) -> int:
    config = config_from_args(args)  # every flag is checked before torch is even imported
    path = session_path(check_name(args.session) if args.session else new_name(config.dataset))
    if args.session and not path.exists() and (close := close_names(args.session)):  # a typo? say, then go on
        print(f"clusterlab: note: creating a new session {args.session} (close to the existing "
              f"{' and '.join(close)}: 'clusterlab resume NAME' continues one).", file=sys.stderr)
    if args.detach:
        if not 0 <= args.idle_exit < float("inf"):
            raise UsageError(f"--idle-exit must be a number of seconds of at least 0, not {args.idle_exit}.")
        return run_detached(path.name, config, args.idle_exit, args.json)
    from engine.engine import Engine

    return _drive(lambda: Engine.create(path, config), path.name, args.json, lambda engine: engine.plan_default())


def cmd_resume(args: argparse.Namespace) -> int:
    more = args.epochs is not None or args.steps is not None
    for flag in ("epochs", "steps"):
        if getattr(args, flag) is not None:
            check_int(f"--{flag}", getattr(args, flag), 0)
    path = not_hosted(args.name)
    from engine.engine import Engine

    engine = Engine.open(path)
    held = list(engine.snapshot().plan)
    if not more and not held:
        engine.close()
        print(f"clusterlab: session {args.name} has nothing left to do; give --epochs or --steps to train "
              "more.", file=sys.stderr)
        if args.json:
            _print_json(engine.snapshot())
        return 0

    def start(engine) -> None:  # says in one line what it will do, before the engine's first step
        queued = engine.continue_plan(epochs=args.epochs, steps=args.steps)
        if not more:
            print(f"resume {args.name}: continuing its unfinished plan: {plan_text(queued)}.", file=sys.stderr)
            return
        kept = f"; its unfinished plan ({plan_text(held)}) stays for 'clusterlab resume {args.name}'" if held else ""
        print(f"resume {args.name}: {plan_text(queued) if queued else 'nothing to train'}{kept}.", file=sys.stderr)

    return _drive(lambda: engine, args.name, args.json, start)


def cmd_sessions(args: argparse.Namespace) -> int:
    rows = list_sessions()
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print("No sessions yet; start one with 'clusterlab run' or 'clusterlab'.")
    else:
        print_sessions(rows, args.wide, shutil.get_terminal_size().columns)
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    path = not_hosted(args.name)
    from engine.engine import Engine

    engine = Engine.open(path)
    if engine.snapshot().clusters is None:  # bad input, not a failed job: say what to do instead
        engine.close()
        raise UsageError(f"Session {args.name} has no clusters to ablate: cluster it first (press c in "
                         f"'clusterlab tui --session {args.name}').")
    code = _drive(lambda: engine, args.name, False, lambda e: e.ablate(), quiet=True)
    ablation = engine.snapshot().ablation
    if ablation is None:
        return code or EXIT_FAILED
    if args.json:
        print(json.dumps(ablation, indent=2))
    else:
        _print_ablation(ablation)
    return code


def cmd_stability(args: argparse.Namespace) -> int:
    from engine import stability
    from engine.session import write_stability
    from engine.sweep import is_sweep

    check_int("--seeds", args.seeds, 1)
    check_int("--samples", args.samples, 1)
    for flag, value, most in (("--seeds", args.seeds, 1000), ("--samples", args.samples, 100_000)):
        if value > most:  # each is a re-clustering or a row of permuted labels held at once: bounded, not a crash
            raise ConfigError(f"{flag} must be at most {most:,}, not {value:,}.")
    path = session_path(args.name)
    if is_sweep(path):
        result = stability.sweep_stability(path, args.samples)
        text = stability.sweep_lines(result)
    else:
        path = not_hosted(args.name)
        result = stability.session_stability(path, args.seeds, args.samples)
        write_stability(path, result)
        text = stability.lines(result)
    print(json.dumps(result, indent=2) if args.json else "\n".join(text))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    path = session_path(args.name)
    notes: list[str] = []
    if args.tensorboard:
        if args.out:
            raise UsageError("--out and --tensorboard write different things; give one of them.")
        from engine.tensorboard_export import export_tensorboard

        written = export_tensorboard(path, Path(args.tensorboard), notes)
    else:
        from engine.export import export_session

        written = export_session(path, Path(args.out) if args.out else path / "export", notes)
    for file in written:
        print(file)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    check_int("--steps", args.steps, 1)
    from engine.bench import run_bench

    return run_bench(args)

COMMANDS = {**HOST_COMMANDS, "run": cmd_run, "resume": cmd_resume, "sessions": cmd_sessions, "bench": cmd_bench,
            "ablate": cmd_ablate, "export": cmd_export, "stability": cmd_stability, "sweep": cmd_sweep,
            "reproduce": cmd_reproduce, "calibrate": calibrate.command}


def _drive(open_engine: Callable[[], object], name: str, as_json: bool, start: Callable[[object], None],
           quiet: bool = False) -> int:
    """Open the engine, subscribe, `start` its jobs (so no early failure goes unheard), and show progress until it
    is idle. The first Ctrl-C or SIGTERM stops resumably; later ones only say that the save is still going on,
    and the process exits only once the final save is complete."""
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
            progress.console.print(f"clusters: k={event.k} on {event.source}, rows {list(event.row_sizes)} cols "
                                   f"{list(event.col_sizes)}; clusterability {event.clusterability:.4f} "
                                   + ("(its shuffle null follows)" if null_on else null_text(None)), soft_wrap=True)
        elif isinstance(event, ev.SignificanceFound) and not as_json:
            progress.console.print(f"{event.phase} at step {event.step}: clusterability {event.clusterability:.4f} "
                                   f"{null_text(event.significance)}", soft_wrap=True)
        elif isinstance(event, ev.Failed):
            failures.append(event)
            progress.console.print(f"{event.job} failed: {event.message}", style="red", markup=False, soft_wrap=True)

    engine = open_engine()
    null_on = engine.config.null_samples > 0
    try:
        engine.subscribe(on_event)
        start(engine)
        with progress:
            while not engine.wait(timeout=0.2):
                pass
    except KeyboardInterrupt:
        _ignore_further_interrupts()
        engine.close()
        print(f"clusterlab: stopped at step {engine.snapshot().step} and saved; continue with "
              f"'clusterlab resume {name}'.", file=sys.stderr)
        if as_json:
            _print_json(engine.snapshot())
        return EXIT_INTERRUPTED
    try:
        engine.close()
    except KeyboardInterrupt:  # arrived during the final save: close() again waits for it to finish
        _ignore_further_interrupts()
        engine.close()
        return EXIT_INTERRUPTED
    snapshot = engine.snapshot()
    if as_json:
        _print_json(snapshot)
    elif not quiet:
        _print_summary(snapshot, name)
    return EXIT_FAILED if failures else 0


def _print_json(snapshot) -> None:
    print(json.dumps(snapshot.to_dict(), indent=2))


def _print_summary(snapshot, name: str) -> None:
    print(f"session {name} ({Path(snapshot.session)}): {snapshot.dataset} on {snapshot.device}, step {snapshot.step}")
    for entry in snapshot.history:
        line = f"  {entry['phase']:<9} step {entry['step']:>7}  accuracy {fmt(entry['test_accuracy'])}"
        if entry["clusterability"] is not None:
            line += f"  clusterability {fmt(entry['clusterability'])} {null_text(entry.get('significance'))}"
        print(line)
    if snapshot.clusters:
        c = snapshot.clusters
        print(f"  clusters k={c['k']} ({c['source']}): rows {c['row_sizes']} cols {c['col_sizes']}; "
              f"clusterability {fmt(snapshot.clusterability)} {null_text(snapshot.significance)}; uniform-mass "
              f"chance {fmt(snapshot.clusterability_chance)}")
    if snapshot.control is not None and snapshot.accuracy_cost is not None:
        print(f"  accuracy against the λ=0 control: {fmt(snapshot.control['test_accuracy'])} control, cost "
              f"{snapshot.accuracy_cost * 100:.2f} points")


def _print_ablation(ablation: dict) -> None:
    """Per cluster: the classes it carries most, its specialisation and p against random unit sets."""
    print(f"silenced: {ablation['units']}")
    print("baseline accuracy per class: " + " ".join(f"{c}:{a:.3f}" for c, a in
                                                      zip(ablation["classes"], ablation["baseline"], strict=True)))
    for i, drops in enumerate(ablation["drop"]):
        top = sorted(zip(drops, ablation["classes"], strict=True), reverse=True)[:3]
        carried = ", ".join(f"{c} (-{d * 100:.0f} pts)" for d, c in top if d > 0) or "nothing"
        p = ablation["p_value"][i]
        print(f"cluster {i + 1}: carries {carried}; specialisation {ablation['specialisation'][i]:.3f}"
              + (f", p = {p:.3f}" if p is not None else ""))


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _ignore_further_interrupts() -> None:
    """While the final save runs, a second Ctrl-C or SIGTERM must not abort it half-written."""
    def still_saving(signum, frame) -> None:
        print("clusterlab: still saving; the session will be complete in a moment.", file=sys.stderr, flush=True)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, still_saving)


if __name__ == "__main__":
    sys.exit(main())
