"""A sweep's result table: one row per stage and grid point, means with 95% CIs over seeds, as Markdown, CSV,
JSON and a terminal chart of accuracy against clusterability.

Rows: "pretrained" (one), "clustered" per (source, k), "finetuned" per (source, k, λ). Significance (shuffle null)
and ablation figures are read from the members' results where their sessions hold them, "-" where not.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable

from engine.format import fmt
from engine.plan import CLUSTER, FINETUNE, PRETRAIN
from engine.stats import Estimate, mean_ci, paired_difference
from engine.sweep import FINISHED

STAGES = {PRETRAIN: "pretrained", CLUSTER: "clustered", FINETUNE: "finetuned"}
ALPHA = 0.05  # a seed "beats the null" when its shuffle-null p is below this
# The keys of a row, in the CSV's column order.
COLUMNS = ("stage", "source", "k", "lam", "n", "seeds", "test_accuracy", "test_accuracy_ci", "clusterability",
           "clusterability_ci", "null_mean", "p_below_alpha", "p_n", "accuracy_cost", "accuracy_cost_ci", "ncut",
           "specialisation")


def table_rows(members: Iterable[dict]) -> list[dict]:
    """Group finished members' results (the others are left out) into the table's rows, in the
    order the grid first meets each group. The accuracy cost is paired by seed with the λ=0 control of the same
    (source, k): the control's accuracy minus this row's."""
    groups: dict[tuple, list[dict]] = {}
    for m in members:
        if m["status"] == FINISHED:
            key = (m["kind"], m["source"], m["k"], m["lam"] if m["kind"] == FINETUNE else None)
            groups.setdefault(key, []).append(m)
    rows = []
    for (kind, source, k, lam), group in groups.items():
        control = groups.get((FINETUNE, source, k, 0.0)) if kind == FINETUNE else None
        rows.append(_row(kind, source, k, lam, group, control))
    return rows


def _row(kind: str, source: str | None, k: int | None, lam: float | None, group: list[dict],
         control: list[dict] | None) -> dict:
    accuracy = mean_ci(m["test_accuracy"] for m in group)
    clusterability = mean_ci(m["clusterability"] for m in group)
    significant = [m["significance"] for m in group if m.get("significance")]
    cost = Estimate(0, None, None)
    if control is not None:
        cost = paired_difference({m["seed"]: m["test_accuracy"] for m in control},
                                 {m["seed"]: m["test_accuracy"] for m in group})
    specialisation = [_mean(m["ablation"].get("specialisation")) for m in group if m.get("ablation")]
    return {
        "stage": STAGES[kind], "source": source, "k": k, "lam": lam, "n": len(group),
        "seeds": sorted(m["seed"] for m in group),
        "test_accuracy": accuracy.mean, "test_accuracy_ci": accuracy.ci,
        "clusterability": clusterability.mean, "clusterability_ci": clusterability.ci,
        "null_mean": _mean(s.get("null_mean") for s in significant),
        "p_below_alpha": sum(s["p_value"] < ALPHA for s in significant) / len(significant) if significant else None,
        "p_n": len(significant),
        "accuracy_cost": cost.mean, "accuracy_cost_ci": cost.ci,
        "ncut": _mean(s.get("ncut") for s in significant),
        "specialisation": _mean(specialisation),
    }


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
    head = ("stage", "source", "k", "λ", "seeds", "test accuracy", "clusterability", "null mean",
            f"p < {ALPHA:g}", "cost vs λ=0", "ncut", "specialisation")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        share = "-" if r["p_below_alpha"] is None else f"{round(r['p_below_alpha'] * r['p_n'])}/{r['p_n']}"
        control = r["stage"] == "finetuned" and r["lam"] == 0
        cells = (r["stage"], r["source"] or "-", "-" if r["k"] is None else str(r["k"]),
                 "-" if r["lam"] is None else f"{r['lam']:g}", str(r["n"]),
                 with_ci(r["test_accuracy"], r["test_accuracy_ci"]),
                 with_ci(r["clusterability"], r["clusterability_ci"]), fmt(r["null_mean"]), share,
                 "control" if control else with_ci(r["accuracy_cost"], r["accuracy_cost_ci"]), fmt(r["ncut"]),
                 fmt(r["specialisation"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def to_csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({key: _csv_cell(r[key]) for key in COLUMNS})
    return out.getvalue()


def _csv_cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, list):
        return " ".join(map(str, value))
    return value


def pareto_chart(rows: list[dict], width: int = 100, height: int = 22) -> str | None:
    """Test accuracy against clusterability, one point per λ with 95% CI bars, a series per (source, k): the
    modularity/accuracy trade-off. None when no finetuned row has both figures."""
    import plotext as plt

    points = [r for r in rows if r["stage"] == "finetuned" and r["test_accuracy"] is not None
              and r["clusterability"] is not None]
    if not points:
        return None
    plt.clear_figure()
    plt.plotsize(width, height)
    plt.theme("clear")
    series: dict[tuple, list[dict]] = {}
    for r in points:
        series.setdefault((r["source"], r["k"]), []).append(r)
    for (source, k), group in series.items():
        plt.error([r["clusterability"] for r in group], [r["test_accuracy"] for r in group],
                  xerr=[r["clusterability_ci"] or 0.0 for r in group],
                  yerr=[r["test_accuracy_ci"] or 0.0 for r in group])
        prefix = f"{source[0]}{k} " if len(series) > 1 else ""  # plotext draws no legend for error bars
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


def _padded(means: list[float], cis: list[float | None]) -> tuple[float, float]:
    """Axis limits around every bar, with room for the λ labels at the edges."""
    low = min(m - (c or 0.0) for m, c in zip(means, cis, strict=True))
    high = max(m + (c or 0.0) for m, c in zip(means, cis, strict=True))
    pad = 0.15 * (high - low) or 0.01
    return low - pad, high + pad
