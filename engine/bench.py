"""`clusterlab bench`: the engine's figures, each measured next to its reference in the same run.

Everything runs in one process on the same data and device: the engine's real `Trainer.train_step(capture=True)`
and, interleaved with it in rounds, the reference study's loop (engine/bench_reference.py). Then the time of one
test-set evaluation, of co-clustering the studied layer (k=2, k=8) and a random 1024x1024 matrix (k=8), of one
clusterability evaluation, the share of the step that gradient capture costs (steps with and without capture,
interleaved), the step's roofline (its GEMMs alone, in blocks interleaved with the same steps) and batched training
(groups of 1, 8, 32 models as one Trainer, interleaved with one model training alone; on CUDA also 256 models, and
the CUDA-graph step without capture). Figures of whole processes (`--study`) come after, outside the timed loops.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from engine.bench_reference import SEED, ReferenceLoop, Roofline, datasets
from engine.clustering import cocluster
from engine.config import Config
from engine.device import configure_threads
from engine.errors import ConfigError
from engine.metrics import block_mask, clusterability
from engine.trainer import Trainer, default_workers

REFERENCE_MAX_STEPS = 200  # the reference loop runs ~20-50 steps/s: time it on fewer steps
ROUNDS = 4  # engine and reference alternate in this many rounds, so drifts in machine load hit both
CAPTURE_BLOCKS = 10  # interleaved blocks with and without gradient capture
WARMUP_STEPS = 30
WIDE = 1024  # side of the random matrix that shows how co-clustering and clusterability scale
BATCHED_SIZES = (1, 8, 32)  # models trained side by side as one Trainer of M models
CUDA_BATCHED_SIZE = 256  # on CUDA also a group big enough to fill the GPU
BATCHED_ROUNDS = 5  # the groups and one Trainer alone alternate in this many rounds
BATCHED_MIN_STEPS = 3  # a group's block has about --steps model-steps, and at least this many steps


def run_bench(args: argparse.Namespace) -> int:
    if getattr(args, "clients", False):  # `bench --clients`: only what attached UIs cost (engine/bench_attach.py)
        from engine.bench_attach import run_attach_bench

        return run_attach_bench(args)
    steps = int(args.steps)  # checked by the CLI
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was given but no CUDA device is available; use --device cpu.")
    device = torch.device(args.device)
    configure_threads(device)  # the engine's own setting, so the figures are the product's
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="clusterlab-bench-") as tmp:
        data, reference_set, dataset_name = datasets(args.dataset, args.data_dir, device, Path(tmp), notes)
        result = _measure(data, reference_set, dataset_name, device, steps, notes)
    # Figures of whole processes, each behind its flag, after the in-process loops so that they time nothing of
    # each other: the default study end to end (--study), and figures of modules of their own (bench_*.py) here.
    if getattr(args, "study", False):
        result["whole_study_s"] = whole_study_s(args.data_dir)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_table(result)
    return 0


# ----------------------------------------------------------------------------------------------- measuring


def _steps(trainer: Trainer, n: int, capture: bool, sync: Callable[[], None]) -> None:
    for _ in range(n):
        trainer.train_step(capture=capture)
    trainer.take_losses()  # the engine's loop syncs like this, a few times a second
    sync()


def _on_thread(work: Callable[[], None], threads: int | None = None) -> float:
    """Seconds `work` takes on a fresh thread, as the engine's jobs run; with `threads`, on that many (put back
    after)."""
    elapsed = []

    def timed() -> None:
        before = torch.get_num_threads()
        if threads is not None:
            torch.set_num_threads(threads)
        t0 = time.perf_counter()
        work()
        elapsed.append(time.perf_counter() - t0)
        torch.set_num_threads(before)

    thread = threading.Thread(target=timed)
    thread.start()
    thread.join()
    return elapsed[0]


def _measure(data, reference_set, dataset_name: str, device: torch.device, steps: int, notes: list[str]) -> dict:
    config = Config(dataset=dataset_name, seed=SEED, device=device.type)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    trainer = Trainer(config, data, device)
    reference = ReferenceLoop(reference_set, config, data.n_classes, device)
    ref_steps = min(steps, REFERENCE_MAX_STEPS)
    if ref_steps < steps:
        notes.append(f"reference loop timed on {ref_steps} steps (it is slow), the engine on {steps}")

    for _ in range(WARMUP_STEPS):
        trainer.train_step(capture=True)
    trainer.take_loss()
    reference.run(min(WARMUP_STEPS, 10))
    sync()

    engine_threads = torch.get_num_threads()
    engine_s = reference_s = 0.0
    for r in range(ROUNDS):
        # The engine trains on its own thread with its own thread setting; the reference as a script would.
        engine_s += _on_thread(lambda r=r: _steps(trainer, _share(steps, r), True, sync))
        torch.set_num_threads(os.cpu_count() or 1)
        t0 = time.perf_counter()
        reference.run(_share(ref_steps, r))
        sync()
        reference_s += time.perf_counter() - t0
        torch.set_num_threads(engine_threads)
    engine_rate, reference_rate = steps / engine_s, ref_steps / reference_s

    # Capture's share of the step: blocks with and without capture, interleaved, on the engine's kind of thread;
    # medians, since one block can be hit by whatever else the machine does. Blocks are a multiple of the
    # 32-step fold, so each holds its share of folds.
    # The roofline's blocks are interleaved with these too, and its share is the step with capture over it.
    block = 32 * max(1, min(steps, 1000) // 100)
    roofline = Roofline(config, data, device)
    times: dict[bool | str, list[float]] = {True: [], False: [], "roofline": []}
    for _ in range(CAPTURE_BLOCKS):
        for capture in (True, False):
            times[capture].append(_on_thread(lambda capture=capture: _steps(trainer, block, capture, sync)))
        times["roofline"].append(_on_thread(lambda: roofline.run(block, sync)))
    with_s, without_s = statistics.median(times[True]), statistics.median(times[False])
    roofline_s = statistics.median(times["roofline"])
    nocapture_rate = block / without_s

    eval_ms = _median_ms(trainer.evaluate, 7)
    weight = trainer.weight.detach().double().cpu().numpy()
    cocluster_k2_ms = _median_ms(lambda: cocluster(weight, 2, SEED), 3)
    cocluster_k8_ms = _median_ms(lambda: cocluster(weight, 8, SEED), 3)
    clustered = cocluster(weight, 2, SEED)
    rows, cols = clustered.rows, clustered.cols
    mask = block_mask(rows, cols, device)
    clusterability_ms = _median_ms(lambda: trainer.clusterability_of(mask), 21)
    wide = np.random.default_rng(SEED).standard_normal((WIDE, WIDE))
    cocluster_1024_k8_ms = _median_ms(lambda: cocluster(wide, 8, SEED), 3)
    wide_clustered = cocluster(wide, 8, SEED)
    wide_rows, wide_cols = wide_clustered.rows, wide_clustered.cols
    wide_w = torch.as_tensor(wide, dtype=torch.float32, device=device)
    wide_mask = block_mask(wide_rows, wide_cols, device)
    clusterability_1024_ms = _median_ms(lambda: clusterability(wide_w, wide_mask).item(), 21)
    scale = _batched(data, config, device, steps, sync)
    if scale["batched_workers"] > 1:
        notes.append(f"batched groups step on {scale['batched_workers']} worker threads of {engine_threads} torch "
                     f"thread(s) each, the Trainer on {engine_threads}: their speedup needs the cores to be free")
    if device.type == "cuda":
        scale.update(_cuda_graph_figures(data, config, device, steps, sync, notes))
    scale.update(_null_figures(weight, wide))

    return {
        "engine_steps_per_s": engine_rate,
        "reference_steps_per_s": reference_rate,
        "speedup": engine_rate / reference_rate,
        "engine_steps": steps,
        "reference_steps": ref_steps,
        "engine_nocapture_steps_per_s": nocapture_rate,
        "capture_share": (with_s - without_s) / with_s,
        "eval_ms": eval_ms,
        "cocluster_k2_ms": cocluster_k2_ms,
        "cocluster_k8_ms": cocluster_k8_ms,
        "cocluster_1024_k8_ms": cocluster_1024_k8_ms,
        "clusterability_ms": clusterability_ms,
        "clusterability_1024_ms": clusterability_1024_ms,
        "roofline_steps_per_s": block / roofline_s,
        "roofline_share": roofline_s / with_s,
        **scale,
        "reference_grads_kept": len(reference.grads),
        "reference_grads_seen": reference.grads_seen,
        "layer": f"fc{config.studied_layer} {tuple(trainer.weight.shape)}",
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "dataset": dataset_name,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "notes": notes,
    }


NULL_SAMPLES, WIDE_NULL_SAMPLES = 100, 10  # 100 shuffles of 1024x1024 take most of a minute here: time 10


def _null_figures(weight: np.ndarray, wide: np.ndarray) -> dict:
    """Seconds for the shuffle null (re-co-clustering shuffled layers) on the studied layer and on 1024x1024."""
    from engine.significance import significance

    def null_s(matrix: np.ndarray, samples: int) -> float:
        rows, cols = (np.arange(n) % 2 for n in matrix.shape)
        t0 = time.perf_counter()
        significance(matrix, rows, cols, 2, samples=samples, seed=SEED)
        return time.perf_counter() - t0

    null_s(weight, 2)  # warm-up: LAPACK and numpy's first calls
    wide_s = null_s(wide, WIDE_NULL_SAMPLES)
    return {"null_100_s": null_s(weight, NULL_SAMPLES),
            "null_1024_100_s_estimated": wide_s * NULL_SAMPLES / WIDE_NULL_SAMPLES,
            "null_1024_samples_timed": WIDE_NULL_SAMPLES}


def whole_study_s(data_dir: str | None) -> float:
    """Wall seconds of `clusterlab run --dataset mnist` (5 epochs, k=2, null, ablation, 10 finetune epochs at λ=3),
    process start included, in a throwaway sessions root."""
    import subprocess
    import sys

    with tempfile.TemporaryDirectory(prefix="clusterlab-study-") as root:
        command = [sys.executable, "-m", "tui.cli", "run", "--dataset", "mnist", "--device", "cpu"]
        if data_dir:
            command += ["--data-dir", data_dir]
        t0 = time.perf_counter()
        subprocess.run(command, env={**os.environ, "CLUSTERLAB_SESSIONS": root}, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - t0


def _batched(data, config: Config, device: torch.device, steps: int, sync: Callable[[], None]) -> dict:
    """Aggregate model-steps/s of groups trained as one Trainer of M models (with capture, as pretraining runs), and
    their ratio to the same models trained one after another by the engine's Trainer: rounds alternate one Trainer
    alone and every group, on the engine's thread count, groups with `default_workers` shards (on a 2-core CPU
    the engine's one thread leaves the second core to the UI, which a group may fill); medians over the rounds.
    On the CPU a group's block holds about `steps` model-steps; on CUDA, where a step of 256 models still takes
    well under a millisecond, `steps` steps (so the blocks also cross epoch starts, where a group draws its
    members' permutations)."""
    sizes = (*BATCHED_SIZES, CUDA_BATCHED_SIZE) if device.type == "cuda" else BATCHED_SIZES
    workers = default_workers(device)
    alone = Trainer(config, data, device)
    groups = {m: Trainer(config, data, device, range(SEED, SEED + m), workers) for m in sizes}
    for _ in range(WARMUP_STEPS):
        alone.train_step(capture=True)
    for group in groups.values():
        _steps(group, BATCHED_MIN_STEPS + 3, True, sync)  # past the eager steps that come before a CUDA graph
    rates: dict[int | str, list[float]] = {m: [] for m in ["alone", *sizes]}
    for _ in range(BATCHED_ROUNDS):
        rates["alone"].append(steps / _on_thread(lambda: _steps(alone, steps, True, sync)))
        for m, group in groups.items():
            n = steps if device.type == "cuda" else max(BATCHED_MIN_STEPS, round(steps / m))
            rates[m].append(m * n / _on_thread(lambda group=group, n=n: _steps(group, n, True, sync)))
    sequential = statistics.median(rates["alone"])
    batched = {str(m): statistics.median(rates[m]) for m in sizes}
    figures = {
        "sequential_model_steps_per_s": sequential,
        "batched_model_steps_per_s": batched,
        "batched_speedups": {m: rate / sequential for m, rate in batched.items()},
        "batched_speedup": batched[str(BATCHED_SIZES[-1])] / sequential,
        "batched_workers": workers,
    }
    if device.type == "cuda":
        figures[f"batched_{CUDA_BATCHED_SIZE}_model_steps_per_s"] = batched[str(CUDA_BATCHED_SIZE)]
    return figures


def _cuda_graph_figures(data, config: Config, device: torch.device, steps: int, sync: Callable[[], None],
                        notes: list[str]) -> dict:
    """Steps/s of one model's full-batch step replayed from its CUDA graph (no capture), median of ROUNDS."""
    trainer = Trainer(config, data, device)
    _steps(trainer, WARMUP_STEPS, False, sync)
    if not trainer._graphs:  # the Trainer fell back to eager steps (it logged why)
        notes.append("CUDA graph capture failed: cuda_graph_steps_per_s is the eager step's rate")
    n = max(steps, 2000)
    rates = [n / _on_thread(lambda: _steps(trainer, n, False, sync)) for _ in range(ROUNDS)]
    return {"cuda_graph_steps_per_s": statistics.median(rates)}


def _share(total: int, round_index: int) -> int:
    """Round `round_index`'s part of `total` steps split over ROUNDS rounds (the parts sum to total)."""
    return total * (round_index + 1) // ROUNDS - total * round_index // ROUNDS


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _print_table(r: dict) -> None:
    rows = [
        ("device", f"{r['device']} ({r['threads']} threads, torch {r['torch']})"),
        ("dataset", r["dataset"]),
        ("engine steps/s (with capture)", f"{r['engine_steps_per_s']:,.0f}  ({r['engine_steps']} steps)"),
        ("reference steps/s", f"{r['reference_steps_per_s']:,.1f}  ({r['reference_steps']} steps)"),
        ("speedup", f"{r['speedup']:,.1f}x"),
        ("engine steps/s without capture", f"{r['engine_nocapture_steps_per_s']:,.0f}"),
        ("gradient capture's share of the step", f"{r['capture_share']:.1%}"),
        ("test-set evaluation", f"{r['eval_ms']:.1f} ms"),
        (f"co-cluster {r['layer']}, k=2", f"{r['cocluster_k2_ms']:.1f} ms"),
        (f"co-cluster {r['layer']}, k=8", f"{r['cocluster_k8_ms']:.1f} ms"),
        ("co-cluster random 1024x1024, k=8", f"{r['cocluster_1024_k8_ms']:.1f} ms"),
        ("clusterability", f"{r['clusterability_ms']:.3f} ms"),
        ("clusterability 1024x1024", f"{r['clusterability_1024_ms']:.3f} ms"),
        ("roofline: the step's GEMMs alone (steps/s)", f"{r['roofline_steps_per_s']:,.0f}"),
        ("engine step's share of the roofline", f"{r['roofline_share']:.0%}"),
        ("models one after another (model-steps/s)", f"{r['sequential_model_steps_per_s']:,.0f}"),
    ]
    for m, rate in r["batched_model_steps_per_s"].items():
        rows.append((f"{m} batched model(s) (model-steps/s)",
                     f"{rate:,.0f}  ({r['batched_speedups'][m]:.2f}x; {r['batched_workers']} worker(s))"))
    if "cuda_graph_steps_per_s" in r:
        rows.append(("one model, CUDA graph, no capture (steps/s)", f"{r['cuda_graph_steps_per_s']:,.0f}"))
    rows += [
        ("shuffle null, 100 samples, studied layer, k=2", f"{r['null_100_s']:.2f} s"),
        ("shuffle null, 100 samples, 1024x1024, k=2",
         f"{r['null_1024_100_s_estimated']:.1f} s (from {r['null_1024_samples_timed']} timed)"),
    ]
    if "whole_study_s" in r:
        rows.append(("whole study (run --dataset mnist, process included)", f"{r['whole_study_s']:.1f} s"))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    for note in r["notes"]:
        print(f"note: {note}")
