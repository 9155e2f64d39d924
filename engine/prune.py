"""Global magnitude pruning (`--prune`): the smallest share of all weights set to zero once, and held there."""

from __future__ import annotations

from collections.abc import Sequence

import torch


@torch.no_grad()
def prune_global(weights: Sequence[torch.Tensor], fraction: float) -> tuple[torch.Tensor, ...]:
    """Zero the round(fraction · N) weights of smallest |w| over all layers together (N all their weights; ties
    go by position, so the same weights give the same mask), in place; the masks of the weights kept.

    Pruning weights already pruned at the same fraction changes nothing: the zeros are the smallest and exactly as
    many, so the same ones are chosen again.
    """
    flat = torch.cat([w.detach().abs().reshape(-1) for w in weights]).cpu()
    count = round(fraction * flat.numel())
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    keep[torch.argsort(flat, stable=True)[:count]] = False
    masks, start = [], 0
    for w in weights:
        mask = keep[start : start + w.numel()].view(w.shape).to(w.device)
        w.mul_(mask)
        masks.append(mask)
        start += w.numel()
    return tuple(masks)


@torch.no_grad()
def hold(weights: Sequence[torch.Tensor], keep: Sequence[torch.Tensor]) -> None:
    """Set the pruned weights back to zero after a step (each mask broadcasts over a stack's leading axis)."""
    for w, mask in zip(weights, keep, strict=True):
        w.mul_(mask)


def kept(weights: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """The masks of a pruned network's weights from its zeros (a reopened session's: pruned weights stay 0.0)."""
    return tuple(w.detach() != 0 for w in weights)
