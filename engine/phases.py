"""The phases as plain functions over a trainer: train (pretrain or finetune), evaluate, cluster.

No threads here: `Engine` runs them on its thread with hooks that serve its commands, the batched executor runs
`run` over a group's trainer with one lane per member, and a script, a sweep or a test can call them directly with
the default `Hooks` (which report nothing and never interrupt).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch

from engine import events as ev
from engine import network_graph
from engine.clustering import Clusters, cocluster
from engine.errors import TrainingError
from engine.metrics import chance_level, cluster_shares
from engine.plan import Job
from engine.prune import hold
from engine.trainer import Trainer

REPORT_INTERVAL_S = 0.05  # at most ~20 progress events per second, however fast the loop runs


class Hooks:
    """What a running phase tells its caller and asks of it. The defaults do nothing."""

    attention = False  # read every step: when True, `attend` is called at that step boundary

    def attend(self) -> str | None:
        """Serve pending requests at a step boundary; 'stopped' or 'closed' ends the job there."""
        return None

    def emit(self, event: ev.Event) -> None:
        """An event for subscribers."""

    def record(self, record: dict) -> None:
        """A record for the metrics log."""

    def autosave(self) -> None:
        """The autosave interval was reached mid-job."""


class Passing(Hooks):
    """Hooks that pass everything on to others; subclasses change what they must."""

    def __init__(self, hooks: Hooks) -> None:
        self.hooks = hooks

    @property
    def attention(self) -> bool:
        return self.hooks.attention

    def attend(self) -> str | None:
        return self.hooks.attend()

    def emit(self, event: ev.Event) -> None:
        self.hooks.emit(event)

    def record(self, record: dict) -> None:
        self.hooks.record(record)

    def autosave(self) -> None:
        self.hooks.autosave()


@dataclass
class Figures:
    """The latest figures of a session: what an evaluation, a report or a clustering last gave."""

    test_accuracy: float | None = None
    train_loss: float | None = None
    clusterability: float | None = None

    def to_dict(self) -> dict:
        return {"test_accuracy": self.test_accuracy, "train_loss": self.train_loss,
                "clusterability": self.clusterability}


@dataclass(frozen=True)
class TrainSettings:
    """How one training job runs: its phase name, regulariser (for every model the trainer holds: one mask and λ,
    or M of each stacked) and reporting intervals. Without `evaluate_end` the job's last evaluation is left to
    whoever ends the job (a batched group leaves it to each member's own Study)."""

    phase: str
    mask: torch.Tensor | None = None
    lam: float | tuple[float, ...] = 0.0
    capture: bool = False
    eval_every: int = 400
    autosave_every: int = 500
    evaluate_end: bool = True
    keep: tuple[torch.Tensor, ...] | None = None  # a pruned network's masks (one per layer): its zeros stay zero


@dataclass
class Lane:
    """One model's part in a training job: its job (counted up to `total`), figures and hooks. `fail` ends a group's
    member whose loss diverged, and the rest go on; without it, a diverged loss fails the job."""

    job: Job
    figures: Figures
    hooks: Hooks
    fail: Callable[[str], None] | None = None


def train(trainer: Trainer, job: Job, settings: TrainSettings, figures: Figures, hooks: Hooks | None = None) -> str:
    """Run `job` on the trainer's one model: 'done', or 'stopped'/'closed' when the hooks end it."""
    return run(trainer, [Lane(job, figures, hooks or Hooks())], settings)


def run(trainer: Trainer, lanes: list[Lane], settings: TrainSettings) -> str:
    """Train the trainer's models, lane m for model m, until the jobs (which step together) are done: 'done', or
    'stopped'/'closed' when a lane's hooks end them. A lane whose loss diverges may leave (see `Lane.fail`): the
    trainer then keeps only the other lanes' models."""
    last_report, reported_at_step = time.monotonic(), trainer.step
    last_eval = -1
    while lanes and lanes[0].job.done < lanes[0].job.total:
        if any(lane.hooks.attention for lane in lanes):
            ended = next((e for lane in lanes if (e := lane.hooks.attend()) is not None), None)
            if ended is not None:
                _report(trainer, lanes, settings, last_report, reported_at_step)
                return ended
            last_report, reported_at_step = time.monotonic(), trainer.step
        trainer.train_step(settings.mask, settings.lam, settings.capture)
        if settings.keep is not None:
            hold(trainer.weights, settings.keep)
        for lane in lanes:
            lane.job.done += 1
        step, last = trainer.step, lanes[0].job.done == lanes[0].job.total
        if (step % settings.eval_every == 0 or step % trainer.steps_per_epoch == 0) and (  # or an epoch ended
                settings.evaluate_end or not last):
            evaluate(trainer, lanes, settings)
            last_eval = step
        now = time.monotonic()
        if now - last_report >= REPORT_INTERVAL_S or last or step % settings.autosave_every == 0:
            lanes, settings = _report(trainer, lanes, settings, last_report, reported_at_step)
            last_report, reported_at_step = now, step
        if step % settings.autosave_every == 0 and not last:
            for lane in lanes:
                lane.hooks.autosave()
    if lanes and settings.evaluate_end and last_eval != trainer.step:
        evaluate(trainer, lanes, settings)
    return "done"


def evaluate(trainer: Trainer, lanes: list[Lane], settings: TrainSettings) -> None:
    """Test accuracy (and clusterability if clusters are held) of every model, recorded and reported."""
    accuracies = trainer.accuracies()
    found = trainer.clusterabilities(settings.mask) if settings.mask is not None else [None] * len(lanes)
    epoch = trainer.step // trainer.steps_per_epoch
    for lane, accuracy, c in zip(lanes, accuracies, found, strict=True):
        lane.figures.test_accuracy, lane.figures.clusterability = accuracy, c
        lane.hooks.record({"type": "eval", "phase": settings.phase, "step": trainer.step, "epoch": epoch,
                           "test_accuracy": accuracy, "clusterability": c})
        lane.hooks.emit(ev.Evaluated(settings.phase, trainer.step, epoch, accuracy, c))


def _report(trainer: Trainer, lanes: list[Lane], settings: TrainSettings, since: float,
            since_step: int) -> tuple[list[Lane], TrainSettings]:
    """Each lane's loss record and progress; the lanes (and settings) that go on."""
    losses = trainer.take_losses()
    if losses is None:
        return lanes, settings
    rate = (trainer.step - since_step) / max(time.monotonic() - since, 1e-9)
    epoch = trainer.step // trainer.steps_per_epoch
    kept = []
    for i, (lane, loss) in enumerate(zip(lanes, losses, strict=True)):
        job = lane.job
        if not np.isfinite(loss):
            error = (f"The training loss became {loss} near step {trainer.step}, so {job.kind} was stopped; "
                     "try a smaller --lr or --lam.")
            if lane.fail is None:
                raise TrainingError(error)
            lane.fail(error)
            continue
        kept.append(i)
        lane.figures.train_loss = loss
        lane.hooks.record({"type": "train", "phase": job.kind, "step": trainer.step, "epoch": epoch, "loss": loss})
        lane.hooks.emit(ev.Progress(job.kind, trainer.step, epoch, loss, job.done, job.total, rate))
    if len(kept) == len(lanes):
        return lanes, settings
    if kept:
        trainer.keep(kept)
    if settings.mask is not None:
        settings = replace(settings, mask=settings.mask[kept], lam=tuple(settings.lam[i] for i in kept))
    return [lanes[i] for i in kept], settings


def cluster(trainer: Trainer, k: int, source: str, seed: int) -> Clusters:
    """Co-cluster the studied layer's weights, or F, the gradient importance captured while pretraining; with
    `--layer all`, spectrally cluster the whole network's graph (engine/network_graph.py)."""
    if trainer.config.whole_network:
        groups = network_graph.cluster_network([w.detach().double().cpu().numpy() for w in trainer.weights], k, seed)
        return Clusters.of_network(k, [g[0] for g in groups], trainer.config.studied_layer, network_graph.ALGORITHM)
    if source == "weights":
        result = cocluster(trainer.weight.detach().double().cpu().numpy(), k, seed=seed)
    else:
        if trainer.grad_steps == 0 and trainer.legacy_gradients:
            raise TrainingError("This session's gradient statistics were captured the old way; re-pretrain to "
                                "cluster on gradients, or cluster on weights.")
        if trainer.grad_steps == 0:
            raise TrainingError("No gradients were captured yet: pretrain first, or cluster on weights.")
        result = cocluster(trainer.grad_importance.cpu().numpy(), k, seed=seed)
    return Clusters.found(k, source, result)


@dataclass(frozen=True)
class ClusterFigures:
    """What a clustering is worth on the current weights."""

    clusterability: float
    chance: float
    shares: tuple[float, ...]


def cluster_figures(trainer: Trainer, clusters: Clusters, mask: torch.Tensor | tuple) -> ClusterFigures:
    if clusters.units is not None:  # the whole network's
        layers = [w[0].detach().cpu().numpy() for w in trainer.weights]
        return ClusterFigures(trainer.clusterability_of(mask), network_graph.chance_level(clusters.units, clusters.k),
                              tuple(network_graph.cluster_shares(layers, clusters.units, clusters.k)))
    rows, cols = clusters.row_labels, clusters.col_labels
    return ClusterFigures(trainer.clusterability_of(mask), chance_level(rows, cols, clusters.k),
                          tuple(cluster_shares(trainer.weight, rows, cols, clusters.k)))
