"""The batched executor: sweep members with the same shapes and data train side by side as one BatchedTrainer.

The sweep runs in waves, parents first: the pretrainings, then the clusterings, then the finetunings. In a training
wave, members whose settings differ only in seed and λ (only in λ where the data depend on the seed) and that stand
at the same step of the same job form a group, which one `engine.batched.BatchedTrainer` trains in lockstep: each
member its own batch order, λ and block mask. Everything else stays per member and goes through the member's own
`Study`: each evaluation (on the member's weights, copied out of the group), each finetuning epoch's shuffle null,
every save, and the end of the job — the group hands the job back to `run_open_member` with its steps done, which
runs the last evaluation, its null, the history entry and the ablation exactly as an in-process run does. Members
are therefore ordinary sessions, and on the CPU their weights equal their in-process runs' bit for bit (the
pretraining's gradient statistic F agrees to float rounding: the group sums it in another order).

A group saves all its members at each autosave. After a stop or a kill each member resumes from its own last save,
and the members found at the same step form a group again (a kill between two members' saves leaves them one
autosave apart: they then train as two groups). Clusterings run one at a time, as in-process: they train nothing.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from engine import phases
from engine.batched import BatchedTrainer, default_workers
from engine.errors import ClusterlabError
from engine.member import (
    MemberHooks,
    OpenMember,
    Progress,
    failed,
    open_member,
    run_member,
    run_open_member,
    unfinished,
)
from engine.plan import CLUSTER, FINETUNE, PRETRAIN
from engine.sweep import FINISHED

Report = Callable[[dict], None]
# Datasets that `engine.data.load_dataset` draws from the seed: members of different seeds see different data.
SEEDED_DATA = frozenset({"synthetic"})


class Batched:
    """Runs a sweep's members wave by wave, each training wave in groups (see the module docstring); a set `stop`
    ends the running group resumably and runs no more. `say` hears one line about how members were grouped."""

    def __init__(self, stop: threading.Event | None = None, say: Callable[[str], None] | None = None) -> None:
        self.stop = stop or threading.Event()
        self.say = say or (lambda text: None)

    def __call__(self, settings: list[dict], report: Report, progress: Progress) -> None:
        ended: dict[str, bool] = {}  # member name -> it finished

        def done(result: dict) -> None:
            ended[result["name"]] = result["status"] == FINISHED
            report(result)

        for kind in (PRETRAIN, CLUSTER, FINETUNE):
            wave = []
            for member in (s for s in settings if s["kind"] == kind):
                if ended.get(member["parent"], True):
                    wave.append(member)
                else:
                    done(failed(member["name"], f"not run: {member['parent']} did not finish"))
            groups = [[member] for member in wave] if kind == CLUSTER else self._groups(wave)
            for group in groups:
                if self.stop.is_set():
                    return
                if len(group) == 1:
                    done(run_member(group[0], progress, self.stop))
                else:
                    self._run_group(group, done, progress)

    def _groups(self, wave: list[dict]) -> list[list[dict]]:
        """The wave's members by everything but seed and λ (and the seed too where the data depend on it)."""
        groups: dict[str, list[dict]] = {}
        for member in wave:
            groups.setdefault(_group_key(member), []).append(member)
        seeded = {m["config"]["dataset"] for m in wave} & SEEDED_DATA
        if seeded and len({m["seed"] for m in wave}) > 1:
            self.say(f"{', '.join(sorted(seeded))} data depend on the seed, so members of different seeds train "
                     f"one seed at a time ({wave[0]['kind']}).")
        return list(groups.values())

    def _run_group(self, group: list[dict], done: Report, progress: Progress) -> None:
        """Open the group's members and train those at the same point together."""
        points: dict[tuple, list[OpenMember]] = {}
        data = None
        for settings in group:
            try:
                member = open_member(settings)
            except ClusterlabError as exc:
                done(failed(settings["name"], str(exc)))
                continue
            study = member.study
            if data is None:
                data = study.data
            else:  # the group's members hold one copy of their (identical) data, not one each
                study.data = study.trainer.data = data
            job = member.plan[0]
            points.setdefault((study.trainer.step, job.kind, job.done, job.total), []).append(member)
        for members in points.values():
            if self.stop.is_set():
                for member in members:
                    member.close()
                continue
            if len(members) == 1:
                done(run_open_member(members[0], progress, self.stop))
            else:
                _train_together(members, done, progress, self.stop)


def _group_key(settings: dict) -> str:
    config = dict(settings["config"])
    seed, _ = config.pop("seed"), config.pop("lam")
    return json.dumps([settings["kind"], config, seed if config["dataset"] in SEEDED_DATA else None], sort_keys=True)


def _train_together(members: list[OpenMember], done: Report, progress: Progress, stop: threading.Event) -> None:
    """Train the members' common job as one group, then finish each as an ordinary member; report every one."""
    run = None
    try:
        run = _GroupRun(members, progress, stop, done)
        outcome = run.train()
    except Exception as exc:  # noqa: BLE001 - as in-process: the members fail, keeping their last saves
        error = str(exc) if isinstance(exc, ClusterlabError) else f"{type(exc).__name__}: {exc}"
        for member in members if run is None else run.members:  # a diverged member was reported already
            member.close()
            done(failed(member.name, error))
        return
    for member in run.members:
        if outcome == "done":
            done(run_open_member(member, progress, stop))  # its job's steps are done: this ends the job
        else:
            member.study.save(member.plan, member.plan[0].kind)
            member.close()
            done(unfinished(member.name))


@dataclass
class _Losses:
    """One member's loss since the last report, as the trainer that `phases._report` reads it from."""

    loss: float | None
    step: int
    steps_per_epoch: int

    def take_loss(self) -> float | None:
        return self.loss


class _GroupRun:
    """`phases.train`'s loop for a group: the steps on the BatchedTrainer; evaluations, loss reports and autosaves
    per member, on the member's Study. The last evaluation is left to the member's own job (see module doc)."""

    def __init__(self, members: list[OpenMember], progress: Progress, stop: threading.Event, done: Report) -> None:
        self.members = members
        self.hooks: list[MemberHooks] = [m.hooks(progress, stop) for m in members]
        self.stop, self.done = stop, done
        first = members[0].study
        self.config, self.kind = first.config, members[0].plan[0].kind
        self.trainer = self._group([m.study.trainer.state_dict() for m in members])
        self.masks, self.lams = self._regulariser()

    def _group(self, states: list[dict]) -> BatchedTrainer:
        first = self.members[0].study
        return BatchedTrainer.from_state_dicts(self.config, first.data, first.device, states,
                                               default_workers(first.device))

    def _regulariser(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The members' block masks and λs for a finetuning (None for a pretraining)."""
        if self.kind != FINETUNE:
            return None, None
        return (torch.stack([m.study.mask for m in self.members]),
                torch.tensor([m.plan[0].lam for m in self.members], dtype=self.trainer.weight.dtype,
                             device=self.trainer.device))

    def train(self) -> str:
        """'done' with every member's job stepped to its total (not yet ended), or 'closed' on a stop."""
        job = self.members[0].plan[0]
        total = job.total
        steps_per_epoch = self.trainer.steps_per_epoch
        last_report, reported_at = time.monotonic(), self.trainer.step
        while self.members and self.members[0].plan[0].done < total:
            if self.stop.is_set():
                self._report(last_report, reported_at)
                self._sync()
                return "closed"
            self.trainer.train_step(self.masks, self.lams, capture=self.kind == PRETRAIN)
            for member in self.members:
                member.plan[0].done += 1
            step, last = self.trainer.step, self.members[0].plan[0].done == total
            if not last and (step % self.config.eval_every == 0 or step % steps_per_epoch == 0):
                self._evaluate(step % steps_per_epoch == 0)
            now = time.monotonic()
            if now - last_report >= phases.REPORT_INTERVAL_S or last or step % self.config.autosave_every == 0:
                self._report(last_report, reported_at)
                last_report, reported_at = now, step
            if step % self.config.autosave_every == 0 and not last:
                self._sync()
                for hooks in self.hooks:
                    hooks.autosave()
        if self.members:
            self._sync()
        return "done"

    def _sync(self) -> None:
        """Copy the group's state into each member's own Trainer (whose Study evaluates and saves it)."""
        for member, state in zip(self.members, self.trainer.state_dicts(), strict=True):
            member.study.trainer.load_state_dict(state)

    def _evaluate(self, epoch_end: bool) -> None:
        self._sync()
        for member, hooks in zip(self.members, self.hooks, strict=True):
            study = member.study
            phases.evaluate(study.trainer, self.kind, study.mask if self.kind == FINETUNE else None, study.figures,
                            hooks)
            if self.kind == FINETUNE and epoch_end:  # as the in-process finetune: each epoch's null
                study.test_null(self.kind, hooks)

    def _report(self, since: float, since_step: int) -> None:
        """Each member's loss record and progress; a member whose loss is no longer finite fails, as alone."""
        losses = self.trainer.take_loss()
        if losses is None:
            return
        diverged = []
        for i, (member, hooks, loss) in enumerate(zip(self.members, self.hooks, losses, strict=True)):
            try:
                phases._report(_Losses(loss, self.trainer.step, self.trainer.steps_per_epoch), member.plan[0],
                               member.study.figures, hooks, since, since_step)
            except ClusterlabError as exc:
                diverged.append((i, str(exc)))
        if diverged:
            self._drop(diverged)

    def _drop(self, diverged: list[tuple[int, str]]) -> None:
        """End the diverged members (keeping their last saves) and go on with the rest as a new group."""
        states = self.trainer.state_dicts()
        gone = {i for i, _ in diverged}
        for i, error in diverged:
            self.members[i].close()
            self.done(failed(self.members[i].name, error))
        keep = [i for i in range(len(self.members)) if i not in gone]
        self.members = [self.members[i] for i in keep]
        self.hooks = [self.hooks[i] for i in keep]
        if self.members:
            self.trainer = self._group([states[i] for i in keep])
            self.masks, self.lams = self._regulariser()
