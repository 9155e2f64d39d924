"""The frozen view of a session that `Engine.snapshot()` hands to any thread: figures, plan and what is allowed."""

from __future__ import annotations

from dataclasses import dataclass, field

# Commands a caller may give; `Snapshot.allowed` says which make sense now.
COMMANDS = ("train", "continue", "cluster", "finetune", "save", "pause", "resume", "stop")


@dataclass(frozen=True)
class Snapshot:
    """Everything a UI or a script shows about a session at one moment. Never mutated: a new one replaces it.

    Step, epoch, state, plan and `allowed` are live; the figures are those of the last evaluation, job end or
    save. `to_dict()` gives exactly the keys of `clusterlab run --json`.
    """

    session: str
    name: str
    dataset: str
    device: str
    state: str
    phase: str
    step: int
    epoch: int
    test_accuracy: float | None
    train_loss: float | None
    clusterability: float | None
    clusterability_chance: float | None
    clusters: dict | None  # k, source, row_sizes, col_sizes, shares
    cluster_step: int | None  # the step the held clusters were found at
    params_sha256: str
    history: tuple[dict, ...]
    config: dict
    plan: tuple[dict, ...]
    held: bool  # a reopened session's unfinished plan waits for `continue`
    control: dict | None = None  # the λ=0 twin's test_accuracy, clusterability, step, params_sha256
    accuracy_cost: float | None = None  # control accuracy minus finetuned accuracy
    ablation: dict | None = None  # per-class accuracy drops of each cluster (engine/ablation.py)
    significance: dict | None = None  # every measure against its shuffle null: NullResult.to_dict()
    stability: dict | None = None  # `clusterlab stability` of the held clusters (engine/stability.py)
    picture: object = None  # engine.picture.BlockPicture of the studied layer by cluster, or None
    # The step the figures (clusterability, shares, picture) were computed at: the live step moves on ahead.
    # `significance` and `ablation` each say their own step (their "step" key).
    figures_step: int | None = None
    allowed: frozenset[str] = field(default_factory=frozenset)

    def to_dict(self) -> dict:
        return {
            "session": self.session,
            "dataset": self.dataset,
            "device": self.device,
            "phase": self.phase,
            "step": self.step,
            "epoch": self.epoch,
            "test_accuracy": self.test_accuracy,
            "train_loss": self.train_loss,
            "clusterability": self.clusterability,
            "clusterability_chance": self.clusterability_chance,
            "significance": self.significance,
            "clusters": self.clusters,
            "params_sha256": self.params_sha256,
            "history": list(self.history),
            "config": self.config,
            "plan": list(self.plan),
            "control": self.control,
            "accuracy_cost": self.accuracy_cost,
            "ablation": self.ablation,
        }
