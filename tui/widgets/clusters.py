"""The cluster table: one keyed row per cluster, and every measure of the clustering against its shuffle null."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.reactive import reactive, var
from textual.widgets import DataTable, Static

from engine.format import measure_lines
from engine.snapshot import Snapshot
from tui.state import RUNNING

COLUMNS = (("cluster", "cluster"), ("rows", "row size"), ("cols", "col size"), ("share", "share of mass"))


NO_CLUSTERS = "No clusters yet: press c to cluster the studied layer."


class ClusterTable(Vertical):
    """Shows the latest clusters found; empty until the layer is clustered. Called several times a second while
    training (each save's snapshot): what did not change is not updated, so nothing is laid out again."""

    snapshot: reactive[Snapshot | None] = var(None, init=False)

    def compose(self) -> ComposeResult:
        yield Static(NO_CLUSTERS, id="cluster-summary")
        table: DataTable = DataTable(id="cluster-table", cursor_type="row", zebra_stripes=True)
        for key, label in COLUMNS:
            table.add_column(label, key=key)
        yield table

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._rows: list[tuple[str, str, str]] = []  # (cluster, row size, col size) of the rows shown
        self._shares: list[str] = []
        self._summary = NO_CLUSTERS

    def clear(self) -> None:
        if self._rows:
            self.query_one(DataTable).clear()
            self._rows, self._shares = [], []
        self._show_summary(NO_CLUSTERS)

    def show(self, *, k: int, source: str, row_sizes, col_sizes, shares, text: str) -> None:
        """Show these clusters; for the same clusters, only the shares change, in place, keeping the cursor."""
        table = self.query_one(DataTable)
        rows = [(str(i + 1), str(r), str(c)) for i, (r, c) in enumerate(zip(row_sizes, col_sizes, strict=True))]
        texts = [f"{share:.4f}" for share in shares]
        if rows != self._rows:
            table.clear()
            for row, share in zip(rows, texts, strict=True):
                table.add_row(*row, share, key=f"cluster-{row[0]}")
        else:
            for row, share, old in zip(rows, texts, self._shares, strict=True):
                if share != old:
                    table.update_cell(f"cluster-{row[0]}", "share", share)
        self._rows, self._shares = rows, texts
        self._show_summary(text)

    def watch_snapshot(self, snap: Snapshot | None) -> None:
        """The snapshot's held clusters (their shares move with training), or none."""
        if snap is None or snap.clusters is None:
            self.clear()
            return
        found = snap.clusters
        null_step = snap.significance.get("step") if snap.significance is not None else None
        live = snap.state in RUNNING and snap.figures_step != null_step
        self.show(k=found["k"], source=found["source"], row_sizes=found["row_sizes"], col_sizes=found["col_sizes"],
                  shares=found["shares"],
                  text=summary(found["k"], found["source"], snap.cluster_step, snap.clusterability,
                               snap.clusterability_chance, snap.figures_step, snap.significance, live=live))

    def _show_summary(self, text: str) -> None:
        if text != self._summary:
            self._summary = text
            self.query_one("#cluster-summary", Static).update(text)


def summary(k: int, source: str, cluster_step: int | None, clusterability: float | None, chance: float | None,
            step: int | None, significance: dict | None = None, *, live: bool = False) -> str:
    """Each figure with the step it was measured at: 'k=2 on weights, found at step 938', 'step 1,200:
    clusterability 0.5481 (uniform-mass chance 0.4993)' (live while training: the null comes later), then the
    shuffle null's step and each measure at it against the null ('clusterability 0.5481 vs null 0.5524 ± 0.0078
    (z -0.55 of 100 shuffles, p 0.762)', ncut, Newman Q); without a null (or with --null-samples 0) no p."""
    lines = [f"k={k} on {source}" + (f", found at step {cluster_step:,}" if cluster_step is not None else "")]
    if clusterability is not None:
        where = "" if step is None else f"step {step:,}{' (live)' if live else ''}: "
        lines.append(f"{where}clusterability {clusterability:.4f}"
                     + (f" (uniform-mass chance {chance:.4f})" if chance is not None else ""))
    if significance is not None:
        null_step = significance.get("step")
        lines.append("its shuffle null:" if null_step is None else f"at step {null_step:,}, against its shuffle null:")
        lines.extend(measure_lines(significance))
    return "\n".join(lines)
