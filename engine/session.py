"""Session directories on disk: names, atomic writes, checkpoints, the metrics log, listing."""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import time
import zipfile
from datetime import datetime
from pathlib import Path

from engine.errors import SessionError

FORMAT_VERSION = 1
SESSION_FILE = "session.json"
METRICS_FILE = "metrics.jsonl"
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")
_CHECKPOINT = re.compile(r"checkpoint-(\d+)\.pt")


def sessions_root() -> Path:
    """$CLUSTERLAB_SESSIONS, or ./sessions."""
    return Path(os.environ.get("CLUSTERLAB_SESSIONS") or "sessions")


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise SessionError(
            f"Invalid session name {name!r}: use 1-64 letters, digits, '.', '_' or '-', not starting with a dot."
        )
    return name


def session_path(name: str, root: Path | None = None) -> Path:
    """The directory of the session called `name` under the sessions root."""
    return (root or sessions_root()) / check_name(name)


def new_name(dataset: str, root: Path | None = None) -> str:
    """A readable, unused name such as mnist-20261126-161502."""
    base = f"{dataset}-{datetime.now():%Y%m%d-%H%M%S}"
    name, n = base, 1
    while (root or sessions_root()).joinpath(name).exists():
        n += 1
        name = f"{base}-{n}"
    return name


def atomic_write(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same directory, fsync, then os.replace: all or nothing."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def write_json(path: Path, data: dict) -> None:
    atomic_write(path, (json.dumps(data, indent=2, sort_keys=False) + "\n").encode())


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:09d}.pt"


def write_checkpoint(directory: Path, step: int, state: dict) -> str:
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    name = checkpoint_name(step)
    atomic_write(directory / name, buffer.getvalue())
    return name


def prune_checkpoints(directory: Path, keep: set[str]) -> None:
    """Delete checkpoints other than `keep` (the current one and the one before it)."""
    for path in directory.glob("checkpoint-*.pt"):
        if _CHECKPOINT.fullmatch(path.name) and path.name not in keep:
            path.unlink(missing_ok=True)


def load_checkpoint(path: Path) -> dict:
    """Load tensors and plain values only (weights_only=True); anything else is refused."""
    import torch

    if not path.is_file():
        raise SessionError(f"{path} is missing: the session's checkpoint is gone; the session cannot be resumed.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsupported content"
        raise SessionError(f"{path} holds objects that are not plain tensors and was refused ({first}).") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SessionError(f"{path} is corrupt or truncated and cannot be loaded ({reason}).") from None
    if not isinstance(state, dict) or "trainer" not in state:
        raise SessionError(f"{path} is not a clusterlab checkpoint (no trainer state in it).")
    return state


def read_session(directory: Path) -> dict:
    """Read and check session.json; every problem becomes one SessionError naming the file."""
    path = directory / SESSION_FILE
    if not directory.is_dir():
        raise SessionError(f"{directory} does not exist or is not a directory; see 'clusterlab sessions'.")
    if not path.is_file():
        raise SessionError(f"{directory} is not a clusterlab session: it has no {SESSION_FILE}.")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SessionError(f"{path} is corrupt ({exc}); the session cannot be opened.") from None
    if not isinstance(data, dict) or "format_version" not in data:
        raise SessionError(f"{path} is not a clusterlab session file (no format_version).")
    version = data["format_version"]
    if not isinstance(version, int) or isinstance(version, bool) or version > FORMAT_VERSION:
        raise SessionError(
            f"{path} has format version {version!r}, newer than this clusterlab understands ({FORMAT_VERSION});"
            " upgrade clusterlab to open it."
        )
    missing = [key for key in ("config", "checkpoint", "step", "plan", "history") if key not in data]
    if missing:
        raise SessionError(f"{path} lacks required field(s) {', '.join(missing)}; the session cannot be opened.")
    if not isinstance(data["checkpoint"], str) or not _CHECKPOINT.fullmatch(data["checkpoint"]):
        raise SessionError(f"{path} names an invalid checkpoint file {data['checkpoint']!r}.")
    return data


class MetricsLog:
    """Append-only JSON-lines log of training metrics; one object per line, each with a step."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - held open for the session's life

    def append(self, record: dict) -> None:
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")

    def flush(self) -> None:
        if not self._file.closed:
            self._file.flush()

    def sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            self._file.close()


def read_metrics(path: Path, up_to_step: int | None = None) -> list[dict]:
    """Records of the log, skipping a torn last line and, if given, those after `up_to_step`."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and (up_to_step is None or record.get("step", 0) <= up_to_step):
            records.append(record)
    return records


def trim_metrics(path: Path, up_to_step: int) -> None:
    """Drop torn lines and records after the resumed checkpoint, so no step appears twice."""
    if not path.is_file():
        return
    kept = read_metrics(path, up_to_step)
    text = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in kept)
    if text != path.read_text(encoding="utf-8", errors="replace"):
        atomic_write(path, text.encode())


def list_sessions(root: Path | None = None) -> list[dict]:
    """One summary per session directory under the root, newest first; broken ones say why."""
    root = root or sessions_root()
    rows = []
    for directory in sorted(p for p in root.glob("*") if p.is_dir() and not p.name.startswith(".")):
        try:
            data = read_session(directory)
        except SessionError as exc:
            rows.append({"name": directory.name, "error": str(exc)})
            continue
        last = data.get("last", {})
        rows.append({
            "name": directory.name,
            "dataset": data["config"].get("dataset"),
            "phase": data.get("phase"),
            "step": data.get("step"),
            "test_accuracy": last.get("test_accuracy"),
            "clusterability": last.get("clusterability"),
            "saved_at": data.get("saved_at"),
        })
    rows.sort(key=lambda r: r.get("saved_at") or "", reverse=True)
    return rows


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
