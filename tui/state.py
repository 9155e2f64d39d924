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
    clusterability_step: int | None = None  # the step `clusterability` was measured at
    significance: dict | None = None  # the latest null (NullResult.to_dict() and its "step")
    job_step: int = 0
    job_total: int = 0


RUNNING = ("training", "finetuning")  # states whose figures move on: shown as live


def live_from(snap: Snapshot, live: Live) -> Live:
    """A snapshot's state and position: progress is throttled and not sent on pause, the snapshot is exact; of
    the two clusterabilities, the later measured."""
    significance = live.significance if snap.significance is None else snap.significance
    clusterability, measured = live.clusterability, live.clusterability_step
    if snap.clusterability is not None and (measured is None or (snap.figures_step or 0) >= measured):
        clusterability, measured = snap.clusterability, snap.figures_step
    if snap.clusters is None:
        significance = clusterability = measured = None
    return replace(live, state=snap.state, phase=snap.phase, step=snap.step, epoch=snap.epoch,
                   loss=live.loss if live.loss is not None else snap.train_loss,
                   accuracy=live.accuracy if live.accuracy is not None else snap.test_accuracy,
                   clusterability=clusterability, clusterability_step=measured, significance=significance)


def p_shown(live: Live) -> bool:
    """The null's p belongs beside the clusterability shown: it was found at the same step (a null saved before
    nulls said their step: when nothing is running)."""
    if live.significance is None or live.clusterability is None:
        return False
    step = live.significance.get("step")
    return step == live.clusterability_step if step is not None else live.state not in RUNNING


def fold(live: Live, event: ev.Event) -> Live:
    """`live` after `event` (the same object when the event changes none of its figures)."""
    match event:
        case ev.Progress():
            return replace(live, phase=event.phase, step=event.step, epoch=event.epoch, loss=event.loss,
                           job_step=event.job_step, job_total=event.job_total, steps_per_s=event.steps_per_s)
        case ev.StateChanged():
            return replace(live, state=event.state)
        case ev.Evaluated() if event.clusterability is not None:
            return replace(live, accuracy=event.test_accuracy, clusterability=event.clusterability,
                           clusterability_step=event.step)
        case ev.Evaluated():
            return replace(live, accuracy=event.test_accuracy)
        case ev.ClustersFound():
            return replace(live, clusterability=event.clusterability, clusterability_step=event.step,
                           significance=None)
        case ev.SignificanceFound() if event.phase != "control":  # the λ=0 twin's is not the session's
            if live.clusterability_step is not None and event.step < live.clusterability_step:
                return replace(live, significance=event.significance)
            return replace(live, significance=event.significance, clusterability=event.clusterability,
                           clusterability_step=event.step)
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
