"""What a valid session.json holds: every field's type and range, and the fields that must agree with each other."""

from __future__ import annotations

from collections.abc import Callable, Collection
from pathlib import Path
from typing import NoReturn

from engine.config import MAX_STEPS, SOURCES, Config, check_lam, finite_number, whole_number
from engine.errors import ConfigError, SessionError
from engine.measures import PRIMARY
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
OBJECT_OR_NULL: Check = ("null or an object", lambda v: v is None or isinstance(v, dict))
TEXT_OR_NULL: Check = ("null or text", lambda v: v is None or isinstance(v, str))
NUMBER: Check = ("a finite number", finite_number)
NUMBER_OR_NULL: Check = ("null or a finite number", lambda v: v is None or finite_number(v))
SHARE: Check = ("a number from 0 to 1", lambda v: finite_number(v) and 0 <= v <= 1)
SHARE_OR_NULL: Check = ("null or a number from 0 to 1", lambda v: v is None or SHARE[1](v))
DROP: Check = ("a number from -1 to 1 (an accuracy drop)", lambda v: finite_number(v) and -1 <= v <= 1)
LAM: Check = ("a finite number of 0 or more that float32 holds", lambda v: _passes(check_lam, v))
SOURCE: Check = (f"one of {', '.join(SOURCES)}", lambda v: isinstance(v, str) and v in SOURCES)
SHA256: Check = ("a SHA-256 digest (64 hexadecimal digits)",
                 lambda v: isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v))
TOTAL: Check = (f"a whole number from 0 to {MAX_STEPS:,} (the most steps one job may take)",
                lambda v: whole_number(v) and 0 <= v <= MAX_STEPS)
# A nested record's check: given the field's name and value, the first problem inside it as a phrase, or None.
Nested = Callable[[str, object], "str | None"]
# A record's fields: name -> (check, required).
Spec = dict[str, tuple["Check | Nested", bool]]
# A shuffle null's figures, or null where the null was off (null_problem is defined below).
NULL_OR_NONE: Nested = lambda field, v: None if v is None else null_problem(field, v)  # noqa: E731

TOP_FIELDS: Spec = {
    "name": (TEXT, False), "saved_at": (TEXT, False), "config": (OBJECT, True), "phase": (TEXT, False),
    "step": (COUNT, True), "epoch": (COUNT, False), "checkpoint": (TEXT, True), "plan": (LIST, True),
    "history": (LIST, True), "last": (OBJECT, False), "device": (TEXT, False), "versions": (OBJECT, False),
    "control": (OBJECT_OR_NULL, False), "ablation": (OBJECT_OR_NULL, False),
    "significance": (NULL_OR_NONE, False), "checkpoint_sha256": (SHA256, False),
    "stability": (OBJECT_OR_NULL, False),
}
HISTORY_FIELDS: Spec = {
    "phase": (TEXT, True), "step": (COUNT, True), "steps": (COUNT, True), "test_accuracy": (SHARE_OR_NULL, True),
    "clusterability": (SHARE_OR_NULL, True), "lam": (LAM, False), "stopped": (FLAG, False),
    "significance": (lambda field, v: null_problem(field, v), False),
}
# The λ=0 twin's record (Study._run_control); its accuracy is what the accuracy cost subtracts from.
CONTROL_FIELDS: Spec = {
    "test_accuracy": (SHARE_OR_NULL, True), "clusterability": (SHARE_OR_NULL, False),
    "significance": (NULL_OR_NONE, False), "step": (COUNT, False),
    "params_sha256": (TEXT, False),
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
        "total": (TOTAL, False), "done": (COUNT, False), "lam": (LAM, False), "k": (k_check, False),
        "source": (SOURCE, False),
    }
    for i, job in enumerate(data["plan"]):
        _refuse(path, object_problem(f"plan[{i}]", job, job_fields) or _unknown(f"plan[{i}]", job, job_fields))
        for key in _JOB_NEEDS.get(job["kind"], ()):
            if key not in job:
                _fail(path, f"field 'plan[{i}].{key}' is missing")
        if job.get("done", 0) > job.get("total", 0):
            _fail(path, f"field 'plan[{i}].done' must be at most the job's total {job.get('total', 0)}, "
                          f"not {job['done']}")
    if data.get("clusters") is not None:
        _check_clusters(path, data["clusters"], k_check, config.layer_shape)
    if data.get("control") is not None:
        _refuse(path, object_problem("control", data["control"], CONTROL_FIELDS))
    if data.get("ablation") is not None:
        clusters = data.get("clusters")
        _refuse(path, ablation_problem("ablation", data["ablation"], clusters["k"] if clusters else None))
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
            problem = check(field, data[key]) if callable(check) else _problem(field, data[key], check)
            if problem:
                return problem
        elif required:
            return f"field '{field}' is missing"
    return None


def null_problem(name: str, data: object) -> str | None:
    """The first problem of a shuffle null's figures: NullResult.to_dict(), or the flat form of sessions saved
    before the registry (which NullResult.from_dict converts)."""
    if isinstance(data, dict) and "measures" not in data:  # the flat form
        legacy: Spec = {"method": (TEXT, True), "samples": (COUNT, True), "null_mean": (NUMBER, True),
                        "null_std": (NUMBER, True), "z": (NUMBER_OR_NULL, False), "p_value": (SHARE, True),
                        "ncut": (NUMBER_OR_NULL, False), "ncut_null_mean": (NUMBER_OR_NULL, False),
                        "ncut_p_value": (SHARE, "ncut" in data)}
        return object_problem(name, data, legacy)
    spec: Spec = {"method": (TEXT, True), "test": (TEXT, True), "source": (TEXT_OR_NULL, False),
                  "samples": (COUNT, True), "p_floor": (NUMBER, False), "measures": (OBJECT, True)}
    problem = object_problem(name, data, spec)
    if problem:
        return problem
    measures = data["measures"]
    if PRIMARY not in measures:
        return f"field '{name}.measures.{PRIMARY}' is missing"
    measure: Spec = {key: (NUMBER_OR_NULL, True) for key in ("observed", "null_mean", "null_std", "z")}
    measure["p"] = (SHARE, True)
    for key, value in measures.items():
        problem = object_problem(f"{name}.measures.{key}", value, measure) or _unknown(
            f"{name}.measures.{key}", value, measure)
        if problem:
            return problem
    return None


def ablation_problem(name: str, data: object, k: int | None) -> str | None:
    """The first problem of a saved ablation (Ablation.to_dict()): every figure in its range, and every list as long
    as the classes or the clusters (`k`: the held clusters', or None to take the drop table's)."""
    spec: Spec = {"units": (TEXT, True), "classes": (_list_of(COUNT), True), "baseline": (_list_of(SHARE), True),
                  "drop": (_list_of(_list_of(DROP)), True), "specialisation": (_list_of(SHARE), True),
                  "p_value": (_list_of(SHARE_OR_NULL), True), "null": (OBJECT, False), "lesion": (OBJECT, False)}
    problem = object_problem(name, data, spec)
    if problem:
        return problem
    classes, k = len(data["classes"]), len(data["drop"]) if k is None else k
    lengths = [("baseline", classes, "class"), ("drop", k, "cluster"), ("specialisation", k, "cluster"),
               ("p_value", k, "cluster"), *((f"drop[{i}]", classes, "class") for i in range(len(data["drop"])))]
    null_spec: Spec = {"samples": (COUNT, False), "seed": (COUNT, False), "sizes": (_list_of(COUNT), False),
                       "mean": (_list_of(NUMBER_OR_NULL), False), "std": (_list_of(NUMBER_OR_NULL), False),
                       "drop_mean": (_list_of(_list_of(DROP), or_null=True), False)}
    null = data.get("null", {})
    problem = object_problem(f"{name}.null", null, null_spec)
    lengths += [(f"null.{key}", k, "cluster") for key in ("sizes", "mean", "std", "drop_mean") if null.get(key)]
    lesion_spec: Spec = {"value": (_list_of(NUMBER), True), "percentile": (_list_of(NUMBER_OR_NULL), True),
                         "p_value": (_list_of(SHARE_OR_NULL), True), "null_mean": (_list_of(NUMBER_OR_NULL), True),
                         "fisher_p": (SHARE_OR_NULL, True)}
    for key, value in data.get("lesion", {}).items():
        problem = problem or object_problem(f"{name}.lesion.{key}", value, lesion_spec)
        lengths += [(f"lesion.{key}.{field}", k, "cluster") for field in lesion_spec if field != "fisher_p"]
    if problem:
        return problem
    for where, size, unit in lengths:
        found = len(_at(data, where))
        if found != size:
            return f"field '{name}.{where}' must hold {size} entries (one per {unit}), not {found}"
    return None


def _list_of(check: Check, or_null: bool = False) -> Check:
    """A list whose every item passes `check` (or null too, where `or_null`)."""
    expected = f"a list, each item {check[0]}"
    return (f"null or {expected}" if or_null else expected,
            lambda v: (or_null and v is None) or (isinstance(v, list) and all(check[1](item) for item in v)))


def _at(data: dict, where: str) -> list:
    """The list a field name such as 'drop[2]' or 'lesion.importance.value' names inside `data`."""
    for key in where.replace("]", "").replace("[", ".").split("."):
        data = data[int(key)] if isinstance(data, list) else data[key]
    return data


def _unknown(name: str, data: dict, spec: Spec) -> str | None:
    extra = [key for key in data if key not in spec]
    return f"field '{name}' has an unknown key {show(extra[0])}" if extra else None


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


