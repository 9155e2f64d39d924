"""The MLP under study: bias-free Linear layers named fc1..fcN with ReLU between them."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


def build_mlp(n_in: int, hidden: tuple[int, ...], n_out: int, seed: int) -> nn.Sequential:
    """A seeded MLP; the same seed gives the same initial weights on every run."""
    widths = (n_in, *hidden, n_out)
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i in range(len(widths) - 1):
            layers[f"fc{i + 1}"] = nn.Linear(widths[i], widths[i + 1], bias=False)
            if i < len(widths) - 2:
                layers[f"relu{i + 1}"] = nn.ReLU()
    return nn.Sequential(layers)


def studied_weight(model: nn.Sequential, layer: int) -> nn.Parameter:
    """The weight (out x in) of Linear layer `layer` (1-based: fc2 is 2)."""
    return model.get_submodule(f"fc{layer}").weight
