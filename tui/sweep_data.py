"""A sweep as the UI shows it, read from its folder while another process may be running it (no torch here).

The sweep command writes its table (engine.sweep.write_table) only when a run ends, so a live view also reads
what changes as the sweep goes: each member's saved session, rewritten at every save of that member.
`SweepWatcher.poll` stats those files and re-reads only the ones that changed, so polling a sweep of dozens of
members once a second costs a few hundred microseconds while nothing moves. A finished member's figures come from
its session exactly as `engine.member.member_result` reads them (less the parameters' hash, which needs its
checkpoint and so torch). The rows are the sweep's own table.json once a run has ended, and
`engine.sweep_table.table_rows` of the members while one runs, so the view's table is the one the sweep writes.
Every file is found and read through engine.session and engine.sweep.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from engine.errors import SessionError
from engine.session import peek_session, session_file
from engine.sweep import (
    FAILED,
    FINISHED,
    UNFINISHED,
    Member,
    manifest_path,
    member_figures,
    member_finished,
    plan_members,
    read_grid,
    read_table,
    table_stamp,
)
from engine.sweep_table import table_rows

NOT_STARTED = "not started"  # a member the sweep has not reached: no session folder yet


@dataclass(frozen=True)
class SweepState:
    """What the sweep view shows: every member's row (plan order), the result table, and what moved last."""

    name: str
    members: list[dict]
    rows: list[dict]
    last_member: str | None  # the member saved most recently, and when (seconds since the epoch)
    last_saved: float | None
    ended: bool  # the last run wrote its table (it was not stopped or killed before the end)

    @property
    def finished(self) -> int:
        return sum(m["status"] == FINISHED for m in self.members)


def member_row(directory: Path, member: Member) -> dict:
    """One member's grid point, status, whether it has a session ("saved"), its step and, once finished, its
    figures: test accuracy, clusterability and the significance and ablation figures its session holds (what
    `member_result` reports for it)."""
    row: dict = {**member.row(), "status": NOT_STARTED, "saved": False, "step": None, "done": None, "total": None,
                 "test_accuracy": None, "clusterability": None, "significance": None, "ablation": None}
    finished = member_finished(directory, member.kind)
    try:
        data = peek_session(directory)
    except SessionError:
        return {**row, "status": UNFINISHED, "saved": True}  # unreadable just now: the next poll reads it again
    if data is None:
        return row
    row.update(status=UNFINISHED, saved=True, step=data.get("step"))
    plan = data.get("plan") or []
    if plan:
        row.update(done=plan[0].get("done"), total=plan[0].get("total"))
    if finished:  # its history holds its own phase, so its figures are there
        row.update(status=FINISHED, **member_figures(data, member.kind))
    return row


class SweepWatcher:
    """Reads a sweep folder's state, re-reading only the member sessions whose session.json changed."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.name = directory.name
        self._manifest_stamp: tuple | None = None
        self._members: list[Member] = []
        self._stamps: dict[str, tuple] = {}  # member name -> (mtime_ns, size) of the session.json last read
        self._rows: dict[str, dict] = {}
        self._table_stamp: tuple | None = None
        self._failed: dict[str, str] = {}  # member -> error, from the table of a run that ended
        self._table: list[dict] | None = None  # the rows of that table

    def poll(self) -> SweepState | None:
        """The sweep now, or None when no file changed since the last poll. SessionError if the manifest cannot
        be read (the folder is not a sweep, or its manifest is corrupt)."""
        changed = self._read_manifest()
        changed |= self._read_table()
        for member in self._members:
            stamp = _stamp(session_file(self.directory.parent / member.name))
            if stamp != self._stamps.get(member.name) or member.name not in self._rows:
                self._stamps[member.name] = stamp
                self._rows[member.name] = member_row(self.directory.parent / member.name, member)
                changed = True
        return self._state() if changed else None

    def _read_manifest(self) -> bool:
        stamp = _stamp(manifest_path(self.directory))
        if stamp == self._manifest_stamp:
            return False
        grid = read_grid(self.directory)  # the grid can grow when the sweep is run again with more seeds
        self._manifest_stamp = stamp
        self._members = plan_members(self.name, grid)
        return True

    def _read_table(self) -> bool:
        """Failures are known only to the sweep process: its table.json lists them when a run ends, with the rows."""
        stamp = _stamp(table_stamp(self.directory))
        if stamp == self._table_stamp:
            return False
        self._table_stamp = stamp
        self._failed, self._table = {}, None
        table = read_table(self.directory) if self._ended() else None  # None: a table being replaced, read next time
        if table is not None:
            try:
                self._failed = {m["name"]: m.get("error", "") for m in table["members"] if m["status"] == FAILED}
                self._table = list(table["table"])
            except (KeyError, TypeError):
                self._failed, self._table = {}, None
        return True

    def _ended(self) -> bool:
        """The table was written after the manifest: the latest run reached its end."""
        table, manifest = self._table_stamp, self._manifest_stamp
        return table is not None and manifest is not None and table[0] >= manifest[0]

    def _state(self) -> SweepState:
        members = []
        for member in self._members:
            row = self._rows[member.name]
            if row["status"] != FINISHED and member.name in self._failed:
                row = {**row, "status": FAILED, "error": self._failed[member.name]}
            members.append(row)
        saved = [(stamp[0], name) for name, stamp in self._stamps.items() if stamp is not None]
        last = max(saved, default=None)
        # The run's own table while nothing saved since it ended; the members' rows while a run is under way.
        ended = self._ended() and (last is None or last[0] <= self._table_stamp[0])
        rows = self._table if ended and self._table is not None else table_rows(members)
        return SweepState(self.name, members, rows, last[1] if last else None, last[0] / 1e9 if last else None,
                          self._ended())


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size


def ago(seconds_since_epoch: float, now: float) -> str:
    """'4 s', '3 min', '2 h': how long before `now` a save was."""
    elapsed = max(0.0, now - seconds_since_epoch)
    if elapsed < 90:
        return f"{elapsed:.0f} s"
    if elapsed < 90 * 60:
        return f"{elapsed / 60:.0f} min"
    return f"{elapsed / 3600:.0f} h"


__all__ = ["NOT_STARTED", "SweepState", "SweepWatcher", "ago", "member_row"]
