"""A session's metrics log: appending records, reading them back, and checking and cutting it at a save."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import AnyStr

from engine.errors import SessionError
from engine.session_check import COUNT, NUMBER, SHARE, SHARE_OR_NULL, TEXT, Spec, object_problem, show
from engine.session_files import SESSION_FILE, atomic_write, open_file, read_bytes

# The fields that the readers of each type of metrics record use (the UI rebuilds its charts from them), on top of
# a text "type" and a whole "step" that every record has. Records of other types need only those two.
RECORD_FIELDS: dict[str, Spec] = {
    "train": {"phase": (TEXT, True), "loss": (NUMBER, True)},
    "eval": {"phase": (TEXT, True), "test_accuracy": (SHARE, True), "clusterability": (SHARE_OR_NULL, True)},
    "clusters": {"clusterability": (SHARE, True), "chance": (SHARE, True)},
    "phase": {"phase": (TEXT, True)},
}
_RECORD_BASE: Spec = {"type": (TEXT, True), "step": (COUNT, True)}


def check_metrics(path: Path, records: int, step: int) -> None:
    """Check the metrics log against the save that counted its first `records` lines at `step`, before
    trim_metrics cuts it there.

    A save is written only once the log's lines are on disk, so the log holds at least `records` lines (a missing
    log, none), each a valid record (record_problem) of a step no later than the save's: a shorter log, or a torn
    or corrupt line there, is damage, and the session is refused. A later line that is no valid record is the torn
    end of a crash, which the cut drops; but a valid later record of an EARLIER step than the save's means that the
    count is too small and that the cut would lose records: refused too.
    """
    text = read_bytes(path, "metrics log")
    lines = [] if text is None else _lines(text.decode("utf-8", errors="replace"))
    if len(lines) < records:
        raise SessionError(
            f"{path} holds {len(lines)} records, fewer than the {records} that the last save counted "
            f"('metrics_records' in {SESSION_FILE}): it was cut or replaced since; restore it to open the session."
        )
    for number, line in enumerate(lines, 1):
        problem, record = _parse_record(line)
        if number <= records:
            if problem is not None:
                raise SessionError(f"{path} line {number} is not a valid metrics record ({problem}); "
                                   "the session cannot be opened.")
            if record["step"] > step:
                raise SessionError(f"{path} line {number} is of step {record['step']}, after the saved step {step}, "
                                   f"yet within the {records} records the save counted; the session cannot be opened.")
        elif problem is None and record["step"] < step:
            raise SessionError(f"{path} line {number} is of step {record['step']}, before the saved step {step}, yet "
                               f"beyond the {records} records the save counted ('metrics_records' is too small); "
                               "the session cannot be opened.")


def record_problem(record: object) -> str | None:
    """Why `record` is not a metrics record its readers can use, or None: an object with a text "type", a whole
    "step" and, for the known types, the fields in RECORD_FIELDS."""
    if not isinstance(record, dict):
        return f"not an object but {show(record)}"
    kind = record.get("type")
    fields = RECORD_FIELDS.get(kind, {}) if isinstance(kind, str) else {}
    return object_problem("", record, {**_RECORD_BASE, **fields})


class MetricsLog:
    """Append-only JSON-lines log of training metrics; one object per line, each with a step.

    Line-buffered, so every record reaches the file at once (a reader on another thread never needs to
    flush it); `records` counts the lines, which a save records so a resume can cut the log exactly there.
    Never opened through a symbolic link.
    """

    def __init__(self, path: Path, records: int) -> None:
        self.path = path
        self.records = records
        try:
            self._file = open(path, "a", encoding="utf-8", buffering=1,  # noqa: SIM115 - open for the session's life
                              opener=lambda name, flags: open_file(Path(name), flags, "metrics log"))
        except OSError as exc:
            raise SessionError(f"{path} cannot be opened for writing ({exc.strerror or exc}).") from None

    def append(self, record: dict) -> None:
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self.records += 1

    def sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            self._file.close()


def read_metrics(path: Path) -> list[dict]:
    """The log's valid records (record_problem), in order; a torn line (a crash, or a write in progress seen from
    another thread) and any other invalid line are skipped. Not followed through a symbolic link."""
    text = read_bytes(path, "metrics log")
    if text is None:
        return []
    records = []
    for line in _lines(text.decode("utf-8", errors="replace")):
        problem, record = _parse_record(line)
        if problem is None:
            records.append(record)
    return records


def trim_metrics(path: Path, records: int) -> int:
    """Keep the first `records` lines, those the resumed save had written (check_metrics, run by read_session,
    has checked them); what came after the save (a torn last line included) goes, so no step appears twice.
    Returns how many records the log now holds."""
    text = read_bytes(path, "metrics log")
    if text is None:
        return 0
    lines = _lines(text)[:records]
    kept = b"".join(line + b"\n" for line in lines)
    if kept != text:
        atomic_write(path, kept)
    return len(lines)


def _lines(text: AnyStr) -> list[AnyStr]:
    """The log's lines: each record ends with a newline, so what follows the last one is a torn line, if any."""
    lines = text.split(b"\n" if isinstance(text, bytes) else "\n")
    return lines[:-1] if not lines[-1] else lines


def _parse_record(line: str) -> tuple[str | None, dict | None]:
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        return "not valid JSON: torn or corrupt", None
    problem = record_problem(record)
    return problem, (record if problem is None else None)


