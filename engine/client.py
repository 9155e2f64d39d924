"""Clients of a session's host: find or start the host, attach, send commands, receive events (torch-free).

`AsyncClient` runs on the caller's asyncio loop (Textual's); `Client` is the same client for blocking code (the
CLI, tests), running an AsyncClient on a loop thread of its own.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import queue
import select
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from engine import events as ev
from engine.config import Config
from engine.errors import SessionError
from engine.protocol import (
    MAX_HOST_LINE,
    PROTOCOL_VERSION,
    ProtocolError,
    connect_unix,
    decode,
    encode,
    event_from_wire,
    snapshot_from_wire,
    socket_file,
)
from engine.session import session_path, sessions_root
from engine.snapshot import Snapshot

HOST_LOG = "host.log"
START_TIMEOUT_S = 120.0  # opening a session imports torch and loads the data: seconds on a busy machine
_END = object()  # the connection is over


def socket_path(session_dir: Path) -> Path:
    """Where the host of the session in `session_dir` listens."""
    return socket_file(session_dir)


@dataclass(frozen=True)
class Resynced:
    """The host sent the full state again (this client had fallen too far behind, its queue was dropped): the
    charts must be rebuilt from `history`; a Snapshot follows at once."""

    snapshot: Snapshot
    history: list[dict]


Update = ev.Event | Snapshot | Resynced


class AsyncClient:
    """One connection to a host, on the running asyncio loop."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, welcome: dict) -> None:
        self._reader, self._writer = reader, writer
        self.welcome = welcome  # name, pid, protocol, session (its folder), config (a Config.to_dict())
        self.snapshot: Snapshot | None = None  # kept current by every state and snapshot message
        self.history: list[dict] = []  # the metrics log's records as of the last full state
        self.bye: str | None = None  # why the host ended the connection, if it said so
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._updates: asyncio.Queue = asyncio.Queue()
        self._state: tuple[Snapshot, list[dict]] | None = None  # a full state being received
        self._task: asyncio.Task | None = None

    @classmethod
    async def connect(cls, session_dir: Path, client: str = "client", attach: bool = True,
                      timeout: float = 30.0) -> AsyncClient:
        """Connect and say hello. Attached (the default), the host first sends the full state (.snapshot,
        .history) and then streams every event; not attached, the connection only carries commands (a probe such
        as `ps` or `remote`). SessionError with one sentence if no host answers or it refuses us."""
        path = socket_path(Path(session_dir))
        try:
            sock = connect_unix(path, timeout)
        except OSError as exc:
            raise SessionError(f"No host answers for {Path(session_dir).name} ({exc.strerror or exc}); start it "
                               f"with 'clusterlab attach' or 'clusterlab resume'.") from None
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_HOST_LINE)
        self = None
        try:
            writer.write(encode({"type": "hello", "protocol": PROTOCOL_VERSION, "client": client, "attach": attach}))
            welcome = await asyncio.wait_for(cls._read(reader), timeout)
            if welcome.get("type") != "welcome":
                raise SessionError(welcome.get("error") or f"The host answered {welcome.get('type')!r} to hello.")
            self = cls(reader, writer, welcome)
            if attach:
                while self._state is not None or self.snapshot is None:
                    self._take(await asyncio.wait_for(cls._read(reader), timeout))
                while not self._updates.empty():  # the initial state is .snapshot and .history, not an update
                    self._updates.get_nowait()
            self._task = asyncio.get_running_loop().create_task(self._receive())
            return self
        except (OSError, EOFError, asyncio.TimeoutError, ProtocolError) as exc:
            writer.close()
            raise SessionError(f"The host of {Path(session_dir).name} did not complete the hello ({exc or 'closed'})"
                               ".") from None
        except BaseException:
            writer.close()
            raise

    async def command(self, name: str, **args) -> dict:
        """Send one command and return its reply: {"ok": True, "result": ...} or {"ok": False, "error": sentence}.
        Commands return at once; what they start arrives as events. SessionError if the connection is gone."""
        if self._task is None or self._task.done():
            raise SessionError(f"The host has closed the connection ({self.bye or 'it ended'}).")
        msg_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = future
        try:
            self._writer.write(encode({"type": "command", "id": msg_id, "name": name, "args": args}))
            await self._writer.drain()
            return await future
        except (ConnectionError, OSError):
            raise SessionError(f"The host has closed the connection ({self.bye or 'it ended'}).") from None
        finally:
            self._pending.pop(msg_id, None)

    async def updates(self) -> AsyncIterator[Update]:
        """Events, Snapshots (pushed after changes, and after a resync) and Resynced, in the order the host sent
        them, until the connection ends. One consumer at a time."""
        while True:
            item = await self._updates.get()
            if item is _END:
                self._updates.put_nowait(_END)  # a later updates() ends at once too
                return
            yield item

    async def close(self) -> None:
        """Close the connection (a detach: the host and its run go on)."""
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except OSError:
            pass
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    # ----- receiving -------------------------------------------------------------------------------------------

    @staticmethod
    async def _read(reader: asyncio.StreamReader) -> dict:
        line = await reader.readline()
        if not line:
            raise EOFError("the host closed the connection")
        return decode(line, MAX_HOST_LINE)

    async def _receive(self) -> None:
        try:
            while True:
                self._take(await self._read(self._reader))
        except (EOFError, OSError, ValueError, ProtocolError, asyncio.LimitOverrunError):
            pass
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(SessionError(f"The host has closed the connection ({self.bye or 'gone'})."))
            self._updates.put_nowait(_END)

    def _take(self, msg: dict) -> None:
        kind = msg["type"]
        if kind == "event":
            try:
                self._updates.put_nowait(event_from_wire(msg["event"]))
            except ProtocolError:
                pass  # an event kind from a newer host: nothing here would show it
        elif kind == "snapshot":
            self.snapshot = snapshot_from_wire(msg["snapshot"], self.snapshot)
            self._updates.put_nowait(self.snapshot)
        elif kind == "state":
            self._state = (snapshot_from_wire(msg["snapshot"]), [])
        elif kind == "history" and self._state is not None:
            self._state[1].extend(msg.get("records", []))
            if msg.get("last"):
                self.snapshot, self.history = self._state
                self._state = None
                self._updates.put_nowait(Resynced(self.snapshot, self.history))
                self._updates.put_nowait(self.snapshot)
        elif kind == "reply":
            future = self._pending.get(msg.get("id"))
            if future is not None and not future.done():
                future.set_result({k: v for k, v in msg.items() if k in ("ok", "result", "error")})
        elif kind == "bye":
            self.bye = msg.get("reason")


class Client:
    """AsyncClient's operations for blocking code: an asyncio loop on a thread of its own runs the connection."""

    def __init__(self, aclient: AsyncClient, loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
        self._a, self._loop, self._thread = aclient, loop, thread
        self._items: queue.Queue | None = None

    @classmethod
    def connect(cls, session_dir: Path, client: str = "cli", attach: bool = True, timeout: float = 30.0) -> Client:
        """As AsyncClient.connect."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="clusterlab-client", daemon=True)
        thread.start()
        try:
            aclient = asyncio.run_coroutine_threadsafe(
                AsyncClient.connect(session_dir, client, attach, timeout), loop).result()
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()
            raise
        return cls(aclient, loop, thread)

    @property
    def welcome(self) -> dict:
        return self._a.welcome

    @property
    def snapshot(self) -> Snapshot | None:
        return self._a.snapshot

    @property
    def history(self) -> list[dict]:
        return self._a.history

    def command(self, name: str, **args) -> dict:
        """As AsyncClient.command."""
        return asyncio.run_coroutine_threadsafe(self._a.command(name, **args), self._loop).result()

    def updates(self, timeout: float | None = None) -> Iterator[Update]:
        """As AsyncClient.updates; TimeoutError if `timeout` seconds pass without one."""
        if self._items is None:
            self._items = queue.Queue()

            async def pump() -> None:
                async for item in self._a.updates():
                    self._items.put(item)
                self._items.put(_END)

            asyncio.run_coroutine_threadsafe(pump(), self._loop)
        while True:
            try:
                item = self._items.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"no update from the host within {timeout} s") from None
            if item is _END:
                self._items.put(_END)
                return
            yield item

    def wait_for(self, predicate: Callable[[Update], bool], timeout: float) -> Update:
        """The first update that satisfies `predicate`; TimeoutError after `timeout` seconds, EOFError if the
        connection ends first."""
        deadline = time.monotonic() + timeout
        for item in self.updates(timeout=max(0.0, deadline - time.monotonic())):
            if predicate(item):
                return item
            if time.monotonic() > deadline:
                break
        else:
            raise EOFError(f"the host closed the connection ({self._a.bye or 'it ended'})")
        raise TimeoutError(f"no matching update within {timeout} s")

    def close(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self._a.close(), self._loop).result()
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ----- finding and starting hosts ----------------------------------------------------------------------------------


def probe(session_dir: Path, timeout: float = 5.0) -> dict | None:
    """The welcome of the host serving `session_dir`, or None when none answers (no socket, or a dead host's)."""
    try:
        with Client.connect(session_dir, client="probe", attach=False, timeout=timeout) as client:
            return client.welcome
    except SessionError:
        return None


def ensure_host(name: str, config: Config | None = None, timeout: float = START_TIMEOUT_S) -> Path:
    """The folder of session `name`, served by a host: the one that answers, else one started now (creating the
    session with `config` if it does not exist). SessionError with one sentence if it cannot be started."""
    path = session_path(name)
    if probe(path) is not None:
        return path
    if not path.exists() and config is None:
        raise SessionError(f"There is no session {name}; give its settings to create it, or see 'clusterlab "
                           "sessions'.")
    try:
        return start_host(name, config if not path.exists() else None, timeout=timeout)
    except SessionError:
        if probe(path) is not None:  # another client started one at the same moment: attach to it
            return path
        raise


def start_host(name: str, config: Config | None = None, plan: str | None = None, idle_exit_s: float | None = None,
               timeout: float = START_TIMEOUT_S) -> Path:
    """Start a detached host for session `name` (a new one from `config`, else the saved one) and wait until it
    accepts connections. `plan`: "default" queues the config's whole plan, "continue" the saved unfinished one.
    The host runs in its own session (no controlling terminal), stdin /dev/null, its output in the session's
    host.log. SessionError with the host's own sentence if it cannot start (a bad session, one in use)."""
    path = session_path(name)
    argv = [sys.executable, "-m", "engine.host_process", name]
    if config is not None:
        argv += ["--config", json.dumps(config.to_dict())]
    if plan is not None:
        argv += ["--plan", plan]
    if idle_exit_s is not None:
        argv += ["--idle-exit", str(idle_exit_s)]
    read_fd, write_fd = os.pipe()
    env = {**os.environ, "CLUSTERLAB_SESSIONS": str(sessions_root().resolve())}
    try:
        proc = subprocess.Popen([*argv, "--ready-fd", str(write_fd)], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                                pass_fds=(write_fd,), env=env)
    except OSError as exc:
        os.close(read_fd)
        raise SessionError(f"Could not start a host for {name}: {exc}.") from None
    finally:
        os.close(write_fd)
    threading.Thread(target=proc.wait, name="clusterlab-host-reaper", daemon=True).start()  # no zombie left
    with os.fdopen(read_fd, "rb") as ready:
        answer = _read_ready(ready, timeout)
    if answer == "ok":
        return path
    if answer is None:
        code = proc.poll()
        raise SessionError(f"The host for {name} " + (f"ended (exit code {code})" if code is not None else
                           f"did not answer within {timeout:.0f} s") + f" before it was ready; see {path / HOST_LOG}.")
    raise SessionError(answer)


def _read_ready(ready, timeout: float) -> str | None:
    """The host's one line on its ready pipe ("ok" or its error sentence); None on EOF without one or timeout."""
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([ready], [], [], left)[0]:
            return None
        chunk = os.read(ready.fileno(), 4096)
        if not chunk:
            return None
        data += chunk
    return data.split(b"\n", 1)[0].decode(errors="replace")


def running_hosts(root: Path | None = None) -> list[tuple[str, Path]]:
    """(name, folder) of every session under the sessions root with a socket file, live or stale: probe them."""
    root = root or sessions_root()
    if not root.is_dir():
        return []
    return sorted((p.parent.name, p.parent) for p in root.glob(f"*/{socket_path(Path('.')).name}"))
