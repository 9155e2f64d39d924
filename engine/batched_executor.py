"""The batched executor: sweep members with the same shapes and data train side by side as one Trainer of M models.

The sweep runs in waves, parents first: the pretrainings, then the clusterings, then the finetunings. In a training
wave, members whose settings differ only in seed and λ (only in λ where the data depend on the seed) and that stand
at the same step of the same job form a group, which one `engine.trainer.Trainer` of M models trains in lockstep
(each member its own batch order, λ and block mask), driven by the same `phases.run` as a session's job with one
lane per member. Everything else stays per member and goes through the member's own `Study`: each finetuning
epoch's shuffle null and every save (on the member's state, copied out of the group), and the end of the job —
the group hands the job back to `run_open_member` with its steps done, which runs the last evaluation, its null,
the history entry and the ablation exactly as an in-process run does. Members are therefore ordinary sessions,
and on the CPU their weights, and their gradient statistic F, equal their in-process runs' bit for bit.

A group saves all its members at each autosave. After a stop or a kill each member resumes from its own last save,
and the members found at the same step form a group again (a kill between two members' saves leaves them one
autosave apart: they then train as two groups). Clusterings run one at a time, as in-process: they train nothing.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Callable

import torch

from engine import events as ev
from engine import phases
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
from engine.trainer import Trainer, default_workers

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
    if config.get("layer") == "all" or config.get("prune"):  # their steps are a session's own: they run alone
        return json.dumps(settings["name"])
    seed, _ = config.pop("seed"), config.pop("lam")
    return json.dumps([settings["kind"], config, seed if config["dataset"] in SEEDED_DATA else None], sort_keys=True)


def _train_together(members: list[OpenMember], done: Report, progress: Progress, stop: threading.Event) -> None:
    """Train the members' common job as one group, then finish each as an ordinary member; report every one."""
    group = None
    try:
        group = _Group(members, progress, stop, done)
        outcome = phases.run(group.trainer, group.lanes, group.settings)
        for member in group.members:
            group.sync(member)
    except Exception as exc:  # noqa: BLE001 - as in-process: the members fail, keeping their last saves
        error = str(exc) if isinstance(exc, ClusterlabError) else f"{type(exc).__name__}: {exc}"
        for member in members if group is None else group.members:  # a diverged member was reported already
            member.close()
            done(failed(member.name, error))
        return
    for member in group.members:
        if outcome == "done":
            done(run_open_member(member, progress, stop))  # its job's steps are done: this ends the job
        else:
            member.study.save(member.plan, member.plan[0].kind)
            member.close()
            done(unfinished(member.name))


class _Group:
    """A group's one Trainer of M models and its members' lanes for `phases.run`: the steps, evaluations and loss
    reports on the group's trainer; each epoch's null and every autosave on the member's own Study, whose Trainer
    gets the member's state first. The last evaluation is left to the member's own job (see module doc)."""

    def __init__(self, members: list[OpenMember], progress: Progress, stop: threading.Event, done: Report) -> None:
        self.members = list(members)  # those still training, in the trainer's order
        self.done = done
        first, job = members[0].study, members[0].plan[0]
        self.trainer = Trainer.from_state_dicts(first.config, first.data, first.device,
                                                [m.study.trainer.state_dict() for m in members],
                                                default_workers(first.device))
        finetune = job.kind == FINETUNE
        self.settings = phases.TrainSettings(
            job.kind, torch.stack([m.study.mask for m in members]) if finetune else None,
            tuple(float(m.plan[0].lam) for m in members) if finetune else 0.0, capture=job.kind == PRETRAIN,
            eval_every=first.config.eval_every, autosave_every=first.config.autosave_every, evaluate_end=False)
        self.lanes = [phases.Lane(m.plan[0], m.study.figures, _MemberLane(self, m, m.hooks(progress, stop)),
                                  functools.partial(self._fail, m)) for m in members]

    def sync(self, member: OpenMember) -> None:
        """Copy the member's state from the group into its own Trainer (whose Study saves it and tests its null)."""
        member.study.trainer.load_state_dict(self.trainer.state_dicts([self.members.index(member)])[0])

    def _fail(self, member: OpenMember, error: str) -> None:
        """A member whose loss diverged ends as alone (keeping its last save); the group goes on without it."""
        self.members.remove(member)
        member.close()
        self.done(failed(member.name, error))


class _MemberLane(phases.Passing):
    """A member's hooks in its group: as alone, and its Study's Trainer synced before it saves or tests a null."""

    def __init__(self, group: _Group, member: OpenMember, hooks: MemberHooks) -> None:
        super().__init__(hooks)
        self.group, self.member = group, member

    def emit(self, event: ev.Event) -> None:
        self.hooks.emit(event)
        study = self.member.study
        if (isinstance(event, ev.Evaluated) and event.phase == FINETUNE
                and event.step % study.trainer.steps_per_epoch == 0):  # as the in-process finetune: each epoch's null
            self.group.sync(self.member)
            study.test_null(event.phase, self.hooks)

    def autosave(self) -> None:
        self.group.sync(self.member)
        self.hooks.autosave()
