"""A session's host: the Engine served on a Unix socket to any number of clients (engine/host_process.py runs it).

The engine thread never waits on a client: its subscriber encodes each event once and hands the line to the
host's asyncio loop (call_soon_threadsafe). Each client has a bounded queue and a writer task; a client whose queue
overflows loses the queue and is sent the full state again (a resync) when it reads again.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from engine import events as ev
from engine.errors import ClusterlabError
from engine.protocol import (
    HISTORY_CHUNK,
    MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    ProtocolError,
    bind_unix,
    check_command,
    decode,
    encode,
    event_to_wire,
    snapshot_to_wire,
    socket_file,
)

log = logging.getLogger("clusterlab.host")
QUEUE_LIMIT = 256  # lines waiting for one client (about 10 s of events); beyond: drop them and resync the client
REPLIES_LIMIT = 4 * QUEUE_LIMIT  # a client that sends commands but never reads their replies is disconnected
HELLO_TIMEOUT_S = 10.0  # a connection that says nothing for this long is closed
SNAPSHOT_DELAY_S = 0.05  # snapshot pushes within this long of each other are coalesced into one
IDLE_EXIT_S = 60.0  # a host with nothing to run and no client ends after this long
# Events after which the snapshot differs in more than step and loss (Progress carries those itself).
_CHANGES = (ev.StateChanged, ev.Saved, ev.FiguresUpdated, ev.SignificanceFound, ev.Failed, ev.PhaseFinished,
            ev.ClustersFound, ev.Ablated, ev.Evaluated)
_RESYNC = object()  # queue marker: send the full state here
_ENGINE_COMMANDS = {
    "train": lambda e, a: e.train(**a), "continue": lambda e, a: e.continue_plan(**a),
    "cluster": lambda e, a: e.cluster(**a), "finetune": lambda e, a: e.finetune(**a),
    "plan": lambda e, a: e.plan_default(), "pause": lambda e, a: e.pause(), "resume": lambda e, a: e.resume(),
    "stop": lambda e, a: e.stop(), "save": lambda e, a: e.save(), "ablate": lambda e, a: e.ablate(),
    "set_picture_size": lambda e, a: e.set_picture_size(a["rows"], a["cols"]),
}


@dataclass(eq=False)
class _Peer:
    """One connection: its outgoing lines (bounded) and whether it receives the state and events."""

    writer: asyncio.StreamWriter
    name: str = "?"
    attached: bool = False
    lines: collections.deque = field(default_factory=collections.deque)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    closing: bool = False
    picture: object = None  # the BlockPicture this peer was last sent (snapshots leave out an unchanged one)


class Host:
    """Serves one Engine on a Unix socket from an asyncio loop on its own thread. Build it with `serve`."""

    def __init__(self, engine, sock: socket.socket, path: Path, idle_exit_s: float | None, on_stop) -> None:
        self.engine, self.path = engine, path
        self.idle_exit_s = idle_exit_s
        self.stop_reason: str | None = None
        self._on_stop = on_stop  # called (on the loop thread) when a client or the idle timer asks the host to end
        self._peers: set[_Peer] = set()
        self._snapshot_due = False
        self._steps_per_s = 0.0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self._started = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(sock,), name="clusterlab-host", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._failure is not None:
            self._thread.join()
            raise self._failure
        engine.subscribe(self._on_event)

    # ----- any thread --------------------------------------------------------------------------------------------

    @property
    def clients(self) -> int:
        """Attached clients now."""
        return sum(1 for p in list(self._peers) if p.attached)

    def close(self, reason: str = "the host is ending") -> None:
        """Say bye to every client, stop serving and remove the socket; the engine is the caller's to close."""
        self.engine.unsubscribe(self._on_event)
        if self._loop.is_closed():
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(reason), self._loop).result()
        except RuntimeError:
            pass  # the loop is already stopping
        self._thread.join()

    def _on_event(self, event: ev.Event) -> None:
        """On the engine thread: encode once, hand over, never wait."""
        if isinstance(event, ev.Progress):
            self._steps_per_s = event.steps_per_s
        line = encode({"type": "event", "event": event_to_wire(event)})
        try:
            self._loop.call_soon_threadsafe(self._broadcast, line, isinstance(event, _CHANGES),
                                            isinstance(event, ev.StateChanged))
        except RuntimeError:
            pass  # the loop has closed: the host is ending

    # ----- the loop thread ---------------------------------------------------------------------------------------

    def _run(self, sock: socket.socket) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(
                asyncio.start_unix_server(self._serve_peer, sock=sock, limit=MAX_MESSAGE_BYTES))
        except BaseException as exc:  # noqa: BLE001 - handed to the thread that called serve()
            self._failure = exc
            sock.close()
            self._loop.close()
            self._started.set()
            return
        idle = self._loop.create_task(self._watch_idle()) if self.idle_exit_s is not None else None
        self._started.set()
        try:
            self._loop.run_forever()
        finally:
            if idle is not None:
                idle.cancel()
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.close()

    async def _shutdown(self, reason: str) -> None:
        self._server.close()
        # Gone before any client reads bye, so whoever saw the host end never finds its socket.
        self.path.unlink(missing_ok=True)
        bye = encode({"type": "bye", "reason": reason})
        for peer in list(self._peers):
            peer.lines.append((True, bye))
            peer.closing = True
            peer.ready.set()
        if self._peers:
            await asyncio.wait([asyncio.ensure_future(self._gone(p)) for p in list(self._peers)], timeout=2.0)
        self._loop.call_soon(self._loop.stop)

    async def _gone(self, peer: _Peer) -> None:
        while peer in self._peers:
            await asyncio.sleep(0.01)

    def _request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            log.info("stopping: %s", reason)
            if self._on_stop is not None:
                self._on_stop(reason)

    async def _watch_idle(self) -> None:
        """End the host once it has had nothing to run and no client for idle_exit_s."""
        since = None
        while True:
            await asyncio.sleep(min(1.0, self.idle_exit_s / 4))
            idle = self.clients == 0 and self.engine.state == ev.IDLE and self.engine.wait(0)
            since = (since or time.monotonic()) if idle else None
            if since is not None and time.monotonic() - since >= self.idle_exit_s:
                self._request_stop(f"no client and nothing to run for {self.idle_exit_s:g} s")
                return

    def _broadcast(self, line: bytes, changes_snapshot: bool, state_changed: bool = False) -> None:
        if state_changed:
            # What a key press waits for: the snapshot with the commands now allowed goes before the event that shows
            # the new state, so a client never shows "idle" while still holding the running job's allowed keys.
            self._push_snapshot()
        for peer in self._peers:
            if peer.attached:
                self._offer(peer, line)
        if changes_snapshot:
            self._snapshot_soon()

    def _snapshot_soon(self) -> None:
        if not self._snapshot_due:
            self._snapshot_due = True
            self._loop.call_later(SNAPSHOT_DELAY_S, self._push_snapshot)

    def _push_snapshot(self) -> None:
        self._snapshot_due = False
        attached = [p for p in self._peers if p.attached]
        if not attached:
            return
        snap = self.engine.snapshot()
        lines: dict[bool, bytes] = {}  # encoded once with the picture, once without, as the peers need
        for peer in attached:
            fresh = snap.picture is not peer.picture  # the engine makes a new picture at each figures refresh
            if fresh not in lines:
                lines[fresh] = encode({"type": "snapshot", "snapshot": snapshot_to_wire(snap, with_picture=fresh)})
            peer.picture = snap.picture
            self._offer(peer, lines[fresh])

    def _offer(self, peer: _Peer, line: bytes, must: bool = False) -> None:
        """Queue a line for `peer`, never waiting. On overflow its queued events and snapshots go and the full
        state will be sent instead; what `must` arrive (welcome, replies, bye) is kept."""
        if len(peer.lines) >= REPLIES_LIMIT:
            log.info("client %s reads none of its replies: disconnected", peer.name)
            peer.writer.transport.abort()
            return
        if len(peer.lines) >= QUEUE_LIMIT and not must:
            kept = [x for x in peer.lines if x[0] and x[1] is not _RESYNC]
            peer.lines.clear()
            peer.lines.extend(kept)
            peer.lines.append((True, _RESYNC))
            log.info("client %s fell behind: its queue was dropped, it will be resynced", peer.name)
        peer.lines.append((must, line))
        peer.ready.set()

    async def _write(self, peer: _Peer) -> None:
        """The peer's writer: sends its queued lines, the full state where a resync marker stands."""
        writer = peer.writer
        while True:
            await peer.ready.wait()
            peer.ready.clear()
            while peer.lines:
                _, line = peer.lines.popleft()
                if line is _RESYNC:
                    await self._send_state(peer)
                else:
                    writer.write(line)
                    await writer.drain()
            if peer.closing:
                writer.close()  # the peer's reader then sees the end of the stream and cleans up
                return

    async def _send_state(self, peer: _Peer) -> None:
        """The full state: the snapshot, then the metrics log in bounded chunks (read off the loop thread)."""
        writer = peer.writer
        snapshot = self.engine.snapshot()
        peer.picture = snapshot.picture
        records = await asyncio.get_running_loop().run_in_executor(None, self.engine.metrics_history)
        writer.write(encode({"type": "state", "snapshot": snapshot_to_wire(snapshot)}))
        for start in range(0, max(len(records), 1), HISTORY_CHUNK):
            chunk = records[start:start + HISTORY_CHUNK]
            writer.write(encode({"type": "history", "records": chunk,
                                 "last": start + HISTORY_CHUNK >= len(records)}))
            await writer.drain()

    async def _serve_peer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _Peer(writer)
        sender = asyncio.ensure_future(self._write(peer))
        self._peers.add(peer)
        try:
            refusal = _refusal(writer)
            if refusal is None:
                refusal = await self._hello(peer, reader)
            if refusal is not None:
                self._reply(peer, None, error=refusal)
                peer.closing = True
                return
            while not peer.closing:
                line = await _next_line(reader)
                if line is None:
                    self._reply(peer, None, error=f"A message is over the limit of {MAX_MESSAGE_BYTES} bytes; "
                                "send smaller ones.")
                elif not line:
                    return
                else:
                    self._handle(peer, line)
        except (ConnectionError, OSError):
            return
        finally:
            peer.closing = True
            peer.ready.set()
            try:
                await asyncio.wait_for(sender, 2.0)
            except (Exception, asyncio.CancelledError):  # noqa: BLE001 - a vanished peer: nothing left to tell it
                sender.cancel()
            self._peers.discard(peer)
            writer.close()

    async def _hello(self, peer: _Peer, reader: asyncio.StreamReader) -> str | None:
        """Read the hello and queue the welcome (and, attached, the full state): None, or why the peer is refused."""
        try:
            line = await asyncio.wait_for(_next_line(reader), HELLO_TIMEOUT_S)
        except asyncio.TimeoutError:
            return f"No hello within {HELLO_TIMEOUT_S:g} s."
        if not line:
            return f"The first message must be a hello of at most {MAX_MESSAGE_BYTES} bytes."
        try:
            msg = decode(line)
        except ProtocolError as exc:
            return str(exc)
        if msg["type"] != "hello":
            return f"The first message must be a hello, not {msg['type']!r}."
        if msg.get("protocol") != PROTOCOL_VERSION:
            return (f"This host speaks protocol {PROTOCOL_VERSION}, the client {msg.get('protocol')!r}: use the same "
                    "clusterlab version on both sides.")
        peer.name = str(msg.get("client", "?"))[:40]
        config = self.engine.config.to_dict()
        self._offer(peer, encode({"type": "welcome", "protocol": PROTOCOL_VERSION, "name": self.engine.name,
                                  "pid": os.getpid(), "session": str(self.engine.path), "config": config}), must=True)
        if msg.get("attach", True):
            peer.attached = True
            self._offer(peer, _RESYNC, must=True)
        return None

    def _handle(self, peer: _Peer, line: bytes) -> None:
        msg_id = None
        try:
            msg = decode(line)
            msg_id = msg.get("id")
            if msg["type"] != "command":
                raise ProtocolError(f"Unknown message type {msg['type']!r}; after the hello, send commands.")
            name, args = check_command(msg)
        except ProtocolError as exc:
            self._reply(peer, msg_id if isinstance(msg_id, (int, str)) else None, error=str(exc))
            return
        try:
            result = self._command(peer, name, args)
        except ClusterlabError as exc:
            self._reply(peer, msg_id, error=str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - a command must never take the host down
            log.exception("command %s failed", name)
            self._reply(peer, msg_id, error=f"{name} failed: {type(exc).__name__}: {exc}.")
            return
        self._reply(peer, msg_id, result=result)
        if name == "detach":
            peer.closing = True
        elif name == "stop-host":
            self._request_stop(f"stopped by {peer.name}")
        else:
            self._snapshot_soon()

    def _command(self, peer: _Peer, name: str, args: dict) -> object:
        if name in _ENGINE_COMMANDS:
            _ENGINE_COMMANDS[name](self.engine, args)
            return None
        if name == "status":
            return self.status()
        return None  # detach and stop-host act once the reply is queued

    def status(self) -> dict:
        """What `ps` and `remote NAME status` show: the snapshot as `run --json` prints it, plus the host's."""
        snap = self.engine.snapshot()
        training = snap.state in (ev.TRAINING, ev.FINETUNING)
        return {"name": self.engine.name, "pid": os.getpid(), "state": snap.state, "held": snap.held,
                "allowed": sorted(snap.allowed), "clients": self.clients,
                "steps_per_s": self._steps_per_s if training else 0.0, **snap.to_dict()}

    def _reply(self, peer: _Peer, msg_id, result: object = None, error: str | None = None) -> None:
        msg = {"type": "reply", "id": msg_id, "ok": error is None}
        msg.update({"error": error} if error is not None else {"result": result})
        self._offer(peer, encode(msg), must=True)


def _refusal(writer: asyncio.StreamWriter) -> str | None:
    """Why this peer may not talk to us (another user), or None."""
    sock = writer.get_extra_info("socket")
    _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    if uid != os.getuid():
        return f"This host belongs to user {os.getuid()}; user {uid} may not attach to it."
    return None


async def _next_line(reader: asyncio.StreamReader) -> bytes | None:
    """The next line; b"" at the end of the stream; None for a line over the limit (skipped through its end)."""
    try:
        return await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError:
        return b""
    except asyncio.LimitOverrunError:
        pass
    while True:  # skip the oversized line, keeping only the limit's worth in memory at a time
        try:
            await reader.readuntil(b"\n")
            return None
        except asyncio.LimitOverrunError as exc:
            await reader.readexactly(max(exc.consumed, 1))
        except asyncio.IncompleteReadError:
            return None


def serve(engine, path: Path | None = None, idle_exit_s: float | None = None, on_stop=None) -> Host:
    """Serve `engine` on a Unix socket (default: engine.sock in its session folder) from a thread, until the
    returned Host's close(). `on_stop(reason)` is called when a client sends stop-host or the host has been idle
    for idle_exit_s (None: never); the caller then closes the engine and the host."""
    path = Path(path) if path is not None else socket_file(engine.path)
    return Host(engine, bind_unix(path), path, idle_exit_s, on_stop)
