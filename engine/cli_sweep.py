"""The `sweep` and `reproduce` commands: their parsers and handlers (the work is in engine/sweep*.py)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from engine.config import check_int, plain_int
from engine.errors import EXIT_FAILED, EXIT_INTERRUPTED
from engine.options import OPTIONS, metavar
from engine.session import check_name


def add_sweep_parsers(commands) -> None:
    from engine.axes import AXIS_FIELDS, add_axis_flags
    from engine.reproduce import DEFAULT_SEEDS, FINETUNE_EPOCHS, SETUPS

    sweep = commands.add_parser(  # no abbreviations: --seed must not be read as --seeds
        "sweep", allow_abbrev=False, help="a grid of seeds, k and λ as sessions, ending in a table with 95%% CIs",
        description="Per seed pretrain once; per (seed, source, k) cluster a copy; per λ finetune a copy of that "
        "(λ=0, the control, always included). Every member is a session named NAME.s1, NAME.s1.weights.k2, "
        "NAME.s1.weights.k2.lam3, ...; the table goes to the sweep's folder NAME/. Rerun the same command, or "
        "'clusterlab sweep NAME' alone, to continue: only unfinished members run.")
    sweep.add_argument("name", metavar="NAME", help="sweep name")
    add_axis_flags(sweep.add_argument_group("axes (engine/axes.py; hidden, lr and epochs are axes given 2+ values)"))
    sweep.add_argument("--json", action="store_true", help="print the members and the table as one JSON object")
    _add_executor_flags(sweep)
    group = sweep.add_argument_group("experiment settings (shared by every member)")
    for option in OPTIONS:
        if option.name not in AXIS_FIELDS:
            group.add_argument(option.flag, dest=option.name, default=None, metavar=metavar(option), help=option.help)
    setups = ",".join(map(str, SETUPS))
    reproduce = commands.add_parser(
        "reproduce", allow_abbrev=False, help="the reference study over seeds, beside the figures it printed",
        description=f"MNIST, pretrained {SETUPS[0]} epoch (the reference's own setup) and {SETUPS[1]} epochs, k=2 on "
        f"weights and on gradients, λ 0 and 3 for {FINETUNE_EPOCHS} finetuning epochs, as the sweep 'reproduce'; "
        "ends with a table per setup: each figure the reference printed beside clusterlab's mean ± 95%% CI, and "
        "'reproduced' when the figure lies inside the 95%% range of one seed.")
    reproduce.add_argument("--seeds", type=plain_int, default=DEFAULT_SEEDS,
                           help=f"number of seeds (default {DEFAULT_SEEDS})")
    reproduce.add_argument("--data-dir", help="folder with MNIST's IDX files")
    reproduce.add_argument("--device", help="compute device: auto, cpu or cuda (default auto)")
    reproduce.add_argument("--epochs", default=setups, metavar="N,N",
                           help=f"the setups' pretraining epochs: other than {setups} only for a smoke run")
    reproduce.add_argument("--finetune-epochs", type=plain_int, default=FINETUNE_EPOCHS,
                           help=f"finetuning epochs: other than {FINETUNE_EPOCHS} only for a smoke run")
    reproduce.add_argument("--json", action="store_true", help="print the sweep and the comparison as one JSON object")
    _add_executor_flags(reproduce)


def _add_executor_flags(parser: argparse.ArgumentParser) -> None:
    from engine.sweep_size import CONFIRM_ABOVE

    parser.add_argument("--yes", action="store_true",
                        help=f"start a sweep of more than {CONFIRM_ABOVE:,} members (its size is told first)")
    parser.add_argument("--executor", default="inprocess", metavar="inprocess|batched|ray",
                        help="how members run: one after another here (default); members of the same shapes and "
                        "data trained as one stacked model (batched); or as tasks on a Ray cluster (ray)")
    parser.add_argument("--ray-address", metavar="ADDRESS",
                        help="the Ray cluster to join for --executor ray ('auto' or HOST:PORT); default: a local Ray")


def cmd_sweep(args: argparse.Namespace) -> int:
    from engine.axes import grid_from_args

    grid = grid_from_args(args)
    given = {}
    for option in OPTIONS:
        text = getattr(args, option.name, None)
        value = option.parse(text) if text is not None else None
        if value is not None:
            given[option.name] = value
    return _sweep(check_name(args.name), given, grid, args)


def cmd_reproduce(args: argparse.Namespace) -> int:
    from engine import reproduce as ref
    from engine.axes import parse_list

    check_int("--seeds", args.seeds, 1)
    epochs = tuple(dict.fromkeys(parse_list("--epochs", args.epochs, int)))
    for value in epochs:
        check_int("--epochs", value, 0)
    check_int("--finetune-epochs", args.finetune_epochs, 0)
    name, given, grid = ref.preset(args.seeds, epochs, args.finetune_epochs, args.data_dir, args.device)

    def comparison(result) -> tuple[dict, str]:
        setups = ref.compare_setups(result.members, epochs, args.finetune_epochs)
        note = "" if ref.is_reference_run(epochs, args.finetune_epochs) else (
            f"\nA smoke run (pretrained {args.epochs}, finetuned {args.finetune_epochs} epochs, not the reference's "
            f"{ref.FINETUNE_EPOCHS}-epoch finetune after {ref.SETUPS[0]} and {ref.SETUPS[1]}): the verdicts do not "
            "apply.")
        return {"setups": [s.to_dict() for s in setups]}, ref.comparison_markdown(setups) + note

    return _sweep(name, given, grid, args, comparison)


def _sweep(name: str, given: dict, grid: dict, args: argparse.Namespace,
           extra: Callable[[object], tuple[dict, str]] | None = None) -> int:
    """Run a sweep with progress on stderr, on the executor `args` names, after a line with its size (one of more
    than CONFIRM_ABOVE members needs --yes); SIGINT/SIGTERM stop it resumably, or at once while no member runs.
    Prints the table (and `extra`'s)."""
    import threading

    from engine.sweep_run import SweepDisplay, make_executor, run_sweep
    from engine.sweep_table import markdown, pareto_chart

    stop = threading.Event()
    display = SweepDisplay(name)
    executor = make_executor(args.executor, stop, args.ray_address, display.note)
    try:
        result = run_sweep(name, given, grid, executor=executor, display=display, yes=args.yes, stop=stop)
    except KeyboardInterrupt:  # SIGINT or SIGTERM while no member ran (planning, the manifest, the table)
        print(f"clusterlab: sweep {name} interrupted; nothing is half-written: run the same command again to "
              "continue it.", file=sys.stderr)
        return EXIT_INTERRUPTED
    more, text = extra(result) if extra else ({}, "")
    if args.json:
        print(json.dumps({**result.to_dict(), **more}, indent=2))
    else:
        print(markdown(result.table))
        print(f"\nWritten to {result.directory / 'table.csv'} and table.json.")
        chart = pareto_chart(result.table)
        if chart:
            print(chart)
        if text:
            print("\n" + text)
    if result.stopped:
        print(f"clusterlab: sweep stopped; continue it with 'clusterlab sweep {name}'.", file=sys.stderr)
        return EXIT_INTERRUPTED
    if result.failures:
        print(f"clusterlab: {len(result.failures)} member(s) failed; see above. Rerunning the sweep retries them.",
              file=sys.stderr)
        return EXIT_FAILED
    return 0
