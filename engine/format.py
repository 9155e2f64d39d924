"""How figures and session rows are written for people: one number format, every measure against its null (with
the p floor where a null is too small), and one sessions-table layout. The UI shows these strings as they are."""

from __future__ import annotations

from collections.abc import Sequence

from engine.measures import ALPHA, BY_NAME, MEASURES, PRIMARY, Measure, NullResult, shuffles_needed

# (key in a `list_sessions` row, column title); the name comes first and is never cut. `clusterlab sessions
# --wide` and the UI's open screen show all of them; plain `clusterlab sessions` the compact ones, for 80 columns.
SESSION_COLUMNS: tuple[tuple[str, str], ...] = (
    ("name", "name"),
    ("dataset", "dataset"),
    ("phase", "phase"),
    ("step", "steps"),
    ("test_accuracy", "accuracy"),
    ("clusterability", "clusterability"),
    ("null", "null"),
    ("p", "p"),
    ("measured_at", "at step"),
    ("saved_at", "last saved"),
)
COMPACT_COLUMNS = tuple(c for c in SESSION_COLUMNS if c[0] in ("name", "dataset", "step", "test_accuracy",
                                                                "clusterability", "p"))
TOO_FEW = "*"  # marks a p whose null has too few shuffles to show p ≤ ALPHA (a footnote says so)


def fmt(value: float | None, digits: int = 4) -> str:
    """A figure with `digits` decimals, or '-' when there is none yet."""
    return "-" if value is None else f"{value:.{digits}f}"


def null_text(significance: dict | None) -> str:
    """What a clusterability is read against, then every other measure against its null: 'vs null 0.5509 ±
    0.0059 (z -0.13 of 100 shuffles, p 0.475); ncut 0.9370 vs null …; Newman Q …'."""
    if significance is None:
        return "(no shuffle null: --null-samples 0)"
    found = NullResult.from_dict(significance)
    others = [measure_text(found, m) for m in MEASURES if m.name != PRIMARY and m.name in found.measures]
    return "; ".join([_against(found, BY_NAME[PRIMARY]), *others, *_floor(found)])


def measure_lines(significance: dict) -> list[str]:
    """One line per measure: 'Newman Q 0.0123 vs null 0.0151 ± 0.0020 (z -1.40 of 100 shuffles, p 0.921)', and
    a last line when the null is too small to show p ≤ ALPHA."""
    found = NullResult.from_dict(significance)
    return [measure_text(found, m) for m in MEASURES if m.name in found.measures] + _floor(found)


def measure_text(found: NullResult, measure: Measure) -> str:
    """'ncut 0.9370 vs null 0.9360 ± 0.0033 (z 0.30 of 100 shuffles, p 0.465)'."""
    return f"{measure.title} {measure.text(found.measures[measure.name].observed)} {_against(found, measure)}"


def _against(found: NullResult, measure: Measure) -> str:
    one = found.measures[measure.name]
    spread = "" if one.null_std is None else f" ± {measure.text(one.null_std)}"
    z = "" if one.z is None else f"z {one.z:.2f} of "
    return f"vs null {measure.text(one.null_mean)}{spread} ({z}{found.samples} shuffles, p {one.p:.3g})"


def _floor(found: NullResult) -> list[str]:
    """What a null too small to reject says beside its p-values (nothing for one that can)."""
    if found.can_reject:
        return []
    return [f"{found.samples} shuffles cannot show p ≤ {ALPHA:g}; use ≥ {shuffles_needed()}"]


def p_lines(significance: dict | None) -> list[str]:
    """The primary measure's p for a compact view, 'p=0.475', then what a null too small to reject says
    ('10 shuffles cannot show p ≤ 0.05; use ≥ 19'); [''] without a null."""
    if significance is None:
        return [""]
    found = NullResult.from_dict(significance)
    return [f"p={found.p_value:.3g}", *_floor(found)]


def p_cell(significance: dict | None) -> str:
    """The primary measure's p for a table cell: '0.475', '0.091 (too few shuffles)', '-' without a null."""
    if significance is None:
        return "-"
    found = NullResult.from_dict(significance)
    return f"{found.p_value:.3g}" + ("" if found.can_reject else " (too few shuffles)")


def null_band(significance: dict) -> tuple[float, float]:
    """The primary measure's null as (mean, std), what a chart draws as its band."""
    one = NullResult.from_dict(significance).measures[PRIMARY]
    return one.null_mean, one.null_std or 0.0


def session_cells(row: dict, columns: Sequence[tuple[str, str]] = SESSION_COLUMNS) -> tuple[str, ...]:
    """The cells of one `list_sessions` row in `columns`' order; an unreadable session says so, a sweep counts its
    finished members in the steps column."""
    if "error" in row:
        return (row["name"], "unreadable", *[""] * (len(columns) - 2))
    sweep = row.get("kind") == "sweep"  # a sweep's folder: its members are the sessions named after it
    cells = []
    for key, _title in columns:
        value = row.get(key)
        if sweep and key == "step":
            cells.append(f"{row['finished']}/{len(row['members'])} done")
        elif sweep and key == "phase":
            cells.append("sweep")
        elif sweep and key not in ("name", "dataset", "saved_at"):
            cells.append("")
        elif key in ("test_accuracy", "clusterability"):
            cells.append(fmt(value))
        elif key == "step":
            cells.append(f"{value:,}")
        elif key == "null":
            cells.append(_null_cell(row.get("significance")))
        elif key == "p":
            cells.append(_p_short(row.get("significance")))
        else:
            cells.append("" if value is None else str(value))
    return tuple(cells)


def _null_cell(significance: dict | None) -> str:
    if significance is None:
        return "-"
    mean, std = null_band(significance)
    return f"{mean:.4f} ± {std:.4f}"


def _p_short(significance: dict | None) -> str:
    """The primary measure's p, marked TOO_FEW when its null cannot show p ≤ ALPHA; '-' without a null."""
    if significance is None:
        return "-"
    found = NullResult.from_dict(significance)
    return f"{found.p_value:.3g}" + ("" if found.can_reject else TOO_FEW)


def plan_text(jobs: Sequence[dict]) -> str:
    """A plan's jobs in words: 'pretrain 86,300 steps, cluster (k=2 on weights), its shuffle null, finetune 9,380
    steps at λ=3'; a training job counts the steps it has left."""
    words = {"cluster": lambda j: f"cluster (k={j['k']} on {j['source']})",
             "significance": lambda j: "its shuffle null", "ablate": lambda j: "ablation",
             "control": lambda j: f"a λ=0 control of {j['total']:,} steps"}
    parts = []
    for job in jobs:
        if job["kind"] in words:
            parts.append(words[job["kind"]](job))
        else:
            lam = f" at λ={job['lam']:g}" if job["kind"] == "finetune" else ""
            parts.append(f"{job['kind']} {job['total'] - job.get('done', 0):,} steps{lam}")
    return ", ".join(parts) or "nothing"
