"""How big a sweep is before it starts: its members, counted from the number of values on each axis (no list of the
grid is made), with a rough estimate of its disk and time; a sweep of more than CONFIRM_ABOVE members needs --yes."""

from __future__ import annotations

from dataclasses import dataclass

from engine.config import Config, checkpoint_bytes, steps_per_epoch
from engine.errors import ConfigError
from engine.sweep import stage_counts

CONFIRM_ABOVE = 1_000  # members; a larger sweep starts only with --yes
# The engine's training step on this project's 2-core CPU machine, MNIST, 128x128 (`clusterlab bench`, README's
# Speed table: 2,052 and 2,287 steps/s): the time estimate's rate. Nulls, evaluations and saves come on top.
STEPS_PER_S = 2_000
CHECKPOINTS_KEPT = 2  # each member keeps its last two checkpoints (prune_checkpoints)


@dataclass(frozen=True)
class SweepSize:
    """A sweep's members per stage, and the disk (checkpoints, at most) and training time they need, roughly."""

    name: str
    pretrainings: int
    clusterings: int
    finetunings: int
    disk_bytes: int
    seconds: float

    @property
    def members(self) -> int:
        return self.pretrainings + self.clusterings + self.finetunings

    @property
    def large(self) -> bool:
        """More members than a sweep may have without --yes."""
        return self.members > CONFIRM_ABOVE

    def estimate(self) -> str:
        return (f"rough estimate: up to {_bytes(self.disk_bytes)} of checkpoints and {_duration(self.seconds)} of "
                f"training at {STEPS_PER_S:,} steps/s")

    def line(self) -> str:
        """What the sweep says before it starts."""
        stages = ", ".join(_count(n, what) for n, what in ((self.pretrainings, "pretraining"),
                                                           (self.clusterings, "clustering"),
                                                           (self.finetunings, "finetuning")))
        return f"Sweep {self.name}: {_count(self.members, 'member')} ({stages}); {self.estimate()}."

    def check(self, yes: bool) -> None:
        """Refuse (one sentence) a sweep of more than CONFIRM_ABOVE members that --yes did not accept."""
        if self.large and not yes:
            raise ConfigError(f"Sweep {self.name} has {self.members:,} members ({self.estimate()}), more than "
                              f"{CONFIRM_ABOVE:,}: add --yes to start it.")


def sweep_size(name: str, base: Config, counts: dict[str, int]) -> SweepSize:
    """The size of sweep `name` with settings `base` and `counts` values per axis (by name), from numbers alone.
    Disk: every member's two checkpoints at their largest (a dataset of MNIST's shape); time: the training steps
    (pretrainings by --steps or --epochs, finetunings by --finetune-epochs) at STEPS_PER_S."""
    pretrainings, clusterings, finetunings = stage_counts(counts)
    pretrain_steps = base.steps if base.steps is not None else base.epochs * steps_per_epoch(base)
    steps = pretrainings * pretrain_steps + finetunings * base.finetune_epochs * steps_per_epoch(base)
    members = pretrainings + clusterings + finetunings
    return SweepSize(name, pretrainings, clusterings, finetunings, members * CHECKPOINTS_KEPT * checkpoint_bytes(base),
                     steps / STEPS_PER_S)


def _count(n: int, what: str) -> str:
    return f"{n:,} {what}" + ("" if n == 1 else "s")


def _bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:,.0f} TB"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.2g} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 7_200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3_600:.0f} h"
    return f"{seconds / 86_400:,.0f} days"
