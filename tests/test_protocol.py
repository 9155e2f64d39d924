"""The host protocol's wire format: lines, limits, commands, and events and snapshots that survive the trip."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from engine import events as ev
from engine.picture import BlockPicture
from engine.protocol import (
    COMMAND_ARGS,
    MAX_MESSAGE_BYTES,
    ProtocolError,
    check_command,
    decode,
    encode,
    event_from_wire,
    event_to_wire,
    snapshot_from_wire,
    snapshot_to_wire,
)
from engine.snapshot import Snapshot

# One example of every event the engine can send, with tuples, dicts and None where their fields allow them.
EXAMPLES = [
    ev.StateChanged("training", "idle"),
    ev.Progress("pretrain", 10, 1, 0.5, 10, 100, 1234.5),
    ev.Evaluated("finetune", 20, 2, 0.9, None),
    ev.ClustersFound(30, 2, "weights", (3, 5), (4, 4), (0.25, 0.75), 0.6, 0.5),
    ev.PhaseFinished("pretrain", 40, 40, 0.95, None, stopped=True),
    ev.Saved(50, "/tmp/s", "autosave"),
    ev.LogLine("info", "héllo\nworld"),
    ev.Failed("train", "Train needs clusters."),
    ev.Ablated(60, {"drop": [[0.1, 0.2]], "p_value": [None]}),
    ev.FiguresUpdated(70),
    ev.SignificanceFound(80, "cluster", 0.6, {"p_value": 0.01, "null_mean": 0.5}),
]


def test_every_engine_event_has_an_example():
    kinds = {cls for cls in vars(ev).values() if isinstance(cls, type) and issubclass(cls, ev.Event)} - {ev.Event}
    assert kinds == {type(e) for e in EXAMPLES}


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: type(e).__name__)
def test_events_survive_the_wire(event):
    line = encode({"type": "event", "event": event_to_wire(event)})
    assert line.endswith(b"\n") and line.count(b"\n") == 1  # one message, one line, whatever the text holds
    back = event_from_wire(decode(line)["event"])
    assert back == event and type(back) is type(event)


def test_an_unknown_or_incomplete_event_is_a_protocol_error():
    with pytest.raises(ProtocolError, match="Unknown event"):
        event_from_wire({"kind": "Exploded"})
    with pytest.raises(ProtocolError, match="lacks its field 'step'"):
        event_from_wire({"kind": "Saved", "path": "x", "reason": "autosave"})
    # A field from a newer host is ignored, not fatal.
    assert event_from_wire({"kind": "FiguresUpdated", "step": 3, "new": 1}) == ev.FiguresUpdated(3)


def test_a_real_snapshot_with_its_picture_survives_the_wire(make_engine):
    engine = make_engine(steps=32, k=2)
    engine.plan_default()
    assert engine.wait(120)
    snap = engine.snapshot()
    assert isinstance(snap.picture, BlockPicture) and snap.allowed and snap.clusters is not None
    back = snapshot_from_wire(decode(encode({"type": "snapshot", "snapshot": snapshot_to_wire(snap)}))["snapshot"])
    assert back == snap
    assert isinstance(back.picture, BlockPicture) and isinstance(back.allowed, frozenset)
    assert isinstance(back.history, tuple) and isinstance(back.picture.values[0], tuple)
    assert [f.name for f in dataclasses.fields(Snapshot)] == list(snapshot_to_wire(snap))


def test_a_snapshot_without_a_picture():
    snap = Snapshot(session="s", name="s", dataset="synthetic", device="cpu", state="idle", phase="new", step=0,
                    epoch=0, test_accuracy=None, train_loss=None, clusterability=None, clusterability_chance=None,
                    clusters=None, cluster_step=None, params_sha256="x", history=(), config={}, plan=(), held=False)
    assert snapshot_from_wire(snapshot_to_wire(snap)) == snap


@pytest.mark.parametrize("line, problem", [
    (b"not json\n", "not valid JSON"),
    (b"[1, 2]\n", "must be a JSON object"),
    (b'{"no": "type"}\n', "must be a JSON object with a string 'type'"),
    (b"\xff\xfe\n", "not valid JSON"),
    (b"x" * (MAX_MESSAGE_BYTES + 1), "over the limit"),
])
def test_bad_lines_are_protocol_errors(line, problem):
    with pytest.raises(ProtocolError, match=problem):
        decode(line)


@pytest.mark.parametrize("msg, problem", [
    ({"name": "explode"}, "Unknown command 'explode'"),
    ({"name": "train", "args": [1]}, "must be a JSON object"),
    ({"name": "train", "args": {"epoch": 1}}, "takes no argument 'epoch'"),
    ({"name": "train", "args": {"steps": "ten"}}, "must be a whole number"),
    ({"name": "train", "args": {"steps": True}}, "must be a whole number"),
    ({"name": "finetune", "args": {"lam": "3"}}, "must be a number"),
    ({"name": "set_picture_size", "args": {"rows": 3}}, "needs cols"),
])
def test_bad_commands_are_refused_with_a_sentence(msg, problem):
    with pytest.raises(ProtocolError, match=problem):
        check_command({"type": "command", **msg})


def test_good_commands_pass():
    assert check_command({"type": "command", "name": "finetune", "args": {"lam": 3, "epochs": None}}) == (
        "finetune", {"lam": 3, "epochs": None})
    assert check_command({"type": "command", "name": "pause"}) == ("pause", {})
    assert {"train", "continue", "cluster", "finetune", "pause", "resume", "stop", "save", "ablate", "status",
            "set_picture_size", "detach", "stop-host"} <= set(COMMAND_ARGS)


def test_the_client_side_imports_no_torch():
    code = "import sys, engine.client, engine.protocol; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
