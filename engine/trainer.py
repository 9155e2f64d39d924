"""The training state and its tight step for M models of one shape: a session's one, or a batched group's members.

The step of the bias-free ReLU MLP is written out by hand (forward, cross-entropy gradient, backward) on the
weights' data: a dozen tensor ops, no autograd graph, each layer's SGD update fused into the GEMM of its gradient
(W.addmm_(d^T, h, alpha=-lr)). Each layer's weights are one [M, out, in] tensor: one model steps with mm on its
[out, in] view, M models with bmm on the stack. Member m of a group is `build_mlp(..., seeds[m])` trained exactly
as alone (its own batch order, λ, block mask and F): on the CPU bit for bit on one thread (bmm runs each member's
GEMM through mm's single-threaded kernel), on CUDA to float rounding. On CUDA, full batches of the unregularised
step replay a captured CUDA graph (engine/cuda_graph.py).
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait

import torch
from torch import nn

from engine.config import Config
from engine.cuda_graph import cached_graph, capture_step, graphs_wanted, replay
from engine.data import Dataset
from engine.device import all_cores
from engine.errors import ConfigError, SessionError
from engine.metrics import clusterability
from engine.model import build_mlp, studied_weight
from engine.regulariser import network_terms, regularised

# Raw studied-layer gradients are kept in a (K, M, out, in) buffer and folded into F by one batched reduction every
# K steps; K shrinks for wide layers so the buffer stays near _PENDING_ELEMENTS floats per model.
_PENDING_MAX, _PENDING_ELEMENTS = 32, 1 << 20
# Full-batch steps run eagerly before a CUDA graph is captured (cuBLAS handles and workspaces get created).
_GRAPH_AFTER_STEPS = 3
_TINY64 = torch.finfo(torch.float64).tiny


class Trainer:
    """M models' weights, SGD settings, data orders and gradient accumulators: everything a checkpoint holds.

    `train_step(mask, lam, capture)` steps every model: `mask` ([out, in], or [M, out, in] for a group; None: no
    regulariser) and `lam` (a float, or M) give loss_m = CE_m - lam_m * clusterability_m; with `capture`, each
    model's F = Σ_t ĝ_t ⊙ ĝ_t (ĝ_t its studied layer's gradient over its norm; float64) grows by one step.
    `state_dicts()` gives one state per model, the format a session's checkpoint holds. With `workers` > 1 (CPU
    groups; see `default_workers`) the members step in that many shards on as many threads.
    """

    def __init__(self, config: Config, data: Dataset, device: torch.device, seeds: Sequence[int] | None = None,
                 workers: int = 1) -> None:
        seeds = [config.seed] if seeds is None else list(seeds)
        if not seeds:
            raise ConfigError("A batched group needs at least one seed.")
        self.config, self.data, self.device, self.workers = config, data, device, workers
        self.n_models = len(seeds)
        models = [build_mlp(data.n_features, config.hidden, data.n_classes, seed) for seed in seeds]
        self._names = [name for name, _ in models[0].named_parameters()]
        self._studied = config.studied_layer - 1
        if self.n_models == 1:  # the stack's tensors are views of the model's own parameters, which the step updates
            self.model: nn.Sequential | None = models[0].to(device)
            self.weights = [p.detach().unsqueeze(0) for p in self.model.parameters()]
            self.weight = studied_weight(self.model, config.studied_layer)
        else:
            self.model = None
            self.weights = [torch.stack([m.get_parameter(n).detach() for m in models]).to(device)
                            for n in self._names]
            self.weight = self.weights[self._studied]
        # Plain SGD (no momentum, no weight decay) has no state: its update is fused into the step below, and
        # torch.optim is not used (creating its first optimizer also imports torch._dynamo: 1.8 s of startup).
        self.lr = float(config.lr)
        # A dedicated CPU generator per model makes its batch order independent of any other use of randomness.
        self.generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        self.perm: torch.Tensor | None = None  # [M, n_train]: each model's permutation of this epoch
        self.position = 0
        self.step = 0
        out_w, in_w = self.weights[self._studied].shape[1:]
        self._importance = torch.zeros(self.n_models, out_w, in_w, dtype=torch.float64, device=device)
        self.pending_max = max(1, min(_PENDING_MAX, _PENDING_ELEMENTS // (out_w * in_w)))
        self._pending = torch.zeros(self.pending_max, self.n_models, out_w, in_w, device=device)
        self._pending_count = 0
        self.grad_steps = 0  # captured steps in F
        self._legacy = [False] * self.n_models  # saved when the accumulator held S = sum g^T g (in x in), not F
        self.batch_size = config.batch_size
        self.steps_per_epoch = math.ceil(data.n_train / config.batch_size)
        self._train_y = data.train_y.view(-1, 1)  # labels as a column: gather/scatter need no reshape per step
        self._neg_ones = torch.full((self.n_models, config.batch_size, 1), -1.0, device=device)
        self._loss_sum = torch.zeros(self.n_models, device=device)
        self._loss_count = 0
        self._regulariser_for: tuple = (None, None, None)  # (mask, lam, what the step uses), reused while they hold
        self._graphs: dict | None = {} if graphs_wanted(device) else None
        self._eager_full_steps = 0
        self._gx: torch.Tensor | None = None  # the graph's static batch (rows, labels), made at its first capture
        # On the CPU a group's members can be split into shards that step on `workers` threads at once: each shard
        # is a stacked model of its own (views of the group's tensors), so a step waits once for all of them instead
        # of joining an OpenMP team at every op, which a busy machine's scheduler turns into long stalls.
        n_shards = min(workers, self.n_models) if device.type == "cpu" else 1
        bounds = [k * self.n_models // n_shards for k in range(n_shards + 1)]
        self._shards = [_Shard(self, j, slice(bounds[j], bounds[j + 1])) for j in range(n_shards)]
        self._pool = ThreadPoolExecutor(n_shards, "clusterlab-batched") if n_shards > 1 else None

    @classmethod
    def from_state_dicts(cls, config: Config, data: Dataset, device: torch.device, states: Sequence[dict],
                         workers: int = 1) -> Trainer:
        """Models continuing from their `state_dicts()` (all at the same step): a group of saved sessions."""
        trainer = cls(config, data, device, [config.seed] * len(states), workers)  # the states replace the seeds
        trainer.load_state_dicts(states)
        return trainer

    # ----------------------------------------------------------------------------------------------- the step

    def train_step(self, mask: torch.Tensor | None = None, lam: float | Sequence[float] | torch.Tensor = 0.0,
                   capture: bool = False) -> None:
        """One SGD step of every model on its next batch; with `mask`, loss_m = CE_m - lam_m * clusterability_m."""
        regulariser = self._regulariser(mask, lam)
        idx = self._next_indices()
        if self._graphs is not None and regulariser is None and idx.shape[1] == self.batch_size:
            if self._eager_full_steps >= _GRAPH_AFTER_STEPS and self._graph_step(idx.reshape(-1), capture):
                self._after_step(capture)
                return
            self._eager_full_steps += 1
        self._on_shards(lambda shard: self._shard_step(idx, shard, capture, regulariser and regulariser[shard.index]))
        self._after_step(capture)

    def _on_shards(self, work: Callable[[_Shard], None]) -> None:
        """`work` on every shard, on the pool's threads if there is one."""
        if self._pool is None:
            work(self._shards[0])
            return
        futures = [self._pool.submit(work, shard) for shard in self._shards]
        wait(futures)
        for future in futures:
            future.result()  # raises what a shard raised

    def _shard_step(self, idx: torch.Tensor, shard: _Shard, capture: bool, regulariser: tuple | None) -> None:
        rows = idx[shard.at].reshape(-1) if shard.m else idx[0]
        x = self.data.train_x.index_select(0, rows)
        y = self._train_y.index_select(0, rows)
        grad_out = self._pending[self._pending_count, shard.at] if capture else None
        self._core(x, y, grad_out, shard, regulariser)

    @torch.no_grad()
    def _core(self, x: torch.Tensor, y: torch.Tensor, grad_out: torch.Tensor | None, shard: _Shard,
              regulariser: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        """Forward, CE gradient, backward and SGD update of the shard's models; the studied layer's gradient goes to
        grad_out if given. For a group, x [m*b, features] and y [m*b, 1] hold the shard's j-th member's batch in
        block j. Each layer's input gradient is taken with the layer's weight before that weight is updated, so the
        update is exactly SGD on the batch loss (the order of the in-place updates changes nothing).
        """
        weights, mm, addmm_ = shard.weights, shard.mm, shard.addmm_
        # A whole network's masks (a tuple) regularise every layer: their terms come from this step's weights.
        terms = network_terms(weights, *regulariser) if regulariser and isinstance(regulariser[0], tuple) else None
        if shard.m:
            x, y = x.view(shard.m, -1, x.shape[1]), y.view(shard.m, -1, 1)
        acts = [x]
        h = x
        for w in weights[:-1]:
            h = mm(h, w.mT).relu_()
            acts.append(h)
        logp = mm(h, weights[-1].mT).log_softmax(-1)
        shard.loss_sum.sub_(logp.gather(-1, y).mean((-2, -1)))
        n = y.shape[-2]
        ones = shard.neg_ones if n == self.batch_size else shard.neg_ones[..., :n, :]
        d = logp.exp_().scatter_add_(-1, y, ones).mul_(1.0 / n)  # dCE/dlogits = (softmax - onehot) / n
        for i in range(len(weights) - 1, -1, -1):
            w = weights[i]
            d_in = mm(d, w) if i else None
            if i == self._studied and terms is None:
                # Unfused, so that capturing (writing g to grad_out) leaves the update bit-identical.
                g = mm(d.mT, acts[i], out=grad_out) if grad_out is not None else mm(d.mT, acts[i])
                if regulariser is not None:  # w is still this step's weight: only later layers were updated
                    g = regularised(g, w, *regulariser)
                w.add_(g, alpha=-self.lr)
            else:
                addmm_(w, d.mT, acts[i], alpha=-self.lr)
                if terms is not None:
                    w.add_(terms[i], alpha=self.lr)
            if i:
                d = torch.ops.aten.threshold_backward(d_in, acts[i], 0)  # ReLU's backward, as autograd does it

    def _regulariser(self, mask: torch.Tensor | tuple | None, lam) -> list[tuple] | None:
        """Each shard's masks and λs to regularise with (None: no model is), made once per (mask, lam) pair; a
        tuple of masks, one per layer, regularises the whole network's clusterability."""
        if mask is None:
            return None
        cached_mask, cached_lam, regulariser = self._regulariser_for
        if mask is cached_mask and lam is cached_lam:
            return regulariser
        lams = torch.as_tensor(lam, dtype=self.weight.dtype).reshape(-1)
        network = isinstance(mask, tuple)
        shapes = [tuple(w.shape[1 if self.n_models == 1 else 0 :])
                  for w in (self.weights if network else [self.weights[self._studied]])]
        if [tuple(m.shape) for m in (mask if network else [mask])] != shapes or lams.numel() != self.n_models:
            raise ConfigError(f"Regularised steps need masks of shape {', '.join(map(str, shapes))} and a λ per "
                              "model.")
        regulariser = None
        if bool((lams != 0).any()):
            lams = lams.to(self.device).view((-1, 1, 1) if self.n_models > 1 else (1, 1))
            at = (lambda m, shard: tuple(x[shard.at] for x in m)) if network else (lambda m, shard: m[shard.at])
            regulariser = [(at(mask, shard), lams[shard.at]) if shard.m else (mask, lams) for shard in self._shards]
        self._regulariser_for = (mask, lam, regulariser)
        return regulariser

    def _after_step(self, capture: bool) -> None:
        self._loss_count += 1
        self.step += 1
        if capture:
            self._pending_count += 1
            self.grad_steps += 1
            if self._pending_count == self.pending_max:
                self._fold_pending()

    def _next_indices(self) -> torch.Tensor:
        """The [M, b] row indices of every model's next batch."""
        if self.perm is None or self.position >= self.perm.shape[1]:
            self.perm = self._draw_perms()
            self.position = 0
        idx = self.perm[:, self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return idx

    def _draw_perms(self) -> torch.Tensor:
        # Each model draws from its own generator. The draws are independent and torch releases the GIL in them,
        # so a pool spreads a large group's epoch start over the cores.
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
        graph = cached_graph(self._graphs, (self.lr, capture), lambda: self._capture_graph(idx, capture), "step")
        if graph is None:
            self._graphs = None
            return False
        replay(graph, self.data.train_x, self._train_y, idx, self._gx, self._gy)
        if capture:
            self._pending[self._pending_count].copy_(self._gg.view_as(self._pending[0]))
        return True

    def _capture_graph(self, idx: torch.Tensor, capture: bool) -> torch.cuda.CUDAGraph:
        if self._gx is None:
            self._gx = self.data.train_x.index_select(0, idx)
            self._gy = self._train_y.index_select(0, idx)
            self._gg = torch.empty_like(self._pending[0, self._shards[0].at])
        grad_out = self._gg if capture else None
        return capture_step(lambda: self._core(self._gx, self._gy, grad_out, self._shards[0], None),
                            [*self.weights, self._loss_sum], self.device)

    # ----------------------------------------------------------------------------------- gradient accumulator

    def _pending_importance(self, m: int) -> torch.Tensor:
        # sum_t g_t * g_t / |g_t|^2 over model m's pending steps, elementwise, in float64; one model at a time, so
        # that its squares stay in cache (a group's all at once took 4x as long).
        squared = self._pending[: self._pending_count, m].double().square_()
        norms = squared.sum(dim=(1, 2)).clamp_min_(_TINY64)
        return torch.tensordot(norms.reciprocal_(), squared, dims=1)

    def _fold_pending(self) -> None:
        def fold(shard: _Shard) -> None:
            for m in shard.members:
                self._importance[m] += self._pending_importance(m)

        if self._pending_count:
            self._on_shards(fold)
            self._pending_count = 0

    @property
    def grad_importances(self) -> torch.Tensor:
        """F per model, [M, out, in]: the sum over captured steps of g * g / |g|^2 (elementwise), float64, a
        Fisher-style importance of each weight of the studied layer. Reading it changes no state."""
        if not self._pending_count:
            return self._importance.clone()
        return self._importance + torch.stack([self._pending_importance(m) for m in range(self.n_models)])

    @property
    def grad_importance(self) -> torch.Tensor:
        """The one model's F, out x in (see `grad_importances`)."""
        return self.grad_importances[self._single()]

    @property
    def legacy_gradients(self) -> bool:
        """True for a model saved before F, whose captured steps are not in F (the one model's)."""
        return self._legacy[self._single()]

    # ----------------------------------------------------------------------------------- figures and state

    def take_losses(self) -> list[float] | None:
        """Each model's mean training loss since the last call (one host sync), or None if no step ran."""
        if self._loss_count == 0:
            return None
        values = [v / self._loss_count for v in self._loss_sum.tolist()]
        self._loss_sum.zero_()
        self._loss_count = 0
        return values

    def take_loss(self) -> float | None:
        """The one model's `take_losses()`."""
        return None if (losses := self.take_losses()) is None else losses[self._single()]

    @torch.no_grad()
    def accuracies(self) -> list[float]:
        """Each model's test-set accuracy, one batched forward pass each (one host sync)."""
        test_x, test_y = self.data.test_x, self.data.test_y
        correct = []
        with all_cores(self.device):
            for m in range(self.n_models):
                h = test_x
                for w in self.weights[:-1]:
                    h = torch.mm(h, w[m].t()).relu_()
                correct.append((torch.mm(h, self.weights[-1][m].t()).argmax(dim=1) == test_y).sum())
        return [c / test_y.numel() for c in torch.stack(correct).tolist()]

    def evaluate(self) -> float:
        """The one model's test-set accuracy."""
        return self.accuracies()[self._single()]

    @torch.no_grad()
    def clusterabilities(self, mask: torch.Tensor | tuple) -> list[float]:
        """Each model's clusterability under its mask (the mask `train_step` takes; one host sync)."""
        if isinstance(mask, tuple):  # a whole network's: a session's one model (groups never hold one)
            return [self.clusterability_of(mask)]
        studied = self.weights[self._studied]
        masks = mask.view(studied.shape)
        return torch.stack([clusterability(w, m) for w, m in zip(studied, masks, strict=True)]).tolist()

    @torch.no_grad()
    def clusterability_of(self, mask: torch.Tensor) -> float:
        """The one model's `clusterabilities` (without stacking: the engine asks this often)."""
        if isinstance(mask, tuple):
            return clusterability([w[self._single()] for w in self.weights], mask).item()
        return clusterability(self.weights[self._studied][self._single()], mask).item()

    def member_model(self, i: int) -> nn.Sequential:
        """Model i as an ordinary nn.Sequential on the device (a copy: training does not change it)."""
        model = build_mlp(self.data.n_features, self.config.hidden, self.data.n_classes, 0).to(self.device)
        model.load_state_dict(OrderedDict((n, w[i]) for n, w in zip(self._names, self.weights, strict=True)))
        return model

    def keep(self, indices: Sequence[int]) -> None:
        """Go on with models `indices` only, each where it stands (a group leaving its diverged members behind)."""
        states = self.state_dicts()  # then the same trainer anew, of those models
        self.__init__(self.config, self.data, self.device, [self.config.seed] * len(indices), self.workers)
        self.load_state_dicts([states[i] for i in indices])

    def _single(self) -> int:
        if self.n_models != 1:
            raise TypeError(f"This trainer holds {self.n_models} models: ask for all of them (accuracies(), …).")
        return 0

    def state_dict(self) -> dict:
        """The one model's state (see `state_dicts`)."""
        return self.state_dicts()[self._single()]

    def state_dicts(self, indices: Sequence[int] | None = None) -> list[dict]:
        """Everything needed to continue each model (or those at `indices`) bit-exactly; only tensors and plain
        values (weights_only-safe).

        "grad_importance" is the folded float64 part of F and "grad_pending" the raw gradients not yet folded into
        it, so that a resumed run folds exactly the same groups of steps as an uninterrupted one. Copies: a view
        would save (and keep alive) the whole stack.
        """
        perm = None if self.perm is None else self.perm.cpu()
        importance = self._importance.cpu()
        pending = self._pending[: self._pending_count].cpu()
        return [
            {
                "model": OrderedDict((n, w[i].clone()) for n, w in zip(self._names, self.weights, strict=True)),
                "optimizer": {"name": "sgd", "lr": self.lr, "momentum": 0.0},
                "generator": self.generators[i].get_state(),
                "perm": None if perm is None else perm[i].clone(),
                "position": self.position,
                "step": self.step,
                "grad_importance": importance[i].clone(),
                "grad_pending": pending[:, i].clone(),
                "grad_steps": self.grad_steps,
                "legacy_gradients": self._legacy[i],
            }
            for i in (range(self.n_models) if indices is None else indices)
        ]

    def load_state_dict(self, state: dict) -> None:
        """The one model's `load_state_dicts`."""
        self._single()
        self.load_state_dicts([state])

    def load_state_dicts(self, states: Sequence[dict]) -> None:
        """Continue from one state per model, all at the same point. Also loads checkpoints written before F: their
        "grad_sum" (S, in x in) cannot become F, so F starts empty (grad_steps 0) and `legacy_gradients` says so;
        their "epoch" is derived from the step now."""
        if len(states) != self.n_models:
            raise SessionError(f"A batched group of {self.n_models} models got {len(states)} member states.")
        legacy = ["grad_importance" not in s for s in states]
        pending = [s["grad_pending"][:0] if old else s["grad_pending"] for s, old in zip(states, legacy, strict=True)]
        counters = {(int(s["position"]), int(s["step"]), 0 if old else int(s["grad_steps"]),
                     float(s["optimizer"]["lr"]), s["perm"] is None, int(p.shape[0]))
                    for s, old, p in zip(states, legacy, pending, strict=True)}
        if len(counters) != 1:
            raise SessionError("Members batched together must be at the same step with the same settings; "
                               "train the others alone to that point first.")
        for i, state in enumerate(states):
            model = state["model"]
            if list(model) != self._names:
                raise KeyError(f"the model's layers are {list(model)}, not {self._names}")
            for name, w in zip(self._names, self.weights, strict=True):
                if tuple(model[name].shape) != tuple(w.shape[1:]):
                    raise ValueError(f"{name} is {tuple(model[name].shape)}, not {tuple(w.shape[1:])}")
                w[i].copy_(model[name])
            self.generators[i].set_state(state["generator"])
            if legacy[i]:
                self._importance[i].zero_()
            else:
                self._importance[i].copy_(state["grad_importance"])
            self._legacy[i] = legacy[i] or bool(state["legacy_gradients"])
            self._pending[: pending[i].shape[0], i].copy_(pending[i])
        position, step, grad_steps, lr, no_perm, n_pending = counters.pop()
        self.position, self.step, self.grad_steps, self.lr = position, step, grad_steps, lr
        self._pending_count = n_pending
        self.perm = None if no_perm else torch.stack([s["perm"] for s in states]).to(self.device)


class _Shard:
    """Views of a shard's part of a trainer's stacks: one model's [out, in] tensors (stepped with mm), or the
    members' [m, out, in] slices (m > 0, stepped with bmm)."""

    def __init__(self, trainer: Trainer, index: int, members: slice) -> None:
        self.index, self.members = index, range(members.start, members.stop)
        self.at: int | slice = 0 if trainer.n_models == 1 else members
        self.m = 0 if trainer.n_models == 1 else members.stop - members.start
        self.weights = [w[self.at] for w in trainer.weights]
        self.loss_sum = trainer._loss_sum[members]
        self.neg_ones = trainer._neg_ones[self.at]
        self.mm, self.addmm_ = (torch.bmm, torch.Tensor.baddbmm_) if self.m else (torch.mm, torch.Tensor.addmm_)


def default_workers(device: torch.device) -> int:
    """Worker threads that fill the CPU's cores at the current intra-op thread count (1 where it already does,
    and on CUDA): 2 on a 2-core machine at the engine's 1 thread."""
    if device.type != "cpu":
        return 1
    return max(1, (os.cpu_count() or 1) // torch.get_num_threads())
