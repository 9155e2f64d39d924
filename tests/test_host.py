"""A host serving an in-process Engine over its real Unix socket: clients, slow clients, bad messages, privacy."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import stat
import tempfile
import threading
from pathlib import Path

import pytest

from engine import events as ev
from engine.client import AsyncClient, Client, Resynced, probe, socket_path
from engine.host import serve
from engine.protocol import MAX_MESSAGE_BYTES, PROTOCOL_VERSION, connect_unix, encode
from engine.snapshot import Snapshot


@pytest.fixture
def hosted(make_engine):
    """An engine and its host; both closed at the end."""
    hosts = []

    def make(name: str = "s", **kwargs):
        changes = {k: v for k, v in kwargs.items() if k not in ("idle_exit_s", "on_stop", "path")}
        engine = make_engine(name, **changes)
        host = serve(engine, kwargs.get("path"), kwargs.get("idle_exit_s"), kwargs.get("on_stop"))
        hosts.append(host)
        return engine, host

    yield make
    for host in hosts:
        host.close()


class Raw:
    """A client speaking the wire by hand, to send what a good client never would."""

    def __init__(self, path: Path, hello: dict | None = None) -> None:
        """Connect to the socket at `path`, or to that of the session folder `path`."""
        self.sock = connect_unix(socket_path(path) if path.is_dir() else path)
        self.file = self.sock.makefile("rb")
        self.last: dict = {}  # the message `until` returned last
        if hello is not None:
            self.send(hello)

    def send(self, msg: dict | bytes) -> None:
        self.sock.sendall(msg if isinstance(msg, bytes) else encode(msg))

    def read(self) -> dict | None:
        line = self.file.readline()
        return json.loads(line) if line else None

    def until(self, kind: str, limit: int = 100_000) -> dict:
        for _ in range(limit):
            msg = self.read()
            assert msg is not None, f"the host closed the connection before a {kind}"
            if msg["type"] == kind:
                self.last = msg
                return msg
        raise AssertionError(f"no {kind} in {limit} messages")

    def close(self) -> None:
        self.file.close()
        self.sock.close()


HELLO = {"type": "hello", "protocol": PROTOCOL_VERSION, "client": "test"}


def test_attach_gives_the_state_then_live_events_and_snapshots(hosted):
    engine, _ = hosted(steps=64)
    with Client.connect(engine.path) as client:
        assert client.welcome["name"] == "s" and client.welcome["pid"] == os.getpid()
        assert client.welcome["config"]["steps"] == 64
        assert client.snapshot == engine.snapshot() and client.history == engine.metrics_history()
        assert client.command("train", steps=40) == {"ok": True, "result": None}
        done = client.wait_for(lambda s: isinstance(s, Snapshot) and s.state == ev.IDLE and s.step == 40, 60)
        assert done.params_sha256 == engine.snapshot().params_sha256
    with Client.connect(engine.path) as later:  # a client attaching afterwards sees the history it missed
        assert later.history == engine.metrics_history()
        assert [r["step"] for r in later.history if r["type"] == "train"][-1] == 40


def test_two_clients_see_the_same_events(hosted):
    engine, _ = hosted(steps=64)
    first, second = Client.connect(engine.path), Client.connect(engine.path)
    try:
        assert first.command("status")["result"]["clients"] == 2
        first.command("train", steps=30)
        seen = []
        for client in (first, second):
            events = []
            client.wait_for(lambda i, events=events: (isinstance(i, ev.Event) and events.append(i)) or
                            isinstance(i, ev.StateChanged) and i.state == ev.IDLE, 60)
            seen.append(events)
        assert seen[0] == seen[1]
        assert any(isinstance(e, ev.PhaseFinished) for e in seen[0])
    finally:
        first.close()
        second.close()


def test_commands_reply_and_refusals_come_as_events(hosted):
    engine, _ = hosted()
    with Client.connect(engine.path) as client:
        assert client.command("finetune")["ok"]  # accepted; the engine refuses it: there are no clusters
        failed = client.wait_for(lambda i: isinstance(i, ev.Failed), 30)
        assert "cluster the layer first" in failed.message
        status = client.command("status")["result"]
        assert status["state"] == ev.IDLE and status["name"] == "s" and "train" in status["allowed"]
        assert client.command("set_picture_size", rows=4, cols=4)["ok"]
        assert client.command("explode") == {"ok": False, "error": client.command("explode")["error"]}


def test_a_snapshot_leaves_out_a_picture_the_client_already_has(hosted):
    engine, _ = hosted(steps=32, k=2)
    engine.plan_default()
    assert engine.wait(120) and engine.snapshot().picture is not None
    raw = Raw(engine.path, HELLO)
    assert raw.until("state")["snapshot"]["picture"] is not None
    with Client.connect(engine.path) as client:
        raw.send({"type": "command", "id": 1, "name": "status"})  # every command is followed by a snapshot
        assert "picture" not in raw.until("snapshot")["snapshot"]  # unchanged: not sent again
        assert client.command("set_picture_size", rows=3, cols=5)["ok"] and client.command("save")["ok"]
        fresh = client.wait_for(lambda s: isinstance(s, Snapshot) and s.picture.size == (3, 5), 60)
        while "picture" not in raw.until("snapshot")["snapshot"]:  # (the push after set_picture_size has none)
            pass
        assert raw.last["snapshot"]["picture"]["row_bounds"][-1] == 3  # changed: sent
        client.command("status")
        later = client.wait_for(lambda s: isinstance(s, Snapshot), 60)
        assert later.picture == fresh.picture == engine.snapshot().picture  # kept by the client
    raw.close()


def test_a_client_that_stops_reading_never_blocks_the_engine_and_is_resynced(hosted):
    engine, host = hosted(steps=64)
    stalled = Raw(engine.path, HELLO)
    stalled.until("welcome")
    stalled.until("history")  # attached; from now on it reads nothing
    stalled.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    with Client.connect(engine.path) as live:
        text = "x" * 1000
        for i in range(20_000):  # ~20 MB of events: far beyond every buffer between the host and `stalled`
            engine._emit(ev.LogLine("info", f"{i} {text}"))  # returns at once, as on the engine thread
        engine._emit(ev.LogLine("info", "last"))
        live.wait_for(lambda i: isinstance(i, ev.LogLine) and i.message == "last", 60)
        engine.train(steps=20)
        assert engine.wait(60)  # the engine ran with a client that reads nothing
        live.wait_for(lambda i: isinstance(i, Snapshot) and i.step == 20 and i.state == ev.IDLE, 60)
        # The stalled client, reading again, gets its backlog cut short by a full state (a resync).
        assert stalled.until("state")["snapshot"]["step"] >= 0
        assert stalled.until("history")
    stalled.close()


def test_the_async_client_reports_a_resync(hosted):
    import asyncio

    engine, _ = hosted()

    async def scenario() -> tuple[list, Snapshot]:
        client = await AsyncClient.connect(engine.path)
        for i in range(5000):
            engine._emit(ev.LogLine("info", f"{i} " + "y" * 2000))
        engine._emit(ev.LogLine("info", "last"))
        got = []
        async for item in client.updates():
            got.append(item)
            if isinstance(item, ev.LogLine) and item.message == "last":
                break
        await client.close()
        return got, client.snapshot

    got, snap = asyncio.run(asyncio.wait_for(scenario(), 60))
    resyncs = [i for i, item in enumerate(got) if isinstance(item, Resynced)]
    assert resyncs, "5000 events arriving in one burst must overflow a 256-line queue"
    assert isinstance(got[resyncs[0] + 1], Snapshot) and snap == engine.snapshot()
    assert len([i for i in got if isinstance(i, ev.LogLine)]) < 5001


def test_malformed_oversized_and_unknown_messages_get_an_error_and_the_host_goes_on(hosted):
    engine, _ = hosted()
    raw = Raw(engine.path, HELLO)
    raw.until("history")
    raw.send(b"this is not json\n")
    reply = raw.until("reply")
    assert reply["id"] is None and reply["ok"] is False and "not valid JSON" in reply["error"]
    raw.send(b'{"type": "command", "id": 7, "name": "train", "args": {"steps": -1.5}}\n')
    assert raw.until("reply")["id"] == 7 and "whole number" in raw.last["error"]
    raw.send(b'{"type": "dance", "id": 8}\n')
    assert raw.until("reply")["ok"] is False and "Unknown message type 'dance'" in raw.last["error"]
    raw.send(b'{"type": "command", "id": 9, "name": "' + b"z" * (MAX_MESSAGE_BYTES + 10) + b'"}\n')
    assert "over the limit" in raw.until("reply")["error"]
    raw.send({"type": "command", "id": 10, "name": "status"})
    reply = raw.until("reply")
    assert reply["id"] == 10 and reply["ok"] and reply["result"]["name"] == "s"
    raw.close()
    assert probe(engine.path) is not None


@pytest.mark.parametrize("hello, problem", [
    ({"type": "hello", "protocol": PROTOCOL_VERSION + 1}, "speaks protocol"),
    ({"type": "command", "name": "status"}, "must be a hello"),
    (b"garbage\n", "not valid JSON"),
])
def test_a_bad_hello_is_answered_and_closed(hosted, hello, problem):
    engine, _ = hosted()
    raw = Raw(engine.path, hello)
    assert problem in raw.until("reply")["error"]
    assert raw.read() is None  # closed
    raw.close()


def test_a_silent_connection_is_closed(hosted, monkeypatch):
    monkeypatch.setattr("engine.host.HELLO_TIMEOUT_S", 0.2)
    engine, _ = hosted()
    raw = Raw(engine.path)  # connects, says nothing
    assert "No hello within 0.2 s" in raw.until("reply")["error"]
    assert raw.read() is None
    raw.close()


def test_the_socket_is_private(hosted):
    engine, _ = hosted()
    mode = os.stat(socket_path(engine.path)).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600


def as_user(uid: int, path: Path) -> str:
    """In a forked child running as `uid`: 'denied' if it cannot connect to `path`, else the host's first line."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only system calls on modules already imported, then _exit
        answer = b""
        try:
            os.setgid(uid)
            os.setuid(uid)
            sock = socket.socket(socket.AF_UNIX)
            sock.settimeout(20)
            try:
                sock.connect(str(path))
                try:
                    sock.sendall(encode(HELLO))
                except BrokenPipeError:
                    pass  # the host may refuse and close before reading a word; its reply is still there to read
                while not answer.endswith(b"\n"):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    answer += chunk
            except PermissionError:
                answer = b"denied"
            except BaseException as exc:
                answer = repr(exc).encode()
            os.write(write_end, answer)
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read()
    os.waitpid(pid, 0)
    return answer.decode().strip()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_another_user_is_refused(hosted):
    folder = Path(tempfile.mkdtemp(prefix="clusterlab-uid-", dir="/tmp"))
    folder.chmod(0o755)  # `nobody` may reach the socket: only the socket and the host decide
    path = folder / "engine.sock"
    engine, _ = hosted(path=path)
    nobody = pwd.getpwnam("nobody").pw_uid
    assert as_user(nobody, path) == "denied"  # mode 0600: the kernel refuses the connection
    os.chmod(path, 0o666)  # even through an open door, the host checks who is calling (SO_PEERCRED)
    answer = json.loads(as_user(nobody, path))
    assert answer["ok"] is False and f"user {nobody} may not attach" in answer["error"]
    raw = Raw(path, HELLO)  # while its own user is welcome
    assert raw.until("welcome")["name"] == "s"
    raw.close()
    shutil.rmtree(folder)


def test_a_stale_socket_is_replaced(make_engine):
    engine = make_engine()
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(socket_path(engine.path)))  # what a SIGKILLed host leaves: a socket file nobody listens on
    dead.close()
    assert probe(engine.path) is None
    host = serve(engine)
    try:
        assert probe(engine.path)["name"] == "s"
    finally:
        host.close()
    assert not socket_path(engine.path).exists()  # a host that ends removes its socket


def test_a_folder_deeper_than_unix_sockets_allow(sessions, make_engine):
    deep = sessions / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    engine = make_engine(str(Path(deep.name).parent / deep.relative_to(sessions)))
    assert len(str(socket_path(engine.path))) > 108
    host = serve(engine)
    try:
        with Client.connect(engine.path) as client:
            assert client.snapshot.session == str(engine.path)
    finally:
        host.close()


def test_the_host_asks_to_stop_once_idle_with_no_client(hosted):
    stopped = threading.Event()
    reasons = []
    engine, _ = hosted(idle_exit_s=0.2, on_stop=lambda reason: (reasons.append(reason), stopped.set()))
    assert stopped.wait(30)
    assert "no client and nothing to run" in reasons[0]


def test_stop_host_and_detach(hosted):
    stopped = threading.Event()
    engine, _ = hosted(on_stop=lambda reason: stopped.set())
    with Client.connect(engine.path) as client:
        assert client.command("detach")["ok"]
        assert list(client.updates(timeout=30)) == []  # the host closed this connection
        assert not stopped.is_set()
    with Client.connect(engine.path, attach=False) as client:
        assert client.command("stop-host")["ok"]
        assert stopped.wait(30)
