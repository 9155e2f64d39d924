"""How figures and session rows are written for people: one number format and one sessions-table layout."""

from __future__ import annotations

# (key in a `list_sessions` row, column title); the name comes first and is never cut.
SESSION_COLUMNS: tuple[tuple[str, str], ...] = (
    ("name", "name"),
    ("dataset", "dataset"),
    ("phase", "phase"),
    ("step", "steps"),
    ("test_accuracy", "accuracy"),
    ("clusterability", "clusterability"),
    ("saved_at", "last saved"),
)


def fmt(value: float | None, digits: int = 4) -> str:
    """A figure with `digits` decimals, or '-' when there is none yet."""
    return "-" if value is None else f"{value:.{digits}f}"


def null_text(significance: dict | None) -> str:
    """What a clusterability is read against: 'vs null 0.5509 ± 0.0059 (z -0.13, p 0.475; 100 shuffles)'."""
    if significance is None:
        return "(no shuffle null: --null-samples 0)"
    z = significance["z"]
    z_text = f"z {z:.2f}, " if z is not None else ""
    return (f"vs null {significance['null_mean']:.4f} ± {significance['null_std']:.4f} "
            f"({z_text}p {significance['p_value']:.3f}; {significance['samples']} shuffles)")


def session_cells(row: dict) -> tuple[str, ...]:
    """The cells of one `list_sessions` row, in SESSION_COLUMNS order; an unreadable session says so."""
    if "error" in row:
        return (row["name"], "unreadable", *[""] * (len(SESSION_COLUMNS) - 2))
    if row.get("kind") == "sweep":  # a sweep's folder: its members are the sessions named after it
        members = f"{row['finished']}/{len(row['members'])}"
        return (row["name"], str(row.get("dataset") or ""), "sweep", members, "", "", str(row.get("saved_at") or ""))
    cells = []
    for key, _title in SESSION_COLUMNS:
        value = row.get(key)
        if key in ("test_accuracy", "clusterability"):
            cells.append(fmt(value))
        else:
            cells.append("" if value is None else str(value))
    return tuple(cells)
