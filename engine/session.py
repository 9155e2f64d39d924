"""Session directories on disk: names, atomic writes, checkpoints, the metrics log, validation, listing.

Over 400 lines on purpose: the whole on-disk contract of a session (writing, reading, validating every field,
locking, listing) lives here, so that one module can be read to know what a session folder may hold.
"""

from __future__ import annotations

import errno
import fcntl
import io
import json
import os
import pickle
import platform
import re
import stat
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import AnyStr, NoReturn

from engine.clustering import Clusters
from engine.config import SOURCES, Config, check_lam, finite_number, whole_number
from engine.errors import ConfigError, SessionError
from engine.measures import readable, upgraded
from engine.plan import JOB_KINDS, Job

FORMAT_VERSION = 1
SESSION_FILE = "session.json"
METRICS_FILE = "metrics.jsonl"
LOCK_FILE = ".lock"
# Every name an earlier version accepted, a leading '-' included: existing sessions stay openable.
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")
_CHECKPOINT = re.compile(r"checkpoint-(\d+)\.pt")
# What atomic_write leaves behind if the process dies mid-write: .<file>.<random>.tmp
_TEMP = re.compile(r"\.(?:session\.json|metrics\.jsonl|checkpoint-\d+\.pt)\.[A-Za-z0-9_]+\.tmp")


def sessions_root() -> Path:
    """$CLUSTERLAB_SESSIONS, or ./sessions; refused if it exists but is not a folder."""
    return _check_root(Path(os.environ.get("CLUSTERLAB_SESSIONS") or "sessions"))


def check_name(name: str) -> str:
    """A valid name for a NEW session (what session_path accepts, less a leading '-')."""
    _check_existing_name(name)
    if name.startswith("-"):
        raise SessionError(
            f"Invalid session name {name!r}: a new session's name cannot start with '-', which the command line"
            " reads as an option; start it with a letter, a digit or '_'."
        )
    return name


def session_path(name: str, root: Path | None = None) -> Path:
    """The directory of the session called `name` under the sessions root (names of existing sessions that
    start with '-', which earlier versions accepted, included; check_name is the rule for new ones)."""
    return (root or sessions_root()) / _check_existing_name(name)


def new_name(dataset: str, root: Path | None = None) -> str:
    """A readable, unused name such as mnist-20261126-161502."""
    base = f"{dataset}-{datetime.now():%Y%m%d-%H%M%S}"
    name, n = base, 1
    while os.path.lexists((root or sessions_root()) / name):  # a dangling link takes its name too
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
    one session would interleave its files. The kernel drops it when the process dies, SIGKILL included.
    The lock file is never opened through a symbolic link."""

    def __init__(self, directory: Path) -> None:
        path = directory / LOCK_FILE
        try:
            self._fd = _open_file(path, os.O_RDWR | os.O_CREAT, "lock file")
        except FileNotFoundError:
            raise SessionError(f"{directory} does not exist any more; it cannot be opened.") from None
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


def remove_stale_temps(directory: Path) -> list[str]:
    """Delete the temporary files that atomic_write leaves when its process dies mid-write; returns their names.

    Call it only while holding the session's SessionLock: without it, another process's save in flight would
    lose its temporary file. Links are removed, never followed; folders are left alone.
    """
    removed = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if _TEMP.fullmatch(entry.name) and not entry.is_dir(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(entry.name)
    return sorted(removed)


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
    """Load tensors and plain values only (weights_only=True), never through a symbolic link; anything else is
    refused. The messages never pass on torch's advice to load without weights_only."""
    import torch

    try:
        fd = _open_file(path, os.O_RDONLY, "checkpoint")
    except FileNotFoundError:
        raise SessionError(
            f"{path} is missing: the session's checkpoint is gone; the session cannot be resumed."
        ) from None
    with os.fdopen(fd, "rb") as file, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about unusual pickles; the refusal below says what matters
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            found = re.search(r"GLOBAL (\S+)", str(exc))
            detail = f" (it would load {found.group(1)})" if found else ""
            raise SessionError(f"{path} holds objects that are not plain tensors{detail} and was refused.") from None
        except Exception as exc:  # noqa: BLE001 - any way a damaged file fails to load is the same news
            raise SessionError(f"{path} is corrupt or truncated and cannot be loaded ({_reason(exc)}).") from None
    if not isinstance(state, dict) or "trainer" not in state:
        raise SessionError(f"{path} is not a clusterlab checkpoint (no trainer state in it).")
    return state


def read_session(directory: Path, kinds: Collection[str] = JOB_KINDS) -> dict:
    """Read session.json and check every field (validate_session), the files it names, and the metrics log up to
    and past the records it counts (check_metrics). Nothing is followed through a symbolic link and no file is
    changed; every problem is one SessionError naming the file (and the field)."""
    data = _read_session_file(directory, kinds)
    check_metrics(directory / METRICS_FILE, data["metrics_records"], data["step"])
    return data


# A value check: what the value must be (as the error message says it), and the test.
Check = tuple[str, Callable[[object], bool]]
TEXT: Check = ("text", lambda v: isinstance(v, str))
COUNT: Check = ("a whole number of 0 or more", lambda v: whole_number(v) and v >= 0)
FLAG: Check = ("true or false", lambda v: isinstance(v, bool))
LIST: Check = ("a list", lambda v: isinstance(v, list))
OBJECT: Check = ("an object", lambda v: isinstance(v, dict))
NULL: Check = ("a shuffle null's figures (engine.measures.NullResult)", readable)
NULL_OR_NONE: Check = (f"{NULL[0]} or null", lambda v: v is None or readable(v))
OBJECT_OR_NULL: Check = ("null or an object", lambda v: v is None or isinstance(v, dict))
NUMBER: Check = ("a finite number", finite_number)
NUMBER_OR_NULL: Check = ("null or a finite number", lambda v: v is None or finite_number(v))
SHARE: Check = ("a number from 0 to 1", lambda v: finite_number(v) and 0 <= v <= 1)
SHARE_OR_NULL: Check = ("null or a number from 0 to 1", lambda v: v is None or SHARE[1](v))
LAM: Check = ("a finite number of 0 or more that float32 holds", lambda v: _passes(check_lam, v))
SOURCE: Check = (f"one of {', '.join(SOURCES)}", lambda v: isinstance(v, str) and v in SOURCES)
# A record's fields: name -> (check, required).
Spec = dict[str, tuple[Check, bool]]

TOP_FIELDS: Spec = {
    "name": (TEXT, False), "saved_at": (TEXT, False), "config": (OBJECT, True), "phase": (TEXT, False),
    "step": (COUNT, True), "epoch": (COUNT, False), "checkpoint": (TEXT, True), "plan": (LIST, True),
    "history": (LIST, True), "last": (OBJECT, False), "device": (TEXT, False), "versions": (OBJECT, False),
    "control": (OBJECT_OR_NULL, False), "ablation": (OBJECT_OR_NULL, False), "significance": (NULL_OR_NONE, False),
}
HISTORY_FIELDS: Spec = {
    "phase": (TEXT, True), "step": (COUNT, True), "steps": (COUNT, True), "test_accuracy": (SHARE_OR_NULL, True),
    "clusterability": (SHARE_OR_NULL, True), "lam": (LAM, False), "stopped": (FLAG, False),
    "significance": (NULL, False),
}
# The fields that the readers of each type of metrics record use (the UI rebuilds its charts from them), on top of
# a text "type" and a whole "step" that every record has. Records of other types need only those two.
RECORD_FIELDS: dict[str, Spec] = {
    "train": {"phase": (TEXT, True), "loss": (NUMBER, True)},
    "eval": {"phase": (TEXT, True), "test_accuracy": (SHARE, True), "clusterability": (SHARE_OR_NULL, True)},
    "clusters": {"clusterability": (SHARE, True), "chance": (SHARE, True)},
    "phase": {"phase": (TEXT, True)},
}
_RECORD_BASE: Spec = {"type": (TEXT, True), "step": (COUNT, True)}
# Fields a job of the plan needs beyond its kind.
_JOB_NEEDS = {"cluster": ("k", "source")}


def validate_session(data: object, path: Path, kinds: Collection[str] = JOB_KINDS) -> dict:
    """Check every field of a parsed session.json (`path` names it in messages) by type and range, and against
    each other where every save makes them agree: the checkpoint is the step's, no history entry is after the
    step, a job's done steps are at most its total, clusters label each unit of the studied layer. Returns `data`;
    the first bad field raises SessionError naming the file and the field. Reads and changes nothing."""
    if not isinstance(data, dict) or "format_version" not in data:
        raise SessionError(f"{path} is not a clusterlab session file (no format_version).")
    version = data["format_version"]
    if whole_number(version) and version > FORMAT_VERSION:
        raise SessionError(
            f"{path} has format version {version!r}, newer than this clusterlab understands ({FORMAT_VERSION});"
            " upgrade clusterlab to open it."
        )
    if not (whole_number(version) and version >= 1):  # 0, -5, "1", 1.0: damage, not a newer clusterlab
        _fail(path, f"field 'format_version' must be a whole number from 1 to {FORMAT_VERSION}, not {_show(version)}")
    missing = [key for key in ("config", "checkpoint", "step", "plan", "history", "metrics_records")
               if key not in data]
    if missing:
        raise SessionError(f"{path} lacks required field(s) {', '.join(missing)}; the session cannot be opened.")
    _refuse(path, _object_problem("", data, TOP_FIELDS))
    try:
        config = Config.from_dict(data["config"])
    except ConfigError as exc:
        _fail(path, f"field 'config' is invalid ({str(exc).rstrip('.')})")
    step = data["step"]
    found = _CHECKPOINT.fullmatch(data["checkpoint"])
    if not found:
        raise SessionError(f"{path} names an invalid checkpoint file {data['checkpoint']!r}.")
    if int(found.group(1)) != step:
        _fail(path, f"field 'checkpoint' must name the checkpoint of step {step} ({checkpoint_name(step)}), "
                      f"not {data['checkpoint']!r}")
    history = data["history"]
    for i, entry in enumerate(history):
        _refuse(path, _object_problem(f"history[{i}]", entry, HISTORY_FIELDS))
        if entry["step"] > step:
            _fail(path, f"field 'history[{i}].step' must be at most the session's step {step}, not {entry['step']}")
    # Every ended phase wrote one "phase" record before the save that recorded it in the history.
    records, least = data["metrics_records"], len(history)
    if not (whole_number(records) and records >= least):
        _fail(path, f"field 'metrics_records' must be a whole number of {least} or more (one record per entry "
                      f"of 'history'), not {_show(records)}")
    width = min(config.layer_shape)
    k_check: Check = (f"a whole number from 2 to {width} (the studied layer's width)",
                      lambda v: whole_number(v) and 2 <= v <= width)
    job_fields: Spec = {
        "kind": ((f"one of {', '.join(kinds)}", lambda v: isinstance(v, str) and v in kinds), True),
        "total": (COUNT, False), "done": (COUNT, False), "lam": (LAM, False), "k": (k_check, False),
        "source": (SOURCE, False),
    }
    for i, job in enumerate(data["plan"]):
        _refuse(path, _object_problem(f"plan[{i}]", job, job_fields))
        unknown = [key for key in job if key not in job_fields]
        if unknown:
            _fail(path, f"field 'plan[{i}]' has an unknown key {_show(unknown[0])}")
        for key in _JOB_NEEDS.get(job["kind"], ()):
            if key not in job:
                _fail(path, f"field 'plan[{i}].{key}' is missing")
        if job.get("done", 0) > job.get("total", 0):
            _fail(path, f"field 'plan[{i}].done' must be at most the job's total {job.get('total', 0)}, "
                          f"not {job['done']}")
    if data.get("clusters") is not None:
        _check_clusters(path, data["clusters"], k_check, config.layer_shape)
    for key, value in data.get("last", {}).items():
        _refuse(path, _problem(f"last.{key}", value, NUMBER_OR_NULL))
    for key, value in data.get("versions", {}).items():
        _refuse(path, _problem(f"versions.{key}", value, TEXT))
    return data


def _check_clusters(path: Path, clusters: object, k_check: Check, shape: tuple[int, int]) -> None:
    """Saved clusters must label every unit of the studied layer (`shape`: rows, cols) with one of k clusters."""
    spec: Spec = {"k": (k_check, True), "source": (SOURCE, True), "row_labels": (LIST, True),
                  "col_labels": (LIST, True)}
    _refuse(path, _object_problem("clusters", clusters, spec))
    k = clusters["k"]
    label: Check = (f"a cluster label, a whole number from 0 to {k - 1}", lambda v: whole_number(v) and 0 <= v < k)
    for side, size in zip(("row_labels", "col_labels"), shape, strict=True):
        labels = clusters[side]
        if len(labels) != size:
            _fail(path, f"field 'clusters.{side}' must hold {size} labels (one per unit of the studied layer), "
                          f"not {len(labels)}")
        for i, value in enumerate(labels):
            _refuse(path, _problem(f"clusters.{side}[{i}]", value, label))


def check_metrics(path: Path, records: int, step: int) -> None:
    """Check the metrics log against the save that counted its first `records` lines at `step`, before
    trim_metrics cuts it there.

    A save is written only once the log's lines are on disk, so the log holds at least `records` lines (a missing
    log, none), each a valid record (record_problem) of a step no later than the save's: a shorter log, or a torn
    or corrupt line there, is damage, and the session is refused. A later line that is no valid record is the torn
    end of a crash, which the cut drops; but a valid later record of an EARLIER step than the save's means that the
    count is too small and that the cut would lose records: refused too.
    """
    text = _log_bytes(path)
    lines = [] if text is None else _lines(text.decode("utf-8", errors="replace"))
    if len(lines) < records:
        raise SessionError(
            f"{path} holds {len(lines)} records, fewer than the {records} that the last save counted "
            f"('metrics_records' in {SESSION_FILE}): it was cut or replaced since; restore it to open the session."
        )
    for number, line in enumerate(lines, 1):
        problem, record = _parse_record(line)
        if number <= records:
            if problem is not None:
                raise SessionError(f"{path} line {number} is not a valid metrics record ({problem}); "
                                   "the session cannot be opened.")
            if record["step"] > step:
                raise SessionError(f"{path} line {number} is of step {record['step']}, after the saved step {step}, "
                                   f"yet within the {records} records the save counted; the session cannot be opened.")
        elif problem is None and record["step"] < step:
            raise SessionError(f"{path} line {number} is of step {record['step']}, before the saved step {step}, yet "
                               f"beyond the {records} records the save counted ('metrics_records' is too small); "
                               "the session cannot be opened.")


def record_problem(record: object) -> str | None:
    """Why `record` is not a metrics record its readers can use, or None: an object with a text "type", a whole
    "step" and, for the known types, the fields in RECORD_FIELDS."""
    if not isinstance(record, dict):
        return f"not an object but {_show(record)}"
    kind = record.get("type")
    fields = RECORD_FIELDS.get(kind, {}) if isinstance(kind, str) else {}
    return _object_problem("", record, {**_RECORD_BASE, **fields})


class MetricsLog:
    """Append-only JSON-lines log of training metrics; one object per line, each with a step.

    Line-buffered, so every record reaches the file at once (a reader on another thread never needs to
    flush it); `records` counts the lines, which a save records so a resume can cut the log exactly there.
    Never opened through a symbolic link.
    """

    def __init__(self, path: Path, records: int) -> None:
        self.path = path
        self.records = records
        try:
            self._file = open(path, "a", encoding="utf-8", buffering=1,  # noqa: SIM115 - open for the session's life
                              opener=lambda name, flags: _open_file(Path(name), flags, "metrics log"))
        except OSError as exc:
            raise SessionError(f"{path} cannot be opened for writing ({exc.strerror or exc}).") from None

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


def read_metrics(path: Path) -> list[dict]:
    """The log's valid records (record_problem), in order; a torn line (a crash, or a write in progress seen from
    another thread) and any other invalid line are skipped. Not followed through a symbolic link."""
    text = _log_bytes(path)
    if text is None:
        return []
    records = []
    for line in _lines(text.decode("utf-8", errors="replace")):
        problem, record = _parse_record(line)
        if problem is None:
            records.append(record)
    return records


def trim_metrics(path: Path, records: int) -> int:
    """Keep the first `records` lines, those the resumed save had written (check_metrics, run by read_session,
    has checked them); what came after the save (a torn last line included) goes, so no step appears twice.
    Returns how many records the log now holds."""
    text = _log_bytes(path)
    if text is None:
        return 0
    lines = _lines(text)[:records]
    kept = b"".join(line + b"\n" for line in lines)
    if kept != text:
        atomic_write(path, kept)
    return len(lines)


def list_sessions(root: Path | None = None, kinds: Collection[str] = JOB_KINDS) -> list[dict]:
    """One summary per session folder under the root, newest first. One that cannot be opened (an invalid name
    or field, a symbolic link, a missing file) is a row of its name and "error", the reason; one bad session never
    fails the listing. The metrics logs are not read (that is for opening). A missing root lists nothing; a root
    that is not a folder is a SessionError."""
    root = sessions_root() if root is None else _check_root(root)
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


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _summary(directory: Path, kinds: Collection[str]) -> dict:
    from engine.sweep import is_sweep, sweep_row  # sweep.py reads sessions through this module

    if not directory.is_symlink() and is_sweep(directory):
        return sweep_row(directory)
    try:
        _check_existing_name(directory.name)
        data = _read_session_file(directory, kinds)
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


def _read_session_file(directory: Path, kinds: Collection[str]) -> dict:
    """read_session less the metrics log: the folder, session.json and its fields, the kinds of the files."""
    try:
        mode = os.lstat(directory).st_mode
    except OSError:
        mode = None
    if mode is not None and stat.S_ISLNK(mode):
        raise _odd_entry(directory, mode, "session folder")
    if mode is None or not stat.S_ISDIR(mode):
        raise SessionError(f"{directory} does not exist or is not a directory; see 'clusterlab sessions'.")
    path = directory / SESSION_FILE
    try:
        fd = _open_file(path, os.O_RDONLY, "session file")
    except FileNotFoundError:
        raise SessionError(f"{directory} is not a clusterlab session: it has no {SESSION_FILE}.") from None
    try:
        with os.fdopen(fd, "rb") as file:
            data = json.loads(file.read())
    except (OSError, json.JSONDecodeError) as exc:
        raise SessionError(f"{path} is corrupt ({exc}); the session cannot be opened.") from None
    except (ValueError, RecursionError):  # bad UTF-8, a number of thousands of digits, brackets nested thousands deep
        raise SessionError(f"{path} is corrupt (not JSON that can be read); the session cannot be opened.") from None
    validate_session(data, path, kinds)
    for name, what in ((data["checkpoint"], "checkpoint"), (METRICS_FILE, "metrics log"), (LOCK_FILE, "lock file")):
        _check_entry(directory / name, what)
    return data


def _check_existing_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise SessionError(
            f"Invalid session name {name!r}: use 1-64 letters, digits, '.', '_' or '-', not starting with a dot."
        )
    return name


def _check_root(root: Path) -> Path:
    if root.exists() and not root.is_dir():
        raise SessionError(
            f"The sessions root {root} is not a folder; point $CLUSTERLAB_SESSIONS at a folder (default ./sessions)."
        )
    return root


def _open_file(path: Path, flags: int, what: str) -> int:
    """os.open that never follows a symbolic link and opens only a regular file, else a SessionError saying so
    (FileNotFoundError is left to the caller, who knows what a missing file means)."""
    try:
        # O_NONBLOCK: a FIFO put in the file's place must not hang the open; regular files ignore it.
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _odd_entry(path, stat.S_IFLNK, what) from None
        if exc.errno == errno.EISDIR:
            raise _odd_entry(path, stat.S_IFDIR, what) from None
        raise SessionError(f"{path} cannot be opened ({exc.strerror}).") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise _odd_entry(path, mode, what)
    return fd


def _check_entry(path: Path, what: str) -> None:
    """A file of the session, if present, must be a regular file and no symbolic link."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise SessionError(f"{path} cannot be read ({exc.strerror}).") from None
    if not stat.S_ISREG(mode):
        raise _odd_entry(path, mode, what)


def _odd_entry(path: Path, mode: int, what: str) -> SessionError:
    if stat.S_ISLNK(mode):
        return SessionError(
            f"{path} is a symbolic link, which clusterlab never follows in the sessions root; put the {what} itself"
            " in its place."
        )
    kind = "a directory" if stat.S_ISDIR(mode) else "a special file (a FIFO, socket or device)"
    return SessionError(f"{path} is {kind}, not a {what}; move it out of the session folder.")


def _log_bytes(path: Path) -> bytes | None:
    """The metrics log's bytes, or None if there is none."""
    try:
        fd = _open_file(path, os.O_RDONLY, "metrics log")
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as file:
        return file.read()


def _lines(text: AnyStr) -> list[AnyStr]:
    """The log's lines: each record ends with a newline, so what follows the last one is a torn line, if any."""
    lines = text.split(b"\n" if isinstance(text, bytes) else "\n")
    return lines[:-1] if not lines[-1] else lines


def _parse_record(line: str) -> tuple[str | None, dict | None]:
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        return "not valid JSON: torn or corrupt", None
    problem = record_problem(record)
    return problem, (record if problem is None else None)


def _object_problem(name: str, data: object, spec: Spec) -> str | None:
    """The first field of `data` that `spec` refuses (missing, or failing its check), as a phrase; or None."""
    if not isinstance(data, dict):
        return f"field '{name}' must be an object, not {_show(data)}"
    for key, (check, required) in spec.items():
        field = f"{name}.{key}" if name else key
        if key in data:
            problem = _problem(field, data[key], check)
            if problem:
                return problem
        elif required:
            return f"field '{field}' is missing"
    return None


def _problem(field: str, value: object, check: Check) -> str | None:
    expected, ok = check
    return None if ok(value) else f"field '{field}' must be {expected}, not {_show(value)}"


def _fail(path: Path, problem: str) -> NoReturn:
    raise SessionError(f"{path}: {problem}; the session cannot be opened.")


def _refuse(path: Path, problem: str | None) -> None:
    if problem is not None:
        _fail(path, problem)


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _passes(check: Callable[[object], None], value: object) -> bool:
    try:
        check(value)
    except ConfigError:
        return False
    return True


def _reason(exc: Exception) -> str:
    """The first sentence of an exception's message, dropped if it gives advice about weights_only."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    sentence = text.split(". ")[0].rstrip(".")
    return type(exc).__name__ if not sentence or "weights_only" in sentence else sentence


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
    ablation: dict | None = None
    significance: dict | None = None


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
        return SavedState(config=config, step=int(data["step"]), checkpoint=str(data["checkpoint"]),
                          metrics_records=int(data["metrics_records"]), plan=plan, clusters=clusters,
                          history=[dict(entry) for entry in data["history"]], last=dict(data.get("last") or {}),
                          control=dict(data["control"]) if data.get("control") else None,
                          ablation=dict(data["ablation"]) if data.get("ablation") else None,
                          significance=dict(data["significance"]) if data.get("significance") else None)
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
        "ablation": saved.ablation,
        "significance": saved.significance,
        "device": device,
        "versions": versions(),
    })


def versions() -> dict:
    """Library versions recorded in session.json (read from package metadata: importing scipy and
    scikit-learn only to ask would add a second to every start)."""
    libs = {name: metadata.version(name) for name in ("torch", "numpy", "scipy", "scikit-learn")}
    return {"python": platform.python_version(), **libs, "platform": sys.platform}
