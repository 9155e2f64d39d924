"""The host protocol's wire: JSON lines over a Unix socket, events and snapshots as plain dicts (torch-free).

Messages (one JSON object a line, each with a "type"):

    client -> host   hello {protocol, client}        first, always; a version mismatch is refused and closed
                     command {id, name, args}         one of COMMAND_ARGS; answered by a reply with the same id
    host -> client   welcome {protocol, name, pid, session, config}
                     state {snapshot}                 the full state: on attach and on every resync, followed by
                     history {records, last}          the metrics log in bounded chunks, the last with last=true
                     event {event}                    a live engine event (event_to_wire)
                     snapshot {snapshot}              a fresh snapshot after events that change it (coalesced)
                     reply {id, ok, result | error}   id is null for a message that could not be read at all
                     bye {reason}                     the host is ending (stop-host, idle exit, closed engine)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from engine import events as ev
from engine.errors import ClusterlabError
from engine.picture import BlockPicture
from engine.snapshot import Snapshot

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 1 << 20  # the longest line a host reads from a client; longer ones get an error reply
MAX_HOST_LINE = 64 << 20  # the longest line a client reads from a host (a snapshot with a large picture)
HISTORY_CHUNK = 2000  # metrics records per history message: bounded lines, never one message per step
SOCKET_NAME = "engine.sock"
_SUN_PATH_MAX = 107  # AF_UNIX paths are 108 bytes with the terminating NUL

# The commands a host accepts: argument name -> accepted JSON types (None always allowed for optional ones).
_INT, _NUM, _STR = (int,), (int, float), (str,)
COMMAND_ARGS: dict[str, dict[str, tuple[type, ...]]] = {
    "train": {"epochs": _INT, "steps": _INT},
    "continue": {"epochs": _INT, "steps": _INT},
    "cluster": {"k": _INT, "source": _STR},
    "finetune": {"epochs": _INT, "lam": _NUM},
    "plan": {},  # queue the config's whole default plan, as `clusterlab run` does
    "pause": {}, "resume": {}, "stop": {}, "save": {}, "ablate": {},
    "set_picture_size": {"rows": _INT, "cols": _INT},
    "status": {},  # the snapshot as `run --json` prints it, plus pid, clients, steps_per_s, state
    "detach": {},  # the host closes this connection; the run goes on
    "stop-host": {},  # save and end the host (and with it the run, resumable)
}
_TYPE_NAMES = {_INT: "a whole number", _NUM: "a number", _STR: "text"}
REQUIRED_ARGS = {"set_picture_size": ("rows", "cols")}


class ProtocolError(ClusterlabError):
    """A message that is not valid protocol: its one sentence goes back to the sender as an error reply."""


def encode(msg: dict) -> bytes:
    """One message as one JSON line (UTF-8, ending in a newline)."""
    return (json.dumps(msg, separators=(",", ":"), ensure_ascii=False) + "\n").encode()


def decode(line: bytes, limit: int = MAX_MESSAGE_BYTES) -> dict:
    """One line back to its message; ProtocolError if it is too long, not JSON, or not an object with a type."""
    if len(line) > limit:
        raise ProtocolError(f"A message of {len(line)} bytes is over the limit of {limit}; send smaller ones.")
    try:
        msg = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"A message is not valid JSON ({exc}); send one JSON object a line.") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ProtocolError("A message must be a JSON object with a string 'type'.")
    return msg


def check_command(msg: dict) -> tuple[str, dict]:
    """A command message's name and arguments, checked against COMMAND_ARGS; ProtocolError otherwise."""
    name, args = msg.get("name"), msg.get("args", {})
    if name not in COMMAND_ARGS:
        raise ProtocolError(f"Unknown command {name!r}; the commands are {', '.join(COMMAND_ARGS)}.")
    if not isinstance(args, dict):
        raise ProtocolError(f"The arguments of {name} must be a JSON object.")
    spec = COMMAND_ARGS[name]
    for key, value in args.items():
        if key not in spec:
            accepted = ", ".join(spec) or "none"
            raise ProtocolError(f"{name} takes no argument {key!r} (it takes: {accepted}).")
        if value is not None and (isinstance(value, bool) or not isinstance(value, spec[key])):
            raise ProtocolError(f"{name}'s {key} must be {_TYPE_NAMES[spec[key]]}, not {value!r}.")
    missing = [key for key in REQUIRED_ARGS.get(name, ()) if args.get(key) is None]
    if missing:
        raise ProtocolError(f"{name} needs {' and '.join(missing)}.")
    return name, args


# ----- events and snapshots --------------------------------------------------------------------------------------

_EVENTS = {cls.__name__: cls for cls in vars(ev).values()
           if isinstance(cls, type) and issubclass(cls, ev.Event) and cls is not ev.Event}


def _plain(value: object) -> object:
    """A dataclass field as JSON: tuples and frozensets become lists, dataclasses dicts."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, frozenset):
        return sorted(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _tuples(value: object) -> object:
    """Lists back to (nested) tuples, for fields declared as tuples."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _fields_from(cls: type, d: dict, what: str) -> dict:
    """The keyword arguments of dataclass `cls` from a wire dict: tuple fields become tuples again, unknown keys
    (from a newer host) are ignored, a missing required field is a ProtocolError."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in d:
            value = d[f.name]
            kwargs[f.name] = _tuples(value) if str(f.type).startswith("tuple") else value
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ProtocolError(f"The {what} lacks its field {f.name!r}.")
    return kwargs


def event_to_wire(event: ev.Event) -> dict:
    """An engine event as a dict: its fields plus "kind", the event's class name in engine/events.py."""
    return {"kind": type(event).__name__, **_plain(event)}


def event_from_wire(d: dict) -> ev.Event:
    """The event event_to_wire made; ProtocolError for an unknown kind or a missing field."""
    cls = _EVENTS.get(d.get("kind")) if isinstance(d, dict) else None
    if cls is None:
        raise ProtocolError(f"Unknown event {d.get('kind') if isinstance(d, dict) else d!r}.")
    return cls(**_fields_from(cls, d, f"{cls.__name__} event"))


def snapshot_to_wire(s: Snapshot, with_picture: bool = True) -> dict:
    """Every field of a Snapshot as plain JSON (the picture as a dict, `allowed` as a sorted list). Without
    `with_picture` the key "picture" is left out, meaning "the picture you have": it is by far the largest field
    and changes at most once a second, so a host sends it only when it changed."""
    return {f.name: _plain(getattr(s, f.name)) for f in dataclasses.fields(s) if with_picture or f.name != "picture"}


def snapshot_from_wire(d: dict, previous: Snapshot | None = None) -> Snapshot:
    """The Snapshot snapshot_to_wire made, `picture` a BlockPicture again (`previous`'s when the key is left
    out) and `allowed` a frozenset."""
    if not isinstance(d, dict):
        raise ProtocolError("A snapshot must be a JSON object.")
    kwargs = _fields_from(Snapshot, d, "snapshot")
    picture = kwargs.get("picture")
    if picture is not None:
        kwargs["picture"] = BlockPicture(**_fields_from(BlockPicture, picture, "picture"))
    elif "picture" not in d and previous is not None:
        kwargs["picture"] = previous.picture
    kwargs["allowed"] = frozenset(kwargs.get("allowed", ()))
    return Snapshot(**kwargs)


# ----- addressing ------------------------------------------------------------------------------------------------


def socket_file(session_dir: Path) -> Path:
    return Path(session_dir) / SOCKET_NAME


@contextlib.contextmanager
def _address(path: Path) -> Iterator[str]:
    """An address for `path` within AF_UNIX's 108 bytes: the path itself, or (for deep folders such as pytest's)
    the same file reached through /proc/self/fd/N of its opened folder, open for the duration."""
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def connect_unix(path: Path, timeout: float | None = 5.0) -> socket.socket:
    """A connected, blocking AF_UNIX socket to `path` (any length); OSError as connect raises it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with _address(Path(path)) as address:
            sock.settimeout(timeout)
            sock.connect(address)
        sock.settimeout(None)
    except BaseException:
        sock.close()
        raise
    return sock


def bind_unix(path: Path) -> socket.socket:
    """A socket bound at `path` (any length), mode 0600, not yet listening: no peer can connect before the mode
    is private. A file already at `path` is replaced: call it only while holding the session's lock, which makes
    any socket there a dead host's."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        Path(path).unlink(missing_ok=True)
        with _address(Path(path)) as address:
            sock.bind(address)
            os.chmod(address, 0o600)
    except BaseException:
        sock.close()
        raise
    return sock
