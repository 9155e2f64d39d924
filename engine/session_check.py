"""What a valid session.json holds: every field's type and range, and the fields that must agree with each other."""

from __future__ import annotations

from collections.abc import Callable, Collection
from pathlib import Path
from typing import NoReturn

from engine.config import SOURCES, Config, check_lam, finite_number, whole_number
from engine.errors import ConfigError, SessionError
from engine.measures import readable
from engine.plan import JOB_KINDS
from engine.session_files import CHECKPOINT, checkpoint_name

FORMAT_VERSION = 1

# A value check: what the value must be (as the error message says it), and the test.
Check = tuple[str, Callable[[object], bool]]
TEXT: Check = ("text", lambda v: isinstance(v, str))
COUNT: Check = ("a whole number of 0 or more", lambda v: whole_number(v) and v >= 0)
FLAG: Check = ("true or false", lambda v: isinstance(v, bool))
LIST: Check = ("a list", lambda v: isinstance(v, list))
OBJECT: Check = ("an object", lambda v: isinstance(v, dict))
NULL: Check = ("a shuffle null's figures (engine.measures.NullResult)", readable)
NULL_OR_NONE: Check = (f"{NULL[0]} or null", lambda v: v is None or readable(v))
OBJECT_OR_NULL: Check = ("null or an object", lambda v: v is None or isinstance(v, dict))
NUMBER: Check = ("a finite number", finite_number)
NUMBER_OR_NULL: Check = ("null or a finite number", lambda v: v is None or finite_number(v))
SHARE: Check = ("a number from 0 to 1", lambda v: finite_number(v) and 0 <= v <= 1)
SHARE_OR_NULL: Check = ("null or a number from 0 to 1", lambda v: v is None or SHARE[1](v))
LAM: Check = ("a finite number of 0 or more that float32 holds", lambda v: _passes(check_lam, v))
SOURCE: Check = (f"one of {', '.join(SOURCES)}", lambda v: isinstance(v, str) and v in SOURCES)
# A record's fields: name -> (check, required).
Spec = dict[str, tuple[Check, bool]]

TOP_FIELDS: Spec = {
    "name": (TEXT, False), "saved_at": (TEXT, False), "config": (OBJECT, True), "phase": (TEXT, False),
    "step": (COUNT, True), "epoch": (COUNT, False), "checkpoint": (TEXT, True), "plan": (LIST, True),
    "history": (LIST, True), "last": (OBJECT, False), "device": (TEXT, False), "versions": (OBJECT, False),
    "control": (OBJECT_OR_NULL, False), "ablation": (OBJECT_OR_NULL, False), "significance": (NULL_OR_NONE, False),
    "stability": (OBJECT_OR_NULL, False),
}
HISTORY_FIELDS: Spec = {
    "phase": (TEXT, True), "step": (COUNT, True), "steps": (COUNT, True), "test_accuracy": (SHARE_OR_NULL, True),
    "clusterability": (SHARE_OR_NULL, True), "lam": (LAM, False), "stopped": (FLAG, False),
    "significance": (NULL, False),
}
# Fields a job of the plan needs beyond its kind.
_JOB_NEEDS = {"cluster": ("k", "source")}

def validate_session(data: object, path: Path, kinds: Collection[str] = JOB_KINDS) -> dict:
    """Check every field of a parsed session.json (`path` names it in messages) by type and range, and against
    each other where every save makes them agree: the checkpoint is the step's, no history entry is after the
    step, a job's done steps are at most its total, clusters label each unit of the studied layer. Returns `data`;
    the first bad field raises SessionError naming the file and the field. Reads and changes nothing."""
    if not isinstance(data, dict) or "format_version" not in data:
        raise SessionError(f"{path} is not a clusterlab session file (no format_version).")
    version = data["format_version"]
    if whole_number(version) and version > FORMAT_VERSION:
        raise SessionError(
            f"{path} has format version {version!r}, newer than this clusterlab understands ({FORMAT_VERSION});"
            " upgrade clusterlab to open it."
        )
    if not (whole_number(version) and version >= 1):  # 0, -5, "1", 1.0: damage, not a newer clusterlab
        _fail(path, f"field 'format_version' must be a whole number from 1 to {FORMAT_VERSION}, not {show(version)}")
    missing = [key for key in ("config", "checkpoint", "step", "plan", "history", "metrics_records")
               if key not in data]
    if missing:
        raise SessionError(f"{path} lacks required field(s) {', '.join(missing)}; the session cannot be opened.")
    _refuse(path, object_problem("", data, TOP_FIELDS))
    try:
        config = Config.from_dict(data["config"])
    except ConfigError as exc:
        _fail(path, f"field 'config' is invalid ({str(exc).rstrip('.')})")
    step = data["step"]
    found = CHECKPOINT.fullmatch(data["checkpoint"])
    if not found:
        raise SessionError(f"{path} names an invalid checkpoint file {data['checkpoint']!r}.")
    if int(found.group(1)) != step:
        _fail(path, f"field 'checkpoint' must name the checkpoint of step {step} ({checkpoint_name(step)}), "
                      f"not {data['checkpoint']!r}")
    history = data["history"]
    for i, entry in enumerate(history):
        _refuse(path, object_problem(f"history[{i}]", entry, HISTORY_FIELDS))
        if entry["step"] > step:
            _fail(path, f"field 'history[{i}].step' must be at most the session's step {step}, not {entry['step']}")
    # Every ended phase wrote one "phase" record before the save that recorded it in the history.
    records, least = data["metrics_records"], len(history)
    if not (whole_number(records) and records >= least):
        _fail(path, f"field 'metrics_records' must be a whole number of {least} or more (one record per entry "
                      f"of 'history'), not {show(records)}")
    width = min(config.layer_shape)
    k_check: Check = (f"a whole number from 2 to {width} (the studied layer's width)",
                      lambda v: whole_number(v) and 2 <= v <= width)
    job_fields: Spec = {
        "kind": ((f"one of {', '.join(kinds)}", lambda v: isinstance(v, str) and v in kinds), True),
        "total": (COUNT, False), "done": (COUNT, False), "lam": (LAM, False), "k": (k_check, False),
        "source": (SOURCE, False),
    }
    for i, job in enumerate(data["plan"]):
        _refuse(path, object_problem(f"plan[{i}]", job, job_fields))
        unknown = [key for key in job if key not in job_fields]
        if unknown:
            _fail(path, f"field 'plan[{i}]' has an unknown key {show(unknown[0])}")
        for key in _JOB_NEEDS.get(job["kind"], ()):
            if key not in job:
                _fail(path, f"field 'plan[{i}].{key}' is missing")
        if job.get("done", 0) > job.get("total", 0):
            _fail(path, f"field 'plan[{i}].done' must be at most the job's total {job.get('total', 0)}, "
                          f"not {job['done']}")
    if data.get("clusters") is not None:
        _check_clusters(path, data["clusters"], k_check, config.layer_shape)
    for key, value in data.get("last", {}).items():
        _refuse(path, _problem(f"last.{key}", value, NUMBER_OR_NULL))
    for key, value in data.get("versions", {}).items():
        _refuse(path, _problem(f"versions.{key}", value, TEXT))
    return data


def _check_clusters(path: Path, clusters: object, k_check: Check, shape: tuple[int, int]) -> None:
    """Saved clusters must label every unit of the studied layer (`shape`: rows, cols) with one of k clusters."""
    spec: Spec = {"k": (k_check, True), "source": (SOURCE, True), "row_labels": (LIST, True),
                  "col_labels": (LIST, True)}
    _refuse(path, object_problem("clusters", clusters, spec))
    k = clusters["k"]
    label: Check = (f"a cluster label, a whole number from 0 to {k - 1}", lambda v: whole_number(v) and 0 <= v < k)
    for side, size in zip(("row_labels", "col_labels"), shape, strict=True):
        labels = clusters[side]
        if len(labels) != size:
            _fail(path, f"field 'clusters.{side}' must hold {size} labels (one per unit of the studied layer), "
                          f"not {len(labels)}")
        for i, value in enumerate(labels):
            _refuse(path, _problem(f"clusters.{side}[{i}]", value, label))


def object_problem(name: str, data: object, spec: Spec) -> str | None:
    """The first field of `data` that `spec` refuses (missing, or failing its check), as a phrase; or None."""
    if not isinstance(data, dict):
        return f"field '{name}' must be an object, not {show(data)}"
    for key, (check, required) in spec.items():
        field = f"{name}.{key}" if name else key
        if key in data:
            problem = _problem(field, data[key], check)
            if problem:
                return problem
        elif required:
            return f"field '{field}' is missing"
    return None


def _problem(field: str, value: object, check: Check) -> str | None:
    expected, ok = check
    return None if ok(value) else f"field '{field}' must be {expected}, not {show(value)}"


def _fail(path: Path, problem: str) -> NoReturn:
    raise SessionError(f"{path}: {problem}; the session cannot be opened.")


def _refuse(path: Path, problem: str | None) -> None:
    if problem is not None:
        _fail(path, problem)


def show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _passes(check: Callable[[object], None], value: object) -> bool:
    try:
        check(value)
    except ConfigError:
        return False
    return True


