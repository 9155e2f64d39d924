"""The phases as plain functions over a trainer: train (pretrain or finetune), evaluate, cluster.

No threads here: `Engine` runs them on its thread with hooks that serve its commands, and a script, a sweep or a
test can call them directly with the default `Hooks` (which report nothing and never interrupt).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from engine import events as ev
from engine.clustering import Clusters, cocluster
from engine.errors import TrainingError
from engine.metrics import chance_level, cluster_shares
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
    """How one training job runs: its phase name, regulariser and reporting intervals."""

    phase: str
    mask: torch.Tensor | None = None
    lam: float = 0.0
    capture: bool = False
    eval_every: int = 400
    autosave_every: int = 500


def train(trainer: Trainer, job, settings: TrainSettings, figures: Figures, hooks: Hooks | None = None) -> str:
    """Run `job` (its `done` counted up to `total`); 'done', or 'stopped'/'closed' when the hooks end it."""
    hooks = hooks or Hooks()
    last_report, reported_at_step = time.monotonic(), trainer.step
    last_eval = -1
    while job.done < job.total:
        if hooks.attention:
            ended = hooks.attend()
            if ended is not None:
                _report(trainer, job, figures, hooks, last_report, reported_at_step)
                return ended
            last_report, reported_at_step = time.monotonic(), trainer.step
        trainer.train_step(settings.mask, settings.lam, settings.capture)
        job.done += 1
        step = trainer.step
        if step % settings.eval_every == 0 or step % trainer.steps_per_epoch == 0:  # an epoch ended
            evaluate(trainer, settings.phase, settings.mask, figures, hooks)
            last_eval = step
        now = time.monotonic()
        if now - last_report >= REPORT_INTERVAL_S or job.done == job.total or step % settings.autosave_every == 0:
            _report(trainer, job, figures, hooks, last_report, reported_at_step)
            last_report, reported_at_step = now, step
        if step % settings.autosave_every == 0 and job.done < job.total:
            hooks.autosave()
    if last_eval != trainer.step:
        evaluate(trainer, settings.phase, settings.mask, figures, hooks)
    return "done"


def evaluate(trainer: Trainer, phase: str, mask: torch.Tensor | None, figures: Figures, hooks: Hooks) -> None:
    """Test accuracy (and clusterability if clusters are held), recorded and reported."""
    accuracy = trainer.evaluate()
    c = trainer.clusterability_of(mask) if mask is not None else None
    figures.test_accuracy, figures.clusterability = accuracy, c
    epoch = trainer.step // trainer.steps_per_epoch
    hooks.record({"type": "eval", "phase": phase, "step": trainer.step, "epoch": epoch,
                  "test_accuracy": accuracy, "clusterability": c})
    hooks.emit(ev.Evaluated(phase, trainer.step, epoch, accuracy, c))


def _report(trainer: Trainer, job, figures: Figures, hooks: Hooks, since: float, since_step: int) -> None:
    loss = trainer.take_loss()
    if loss is None:
        return
    if not np.isfinite(loss):
        raise TrainingError(
            f"The training loss became {loss} near step {trainer.step}, so {job.kind} was stopped; "
            "try a smaller --lr or --lam."
        )
    rate = (trainer.step - since_step) / max(time.monotonic() - since, 1e-9)
    figures.train_loss = loss
    epoch = trainer.step // trainer.steps_per_epoch
    hooks.record({"type": "train", "phase": job.kind, "step": trainer.step, "epoch": epoch, "loss": loss})
    hooks.emit(ev.Progress(job.kind, trainer.step, epoch, loss, job.done, job.total, rate))


def cluster(trainer: Trainer, k: int, source: str, seed: int) -> Clusters:
    """Co-cluster the studied layer's weights, or F, the gradient importance captured while pretraining."""
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


def cluster_figures(trainer: Trainer, clusters: Clusters, mask: torch.Tensor) -> ClusterFigures:
    rows, cols = clusters.row_labels, clusters.col_labels
    return ClusterFigures(trainer.clusterability_of(mask), chance_level(rows, cols, clusters.k),
                          tuple(cluster_shares(trainer.weight, rows, cols, clusters.k)))
