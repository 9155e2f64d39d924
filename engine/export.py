"""A session's data and paper figures on disk: metrics.csv, clusters.json, ablation.csv, PNG and SVG figures."""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engine.config import Config
from engine.errors import ConfigError, SessionError
from engine.format import null_band, p_cell
from engine.listing import measured
from engine.measures import upgraded
from engine.picture import block_picture
from engine.session import (
    atomic_write,
    read_snapshot,
    saved_records,
    session_file,
    write_json,
)

if TYPE_CHECKING:
    from engine.ablation import Ablation

# A paper's single column is about 3.3 in wide; every text in a figure is at least 7 pt there.
COLUMN_WIDTH = 3.3
FONT_PT = 7
PHASE_COLORS = {"pretrain": "#1f77b4", "finetune": "#ff7f0e", "control": "#2ca02c", "cluster": "#9467bd"}
BOUNDARY_COLOR = "#e41a1c"
_STYLE = {"font.size": FONT_PT, "axes.titlesize": FONT_PT, "axes.labelsize": FONT_PT, "xtick.labelsize": FONT_PT,
          "ytick.labelsize": FONT_PT, "legend.fontsize": FONT_PT, "lines.linewidth": 1.0, "axes.linewidth": 0.6,
          "svg.fonttype": "none", "figure.dpi": 300}


def export_session(session_dir: Path, out_dir: Path, notes: list[str] | None = None) -> list[Path]:
    """Write the session's data and figures into out_dir (created if needed); returns the files written.

    Always: metrics.csv (every record of the metrics log up to the save read, one column per key seen; a null's
    measures flattened; lists and objects as JSON) and curves.png/.svg. With clusters: clusters.json (with the
    latest null of every measure) and weights.png/.svg (the studied layer's |W| at the checkpoint, reordered by
    cluster). With an ablation: ablation.csv and ablation.png/.svg. A piece the session does not have yet is
    skipped with one sentence appended to `notes`; a missing or corrupt session raises
    SessionError. Each file is written atomically; matplotlib is imported on first use, not with the module.
    """
    session_dir, out_dir = Path(session_dir), Path(out_dir)
    # Everything is read and checked before anything is written: a bad session leaves no half export. One save's
    # session.json and checkpoint, even while another process is saving the session (read_snapshot).
    session, state = read_snapshot(session_dir)
    config = session_config(session, session_dir)
    # The save's records (read_session checked that the log's first ones are valid): not those a run added since.
    records = saved_records(session_dir, session)
    notes = notes if notes is not None else []
    clusters, ablation = session.get("clusters"), session.get("ablation")
    layer = config.studied_layer
    weight = studied_weights(session, state, session_dir, config)[layer - 1].numpy() if clusters else None
    if ablation:
        with _malformed(session_dir, "ablation"):
            ablation_table = ablation_csv(ablation)
    made = next((p for p in [*reversed(out_dir.parents), out_dir] if not p.exists()), None)  # the first new folder
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SessionError(f"Cannot create the export folder {out_dir} ({exc.strerror}); pick another --out.") from None
    written: list[Path] = []
    try:
        written.append(_write(out_dir / "metrics.csv", metrics_csv(records)))
        written += _figure(out_dir / "curves", curves_figure, records, session.get("control"))
        if clusters:
            written.append(out_dir / "clusters.json")
            significance = upgraded(session.get("significance"))  # every measure against its null, as run --json
            write_json(written[-1], {"layer": f"fc{layer}", **clusters, "significance": significance}, shared=True)
            written += _figure(out_dir / "weights", weights_figure, weight, clusters, f"fc{layer}", session["step"],
                               measured(session))
        else:
            notes.append("No clusters yet, so no clusters.json or weights figure: cluster the layer first.")
        if ablation:
            written.append(_write(out_dir / "ablation.csv", ablation_table))
            with _malformed(session_dir, "ablation"):
                written += _figure(out_dir / "ablation", ablation_figure, ablation)
        else:
            notes.append("No ablation yet, so no ablation.csv or ablation figure: run 'clusterlab ablate' first.")
    except BaseException:
        if made is not None:  # a failed export leaves no folder of its own behind; an existing --out keeps its files
            shutil.rmtree(made, ignore_errors=True)
        raise
    return written


def ablate_session(session_dir: Path, null_samples: int | None = None) -> Ablation:
    """Ablate a saved session's clusters at its checkpoint on its test set (CPU), with the null seeded by the
    session's seed, so the same session always gives the same numbers. null_samples defaults to the config's
    `null_samples` if it has one, else 100."""
    import torch

    from engine.ablation import ablate
    from engine.data import load_dataset
    from engine.device import all_cores

    session_dir = Path(session_dir)
    session, state = read_snapshot(session_dir)
    config = session_config(session, session_dir)
    if not session.get("clusters"):
        raise SessionError(f"{session_dir} has no clusters yet: cluster it first ('c' in the UI, or clusterlab run).")
    weights = studied_weights(session, state, session_dir, config)
    layer, clusters = config.studied_layer, session["clusters"]
    data = load_dataset(config.dataset, config.data_dir, config.seed, torch.device("cpu"))
    samples = getattr(config, "null_samples", 100) if null_samples is None else null_samples
    with all_cores(torch.device("cpu")):
        return ablate(weights, layer, clusters["row_labels"], int(clusters["k"]), data.test_x, data.test_y,
                      data.n_classes, null_samples=samples, seed=config.seed)


# ------------------------------------------------------------------------------------------------------ tables

def metrics_csv(records: list[dict]) -> str:
    """One row per record, one column per key in order of first appearance (a null's measures flattened: see
    `flat_record`); absent keys are empty cells."""
    # a clustering's block picture is a figure (weights.png, TensorBoard's image), not a column
    records = [{k: v for k, v in flat_record(record).items() if k != "picture"} for record in records]
    columns = list(dict.fromkeys(key for record in records for key in record))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for record in records:
        writer.writerow([_cell(record.get(key)) for key in columns])
    return out.getvalue()


def flat_record(record: dict) -> dict:
    """A null's measures as columns of their own (clusterability_null_mean, newman_q_p, …); other records as is."""
    measures = record.get("measures")
    if not isinstance(measures, dict):
        return record
    flat = {key: value for key, value in record.items() if key != "measures"}
    for name, values in measures.items():
        flat.update({f"{name}_{stat}": value for stat, value in values.items()})
    return flat


def ablation_csv(ablation: dict) -> str:
    """Tidy: one row per (cluster, class) with the cluster's specialisation, p and null beside each drop; clusters
    are numbered 1..k, as everywhere else."""
    null = ablation.get("null") or {}
    columns = ["cluster", "units", "class", "baseline_accuracy", "ablated_accuracy", "drop", "null_drop_mean",
               "specialisation", "p_value", "null_specialisation_mean", "null_specialisation_std", "null_samples"]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for i, drops in enumerate(ablation["drop"]):
        for j, (cls, base, drop) in enumerate(zip(ablation["classes"], ablation["baseline"], drops, strict=True)):
            writer.writerow([_cell(v) for v in (
                i + 1, _at(null.get("sizes"), i), cls, base, base - drop, drop, _at(_at(null.get("drop_mean"), i), j),
                ablation["specialisation"][i], ablation["p_value"][i], _at(null.get("mean"), i),
                _at(null.get("std"), i), null.get("samples"),
            )])
    return out.getvalue()


# ----------------------------------------------------------------------------------------------------- figures

def curves_figure(records: list[dict], control: dict | None = None):
    """Training loss, test accuracy and clusterability against the step, one colour per phase; dotted lines
    where the layer was clustered; each tested clusterability as a marker drawn over its shuffle null (mean ± 2
    std, a grey band or bar); the λ=0 control's end point when the session ran one."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    fig = _new_figure(COLUMN_WIDTH, 4.2)
    loss, accuracy, clust = fig.subplots(3, 1, sharex=True)
    _phase_lines(loss, records, "train", "loss", labelled=True)
    _phase_lines(accuracy, records, "eval", "test_accuracy", labelled=True)
    _phase_lines(clust, records, "eval", "clusterability", labelled=False)
    significance = [r for r in records if r.get("type") == "significance"]
    keys = []  # the clusterability panel's legend: glyphs that do not look like data
    for phase, runs in _by_phase(significance):
        for run in runs:
            steps = np.array([r["step"] for r in run], dtype=float)
            mean, std = np.array([null_band(r) for r in run], dtype=float).T
            spread = 2 * std
            if len(run) > 1:
                clust.fill_between(steps, mean - spread, mean + spread, color="0.6", alpha=0.4, lw=0, zorder=1)
            else:
                clust.errorbar(steps, mean, yerr=spread, fmt="none", ecolor="0.6", elinewidth=3, capsize=0, zorder=1)
            observed = [r.get("clusterability") for r in run]
            if all(v is not None for v in observed):  # on top of the null, never hidden under it
                clust.plot(steps, observed, "o", mfc="none", color=PHASE_COLORS.get(phase, "0.3"), ms=3.5, zorder=4)
    if significance:
        keys = [Patch(color="0.6", alpha=0.4, lw=0, label="shuffle null ±2σ"),
                Line2D([], [], ls="none", marker="o", mfc="none", color="0.3", ms=3.5, label="tested")]
    clustered = [r for r in records if r.get("type") == "clusters"]
    for n, record in enumerate(clustered):
        for ax in (loss, accuracy, clust):
            ax.axvline(record["step"], color=PHASE_COLORS["cluster"], ls=":", lw=0.8,
                       label="clustered" if ax is loss and n == 0 else None)
        if record.get("clusterability") is not None:
            clust.plot(record["step"], record["clusterability"], "x", color=PHASE_COLORS["cluster"], ms=4, zorder=5)
    if control and control.get("step") is not None:  # the twin's steps are not logged: its end is one point
        for ax, key in ((accuracy, "test_accuracy"), (clust, "clusterability")):
            if control.get(key) is not None:
                ax.plot(control["step"], control[key], "s", color=PHASE_COLORS["control"], ms=3.5, zorder=5,
                        label="λ=0 control" if ax is accuracy else None)
    loss.set_ylabel("training loss")
    accuracy.set_ylabel("test accuracy")
    clust.set_ylabel("clusterability")
    clust.set_xlabel("step")
    handles = {label: h for ax in (loss, accuracy) for h, label in zip(*ax.get_legend_handles_labels(),
                                                                          strict=True)}
    if handles:
        loss.legend(handles.values(), handles.keys(), frameon=False, loc="upper right")
    if keys:
        clust.legend(handles=keys, frameon=False, loc="best")
    if not any(ax.has_data() for ax in (loss, accuracy, clust)):
        loss.text(0.5, 0.5, "no metrics logged yet", ha="center", va="center", transform=loss.transAxes)
    fig.align_ylabels()
    return fig


def weights_figure(weight: np.ndarray, clusters: dict, layer: str, step: int,
                   found: tuple[float | None, dict | None, int | None] = (None, None, None)):
    """|W| with rows and columns reordered by cluster, scaled to its 99th percentile, with block boundaries; the
    title gives the clusterability `found` (listing.measured: value, null, step) against its null, with its p."""
    out_units, in_units = weight.shape
    picture = block_picture(weight, clusters["row_labels"], clusters["col_labels"], int(clusters["k"]), out_units,
                            in_units)
    fig = _new_figure(COLUMN_WIDTH, 2.9)
    ax = fig.subplots()
    # aspect "auto": an equal-aspect image is re-centred after constrained layout has placed its labels
    image = ax.imshow(np.array(picture.values), cmap="viridis", vmin=0, vmax=1, interpolation="nearest",
                      aspect="auto")
    for bound in picture.row_bounds[1:-1]:
        ax.axhline(bound - 0.5, color=BOUNDARY_COLOR, lw=0.8)
    for bound in picture.col_bounds[1:-1]:
        ax.axvline(bound - 0.5, color=BOUNDARY_COLOR, lw=0.8)
    ax.set_title(f"|W| of {layer} by cluster (k={clusters['k']}, {clusters.get('source', 'weights')}), step {step}"
                 + _measured_line(step, *found))
    ax.set_xlabel("input unit (by cluster)")
    ax.set_ylabel("output unit (by cluster)")
    bar = fig.colorbar(image, ax=ax, fraction=0.05, pad=0.03)
    bar.set_label(f"|W| / {picture.scale:.3g} (99th pct)")
    return fig


def ablation_figure(ablation: dict):
    """The k x classes matrix of accuracy drops (points), each cell labelled, with specialisation U and p."""
    drops = 100 * np.array(ablation["drop"], dtype=float)
    k, n_classes = drops.shape
    limit = max(1.0, float(np.abs(drops).max()))
    fig = _new_figure(COLUMN_WIDTH, 1.2 + 0.32 * k)
    ax = fig.subplots()
    ax.imshow(drops, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto", interpolation="nearest")
    for (i, j), value in np.ndenumerate(drops):
        ax.text(j, i, f"{round(value):d}", ha="center", va="center", fontsize=FONT_PT,
                color="white" if abs(value) > limit / 2 else "black")
    sizes = (ablation.get("null") or {}).get("sizes")
    ax.set_yticks(range(k), [f"{i + 1}" + (f" ({sizes[i]})" if sizes else "") for i in range(k)])
    ax.set_xticks(range(n_classes), [str(c) for c in ablation["classes"]])
    ax.set_xlabel("class\nU: specialisation, 1 − H(lost | class) / H(lost), 1 when\nsilencing loses whole classes; "
                  "p: against random unit sets")
    ax.set_ylabel("cluster (units)")
    ax.set_title("accuracy drop (points) when a cluster is silenced")
    right = ax.secondary_yaxis("right")
    right.set_yticks(range(k), [_spec_label(s, p) for s, p in zip(ablation["specialisation"], ablation["p_value"],
                                                                   strict=True)])
    right.tick_params(length=0)
    return fig


# ------------------------------------------------------------------------------------------------------ helpers

def session_config(session: dict, session_dir: Path) -> Config:
    try:
        return Config.from_dict(session["config"])
    except (ConfigError, TypeError) as exc:
        raise SessionError(f"{session_dir}: its config is invalid ({exc}).") from None


@contextmanager
def _malformed(session_dir: Path, field: str) -> Iterator[None]:
    """A session.json field of the wrong shape is one SessionError, not a traceback."""
    try:
        yield
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise SessionError(f"{session_file(session_dir)}: its {field} is malformed ({exc!r}).") from None


def studied_weights(session: dict, state: dict, session_dir: Path, config: Config) -> list:
    """The Linear weights fc1..fcN of the checkpoint `state` (read_snapshot's, with `session`) as CPU tensors,
    checked against the session's clusters."""
    model = state["trainer"].get("model") or {}
    weights = []
    while f"fc{len(weights) + 1}.weight" in model:
        weights.append(model[f"fc{len(weights) + 1}.weight"])
    layer, clusters = config.studied_layer, session.get("clusters") or {}
    if len(weights) <= layer:
        raise SessionError(f"{session_dir / session['checkpoint']} holds no fc{layer} to study (an MLP's weights "
                           "fc1.weight ... were expected).")
    with _malformed(session_dir, "clusters"):
        labels = list(clusters["row_labels"]) + list(clusters["col_labels"])
        fits = (len(clusters["row_labels"]), len(clusters["col_labels"])) == tuple(weights[layer - 1].shape)
        if not fits or not all(isinstance(v, int) and 0 <= v < int(clusters["k"]) for v in labels):
            raise SessionError(f"{session_dir}: its clusters do not fit fc{layer} at the checkpoint; cluster it "
                               "again.")
    return weights


def _phase_lines(ax, records: list[dict], kind: str, key: str, labelled: bool) -> None:
    chosen = [r for r in records if r.get("type") == kind and r.get(key) is not None]
    for phase, runs in _by_phase(chosen):
        for n, run in enumerate(runs):
            ax.plot([r["step"] for r in run], [r[key] for r in run], color=PHASE_COLORS.get(phase, "0.3"),
                    marker="." if kind == "eval" else None, ms=3, label=phase if labelled and n == 0 else None)


def _by_phase(records: list[dict]) -> Iterator[tuple[str, list[list[dict]]]]:
    """Each phase's records split into runs of consecutive records of that phase (a phase can come back)."""
    runs: dict[str, list[list[dict]]] = {}
    previous = None
    for record in records:
        phase = str(record.get("phase", ""))
        if phase != previous:
            runs.setdefault(phase, []).append([])
        runs[phase][-1].append(record)
        previous = phase
    yield from runs.items()


def _measured_line(step: int, clusterability: float | None, significance: dict | None, at: int | None) -> str:
    """'\nclusterability 0.9743 vs null 0.5852 ± 0.0070, p = 0.0099', and the step it was measured at if not `step`."""
    if clusterability is None:
        return ""
    line = f"\nclusterability {clusterability:.4f}"
    if significance is None:
        line += " (no shuffle null)"
    else:
        mean, std = null_band(significance)
        line += f" vs null {mean:.4f} ± {std:.4f}, p = {p_cell(significance)}"
    return line + (f"\n(measured at step {at})" if at is not None and at != step else "")


def _spec_label(spec: float, p: float | None) -> str:
    return f"U={spec:.2f}" + ("" if p is None else f"\np={p:.3f}")


def _new_figure(width: float, height: float):
    """A Figure that no pyplot state or display backend knows of; savefig renders it with Agg (PNG) or the SVG
    backend, so export works headless and from any thread."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _figure(stem: Path, build, *args) -> list[Path]:
    """Build a figure in the paper style and save it as PNG (300 dpi) and SVG (text kept as text), atomically.
    Fonts are read from the style while artists are made, so building and saving both happen inside it."""
    import matplotlib

    paths = []
    with matplotlib.rc_context(_STYLE):
        fig = build(*args)
        for suffix in ("png", "svg"):
            buffer = io.BytesIO()
            fig.savefig(buffer, format=suffix, metadata={"Date": None} if suffix == "svg" else None)
            paths.append(_write(stem.with_suffix(f".{suffix}"), buffer.getvalue()))
    return paths


def _write(path: Path, data: str | bytes) -> Path:
    atomic_write(path, data.encode() if isinstance(data, str) else data, shared=True)  # the user's umask
    return path


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return value


def _at(values, i):
    return None if values is None or values[i] is None else values[i]
