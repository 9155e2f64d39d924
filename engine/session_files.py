"""The files of a session folder: their names, how each is opened (never through a link) and written (atomically).

Every other module asks for a session's files through this one and `engine.session`; no other module spells a
session file's name.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import tempfile
from pathlib import Path

from engine.errors import SessionError, WriteError

SESSION_FILE = "session.json"
METRICS_FILE = "metrics.jsonl"
LOCK_FILE = ".lock"
CHECKPOINT = re.compile(r"checkpoint-(\d+)\.pt")
# What atomic_write leaves behind if the process dies mid-write: .<file>.<random>.tmp
TEMP = re.compile(r"\.(?:session\.json|metrics\.jsonl|checkpoint-\d+\.pt)\.[A-Za-z0-9_]+\.tmp")


def session_file(directory: Path) -> Path:
    """The session's session.json (the file a message about its fields names)."""
    return directory / SESSION_FILE


def metrics_path(directory: Path) -> Path:
    """The session's append-only metrics log."""
    return directory / METRICS_FILE


def has_session(directory: Path) -> bool:
    """The folder holds a saved session (its session.json), valid or not."""
    return session_file(directory).is_file()


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:09d}.pt"


def is_session_file(name: str) -> bool:
    """`name` is one of the files a saved session is made of: session.json, the metrics log or a checkpoint."""
    return name in (SESSION_FILE, METRICS_FILE) or CHECKPOINT.fullmatch(name) is not None


def atomic_write(path: Path, data: bytes, shared: bool = False) -> None:
    """Write via a temporary file in the same directory, fsync, then os.replace: all or nothing. The file is the
    owner's alone (0600, as sessions stay), or with `shared` (exports, meant to be passed on) as the user's umask
    makes a new file. A write the system refuses is a WriteError saying what to do."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise unwritable(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if shared:
                os.fchmod(f.fileno(), 0o666 & ~_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise unwritable(path, exc) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_folder(path: Path) -> None:
    """mkdir -p, with a refusal by the system as one WriteError."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise SessionError(f"{path} exists and is not a folder; move it away or choose another name.") from None
    except OSError as exc:
        raise unwritable(path, exc) from None


def unwritable(path: Path, exc: OSError) -> WriteError:
    """One sentence for a write the system refused: what could not be written, why, and what to do."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        then = (f"'clusterlab resume {path.parent.name}' continues from its last save" if is_session_file(path.name)
                else "run the command again")
        return WriteError(f"{path} cannot be written: the disk is full ({exc.strerror}); free some space, then "
                          f"{then}.", exc.errno)
    it = "it and " if os.path.lexists(path) else ""
    return WriteError(f"{path} cannot be written ({exc.strerror}); make {it}{path.parent} writable, or choose "
                      "another folder.", exc.errno)


def write_json(path: Path, data: dict, shared: bool = False) -> None:
    atomic_write(path, (json.dumps(data, indent=2, sort_keys=False) + "\n").encode(), shared)


def _umask() -> int:
    """The process's umask (reading it means setting it: briefly to the strictest, so a file another thread makes
    meanwhile is only more private)."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def remove_stale_temps(directory: Path) -> list[str]:
    """Delete the temporary files that atomic_write leaves when its process dies mid-write; returns their names.

    Call it only while holding the session's SessionLock: without it, another process's save in flight would
    lose its temporary file. Links are removed, never followed; folders are left alone.
    """
    removed = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if TEMP.fullmatch(entry.name) and not entry.is_dir(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(entry.name)
    return sorted(removed)


def prune_checkpoints(directory: Path, keep: set[str]) -> None:
    """Delete checkpoints other than `keep` (the current one and the one before it)."""
    for path in directory.glob("checkpoint-*.pt"):
        if CHECKPOINT.fullmatch(path.name) and path.name not in keep:
            path.unlink(missing_ok=True)


def open_file(path: Path, flags: int, what: str) -> int:
    """os.open that never follows a symbolic link and opens only a regular file, else a SessionError saying so
    (FileNotFoundError is left to the caller, who knows what a missing file means)."""
    try:
        # O_NONBLOCK: a FIFO put in the file's place must not hang the open; regular files ignore it.
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise odd_entry(path, stat.S_IFLNK, what) from None
        if exc.errno == errno.EISDIR:
            raise odd_entry(path, stat.S_IFDIR, what) from None
        raise SessionError(f"{path} cannot be opened ({exc.strerror}).") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise odd_entry(path, mode, what)
    return fd


def read_bytes(path: Path, what: str) -> bytes | None:
    """A session file's bytes (not through a link), or None if there is none."""
    try:
        fd = open_file(path, os.O_RDONLY, what)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as file:
        return file.read()


def check_entry(path: Path, what: str) -> None:
    """A file of the session, if present, must be a regular file and no symbolic link."""
    _check_kind(path, what, stat.S_ISREG)


def check_folder(path: Path, what: str) -> None:
    """A folder in the sessions root, if present, must be a folder and no symbolic link (out of the root)."""
    _check_kind(path, what, stat.S_ISDIR)


def _check_kind(path: Path, what: str, is_kind) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise SessionError(f"{path} cannot be read ({exc.strerror}).") from None
    if not is_kind(mode):
        raise odd_entry(path, mode, what)


def odd_entry(path: Path, mode: int, what: str) -> SessionError:
    if stat.S_ISLNK(mode):
        return SessionError(
            f"{path} is a symbolic link, which clusterlab never follows in the sessions root; put the {what} itself"
            " in its place."
        )
    kind = ("a directory" if stat.S_ISDIR(mode) else "a file" if stat.S_ISREG(mode)
            else "a special file (a FIFO, socket or device)")
    return SessionError(f"{path} is {kind}, not a {what}; move it out of the way.")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
