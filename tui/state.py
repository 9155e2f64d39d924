"""The attached session as the UI holds it: live progress folded from engine events, and what each event logs."""

from __future__ import annotations

from dataclasses import dataclass, replace

from engine import events as ev
from engine.format import null_text
from engine.snapshot import Snapshot


@dataclass(frozen=True)
class Live:
    """The latest figures, ahead of the snapshot: progress comes about 20 times a second, snapshots with saves.

    Frozen: each event makes a new one, so a reactive holding it sees every change."""

    state: str = "starting"
    phase: str = "-"
    step: int = 0
    epoch: int = 0
    steps_per_s: float | None = None
    loss: float | None = None
    accuracy: float | None = None
    clusterability: float | None = None
    significance: dict | None = None  # the latest clusterability's null (NullResult.to_dict())
    job_step: int = 0
    job_total: int = 0


def live_from(snap: Snapshot, live: Live) -> Live:
    """A snapshot's state and position: progress is throttled and not sent on pause, the snapshot is exact."""
    significance = live.significance if snap.significance is None else snap.significance
    if snap.clusters is None:
        significance = None
    return replace(live, state=snap.state, phase=snap.phase, step=snap.step, epoch=snap.epoch,
                   loss=live.loss if live.loss is not None else snap.train_loss,
                   accuracy=live.accuracy if live.accuracy is not None else snap.test_accuracy,
                   clusterability=live.clusterability if live.clusterability is not None else snap.clusterability,
                   significance=significance)


def fold(live: Live, event: ev.Event) -> Live:
    """`live` after `event` (the same object when the event changes none of its figures)."""
    match event:
        case ev.Progress():
            return replace(live, phase=event.phase, step=event.step, epoch=event.epoch, loss=event.loss,
                           job_step=event.job_step, job_total=event.job_total, steps_per_s=event.steps_per_s)
        case ev.StateChanged():
            return replace(live, state=event.state)
        case ev.Evaluated():
            clusterability = live.clusterability if event.clusterability is None else event.clusterability
            return replace(live, accuracy=event.test_accuracy, clusterability=clusterability)
        case ev.ClustersFound():
            return replace(live, clusterability=event.clusterability, significance=None)
        case ev.SignificanceFound():
            return replace(live, significance=event.significance)
        case ev.PhaseFinished():
            return replace(live, step=max(live.step, event.step))
    return live


def log_line(event: ev.Event) -> tuple[str, str] | None:
    """(text, level) of the line the engine log shows for `event`, or None (progress, autosaves: too many)."""
    match event:
        case ev.StateChanged():
            return f"state: {event.previous} → {event.state}", "debug"
        case ev.PhaseFinished():
            accuracy = "-" if event.test_accuracy is None else f"{event.test_accuracy:.4f}"
            ended = "stopped" if event.stopped else "finished"
            return f"{event.phase} {ended} at step {event.step} ({event.steps} steps), accuracy {accuracy}", "info"
        case ev.Saved() if event.reason != "autosave":
            return f"saved at step {event.step} ({event.reason})", "info"
        case ev.SignificanceFound():
            return (f"{event.phase} step {event.step}: clusterability {event.clusterability:.4f} "
                    f"{null_text(event.significance)}", "info")
        case ev.Ablated():
            return f"ablation at step {event.step}: press 4 for what each cluster carries", "info"
        case ev.LogLine():
            return event.message, event.level
        case ev.Failed():
            return f"{event.job} failed: {event.message}", "error"
    return None
