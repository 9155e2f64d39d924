"""What the sessions root holds, as `clusterlab sessions` and the UI's open screen list it: sessions and sweeps."""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path

from engine.config import Config
from engine.errors import SessionError
from engine.format import COMPACT_COLUMNS, SESSION_COLUMNS, TOO_FEW, session_cells
from engine.measures import upgraded
from engine.plan import CONTROL, JOB_KINDS
from engine.session import check_root, existing_name, read_session, sessions_root
from engine.sweep import is_sweep, sweep_row


def list_sessions(root: Path | None = None, kinds: Collection[str] = JOB_KINDS) -> list[dict]:
    """One summary per session folder under the root, newest first. One that cannot be opened (an invalid name
    or field, a symbolic link, a missing file) is a row of its name and "error", the reason; one bad session never
    fails the listing. The metrics logs are not read (that is for opening). A missing root lists nothing; a root
    that is not a folder is a SessionError."""
    root = sessions_root() if root is None else check_root(root)
    try:
        with os.scandir(root) as found:
            entries = sorted(found, key=lambda e: e.name)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise SessionError(f"The sessions root {root} cannot be read ({exc.strerror}).") from None
    rows = [_summary(Path(entry.path), kinds) for entry in entries
            if not entry.name.startswith(".") and (entry.is_symlink() or entry.is_dir(follow_symlinks=False))]
    rows.sort(key=lambda r: r.get("saved_at") or "", reverse=True)
    return rows


def _summary(directory: Path, kinds: Collection[str]) -> dict:
    if not directory.is_symlink() and is_sweep(directory):
        return sweep_row(directory)
    try:
        existing_name(directory.name)
        data = read_session(directory, kinds, log=False)
    except SessionError as exc:
        return {"name": directory.name, "error": str(exc)}
    last = data.get("last", {})
    clusterability, significance, measured_at = measured(data)
    return {
        "name": directory.name,
        "dataset": data["config"].get("dataset", Config.dataset),
        "phase": data.get("phase"),
        "step": data["step"],
        "test_accuracy": last.get("test_accuracy"),
        "clusterability": clusterability,
        "significance": significance,
        "measured_at": measured_at,
        "saved_at": data.get("saved_at"),
    }


def measured(data: dict) -> tuple[float | None, dict | None, int | None]:
    """A session.json's latest clusterability of its own layer (never its control's), with the null of the same
    measurement (in today's form) and the step it was measured at; else its last evaluation's, without a step."""
    for entry in reversed(data.get("history", [])):
        if entry.get("clusterability") is not None and entry.get("phase") != CONTROL:
            return entry["clusterability"], upgraded(entry.get("significance")), entry.get("step")
    return (data.get("last") or {}).get("clusterability"), upgraded(data.get("significance")), None


def print_sessions(rows: list[dict], wide: bool, width: int) -> None:
    """The sessions table for a terminal `width` columns wide: compact columns unless `wide`; a sweep's members
    right under it by the rest of their name; a name too long to share its line with the figures gets a line of its
    own (a name is never cut: it is what `resume` needs); footnotes for what the cells abbreviate."""
    columns = SESSION_COLUMNS if wide else COMPACT_COLUMNS
    lines = [(_shown_name(row, rows, wide), session_cells(row, columns)[1:]) for row in _grouped(rows)]
    titles = [title for _, title in columns[1:]]
    widths = [max([len(title)] + [len(cells[i]) for _, cells in lines]) for i, title in enumerate(titles)]
    room = max(len("name"), width - sum(w + 2 for w in widths))
    name_width = max([len("name")] + [len(name) for name, _ in lines if len(name) <= room])
    right = [key == "step" for key, _ in columns[1:]]

    def line(name: str, cells: list[str]) -> str:
        parts = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)]
        return "  ".join([name.ljust(name_width), *parts]).rstrip()

    print(line("name", titles))
    for name, cells in lines:
        if len(name) > name_width:
            print(name)
            name = ""
        print(line(name, list(cells)))
    if any(row.get("kind") == "sweep" for row in rows) and not wide:
        print("A sweep's members are listed under it by the rest of their name: .s1 under\n"
              "sweep S is the session S.s1. 'clusterlab sessions --wide' shows whole names.")
    p = [key for key, _ in columns[1:]].index("p")
    if any(cells[p].endswith(TOO_FEW) for _, cells in lines):
        print(f"{TOO_FEW} too few shuffles: this null cannot show p ≤ 0.05.")


def _grouped(rows: list[dict]) -> list[dict]:
    """`rows` in their order, except that each sweep's members follow it, in the sweep's own order."""
    by_name = {row["name"]: row for row in rows}
    members = {m: row for row in rows if row.get("kind") == "sweep" for m in row.get("members", []) if m in by_name}
    out = []
    for row in rows:
        if row["name"] in members:
            continue
        out.append(row)
        out += [by_name[m] for m in row.get("members", []) if m in by_name] if row.get("kind") == "sweep" else []
    return out


def _shown_name(row: dict, rows: list[dict], wide: bool) -> str:
    sweep = next((r["name"] for r in rows if r.get("kind") == "sweep" and row["name"] in r.get("members", [])), None)
    return row["name"] if wide or sweep is None else "  " + row["name"].removeprefix(sweep)
