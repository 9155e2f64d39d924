"""Session directories on disk: names, atomic writes, checkpoints, the metrics log, listing."""

from __future__ import annotations

import fcntl
import io
import json
import os
import pickle
import platform
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path

from engine.clustering import Clusters
from engine.config import Config
from engine.errors import ConfigError, SessionError
from engine.plan import JOB_KINDS, Job

FORMAT_VERSION = 1
SESSION_FILE = "session.json"
METRICS_FILE = "metrics.jsonl"
LOCK_FILE = ".lock"
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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


class SessionLock:
    """An exclusive lock on a session directory for as long as one Engine has it open: two processes writing
    one session would interleave its files. The kernel drops it when the process dies, SIGKILL included."""

    def __init__(self, directory: Path) -> None:
        path = directory / LOCK_FILE
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # A lock file unlinked by a failed creator between our open and our flock locks nothing.
            if os.fstat(self._fd).st_ino != os.stat(path, follow_symlinks=False).st_ino:
                raise BlockingIOError
        except (BlockingIOError, FileNotFoundError):
            os.close(self._fd)
            raise SessionError(
                f"{directory} is open in another clusterlab (a UI or a run); close it there first."
            ) from None

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = -1


def claim_directory(path: Path) -> SessionLock:
    """Make `path` a new session's folder and lock it. mkdir is atomic, so of two concurrent creators one makes
    the folder; the other is refused, and neither ever deletes what the other wrote. A folder left by a failed
    create (nothing in it but a lock file and temp files) may be claimed again."""
    exists = SessionError(f"{path} already exists; open it to continue, or choose another session name.")
    try:
        path.mkdir(parents=True)
    except FileExistsError:
        if not _unused(path):
            raise exists from None
    except NotADirectoryError:
        raise SessionError(f"{path.parent} is not a directory; set $CLUSTERLAB_SESSIONS to a folder.") from None
    try:
        lock = SessionLock(path)
    except SessionError:
        raise exists from None
    if not _unused(path):  # another creator finished before we took the lock
        lock.release()
        raise exists
    return lock


def release_directory(path: Path, lock: SessionLock) -> None:
    """Undo a failed create: while still holding the lock (so everything in the folder is ours), remove what it
    wrote, the lock file and the folder."""
    for entry in path.iterdir():
        if entry.name != LOCK_FILE and (entry.is_file() or entry.is_symlink()):
            entry.unlink(missing_ok=True)
    (path / LOCK_FILE).unlink(missing_ok=True)
    lock.release()
    try:
        path.rmdir()
    except OSError:
        pass  # someone is already claiming it again


def _unused(path: Path) -> bool:
    return (path.is_dir() and not path.is_symlink()
            and all(p.name == LOCK_FILE or (p.name.startswith(".") and p.name.endswith(".tmp"))
                    for p in path.iterdir()))


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
    except Exception as exc:  # noqa: BLE001 - any way a damaged file fails to load is the same news
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
    missing = [key for key in ("config", "checkpoint", "step", "plan", "history", "metrics_records")
               if key not in data]
    if missing:
        raise SessionError(f"{path} lacks required field(s) {', '.join(missing)}; the session cannot be opened.")
    if not isinstance(data["checkpoint"], str) or not _CHECKPOINT.fullmatch(data["checkpoint"]):
        raise SessionError(f"{path} names an invalid checkpoint file {data['checkpoint']!r}.")
    return data


class MetricsLog:
    """Append-only JSON-lines log of training metrics; one object per line, each with a step.

    Line-buffered, so every record reaches the file at once (a reader on another thread never needs to
    flush it); `records` counts the lines, which a save records so a resume can cut the log exactly there.
    """

    def __init__(self, path: Path, records: int) -> None:
        self.path = path
        self.records = records
        self._file = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - open for the session's life

    def append(self, record: dict) -> None:
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self.records += 1

    def sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            self._file.close()


def read_metrics(path: Path, limit: int | None = None) -> list[dict]:
    """The log's records, skipping a torn (unparsable) line; at most the first `limit` if given."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if limit is not None and len(records) >= limit:
            break
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def trim_metrics(path: Path, records: int) -> int:
    """Keep the first `records` records, those the resumed save had written; what came after the save
    (and a torn last line) goes, so no step appears twice. Returns how many records the log now holds."""
    if not path.is_file():
        return 0
    kept = read_metrics(path, records)
    text = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in kept)
    if text != path.read_text(encoding="utf-8", errors="replace"):
        atomic_write(path, text.encode())
    return len(kept)


def list_sessions(root: Path | None = None) -> list[dict]:
    """One summary per session directory under the root, newest first; broken ones say why."""
    root = root or sessions_root()
    rows = []
    for directory in sorted(p for p in root.glob("*") if p.is_dir() and not p.name.startswith(".")):
        try:
            data = read_session(directory)
            last = data.get("last") or {}
            rows.append({
                "name": directory.name,
                "dataset": data["config"].get("dataset"),
                "phase": data.get("phase"),
                "step": data.get("step"),
                "test_accuracy": last.get("test_accuracy"),
                "clusterability": last.get("clusterability"),
                "saved_at": data.get("saved_at"),
            })
        except (SessionError, AttributeError, TypeError) as exc:
            reason = str(exc) if isinstance(exc, SessionError) else f"{directory / SESSION_FILE} is malformed"
            rows.append({"name": directory.name, "error": reason})
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


@dataclass
class SavedState:
    """What a save holds besides the trainer's tensors, parsed from session.json."""

    config: Config
    step: int
    checkpoint: str
    metrics_records: int
    plan: list[Job]
    clusters: Clusters | None
    history: list[dict]
    last: dict
    control: dict | None = None


def parse_session(directory: Path, data: dict) -> SavedState:
    """The typed state of a checked session.json; valid JSON of the wrong shape is as corrupt as broken JSON."""
    path = directory / SESSION_FILE
    try:
        config = Config.from_dict(data["config"])
    except (ConfigError, TypeError) as exc:
        raise SessionError(f"{path} has an invalid config: {exc}") from None
    try:
        clusters = Clusters.from_dict(data["clusters"]) if data.get("clusters") else None
        plan = [Job(**job) for job in data["plan"]]
        unknown = [job.kind for job in plan if job.kind not in JOB_KINDS]
        if unknown:
            raise ValueError(f"unknown job kind(s) {unknown} in the plan")
        return SavedState(config=config, step=int(data["step"]), checkpoint=str(data["checkpoint"]),
                          metrics_records=int(data["metrics_records"]), plan=plan, clusters=clusters,
                          history=[dict(entry) for entry in data["history"]], last=dict(data.get("last") or {}),
                          control=dict(data["control"]) if data.get("control") else None)
    except (KeyError, TypeError, ValueError) as exc:
        raise SessionError(
            f"{path} is corrupt ({type(exc).__name__}: {exc}); the session cannot be opened."
        ) from None


def write_session(directory: Path, saved: SavedState, *, phase: str, epoch: int, device: str) -> None:
    """Write session.json for a save whose checkpoint is already on disk."""
    write_json(directory / SESSION_FILE, {
        "format_version": FORMAT_VERSION,
        "name": directory.name,
        "saved_at": now_iso(),
        "config": saved.config.to_dict(),
        "phase": phase,
        "step": saved.step,
        "epoch": epoch,
        "checkpoint": saved.checkpoint,
        "metrics_records": saved.metrics_records,
        "plan": [job.to_dict() for job in saved.plan],
        "clusters": saved.clusters.to_dict() if saved.clusters else None,
        "history": saved.history,
        "last": saved.last,
        "control": saved.control,
        "device": device,
        "versions": versions(),
    })


def versions() -> dict:
    """Library versions recorded in session.json (read from package metadata: importing scipy and
    scikit-learn only to ask would add a second to every start)."""
    libs = {name: metadata.version(name) for name in ("torch", "numpy", "scipy", "scikit-learn")}
    return {"python": platform.python_version(), **libs, "platform": sys.platform}
