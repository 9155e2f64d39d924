"""What the sessions root holds, as `clusterlab sessions` and the UI's open screen list it: sessions and sweeps."""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path

from engine.config import Config
from engine.errors import SessionError
from engine.measures import upgraded
from engine.plan import JOB_KINDS
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
    return {
        "name": directory.name,
        "dataset": data["config"].get("dataset", Config.dataset),
        "phase": data.get("phase"),
        "step": data["step"],
        "test_accuracy": last.get("test_accuracy"),
        "clusterability": last.get("clusterability"),
        "significance": upgraded(data.get("significance")),
        "saved_at": data.get("saved_at"),
    }
