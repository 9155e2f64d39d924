"""The engine thread: it runs an Engine's plan job by job through its Study, serves the commands' requests at step
boundaries (or at once when idle), saves, and emits every event.

`EngineThread` is the thread's side of `engine.engine.Engine`, which adds the opening and the commands; both sides
share one lock (`_cv`), the requests under it and one invariant: `_settled` is True only while idle with every
event of the work so far delivered (what `Engine.wait` waits for).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from engine import events as ev
from engine import phases
from engine.errors import ClusterlabError
from engine.plan import ABLATE, CLUSTER, CONTROL, FINETUNE, SIGNIFICANCE, TRAINING, Job, Plan
from engine.session import SessionLock
from engine.study import Study

log = logging.getLogger("clusterlab")
Subscriber = Callable[[ev.Event], None]
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

    def __init__(self, engine: EngineThread) -> None:
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


class EngineThread:
    """The engine thread's side of an Engine (see the module docstring): its requests, state and subscribers."""

    path: Path
    study: Study
    plan: Plan
    _figures_view: dict

    def __init__(self, lock: SessionLock) -> None:
        self._lock = lock
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

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="clusterlab-engine", daemon=True)
        self._thread.start()

    def _wake(self) -> None:
        """Under _cv: refresh the per-step flag and wake the engine thread."""
        self._attention = self._req.any
        if self._req.notices or self._req.save:
            self._settled = False
        self._cv.notify_all()

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
        """Final save on close, if anything changed since the last; the unfinished job (if any) stays in the plan
        for a later resume."""
        try:
            with self._cv:
                changed = self.study.unsaved(list(self.plan.jobs))
            if changed:
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
