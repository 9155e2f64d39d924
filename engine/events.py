"""Typed, immutable events the engine reports to its subscribers (on the engine thread)."""

from __future__ import annotations

from dataclasses import dataclass

# Engine states, in the order a plan usually passes through them.
IDLE, TRAINING, PAUSED, CLUSTERING, FINETUNING, SAVING, CLOSED = (
    "idle", "training", "paused", "clustering", "finetuning", "saving", "closed",
)


@dataclass(frozen=True)
class Event:
    """Base of every engine event."""


@dataclass(frozen=True)
class StateChanged(Event):
    state: str
    previous: str


@dataclass(frozen=True)
class Progress(Event):
    """Training progress, throttled to about 20 per second; the last step of a job always arrives."""

    phase: str
    step: int
    epoch: int
    loss: float
    job_step: int
    job_total: int
    steps_per_s: float


@dataclass(frozen=True)
class Evaluated(Event):
    phase: str
    step: int
    epoch: int
    test_accuracy: float
    clusterability: float | None


@dataclass(frozen=True)
class ClustersFound(Event):
    step: int
    k: int
    source: str
    row_sizes: tuple[int, ...]
    col_sizes: tuple[int, ...]
    shares: tuple[float, ...]
    clusterability: float
    chance: float


@dataclass(frozen=True)
class PhaseFinished(Event):
    """One finished job of the plan, as it appears in the snapshot's history."""

    phase: str
    step: int
    steps: int
    test_accuracy: float | None
    clusterability: float | None
    stopped: bool = False  # ended early by stop(); `steps` is what it ran


@dataclass(frozen=True)
class Saved(Event):
    step: int
    path: str
    reason: str  # "created", "autosave", "phase" (a job ended), "request" (save()), "close"


@dataclass(frozen=True)
class LogLine(Event):
    level: str
    message: str


@dataclass(frozen=True)
class Failed(Event):
    """A job or command that could not run; the engine is back to idle afterwards."""

    job: str
    message: str


@dataclass(frozen=True)
class Ablated(Event):
    """A cluster ablation: engine/ablation.py's Ablation.to_dict() of the held clusters at `step`."""

    step: int
    ablation: dict


@dataclass(frozen=True)
class FiguresUpdated(Event):
    """The snapshot's figures (cluster shares, the block picture) were recomputed from the weights at `step`:
    after each save, and at most once a second while training with clusters held."""

    step: int


@dataclass(frozen=True)
class SignificanceFound(Event):
    """The measures at `step` against their shuffle null: engine.measures.NullResult.to_dict() (every measure's
    observed value, null mean, std, z and p; p_floor, samples, method, test and source)."""

    step: int
    phase: str
    clusterability: float
    significance: dict
