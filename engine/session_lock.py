"""Who may write a session folder: the lock one process holds on it, and claiming a new folder atomically."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from engine.errors import SessionError
from engine.session_files import LOCK_FILE, SESSION_FILE, is_session_file, open_file, unwritable


class SessionLock:
    """An exclusive lock on a session directory for as long as one Engine has it open: two processes writing
    one session would interleave its files. The kernel drops it when the process dies, SIGKILL included.
    The lock file is never opened through a symbolic link."""

    def __init__(self, directory: Path) -> None:
        path = directory / LOCK_FILE
        try:
            self._fd = open_file(path, os.O_RDWR | os.O_CREAT, "lock file")
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
    the folder; the other is refused, and neither ever deletes what the other wrote. A folder whose creation was
    cut before its first save (see `unsaved`) may be claimed again: under its lock, what it holds is cleared."""
    exists = SessionError(f"{path} already exists; open it to continue, or choose another session name.")
    try:
        path.mkdir(parents=True)
    except FileExistsError:
        if not unsaved(path):
            raise exists from None
    except NotADirectoryError:
        raise SessionError(f"{path.parent} is not a directory; set $CLUSTERLAB_SESSIONS to a folder.") from None
    except OSError as exc:  # a read-only or full sessions root
        raise unwritable(path, exc) from None
    try:
        lock = SessionLock(path)
    except SessionError:
        raise exists from None
    if not unsaved(path):  # another creator finished before we took the lock
        lock.release()
        raise exists
    _clear(path)  # a cut creation's files: ours to delete now that we hold the lock
    return lock


def release_directory(path: Path, lock: SessionLock) -> None:
    """Undo a failed create: while still holding the lock (so everything in the folder is ours), remove what it
    wrote, the lock file and the folder."""
    _clear(path)
    (path / LOCK_FILE).unlink(missing_ok=True)
    lock.release()
    try:
        path.rmdir()
    except OSError:
        pass  # someone is already claiming it again


def unsaved(path: Path) -> bool:
    """`path` is a folder whose creation was cut before its first save completed (a kill between the first
    checkpoint and the first session.json, say): no session.json, and nothing but a session's own files in it
    (a lock, temp files, a metrics log, checkpoints). Nothing in it can be resumed; it may be created again."""
    return path.is_dir() and not path.is_symlink() and all(_leftover(p) for p in path.iterdir())


def _clear(path: Path) -> None:
    """Delete the files of a session folder other than its lock (held by the caller)."""
    for entry in path.iterdir():
        if entry.name != LOCK_FILE and (entry.is_file() or entry.is_symlink()):
            entry.unlink(missing_ok=True)


def _leftover(entry: Path) -> bool:
    name = entry.name
    return (entry.is_file() and not entry.is_symlink() and name != SESSION_FILE
            and (name == LOCK_FILE or (name.startswith(".") and name.endswith(".tmp")) or is_session_file(name)))
