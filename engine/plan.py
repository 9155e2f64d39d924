"""The plan: the queue of jobs a session still has to run, its edits, and the one place defaults are filled in."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from engine.config import Config

PRETRAIN, CLUSTER, CONTROL, FINETUNE = "pretrain", "cluster", "control", "finetune"
ABLATE, SIGNIFICANCE = "ablate", "significance"
JOB_KINDS = (PRETRAIN, CLUSTER, SIGNIFICANCE, CONTROL, FINETUNE, ABLATE)
TRAINING = (PRETRAIN, CONTROL, FINETUNE)  # jobs that take optimizer steps, counted so a saved plan resumes mid-job


@dataclass
class Job:
    """One entry of the plan, every setting filled in when it was queued."""

    kind: str
    total: int = 0
    done: int = 0
    lam: float | None = None
    k: int | None = None
    source: str | None = None

    def to_dict(self) -> dict:
        return {key: value for key, value in asdict(self).items() if value is not None}


class Jobs:
    """Makes jobs from a command's arguments, filling in the session config's defaults and checking the result
    exactly as the config checks its fields (so a bad value reads the same as the flag's error)."""

    def __init__(self, config: Config, steps_per_epoch: int) -> None:
        self.config = config
        self.steps_per_epoch = steps_per_epoch

    def pretrain(self, epochs: int | None = None, steps: int | None = None) -> Job:
        return Job(PRETRAIN, total=self.count(epochs, steps, self.config.epochs, self.config.steps))

    def pretraining(self) -> list[Job]:
        """The config's pretraining: its pretrain job, then with --prune-recover the recovery epochs (a second
        pretrain job, run with the pruned weights held at zero; pruning happens at each pretrain job's end)."""
        recover = [Job(PRETRAIN, total=self.config.prune_recover * self.steps_per_epoch)]
        return [self.pretrain(), *(recover if self.config.prune_recover else [])]

    def cluster(self, k: int | None = None, source: str | None = None) -> Job:
        checked = self.config.replace(**_given(k=k, cluster_on=source))
        return Job(CLUSTER, k=checked.k, source=checked.cluster_on)

    def clustering(self, k: int | None = None, source: str | None = None) -> list[Job]:
        """A clustering and what always follows it: its shuffle null (unless the config turns the null off)."""
        return [self.cluster(k, source)] + ([self.significance()] if self.config.null_samples else [])

    def finetune(self, epochs: int | None = None, lam: float | None = None) -> Job:
        checked = self.config.replace(**_given(lam=lam))
        return Job(FINETUNE, total=self.count(epochs, None, self.config.finetune_epochs, None), lam=float(checked.lam))

    def ablate(self) -> Job:
        return Job(ABLATE)

    def significance(self) -> Job:
        """The shuffle null of a clustering: its own job, so that pause and stop act on it."""
        return Job(SIGNIFICANCE)

    def control(self, finetune: Job) -> Job:
        """The λ=0 twin of `finetune`: as many steps, from the same state."""
        return Job(CONTROL, total=finetune.total, lam=0.0)

    def default_plan(self) -> list[Job]:
        """The config's whole plan: pretrain, cluster, and finetune if it has epochs (after its control if the
        config asks for one)."""
        jobs = [*self.pretraining(), *self.clustering()]
        if self.config.finetune_epochs > 0:
            finetune = self.finetune()
            jobs += [self.control(finetune), finetune] if self.config.control else [finetune]
        return jobs

    def count(self, epochs: int | None, steps: int | None, default_epochs: int, default_steps: int | None) -> int:
        """Optimizer steps: `steps` if given, else `epochs` whole epochs, else the defaults the same way."""
        if steps is not None:
            return self.config.replace(steps=steps).steps
        if epochs is not None:
            return self.config.replace(epochs=epochs).epochs * self.steps_per_epoch
        return default_steps if default_steps is not None else default_epochs * self.steps_per_epoch


@dataclass
class Plan:
    """The queued jobs. A reopened session's unfinished plan is `held` until continued; any new command
    replaces a held plan."""

    jobs: list[Job] = field(default_factory=list)
    held: bool = False
    hold_at: Job | None = None  # the plan holds again when this job is next (see train_more)

    def add(self, job: Job) -> None:
        if self.held:
            self.jobs.clear()
            self.held = False
        if self.hold_at is not None:  # a new command replaces the rest that was to be held
            del self.jobs[self._index(self.hold_at):]
            self.hold_at = None
        self.jobs.append(job)

    def pending(self) -> list[Job]:
        """The jobs that will run (none while held)."""
        return [] if self.held else self.jobs

    def runnable(self) -> bool:
        return bool(self.jobs) and not self.held

    def train_more(self, extra: int, history: list[dict], reclustering: list[Job] | None,
                   default_lam: float) -> list[Job]:
        """Queue `extra` more steps of the current training phase (the unfinished pretraining or finetune at the
        plan's head, else the last phase the session trained in) and hold the rest of the plan again once they are
        done, so `train N more` never also runs what was left. More pretraining makes held clusters stale, so
        `reclustering` (the jobs that cluster the layer again; None when no clusters are held) follows it. Returns
        the jobs queued to run now."""
        rest = self.jobs
        head = rest[0] if rest and rest[0].kind in (PRETRAIN, FINETUNE) else None
        if head is None:
            head = Job(PRETRAIN)
            for entry in reversed(history):
                if entry["phase"] in (PRETRAIN, FINETUNE):
                    head = Job(entry["phase"], lam=default_lam if entry.get("lam") is None else entry["lam"])
                    break
            if head.kind == FINETUNE and reclustering is None:
                head = Job(PRETRAIN)  # a finetune needs clusters; without them, more training is pretraining
        more = [Job(head.kind, total=extra, lam=head.lam)] if extra else []
        if more and head.kind == PRETRAIN and reclustering is not None:
            more += reclustering
        self.jobs, self.held = more + rest, not more and bool(rest)
        self.hold_at = rest[0] if more and rest else None
        return more

    def finish(self, job: Job) -> None:
        """Take an ended job out of the plan (stop() may already have dropped what came after it)."""
        if self.jobs and self.jobs[0] is job:
            self.jobs.pop(0)
        if self.hold_at is not None and (not self.jobs or self.jobs[0] is self.hold_at):
            self.held, self.hold_at = bool(self.jobs), None

    def _index(self, job: Job) -> int:
        return next((i for i, queued in enumerate(self.jobs) if queued is job), len(self.jobs))

    def clusters_coming(self) -> bool:
        return any(j.kind == CLUSTER for j in self.pending())

    def to_list(self) -> list[dict]:
        return [j.to_dict() for j in self.jobs]


def _given(**values: object) -> dict:
    return {key: value for key, value in values.items() if value is not None}
