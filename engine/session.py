"""Sessions on disk, the one door to them: names, reading and writing session.json and checkpoints, shipping a
session's files. Everything outside asks this module (or the modules it is split into, which it re-exports):

    session_files.py   the file names, atomic writes, opening without following links
    session_lock.py    the lock one process holds, claiming a new folder
    session_check.py   what a valid session.json holds, field by field
    session_log.py     the append-only metrics log
"""

from __future__ import annotations

import difflib
import hashlib
import io
import json
import os
import pickle
import platform
import re
import stat
import sys
import time
import warnings
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path

from engine.clustering import Clusters
from engine.config import Config
from engine.errors import ConfigError, SessionError
from engine.plan import JOB_KINDS, Job
from engine.session_check import FORMAT_VERSION, validate_session
from engine.session_files import (
    CHECKPOINT,
    LOCK_FILE,
    METRICS_FILE,
    SESSION_FILE,
    atomic_write,
    check_entry,
    check_folder,
    checkpoint_name,
    has_session,
    is_session_file,
    make_folder,
    metrics_path,
    odd_entry,
    open_file,
    prune_checkpoints,
    read_bytes,
    remove_stale_temps,
    session_file,
    write_json,
)
from engine.session_lock import SessionLock, claim_directory, release_directory, unsaved
from engine.session_log import MetricsLog, check_metrics, read_metrics, record_problem, trim_metrics

__all__ = [
    "FORMAT_VERSION", "JOB_KINDS", "Files", "MetricsLog", "SavedState", "SessionLock", "atomic_write",
    "check_folder", "check_metrics", "check_name", "check_root", "checkpoint_name", "claim_directory",
    "copy_metrics", "existing_name", "has_session", "load_checkpoint", "load_saved", "make_folder", "metrics_path",
    "new_name", "now_iso", "pack_session", "parse_session", "peek_session", "prune_checkpoints", "read_bytes",
    "read_metrics", "read_session", "read_snapshot", "record_problem", "release_directory", "remove_stale_temps",
    "saved_checkpoint", "saved_records", "session_file", "session_path", "sessions_root", "trim_metrics",
    "unpack_session", "unsaved", "validate_session", "versions", "write_checkpoint", "write_json", "write_session",
    "write_stability",
]

# Every name an earlier version accepted, a leading '-' included: existing sessions stay openable.
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")
Files = dict[str, bytes]  # a session folder's files as bytes, by name (pack_session / unpack_session)
SNAPSHOT_TRIES = 20  # saves of a running session a reader follows before it says the session is running


def sessions_root() -> Path:
    """$CLUSTERLAB_SESSIONS, or ./sessions; refused if it exists but is not a folder."""
    return check_root(Path(os.environ.get("CLUSTERLAB_SESSIONS") or "sessions"))


def check_name(name: str) -> str:
    """A valid name for a NEW session (what session_path accepts, less a leading '-')."""
    existing_name(name)
    if name.startswith("-"):
        raise SessionError(
            f"Invalid session name {name!r}: a new session's name cannot start with '-', which the command line"
            " reads as an option; start it with a letter, a digit or '_'."
        )
    return name


def session_path(name: str, root: Path | None = None) -> Path:
    """The directory of the session called `name` under the sessions root (names of existing sessions that
    start with '-', which earlier versions accepted, included; check_name is the rule for new ones)."""
    return (root or sessions_root()) / existing_name(name)


def close_names(name: str, root: Path | None = None) -> list[str]:
    """The sessions and sweeps under the root whose names are close to `name` (a typo's likely meaning), closest
    first; `name` itself is not among them."""
    try:
        with os.scandir(root or sessions_root()) as found:
            names = [e.name for e in found if e.is_dir() and not e.name.startswith(".") and e.name != name]
    except OSError:
        return []
    return difflib.get_close_matches(name, names, n=3, cutoff=0.75)


def did_you_mean(name: str, root: Path | None = None) -> str:
    """' (did you mean tui?)' when a session's name is close to `name`, else ''."""
    close = close_names(name, root)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def new_name(dataset: str, root: Path | None = None) -> str:
    """A readable, unused name such as mnist-20261126-161502."""
    base = f"{dataset}-{datetime.now():%Y%m%d-%H%M%S}"
    name, n = base, 1
    while os.path.lexists((root or sessions_root()) / name):  # a dangling link takes its name too
        n += 1
        name = f"{base}-{n}"
    return name


def write_checkpoint(directory: Path, step: int, state: dict) -> tuple[str, str]:
    """Write the checkpoint of `step`; its file name and the SHA-256 of its bytes (which session.json records, so
    that a load can tell the file is the one that was saved)."""
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    name, data = checkpoint_name(step), buffer.getvalue()
    atomic_write(directory / name, data)
    return name, hashlib.sha256(data).hexdigest()


def load_checkpoint(path: Path, sha256: str | None = None) -> dict:
    """Load tensors and plain values only (weights_only=True), never through a symbolic link; anything else is
    refused, and so is a file whose bytes do not have the `sha256` its save recorded (None: a session saved before
    checksums, loaded unverified). The messages never pass on torch's advice to load without weights_only."""
    import torch

    try:
        fd = open_file(path, os.O_RDONLY, "checkpoint")
    except FileNotFoundError:
        raise SessionError(
            f"{path} is missing: the session's checkpoint is gone; the session cannot be resumed."
        ) from None
    with os.fdopen(fd, "rb") as file:
        data = file.read()
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise SessionError(
            f"{path} is corrupt or was changed after its save (its SHA-256 is not the one {SESSION_FILE} recorded);"
            " it was not loaded and nothing was changed, so restore the session folder from a backup or start the"
            " session again."
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about unusual pickles; the refusal below says what matters
        try:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            found = re.search(r"GLOBAL (\S+)", str(exc))
            detail = f" (it would load {found.group(1)})" if found else ""
            raise SessionError(f"{path} holds objects that are not plain tensors{detail} and was refused.") from None
        except Exception as exc:  # noqa: BLE001 - any way a damaged file fails to load is the same news
            raise SessionError(f"{path} is corrupt or truncated and cannot be loaded ({_reason(exc)}).") from None
    if not isinstance(state, dict) or "trainer" not in state:
        raise SessionError(f"{path} is not a clusterlab checkpoint (no trainer state in it).")
    return state


def read_session(directory: Path, kinds: Collection[str] = JOB_KINDS, *, log: bool = True) -> dict:
    """Read session.json and check every field (validate_session), the files it names, and (unless `log` is
    False) the metrics log up to and past the records it counts (check_metrics). Nothing is followed through a
    symbolic link and no file is changed; every problem is one SessionError naming the file (and the field)."""
    data = _read_session_file(directory, kinds)
    if log:
        check_metrics(metrics_path(directory), data["metrics_records"], data["step"])
    return data


def read_snapshot(directory: Path, kinds: Collection[str] = JOB_KINDS, *, log: bool = True) -> tuple[dict, dict]:
    """session.json (read_session) and the checkpoint it names, as one save wrote them, even while another process
    is saving the session. Each save deletes the checkpoint two saves back (prune_checkpoints), so the checkpoint a
    reader's session.json names may be gone (or rewritten) by the time it is read: then session.json, which has
    moved on, is read again. Only a checkpoint that fails while session.json still names it is the session's own
    damage; a session saved over again and again while it is read is said to be running."""
    data = read_session(directory, kinds, log=log)
    for _ in range(SNAPSHOT_TRIES):
        try:
            return data, saved_checkpoint(directory, data)
        except SessionError as exc:
            newer = read_session(directory, kinds, log=log)
            if _save_of(newer) == _save_of(data):
                raise exc from None
            data = newer
    raise SessionError(
        f"{directory} is running: another clusterlab saved it {SNAPSHOT_TRIES} times while it was being read; try"
        " again when it has stopped, or with a larger --autosave-every."
    )


def saved_records(directory: Path, data: dict) -> list[dict]:
    """The metrics records a save counted (its checked session.json `data`): a run still going writes more."""
    return read_metrics(metrics_path(directory))[:data["metrics_records"]]


def load_saved(directory: Path) -> tuple[SavedState, dict]:
    """A saved session to continue or to read: its checked, typed session.json and the checkpoint it names, one
    consistent save even while another process is saving it (read_snapshot)."""
    data, state = read_snapshot(directory)
    return parse_session(directory, data), state


def _save_of(data: dict) -> tuple:
    """What tells two saves' checkpoints apart."""
    return data["checkpoint"], data.get("checkpoint_sha256")


def saved_checkpoint(directory: Path, saved: SavedState | dict) -> dict:
    """The checkpoint that a save names, verified against the SHA-256 it recorded: its SavedState, or its checked
    session.json (from read_session)."""
    if isinstance(saved, SavedState):
        return load_checkpoint(directory / saved.checkpoint, saved.checkpoint_sha256)
    return load_checkpoint(directory / saved["checkpoint"], saved.get("checkpoint_sha256"))


def write_stability(directory: Path, result: dict) -> None:
    """Put `clusterlab stability`'s result in session.json (the UI shows it), under the session's lock."""
    lock = SessionLock(directory)
    try:
        data = read_session(directory, log=False)
        data["stability"] = result
        write_json(session_file(directory), data)
    finally:
        lock.release()


def peek_session(directory: Path) -> dict | None:
    """session.json as it is now, unchecked (for a live view of a sweep another process is writing): None if
    there is none; SessionError if it cannot be read or is no JSON object (a save being replaced, say), or if the
    folder is a symbolic link (never followed out of the sessions root)."""
    check_folder(directory, "session folder")
    text = read_bytes(session_file(directory), "session file")
    if text is None:
        return None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise SessionError(f"{session_file(directory)} is not readable JSON just now.") from None
    if not isinstance(data, dict):
        raise SessionError(f"{session_file(directory)} is no JSON object.")
    return data


def copy_metrics(source: Path, directory: Path) -> None:
    """Start `directory`'s metrics log as a copy of `source`'s (a sweep member's charts show its ancestors' steps
    first); nothing if `source` has none."""
    text = read_bytes(metrics_path(source), "metrics log")
    if text is not None:
        atomic_write(metrics_path(directory), text)


def pack_session(directory: Path) -> Files:
    """A saved session as bytes: session.json, the checkpoint it names, and the metrics log if there is one."""
    session = read_bytes(session_file(directory), "session file")
    if session is None:
        raise SessionError(f"{directory} has no saved session to ship.")
    checkpoint = json.loads(session).get("checkpoint")
    if not isinstance(checkpoint, str) or not CHECKPOINT.fullmatch(checkpoint):
        raise SessionError(f"{session_file(directory)} names no valid checkpoint; the session cannot be shipped.")
    files = {SESSION_FILE: session, checkpoint: read_bytes(directory / checkpoint, "checkpoint")}
    if files[checkpoint] is None:
        raise SessionError(f"{directory / checkpoint} is missing; the session cannot be shipped.")
    log = read_bytes(metrics_path(directory), "metrics log")
    if log is not None:
        files[METRICS_FILE] = log
    return files


def unpack_session(directory: Path, files: Files) -> None:
    """Lay a packed session down at `directory`, under its lock: session.json last, so that a crash leaves the
    previous complete session or the new one; then drop checkpoints it no longer names."""
    unknown = [name for name in files if not is_session_file(name)]
    if unknown or SESSION_FILE not in files:
        raise SessionError(f"{directory.name} came back with unexpected files ({', '.join(unknown) or 'none'}).")
    directory.mkdir(exist_ok=True)
    lock = SessionLock(directory)
    try:
        for name in sorted(files, key=lambda n: n == SESSION_FILE):
            atomic_write(directory / name, files[name])
        prune_checkpoints(directory, set(files))
    finally:
        lock.release()


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def check_root(root: Path) -> Path:
    if root.exists() and not root.is_dir():
        raise SessionError(
            f"The sessions root {root} is not a folder; point $CLUSTERLAB_SESSIONS at a folder (default ./sessions)."
        )
    return root


def _read_session_file(directory: Path, kinds: Collection[str]) -> dict:
    """read_session less the metrics log: the folder, session.json and its fields, the kinds of the files."""
    try:
        mode = os.lstat(directory).st_mode
    except OSError:
        mode = None
    if mode is not None and stat.S_ISLNK(mode):
        raise odd_entry(directory, mode, "session folder")
    if mode is None or not stat.S_ISDIR(mode):
        meant = did_you_mean(directory.name, directory.parent)
        raise SessionError(f"{directory} does not exist or is not a directory{meant}; see 'clusterlab sessions'.")
    path = session_file(directory)
    try:
        fd = open_file(path, os.O_RDONLY, "session file")
    except FileNotFoundError:
        if unsaved(directory):
            raise SessionError(
                f"{directory} was cut off while it was being created, before its first {SESSION_FILE}, so there is"
                f" nothing to resume; 'clusterlab run --session {directory.name}' (with the settings you meant)"
                " starts it again in its place."
            ) from None
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
        check_entry(directory / name, what)
    return data


def existing_name(name: str) -> str:
    """`name` if an existing session may have it (see session_path), else a SessionError."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise SessionError(
            f"Invalid session name {name!r}: use 1-64 letters, digits, '.', '_' or '-', not starting with a dot."
        )
    return name


def _reason(exc: Exception) -> str:
    """The first sentence of an exception's message, dropped if it gives advice about weights_only."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    sentence = text.split(". ")[0].rstrip(".")
    return type(exc).__name__ if not sentence or "weights_only" in sentence else sentence


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
    checkpoint_sha256: str | None = None  # of the checkpoint's bytes; None in sessions saved before checksums
    stability: dict | None = None  # `clusterlab stability` of the held clusters (engine/stability.py)


def parse_session(directory: Path, data: dict) -> SavedState:
    """The typed state of a checked session.json; valid JSON of the wrong shape is as corrupt as broken JSON."""
    path = session_file(directory)
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
                          significance=dict(data["significance"]) if data.get("significance") else None,
                          checkpoint_sha256=data.get("checkpoint_sha256"),
                          stability=dict(data["stability"]) if data.get("stability") else None)
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
        "checkpoint_sha256": saved.checkpoint_sha256,
        "metrics_records": saved.metrics_records,
        "plan": [job.to_dict() for job in saved.plan],
        "clusters": saved.clusters.to_dict() if saved.clusters else None,
        "history": saved.history,
        "last": saved.last,
        "control": saved.control,
        "ablation": saved.ablation,
        "significance": saved.significance,
        "stability": saved.stability,
        "device": device,
        "versions": versions(),
    })


def versions() -> dict:
    """Library versions recorded in session.json (read from package metadata: importing scipy and
    scikit-learn only to ask would add a second to every start)."""
    libs = {name: metadata.version(name) for name in ("torch", "numpy", "scipy", "scikit-learn")}
    return {"python": platform.python_version(), **libs, "platform": sys.platform}
