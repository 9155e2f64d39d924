"""One sweep member run to its end as an ordinary session: made from its parent's saved state, or resumed.

`run_member(settings) -> result` is a plain function of JSON values, so an executor may ship it to a worker;
the result is read back from the member's session on disk (`member_result`), so a member finished long ago and
one finished just now give the same row.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine import events as ev
from engine import phases
from engine.axes import point_of
from engine.config import Config
from engine.errors import ClusterlabError, SessionError
from engine.plan import CLUSTER, FINETUNE, PRETRAIN, Job
from engine.session import (
    SessionLock,
    claim_directory,
    copy_metrics,
    has_session,
    load_saved,
    read_snapshot,
    release_directory,
)
from engine.study import Study, state_sha256
from engine.sweep import FAILED, FINISHED, PHASES, UNFINISHED, member_figures, member_finished

Progress = Callable[[str, float], None]  # (member name, share of its job done)

# The jobs a new member runs, by kind; each takes its k, source and λ from the member's config.
MEMBER_JOBS: dict[str, Callable[[Study], list[Job]]] = {
    PRETRAIN: lambda study: study.jobs.pretraining(),
    CLUSTER: lambda study: study.jobs.clustering(),
    FINETUNE: lambda study: [study.jobs.finetune()],
}


class MemberHooks(phases.Hooks):
    """A member's running job: records go to its metrics log, autosaves keep the plan, a set `stop` ends it."""

    def __init__(self, study: Study, plan: list[Job], name: str, progress: Progress | None,
                 stop: threading.Event | None) -> None:
        self.study, self.plan, self.name, self.progress, self.stop = study, plan, name, progress, stop

    @property
    def attention(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    def attend(self) -> str | None:
        return "closed" if self.attention else None

    def emit(self, event: ev.Event) -> None:
        if self.progress is not None and isinstance(event, ev.Progress):
            self.progress(self.name, event.job_step / max(event.job_total, 1))

    def record(self, record: dict) -> None:
        self.study.metrics.append(record)

    def autosave(self) -> None:
        self.study.save(self.plan, self.plan[0].kind)


@dataclass
class OpenMember:
    """A member opened to run: its Study (resumed from its own save, or made from its parent's), the lock on its
    folder, and the jobs it has left."""

    settings: dict
    study: Study
    lock: SessionLock
    plan: list[Job]

    @property
    def name(self) -> str:
        return self.settings["name"]

    @property
    def path(self) -> Path:
        return self.study.path

    def hooks(self, progress: Progress | None, stop: threading.Event | None) -> MemberHooks:
        return MemberHooks(self.study, self.plan, self.name, progress, stop)

    def close(self) -> None:
        self.study.metrics.close()
        self.lock.release()


def run_member(settings: dict, progress: Progress | None = None, stop: threading.Event | None = None) -> dict:
    """Run one member (see `Member.settings`) to its end: its result; or {"name", "status": "failed", "error"};
    or {"name", "status": "unfinished"} if `stop` was set (it then resumes from its own last save next time)."""
    path = Path(settings["root"]) / settings["name"]
    if member_finished(path, settings["kind"]):
        return member_result(path, settings)
    try:
        member = open_member(settings)
    except ClusterlabError as exc:
        return failed(settings["name"], str(exc))
    return run_open_member(member, progress, stop)


def run_open_member(member: OpenMember, progress: Progress | None = None,
                    stop: threading.Event | None = None) -> dict:
    """Run the jobs an opened member has left, close it, and give its result (as `run_member`)."""
    try:
        finished = _run_plan(member.study, member.plan, member.hooks(progress, stop))
    except ClusterlabError as exc:  # the session keeps its last save; a rerun starts from there
        return failed(member.name, str(exc))
    except Exception as exc:  # noqa: BLE001 - one member's failure (OOM, say) must not end the sweep's other ones
        return failed(member.name, f"{type(exc).__name__}: {exc}")
    finally:
        member.close()
    return member_result(member.path, member.settings) if finished else unfinished(member.name)


def failed(name: str, error: str) -> dict:
    return {"name": name, "status": FAILED, "error": error}


def unfinished(name: str) -> dict:
    return {"name": name, "status": UNFINISHED}


def _run_plan(study: Study, plan: list[Job], hooks: MemberHooks) -> bool:
    """Run the plan's jobs, saving after each; False if the hooks stopped one (saved with it still planned)."""
    while plan:
        job = plan[0]
        if study.run(job, hooks) != "done":
            study.save(plan, job.kind)
            return False
        plan.pop(0)
        study.save(plan, plan[0].kind if plan else job.kind)
    return True


def open_member(settings: dict) -> OpenMember:
    """The member, locked, with the jobs it has left: resumed from its own save, or made new (and saved at once,
    so that from then on a kill resumes it from its own save). Raises ClusterlabError if it cannot be opened."""
    path = Path(settings["root"]) / settings["name"]
    config = Config.from_dict(settings["config"])
    if has_session(path):
        saved, checkpoint = load_saved(path)
        if saved.config != config or not saved.plan:
            raise SessionError(f"{path} was changed outside its sweep (other settings or history); remove it to run "
                               "this member again.")
        lock = SessionLock(path)
        try:
            return OpenMember(settings, Study(path, config, saved, checkpoint), lock, list(saved.plan))
        except BaseException:
            lock.release()
            raise
    lock = claim_directory(path)  # a creation cut before its first save starts over
    try:
        study = _new_study(path, config, settings)
        plan = MEMBER_JOBS[settings["kind"]](study)
        study.save(plan, plan[0].kind)
        return OpenMember(settings, study, lock, plan)
    except BaseException:
        release_directory(path, lock)
        raise


def _new_study(path: Path, config: Config, settings: dict) -> Study:
    """A new member's Study: fresh for a pretraining, else a copy of its parent's saved state and metrics log."""
    if settings["parent"] is None:
        return Study(path, config)
    parent = path.parent / settings["parent"]
    if not member_finished(parent, _parent_kind(settings["kind"])):
        raise SessionError(f"{parent} is not finished, so {path.name} cannot start from it.")
    saved, checkpoint = load_saved(parent)
    copy_metrics(parent, path)  # the member's charts show its whole story, its ancestors' steps first
    return Study(path, config, saved, checkpoint)


def _parent_kind(kind: str) -> str:
    return PHASES[kind][-2]


def member_result(path: Path, settings: dict) -> dict:
    """A finished member's row: its grid point, final figures and parameters' hash, and the significance and
    ablation figures its session holds (None where it has none)."""
    data, state = read_snapshot(path)
    return {
        "name": settings["name"], "kind": settings["kind"], **point_of(settings), "status": FINISHED,
        "step": data["step"], "params_sha256": state_sha256(state["trainer"]["model"]),
        **member_figures(data, settings["kind"]),
    }
