"""Many models of one shape trained side by side as one stacked model: the Trainer's step with batched GEMMs.

Member m of a group is the MLP `build_mlp(..., seeds[m])` trained exactly as `engine.trainer.Trainer` would train
it alone on the same data: its own batch order (its own generator and per-epoch permutation), its own λ, its own
block mask and its own gradient statistic. Each layer's weights are stacked as one [M, out, in] tensor, so a step
is the Trainer's dozen ops on stacked tensors (torch.bmm / baddbmm) whatever M is: small models stop being
launch- and dispatch-bound, and the GEMM units get M times the work per call. On the CPU a member's weights are
bit-identical to its Trainer's on one thread (bmm runs each member's GEMM through the same single-threaded kernel
as mm, on any thread count); on CUDA they agree to float rounding. On CUDA, full batches of the unregularised step
replay a captured CUDA graph, as in the Trainer.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, wait

import torch
from torch import nn

from engine.config import Config
from engine.data import Dataset
from engine.device import all_cores
from engine.errors import ConfigError, SessionError
from engine.model import build_mlp
from engine.trainer import _GRAPH_AFTER_STEPS, _graphs_wanted, cached_graph, replay

# Test-set evaluation runs in chunks of samples so that a group's activations (M x chunk x width floats) stay near
# this many elements, whatever M is.
_EVAL_ELEMENTS = 1 << 24


class BatchedTrainer:
    """M members sharing a Config except the seed, trained in lockstep on one Dataset.

    `train_step(masks, lams, capture)` is `Trainer.train_step` for every member at once: `masks` is a bool
    [M, out, in] block mask of the studied layer (or None: no member is regularised) and `lams` a float [M]
    tensor on the device (a member with λ = 0 gets exactly the unregularised update). With `capture`, each
    member's F = Σ_t ĝ_t ⊙ ĝ_t (ĝ_t its studied layer's gradient over its Frobenius norm; float64, [M, out, in])
    grows by one step. `state_dicts()` gives one `Trainer.state_dict()` per member. With `workers` > 1 (CPU
    only; see `default_workers`) the members step in that many shards on as many threads, each shard's ops on
    torch's intra-op thread count: workers x threads should not exceed the cores.
    """

    def __init__(self, config: Config, data: Dataset, device: torch.device, seeds: Sequence[int],
                 workers: int = 1) -> None:
        if not seeds:
            raise ConfigError("A batched group needs at least one seed.")
        self.data = data
        self.device = device
        self.n_models = len(seeds)
        self.hidden = config.hidden
        models = [build_mlp(data.n_features, config.hidden, data.n_classes, seed) for seed in seeds]
        self._names = [name for name, _ in models[0].named_parameters()]
        # One [M, out, in] tensor per Linear layer; the step updates them in place (CUDA graphs rely on that).
        self.weights = [torch.stack([m.get_parameter(n).detach() for m in models]).to(device) for n in self._names]
        self._studied = config.studied_layer - 1
        self.weight = self.weights[self._studied]
        self.lr = float(config.lr)
        self.generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        self.perm: torch.Tensor | None = None  # [M, n_train]: each member's permutation of this epoch
        self.position = 0
        self.step = 0
        self.grad_steps = 0
        self._grad_sum = torch.zeros(self.weight.shape, dtype=torch.float64, device=device)
        self.batch_size = config.batch_size
        self.steps_per_epoch = math.ceil(data.n_train / config.batch_size)
        self._train_y = data.train_y.view(-1, 1)
        self._neg_ones = torch.full((self.n_models, config.batch_size, 1), -1.0, device=device)
        self._loss_sum = torch.zeros(self.n_models, device=device)
        self._loss_count = 0
        self._graphs: dict | None = {} if _graphs_wanted(device) else None
        self._eager_full_steps = 0
        self._gx: torch.Tensor | None = None  # the graph's static batch (rows, labels), made at its first capture
        self._gy: torch.Tensor | None = None
        # On the CPU the members can be split into shards that step on `workers` threads at once: each shard is
        # a stacked model of its own (views of the group's tensors), so a step waits once for all of them instead
        # of joining an OpenMP team at every op, which a busy machine's scheduler turns into long stalls.
        n_shards = min(workers, self.n_models) if device.type == "cpu" else 1
        bounds = [k * self.n_models // n_shards for k in range(n_shards + 1)]
        self._shards = [slice(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
        self._pool = ThreadPoolExecutor(n_shards, "clusterlab-batched") if n_shards > 1 else None

    @classmethod
    def from_state_dicts(cls, config: Config, data: Dataset, device: torch.device, states: Sequence[dict],
                         workers: int = 1) -> BatchedTrainer:
        """A group continuing from its members' `Trainer.state_dict()`s (all at the same step)."""
        group = cls(config, data, device, [config.seed] * len(states), workers)  # the states replace the seeds
        group.load_state_dicts(states)
        return group

    # ----------------------------------------------------------------------------------------------- the step

    def train_step(self, masks: torch.Tensor | None = None, lams: torch.Tensor | None = None,
                   capture: bool = False) -> None:
        """One SGD step of every member on its next batch; with `masks`, loss_m = CE_m - lams[m] * clust_m."""
        if masks is not None:
            if lams is None or masks.shape != self.weight.shape:
                raise ConfigError(
                    f"Regularised steps need masks of shape {tuple(self.weight.shape)} and a λ per model.")
            lams = torch.as_tensor(lams, dtype=self.weight.dtype, device=self.device)
        idx = self._next_indices()
        if self._graphs is not None and masks is None and idx.numel() == self.n_models * self.batch_size:
            if self._eager_full_steps >= _GRAPH_AFTER_STEPS and self._graph_step(idx.reshape(-1), capture):
                self._after_step(capture)
                return
            self._eager_full_steps += 1
        if self._pool is None:
            self._shard_step(idx, self._shards[0], capture, masks, lams)
        else:
            futures = [self._pool.submit(self._shard_step, idx, shard, capture, masks, lams)
                       for shard in self._shards]
            wait(futures)
            for future in futures:
                future.result()  # raises what a shard raised
        self._after_step(capture)

    def _shard_step(self, idx: torch.Tensor, shard: slice, capture: bool, masks: torch.Tensor | None,
                    lams: torch.Tensor | None) -> None:
        rows = idx[shard].reshape(-1)
        x = self.data.train_x.index_select(0, rows)
        y = self._train_y.index_select(0, rows)
        self._core(x, y, capture, shard, None if masks is None else (masks[shard], lams[shard]))

    @torch.no_grad()
    def _core(self, x: torch.Tensor, y: torch.Tensor, capture: bool, shard: slice,
              regulariser: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """Trainer._core on stacked tensors for the members in `shard`: x [m*b, features] and y [m*b, 1] hold the
        shard's j-th member's batch in block j. Views of the group's tensors are updated in place."""
        weights = [w[shard] for w in self.weights]
        m = weights[0].shape[0]
        x = x.view(m, -1, x.shape[1])
        y = y.view(m, -1, 1)
        acts = [x]
        h = x
        for w in weights[:-1]:
            h = torch.bmm(h, w.transpose(1, 2)).relu_()
            acts.append(h)
        logp = torch.bmm(h, weights[-1].transpose(1, 2)).log_softmax(2)
        self._loss_sum[shard].sub_(logp.gather(2, y).mean(1).view(m))
        n = y.shape[1]
        d = logp.exp_().scatter_add_(2, y, self._neg_ones[shard, :n]).mul_(1.0 / n)
        for i in range(len(weights) - 1, -1, -1):
            w = weights[i]
            d_in = torch.bmm(d, w) if i else None
            if i == self._studied:
                g = torch.bmm(d.transpose(1, 2), acts[i])
                if regulariser is not None:  # w is still this step's weight: only later layers were updated
                    g = _regularised(g, w, *regulariser)
                w.add_(g, alpha=-self.lr)
                if capture:
                    _accumulate(self._grad_sum[shard], g)
            else:
                w.baddbmm_(d.transpose(1, 2), acts[i], alpha=-self.lr)
            if i:
                d = torch.ops.aten.threshold_backward(d_in, acts[i], 0)

    def _after_step(self, capture: bool) -> None:
        self._loss_count += 1
        self.step += 1
        if capture:
            self.grad_steps += 1

    def _next_indices(self) -> torch.Tensor:
        """The [M, b] row indices of every member's next batch."""
        if self.perm is None or self.position >= self.perm.shape[1]:
            self.perm = self._draw_perms()
            self.position = 0
        idx = self.perm[:, self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return idx

    def _draw_perms(self) -> torch.Tensor:
        # Each member draws exactly what its Trainer draws from its own generator. The draws are independent and
        # torch releases the GIL in them, so a pool spreads a large group's epoch start over the cores.
        n = self.data.n_train
        threads = min(self.n_models, os.cpu_count() or 1)
        if threads == 1:
            perms = [torch.randperm(n, generator=g) for g in self.generators]
        else:
            with ThreadPoolExecutor(threads) as pool:
                perms = list(pool.map(lambda g: torch.randperm(n, generator=g), self.generators))
        return torch.stack(perms).to(self.device)

    # ------------------------------------------------------------------------------------ CUDA graph (CUDA only)

    def _graph_step(self, idx: torch.Tensor, capture: bool) -> bool:
        """Replay the captured full-batch step; False (and eager from then on) if capturing is not possible."""
        graph = cached_graph(self._graphs, (self.lr, capture), lambda: self._capture_graph(idx, capture),
                             "batched step")
        if graph is None:
            self._graphs = None
            return False
        replay(graph, self.data.train_x, self._train_y, idx, self._gx, self._gy)
        return True

    def _capture_graph(self, idx: torch.Tensor, capture: bool) -> torch.cuda.CUDAGraph:
        if self._gx is None:
            self._gx = self.data.train_x.index_select(0, idx)
            self._gy = self._train_y.index_select(0, idx)
        # Warm-up and capture must not train: keep the state that the warm-up changes and put it back after.
        state = [*self.weights, self._loss_sum, self._grad_sum]
        saved = [t.clone() for t in state]
        try:
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                self._core(self._gx, self._gy, capture, slice(None))
            torch.cuda.current_stream(self.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._core(self._gx, self._gy, capture, slice(None))
        finally:  # also when capture fails: the eager step that follows must start from the same state
            for t, v in zip(state, saved, strict=True):
                t.copy_(v)
        return graph

    # ---------------------------------------------------------------------------------------------- the rest

    @property
    def grad_sum(self) -> torch.Tensor:
        """F per member: float64 [M, out, in], the sum over captured steps of (g / |g|)^2 elementwise."""
        return self._grad_sum.clone()

    def take_loss(self) -> list[float] | None:
        """Each member's mean training loss since the last call (one host sync), or None if no step ran."""
        if self._loss_count == 0:
            return None
        values = [v / self._loss_count for v in self._loss_sum.tolist()]
        self._loss_sum.zero_()
        self._loss_count = 0
        return values

    @torch.no_grad()
    def evaluate(self) -> list[float]:
        """Each member's test-set accuracy, all members in one batched pass (one host sync)."""
        test_x, test_y = self.data.test_x, self.data.test_y
        m, n_test = self.n_models, test_y.numel()
        chunk = max(1, _EVAL_ELEMENTS // (m * max(self.hidden)))
        first = self.weights[0].reshape(-1, test_x.shape[1])  # every member's first layer as one GEMM
        correct = torch.zeros(m, dtype=torch.int64, device=self.device)
        with all_cores(self.device):
            for start in range(0, n_test, chunk):
                x = test_x[start : start + chunk]
                h = torch.mm(x, first.t()).view(x.shape[0], m, -1).transpose(0, 1).relu_()
                for w in self.weights[1:-1]:
                    h = torch.bmm(h, w.transpose(1, 2)).relu_()
                predictions = torch.bmm(h, self.weights[-1].transpose(1, 2)).argmax(dim=2)
                correct += (predictions == test_y[start : start + chunk]).sum(dim=1)
        return [c / n_test for c in correct.tolist()]

    @torch.no_grad()
    def clusterability_of(self, masks: torch.Tensor) -> list[float]:
        """Each member's clusterability of its studied layer under its mask (one host sync)."""
        inside, total = _masses(self.weight, masks)
        return (inside / total).view(-1).tolist()

    def member_model(self, i: int) -> nn.Sequential:
        """Member i as an ordinary nn.Sequential on the device (a copy: training the group does not change it)."""
        model = build_mlp(self.data.n_features, self.hidden, self.data.n_classes, 0).to(self.device)
        model.load_state_dict(self._member_weights(i))
        return model

    def _member_weights(self, i: int) -> OrderedDict:
        # Clones: a view would save (and keep alive) the whole group's stacked tensor.
        return OrderedDict((name, w[i].clone()) for name, w in zip(self._names, self.weights, strict=True))

    def state_dicts(self) -> list[dict]:
        """One `Trainer.state_dict()` per member, so each member continues as an ordinary session.

        F is saved folded ("grad_importance", float64 out x in) with no pending raw gradients.
        """
        grad_sum = self._grad_sum.cpu()
        perm = None if self.perm is None else self.perm.cpu()
        pending = torch.zeros(0, *self.weight.shape[1:])
        return [
            {
                "model": self._member_weights(i),
                "optimizer": {"name": "sgd", "lr": self.lr, "momentum": 0.0},
                "generator": g.get_state(),
                "perm": None if perm is None else perm[i].clone(),
                "position": self.position,
                "step": self.step,
                "grad_importance": grad_sum[i].clone(),
                "grad_pending": pending.clone(),
                "grad_steps": self.grad_steps,
                "legacy_gradients": False,
            }
            for i, g in enumerate(self.generators)
        ]

    def load_state_dicts(self, states: Sequence[dict]) -> None:
        """Continue from one `Trainer.state_dict()` per member; the members must be at the same point."""
        if len(states) != self.n_models:
            raise SessionError(f"A batched group of {self.n_models} models got {len(states)} member states.")
        try:
            counters = {(int(s["position"]), int(s["step"]), int(s["grad_steps"]),
                         float(s["optimizer"]["lr"]), s["perm"] is None) for s in states}
            if len(counters) != 1:
                raise SessionError("Members batched together must be at the same step with the same settings; "
                                   "train the others alone to that point first.")
            for i, state in enumerate(states):
                for name, w in zip(self._names, self.weights, strict=True):
                    w[i].copy_(state["model"][name])
                self._grad_sum[i].copy_(_folded(state))
                self.generators[i].set_state(state["generator"])
            perms = [state["perm"] for state in states]
        except (KeyError, RuntimeError, TypeError, ValueError) as exc:
            raise SessionError(f"A member's state does not fit this batched group ({exc}).") from None
        position, step, grad_steps, lr, no_perm = counters.pop()
        self.position, self.step, self.grad_steps, self.lr = position, step, grad_steps, lr
        self.perm = None if no_perm else torch.stack(perms).to(self.device)


def default_workers(device: torch.device) -> int:
    """Worker threads that fill the CPU's cores at the current intra-op thread count (1 where it already does,
    and on CUDA): 2 on a 2-core machine at the engine's 1 thread."""
    if device.type != "cpu":
        return 1
    return max(1, (os.cpu_count() or 1) // torch.get_num_threads())


def _masses(w: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per member ([M, 1, 1] each): sum(W^2) inside the mask, and in all (clamped above 0, as in clusterability)."""
    squared = w.square()
    zero = torch.zeros((), dtype=w.dtype, device=w.device)
    inside = torch.where(masks, squared, zero).sum((1, 2), keepdim=True)
    return inside, squared.sum((1, 2), keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)


def _regularised(g: torch.Tensor, w: torch.Tensor, masks: torch.Tensor, lams: torch.Tensor) -> torch.Tensor:
    """g - lams[m] * d clusterability_m / dW_m for every member.

    The gradient of inside/total is formed with the very operations autograd runs for the Trainer's
    `engine.metrics.clusterability` (1/total on the mask, -(inside/total)/total everywhere, times 2W), and
    addcmul rounds like the Trainer's add_(alpha=-lam): each member's update is bit-identical to its Trainer's.
    A member with λ = 0 keeps g exactly, as the Trainer skips the term.
    """
    lams = torch.as_tensor(lams, dtype=w.dtype, device=w.device).view(-1, 1, 1)
    inside, total = _masses(w, masks)
    zero = torch.zeros((), dtype=w.dtype, device=w.device)
    grad_squared = torch.where(masks, 1 / total, zero) + -((inside / total) / total)
    return torch.where(lams != 0, g.addcmul(grad_squared * (2 * w), -lams), g)


def _accumulate(grad_sum: torch.Tensor, g: torch.Tensor) -> None:
    """F_m += g_m^2 / |g_m|^2 elementwise, summed in float64; an all-zero gradient adds nothing.

    The squares are scaled in float32 and added to the float64 sum as such: addcmul_ of float32 factors into a
    float64 sum converts both factors first and took 11x as long (8 vs 0.7 ms for 32 x 128 x 128).
    """
    squared = g.square()
    squared.div_(squared.sum((1, 2), keepdim=True).clamp_min(torch.finfo(g.dtype).tiny))
    grad_sum.add_(squared)


def _folded(state: dict) -> torch.Tensor:
    """A member's F with any raw gradients that its Trainer had not folded yet added in."""
    grad_sum = state["grad_importance"].to(torch.float64)
    pending = state.get("grad_pending")
    if pending is None or pending.shape[0] == 0:
        return grad_sum
    g = pending.to(torch.float64)
    return grad_sum + (g.square() / g.square().sum((1, 2), keepdim=True).clamp_min(torch.finfo(g.dtype).tiny)).sum(0)

