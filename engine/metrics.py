"""The differentiable clusterability the regulariser raises (the share of a layer's squared weight mass inside its
clusters' diagonal blocks), each cluster's share of it, and its uniform-mass chance. The measures reported against
a null, batched, are in engine/measures.py."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def block_mask(row_labels: Sequence[int], col_labels: Sequence[int], device=None) -> torch.Tensor:
    """Boolean (rows x cols) mask: True where the row's and the column's cluster are the same."""
    rows = torch.as_tensor(np.asarray(row_labels), device=device)
    cols = torch.as_tensor(np.asarray(col_labels), device=device)
    return rows[:, None] == cols[None, :]


def clusterability(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Differentiable share of sum(W^2) inside the mask; 0 for an all-zero layer instead of 0/0."""
    squared = weight.square()
    total = squared.sum()
    inside = torch.where(mask, squared, torch.zeros((), dtype=squared.dtype, device=squared.device)).sum()
    return inside / total.clamp_min(torch.finfo(squared.dtype).tiny)


def cluster_shares(weight: torch.Tensor, row_labels: Sequence[int], col_labels: Sequence[int], k: int) -> list[float]:
    """Each cluster's diagonal block's share of the layer's squared weight mass (they sum to clusterability)."""
    squared = weight.detach().double().square()
    mask = block_mask(row_labels, col_labels, squared.device)
    per_row = torch.where(mask, squared, torch.zeros((), dtype=squared.dtype, device=squared.device)).sum(1)
    rows = torch.as_tensor(np.asarray(row_labels), device=squared.device)
    per_cluster = torch.zeros(k, dtype=squared.dtype, device=squared.device).index_add_(0, rows, per_row)
    total = squared.sum().clamp_min(torch.finfo(squared.dtype).tiny)
    return (per_cluster / total).tolist()


def chance_level(row_labels: Sequence[int], col_labels: Sequence[int], k: int) -> float:
    """Expected clusterability if the mass were spread evenly: sum_i |R_i||C_i| / (rows * cols)."""
    rows = np.bincount(np.asarray(row_labels), minlength=k)
    cols = np.bincount(np.asarray(col_labels), minlength=k)
    return float(rows @ cols) / float(len(row_labels) * len(col_labels))
