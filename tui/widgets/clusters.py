"""The cluster table: one keyed row per cluster, and every measure of the clustering against its shuffle null."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.reactive import reactive, var
from textual.widgets import DataTable, Static

from engine.format import measure_lines
from engine.snapshot import Snapshot

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

    def show(self, *, k: int, source: str, row_sizes, col_sizes, shares, clusterability: float | None,
             chance: float | None, step: int | None = None, significance: dict | None = None) -> None:
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
        self._show_summary(summary(k, source, clusterability, chance, step, significance))

    def watch_snapshot(self, snap: Snapshot | None) -> None:
        """The snapshot's held clusters (their shares move with training), or none."""
        if snap is None or snap.clusters is None:
            self.clear()
            return
        found = snap.clusters
        self.show(k=found["k"], source=found["source"], row_sizes=found["row_sizes"], col_sizes=found["col_sizes"],
                  shares=found["shares"], clusterability=snap.clusterability, chance=snap.clusterability_chance,
                  step=snap.cluster_step, significance=snap.significance)

    def _show_summary(self, text: str) -> None:
        if text != self._summary:
            self._summary = text
            self.query_one("#cluster-summary", Static).update(text)


def summary(k: int, source: str, clusterability: float | None, chance: float | None, step: int | None,
            significance: dict | None = None) -> str:
    """'k=2 on weights at step 938: clusterability 0.5481; uniform-mass chance 0.4993', then each measure at the
    latest null against it on a line of its own ('clusterability 0.5481 vs null 0.5524 ± 0.0078 (z -0.55 of 100
    shuffles, p 0.762)', ncut, Newman Q); until the null is in (or with --null-samples 0) the first line only."""
    where = f" at step {step}" if step is not None else ""
    text = f"k={k} on {source}{where}"
    if clusterability is None:
        return text
    text += f": clusterability {clusterability:.4f}"
    if chance is not None:
        text += f"; uniform-mass chance {chance:.4f}"
    return "\n".join([text, *(measure_lines(significance) if significance is not None else ())])
