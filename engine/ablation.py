"""Cluster ablation: silence each cluster's units, measure per-class accuracy drops, and test them against a null."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

# The largest activation tensor one chunk of ablations may hold (bytes); a chunk holds a few such tensors.
_CHUNK_BYTES = 128 * 2**20
# Null specialisations this close below the observed one count as "at least as specialised" (float ties).
_TIE = 1e-12


@dataclass(frozen=True)
class Lesion:
    """One lesion statistic of each cluster against `samples` random unit sets of the cluster's size (Hod et al.
    2021): `percentile` = % of random sets below the cluster, p = (r + 1) / (samples + 1) with r the sets at least
    as high, and `fisher_p` the clusters' p combined by Fisher's method (-2 sum log p ~ chi2 with 2k dof; the
    clusters' random sets are drawn independently). None where the null is off."""

    value: tuple[float, ...]
    percentile: tuple[float | None, ...]
    p_value: tuple[float | None, ...]
    null_mean: tuple[float | None, ...]
    fisher_p: float | None


def against_null(observed: torch.Tensor, null: torch.Tensor) -> Lesion:
    """Each cluster's value (k,) against its random sets (k, samples)."""
    k, samples = null.shape
    if not samples:
        return Lesion(tuple(observed.tolist()), (None,) * k, (None,) * k, (None,) * k, None)
    from scipy.stats import combine_pvalues

    r = (null >= observed[:, None] - _TIE).sum(1)
    p = (r + 1).double() / (samples + 1)
    below = (null < observed[:, None] - _TIE).double().mean(1) * 100
    return Lesion(tuple(observed.tolist()), tuple(below.tolist()), tuple(p.tolist()), tuple(null.mean(1).tolist()),
                  float(combine_pvalues(p.numpy(), method="fisher").pvalue))


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
    lesion: dict[str, Lesion]

    def to_dict(self) -> dict:
        """The JSON form. `null` holds, per cluster: `sizes` (units in each random set = |R_i|), `mean` and `std`
        of the random sets' specialisations, and `drop_mean` (k x classes: their mean per-class drop, what
        silencing that many random units costs each class); plus `samples` and the `seed` that drew them. `lesion`
        holds each cluster's importance, selectivity and specialisation against the same random sets (`Lesion`)."""
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
            "lesion": {name: {key: list(v) if isinstance(v, tuple) else v for key, v in asdict(stat).items()}
                       for name, stat in self.lesion.items()},
        }


def specialisation(lost: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """How much the class decides whether an image is lost: U = 1 - H(lost | class) / H(lost), per row.

    Over the test images the intact network gets right (`right`, (C,): how many of each class), an image is lost
    when the silenced network gets it wrong (`lost`, (..., C): how many of each class). With pi_c = right_c / sum
    right and f_c = lost_c / right_c, H(lost) = h(sum_c pi_c f_c) and H(lost | class) = sum_c pi_c h(f_c), h the
    binary entropy: U is the uncertainty coefficient of "lost" given the class, the share of the loss's entropy
    that the class explains. Images the silencing newly gets right play no part. 1: whole classes are lost and the
    others untouched (a cluster that carries classes 0-4 outright, or one class); 0: every class loses the same
    share, or nothing (or everything) is lost. It does not say how many classes a cluster carries: the drop row
    does. A few images lost by chance give a small positive U, which is why each cluster's U is compared with
    random unit sets of its size.
    """
    lost, right = lost.double(), right.double()
    tiny = torch.finfo(lost.dtype).tiny
    pi = right / right.sum().clamp_min(tiny)
    share = torch.where(right > 0, lost / right.clamp_min(tiny), 0.0)
    h_lost = _binary_entropy((share * pi).sum(-1))
    h_given_class = (_binary_entropy(share) * pi).sum(-1)
    # U is in [0, 1] by the concavity of h; the clamp only removes rounding
    return torch.where(h_lost > 0, 1 - h_given_class / h_lost.clamp_min(tiny), 0.0).clamp(0, 1)


def selectivity(drops: torch.Tensor) -> torch.Tensor:
    """Class selectivity of a lesion (Morcos et al. 2018's index on per-class accuracy drops, as Hod et al. 2021 use
    it), per row of drops (..., C): (d_max - mean of the other d) / (d_max + mean of the other d), d = drops
    clamped at 0 (a rise is no damage). 1: one class loses and no other; 0: every class loses alike, or none."""
    d = drops.clamp_min(0)
    top = d.max(-1).values
    rest = (d.sum(-1) - top) / max(d.shape[-1] - 1, 1)
    total = top + rest
    return torch.where(total > 0, (top - rest) / total.clamp_min(torch.finfo(d.dtype).tiny), 0.0)


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
    specialisation is at least cluster i's (n = null_samples, the session's --null-samples; 0 turns the null
    off). Same seed, same numbers.

    Every ablation is a 0/1 mask over the studied layer's outputs. Zeroing output j of layer L is zeroing column j
    of layer L+1, so the layers below L+1 run once, and the 1 + k + k*n masked networks run as batched matrix
    products from there, in chunks that keep each activation tensor under _CHUNK_BYTES. Besides the
    specialisation, each cluster's importance (the drop in overall test accuracy) and selectivity (`selectivity`)
    are compared with the same random sets (`Ablation.lesion`).
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
    lost = ((1 - correct[1:]) * correct[:1]) @ onehot  # (ablations, classes): right when intact, wrong silenced
    stats = {
        "importance": (correct[0].sum() - correct[1:].sum(1)).double().cpu() / test_y.numel(),
        "selectivity": selectivity(drops),
        "specialisation": specialisation(lost.cpu(), (correct[0] @ onehot).cpu()),
    }
    lesion = {name: against_null(v[:k], v[k:].reshape(k, null_samples)) for name, v in stats.items()}
    spec = stats["specialisation"]
    observed, null = spec[:k], spec[k:].reshape(k, null_samples)
    null_drops = drops[k:].reshape(k, null_samples, drops.shape[1])

    if null_samples:
        p_value = lesion["specialisation"].p_value
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
        lesion=lesion,
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
