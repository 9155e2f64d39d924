"""The Engine: one session's model, data and plan, run job by job on its own thread, reported as events.

Commands (any thread) only edit the plan or set a request under `_cv` and return at once; the engine thread runs
the plan through its `Study` and serves requests at step boundaries; every event is emitted on it.

Over 400 lines on purpose: this is the one module where threads meet. The commands, the requests they leave and
the loop that serves them share one lock and one set of invariants (see `wait`), and read best side by side.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from engine import events as ev
from engine import phases
from engine.config import Config
from engine.device import cuda_available, resolve_device
from engine.errors import ClusterlabError, ConfigError, SessionError
from engine.plan import ABLATE, CLUSTER, CONTROL, FINETUNE, SIGNIFICANCE, TRAINING, Job, Plan
from engine.session import (
    SavedState,
    SessionLock,
    claim_directory,
    load_checkpoint,
    parse_session,
    read_metrics,
    read_session,
    release_directory,
    remove_stale_temps,
)
from engine.snapshot import Snapshot
from engine.study import Study, params_sha256

__all__ = ["Engine", "params_sha256"]
log = logging.getLogger("clusterlab")
Subscriber = Callable[[ev.Event], None]
CLOSE_NOTICE_S = 5.0  # close() says on stderr that it is still saving after this long
FIGURES_INTERVAL_S = 1.0  # while finetuning, the picture and shares are recomputed at most this often


@dataclass
class Requests:
    """What commands ask of the engine thread, served at the next step boundary (or at once when idle)."""

    pause: bool = False
    stop: bool = False
    closing: bool = False
    save: bool = False
    notices: list[ev.Event] = field(default_factory=list)  # refusals, emitted from the engine thread

    @property
    def any(self) -> bool:
        return self.pause or self.stop or self.closing or self.save or bool(self.notices)


class _Hooks(phases.Hooks):
    """The engine's side of a running phase: its requests, its subscribers, its metrics log and autosave."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @property
    def attention(self) -> bool:  # read every step: one attribute, no lock
        return self.engine._attention

    def attend(self) -> str | None:
        return self.engine._attend()

    def emit(self, event: ev.Event) -> None:
        self.engine._emit(event)
        if isinstance(event, ev.Evaluated) and event.clusterability is not None:
            self.engine._refresh_figures(FIGURES_INTERVAL_S)

    def record(self, record: dict) -> None:
        self.engine.study.metrics.append(record)

    def autosave(self) -> None:
        self.engine._save("autosave")


class Engine:
    """A clustering experiment session driven by commands that return at once."""

    def __init__(self, path: Path, config: Config, lock: SessionLock, saved: SavedState | None,
                 checkpoint: dict | None) -> None:
        self._lock = lock
        self.study = Study(path, config, saved, checkpoint)
        self.path, self.config, self.device = self.study.path, config, self.study.device
        self.plan = Plan(list(self.study.plan), held=bool(self.study.plan))
        self._subscribers: list[Subscriber] = []
        self._subscriber_errors: dict[int, int] = {}
        self._cv = threading.Condition()
        self._req = Requests()
        self._attention = False  # == self._req.any, kept as one plain attribute for the per-step check
        self._state = ev.IDLE
        self._running: Job | None = None
        self._settled = True  # idle, with every event of the finished work delivered
        self._closed = False
        self._hooks = _Hooks(self)
        self._figures_at = 0.0
        if saved is None:
            self._save("created")
        else:
            self._figures_view = self.study.figures_view()
        self._thread = threading.Thread(target=self._loop, name="clusterlab-engine", daemon=True)
        self._thread.start()

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
        saved = parse_session(path, read_session(path))
        if saved.config.device == "cuda" and not cuda_available():
            # Saved on a GPU, continued here on the CPU (and on a GPU again wherever there is one).
            saved.config = saved.config.replace(device="auto")
        lock = SessionLock(path)
        try:
            remove_stale_temps(path)  # left by a process killed mid-save; ours to delete now that we hold the lock
            checkpoint = load_checkpoint(path / saved.checkpoint)
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

    def continue_plan(self, epochs: int | None = None, steps: int | None = None) -> None:
        """Run the saved, unfinished plan; with epochs/steps, first extend its current training phase."""
        extra = 0
        if epochs is not None or steps is not None:
            try:
                extra = self.study.jobs.count(epochs, steps, 0, None)
            except ConfigError as exc:
                self._refuse("train", str(exc))
                return  # the plan stays held
        with self._cv:
            self.plan.held = False
            if extra:
                clusters = self.study.clusters
                again = self.study.jobs.clustering(clusters.k, clusters.source) if clusters is not None else None
                self.plan.extend(extra, self.study.history, again, self.config.lam)
            if self.plan.runnable():
                self._settled = False
            self._cv.notify_all()

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

    def _wake(self) -> None:
        """Under _cv: refresh the per-step flag and wake the engine thread."""
        self._attention = self._req.any
        if self._req.notices or self._req.save:
            self._settled = False
        self._cv.notify_all()

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

    # ----- engine thread -------------------------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            while (job := self._next_job()) is not None:
                outcome = self._run_job(job)
                with self._cv:
                    if outcome in ("done", "stopped"):
                        self.plan.finish(job)
                    self._running = None
                    self._req.stop = False
                    self._wake()
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
                if self._req.closing:
                    return None
                if self.plan.runnable():
                    self._running = self.plan.jobs[0]
                    self._req.pause = False  # a pause is for a running job: a leftover one must not hold this one
                    self._wake()
                    return self._running
                notices, save = self._take_requests()
            if notices or save:
                self._serve(notices, save, ev.IDLE)
                continue
            self._set_state(ev.IDLE)
            with self._cv:
                if not (self._req.notices or self._req.save or self.plan.runnable()):
                    self._settled = True  # every event of the work so far has been delivered
                    self._cv.notify_all()
                while not (self._req.closing or self.plan.runnable() or self._req.notices or self._req.save):
                    self._cv.wait()

    def _take_requests(self) -> tuple[list[ev.Event], bool]:
        """Under _cv: the pending notices and save request, now taken."""
        notices, self._req.notices = self._req.notices, []
        save, self._req.save = self._req.save, False
        self._wake()
        return notices, save

    def _serve(self, notices: list[ev.Event], save: bool, state: str) -> None:
        for notice in notices:
            self._emit(notice)
        if save:
            self._set_state(ev.SAVING)
            self._save("request")
            self._set_state(state)

    def _attend(self) -> str | None:
        """At a step boundary: serve requests and wait out a pause (then back to the job's state); 'stopped' or
        'closed' if the job ends."""
        state, paused = self._state, False
        while True:
            with self._cv:
                if self._req.closing or self._req.stop:
                    return "closed" if self._req.closing else "stopped"
                notices, save = self._take_requests()
                pausing = self._req.pause
            if notices or save:
                self._serve(notices, save, ev.PAUSED if paused else state)
                continue
            if not pausing:
                break
            if not paused:
                self._set_state(ev.PAUSED)
                paused = True
            with self._cv:
                while self._req.pause and not (self._req.closing or self._req.stop or self._req.notices
                                               or self._req.save):
                    self._cv.wait()
        if paused:
            self._set_state(state)
        return None

    def _run_job(self, job: Job) -> str:
        """Run one job: 'done', 'stopped', 'closed' (it stays in the plan) or 'failed'."""
        try:
            if self.plan.to_list() != self.study.saved_plan:
                self._save("plan")  # a kill from now on resumes this plan, not the one before it
            self._set_state(STATES.get(job.kind, ev.TRAINING))
            return self.study.run(job, self._hooks)
        except ClusterlabError as exc:
            self._fail(job, str(exc))
        except Exception as exc:  # noqa: BLE001 - any failure of a job (OOM, bad data) must leave the engine alive
            log.debug("job %s failed", job.kind, exc_info=True)
            self._fail(job, f"{type(exc).__name__}: {exc}")
        return "failed"

    def _save_after(self, job: Job, outcome: str) -> None:
        """Save once the ended job is out of the plan, so a resume never runs it again."""
        try:
            self._save("phase" if outcome == "done" else "stopped")
        except Exception as exc:  # noqa: BLE001 - a full disk must not kill the engine; the last save stands
            self._emit(ev.Failed("save", f"saving after {job.kind} failed: {exc}"))

    def _fail(self, job: Job, message: str) -> None:
        """Report a failed job; the session returns to its last save, plan included (held)."""
        self._log(message, "error")
        self._emit(ev.Failed(job.kind, message))
        if job.kind in TRAINING:
            try:
                self._roll_back()
                return
            except Exception as exc:  # noqa: BLE001 - the engine must stay usable even if the disk is not
                self._log(f"could not return to the last save: {exc}", "error")
        with self._cv:
            self.plan = Plan()

    def _roll_back(self) -> None:
        """Return to the last save (its plan held) so that nothing bad (NaN weights, say) is saved over it."""
        self.study.roll_back()
        with self._cv:
            self.plan = Plan(list(self.study.plan), held=bool(self.study.plan))
        self._log(f"returned to the last save (step {self.study.trainer.step})"
                  + ("; its unfinished plan is kept: continue it, or give a new command" if self.plan.held else ""))
        self._refresh_figures()

    def _finish(self) -> None:
        """Final save on close; the unfinished job (if any) stays in the plan for a later resume."""
        try:
            self._save("close")
        except Exception as exc:  # noqa: BLE001 - report, but closing must complete
            self._emit(ev.Failed("save", f"final save failed: {exc}"))
        self.study.metrics.close()
        self._lock.release()
        self._set_state(ev.CLOSED)
        for callback_id, count in self._subscriber_errors.items():
            if count > 1:
                log.warning("subscriber %#x raised %d more times", callback_id, count - 1)
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def _save(self, reason: str) -> None:
        with self._cv:
            plan = [Job(**j.to_dict()) for j in self.plan.jobs]
        self.study.save(plan, self._phase())
        self._refresh_figures()
        self._emit(ev.Saved(self.study.trainer.step, str(self.path), reason))

    def _refresh_figures(self, unless_within: float = 0.0) -> None:
        """Recompute the snapshot's figures from the weights (on the engine thread, which owns them)."""
        now = time.monotonic()
        if now - self._figures_at < unless_within:
            return
        view = self.study.figures_view()
        with self._cv:
            self._figures_view = view
        self._figures_at = now
        self._emit(ev.FiguresUpdated(self.study.trainer.step))

    def _phase(self) -> str:
        with self._cv:
            if self.plan.jobs:
                return self.plan.jobs[0].kind
        return self.study.history[-1]["phase"] if self.study.history else "new"

    def _set_state(self, state: str) -> None:
        with self._cv:
            previous, self._state = self._state, state
            self._cv.notify_all()
        if state != previous:
            self._emit(ev.StateChanged(state, previous))

    def _log(self, message: str, level: str = "info") -> None:
        self._emit(ev.LogLine(level, message))

    def _emit(self, event: ev.Event) -> None:
        with self._cv:
            subscribers = list(self._subscribers)
        for callback in subscribers:
            try:
                callback(event)
            except Exception:  # noqa: BLE001 - a broken subscriber must not kill the engine
                count = self._subscriber_errors.get(id(callback), 0) + 1
                self._subscriber_errors[id(callback)] = count
                if count == 1:  # its first traceback says why; the rest are only counted
                    log.exception("subscriber %r raised on %s (further errors are counted, not shown)",
                                  callback, type(event).__name__)


# The state a job of each kind runs in (the rest train).
STATES = {FINETUNE: ev.FINETUNING, CONTROL: ev.FINETUNING, CLUSTER: ev.CLUSTERING, ABLATE: ev.CLUSTERING,
          SIGNIFICANCE: ev.CLUSTERING}
