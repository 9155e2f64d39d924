"""Cluster ablation: silence each cluster's units, measure per-class accuracy drops, and test them against a null."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

# The largest activation tensor one chunk of ablations may hold (bytes); a chunk holds a few such tensors.
_CHUNK_BYTES = 128 * 2**20
# Null specialisations this close below the observed one count as "at least as specialised" (float ties).
_TIE = 1e-12


@dataclass(frozen=True)
class Ablation:
    """Per-class accuracy drops when each cluster's units are silenced, with a random-unit-set null.

    drop[i][c] is the intact network's accuracy on class c minus its accuracy with cluster i silenced (positive:
    the cluster matters to that class). p_value[i] is None when the null was turned off (null_samples=0).
    """

    units: str
    classes: tuple[int, ...]
    baseline: tuple[float, ...]
    drop: tuple[tuple[float, ...], ...]
    specialisation: tuple[float, ...]
    p_value: tuple[float | None, ...]
    null_samples: int
    null_seed: int
    null_sizes: tuple[int, ...]
    null_mean: tuple[float | None, ...]
    null_std: tuple[float | None, ...]
    null_drop_mean: tuple[tuple[float, ...], ...] | None

    def to_dict(self) -> dict:
        """The JSON form. `null` holds, per cluster: `sizes` (units in each random set = |R_i|), `mean` and `std`
        of the random sets' specialisations, and `drop_mean` (k x classes: their mean per-class drop, what
        silencing that many random units costs each class); plus `samples` and the `seed` that drew them."""
        return {
            "units": self.units,
            "classes": list(self.classes),
            "baseline": list(self.baseline),
            "drop": [list(row) for row in self.drop],
            "specialisation": list(self.specialisation),
            "p_value": list(self.p_value),
            "null": {
                "samples": self.null_samples,
                "seed": self.null_seed,
                "sizes": list(self.null_sizes),
                "mean": list(self.null_mean),
                "std": list(self.null_std),
                "drop_mean": None if self.null_drop_mean is None else [list(r) for r in self.null_drop_mean],
            },
        }


def specialisation(drops: torch.Tensor, baseline: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """How much the class decides whether an image is lost: U = 1 - H(lost | class) / H(lost), per row.

    drops is (..., C), per-class accuracy drops; baseline (C,) the intact accuracies; counts (C,) the test images
    per class. Among the images the intact network gets right (class c holds a share pi_c of them), silencing
    loses f_c = clamp(drop_c / baseline_c, 0, 1) of class c's (a net rise in accuracy counts as no loss).
    H(lost) = h(sum_c pi_c f_c) and H(lost | class) = sum_c pi_c h(f_c), h the binary entropy: U is the
    uncertainty coefficient of "lost" given the class, the share of the loss's entropy that the class explains.
    1: whole classes are lost and the others untouched (a cluster that carries classes 0-4 outright, or one
    class); 0: every class loses the same share, or nothing (or everything) is lost. It does not say how many
    classes a cluster carries: the drop row does. A few images lost by chance give a small positive U, which is
    why each cluster's U is compared with random unit sets of its size.
    """
    tiny = torch.finfo(drops.dtype).tiny
    pi = (baseline * counts).to(drops.dtype)
    pi = pi / pi.sum().clamp_min(tiny)
    lost = torch.where(baseline > 0, drops.clamp_min(0) / baseline.clamp_min(tiny), 0.0).clamp(0, 1)
    h_lost = _binary_entropy((lost * pi).sum(-1))
    h_given_class = (_binary_entropy(lost) * pi).sum(-1)
    # U is in [0, 1] by the concavity of h; the clamp only removes rounding
    return torch.where(h_lost > 0, 1 - h_given_class / h_lost.clamp_min(tiny), 0.0).clamp(0, 1)


def _binary_entropy(p: torch.Tensor) -> torch.Tensor:
    return -torch.special.xlogy(p, p) - torch.special.xlogy(1 - p, 1 - p)


@torch.no_grad()
def ablate(weights: Sequence[torch.Tensor], studied: int, row_labels: Sequence[int], k: int, test_x: torch.Tensor,
           test_y: torch.Tensor, n_classes: int, *, null_samples: int = 100, seed: int = 0) -> Ablation:
    """Silence each cluster's output units of Linear layer `studied` (1-based) in turn and measure per-class test
    accuracy; compare each cluster's specialisation with `null_samples` random unit sets of the same size.

    weights are the bias-free MLP's Linear weights fc1..fcN (out x in), ReLU between them. Cluster i's units are
    the studied layer's output units in R_i (row_labels == i): their outputs are set to zero, which, with no bias,
    is the same as zeroing those rows of the layer's weight. Classes are 0..n_classes-1 less any without a test
    image. Specialisation is defined at `specialisation`; p_i = (r + 1) / (n + 1), r being the random sets whose
    specialisation is at least cluster i's (n = null_samples; 0 turns the null off). Same seed, same numbers.

    Every ablation is a 0/1 mask over the studied layer's outputs. Zeroing output j of layer L is zeroing column j
    of layer L+1, so the layers below L+1 run once, and the 1 + k + k*n masked networks run as batched matrix
    products from there, in chunks that keep each activation tensor under _CHUNK_BYTES.
    """
    rows = torch.as_tensor(np.asarray(row_labels, dtype=np.int64))
    n_out = weights[studied - 1].shape[0]
    if rows.numel() != n_out or null_samples < 0:
        raise ValueError(f"{rows.numel()} row labels for {n_out} output units, or a negative null_samples")
    sizes = torch.bincount(rows, minlength=k)[:k]
    cluster_masks = (rows[None, :] != torch.arange(k)[:, None]).float()
    null_masks = _random_masks(sizes, n_out, null_samples, seed)
    masks = torch.cat([torch.ones(1, n_out), cluster_masks, null_masks])

    device = test_x.device
    present = torch.bincount(test_y, minlength=n_classes).cpu() > 0
    classes = torch.arange(present.numel())[present]
    correct = _correct(weights, studied, masks.to(device), test_x, test_y)  # (masks, N)
    onehot = (test_y[:, None] == classes.to(device)[None, :]).to(correct.dtype)
    # float64 from here: accuracies are exact ratios of counts, drops differences of them
    counts = onehot.sum(0).double().cpu()
    accuracy = (correct @ onehot).double().cpu() / counts  # (masks, classes)
    drops = accuracy[:1] - accuracy[1:]
    spec = specialisation(drops, accuracy[0], counts)
    observed, null = spec[:k], spec[k:].reshape(k, null_samples)
    null_drops = drops[k:].reshape(k, null_samples, drops.shape[1])

    if null_samples:
        r = (null >= observed[:, None] - _TIE).sum(1)
        p_value = tuple(((r + 1).double() / (null_samples + 1)).tolist())
        null_mean, null_std = tuple(null.mean(1).tolist()), tuple(null.std(1, correction=0).tolist())
        null_drop_mean = _rows(null_drops.mean(1))
    else:
        p_value = null_mean = null_std = (None,) * k
        null_drop_mean = None
    return Ablation(
        units=(f"fc{studied} output units in R_i set to zero (with no bias, the same as zeroing those rows of "
               f"fc{studied}'s weight)"),
        classes=tuple(classes.tolist()),
        baseline=tuple(accuracy[0].tolist()),
        drop=_rows(drops[:k]),
        specialisation=tuple(observed.tolist()),
        p_value=p_value,
        null_samples=null_samples,
        null_seed=seed,
        null_sizes=tuple(sizes.tolist()),
        null_mean=null_mean,
        null_std=null_std,
        null_drop_mean=null_drop_mean,
    )


def _random_masks(sizes: torch.Tensor, n_out: int, samples: int, seed: int) -> torch.Tensor:
    """(k * samples, n_out) masks, cluster by cluster: each zeroes `sizes[i]` distinct units drawn uniformly."""
    generator = torch.Generator().manual_seed(seed)
    k = sizes.numel()
    # a random permutation's ranks: the units ranked below |R_i| form a uniform random set of that size
    ranks = torch.rand(k * samples, n_out, generator=generator).argsort(1).argsort(1)
    return (ranks >= sizes.repeat_interleave(samples)[:, None]).float()


def _correct(weights: Sequence[torch.Tensor], studied: int, masks: torch.Tensor, x: torch.Tensor,
             y: torch.Tensor) -> torch.Tensor:
    """(masks, N) 0/1 float: whether each masked network classifies each test sample correctly."""
    h = x
    for w in weights[: studied]:
        h = torch.mm(h, w.t()).relu_()  # the studied layer's outputs, after its ReLU (relu(0) = 0: masks commute)
    h_t = h.t().contiguous()  # (units, N): feature-major, so each chunk's first layer is one plain GEMM
    after = weights[studied:]
    widest = max(w.shape[0] for w in after)
    chunk = max(1, _CHUNK_BYTES // (x.shape[0] * widest * h.element_size()))
    out = []
    for start in range(0, masks.shape[0], chunk):
        m = masks[start : start + chunk]
        masked = (after[0][None] * m[:, None, :]).reshape(-1, h_t.shape[0])  # (chunk * next width, units)
        a = torch.mm(masked, h_t).view(m.shape[0], after[0].shape[0], -1)  # (chunk, next width, N)
        for w in after[1:]:
            a = torch.matmul(w, a.relu_())
        out.append((_first_argmax(a) == y).float())
    return torch.cat(out)


def _first_argmax(logits: torch.Tensor) -> torch.Tensor:
    """argmax over dim 1 of (masks, classes, N), first index on ties like torch.argmax: a strided argmax over the
    classes costs ~8x as much as this max, compare and max of reversed indices (measured 280 vs 36 ms, 200 masks
    of MNIST's test set)."""
    n = logits.shape[1]
    reversed_index = torch.arange(n, 0, -1, dtype=torch.uint8 if n < 256 else torch.int32, device=logits.device)
    is_max = logits == logits.amax(1, keepdim=True)
    return n - (is_max * reversed_index.view(1, n, 1)).amax(1).long()


def _rows(matrix: torch.Tensor) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(row) for row in matrix.tolist())
