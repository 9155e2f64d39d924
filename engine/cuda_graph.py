"""CUDA graphs of the training step: captured once per key without training, replayed on a gathered batch."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import torch

log = logging.getLogger("clusterlab")


def graphs_wanted(device: torch.device) -> bool:
    """CUDA graphs for the full-batch step: CUDA only; CLUSTERLAB_CUDA_GRAPHS=0 turns them off."""
    return device.type == "cuda" and os.environ.get("CLUSTERLAB_CUDA_GRAPHS", "1") != "0"


def cached_graph(graphs: dict, key: tuple, capture: Callable[[], torch.cuda.CUDAGraph],
                 what: str) -> torch.cuda.CUDAGraph | None:
    """The CUDA graph for `key`, captured on first use; None if capturing fails (the caller then stays eager)."""
    graph = graphs.get(key)
    if graph is None:
        try:
            graph = capture()
        except Exception as exc:  # noqa: BLE001 - any capture failure just means: stay eager
            log.warning("CUDA graph capture of the %s failed, training eagerly: %s", what, exc)
            return None
        graphs[key] = graph
    return graph


def capture_step(step: Callable[[], None], state: list[torch.Tensor], device: torch.device) -> torch.cuda.CUDAGraph:
    """A graph of `step`, after one warm-up run on a side stream. Warm-up and capture must not train: `state`, what
    the step changes, is put back after, also when capturing fails (the eager step that follows starts from it)."""
    saved = [t.clone() for t in state]
    try:
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            step()
        torch.cuda.current_stream(device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
    finally:
        for t, v in zip(state, saved, strict=True):
            t.copy_(v)
    return graph


def replay(graph: torch.cuda.CUDAGraph, train_x: torch.Tensor, train_y: torch.Tensor, idx: torch.Tensor,
           gx: torch.Tensor, gy: torch.Tensor) -> None:
    """Gather the batch `idx` into the graph's static inputs and run the captured step."""
    torch.index_select(train_x, 0, idx, out=gx)
    torch.index_select(train_y, 0, idx, out=gy)
    graph.replay()
