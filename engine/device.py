"""Which device computes, and how many CPU threads it may use."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from engine.errors import ConfigError


def cuda_available() -> bool:
    return torch.cuda.is_available()


def resolve_device(name: str) -> torch.device:
    """'auto' is CUDA when present, else the CPU; asking for CUDA without one is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is available; use --device cpu or auto.")
    return torch.device(name)


def configure_threads(device: torch.device) -> int:
    """On the CPU, leave one core to the UI and the OS: the step's GEMMs are small, and a second OpenMP team
    contending for the cores costs more than it gives (2-core dev box, training on the engine thread: 2,096
    steps/s with 1 thread vs 1,881 with 2, medians of 6 interleaved runs). Returns the thread count."""
    if device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - 1))
    return torch.get_num_threads()


@contextmanager
def all_cores(device: torch.device) -> Iterator[None]:
    """One big GEMM (a test-set evaluation) is worth every core: 13.6 ms with 2 threads vs 27.8 ms with 1
    (MNIST test set on the engine thread, medians of 8)."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
