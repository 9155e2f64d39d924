"""A sweep's result table: one row per stage and grid point, means with 95% CIs over seeds, as Markdown, CSV,
JSON and a terminal chart of accuracy against clusterability.

Rows: "pretrained" per point of the pretraining axes other than the seed (one, unless the sweep varies hidden, lr
or epochs), "clustered" per (source, k) too, "finetuned" per λ too: a column per axis (engine.axes) but the seed.
Every measure of the registry (engine/measures.py) has its columns: its mean ± CI, its null's mean, and how many
seeds' nulls reject at ALPHA out of those whose null could (a null of fewer than 19 shuffles cannot, and is not
counted either way). Significance and ablation figures are read from the members' results where their sessions
hold them, "-" where not.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable

from engine.axes import AXES, Axis, cell, group_key
from engine.format import fmt
from engine.measures import ALPHA, MEASURES, PRIMARY, NullResult, significant
from engine.plan import CLUSTER, FINETUNE, PRETRAIN
from engine.stats import Estimate, holm, mean_ci, paired_difference
from engine.sweep import FINISHED

STAGES = {PRETRAIN: "pretrained", CLUSTER: "clustered", FINETUNE: "finetuned"}
# Per measure: its mean and CI over seeds, its null's mean, the seeds whose null rejects, those that still reject
# after Holm's adjustment over the row's seeds (the family: HOLM_FAMILY), and those whose null could.
MEASURE_KEYS = ("", "_ci", "_null_mean", "_significant", "_significant_holm", "_tested")
HOLM_FAMILY = "the row's seeds whose null of the measure could reject, adjusted together (Holm)"
# The keys of a row after its stage and its axes (table_axes), in the CSV's column order.
COLUMNS = ("n", "seeds", "test_accuracy", "test_accuracy_ci",
           *(m.name + key for m in MEASURES for key in MEASURE_KEYS), "accuracy_cost", "accuracy_cost_ci",
           "specialisation")


def table_axes(rows: Iterable[dict]) -> list[Axis]:
    """The axes that are the table's columns: every axis but the seed that the members or rows hold."""
    rows = list(rows)
    return [axis for axis in AXES if axis.name != "seed" and (axis.always or any(axis.name in r for r in rows))]


def table_rows(members: Iterable[dict]) -> list[dict]:
    """Group finished members' results (the others are left out) into the table's rows, in the
    order the grid first meets each group. The accuracy cost is paired by seed with the λ=0 control of the same
    (source, k): the control's accuracy minus this row's."""
    members = list(members)
    axes = table_axes(members)
    groups: dict[tuple, list[dict]] = {}
    for m in members:
        if m["status"] == FINISHED:
            groups.setdefault((m["kind"], *group_key(m, axes)), []).append(m)
    lam = 1 + [a.name for a in axes].index("lam")
    rows = []
    for key, group in groups.items():
        control = groups.get((*key[:lam], 0.0, *key[lam + 1:])) if key[0] == FINETUNE else None
        rows.append(_row(key[0], {a.name: group[0].get(a.name) for a in axes}, group, control))
    return rows


def _row(kind: str, point: dict, group: list[dict], control: list[dict] | None) -> dict:
    accuracy = mean_ci(m["test_accuracy"] for m in group)
    nulls = _nulls(group)
    cost = Estimate(0, None, None)
    if control is not None:
        cost = paired_difference({m["seed"]: m["test_accuracy"] for m in control},
                                 {m["seed"]: m["test_accuracy"] for m in group})
    specialisation = [_mean(m["ablation"].get("specialisation")) for m in group if m.get("ablation")]
    return {
        "stage": STAGES[kind], **point, "n": len(group),
        "seeds": sorted(m["seed"] for m in group),
        "test_accuracy": accuracy.mean, "test_accuracy_ci": accuracy.ci,
        **{key: value for measure in MEASURES for key, value in _measure_cells(measure.name, nulls).items()},
        "accuracy_cost": cost.mean, "accuracy_cost_ci": cost.ci,
        "specialisation": _mean(specialisation),
    }


def _nulls(members: list[dict]) -> list[tuple[dict, NullResult | None]]:
    return [(m, NullResult.from_dict(m["significance"]) if m.get("significance") else None) for m in members]


def p_share(members: list[dict]) -> str:
    """'3/5 (Holm 2)': of the members whose null of the primary measure could reject at ALPHA, those whose null
    did, and those that still do once their p-values are adjusted together (Holm); '-' when none could (a null too
    small is no evidence either way)."""
    cells = _measure_cells(PRIMARY, _nulls(members))
    if not cells[PRIMARY + "_tested"]:
        return "-"
    return (f"{cells[PRIMARY + '_significant']}/{cells[PRIMARY + '_tested']} "
            f"(Holm {cells[PRIMARY + '_significant_holm']})")


def _measure_cells(name: str, nulls: list[tuple[dict, NullResult | None]]) -> dict:
    """One measure's columns: the member's own figure where it has one (clusterability), else its null's observed
    value; the null's mean; the seeds whose null rejects at ALPHA, of those whose null could, before and after
    Holm's adjustment over those seeds (HOLM_FAMILY)."""
    observed, null_means, tested = [], [], []
    for member, null in nulls:
        one = null.measures.get(name) if null is not None else None
        own = member.get(name)
        observed.append(own if own is not None else one.observed if one is not None else None)
        if one is not None:
            null_means.append(one.null_mean)
            if null.can_reject:
                tested.append(one)
    estimate = mean_ci(observed)
    adjusted = holm([one.p for one in tested], HOLM_FAMILY).p_adjusted
    return {name: estimate.mean, f"{name}_ci": estimate.ci, f"{name}_null_mean": _mean(null_means),
            f"{name}_significant": sum(significant(one.p) for one in tested) if tested else None,
            f"{name}_significant_holm": sum(significant(p) for p in adjusted) if tested else None,
            f"{name}_tested": len(tested)}


def _mean(values: Iterable[float | None] | None) -> float | None:
    return mean_ci(values or ()).mean


# ----- writing it ------------------------------------------------------------------------------------------------


def with_ci(mean: float | None, ci: float | None, digits: int = 4) -> str:
    """'0.9123 ± 0.0040'; the mean alone from one seed; '-' with no value."""
    if mean is None:
        return "-"
    return fmt(mean, digits) if ci is None else f"{fmt(mean, digits)} ± {fmt(ci, digits)}"


def markdown(rows: list[dict]) -> str:
    """The table for people: means ± 95% CI half-widths over seeds (Student t)."""
    head, body = table_cells(rows)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def table_cells(rows: list[dict]) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """The table's header and each row's cells as people read them (Markdown, the sweep view)."""
    axes = table_axes(rows)
    head = ("stage", *(a.label or a.name for a in axes), "seeds", "test accuracy",
            *(title for m in MEASURES for title in (m.title, f"{m.title} null (p ≤ {ALPHA:g})")),
            "cost vs λ=0", "specialisation")
    body = []
    for r in rows:
        control = r["stage"] == "finetuned" and r.get("lam") == 0
        body.append((r["stage"], *(cell(a, r.get(a.name)) for a in axes), str(r["n"]),
                     with_ci(r["test_accuracy"], r["test_accuracy_ci"]),
                     *(c for m in MEASURES for c in (with_ci(r[m.name], r[m.name + "_ci"], m.digits),
                                                     _null_cell(r, m.name, m.digits))),
                     "control" if control else with_ci(r["accuracy_cost"], r["accuracy_cost_ci"]),
                     fmt(r["specialisation"])))
    return head, body


def _null_cell(row: dict, name: str, digits: int) -> str:
    """'0.5828 (5/5, Holm 5)': the null's mean, the seeds that reject of those tested, and those that still
    reject after Holm's adjustment over them; a null too small to reject says so instead of counting."""
    mean = row[name + "_null_mean"]
    if mean is None:
        return "-"
    if not row[name + "_tested"]:
        return f"{fmt(mean, digits)} (too few shuffles)"
    return (f"{fmt(mean, digits)} ({row[name + '_significant']}/{row[name + '_tested']}, "
            f"Holm {row[name + '_significant_holm']})")


def to_csv(rows: list[dict]) -> str:
    axes = table_axes(rows)
    out = io.StringIO()
    writer = csv.DictWriter(out, ("stage", *(a.name for a in axes), *COLUMNS), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        point = {a.name: _csv_cell(a.text(r[a.name]) if isinstance(r[a.name], list) else r[a.name]) for a in axes}
        writer.writerow({"stage": r["stage"], **point, **{key: _csv_cell(r[key]) for key in COLUMNS}})
    return out.getvalue()


def _csv_cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, list):
        return " ".join(map(str, value))
    return value


def pareto_chart(rows: list[dict], width: int = 100, height: int = 22) -> str | None:
    """Test accuracy against clusterability, one point per λ with 95% CI bars, a series per point of the other axes: the
    modularity/accuracy trade-off. None when no finetuned row has both figures."""
    import plotext as plt

    points = [r for r in rows if r["stage"] == "finetuned" and r["test_accuracy"] is not None
              and r["clusterability"] is not None]
    if not points:
        return None
    plt.clear_figure()
    plt.plotsize(width, height)
    plt.theme("clear")
    axes = [a for a in table_axes(rows) if a.name != "lam"]
    series: dict[tuple, list[dict]] = {}
    for r in points:
        series.setdefault(group_key(r, axes), []).append(r)
    for group in series.values():
        plt.error([r["clusterability"] for r in group], [r["test_accuracy"] for r in group],
                  xerr=[r["clusterability_ci"] or 0.0 for r in group],
                  yerr=[r["test_accuracy_ci"] or 0.0 for r in group])
        # plotext draws no legend for error bars: with several series each point names its own ('w2' for weights, k=2)
        prefix = "".join(_short(a, group[0][a.name]) for a in axes) + " " if len(series) > 1 else ""
        for r in group:
            plt.text(f"{prefix}λ={r['lam']:g}", r["clusterability"], r["test_accuracy"], alignment="dynamic")
    plt.xlim(*_padded([r["clusterability"] for r in points], [r["clusterability_ci"] for r in points]))
    plt.ylim(*_padded([r["test_accuracy"] for r in points], [r["test_accuracy_ci"] for r in points]))
    plt.title("test accuracy vs clusterability (mean ± 95% CI over seeds)")
    plt.xlabel("clusterability" + ("   (w2 λ=3: weights, k=2, λ=3; g: gradients)" if len(series) > 1 else ""))
    plt.ylabel("test accuracy")
    chart = plt.uncolorize(plt.build())  # no colour codes: the chart also goes to files and pipes
    plt.clear_figure()
    return chart


def _short(axis: Axis, value: object) -> str:
    """A value in a chart label: 'w2' for weights and k=2, other axes by their name part ('h32x32 w2')."""
    if axis.name == "source":
        return value[0]
    return str(value) if axis.name == "k" else axis.part(value) + " "


def _padded(means: list[float], cis: list[float | None]) -> tuple[float, float]:
    """Axis limits around every bar, with room for the λ labels at the edges."""
    low = min(m - (c or 0.0) for m, c in zip(means, cis, strict=True))
    high = max(m + (c or 0.0) for m, c in zip(means, cis, strict=True))
    pad = 0.15 * (high - low) or 0.01
    return low - pad, high + pad
