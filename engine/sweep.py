"""A sweep's grid, its members as a tree of sessions, and its manifest on disk (no torch here).

Layout under the sessions root, for a sweep NAME:

    NAME/sweep.json                    the manifest: settings, grid, member names (and table.csv, table.json)
    NAME.s1/                           seed 1 pretrained                      (an ordinary session)
    NAME.s1.weights.k2/                a copy of NAME.s1, clustered on weights with k=2
    NAME.s1.weights.k2.lam0/           a copy of NAME.s1.weights.k2, finetuned with λ=0 (the control)
    NAME.s1.weights.k2.lam3/           ... finetuned with λ=3

Members are siblings of the sweep folder, so `clusterlab resume NAME.s1.weights.k2.lam3` and the UI open them
like any session. The sweep folder holds no session.json: `is_sweep` tells the two apart. What the grid varies
and how each value names a member is declared in engine/axes.py (a sweep that varies --hidden has members such
as NAME.s1.h32x32.weights.k2.lam3).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from itertools import product
from pathlib import Path

from engine.axes import AXES, BY_KEY, STAGES, Axis, Span, joined
from engine.config import Config
from engine.errors import ConfigError, SessionError
from engine.measures import upgraded
from engine.plan import CLUSTER, FINETUNE, PRETRAIN, TRAINING
from engine.session import (
    atomic_write,
    check_folder,
    check_name,
    now_iso,
    peek_session,
    read_bytes,
    write_json,
)

SWEEP_FILE = "sweep.json"
TABLE_JSON, TABLE_CSV = "table.json", "table.csv"
# 2: the grid may hold an axis that version 1 did not know (hidden, lr, epochs); a sweep without one is written as 1.
SWEEP_FORMAT_VERSION = 2
# A member result's "status": finished (with its figures), failed (with an "error"), or unfinished (stopped, or not
# reached yet): it resumes from its own last save on the next run.
FINISHED, FAILED, UNFINISHED = "finished", "failed", "unfinished"
# The phases a finished member's history holds, by the kind of its own job (its ancestors' come first).
PHASES = {PRETRAIN: (PRETRAIN,), CLUSTER: (PRETRAIN, CLUSTER), FINETUNE: (PRETRAIN, CLUSTER, FINETUNE)}
# run_sweep's grid keys as earlier versions spelt them
_OLD_KEYS = {"ks": "k", "lams": "lam"}
Accept = Callable[[Config, dict[str, int]], None]  # sees a grid's settings and size before it is listed; may refuse


@dataclass(frozen=True)
class Grid:
    """What a sweep varies: each axis in it (engine.axes) and its values. λ=0, the control, is always among the
    λs; an axis other than seed, source, k and λ is in the grid only when the sweep varies it."""

    values: dict[str, tuple]  # axis name -> values, in AXES order

    @property
    def axes(self) -> list[Axis]:
        return [axis for axis in AXES if axis.name in self.values]

    def to_dict(self) -> dict:
        return {axis.key: list(self.values[axis.name]) for axis in self.axes}

    @classmethod
    def from_dict(cls, data: dict) -> Grid:
        return make_grid(data)

    @property
    def version(self) -> int:
        """The manifest format that holds this grid: 1 while it varies only what version 1 knew."""
        return 1 if all(axis.always for axis in self.axes) else SWEEP_FORMAT_VERSION


def make_grid(given: dict, accept: Callable[[dict[str, int]], None] | None = None) -> Grid:
    """A checked grid from values by manifest key (engine.axes): every `always` axis
    must be there; values distinct, checked, ascending where the axis is ordered, λ=0 added. `accept`, if given,
    sees how many values each axis has (by name) before any value is listed, and may refuse the grid by raising."""
    unknown = sorted(set(given) - set(BY_KEY))
    if unknown:
        raise ConfigError(f"A sweep has no axis {', '.join(unknown)}; its axes are {', '.join(BY_KEY)}.")
    if not all(given.get(axis.key) for axis in AXES if axis.always):
        raise ConfigError("A sweep needs at least one seed, one k and one --cluster-on source.")
    if accept is not None:
        accept({axis.name: axis.count(given[axis.key]) for axis in AXES if axis.key in given})
    return Grid({axis.name: axis.values(given[axis.key]) for axis in AXES if axis.key in given})


def stage_counts(counts: dict[str, int]) -> tuple[int, ...]:
    """Members per stage (pretrainings, clusterings, finetunings) of a grid with `counts` values per axis (by
    name): each stage's count is the one before times its own axes' values (plan_members' tree), no list made."""
    total, per_stage = 1, []
    for stage in STAGES:
        for axis in AXES:
            if axis.stage == stage and axis.name in counts:
                total *= counts[axis.name]
        per_stage.append(total)
    return tuple(per_stage)


@dataclass(frozen=True)
class Member:
    """One session of the sweep's tree: a pretraining, a clustering of a pretrained state, or a finetuning of a
    clustering. `point` holds its values on the grid's axes that apply at its stage; `parent` names the member
    whose saved state it starts from."""

    name: str
    kind: str
    point: dict
    parent: str | None = None

    def row(self) -> dict:
        """The member's name, kind and grid point; an axis of every sweep that does not apply yet is None."""
        return {"name": self.name, "kind": self.kind,
                **{axis.name: None for axis in AXES if axis.always}, **self.point}

    def config(self, base: Config) -> Config:
        """The member's settings: the sweep's, with the member's values on the axes that apply to it."""
        return base.replace(**{axis.field: self.point[axis.name] for axis in AXES if axis.name in self.point})

    def settings(self, base: Config, root: Path) -> dict:
        """Everything `engine.member.run_member` needs, as plain JSON values: it can be shipped to a worker."""
        return {"root": str(root), **self.row(), "parent": self.parent, "config": self.config(base).to_dict()}


def plan_members(name: str, grid: Grid) -> list[Member]:
    """The sweep's members, each followed by its children (the order a single process runs them in): per point
    of the pretraining axes a pretraining, per point of the clustering axes a clustering of it, per λ a
    finetuning of that. A name adds each axis's part to its parent's: NAME.s1, NAME.s1.weights.k2, ...lam3."""
    members: list[Member] = []

    def grow(stage: int, parent: Member | None) -> None:
        axes = [axis for axis in grid.axes if axis.stage == STAGES[stage]]
        for combination in product(*(grid.values[axis.name] for axis in axes)):
            point = {**(parent.point if parent else {}), **{a.name: v for a, v in zip(axes, combination, strict=True)}}
            parts = [parent.name if parent else name, *(a.part(v) for a, v in zip(axes, combination, strict=True))]
            member = Member(".".join(parts), STAGES[stage], point, parent.name if parent else None)
            members.append(member)
            if stage + 1 < len(STAGES):
                grow(stage + 1, member)

    grow(0, None)
    return members


def check_members(name: str, base: Config, members: list[Member], root: Path) -> None:
    """Every member name is a valid session name, no member's folder is a link (out of the sessions root) or a
    file, and every member's settings are valid (k fits the layer, say), before any work starts."""
    check_name(name)
    for member in members:
        check_folder(root / member.name, "sweep member's session folder")
        try:
            check_name(member.name)
        except SessionError:
            raise ConfigError(f"The sweep name {name!r} is too long for its member names (such as {member.name!r}, "
                              "over 64 characters); choose a shorter name.") from None
        member.config(base)


def member_finished(directory: Path, kind: str) -> bool:
    """A member is finished when its session has no plan left and its history holds its phases, in order (a phase
    run as two jobs, pretraining and its recovery after pruning, counts once)."""
    try:
        data = peek_session(directory)
        phases = [e["phase"] for e in data["history"]
                  if e.get("phase") in (*TRAINING, CLUSTER) and not e.get("stopped")]
        ran = tuple(p for i, p in enumerate(phases) if not i or p != phases[i - 1])  # recovery is a 2nd pretrain
        return not data["plan"] and ran == PHASES[kind]
    except (SessionError, KeyError, TypeError):
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
        return {"format_version": self.grid.version, "kind": "sweep", "name": self.name, "created_at": created_at,
                "updated_at": now_iso(), "settings": _settings(self.base, self.grid), "grid": self.grid.to_dict(),
                "members": [m.name for m in plan_members(self.name, self.grid)]}


def _settings(config: Config, grid: Grid) -> dict:
    """What every member shares: the config less the fields the grid's axes set."""
    fields = {axis.field for axis in grid.axes} | {axis.field for axis in AXES if axis.always}
    return {key: value for key, value in config.to_dict().items() if key not in fields}


def is_sweep(directory: Path) -> bool:
    return os.path.lexists(directory / SWEEP_FILE)  # a link too: read_manifest refuses it


def read_manifest(directory: Path) -> dict:
    """The raw manifest, checked for the fields this version needs; one SessionError naming the file otherwise.
    Neither the folder nor sweep.json is followed through a symbolic link."""
    path = directory / SWEEP_FILE
    check_folder(directory, "sweep folder")
    try:
        text = read_bytes(path, "sweep manifest")
        if text is None:
            raise FileNotFoundError
        data = json.loads(text)
        if data.get("format_version", 0) > SWEEP_FORMAT_VERSION:
            raise SessionError(f"{path} is from a newer clusterlab; upgrade clusterlab to continue this sweep.")
        _check_fields(path, data["settings"], data["grid"])
        return data
    except FileNotFoundError:
        raise SessionError(f"{directory} is not a sweep (it has no {SWEEP_FILE}); start one with "
                           "'clusterlab sweep NAME --seeds N'.") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SessionError(f"{path} is corrupt ({exc}); the sweep cannot be continued.") from None


def _check_fields(path: Path, settings: dict, grid: dict) -> None:
    """The manifest's settings and grid, each field checked alone (so that a message can name it), then each grid
    value against the settings (k against the layer's width, say); one SessionError naming the file and field."""
    def bad(field: str, exc: Exception) -> SessionError:
        return SessionError(f"{path} has an invalid {field} ({str(exc).rstrip('.')}); fix it, or start another "
                            "sweep.")

    for key, value in settings.items():
        try:
            Config.from_dict({key: value})
        except (ConfigError, TypeError) as exc:
            raise bad(f"settings.{key}", exc) from None
    try:
        base = Config.from_dict(settings)
    except (ConfigError, TypeError) as exc:
        raise bad("settings", exc) from None
    for key, values in grid.items():
        axis = BY_KEY.get(_OLD_KEYS.get(key, key))
        if axis is None or not isinstance(values, list):
            raise bad(f"grid.{key}", TypeError(f"not a list of a sweep axis's values: {values!r}"))
        try:
            for value in axis.values(values):
                base.replace(**{axis.field: value})
        except (ConfigError, TypeError) as exc:
            raise bad(f"grid.{key}", exc) from None
    Grid.from_dict(grid)


def read_grid(directory: Path) -> Grid:
    return Grid.from_dict(read_manifest(directory)["grid"])


def resolve_manifest(directory: Path, name: str, given: dict, grid_given: dict,
                     accept: Accept | None = None) -> tuple[Manifest, str]:
    """The sweep to run and when it was created: a new one from the flags, or the saved one continued. Settings
    given for a saved sweep must equal its own (its members were trained with them); values given for its grid join
    the saved ones (a grid only grows).
    `given` holds the settings given (Config field -> value), `grid_given` the axis values given (by manifest key).
    An axis that only some sweeps have (hidden, lr, epochs) given one value is a setting, unless the saved sweep
    varies it; a saved sweep that does not vary it refuses more than one. `accept(base, counts)` sees the
    settings and the number of values per axis of the grid to run before any of it is listed (make_grid)."""
    grid_given = _by_axis(grid_given)
    check_folder(directory, "sweep folder")
    if not is_sweep(directory):
        if directory.exists() and any(directory.iterdir()):
            raise SessionError(f"{directory} exists and is not a sweep (a session of that name?); choose another "
                               "sweep name.")
        if "seed" not in grid_given:
            raise ConfigError(f"Sweep {name} does not exist yet: give --seeds N (or a list) to start it.")
        given, grid_given = _as_settings(given, grid_given, lambda axis: len(axis.values(grid_given[axis.name])) > 1)
        base = Config(**given)
        grid = _grid(grid_given, lambda axis: axis.default(base) if axis.default else None, base, accept)
        return Manifest(name, base, grid), now_iso()
    data = read_manifest(directory)
    old = Grid.from_dict(data["grid"])
    for axis in AXES:
        if axis.name in grid_given and axis.name not in old.values and len(axis.values(grid_given[axis.name])) > 1:
            raise ConfigError(f"Sweep {name} does not vary {axis.flag}; start another sweep to vary it.")
    given, grid_given = _as_settings(given, grid_given, lambda axis: axis.name in old.values)
    saved = Config.from_dict(data["settings"])
    base = saved.replace(**given)
    before, now = _settings(saved, old), _settings(base, old)
    differ = [key for key, value in now.items() if value != before[key]]
    if differ:
        flags = ", ".join(f"--{key.replace('_', '-')} (was {before[key]!r})" for key in differ)
        raise ConfigError(f"Sweep {name} was made with other settings: {flags}. Continue it with "
                          f"'clusterlab sweep {name}' alone, or choose another name.")
    # A grid only grows: values given join the saved ones, so a smaller grid never drops a finished member.
    grown = {axis: joined(old.values.get(axis, ()), values) for axis, values in grid_given.items()}
    grid = _grid(grown, lambda axis: old.values.get(axis.name), saved, accept)
    return Manifest(name, saved, grid), str(data.get("created_at") or now_iso())


def _by_axis(grid_given: dict) -> dict:
    """`grid_given` (by manifest key, or as earlier versions spelt it) by axis name."""
    by_name = {}
    for key, values in grid_given.items():
        axis = BY_KEY.get(_OLD_KEYS.get(key, key))
        if axis is None:
            raise ConfigError(f"A sweep has no axis {key!r}; its axes are {', '.join(BY_KEY)}.")
        by_name[axis.name] = values if isinstance(values, Span) else list(values)  # a Span stays two numbers
    return by_name


def _as_settings(given: dict, grid_given: dict, is_axis) -> tuple[dict, dict]:
    """Move the values of optional axes that are no axis of this sweep (`is_axis` false) into the settings."""
    given, grid_given = dict(given), dict(grid_given)
    for axis in AXES:
        if not axis.always and axis.name in grid_given and not is_axis(axis):
            given[axis.field] = axis.values(grid_given.pop(axis.name))[0]
    return given, grid_given


def _grid(grid_given: dict, otherwise, base: Config, accept: Accept | None) -> Grid:
    """The grid of the axes given, and of the others the values `otherwise(axis)` gives (None: not an axis)."""
    values = {}
    for axis in AXES:
        chosen = grid_given.get(axis.name, otherwise(axis))
        if chosen is not None:
            values[axis.key] = chosen
    return make_grid(values, None if accept is None else lambda counts: accept(base, counts))


def write_manifest(directory: Path, manifest: Manifest, created_at: str) -> None:
    write_json(directory / SWEEP_FILE, manifest.to_dict(created_at))


def write_table(directory: Path, table: dict, csv_text: str) -> None:
    """The sweep's result table as JSON (members and rows) and CSV (rows), each written atomically."""
    write_json(directory / TABLE_JSON, table)
    atomic_write(directory / TABLE_CSV, csv_text.encode())


def read_table(directory: Path) -> dict | None:
    """The table.json the last run that reached its end wrote, or None (none yet, or one being replaced)."""
    try:
        data = json.loads(read_bytes(directory / TABLE_JSON, "sweep table") or b"null")
    except (OSError, ValueError, SessionError):
        return None
    return data if isinstance(data, dict) else None


def table_stamp(directory: Path) -> Path:
    """The file whose change says that a run wrote its table."""
    return directory / TABLE_JSON


def manifest_path(directory: Path) -> Path:
    return directory / SWEEP_FILE


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
