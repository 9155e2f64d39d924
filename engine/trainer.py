"""The training state and its tight step: device-resident batches, no host sync, gradient capture.

The step of the bias-free ReLU MLP is written out by hand (forward, cross-entropy gradient, backward) on the
weights' data: a dozen tensor ops and no autograd graph, with each layer's SGD update fused into the GEMM that
computes its gradient (W.addmm_(d^T, h, alpha=-lr)). Only the regularised step's clusterability term goes through
autograd, on the differentiable `engine.metrics.clusterability`. On CUDA, full batches of the unregularised step
replay a captured CUDA graph; the last partial batch of an epoch, CPU runs and the regularised step stay eager.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable

import torch
from torch import nn

from engine.config import Config
from engine.data import Dataset
from engine.device import all_cores
from engine.metrics import clusterability
from engine.model import build_mlp, studied_weight

log = logging.getLogger("clusterlab")

# Raw studied-layer gradients are kept in a (K, out, in) buffer and folded into F by one batched reduction every K
# steps; K shrinks for wide layers so the buffer stays near _PENDING_ELEMENTS floats.
_PENDING_MAX, _PENDING_ELEMENTS = 32, 1 << 20
# Full-batch steps run eagerly before a CUDA graph is captured (cuBLAS handles and workspaces get created).
_GRAPH_AFTER_STEPS = 3


class Trainer:
    """Model, SGD settings, data order and gradient accumulator; everything a checkpoint must hold."""

    def __init__(self, config: Config, data: Dataset, device: torch.device) -> None:
        self.data = data
        self.device = device
        self.model = build_mlp(data.n_features, config.hidden, data.n_classes, config.seed).to(device)
        self.weight = studied_weight(self.model, config.studied_layer)
        self._weights = [m.weight for m in self.model if isinstance(m, nn.Linear)]  # bias-free, as the step assumes
        self._studied = config.studied_layer - 1
        # Plain SGD (no momentum, no weight decay) has no state: its update is fused into the step below, and
        # torch.optim is not used (creating its first optimizer also imports torch._dynamo: 1.8 s of startup).
        self.lr = float(config.lr)
        # A dedicated CPU generator makes the batch order independent of any other use of randomness.
        self.generator = torch.Generator().manual_seed(config.seed)
        self.perm: torch.Tensor | None = None
        self.position = 0
        self.step = 0
        out_w, in_w = self.weight.shape
        self._importance = torch.zeros(out_w, in_w, dtype=torch.float64, device=device)
        self._pending_max = max(1, min(_PENDING_MAX, _PENDING_ELEMENTS // (out_w * in_w)))
        self._pending = torch.zeros(self._pending_max, out_w, in_w, device=device)
        self._pending_count = 0
        self.grad_steps = 0  # captured steps in F
        # True for a session saved when the accumulator held S = sum g^T g (in x in): those steps are not in F.
        self.legacy_gradients = False
        self.batch_size = config.batch_size
        self.steps_per_epoch = math.ceil(data.n_train / config.batch_size)
        self._train_y = data.train_y.view(-1, 1)  # labels as a column: gather/scatter need no reshape per step
        self._neg_ones = torch.full((config.batch_size, 1), -1.0, device=device)
        self._loss_sum = torch.zeros((), device=device)
        self._loss_count = 0
        self._graphs: dict | None = {} if _graphs_wanted(device) else None
        self._eager_full_steps = 0

    # ----------------------------------------------------------------------------------------------- the step

    def train_step(self, mask: torch.Tensor | None = None, lam: float = 0.0, capture: bool = False) -> None:
        """One optimizer step on the next batch; with `mask`, loss = CE - lam * clusterability."""
        idx = self._next_indices()
        lr = self.lr
        if self._graphs is not None and mask is None and idx.numel() == self.batch_size:
            if self._eager_full_steps >= _GRAPH_AFTER_STEPS and self._graph_step(idx, lr, capture):
                self._after_step(capture)
                return
            self._eager_full_steps += 1
        x = self.data.train_x.index_select(0, idx)
        y = self._train_y.index_select(0, idx)
        grad_c = None
        if mask is not None and lam != 0.0:
            with torch.enable_grad():
                (grad_c,) = torch.autograd.grad(clusterability(self.weight, mask), self.weight)
        out = self._pending[self._pending_count] if capture else None
        self._core(x, y, lr, out, grad_c, lam)
        self._after_step(capture)

    @torch.no_grad()
    def _core(self, x: torch.Tensor, y: torch.Tensor, lr: float, grad_out: torch.Tensor | None,
              grad_c: torch.Tensor | None = None, lam: float = 0.0) -> None:
        """Forward, CE gradient, backward and SGD update; the studied layer's gradient goes to grad_out if given.

        Each layer's input gradient is taken with the layer's weight before that weight is updated, so the
        update is exactly SGD on the batch loss (the order of the in-place updates changes nothing).
        """
        weights = [w.data for w in self._weights]
        acts = [x]
        h = x
        for w in weights[:-1]:
            h = torch.mm(h, w.t()).relu_()
            acts.append(h)
        logp = torch.mm(h, weights[-1].t()).log_softmax(1)
        self._loss_sum.sub_(logp.gather(1, y).mean())
        n = y.shape[0]
        d = logp.exp_().scatter_add_(1, y, self._neg_ones[:n]).mul_(1.0 / n)  # dCE/dlogits = (softmax - onehot) / n
        for i in range(len(weights) - 1, -1, -1):
            w = weights[i]
            d_in = torch.mm(d, w) if i else None
            if i == self._studied:
                # Unfused, so that capturing (writing g to grad_out) leaves the update bit-identical.
                g = torch.mm(d.t(), acts[i], out=grad_out) if grad_out is not None else torch.mm(d.t(), acts[i])
                if grad_c is not None:
                    g.add_(grad_c, alpha=-lam)
                w.add_(g, alpha=-lr)
            else:
                w.addmm_(d.t(), acts[i], alpha=-lr)
            if i:
                d = torch.ops.aten.threshold_backward(d_in, acts[i], 0)  # ReLU's backward, as autograd does it

    def _after_step(self, capture: bool) -> None:
        self._loss_count += 1
        self.step += 1
        if capture:
            self._pending_count += 1
            self.grad_steps += 1
            if self._pending_count == self._pending_max:
                self._fold_pending()

    # ------------------------------------------------------------------------------------ CUDA graph (CUDA only)

    def _graph_step(self, idx: torch.Tensor, lr: float, capture: bool) -> bool:
        """Replay the captured full-batch step; False (and eager from then on) if capturing is not possible."""
        graph = cached_graph(self._graphs, (lr, capture), lambda: self._capture_graph(idx, lr, capture), "step")
        if graph is None:
            self._graphs = None
            return False
        replay(graph, self.data.train_x, self._train_y, idx, self._gx, self._gy)
        if capture:
            self._pending[self._pending_count].copy_(self._gg)
        return True

    def _capture_graph(self, idx: torch.Tensor, lr: float, capture: bool) -> torch.cuda.CUDAGraph:
        if not hasattr(self, "_gx"):
            self._gx = self.data.train_x.index_select(0, idx)
            self._gy = self._train_y.index_select(0, idx)
            self._gg = torch.empty_like(self._pending[0])
        grad_out = self._gg if capture else None
        # Warm-up and capture must not train: keep the state that the warm-up changes and put it back after.
        weights = [w.data for w in self._weights]
        saved = [w.clone() for w in weights]
        saved_loss = self._loss_sum.clone()
        try:
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                self._core(self._gx, self._gy, lr, grad_out)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._core(self._gx, self._gy, lr, grad_out)
        finally:  # also when capture fails: the eager step that follows must start from the same state
            for w, v in zip(weights, saved, strict=True):
                w.copy_(v)
            self._loss_sum.copy_(saved_loss)
        return graph

    # ----------------------------------------------------------------------------------- gradient accumulator

    def _pending_importance(self) -> torch.Tensor:
        # sum_t g_t * g_t / |g_t|^2 over the pending steps, elementwise, in float64 (a few multiply-adds per weight).
        squared = self._pending[: self._pending_count].double().square_()
        norms = squared.sum(dim=(1, 2)).clamp_min_(torch.finfo(torch.float64).tiny)
        return torch.tensordot(norms.reciprocal_(), squared, dims=1)

    def _fold_pending(self) -> None:
        if self._pending_count:
            self._importance += self._pending_importance()
            self._pending_count = 0

    @property
    def grad_importance(self) -> torch.Tensor:
        """F = sum over captured steps of g * g / |g|^2 (elementwise), float64, out x in: a Fisher-style importance
        of each weight of the studied layer. Reading it changes no state."""
        if not self._pending_count:
            return self._importance.clone()
        return self._importance + self._pending_importance()

    # ---------------------------------------------------------------------------------------------- the rest

    def take_loss(self) -> float | None:
        """Mean training loss since the last call (one host sync), or None if no step ran."""
        if self._loss_count == 0:
            return None
        value = self._loss_sum.item() / self._loss_count
        self._loss_sum.zero_()
        self._loss_count = 0
        return value

    @torch.no_grad()
    def evaluate(self) -> float:
        """Test-set accuracy in one batched forward pass (one host sync)."""
        with all_cores(self.device):
            h = self.data.test_x
            for w in self._weights[:-1]:
                h = torch.mm(h, w.t()).relu_()
            predictions = torch.mm(h, self._weights[-1].t()).argmax(dim=1)
            return (predictions == self.data.test_y).sum().item() / self.data.test_y.numel()

    @torch.no_grad()
    def clusterability_of(self, mask: torch.Tensor) -> float:
        return clusterability(self.weight, mask).item()

    def _next_indices(self) -> torch.Tensor:
        if self.perm is None or self.position >= self.perm.numel():
            self.perm = torch.randperm(self.data.n_train, generator=self.generator).to(self.device)
            self.position = 0
        idx = self.perm[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return idx

    def state_dict(self) -> dict:
        """Everything needed to continue bit-exactly; only tensors and plain values (weights_only-safe).

        "grad_importance" is the folded float64 part of F and "grad_pending" the raw gradients not yet folded into
        it, so that a resumed run folds exactly the same groups of steps as an uninterrupted one.
        """
        return {
            "model": self.model.state_dict(),
            "optimizer": {"name": "sgd", "lr": self.lr, "momentum": 0.0},
            "generator": self.generator.get_state(),
            "perm": None if self.perm is None else self.perm.cpu(),
            "position": self.position,
            "step": self.step,
            "grad_importance": self._importance.cpu(),
            "grad_pending": self._pending[: self._pending_count].clone().cpu(),  # a view would save the buffer
            "grad_steps": self.grad_steps,
            "legacy_gradients": self.legacy_gradients,
        }

    def load_state_dict(self, state: dict) -> None:
        """Also loads checkpoints written before F: their "grad_sum" (S, in x in) cannot become F, so F starts
        empty (grad_steps 0) and `legacy_gradients` says so; their "epoch" is derived from the step now."""
        self.model.load_state_dict(state["model"])
        self.lr = float(state["optimizer"]["lr"])
        self.generator.set_state(state["generator"])
        self.perm = None if state["perm"] is None else state["perm"].to(self.device)
        self.position = int(state["position"])
        self.step = int(state["step"])
        if "grad_importance" in state:
            self._importance.copy_(state["grad_importance"])
            pending = state["grad_pending"]
            self.grad_steps = int(state["grad_steps"])
            self.legacy_gradients = bool(state["legacy_gradients"])
        else:
            self._importance.zero_()
            pending = state["grad_pending"][:0]
            self.grad_steps = 0
            self.legacy_gradients = True
        self._pending_count = int(pending.shape[0])
        if self._pending_count:
            self._pending[: self._pending_count].copy_(pending)


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


def replay(graph: torch.cuda.CUDAGraph, train_x: torch.Tensor, train_y: torch.Tensor, idx: torch.Tensor,
           gx: torch.Tensor, gy: torch.Tensor) -> None:
    """Gather the batch `idx` into the graph's static inputs and run the captured step."""
    torch.index_select(train_x, 0, idx, out=gx)
    torch.index_select(train_y, 0, idx, out=gy)
    graph.replay()


def _graphs_wanted(device: torch.device) -> bool:
    """CUDA graphs for the full-batch step: CUDA only; CLUSTERLAB_CUDA_GRAPHS=0 turns them off."""
    return device.type == "cuda" and os.environ.get("CLUSTERLAB_CUDA_GRAPHS", "1") != "0"
