"""The cluster table: one keyed row per cluster, and the clusterability against its shuffle null."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, Static

COLUMNS = (("cluster", "cluster"), ("rows", "row size"), ("cols", "col size"), ("share", "share of mass"))


class ClusterTable(Vertical):
    """Shows the latest clusters found; empty until the layer is clustered."""

    def compose(self) -> ComposeResult:
        yield Static("No clusters yet: press c to cluster the studied layer.", id="cluster-summary")
        table: DataTable = DataTable(id="cluster-table", cursor_type="row", zebra_stripes=True)
        for key, label in COLUMNS:
            table.add_column(label, key=key)
        yield table

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._rows: list[tuple[str, str, str]] = []  # (cluster, row size, col size) of the rows shown

    def clear(self) -> None:
        self.query_one(DataTable).clear()
        self._rows = []
        self.query_one("#cluster-summary", Static).update("No clusters yet: press c to cluster the studied layer.")

    def show(self, *, k: int, source: str, row_sizes, col_sizes, shares, clusterability: float | None,
             chance: float | None, step: int | None = None, significance: dict | None = None) -> None:
        """Show these clusters; for the same clusters, only the shares change, in place, keeping the cursor."""
        table = self.query_one(DataTable)
        rows = [(str(i + 1), str(r), str(c)) for i, (r, c) in enumerate(zip(row_sizes, col_sizes, strict=True))]
        if rows != self._rows:
            table.clear()
            for row, share in zip(rows, shares, strict=True):
                table.add_row(*row, f"{share:.4f}", key=f"cluster-{row[0]}")
            self._rows = rows
        else:
            for row, share in zip(rows, shares, strict=True):
                table.update_cell(f"cluster-{row[0]}", "share", f"{share:.4f}")
        self.query_one("#cluster-summary", Static).update(summary(k, source, clusterability, chance, step,
                                                                  significance))


def summary(k: int, source: str, clusterability: float | None, chance: float | None, step: int | None,
            significance: dict | None = None) -> str:
    """'k=2 on weights at step 938: clusterability 0.5481 vs null 0.5524 ± 0.0078 (z -0.55, p 0.762);
    uniform-mass chance 0.4993'. Without a null (--null-samples 0) the chance level is all there is to compare."""
    where = f" at step {step}" if step is not None else ""
    text = f"k={k} on {source}{where}"
    if clusterability is None:
        return text
    text += f": clusterability {clusterability:.4f}"
    if significance is not None:
        z = significance["z"]
        z_text = f"z {z:.2f}, " if z is not None else ""
        text += (f" vs null {significance['null_mean']:.4f} ± {significance['null_std']:.4f} "
                 f"({z_text}p {significance['p_value']:.3f}, n={significance['samples']})")
    if chance is not None:
        text += f"; uniform-mass chance {chance:.4f}"
    return text
