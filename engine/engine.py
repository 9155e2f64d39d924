"""The Engine: owns model, data and session, runs queued jobs on its own thread, reports events."""

from __future__ import annotations

import hashlib
import logging
import platform
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from engine import events as ev
from engine.clustering import Clusters, cocluster, gradient_clusters
from engine.config import Config, check_int, check_k, check_lam, check_source
from engine.data import load_dataset
from engine.device import configure_threads, resolve_device
from engine.errors import ClusterlabError, ConfigError, SessionError, TrainingError
from engine.metrics import block_mask, chance_level, cluster_shares
from engine.session import (
    FORMAT_VERSION,
    LOCK_FILE,
    METRICS_FILE,
    SESSION_FILE,
    MetricsLog,
    SessionLock,
    load_checkpoint,
    now_iso,
    prune_checkpoints,
    read_metrics,
    read_session,
    trim_metrics,
    write_checkpoint,
    write_json,
)
from engine.trainer import Trainer

log = logging.getLogger("clusterlab")
REPORT_INTERVAL_S = 0.05  # at most ~20 progress events per second, however fast the loop runs
Subscriber = Callable[[ev.Event], None]


@dataclass
class Job:
    """One entry of the plan. Training jobs count their steps so a saved plan resumes mid-job."""

    kind: str  # "pretrain" | "finetune" | "cluster"
    total: int = 0
    done: int = 0
    lam: float | None = None
    k: int | None = None
    source: str | None = None

    def to_dict(self) -> dict:
        return {key: value for key, value in asdict(self).items() if value is not None}


JOB_KINDS = ("pretrain", "finetune", "cluster")
TRAINING = ("pretrain", "finetune")


class Engine:
    """A clustering experiment session driven by commands that return at once.

    Commands (any thread) only change the plan or set flags under `_cv`; the engine thread runs the plan and
    serves the flags at step boundaries (one attribute check a step), and every event is emitted on it.
    """

    def __init__(self, path: Path, config: Config, session: dict | None, checkpoint: dict | None) -> None:
        self.path = Path(path)
        self.config = config
        self.device = resolve_device(config.device)
        self._lock = SessionLock(self.path)
        try:
            configure_threads(self.device)
            self.data = load_dataset(config.dataset, config.data_dir, config.seed, self.device)
            self.trainer = Trainer(config, self.data, self.device)
            self.clusters: Clusters | None = None
            self._mask: torch.Tensor | None = None
            self.history: list[dict] = []
            self._plan: list[Job] = []
            self._last: dict = {"test_accuracy": None, "train_loss": None, "clusterability": None}
            self._last_eval_step = -1
            self._checkpoints: list[str] = []
            records = 0
            if session is not None and checkpoint is not None:
                records = self._restore(session, checkpoint)
        except BaseException:
            self._lock.release()
            raise
        self._subscribers: list[Subscriber] = []
        self._cv = threading.Condition()
        self._state = ev.IDLE
        self._running: Job | None = None
        # A reopened session's unfinished plan waits for continue_plan(); a new train/cluster/finetune replaces it.
        self._held = bool(self._plan)
        # Requests served by the engine thread between steps; `_attention` is True while any is pending.
        self._pause = self._stop = self._closing = self._save_wanted = False
        self._notices: list[ev.Event] = []
        self._attention = False
        self._closed = False
        self._snapshot: dict = {}
        self.metrics = MetricsLog(self.path / METRICS_FILE, records)
        if session is None:
            self._save("created")
        self._refresh_snapshot()
        self._thread = threading.Thread(target=self._loop, name="clusterlab-engine", daemon=True)
        self._thread.start()

    # ----- opening -------------------------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | Path, config: Config) -> Engine:
        """Start a new session in `path`; refuses a path that already holds anything."""
        path = Path(path)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise SessionError(f"{path} already exists; open it to continue, or choose another session name.")
        resolve_device(config.device)
        path.mkdir(parents=True, exist_ok=True)
        try:
            return cls(path, config, None, None)
        except BaseException:
            (path / LOCK_FILE).unlink(missing_ok=True)
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()
            raise

    @classmethod
    def open(cls, path: str | Path) -> Engine:
        """Open an existing session exactly where it was last saved."""
        path = Path(path)
        session = read_session(path)
        try:
            config = Config.from_dict(session["config"])
        except (ConfigError, TypeError) as exc:
            raise SessionError(f"{path / SESSION_FILE} has an invalid config: {exc}") from None
        checkpoint = load_checkpoint(path / str(session["checkpoint"]))
        try:
            return cls(path, config, session, checkpoint)
        except ClusterlabError as exc:
            if isinstance(exc, SessionError):
                raise
            raise SessionError(f"Session {path} cannot be opened: {exc}") from None

    def _restore(self, session: dict, checkpoint: dict) -> int:
        """Take the saved state; returns how many metrics records the save had written."""
        try:
            self.trainer.load_state_dict(checkpoint["trainer"])
        except (KeyError, RuntimeError, TypeError, ValueError) as exc:
            raise SessionError(
                f"{self.path / session['checkpoint']} does not match the session's model ({exc})."
            ) from None
        try:  # valid JSON of the wrong shape is as corrupt as broken JSON: one clear error, not a traceback
            step = int(session["step"])
            records = int(session["metrics_records"])
            clusters = Clusters.from_dict(session["clusters"]) if session.get("clusters") else None
            if clusters is not None:
                _check_clusters(clusters, tuple(self.trainer.weight.shape))
            history = [dict(entry) for entry in session["history"]]
            plan = [Job(**job) for job in session["plan"]]
            if any(job.kind not in JOB_KINDS for job in plan):
                raise ValueError(f"unknown job kind in plan {[job.kind for job in plan]}")
            last = dict(session.get("last") or {})
        except (KeyError, TypeError, ValueError) as exc:
            raise SessionError(
                f"{self.path / SESSION_FILE} is corrupt ({type(exc).__name__}: {exc}); the session cannot be opened."
            ) from None
        if step != self.trainer.step:
            raise SessionError(f"{self.path / SESSION_FILE} and its checkpoint disagree on the step.")
        self.clusters, self._mask = None, None
        if clusters is not None:
            self._set_clusters(clusters)
        self.history = history
        self._plan = plan
        self._last.update(last)
        self._last_eval_step = -1
        self._checkpoints = [session["checkpoint"]]
        return trim_metrics(self.path / METRICS_FILE, records)

    # ----- commands (any thread; all return at once) ----------------------------------------------------------

    def subscribe(self, callback: Subscriber) -> None:
        with self._cv:
            self._subscribers.append(callback)

    def unsubscribe(self, callback: Subscriber) -> None:
        with self._cv:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

    def train(self, epochs: int | None = None, steps: int | None = None) -> None:
        """Queue pretraining: `steps` optimizer steps, else `epochs` epochs (defaults from the config)."""
        total = self._count_steps("train", epochs, steps, self.config.epochs, self.config.steps)
        if total is not None:
            self._enqueue(Job("pretrain", total=total))

    def cluster(self, k: int | None = None, source: str | None = None) -> None:
        """Queue co-clustering of the studied layer on 'weights' or 'gradients'."""
        k = self.config.k if k is None else k
        source = self.config.cluster_on if source is None else source
        try:
            check_k(k, self.config.layer_shape)
            check_source(source)
        except ConfigError as exc:
            self._refuse("cluster", str(exc))
            return
        self._enqueue(Job("cluster", k=k, source=source))

    def finetune(self, epochs: int | None = None, lam: float | None = None) -> None:
        """Queue regularised finetuning (loss = CE - lam * clusterability) with the clusters held fixed."""
        lam = self.config.lam if lam is None else lam
        try:
            check_lam(lam)
        except ConfigError as exc:
            self._refuse("finetune", str(exc))
            return
        total = self._count_steps("finetune", epochs, None, self.config.finetune_epochs, None)
        if total is None:
            return
        with self._cv:
            queued = [] if self._held else self._plan  # a held plan is about to be replaced
            clusters_coming = self.clusters is not None or any(j.kind == "cluster" for j in queued)
        if not clusters_coming:
            self._refuse("finetune", "Finetuning needs clusters: cluster the layer first.")
            return
        self._enqueue(Job("finetune", total=total, lam=float(lam)))

    def continue_plan(self, epochs: int | None = None, steps: int | None = None) -> None:
        """Run the saved, unfinished plan; with epochs/steps, first extend its current training phase (the
        last one the session trained in); more pretraining is followed by clustering again, the clusters
        being stale."""
        extra = 0
        if epochs is not None or steps is not None:
            extra = self._count_steps("train", epochs, steps, 0, None)
            if extra is None:
                return  # refused: the plan stays held
        with self._cv:
            self._held = False
            if extra:
                self._extend(extra)
            self._cv.notify_all()

    def _extend(self, extra: int) -> None:
        if self._plan and self._plan[0].kind in TRAINING:
            self._plan[0].total += extra
            return
        phase, lam = "pretrain", None
        for entry in reversed(self.history):
            if entry["phase"] in TRAINING:
                phase, lam = entry["phase"], entry.get("lam")
                break
        if phase == "finetune" and self.clusters is not None:
            self._plan.insert(0, Job("finetune", total=extra, lam=self.config.lam if lam is None else lam))
            return
        self._plan.insert(0, Job("pretrain", total=extra))
        if self.clusters is not None and not any(j.kind == "cluster" for j in self._plan):
            self._plan.insert(1, Job("cluster", k=self.clusters.k, source=self.clusters.source))

    def plan_default(self) -> None:
        """Queue the whole default plan of the config: pretrain, cluster, finetune (if any epochs)."""
        self.train()
        self.cluster()
        if self.config.finetune_epochs > 0:
            self.finetune()

    def pause(self) -> None:
        """Pause the running training job at the next step boundary (nothing to do while idle)."""
        self._request(pause=True)

    def resume(self) -> None:
        self._request(pause=False)

    def stop(self) -> None:
        """End the running job at the next step boundary and drop the queued ones."""
        with self._cv:
            self._plan = [self._running] if self._running else []
            self._stop = self._running is not None
            self._held = False
            self._pause = False
            self._update_attention()

    def save(self) -> None:
        """Save as soon as possible: now if idle, else at the next step boundary (never mid-step)."""
        self._request(save_wanted=True)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until idle with nothing queued (True), or until `timeout` seconds pass (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            while not self._closed and self._busy():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cv.wait(remaining)
            return True

    def snapshot(self) -> dict:
        """The session's current figures, with the same keys as `clusterlab run --json`.

        Step and state are live; the figures are those of the last evaluation, job end or save.
        """
        with self._cv:
            snap = dict(self._snapshot)
            snap["state"] = self._state
            snap["step"], snap["epoch"] = self.trainer.step, self._epochs_done()
            snap["plan"] = [j.to_dict() for j in self._plan]
            return snap

    @property
    def state(self) -> str:
        return self._state

    @property
    def name(self) -> str:
        return self.path.name

    def metrics_history(self) -> list[dict]:
        """The session's metrics log as records ("train", "eval", "clusters", "phase"), to rebuild charts."""
        return read_metrics(self.path / METRICS_FILE)

    def close(self, timeout: float = 10.0) -> None:
        """Stop at the next step boundary (an unfinished job stays in the plan), save, join the thread."""
        with self._cv:
            if self._closed:
                return
        self._request(closing=True)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("the engine thread did not stop within %.0f s; it saves when its work ends", timeout)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _request(self, **flags: bool) -> None:
        with self._cv:
            if self._closed:
                return
            for name, value in flags.items():
                setattr(self, f"_{name}", value)
            self._update_attention()

    def _update_attention(self) -> None:
        """Under _cv: recompute the one flag the training loop checks each step, and wake the engine."""
        self._attention = self._pause or self._stop or self._closing or self._save_wanted or bool(self._notices)
        self._cv.notify_all()

    def _busy(self) -> bool:
        return bool((self._plan and not self._held) or self._running or self._save_wanted or self._notices
                    or self._state not in (ev.IDLE, ev.CLOSED))

    # ----- engine thread -------------------------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            while (job := self._next_job()) is not None:
                outcome = self._run_job(job)
                with self._cv:
                    if outcome in ("done", "stopped") and self._plan and self._plan[0] is job:
                        self._plan.pop(0)  # stop() already dropped what was queued after it
                    self._running = None
                    self._stop = False
                    self._update_attention()
                if outcome in ("done", "stopped"):
                    self._save_after(job, outcome)
        except BaseException:  # noqa: BLE001 - the thread must always reach _finish, or wait() would hang
            log.exception("the engine thread failed")
        finally:
            self._finish()

    def _next_job(self) -> Job | None:
        """The next job to run, serving requests while idle; None once closing."""
        while True:
            with self._cv:
                if self._closing:
                    return None
                if self._plan and not self._held:
                    self._running = self._plan[0]
                    self._pause = False  # a pause is for a running job: a leftover one must not hold this one
                    self._update_attention()
                    return self._running
                notices, save = self._take_requests()
            if notices or save:
                self._serve(notices, save, ev.IDLE)
                continue
            self._set_state(ev.IDLE)
            with self._cv:
                while not (self._closing or (self._plan and not self._held) or self._notices or self._save_wanted):
                    self._cv.wait()

    def _take_requests(self) -> tuple[list[ev.Event], bool]:
        """Under _cv: the pending notices and save request, now taken."""
        notices, self._notices = self._notices, []
        save, self._save_wanted = self._save_wanted, False
        self._update_attention()
        return notices, save

    def _serve(self, notices: list[ev.Event], save: bool, state: str) -> None:
        for notice in notices:
            self._emit(notice)
        if save:
            self._set_state(ev.SAVING)
            self._save("request")
            self._set_state(state)

    def _attend(self, state: str) -> str | None:
        """At a step boundary: serve requests and wait out a pause; 'stopped' or 'closed' if the job ends."""
        paused = False
        while True:
            with self._cv:
                if self._closing or self._stop:
                    return "closed" if self._closing else "stopped"
                notices, save = self._take_requests()
                pausing = self._pause
            if notices or save:
                self._serve(notices, save, ev.PAUSED if paused else state)
                continue
            if not pausing:
                break
            if not paused:
                self._set_state(ev.PAUSED)
                paused = True
            with self._cv:
                while self._pause and not (self._closing or self._stop or self._notices or self._save_wanted):
                    self._cv.wait()
        if paused:
            self._set_state(state)
        return None

    def _run_job(self, job: Job) -> str:
        """Run one job: 'done', 'stopped', 'closed' (it stays in the plan) or 'failed'."""
        try:
            if job.kind == "cluster":
                self._run_cluster(job)
                return "done"
            return self._run_training(job)
        except ClusterlabError as exc:
            self._fail(job, str(exc))
        except Exception as exc:  # noqa: BLE001 - any failure of a job (OOM, bad data) must leave the engine alive
            log.debug("job %s failed", job.kind, exc_info=True)
            self._fail(job, f"{type(exc).__name__}: {exc}")
        return "failed"

    def _run_training(self, job: Job) -> str:
        phase = job.kind
        mask, lam = None, 0.0
        if phase == "finetune":
            if self._mask is None:
                raise TrainingError("Finetuning needs clusters: cluster the layer first.")
            mask, lam = self._mask, float(job.lam if job.lam is not None else self.config.lam)
        state = ev.FINETUNING if phase == "finetune" else ev.TRAINING
        self._set_state(state)
        self._log(f"{phase}: steps {job.done + 1}-{job.total} of this job from step {self.trainer.step + 1}")
        trainer, config = self.trainer, self.config
        capture = phase == "pretrain"
        last_report, reported_at_step = time.monotonic(), trainer.step
        while job.done < job.total:
            if self._attention:
                ended = self._attend(state)
                if ended is not None:
                    self._report(job, last_report, reported_at_step)
                    if ended == "stopped":
                        self._finish_phase(phase, job.done, lam if mask is not None else None, stopped=True)
                    return ended
                last_report, reported_at_step = time.monotonic(), trainer.step
            trainer.train_step(mask, lam, capture)
            job.done += 1
            step = trainer.step
            if step % config.eval_every == 0 or step % trainer.steps_per_epoch == 0:  # an epoch ended
                self._evaluate(phase)
            now = time.monotonic()
            if now - last_report >= REPORT_INTERVAL_S or job.done == job.total or step % config.autosave_every == 0:
                self._report(job, last_report, reported_at_step)
                last_report, reported_at_step = now, step
            if step % config.autosave_every == 0 and job.done < job.total:
                self._save("autosave")
        if self._last_eval_step != trainer.step:
            self._evaluate(phase)
        self._finish_phase(phase, job.done, lam if mask is not None else None)
        return "done"

    def _report(self, job: Job, since: float, since_step: int) -> None:
        loss = self.trainer.take_loss()
        if loss is None:
            return
        if not np.isfinite(loss):
            raise TrainingError(
                f"The training loss became {loss} near step {self.trainer.step}, so {job.kind} was stopped; "
                "try a smaller --lr or --lam."
            )
        now = time.monotonic()
        rate = (self.trainer.step - since_step) / max(now - since, 1e-9)
        self._last["train_loss"] = loss
        record = {"type": "train", "phase": job.kind, "step": self.trainer.step, "epoch": self._epochs_done(),
                  "loss": loss}
        self.metrics.append(record)
        self._emit(ev.Progress(job.kind, self.trainer.step, self._epochs_done(), loss, job.done, job.total, rate))

    def _evaluate(self, phase: str) -> None:
        accuracy = self.trainer.evaluate()
        c = self.trainer.clusterability_of(self._mask) if self._mask is not None else None
        self._last_eval_step = self.trainer.step
        self._last.update(test_accuracy=accuracy, clusterability=c)
        self.metrics.append({"type": "eval", "phase": phase, "step": self.trainer.step, "epoch": self._epochs_done(),
                             "test_accuracy": accuracy, "clusterability": c})
        self._emit(ev.Evaluated(phase, self.trainer.step, self._epochs_done(), accuracy, c))

    def _run_cluster(self, job: Job) -> None:
        self._set_state(ev.CLUSTERING)
        k, source = int(job.k), str(job.source)
        weight = self.trainer.weight.detach().double().cpu().numpy()
        started = time.perf_counter()
        if source == "weights":
            rows, cols = cocluster(weight, k, seed=self.config.seed)
        else:
            if self.trainer.grad_steps == 0:
                raise TrainingError("No gradients were captured yet: pretrain first, or cluster on weights.")
            rows, cols = gradient_clusters(self.trainer.grad_sum.cpu().numpy(), weight, k, seed=self.config.seed)
        clusters = Clusters(k, source, tuple(rows.tolist()), tuple(cols.tolist()))
        self._set_clusters(clusters)
        c = self.trainer.clusterability_of(self._mask)
        chance = chance_level(rows, cols, k)
        shares = cluster_shares(self.trainer.weight, rows, cols, k)
        self._last["clusterability"] = c
        self.metrics.append({"type": "clusters", "step": self.trainer.step, "k": k, "source": source,
                             "row_sizes": clusters.row_sizes, "col_sizes": clusters.col_sizes,
                             "shares": shares, "clusterability": c, "chance": chance})
        self._log(f"clusters (k={k}, {source}) in {time.perf_counter() - started:.3f} s: "
                  f"clusterability {c:.3f} vs chance {chance:.3f}")
        self._emit(ev.ClustersFound(self.trainer.step, k, source, tuple(clusters.row_sizes),
                                    tuple(clusters.col_sizes), tuple(shares), c, chance))
        self._finish_phase("cluster", 0)

    def _save_after(self, job: Job, outcome: str) -> None:
        """Save once the ended job is out of the plan, so a resume never runs it again."""
        try:
            self._save("phase" if outcome == "done" else "stopped")
        except Exception as exc:  # noqa: BLE001 - a full disk must not kill the engine; the last save stands
            self._emit(ev.Failed("save", f"saving after {job.kind} failed: {exc}"))

    def _set_clusters(self, clusters: Clusters) -> None:
        self.clusters = clusters
        self._mask = block_mask(clusters.row_labels, clusters.col_labels, self.device)

    def _finish_phase(self, phase: str, steps: int, lam: float | None = None, stopped: bool = False) -> None:
        entry = {"phase": phase, "step": self.trainer.step, "steps": steps,
                 "test_accuracy": self._last["test_accuracy"], "clusterability": self._last["clusterability"]}
        self._emit(ev.PhaseFinished(**entry, stopped=stopped))
        if lam is not None:
            entry["lam"] = lam  # what `resume --steps` continues a finetune with
        if stopped:
            entry["stopped"] = True
        self.history.append(entry)
        self.metrics.append({"type": "phase", **entry})

    def _fail(self, job: Job, message: str) -> None:
        """Report a failed job; a training job's session returns to its last save, plan included (held)."""
        self._log(message, "error")
        self._emit(ev.Failed(job.kind, message))
        if job.kind in TRAINING:
            try:
                self._roll_back()
                return
            except Exception as exc:  # noqa: BLE001 - the engine must stay usable even if the disk is not
                self._log(f"could not return to the last save: {exc}", "error")
        with self._cv:
            self._plan = []

    def _roll_back(self) -> None:
        """Return to the last save so that nothing bad (NaN weights, say) is saved over it."""
        session = read_session(self.path)
        state = load_checkpoint(self.path / session["checkpoint"])
        self.metrics.close()
        with self._cv:
            records = self._restore(session, state)
            self._held = bool(self._plan)
        self.metrics = MetricsLog(self.path / METRICS_FILE, records)
        self.trainer.take_loss()  # forget the failed steps' losses
        self._log(f"returned to the last save (step {self.trainer.step})"
                  + ("; its unfinished plan is kept: continue it, or give a new command" if self._held else ""))
        self._refresh_snapshot()

    def _finish(self) -> None:
        """Final save on close; the unfinished job (if any) stays in the plan for a later resume."""
        try:
            self._save("close")
        except Exception as exc:  # noqa: BLE001 - report, but closing must complete
            self._emit(ev.Failed("save", f"final save failed: {exc}"))
        self.metrics.close()
        self._lock.release()
        self._set_state(ev.CLOSED)
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def _save(self, reason: str) -> None:
        self.metrics.sync()
        name = write_checkpoint(self.path, self.trainer.step, {"trainer": self.trainer.state_dict()})
        with self._cv:
            plan = [j.to_dict() for j in self._plan]
        session = {
            "format_version": FORMAT_VERSION,
            "name": self.path.name,
            "saved_at": now_iso(),
            "config": self.config.to_dict(),
            "phase": self._phase(),
            "step": self.trainer.step,
            "epoch": self._epochs_done(),
            "checkpoint": name,
            "metrics_records": self.metrics.records,
            "plan": plan,
            "clusters": self.clusters.to_dict() if self.clusters else None,
            "history": self.history,
            "last": self._last,
            "device": str(self.device),
            "versions": versions(),
        }
        write_json(self.path / SESSION_FILE, session)
        if not self._checkpoints or self._checkpoints[-1] != name:
            self._checkpoints = (self._checkpoints + [name])[-2:]
        prune_checkpoints(self.path, set(self._checkpoints))
        self._refresh_snapshot()
        self._emit(ev.Saved(self.trainer.step, str(self.path), reason))

    def _phase(self) -> str:
        with self._cv:
            if self._plan:
                return self._plan[0].kind
        return self.history[-1]["phase"] if self.history else "new"

    def _refresh_snapshot(self) -> None:
        clusters = None
        if self.clusters is not None:
            rows, cols = self.clusters.row_labels, self.clusters.col_labels
            clusters = {"k": self.clusters.k, "source": self.clusters.source,
                        "row_sizes": self.clusters.row_sizes, "col_sizes": self.clusters.col_sizes,
                        "shares": cluster_shares(self.trainer.weight, rows, cols, self.clusters.k)}
        chance = (chance_level(self.clusters.row_labels, self.clusters.col_labels, self.clusters.k)
                  if self.clusters else None)
        snap = {
            "session": str(self.path),
            "dataset": self.config.dataset,
            "device": str(self.device),
            "phase": self._phase(),
            "step": self.trainer.step,
            "epoch": self._epochs_done(),
            "test_accuracy": self._last["test_accuracy"],
            "train_loss": self._last["train_loss"],
            "clusterability": (self.trainer.clusterability_of(self._mask) if self._mask is not None else None),
            "clusterability_chance": chance,
            "clusters": clusters,
            "params_sha256": params_sha256(self.trainer.model),
            "history": list(self.history),
            "config": self.config.to_dict(),
        }
        with self._cv:
            self._snapshot = snap

    def _set_state(self, state: str) -> None:
        with self._cv:
            previous, self._state = self._state, state
            self._cv.notify_all()
        if state != previous:
            self._emit(ev.StateChanged(state, previous))

    def _refuse(self, job: str, message: str) -> None:
        """A command that makes no sense now: a failure event (sent from the engine thread like every event),
        never an exception on the caller's thread."""
        with self._cv:
            if self._closed:
                return
            self._notices.append(ev.Failed(job, message))
            self._update_attention()

    def _log(self, message: str, level: str = "info") -> None:
        self._emit(ev.LogLine(level, message))

    def _emit(self, event: ev.Event) -> None:
        with self._cv:
            subscribers = list(self._subscribers)
        for callback in subscribers:
            try:
                callback(event)
            except Exception:  # noqa: BLE001 - a broken subscriber must not kill the engine
                log.exception("subscriber %r raised on %s", callback, type(event).__name__)

    def _enqueue(self, job: Job) -> None:
        with self._cv:
            if self._closing or self._closed:
                return
            if self._held:
                self._plan.clear()
                self._held = False
            self._plan.append(job)
            self._cv.notify_all()

    def _count_steps(self, job: str, epochs, steps, default_epochs, default_steps) -> int | None:
        try:
            if steps is not None:
                check_int("--steps", steps, 0)
                return int(steps)
            if epochs is not None:
                check_int("--epochs", epochs, 0)
                return int(epochs) * self.trainer.steps_per_epoch
        except ConfigError as exc:
            self._refuse(job, str(exc))
            return None
        if default_steps is not None:
            return int(default_steps)
        return int(default_epochs) * self.trainer.steps_per_epoch

    def _epochs_done(self) -> int:
        """Completed passes over the training set. Every epoch is exactly steps_per_epoch steps of one unbroken
        batch stream, so this is integer arithmetic on the step: safe to read from any thread, no torch."""
        return self.trainer.step // self.trainer.steps_per_epoch


def _check_clusters(clusters: Clusters, shape: tuple[int, int]) -> None:
    """Saved clusters must label every unit of the studied layer with one of k clusters."""
    rows, cols = clusters.row_labels, clusters.col_labels
    if (len(rows), len(cols)) != shape or not all(0 <= v < clusters.k for v in rows + cols):
        raise ValueError(f"its clusters do not fit the studied layer of shape {shape[0]}x{shape[1]}")


def params_sha256(model: torch.nn.Module) -> str:
    """SHA-256 of every parameter's name and float32 bytes, in order: equal hashes mean equal models."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def versions() -> dict:
    """Library versions recorded in session.json (read from package metadata: importing scipy and
    scikit-learn only to ask would add a second to every start)."""
    libs = {name: metadata.version(name) for name in ("torch", "numpy", "scipy", "scikit-learn")}
    return {"python": platform.python_version(), **libs, "platform": sys.platform}
