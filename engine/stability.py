"""Cluster stability: how far clusterings of one network agree (ARI, NMI), each ARI against a label-permutation null.

A co-clustering labels the layer's output units (rows) and input units (columns); two co-clusterings are compared as
one labelling of rows then columns. The null keeps both labellings' cluster sizes on each side and permutes one of
them within rows and within columns: p = (r + 1)/(N + 1), r the permutations whose ARI is at least the observed one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.clustering import Clusters, cocluster

ALPHA = 0.05
DEFAULT_SEEDS = 4  # re-clusterings with other seeds
DEFAULT_SAMPLES = 200  # label permutations per ARI
RECLUSTER = "recluster"  # the metrics record of a re-clustering at a finetune epoch's end (engine/study.py)
COMPARISONS = ("sources", "seeds", "halves", "checkpoints")


@dataclass(frozen=True)
class Labels:
    """A co-clustering's row and column labels."""

    rows: np.ndarray
    cols: np.ndarray

    @classmethod
    def of(cls, clusters: Clusters) -> Labels:
        return cls(np.asarray(clusters.row_labels), np.asarray(clusters.col_labels))


def agreement(a: Labels, b: Labels, samples: int = DEFAULT_SAMPLES, seed: int = 0) -> dict:
    """ARI and NMI of two co-clusterings of the same units, the ARI's permutation null and its p."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score  # a second to import: only here

    x, y = np.concatenate([a.rows, a.cols]), np.concatenate([b.rows, b.cols])
    ari = float(adjusted_rand_score(x, y))
    rng = np.random.default_rng(seed)
    shuffled = np.stack([np.concatenate([rng.permutation(b.rows), rng.permutation(b.cols)]) for _ in range(samples)])
    null = permuted_aris(x, shuffled)
    return {"ari": ari, "nmi": float(normalized_mutual_info_score(x, y)), "null_mean": float(null.mean()),
            "null_std": float(null.std(ddof=1)) if samples > 1 else 0.0,
            "p": float((np.sum(null >= ari - 1e-12) + 1) / (samples + 1)), "samples": samples}


def permuted_aris(x: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """adjusted_rand_score(x, y) for each row y of `ys`, all permutations of one labelling: their cluster sizes
    are the same, so only the contingency table's Σ C(n_ij, 2) differs (Hubert and Arabie's formula, batched)."""
    _, xi = np.unique(x, return_inverse=True)
    _, yi = np.unique(ys, return_inverse=True)
    yi = yi.reshape(ys.shape)
    kx, ky, n = xi.max() + 1, yi.max() + 1, len(x)
    cells = (xi[None, :] * ky + yi) + (np.arange(len(ys)) * kx * ky)[:, None]
    table = np.bincount(cells.ravel(), minlength=len(ys) * kx * ky).reshape(len(ys), -1).astype(np.float64)
    pairs = (table * (table - 1) / 2).sum(axis=1)
    sum_a = (np.bincount(xi) * (np.bincount(xi) - 1) / 2).sum()
    sum_b = (np.bincount(yi[0]) * (np.bincount(yi[0]) - 1) / 2).sum() if len(ys) else 0.0
    expected = sum_a * sum_b / (n * (n - 1) / 2)
    most = (sum_a + sum_b) / 2
    if most == expected:  # both labellings one cluster each, or each unit its own: as scikit-learn, 1
        return np.ones(len(ys))
    return (pairs - expected) / (most - expected)


def half_importances(model, layer: int, x, y, batch_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """F = Σ_batches ĝ ⊙ ĝ of the studied layer (ĝ its batch gradient over its norm), as pretraining accumulates
    it, but at fixed weights and over each of two disjoint random halves of the training set."""
    import torch

    weight = [m for m in model if isinstance(m, torch.nn.Linear)][layer - 1].weight
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed)).to(y.device)
    half = len(y) // 2
    found = []
    for part in (order[:half], order[half:2 * half]):
        total = torch.zeros(weight.shape, dtype=torch.float64, device=weight.device)
        for start in range(0, half, batch_size):
            idx = part[start:start + batch_size]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            (g,) = torch.autograd.grad(loss, weight)
            g = g.double()
            total += g * g / (g * g).sum().clamp_min(torch.finfo(torch.float64).tiny)
        found.append(total.cpu().numpy())
    return found[0], found[1]


def session_stability(directory: Path, seeds: int = DEFAULT_SEEDS, samples: int = DEFAULT_SAMPLES) -> dict:
    """Every comparison for a saved session's current network (see README); the session is not changed."""
    from engine.data import load_dataset
    from engine.device import resolve_device
    from engine.errors import TrainingError
    from engine.phases import cluster
    from engine.session import load_saved, metrics_path, read_metrics
    from engine.trainer import Trainer

    saved, state = load_saved(directory)
    config = saved.config
    device = resolve_device(config.device)
    data = load_dataset(config.dataset, config.data_dir, config.seed, device)
    trainer = Trainer(config, data, device)
    trainer.load_state_dict(state["trainer"])
    held = saved.clusters
    k, source = (held.k, held.source) if held else (config.k, config.cluster_on)

    def compare(a: Labels, b: Labels, salt: int) -> dict:
        return agreement(a, b, samples, config.seed + salt)

    def labels(on: str, seed: int = config.seed) -> Labels:
        return Labels.of(cluster(trainer, k, on, seed))

    ari: dict = {}
    notes: list[str] = []
    try:
        ari["sources"] = compare(labels("weights"), labels("gradients"), 1)
    except TrainingError as exc:
        ari["sources"] = None
        notes.append(f"sources: {exc}")
    base = labels(source)
    ari["seeds"] = [{"seed": config.seed + i, **compare(base, labels(source, config.seed + i), 10 + i)}
                    for i in range(1, seeds + 1)]
    model = trainer.member_model(0)
    first, second = half_importances(model, config.studied_layer, data.train_x, data.train_y, config.batch_size,
                                     config.seed)
    ari["halves"] = compare(Labels.of(Clusters.found(k, "gradients", cocluster(first, k, seed=config.seed))),
                            Labels.of(Clusters.found(k, "gradients", cocluster(second, k, seed=config.seed))), 2)
    if held is None:
        ari["checkpoints"] = None
        notes.append("checkpoints: the session holds no clusters yet")
    else:
        ari["checkpoints"] = [
            {"step": r["step"], **compare(Labels.of(held), Labels(np.asarray(r["rows"]), np.asarray(r["cols"])),
                                          100 + i)}
            for i, r in enumerate(r for r in read_metrics(metrics_path(directory)) if r.get("type") == RECLUSTER)
            if r["step"] <= saved.step]
        if not ari["checkpoints"] or ari["checkpoints"][-1]["step"] != saved.step:
            ari["checkpoints"].append({"step": saved.step, **compare(Labels.of(held), labels("weights"), 99)})
    return {"session": directory.name, "step": saved.step, "k": k, "source": source,
            "held": held is not None, "samples": samples, "ari": ari, "notes": notes}


def summary(result: dict) -> str:
    """One line: each comparison's ARI (the lowest of several) and its p against the permutation null."""
    parts = []
    for name in COMPARISONS:
        found = result["ari"].get(name)
        if not found:
            continue
        worst = min(found, key=lambda f: f["ari"]) if isinstance(found, list) else found
        parts.append(f"{name} {worst['ari']:.2f} (p {worst['p']:.3g})")
    return "stability, ARI vs permuted labels: " + ", ".join(parts) if parts else "stability: nothing to compare"


def lines(result: dict) -> list[str]:
    """The CLI's text: a line per comparison, saying whether the ARI beats its null at ALPHA."""
    out = [f"{result['session']} at step {result['step']}: k={result['k']}, held clusters on {result['source']}"
           if result["held"] else f"{result['session']} at step {result['step']}: k={result['k']} (no held clusters)"]
    what = {"sources": "weights vs gradients", "seeds": "re-clustered with seed", "halves": "F of two data halves",
            "checkpoints": "held vs re-clustered at step"}
    for name in COMPARISONS:
        found = result["ari"].get(name)
        for f in found if isinstance(found, list) else [found] if found else []:
            tag = f" {f.get('seed', f.get('step'))}" if isinstance(found, list) else ""
            verdict = "agrees beyond chance" if f["p"] <= ALPHA else "no agreement beyond chance"
            out.append(f"  {name:<11} {what[name]}{tag}: ARI {f['ari']:.3f} (null {f['null_mean']:.3f} ± "
                       f"{f['null_std']:.3f}, p {f['p']:.3g}), NMI {f['nmi']:.3f}: {verdict}")
    out.extend(f"  note: {note}" for note in result["notes"])
    return out


# ----- across the seeds of a sweep --------------------------------------------------------------------------------

UNALIGNED = ("Neurons are not aligned across seeds (unit i of one seed's layer has no counterpart in another's), so "
             "seeds are compared by what does not name units: their cluster sizes, and their clusters' per-class "
             "ablation drops, each seed's clusters matched to another's by the best assignment.")


def matched_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Mean Pearson correlation of two seeds' per-class drop profiles (k × classes), clusters matched one to one
    so that the sum is largest (a cluster with a flat profile correlates 0)."""
    from scipy.optimize import linear_sum_assignment

    k = len(a)
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.nan_to_num(np.corrcoef(a, b)[:k, k:])
    rows, cols = linear_sum_assignment(-corr)
    return float(corr[rows, cols].mean())


def profile_agreement(profiles: list[np.ndarray], samples: int, seed: int) -> dict:
    """The mean over pairs of seeds of their matched correlation, against a null that permutes each seed's class
    labels (the same permutation for all of a seed's clusters)."""
    def mean_r(ps: list[np.ndarray]) -> float:
        return float(np.mean([matched_correlation(ps[i], ps[j])
                              for i in range(len(ps)) for j in range(i + 1, len(ps))]))

    observed = mean_r(profiles)
    rng = np.random.default_rng(seed)
    null = np.array([mean_r([p[:, rng.permutation(p.shape[1])] for p in profiles]) for _ in range(samples)])
    return {"r": observed, "null_mean": float(null.mean()), "null_std": float(null.std(ddof=1)) if samples > 1 else 0.0,
            "p": float((np.sum(null >= observed - 1e-12) + 1) / (samples + 1)), "samples": samples}


def sweep_stability(directory: Path, samples: int = DEFAULT_SAMPLES) -> dict:
    """Per clustering of the sweep (its point less the seed): each seed's cluster-size shares (largest first) and
    how far the seeds' per-class ablation profiles agree."""
    from engine.axes import point_of
    from engine.errors import SessionError
    from engine.plan import CLUSTER
    from engine.session import peek_session
    from engine.sweep import FINISHED, read_table

    table = read_table(directory)
    if table is None:
        raise SessionError(f"The sweep {directory.name} has no table yet; finish it first with "
                           f"'clusterlab sweep {directory.name}'.")
    groups: dict[str, list[dict]] = {}
    for member in table["members"]:
        if member["kind"] == CLUSTER and member["status"] == FINISHED and member.get("ablation"):
            point = {key: value for key, value in point_of(member).items() if key != "seed" and value is not None}
            groups.setdefault(repr(sorted(point.items())), []).append({**member, "point": point})
    found = []
    for members in groups.values():
        shares = []
        for member in members:
            clusters = (peek_session(directory.parent / member["name"]) or {}).get("clusters") or {}
            sizes = np.bincount(clusters.get("row_labels", []), minlength=member["k"])
            shares.append(sorted((sizes / max(sizes.sum(), 1)).tolist(), reverse=True))
        profiles = [np.asarray(m["ablation"]["drop"], dtype=np.float64) for m in members]
        found.append({"point": members[0]["point"], "seeds": [m["seed"] for m in members], "size_shares": shares,
                      "size_spread": float(np.std(shares, axis=0, ddof=1).max()) if len(shares) > 1 else None,
                      "ablation_profiles": profile_agreement(profiles, samples, 0) if len(profiles) > 1 else None})
    return {"sweep": directory.name, "neurons_aligned": False, "note": UNALIGNED, "groups": found}


def sweep_lines(result: dict) -> list[str]:
    out = [f"{result['sweep']}: {result['note']}"]
    for group in result["groups"]:
        where = ", ".join(f"{key} {value}" for key, value in group["point"].items())
        sizes = "; ".join("/".join(f"{s:.2f}" for s in shares) for shares in group["size_shares"])
        out.append(f"  {where}: seeds {group['seeds']}: cluster-size shares {sizes}"
                   + (f" (largest std across seeds {group['size_spread']:.3f})" if group["size_spread"] is not None
                      else ""))
        agree = group["ablation_profiles"]
        if agree is not None:
            verdict = "agree beyond chance" if agree["p"] <= ALPHA else "no agreement beyond chance"
            out.append(f"    per-class ablation profiles, matched clusters: mean r {agree['r']:.3f} (null "
                       f"{agree['null_mean']:.3f} ± {agree['null_std']:.3f}, p {agree['p']:.3g}): {verdict}")
    return out
