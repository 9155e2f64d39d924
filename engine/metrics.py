"""Clusterability (the share of a layer's squared weight mass inside its clusters' diagonal blocks) and the
normalised cut of the layer's bipartite graph, for one layer or a batch of them."""

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


def clusterability_batch(weights: np.ndarray, rows: np.ndarray, cols: np.ndarray, k: int) -> np.ndarray:
    """Clusterability of each matrix of a batch (n, r, c) under its labels (n, r) and (n, c), float64 (n,);
    0 for an all-zero matrix."""
    squared = np.square(np.asarray(weights, dtype=np.float64))
    inside, _, _ = _diagonal_blocks(squared, rows, cols, k)
    return inside.sum(axis=1) / np.maximum(squared.sum(axis=(1, 2)), np.finfo(np.float64).tiny)


def ncut(weight: np.ndarray, row_labels: Sequence[int], col_labels: Sequence[int], k: int) -> float:
    """Normalised cut of one layer's clustering; see `ncut_batch`."""
    return float(ncut_batch(np.asarray(weight)[None], np.asarray(row_labels)[None], np.asarray(col_labels)[None], k)[0])


def ncut_batch(weights: np.ndarray, rows: np.ndarray, cols: np.ndarray, k: int) -> np.ndarray:
    """Normalised cut (Shi & Malik; Filan et al. 2021) of each matrix's bipartite graph, float64 (n,).

    The graph's nodes are the layer's output units (rows) and input units (columns), its edges weigh |W_ij|, and
    cluster c is the node set R_c + C_c. ncut = sum_c cut(c) / vol(c): cut(c) is the weight of the edges leaving
    c, vol(c) the summed degree of its nodes, so cut(c) = vol(c) - 2 * (the mass of block c). 0 is perfectly
    modular, k the worst; a cluster with no edges at all (vol 0) adds 0.
    """
    inside, row_mass, col_mass = _diagonal_blocks(np.abs(np.asarray(weights, dtype=np.float64)), rows, cols, k)
    volume = row_mass + col_mass
    cut = volume - 2.0 * inside
    return np.where(volume > 0, cut / np.where(volume > 0, volume, 1.0), 0.0).sum(axis=1)


def _diagonal_blocks(mass: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                     k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per cluster (n, k): the mass of its diagonal block, of its rows and of its columns."""
    rows_hot = np.asarray(rows)[..., None] == np.arange(k)  # (n, r, k)
    cols_hot = (np.asarray(cols)[..., None] == np.arange(k)).astype(np.float64)  # (n, c, k)
    per_row = np.matmul(mass, cols_hot)  # (n, r, k): each row's mass towards each cluster's columns
    inside = np.where(rows_hot, per_row, 0.0).sum(axis=1)
    row_mass = np.where(rows_hot, per_row.sum(axis=2, keepdims=True), 0.0).sum(axis=1)
    col_mass = np.matmul(mass.sum(axis=1)[:, None, :], cols_hot)[:, 0]
    return inside, row_mass, col_mass
