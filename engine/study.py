"""A Study: one session's model, data, clusters, history and metrics log, and the jobs that change them.

Thread-free: `Engine` runs a Study's jobs on its thread with hooks that serve its commands, and a sweep or a test
can run them in a plain loop. Every job kind has one handler here (`HANDLERS`).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from engine import events as ev
from engine import phases
from engine.ablation import ablate
from engine.checkpoint_check import check_trainer_state
from engine.clustering import Clusters
from engine.config import Config
from engine.data import load_dataset
from engine.device import all_cores, configure_threads, resolve_device
from engine.errors import SessionError, TrainingError
from engine.measures import upgraded
from engine.metrics import block_masks
from engine.picture import BlockPicture, block_picture
from engine.plan import ABLATE, CLUSTER, CONTROL, FINETUNE, PRETRAIN, SIGNIFICANCE, Job, Jobs
from engine.prune import kept, prune_global
from engine.session import (
    MetricsLog,
    SavedState,
    checkpoint_name,
    load_saved,
    metrics_path,
    prune_checkpoints,
    session_file,
    trim_metrics,
    write_checkpoint,
    write_session,
)
from engine.significance import network_significance, significance
from engine.stability import RECLUSTER
from engine.trainer import Trainer

LOGGED_PICTURE = (32, 64)  # the block picture each clustering logs, rows x cols at most (about 12 KB of JSON)


class Study:
    """The state a session saves, and the job handlers that change it."""

    def __init__(self, path: Path, config: Config, saved: SavedState | None = None,
                 checkpoint: dict | None = None) -> None:
        self.path = Path(path)
        self.config = config
        self.device = resolve_device(config.device)
        configure_threads(self.device)
        self.data = load_dataset(config.dataset, config.data_dir, config.seed, self.device)
        self.trainer = Trainer(config, self.data, self.device)
        self.jobs = Jobs(config, self.trainer.steps_per_epoch)
        self.clusters: Clusters | None = None
        self.cluster_step: int | None = None
        self.mask: torch.Tensor | tuple[torch.Tensor, ...] | None = None  # a tuple for a whole network
        self.keep: tuple[torch.Tensor, ...] | None = None  # a pruned network's masks of the weights it kept
        self.history: list[dict] = []
        self.figures = phases.Figures()
        self.control: dict | None = None  # what the λ=0 twin of the last finetune reached
        self.ablation: dict | None = None  # the held clusters' ablation (engine/ablation.py), latest
        self.significance: dict | None = None  # the latest measures' shuffle null (NullResult.to_dict())
        self.stability: dict | None = None  # `clusterlab stability` of the held clusters (engine/stability.py)
        self._null_step = -1  # the step `significance` was found at
        self._recluster_step = -1  # the step of the last RECLUSTER record (one per finetune epoch's end)
        self.picture_size = (32, 64)  # the block picture's largest size, rows x cols (the UI asks for its own)
        self.plan: list[Job] = []  # the saved plan this study was restored with
        self.saved_plan: list[dict] | None = None  # the plan as last written
        self._saved_mark: str | None = None  # what was last written or read (`_mark`): unchanged, no save is due
        self._checkpoints: list[str] = []
        self._checkpoint_sha256: str | None = None  # of the newest checkpoint, which session.json records
        records = self._restore(saved, checkpoint) if saved is not None else 0
        self.metrics = MetricsLog(metrics_path(self.path), records)

    # ----- jobs -------------------------------------------------------------------------------------------------

    def run(self, job: Job, hooks: phases.Hooks) -> str:
        """Run one job: 'done', or 'stopped'/'closed' when the hooks end it; raises if it fails."""
        return HANDLERS[job.kind](self, job, hooks)

    def _run_training(self, job: Job, hooks: phases.Hooks) -> str:
        mask, lam = None, 0.0
        if job.kind == FINETUNE:
            if self.mask is None:
                raise TrainingError("Finetuning needs clusters: cluster the layer first.")
            mask, lam = self.mask, float(job.lam)
        hooks.emit(ev.LogLine("info", f"{job.kind}: steps {job.done + 1}-{job.total} of this job from step "
                                      f"{self.trainer.step + 1}"))
        settings = phases.TrainSettings(job.kind, mask, lam, capture=job.kind == PRETRAIN,
                                        eval_every=self.config.eval_every, autosave_every=self.config.autosave_every,
                                        keep=self.keep)
        watched = _EpochNull(self, hooks) if mask is not None else hooks
        outcome = phases.train(self.trainer, job, settings, self.figures, watched)
        if outcome == "done" and job.kind == PRETRAIN and self.config.prune:
            self._prune(hooks)
        if outcome in ("done", "stopped"):
            found = None
            if mask is not None:  # the finetuned clusterability, with its null
                found = self.significance if self._null_step == self.trainer.step else self.test_null(job.kind, hooks)
            self.finish_phase(job.kind, job.done, hooks, lam if mask is not None else None, outcome == "stopped",
                              significance=found)
        if outcome == "done" and job.kind == FINETUNE:
            self._ablate(hooks)
        return outcome

    def _prune(self, hooks: phases.Hooks) -> None:
        """Global magnitude pruning at the end of pretraining (engine/prune.py); the zeros are held from then on."""
        before = self.figures.test_accuracy
        self.keep = prune_global([w[0] for w in self.trainer.weights], self.config.prune)
        self.figures.test_accuracy = self.trainer.evaluate()
        share = sum(int(m.sum()) for m in self.keep) / sum(m.numel() for m in self.keep)
        hooks.emit(ev.LogLine("info", f"pruned the smallest {self.config.prune:.0%} of the weights ({share:.1%} kept, "
                                      f"per layer {', '.join(f'{float(m.float().mean()):.1%}' for m in self.keep)}): "
                                      f"test accuracy {before or 0:.4f} -> {self.figures.test_accuracy:.4f}"))

    def _run_cluster(self, job: Job, hooks: phases.Hooks) -> str:
        started = time.perf_counter()
        clusters = phases.cluster(self.trainer, int(job.k), str(job.source), self.config.seed)
        self.set_clusters(clusters, self.trainer.step)
        found = phases.cluster_figures(self.trainer, clusters, self.mask)
        self.figures.clusterability = found.clusterability
        hooks.record({"type": "clusters", "step": self.trainer.step, "k": clusters.k, "source": clusters.source,
                      "row_sizes": clusters.row_sizes, "col_sizes": clusters.col_sizes, "shares": list(found.shares),
                      "clusterability": found.clusterability, "chance": found.chance,
                      # the blocks as found (later weights replace the checkpoint): exports draw one per clustering
                      "picture": [[round(v, 3) for v in row] for row in self.picture(LOGGED_PICTURE).values]})
        hooks.emit(ev.LogLine("info", f"clusters (k={clusters.k}, {clusters.source}) in "
                                      f"{time.perf_counter() - started:.3f} s: clusterability "
                                      f"{found.clusterability:.3f} (uniform-mass chance {found.chance:.3f}; "
                                      "its shuffle null follows)"))
        hooks.emit(ev.ClustersFound(self.trainer.step, clusters.k, clusters.source, tuple(clusters.row_sizes),
                                    tuple(clusters.col_sizes), found.shares, found.clusterability, found.chance))
        self.finish_phase(CLUSTER, 0, hooks)
        self._ablate(hooks)
        return "done"

    def _run_significance(self, job: Job, hooks: phases.Hooks) -> str:
        """The shuffle null of the clusterability just found; it joins the clustering's history entry."""
        if self.clusters is None:
            raise TrainingError("Significance needs clusters: cluster the layer first.")
        found = self.test_null(CLUSTER, hooks)
        last = self.history[-1] if self.history else None
        if found is not None and last is not None and last["phase"] == CLUSTER and last["step"] == self.trainer.step:
            last["significance"] = found
        return "done"

    def test_null(self, phase: str, hooks: phases.Hooks, trainer: Trainer | None = None) -> dict | None:
        """Every measure of the held clusters on the layer (of `trainer`, the session's by default) against the null
        of `null_samples` shuffles that fits their source (engine/significance.py); recorded, reported, and the
        latest kept as NullResult.to_dict() (None if off). In a finetune it also records what re-clustering the
        weights would find now (a RECLUSTER record, for `clusterlab stability`)."""
        trainer = trainer or self.trainer
        clusters, config = self.clusters, self.config
        if (clusters.units is None and trainer is self.trainer and phase == FINETUNE
                and self._recluster_step != trainer.step):  # for `clusterlab stability`
            self._recluster_step = trainer.step
            now = phases.cluster(trainer, clusters.k, "weights", config.seed)
            hooks.record({"type": RECLUSTER, "step": trainer.step, "rows": list(now.row_labels),
                          "cols": list(now.col_labels)})
        if clusters.units is not None:  # the whole network's graph, each layer shuffled on its own
            found = network_significance([w[0].detach().cpu().numpy() for w in trainer.weights], clusters.units,
                                         clusters.k, method=config.null, samples=config.null_samples, seed=config.seed)
        else:
            found = significance(trainer.weight.detach().cpu().numpy(), clusters.row_labels, clusters.col_labels,
                                 clusters.k, source=clusters.source, method=config.null,
                                 samples=config.null_samples, seed=config.seed)
        if found is None:
            return None
        result = {**found.to_dict(), "step": trainer.step}  # a figure carries the step it was measured at
        c = trainer.clusterability_of(self.mask)
        # At the session's step: a control's twin ran ahead on its own copy, and its figures belong where it
        # branched off, as its history entry does, so they read before the finetune it controls.
        step = self.trainer.step
        hooks.record({"type": "significance", "step": step, "phase": phase, "clusterability": c, **result})
        hooks.emit(ev.SignificanceFound(step, phase, c, result))
        if trainer is self.trainer:
            self.significance, self._null_step = result, trainer.step
        return result

    def _run_ablate(self, job: Job, hooks: phases.Hooks) -> str:
        if self.clusters is None:
            raise TrainingError("Ablation needs clusters: cluster the layer first.")
        self._ablate(hooks)
        return "done"

    def _ablate(self, hooks: phases.Hooks) -> None:
        """Silence each cluster's output units in turn; per-class accuracy drops against a random-unit null."""
        weights = [w.detach() for w in self.trainer.model.state_dict().values()]  # fc1..fcN, bias-free
        with all_cores(self.device):
            result = ablate(weights, self.config.studied_layer, self.clusters.row_labels, self.clusters.k,
                            self.data.test_x, self.data.test_y, self.data.n_classes,
                            null_samples=self.config.null_samples, seed=self.config.seed)
        self.ablation = {**result.to_dict(), "step": self.trainer.step}
        hooks.record({"type": "ablation", **self.ablation})
        hooks.emit(ev.Ablated(self.trainer.step, self.ablation))

    def _run_control(self, job: Job, hooks: phases.Hooks) -> str:
        """Train a λ=0 twin of the finetune that follows, from the same state and data order, for as many steps.
        The twin is rebuilt from the unchanged pretrained state each time, so a stopped control starts over."""
        if self.mask is None:
            raise TrainingError("The control needs clusters: cluster the layer first.")
        twin = Trainer(self.config, self.data, self.device)
        twin.load_state_dict(self.trainer.state_dict())
        job.done = 0
        figures = phases.Figures()
        hooks.emit(ev.LogLine("info", f"control: a λ=0 twin trains {job.total} steps from step {twin.step}"))
        settings = phases.TrainSettings(CONTROL, self.mask, 0.0, eval_every=self.config.eval_every,
                                        autosave_every=2**62, keep=self.keep)
        # The twin's steps run ahead of the session's own: its progress is shown live but not logged, so the
        # metrics log keeps one step axis (a resume cuts it by step).
        outcome = phases.train(twin, job, settings, figures, _Unlogged(hooks))
        if outcome in ("done", "stopped"):
            found = None
            if outcome == "done":
                found = self.test_null(CONTROL, _Unlogged(hooks), twin)
                self.control = {"test_accuracy": figures.test_accuracy, "clusterability": figures.clusterability,
                                "significance": found, "step": twin.step, "params_sha256": params_sha256(twin.model)}
            self.finish_phase(CONTROL, job.done, hooks, 0.0, outcome == "stopped", figures, found)
        return outcome

    def finish_phase(self, phase: str, steps: int, hooks: phases.Hooks, lam: float | None = None,
                     stopped: bool = False, figures: phases.Figures | None = None,
                     significance: dict | None = None) -> None:
        """The history entry (and metrics record and event) of an ended job."""
        figures = figures or self.figures
        entry = {"phase": phase, "step": self.trainer.step, "steps": steps,
                 "test_accuracy": figures.test_accuracy, "clusterability": figures.clusterability}
        hooks.emit(ev.PhaseFinished(**entry, stopped=stopped))
        if lam is not None:
            entry["lam"] = lam  # what `resume --steps` continues a finetune with
        if stopped:
            entry["stopped"] = True
        if significance is not None:
            entry["significance"] = significance
        self.history.append(entry)
        hooks.record({"type": "phase", **entry})

    def set_clusters(self, clusters: Clusters | None, step: int | None) -> None:
        if clusters != self.clusters:
            self.ablation = self.significance = self.stability = None  # they were of other clusters
        self.clusters, self.cluster_step = clusters, step if clusters is not None else None
        self.mask = block_masks(clusters, self.device) if clusters else None

    @property
    def epochs_done(self) -> int:
        """Completed passes over the training set. Every epoch is exactly steps_per_epoch steps of one unbroken
        batch stream, so this is integer arithmetic on the step: safe to read from any thread, no torch."""
        return self.trainer.step // self.trainer.steps_per_epoch

    # ----- saving and restoring ---------------------------------------------------------------------------------

    def save(self, plan: list[Job], phase: str) -> None:
        """Checkpoint, then session.json pointing to it, then drop older checkpoints: a crash at any moment leaves
        a complete pair."""
        self.metrics.sync()
        name = checkpoint_name(self.trainer.step)
        # The trainer's state changes only with its step: a save at the step of the last checkpoint (the plan saved
        # before work starts, say) writes session.json alone, which is small enough to land on a nearly full disk.
        if not (self._checkpoints and self._checkpoints[-1] == name and (self.path / name).is_file()):
            _, self._checkpoint_sha256 = write_checkpoint(self.path, self.trainer.step,
                                                          {"trainer": self.trainer.state_dict()})
        saved = SavedState(config=self.config, step=self.trainer.step, checkpoint=name,
                           metrics_records=self.metrics.records, plan=plan, clusters=self.clusters,
                           history=self.history, last=self.figures.to_dict(), control=self.control,
                           ablation=self.ablation, significance=self.significance,
                           checkpoint_sha256=self._checkpoint_sha256, stability=self.stability)
        write_session(self.path, saved, phase=phase, epoch=self.epochs_done, device=str(self.device))
        self.saved_plan = [j.to_dict() for j in plan]
        self._saved_mark = self._mark(plan)
        if not self._checkpoints or self._checkpoints[-1] != name:
            self._checkpoints = (self._checkpoints + [name])[-2:]
        prune_checkpoints(self.path, set(self._checkpoints))

    def _restore(self, saved: SavedState, checkpoint: dict) -> int:
        """Take the saved state; returns how many metrics records the save had written."""
        check_trainer_state(checkpoint["trainer"], self.trainer, self.path / saved.checkpoint, session_file(self.path))
        try:
            self.trainer.load_state_dict(checkpoint["trainer"])
        except (KeyError, RuntimeError, TypeError, ValueError) as exc:
            raise SessionError(f"{self.path / saved.checkpoint} does not match the session's model ({exc}).") from None
        if saved.step != self.trainer.step:
            raise SessionError(f"{session_file(self.path)} and its checkpoint disagree on the step.")
        self.set_clusters(saved.clusters, _cluster_step(saved.history))
        # Pruning ends every finished pretrain job; its zeros were held since, so they are the mask.
        pruned = self.config.prune and any(e["phase"] == PRETRAIN and not e.get("stopped") for e in saved.history)
        self.keep = kept([w[0] for w in self.trainer.weights]) if pruned else None
        self.history = [_upgraded(entry) for entry in saved.history]  # older sessions' nulls in today's form
        self.control = _upgraded(saved.control)
        self.ablation = saved.ablation
        self.significance = upgraded(saved.significance)
        self.stability = saved.stability
        self.plan = saved.plan
        self.saved_plan = [j.to_dict() for j in saved.plan]
        last = saved.last
        self.figures = phases.Figures(last.get("test_accuracy"), last.get("train_loss"), last.get("clusterability"))
        self._checkpoints = [saved.checkpoint]
        self._checkpoint_sha256 = saved.checkpoint_sha256
        self._saved_mark = self._mark(saved.plan)
        return trim_metrics(metrics_path(self.path), saved.metrics_records)

    def _mark(self, plan: list[Job]) -> str:
        """Everything a save writes that can change without the step moving (a clustering adds to the history)."""
        return repr((self.trainer.step, [j.to_dict() for j in plan], self.history, self.control, self.ablation,
                     self.significance, self.figures.to_dict()))

    def unsaved(self, plan: list[Job]) -> bool:
        """Whether a save now would write anything new: merely opening a session (to look) must not rewrite it."""
        return self._mark(plan) != self._saved_mark

    def roll_back(self) -> None:
        """Return to the last save, so that nothing bad (NaN weights, say) is saved over it."""
        saved, state = load_saved(self.path)
        self.metrics.close()
        records = self._restore(saved, state)
        self.metrics = MetricsLog(metrics_path(self.path), records)
        self.trainer.take_loss()  # forget the failed steps' losses

    # ----- the snapshot's figures -----------------------------------------------------------------------------

    def figures_view(self) -> dict:
        """The Snapshot fields that read the weights (computed on the thread that owns them)."""
        clusters = chance = clusterability = None
        if self.clusters is not None:
            found = phases.cluster_figures(self.trainer, self.clusters, self.mask)
            clusters = {"k": self.clusters.k, "source": self.clusters.source, "row_sizes": self.clusters.row_sizes,
                        "col_sizes": self.clusters.col_sizes, "shares": list(found.shares)}
            if self.clusters.units is not None:  # the whole network's: each unit group's cluster sizes
                clusters |= {"algorithm": self.clusters.algorithm, "group_sizes": self.clusters.group_sizes}
            chance, clusterability = found.chance, found.clusterability
        return {
            "session": str(self.path),
            "name": self.path.name,
            "dataset": self.config.dataset,
            "device": str(self.device),
            "test_accuracy": self.figures.test_accuracy,
            "train_loss": self.figures.train_loss,
            "clusterability": clusterability,
            "clusterability_chance": chance,
            "clusters": clusters,
            "cluster_step": self.cluster_step,
            "figures_step": self.trainer.step,
            "params_sha256": params_sha256(self.trainer.model),
            "history": tuple(dict(entry) for entry in self.history),
            "config": self.config.to_dict(),
            "control": self.control,
            "accuracy_cost": self.accuracy_cost(),
            "ablation": self.ablation,
            "significance": self.significance,
            "stability": self.stability,
            "picture": self.picture(),
        }

    def picture(self, size: tuple[int, int] | None = None) -> BlockPicture | None:
        """|W| of the studied layer reordered by cluster, pooled to `size` (the UI's `picture_size` by default)."""
        if self.clusters is None:
            return None
        weight = self.trainer.weight.detach().cpu().numpy()
        return block_picture(weight, self.clusters.row_labels, self.clusters.col_labels, self.clusters.k,
                             *(size or self.picture_size))

    def accuracy_cost(self) -> float | None:
        """Control accuracy minus finetuned accuracy, once a finetune has run after its control."""
        after = next((e for e in reversed(self.history) if e["phase"] in (CONTROL, FINETUNE)), None)
        if self.control is None or after is None or after["phase"] != FINETUNE or after.get("stopped"):
            return None
        if self.control["test_accuracy"] is None or after["test_accuracy"] is None:
            return None
        return self.control["test_accuracy"] - after["test_accuracy"]


class _Unlogged(phases.Passing):
    """Everything but the metrics records and autosaves (a twin's steps are not the session's)."""

    def record(self, record: dict) -> None:
        pass

    def autosave(self) -> None:
        pass


class _EpochNull(phases.Passing):
    """Also tests each finetune epoch's clusterability against its null, after its evaluation."""

    def __init__(self, study: Study, hooks: phases.Hooks) -> None:
        super().__init__(hooks)
        self.study = study

    def emit(self, event: ev.Event) -> None:
        self.hooks.emit(event)
        if isinstance(event, ev.Evaluated) and event.step % self.study.trainer.steps_per_epoch == 0:
            self.study.test_null(event.phase, self.hooks)


HANDLERS: dict[str, Callable[[Study, Job, phases.Hooks], str]] = {
    PRETRAIN: Study._run_training,
    FINETUNE: Study._run_training,
    CLUSTER: Study._run_cluster,
    CONTROL: Study._run_control,
    ABLATE: Study._run_ablate,
    SIGNIFICANCE: Study._run_significance,
}


def _cluster_step(history: list[dict]) -> int | None:
    """The step of the last clustering in a session's history."""
    return next((entry["step"] for entry in reversed(history) if entry.get("phase") == CLUSTER), None)


def _upgraded(entry: dict | None) -> dict | None:
    """A history entry or control record with its significance in today's form."""
    if entry is None or entry.get("significance") is None:
        return entry
    return {**entry, "significance": upgraded(entry["significance"])}


def params_sha256(model: torch.nn.Module) -> str:
    """SHA-256 of every parameter's name and float32 bytes, in order: equal hashes mean equal models."""
    return state_sha256(model.state_dict())


def state_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """params_sha256 of the model a state dict (a checkpoint's "model", say) was taken from."""
    digest = hashlib.sha256()
    for name, tensor in state.items():
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()
