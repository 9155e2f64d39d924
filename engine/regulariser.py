"""The regulariser's step: g - λ · d clusterability / dW, for the studied layer or for every layer of a network
(`--layer all`), formed without autograd inside the trainer's hand-written step."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def regularised(g: torch.Tensor, w: torch.Tensor, masks: torch.Tensor, lams: torch.Tensor) -> torch.Tensor:
    """g - lams[m] * d clusterability_m / dW_m for every model.

    The gradient of inside/total is formed with the very operations autograd runs for
    `engine.metrics.clusterability` (1/total on the mask, -(inside/total)/total everywhere, times 2W), and addcmul
    rounds like add_(alpha=-lam): each model's update is bit-identical to autograd's. A model with λ = 0 keeps g
    exactly.
    """
    squared = w.square()
    zero = torch.zeros((), dtype=w.dtype, device=w.device)
    inside = torch.where(masks, squared, zero).sum((-2, -1), keepdim=True)
    total = squared.sum((-2, -1), keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
    grad_squared = torch.where(masks, 1 / total, zero) + -((inside / total) / total)
    return torch.where(lams != 0, g.addcmul(grad_squared * (2 * w), -lams), g)


def network_terms(weights: Sequence[torch.Tensor], masks: Sequence[torch.Tensor],
                  lams: torch.Tensor) -> list[torch.Tensor]:
    """lams · d clusterability / dW_l for every layer l of a network, from its current weights: clusterability
    = I / T, I the squared mass inside the masks over all layers, T all of it, so d/dW_l = 2 W_l (mask_l / T - I / T²).
    Adding lr times a term to the layer after its CE update is SGD on CE - λ · clusterability."""
    squared = [w.square() for w in weights]
    zero = torch.zeros((), dtype=squared[0].dtype, device=squared[0].device)
    inside = sum(torch.where(m, s, zero).sum((-2, -1), keepdim=True) for s, m in zip(squared, masks, strict=True))
    total = sum(s.sum((-2, -1), keepdim=True) for s in squared).clamp_min(torch.finfo(squared[0].dtype).tiny)
    share = inside / total / total
    return [lams * 2 * w * (torch.where(m, 1 / total, zero) - share) for w, m in zip(weights, masks, strict=True)]
