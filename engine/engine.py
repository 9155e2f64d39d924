"""The Engine: one session's model, data and plan, run job by job on its own thread, reported as events.

Commands (any thread) only edit the plan or set a request under `_cv` and return at once; the engine thread
(engine/engine_thread.py) runs the plan through its `Study`, serves requests at step boundaries and emits every
event.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from engine import events as ev
from engine.config import Config
from engine.device import cuda_available, resolve_device
from engine.engine_thread import EngineThread, Subscriber
from engine.errors import ClusterlabError, ConfigError, SessionError
from engine.plan import TRAINING, Job, Plan
from engine.session import (
    SavedState,
    SessionLock,
    claim_directory,
    load_saved,
    read_metrics,
    read_session,
    release_directory,
    remove_stale_temps,
)
from engine.snapshot import Snapshot
from engine.study import Study, params_sha256

__all__ = ["Engine", "params_sha256"]
CLOSE_NOTICE_S = 5.0  # close() says on stderr that it is still saving after this long


class Engine(EngineThread):
    """A clustering experiment session driven by commands that return at once."""

    def __init__(self, path: Path, config: Config, lock: SessionLock, saved: SavedState | None,
                 checkpoint: dict | None) -> None:
        self.study = Study(path, config, saved, checkpoint)
        self.path, self.config, self.device = self.study.path, config, self.study.device
        self.plan = Plan(list(self.study.plan), held=bool(self.study.plan))
        super().__init__(lock)
        if saved is None:
            self._save("created")
        else:
            self._figures_view = self.study.figures_view()
        self._start()

    # ----- opening -------------------------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | Path, config: Config) -> Engine:
        """Start a new session in `path`; refuses a path that holds a session or anything else, and never
        touches what a concurrent creator of the same path made."""
        path = Path(path)
        resolve_device(config.device)
        lock = claim_directory(path)
        try:
            return cls(path, config, lock, None, None)
        except BaseException as exc:
            release_directory(path, lock)
            if isinstance(exc, OSError):
                raise SessionError(f"Could not save the new session in {path}: {exc}.") from None
            raise

    @classmethod
    def open(cls, path: str | Path) -> Engine:
        """Open an existing session exactly where it was last saved."""
        path = Path(path)
        read_session(path, log=False)  # not a session, or a damaged session.json: refused before a lock file is made
        lock = SessionLock(path)
        try:
            remove_stale_temps(path)  # left by a process killed mid-save; ours to delete now that we hold the lock
            # Read under the lock: the save another process may have made since the check above is the one to open.
            saved, checkpoint = load_saved(path)
            if saved.config.device == "cuda" and not cuda_available():
                # Saved on a GPU, continued here on the CPU (and on a GPU again wherever there is one).
                saved.config = saved.config.replace(device="auto")
            return cls(path, saved.config, lock, saved, checkpoint)
        except ClusterlabError as exc:
            lock.release()
            if isinstance(exc, SessionError):
                raise
            raise SessionError(f"Session {path} cannot be opened: {exc}") from None
        except BaseException:
            lock.release()
            raise

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
        self._queue("train", lambda: [self.study.jobs.pretrain(epochs, steps)])

    def cluster(self, k: int | None = None, source: str | None = None) -> None:
        """Queue co-clustering of the studied layer on 'weights' or 'gradients', then its shuffle null."""
        self._queue("cluster", lambda: self.study.jobs.clustering(k, source))

    def finetune(self, epochs: int | None = None, lam: float | None = None) -> None:
        """Queue regularised finetuning (loss = CE - lam * clusterability) with the clusters held fixed."""
        self._queue("finetune", lambda: [self.study.jobs.finetune(epochs, lam)], needs_clusters=True)

    def plan_default(self) -> None:
        """Queue the config's whole plan: pretrain, cluster, finetune (if any epochs)."""
        for job in self.study.jobs.default_plan():
            self._enqueue(job)

    def continue_plan(self, epochs: int | None = None, steps: int | None = None) -> list[dict]:
        """Run the saved, unfinished plan; with epochs/steps, instead train that much more of the current phase
        (then cluster again after more pretraining), and keep the unfinished plan held for a later continue.
        Returns the jobs it queued to run now (none if refused)."""
        extra = None
        if epochs is not None or steps is not None:
            try:
                extra = self.study.jobs.count(epochs, steps, 0, None)
            except ConfigError as exc:
                self._refuse("train", str(exc))
                return []  # the plan stays held
        with self._cv:
            if extra is None:
                self.plan.held = False
                queued = self.plan.pending()
            else:
                clusters = self.study.clusters
                again = self.study.jobs.clustering(clusters.k, clusters.source) if clusters is not None else None
                queued = self.plan.train_more(extra, self.study.history, again, self.config.lam)
            if self.plan.runnable():
                self._settled = False
            self._cv.notify_all()
            return [job.to_dict() for job in queued]

    def pause(self) -> None:
        """Pause the running training job at the next step boundary (nothing to do while idle)."""
        with self._cv:
            self._req.pause = True
            self._wake()

    def resume(self) -> None:
        with self._cv:
            self._req.pause = False
            self._wake()

    def stop(self) -> None:
        """End the running job at the next step boundary and drop the queued ones."""
        with self._cv:
            self.plan.jobs = [self._running] if self._running else []
            self.plan.held = False
            self._req.stop = self._running is not None
            self._req.pause = False
            self._wake()

    def ablate(self) -> None:
        """Queue a cluster ablation (it also follows every clustering and finetune by itself)."""
        self._queue("ablate", lambda: [self.study.jobs.ablate()], needs_clusters=True)

    def set_picture_size(self, rows: int, cols: int) -> None:
        """The largest block picture the caller can show; snapshots carry one of that size from the next update."""
        self.study.picture_size = (max(1, int(rows)), max(1, int(cols)))

    def save(self) -> None:
        """Save as soon as possible: now if idle, else at the next step boundary (never mid-step)."""
        with self._cv:
            if not self._closed:
                self._req.save = True
                self._wake()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until idle with nothing queued and every event of the work done so far delivered to every
        subscriber (True), or until `timeout` seconds pass (False)."""
        with self._cv:
            return self._cv.wait_for(lambda: self._closed or self._settled, timeout)

    def snapshot(self) -> Snapshot:
        """The session now: live state, step, plan and allowed commands; figures as of the last evaluation,
        job end or save."""
        with self._cv:
            view = self._figures_view
            return Snapshot(
                **view,
                state=self._state,
                phase=self._phase(),
                step=self.study.trainer.step,
                epoch=self.study.epochs_done,
                plan=tuple(self.plan.to_list()),
                held=self.plan.held,
                allowed=self._allowed(),
            )

    @property
    def state(self) -> str:
        return self._state

    @property
    def name(self) -> str:
        return self.path.name

    def metrics_history(self) -> list[dict]:
        """The session's metrics log as records ("train", "eval", "clusters", "phase"), to rebuild charts."""
        return read_metrics(self.study.metrics.path)

    def close(self) -> None:
        """Stop at the next step boundary (an unfinished job stays in the plan), save, join the thread. Never
        returns while a save is being written, however long it takes."""
        with self._cv:
            if self._closed:
                return
            self._req.closing = True
            self._wake()
        self._thread.join(CLOSE_NOTICE_S)
        if self._thread.is_alive():
            print(f"clusterlab: still saving {self.path}…", file=sys.stderr, flush=True)
            self._thread.join()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----- command helpers (any thread) -----------------------------------------------------------------------

    def _queue(self, what: str, make: Callable[[], list[Job]], needs_clusters: bool = False) -> None:
        """Make a command's jobs and queue them, or refuse the command with a Failed event."""
        try:
            jobs = make()
        except ConfigError as exc:
            self._refuse(what, str(exc))
            return
        if needs_clusters:
            with self._cv:
                clusters_coming = self.study.clusters is not None or self.plan.clusters_coming()
            if not clusters_coming:
                self._refuse(what, f"{what.capitalize()} needs clusters: cluster the layer first.")
                return
        for job in jobs:
            self._enqueue(job)

    def _enqueue(self, job: Job) -> None:
        with self._cv:
            if self._req.closing or self._closed:
                return
            self.plan.add(job)
            self._settled = False
            self._cv.notify_all()

    def _refuse(self, job: str, message: str) -> None:
        """A command that makes no sense now: a failure event (sent from the engine thread like every event),
        never an exception on the caller's thread."""
        with self._cv:
            if self._closed:
                return
            self._req.notices.append(ev.Failed(job, message))
            self._wake()

    def _allowed(self) -> frozenset[str]:
        """Under _cv: the commands that make sense now."""
        if self._closed or self._req.closing:
            return frozenset()
        running = self._running
        if running is None and not self.plan.runnable() and self._state == ev.IDLE:
            allowed = {"train", "cluster", "save"}
            if self.study.clusters is not None:
                allowed.add("finetune")
            if self.plan.held:
                allowed.add("continue")
            return frozenset(allowed)
        if running is not None and running.kind in TRAINING:
            return frozenset({"stop", "resume" if self._req.pause else "pause"})
        return frozenset({"stop"}) if running is not None else frozenset()
