"""Running a sweep: the unfinished members through an executor, then the table from every member's session.

An executor is `executor(settings, report, progress)`: it runs `engine.member.run_member` on each settings dict
(given parents first) and calls `report(result)` as each ends. `InProcess`, the default, runs them one after
another in this process; `engine.batched_executor.Batched` trains members of the same shapes and data as one
stacked model; `engine.ray_executor.RayExecutor` runs them as Ray tasks. An executor must run a member only once
its parent's result is in, and leave each member's folder under the sessions root before reporting it.
The sweep checks that the data are there before any member runs, unless its executor's workers read
them elsewhere (`data_elsewhere`, a Ray cluster's).
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from engine.config import Config
from engine.errors import ConfigError, SessionError
from engine.format import fmt, null_text
from engine.plan import CLUSTER, PRETRAIN
from engine.session import SessionLock, make_folder, release_directory, session_path, sessions_root
from engine.sweep import (
    FAILED,
    FINISHED,
    UNFINISHED,
    Member,
    check_members,
    member_finished,
    plan_members,
    resolve_manifest,
    write_manifest,
    write_table,
)
from engine.sweep_size import sweep_size
from engine.sweep_table import table_rows, to_csv

if TYPE_CHECKING:
    from engine.member import Progress

Report = Callable[[dict], None]
Executor = Callable[[list[dict], Report, "Progress"], None]
CLUSTER_WEIGHT = 0.1  # a clustering counts as a tenth of an epoch in the progress bar
EXECUTORS = ("inprocess", "batched", "ray")


@dataclass
class SweepResult:
    """A sweep after a run: every member's result (finished ones from their sessions), the table, and what the
    run did."""

    name: str
    directory: Path
    members: list[dict]
    table: list[dict]
    ran: int
    skipped: int

    @property
    def failures(self) -> list[dict]:
        return [m for m in self.members if m["status"] == FAILED]

    @property
    def stopped(self) -> bool:
        """Members are left unfinished (a stop, not a failure): running the sweep again continues them."""
        return any(m["status"] == UNFINISHED for m in self.members)

    def to_dict(self) -> dict:
        return {"sweep": self.name, "members": self.members, "table": self.table}


class InProcess:
    """Runs members one after another in this process; a set `stop` ends the running one resumably and runs no
    more. A member whose parent failed or did not finish is not run."""

    def __init__(self, stop: threading.Event | None = None) -> None:
        self.stop = stop

    def __call__(self, settings: list[dict], report: Report, progress: Progress) -> None:
        from engine.member import failed, run_member

        unfinished: set[str] = set()
        for member in settings:
            if self.stop is not None and self.stop.is_set():
                return
            if member["parent"] in unfinished:
                unfinished.add(member["name"])
                report(failed(member["name"], f"not run: {member['parent']} did not finish"))
                continue
            result = run_member(member, progress, self.stop)
            if result["status"] != FINISHED:
                unfinished.add(member["name"])
            report(result)


def make_executor(kind: str, stop: threading.Event | None = None, ray_address: str | None = None,
                  say: Callable[[str], None] | None = None) -> Executor:
    """The executor named `kind` (one of EXECUTORS). Ray is imported only here, for `ray`: a missing one is a
    ConfigError before anything runs."""
    if kind not in EXECUTORS:
        raise ConfigError(f"--executor must be one of {', '.join(EXECUTORS)}, not {kind!r}.")
    if ray_address is not None and kind != "ray":
        raise ConfigError("--ray-address is only for --executor ray; add --executor ray or drop it.")
    if kind == "batched":
        from engine.batched_executor import Batched

        return Batched(stop, say)
    if kind == "ray":
        from engine.ray_executor import RayExecutor

        return RayExecutor(ray_address, stop)
    return InProcess(stop)


def run_sweep(name: str, given: dict, grid_given: dict, *, root: Path | None = None,
              executor: Executor | None = None, display: SweepDisplay | None = None, yes: bool = False,
              stop: threading.Event | None = None) -> SweepResult:
    """Run sweep `name` (new from the flags, or continued from its manifest): only its unfinished members run.
    `given`: settings flags (Config field -> value); `grid_given`: axis values by manifest key (engine.axes).
    Its size is counted before the grid is listed, and one of more than CONFIRM_ABOVE members is refused unless
    `yes`; the size is told (on `display`) before any member runs. With `stop` (the event the executor
    watches), SIGINT and SIGTERM set it while members run (stop_on_signals); before that, and after, they interrupt
    at once: no member has started, every write is atomic, and a new sweep's folder is removed again if its
    manifest was not written."""
    root = root or sessions_root()
    directory = session_path(name, root)
    display = display or SweepDisplay(name, quiet=True)

    sizes = []

    def accept(base: Config, counts: dict[str, int]) -> None:
        sizes.append(sweep_size(name, base, counts))
        sizes[-1].check(yes)
        if sizes[-1].large:  # accepted with --yes: planning it takes a while, so it is told now
            display.note(sizes[-1].line())

    manifest, created = resolve_manifest(directory, name, given, grid_given, accept)
    members = plan_members(name, manifest.grid)
    check_members(name, manifest.base, members, root)
    if not getattr(executor, "data_elsewhere", False):  # else the workers read it, maybe not from this machine
        from engine.data import check_source  # torch: imported once the sweep's size is accepted

        check_source(manifest.base.dataset, manifest.base.data_dir)
    fresh = not directory.exists()
    make_folder(directory)
    lock = SessionLock(directory)  # one process runs a sweep at a time
    try:
        try:
            write_manifest(directory, manifest, created)
        except BaseException:
            if fresh:  # a new sweep's folder holds nothing but its lock: a rerun must find no folder in the way
                release_directory(directory, lock)
            raise
        if not sizes[-1].large:  # told once every check and write has passed: a refusal stays one sentence
            display.note(sizes[-1].line())
        todo = [m for m in members if not member_finished(root / m.name, m.kind)]
        display.start(members, manifest.base, {m.name for m in members} - {m.name for m in todo})
        reported: dict[str, dict] = {}

        def report(result: dict) -> None:
            reported[result["name"]] = result
            display.member_done(result)

        with display, stop_on_signals(stop):
            (executor or InProcess())([m.settings(manifest.base, root) for m in todo], report, display.member_progress)
        results = [_result(m, manifest.base, root, reported.get(m.name)) for m in members]
        rows = table_rows(results)
        sweep = SweepResult(name, directory, results, rows, sum(1 for m in todo if m.name in reported),
                            len(members) - len(todo))
        write_table(directory, sweep.to_dict(), to_csv(rows))
        return sweep
    finally:
        lock.release()


def _result(member: Member, base: Config, root: Path, reported: dict | None) -> dict:
    """A member's row: read from its session when finished, else its grid point with what the run reported (a
    failure) or that it is unfinished (stopped, or not reached)."""
    from engine.member import member_result

    grid_point = member.row()
    if member_finished(root / member.name, member.kind):
        try:
            return member_result(root / member.name, member.settings(base, root))
        except SessionError as exc:  # a damaged session.json fails its member alone, however it is damaged
            return {**grid_point, "status": FAILED, "error": str(exc)}
    if reported is not None and reported["status"] == FAILED:
        return {**grid_point, "status": FAILED, "error": reported["error"]}
    return {**grid_point, "status": UNFINISHED}


@contextmanager
def stop_on_signals(stop: threading.Event | None) -> Iterator[None]:
    """SIGINT and SIGTERM end the running member at its next step, saved and resumable, instead of killing it
    (nothing changes without a `stop`, or off the main thread, where no handler can be set)."""
    if stop is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda signum, frame: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class SweepDisplay:
    """Progress on stderr: a line per member that ends, and (on a terminal) a bar of members done / total with an
    ETA. The bar weighs members by their training epochs, so a long pretraining moves it more than a clustering."""

    def __init__(self, name: str, quiet: bool = False) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.name, self.quiet = name, quiet
        self.console = Console(stderr=True)
        self.progress = Progress(TextColumn("sweep {task.description}"), BarColumn(),
                                 TextColumn("{task.fields[members]}"), TimeRemainingColumn(),
                                 TextColumn("{task.fields[current]}"), console=self.console,
                                 disable=quiet or not sys.stderr.isatty())
        self.weights: dict[str, float] = {}
        self.done: set[str] = set()
        self.running: dict[str, float] = {}  # member name -> share of its job done (several run at once in a group)
        self.task = None

    def start(self, members: list[Member], base: Config, finished: set[str]) -> None:
        self.weights = {m.name: _weight(m, base) for m in members}
        self.done = set(finished)
        self.task = self.progress.add_task(self.name, total=sum(self.weights.values()), completed=self._completed(),
                                           members=self._count(), current="")
        if finished and not self.quiet:
            self.console.print(f"{len(finished)} of {len(members)} members already finished.", soft_wrap=True)

    def member_progress(self, name: str, share: float) -> None:
        self.running[name] = share
        self.progress.update(self.task, completed=self._completed(), current=name)

    def note(self, text: str) -> None:
        """A line about the run (how an executor groups members, say), unless quiet."""
        if not self.quiet:
            self.console.print(text, markup=False, soft_wrap=True)

    def member_done(self, result: dict) -> None:
        name = result["name"]
        self.running.pop(name, None)
        if result["status"] == FINISHED:
            self.done.add(name)
        self.progress.update(self.task, completed=self._completed(), members=self._count())
        if self.quiet:
            return
        if result["status"] == FAILED:
            self.console.print(f"failed {name}: {result['error']}", style="red", markup=False, soft_wrap=True)
        elif result["status"] == UNFINISHED:
            self.console.print(f"stopped {name}; it resumes from its last save.", markup=False, soft_wrap=True)
        else:
            line = f"done {name} ({self._count()}): test accuracy {fmt(result['test_accuracy'])}"
            if result["clusterability"] is not None:
                line += f", clusterability {fmt(result['clusterability'])} {null_text(result['significance'])}"
            self.console.print(line, markup=False, soft_wrap=True)

    def _completed(self) -> float:
        """Finished members' weights, and the done share of each running one's."""
        return (sum(self.weights[n] for n in self.done if n in self.weights)
                + sum(share * self.weights.get(n, 0.0) for n, share in self.running.items()))

    def _count(self) -> str:
        return f"{len(self.done)}/{len(self.weights)} members"

    def __enter__(self) -> SweepDisplay:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()


def _weight(member: Member, base: Config) -> float:
    """Training epochs (a pretraining set by --steps counts one: its epochs are not known before the data is)."""
    if member.kind == PRETRAIN:
        return float(member.config(base).epochs) if base.steps is None else 1.0
    return CLUSTER_WEIGHT if member.kind == CLUSTER else float(base.finetune_epochs)
