"""A display-sized picture of a layer's |W|, rows and columns ordered by cluster (numpy only: the UI imports it)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Pooled values are shown relative to this percentile, so a few large weights do not wash out the blocks.
_SCALE_PERCENTILE = 99.0


@dataclass(frozen=True)
class BlockPicture:
    """|W| reordered by cluster and block-mean pooled; immutable tuples, safe to hand between threads.

    values[r][c] is in [0, 1] (pooled |W| / scale, clipped). Cluster i spans picture rows
    row_bounds[i]:row_bounds[i + 1] and columns col_bounds[i]:col_bounds[i + 1] (k + 1 entries each, from 0 to
    the picture's size); no picture cell mixes two clusters. shape is the layer's (out, in); scale the |W| that
    maps to 1.0.
    """

    values: tuple[tuple[float, ...], ...]
    row_bounds: tuple[int, ...]
    col_bounds: tuple[int, ...]
    shape: tuple[int, int]
    scale: float

    @property
    def size(self) -> tuple[int, int]:
        """(rows, cols) of the picture."""
        return self.row_bounds[-1], self.col_bounds[-1]

    @property
    def k(self) -> int:
        return len(self.row_bounds) - 1


def block_picture(weight: np.ndarray, rows: Sequence[int], cols: Sequence[int], k: int, max_rows: int,
                  max_cols: int) -> BlockPicture:
    """|weight| with rows and columns sorted by cluster (stably), pooled to at most max_rows x max_cols.

    Each cluster gets picture rows (and columns) in proportion to its size, at least one if it has any unit (so
    with more non-empty clusters than max_rows the picture has a row per cluster), and its units are pooled by
    block means within it: the block boundaries fall between picture cells. A layer no bigger than the limits
    keeps one cell per weight.
    """
    a = np.abs(np.asarray(weight, dtype=np.float64))
    rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
    if a.shape != (rows.size, cols.size) or max_rows < 1 or max_cols < 1:
        raise ValueError(f"labels {rows.size}x{cols.size} for a {a.shape} weight, or an empty picture size")
    row_order, row_edges, row_bounds = _pooling(rows, k, max_rows)
    col_order, col_edges, col_bounds = _pooling(cols, k, max_cols)
    pooled = _block_means(a[np.ix_(row_order, col_order)], row_edges, col_edges)
    scale = float(np.percentile(pooled, _SCALE_PERCENTILE)) if pooled.size else 0.0
    shown = np.clip(pooled / scale, 0.0, 1.0) if scale > 0 else np.zeros_like(pooled)
    return BlockPicture(
        values=tuple(tuple(row) for row in shown.tolist()),
        row_bounds=row_bounds,
        col_bounds=col_bounds,
        shape=(int(a.shape[0]), int(a.shape[1])),
        scale=scale,
    )


def _pooling(labels: np.ndarray, k: int, cells: int) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """The units' order (by cluster), the unit index where each picture cell starts, and the clusters' cell
    bounds."""
    order = np.argsort(labels, kind="stable")
    sizes = np.bincount(labels, minlength=k)[:k]
    shares = _apportion(sizes, min(cells, int(sizes.sum())))
    unit_starts = np.concatenate([[0], np.cumsum(sizes)])
    edges = np.concatenate([unit_starts[i] + (np.arange(shares[i]) * sizes[i]) // shares[i] for i in range(k)])
    bounds = tuple(int(b) for b in np.concatenate([[0], np.cumsum(shares)]))
    return order, edges.astype(np.int64), bounds


def _apportion(sizes: np.ndarray, cells: int) -> np.ndarray:
    """Split `cells` over clusters in proportion to their sizes: one cell for each non-empty cluster, then
    D'Hondt (each further cell to the cluster with most units per cell), never more cells than units."""
    shares = (sizes > 0).astype(np.int64)
    for _ in range(cells - int(shares.sum())):
        per_cell = np.where(sizes > shares, sizes / np.maximum(shares, 1), -1.0)
        shares[int(per_cell.argmax())] += 1
    return shares


def _block_means(a: np.ndarray, row_edges: np.ndarray, col_edges: np.ndarray) -> np.ndarray:
    """Mean of each block between consecutive edges (the last block runs to the end)."""
    sums = np.add.reduceat(np.add.reduceat(a, row_edges, axis=0), col_edges, axis=1)
    heights = np.diff(np.append(row_edges, a.shape[0]))
    widths = np.diff(np.append(col_edges, a.shape[1]))
    return sums / np.outer(heights, widths)
