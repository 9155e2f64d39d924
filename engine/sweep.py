"""A sweep's grid, its members as a tree of sessions, and its manifest on disk (no torch here).

Layout under the sessions root, for a sweep NAME:

    NAME/sweep.json                    the manifest: settings, grid, member names (and table.csv, table.json)
    NAME.s1/                           seed 1 pretrained                      (an ordinary session)
    NAME.s1.weights.k2/                a copy of NAME.s1, clustered on weights with k=2
    NAME.s1.weights.k2.lam0/           a copy of NAME.s1.weights.k2, finetuned with λ=0 (the control)
    NAME.s1.weights.k2.lam3/           ... finetuned with λ=3

Members are siblings of the sweep folder, so `clusterlab resume NAME.s1.weights.k2.lam3` and the UI open them
like any session. The sweep folder holds no session.json: `is_sweep` tells the two apart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from engine.config import Config, check_int, check_lam, check_source
from engine.errors import ConfigError, SessionError
from engine.measures import upgraded
from engine.plan import CLUSTER, FINETUNE, PRETRAIN, TRAINING
from engine.session import SESSION_FILE, check_name, now_iso, write_json

SWEEP_FILE = "sweep.json"
SWEEP_FORMAT_VERSION = 1
GRID_OPTIONS = ("seed", "k", "cluster_on", "lam")  # Config fields a sweep varies; the rest are its settings
# A member result's "status": finished (with its figures), failed (with an "error"), or unfinished (stopped, or not
# reached yet): it resumes from its own last save on the next run.
FINISHED, FAILED, UNFINISHED = "finished", "failed", "unfinished"
# The phases a finished member's history holds, by the kind of its own job (its ancestors' come first).
PHASES = {PRETRAIN: (PRETRAIN,), CLUSTER: (PRETRAIN, CLUSTER), FINETUNE: (PRETRAIN, CLUSTER, FINETUNE)}


@dataclass(frozen=True)
class Grid:
    """What a sweep varies. λ=0, the control, is always among the lams."""

    seeds: tuple[int, ...]
    sources: tuple[str, ...]
    ks: tuple[int, ...]
    lams: tuple[float, ...]

    def to_dict(self) -> dict:
        return {"seeds": list(self.seeds), "sources": list(self.sources), "k": list(self.ks), "lam": list(self.lams)}

    @classmethod
    def from_dict(cls, data: dict) -> Grid:
        return make_grid(data["seeds"], data["sources"], data["k"], data["lam"])


def make_grid(seeds, sources, ks, lams) -> Grid:
    """A checked grid: distinct values, seeds and k whole numbers, λ ≥ 0 with 0 added; ks and λs ascending."""
    for seed in seeds:
        check_int("--seeds", seed, 0)
    for source in sources:
        check_source(source)
    for k in ks:
        check_int("--k", k, 2)
    for lam in lams:
        check_lam(lam)
    if not (seeds and sources and ks):
        raise ConfigError("A sweep needs at least one seed, one k and one --cluster-on source.")
    return Grid(tuple(dict.fromkeys(seeds)), tuple(dict.fromkeys(sources)), tuple(sorted(set(ks))),
                tuple(sorted({0.0, *map(float, lams)})))


def parse_seeds(text: str) -> list[int]:
    """'5' means five seeds, 1 to 5; a comma-separated list ('1,2,7', or '7,' for seed 7 alone) names them."""
    if "," not in text:
        count = _parse_int("--seeds", text)
        check_int("--seeds", count, 1)
        return list(range(1, count + 1))
    return parse_list("--seeds", text, int)


def parse_list(flag: str, text: str, kind: type) -> list:
    """A comma-separated list of numbers or words, each parsed as `kind`; at least one."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise ConfigError(f"{flag} needs at least one value, as a comma-separated list.")
    if kind is str:
        return parts
    return [_parse_int(flag, p) if kind is int else _parse_float(flag, p) for p in parts]


def _parse_int(flag: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{flag} must be whole numbers, comma-separated, not {text!r}.") from None


def _parse_float(flag: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{flag} must be numbers, comma-separated, not {text!r}.") from None


def lam_text(lam: float) -> str:
    """λ as a name part: 3.0 -> '3', 0.25 -> '0.25' (the shortest text that reads back as the same float)."""
    text = f"{lam:g}"
    return text if float(text) == lam else repr(lam)


@dataclass(frozen=True)
class Member:
    """One session of the sweep's tree: a pretraining, a clustering of its seed's pretrained state, or a
    finetuning of a clustering. `parent` names the member whose saved state it starts from."""

    name: str
    kind: str
    seed: int
    source: str | None = None
    k: int | None = None
    lam: float | None = None
    parent: str | None = None

    def config(self, base: Config) -> Config:
        """The member's settings: the sweep's, with its seed and (from clustering on) its k, source and λ."""
        changes: dict = {"seed": self.seed}
        if self.kind != PRETRAIN:
            changes.update(k=self.k, cluster_on=self.source)
        if self.kind == FINETUNE:
            changes["lam"] = self.lam
        return base.replace(**changes)

    def settings(self, base: Config, root: Path) -> dict:
        """Everything `engine.member.run_member` needs, as plain JSON values: it can be shipped to a worker."""
        return {"root": str(root), "name": self.name, "kind": self.kind, "seed": self.seed, "source": self.source,
                "k": self.k, "lam": self.lam, "parent": self.parent, "config": self.config(base).to_dict()}


def plan_members(name: str, grid: Grid) -> list[Member]:
    """The sweep's members seed by seed, each after its parent (the order a single process runs them in)."""
    members = []
    for seed in grid.seeds:
        pretrained = Member(f"{name}.s{seed}", PRETRAIN, seed)
        members.append(pretrained)
        for source in grid.sources:
            for k in grid.ks:
                clustered = Member(f"{pretrained.name}.{source}.k{k}", CLUSTER, seed, source, k,
                                   parent=pretrained.name)
                members.append(clustered)
                members += [Member(f"{clustered.name}.lam{lam_text(lam)}", FINETUNE, seed, source, k, lam,
                                   parent=clustered.name) for lam in grid.lams]
    return members


def check_members(name: str, base: Config, members: list[Member]) -> None:
    """Every member name is a valid session name and every member's settings are valid (k fits the layer, say),
    before any work starts."""
    check_name(name)
    for member in members:
        try:
            check_name(member.name)
        except SessionError:
            raise ConfigError(f"The sweep name {name!r} is too long for its member names (such as {member.name!r}, "
                              "over 64 characters); choose a shorter name.") from None
        member.config(base)


def member_finished(directory: Path, kind: str) -> bool:
    """A member is finished when its session has no plan left and its history holds its phases, in order."""
    try:
        data = json.loads((directory / SESSION_FILE).read_text())
        phases = [e["phase"] for e in data["history"]
                  if e.get("phase") in (*TRAINING, CLUSTER) and not e.get("stopped")]
        return not data["plan"] and tuple(phases) == PHASES[kind]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def member_figures(data: dict, kind: str) -> dict:
    """A finished member's figures from its session.json: those of its own phase's last history entry, and the
    ablation its session holds."""
    own = next(e for e in reversed(data["history"]) if e.get("phase") == kind)
    return {"test_accuracy": own.get("test_accuracy"), "clusterability": own.get("clusterability"),
            "significance": upgraded(own.get("significance")), "ablation": data.get("ablation")}


# ----- the manifest ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Manifest:
    """A sweep's record of itself: the settings every member shares and the grid."""

    name: str
    base: Config
    grid: Grid

    def to_dict(self, created_at: str) -> dict:
        return {"format_version": SWEEP_FORMAT_VERSION, "kind": "sweep", "name": self.name, "created_at": created_at,
                "updated_at": now_iso(), "settings": _settings(self.base), "grid": self.grid.to_dict(),
                "members": [m.name for m in plan_members(self.name, self.grid)]}


def _settings(config: Config) -> dict:
    return {key: value for key, value in config.to_dict().items() if key not in GRID_OPTIONS}


def is_sweep(directory: Path) -> bool:
    return (directory / SWEEP_FILE).is_file()


def read_manifest(directory: Path) -> dict:
    """The raw manifest, checked for the fields this version needs; one SessionError naming the file otherwise."""
    path = directory / SWEEP_FILE
    try:
        data = json.loads(path.read_text())
        if data.get("format_version", 0) > SWEEP_FORMAT_VERSION:
            raise SessionError(f"{path} is from a newer clusterlab; upgrade clusterlab to continue this sweep.")
        Config.from_dict(data["settings"])
        Grid.from_dict(data["grid"])
        return data
    except FileNotFoundError:
        raise SessionError(f"{directory} is not a sweep (it has no {SWEEP_FILE}); start one with "
                           "'clusterlab sweep NAME --seeds N'.") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SessionError(f"{path} is corrupt ({exc}); the sweep cannot be continued.") from None


def resolve_manifest(directory: Path, name: str, given: dict, grid_given: dict) -> tuple[Manifest, str]:
    """The sweep to run and when it was created: a new one from the flags, or the saved one continued. Settings
    given for a saved sweep must equal its own (its members were trained with them); its grid may change.
    `given` holds the settings flags given (Config field -> value), `grid_given` the grid flags given."""
    if not is_sweep(directory):
        if directory.exists() and any(directory.iterdir()):
            raise SessionError(f"{directory} exists and is not a sweep (a session of that name?); choose another "
                               "sweep name.")
        if "seeds" not in grid_given:
            raise ConfigError(f"Sweep {name} does not exist yet: give --seeds N (or a list) to start it.")
        base = Config(**given)
        grid = make_grid(grid_given["seeds"], grid_given.get("sources", ["weights"]),
                         grid_given.get("ks", [base.k]), grid_given.get("lams", [base.lam]))
        return Manifest(name, base, grid), now_iso()
    data = read_manifest(directory)
    saved = Config.from_dict(data["settings"])
    base = saved.replace(**given)
    differ = [key for key, value in _settings(base).items() if value != _settings(saved)[key]]
    if differ:
        flags = ", ".join(f"--{key.replace('_', '-')} (was {_settings(saved)[key]!r})" for key in differ)
        raise ConfigError(f"Sweep {name} was made with other settings: {flags}. Continue it with "
                          f"'clusterlab sweep {name}' alone, or choose another name.")
    old = Grid.from_dict(data["grid"])
    grid = make_grid(grid_given.get("seeds", old.seeds), grid_given.get("sources", old.sources),
                     grid_given.get("ks", old.ks), grid_given.get("lams", old.lams))
    return Manifest(name, saved, grid), str(data.get("created_at") or now_iso())


def write_manifest(directory: Path, manifest: Manifest, created_at: str) -> None:
    write_json(directory / SWEEP_FILE, manifest.to_dict(created_at))


def sweep_row(directory: Path) -> dict:
    """What `clusterlab sessions` shows for a sweep folder: its grid and how many members are finished."""
    try:
        data = read_manifest(directory)
    except SessionError as exc:
        return {"name": directory.name, "kind": "sweep", "error": str(exc)}
    kinds = {m.name: m.kind for m in plan_members(directory.name, Grid.from_dict(data["grid"]))}
    done = sum(member_finished(directory.parent / n, kind) for n, kind in kinds.items())
    return {"name": directory.name, "kind": "sweep", "dataset": data["settings"].get("dataset"),
            "grid": data["grid"], "members": list(kinds), "finished": done, "saved_at": data.get("updated_at")}
