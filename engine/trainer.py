"""The training state and its tight step: device-resident batches, no host sync, gradient capture."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from engine.config import Config
from engine.data import Dataset
from engine.metrics import clusterability
from engine.model import build_mlp, studied_weight


class Trainer:
    """Model, optimizer, data order and gradient accumulator; everything a checkpoint must hold."""

    def __init__(self, config: Config, data: Dataset, device: torch.device) -> None:
        self.config = config
        self.data = data
        self.device = device
        self.model = build_mlp(data.n_features, config.hidden, data.n_classes, config.seed).to(device)
        self.weight = studied_weight(self.model, config.studied_layer)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=config.lr, **_sgd_options(device))
        # A dedicated CPU generator makes the batch order independent of any other use of randomness.
        self.generator = torch.Generator().manual_seed(config.seed)
        self.perm: torch.Tensor | None = None
        self.position = 0
        self.epoch = 0
        self.step = 0
        width = self.weight.shape[1]
        self._grad_sum = torch.zeros(width, width, dtype=torch.float64, device=device)
        self._grad_partial = torch.zeros(width, width, device=device)
        self._partial_steps = 0
        self.grad_steps = 0
        self.batch_size = config.batch_size
        self.steps_per_epoch = math.ceil(data.n_train / config.batch_size)
        self._loss_sum = torch.zeros((), device=device)
        self._loss_count = 0

    def train_step(self, mask: torch.Tensor | None = None, lam: float = 0.0, capture: bool = False) -> None:
        """One optimizer step on the next batch; with `mask`, loss = CE - lam * clusterability."""
        x, y = self._next_batch()
        loss = F.cross_entropy(self.model(x), y)
        total = loss - lam * clusterability(self.weight, mask) if mask is not None else loss
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if capture:
            self._capture(self.weight.grad)
        self.optimizer.step()
        self._loss_sum += loss.detach()
        self._loss_count += 1
        self.step += 1

    def _capture(self, g: torch.Tensor) -> None:
        # S += g^T g / |g|^2 keeps one (in x in) matrix however long the run, never a list of gradients.
        # A float32 partial sum over a few steps, folded into float64, keeps the per-step cost to one GEMM.
        unit = g * (g * g).sum().clamp_min(torch.finfo(g.dtype).tiny).rsqrt()
        self._grad_partial.addmm_(unit.T, unit)
        self._partial_steps += 1
        self.grad_steps += 1
        if self._partial_steps == _PARTIAL_STEPS:
            self._fold_partial()

    def _fold_partial(self) -> None:
        if self._partial_steps:
            self._grad_sum += self._grad_partial
            self._grad_partial.zero_()
            self._partial_steps = 0

    @property
    def grad_sum(self) -> torch.Tensor:
        """S = sum over captured steps of g^T g / |g|^2, float64 (in x in)."""
        self._fold_partial()
        return self._grad_sum

    def take_loss(self) -> float | None:
        """Mean training loss since the last call (one host sync), or None if no step ran."""
        if self._loss_count == 0:
            return None
        value = self._loss_sum.item() / self._loss_count
        self._loss_sum.zero_()
        self._loss_count = 0
        return value

    @property
    def epoch_done(self) -> bool:
        """True right after the last batch of an epoch was used."""
        return self.perm is not None and self.position >= self.perm.numel()

    @torch.no_grad()
    def evaluate(self) -> float:
        """Test-set accuracy in one batched forward pass."""
        predictions = self.model(self.data.test_x).argmax(dim=1)
        return (predictions == self.data.test_y).float().mean().item()

    @torch.no_grad()
    def clusterability_of(self, mask: torch.Tensor) -> float:
        return clusterability(self.weight, mask).item()

    def _next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.perm is None or self.position >= self.perm.numel():
            if self.perm is not None:
                self.epoch += 1
            self.perm = torch.randperm(self.data.n_train, generator=self.generator).to(self.device)
            self.position = 0
        idx = self.perm[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return self.data.train_x.index_select(0, idx), self.data.train_y.index_select(0, idx)

    def state_dict(self) -> dict:
        """Everything needed to continue bit-exactly; only tensors and plain values (weights_only-safe)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "perm": None if self.perm is None else self.perm.cpu(),
            "position": self.position,
            "epoch": self.epoch,
            "step": self.step,
            "grad_sum": self.grad_sum.cpu(),
            "grad_steps": self.grad_steps,
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.perm = None if state["perm"] is None else state["perm"].to(self.device)
        self.position = int(state["position"])
        self.epoch = int(state["epoch"])
        self.step = int(state["step"])
        self._grad_sum.copy_(state["grad_sum"])
        self._grad_partial.zero_()
        self._partial_steps = 0
        self.grad_steps = int(state["grad_steps"])


_PARTIAL_STEPS = 32


def _sgd_options(device: torch.device) -> dict:
    # foreach batches the update into few kernels on CUDA; on CPU the plain loop over three tensors is cheaper.
    return {"foreach": device.type == "cuda"}
