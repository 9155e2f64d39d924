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


def block_masks(clusters, device=None) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """The regulariser's mask of `clusters` (engine.clustering.Clusters): the studied layer's block mask, or for a
    whole network's clusters a tuple of one per layer (W_l's rows are group l + 1, its columns group l)."""
    if clusters.units is None:
        return block_mask(clusters.row_labels, clusters.col_labels, device)
    groups = clusters.units
    return tuple(block_mask(rows, cols, device) for cols, rows in zip(groups[:-1], groups[1:], strict=True))


def clusterability(weight: torch.Tensor | Sequence[torch.Tensor],
                   mask: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """Differentiable share of sum(W^2) inside the mask, of one layer or (sequences of weights and masks) of a
    whole network's layers together; 0 for all-zero weights instead of 0/0."""
    if isinstance(mask, torch.Tensor):
        weight, mask = [weight], [mask]
    inside = total = None
    for w, m in zip(weight, mask, strict=True):
        squared = w.square()
        part = torch.where(m, squared, torch.zeros((), dtype=squared.dtype, device=squared.device)).sum()
        inside, total = (part, squared.sum()) if inside is None else (inside + part, total + squared.sum())
    return inside / total.clamp_min(torch.finfo(total.dtype).tiny)


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
