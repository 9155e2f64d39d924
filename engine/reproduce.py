"""The reference study as a preset sweep, and its printed figures set beside what the seeds give here."""

from __future__ import annotations

from dataclasses import dataclass

from engine.plan import CLUSTER, FINETUNE, PRETRAIN
from engine.stats import Estimate, mean_ci, paired_difference, prediction_interval
from engine.sweep import FINISHED
from engine.sweep_table import ALPHA, p_share, with_ci

# The figures the reference notebook printed, for one seed: MNIST, MLP 784-128-128-10 without biases, SGD lr 1e-3,
# batch 64, 5 pretraining epochs, co-clustering of fc2 with k=2, then 10 epochs of finetuning at λ=3.
REFERENCE_PRETRAINED_ACCURACY = 0.8771
# Its row and column clusters came from two independent k-means runs, so row cluster i and column cluster i were
# unrelated blocks: the figure measures a mismatched labelling.
REFERENCE_CLUSTERABILITY_K2 = 0.452
# Its finetune log came from re-executed notebook cells (finetuning continued from an already finetuned network),
# not from one 10-epoch run from the pretrained state; it printed 0.9993 from its first batch on.
REFERENCE_FINETUNED_CLUSTERABILITY = 0.9993
REFERENCE_FINETUNED_ACCURACY = 0.947

EPOCHS, FINETUNE_EPOCHS, LAM, K = 5, 10, 3.0, 2
NAME = "reproduce"
DEFAULT_SEEDS = 5


def preset(seeds: int, epochs: int = EPOCHS, finetune_epochs: int = FINETUNE_EPOCHS,
           data_dir: str | None = None, device: str | None = None) -> tuple[str, dict, dict]:
    """The sweep's name, settings and grid: the reference's, on `seeds` seeds. Fewer epochs make a smoke run, in a
    sweep of its own name so it never mixes with the real one."""
    settings = {"dataset": "mnist", "hidden": (128, 128), "lr": 1e-3, "batch_size": 64, "epochs": epochs,
                "finetune_epochs": finetune_epochs}
    settings.update({key: value for key, value in (("data_dir", data_dir), ("device", device)) if value is not None})
    grid = {"seeds": list(range(1, seeds + 1)), "sources": ["weights", "gradients"], "k": [K], "lam": [0.0, LAM]}
    name = NAME if (epochs, finetune_epochs) == (EPOCHS, FINETUNE_EPOCHS) else f"{NAME}-e{epochs}-f{finetune_epochs}"
    return name, settings, grid


def is_reference_run(epochs: int, finetune_epochs: int) -> bool:
    return (epochs, finetune_epochs) == (EPOCHS, FINETUNE_EPOCHS)


@dataclass(frozen=True)
class Comparison:
    """One figure: the reference's value beside the seeds' mean ± CI, and whether it holds up."""

    figure: str
    reference: float | None
    estimate: Estimate
    interval: tuple[float, float] | None  # where one seed's value falls (95%)
    p_share: str  # "a/n (Holm h)": of n seeds whose null could reject, a did (p <= ALPHA), h after Holm over the n
    verdict: str

    def to_dict(self) -> dict:
        return {"figure": self.figure, "reference": self.reference, "n": self.estimate.n, "mean": self.estimate.mean,
                "ci": self.estimate.ci, "one_seed_interval": list(self.interval) if self.interval else None,
                "p_below_alpha": self.p_share, "verdict": self.verdict}


def compare(members: list[dict]) -> list[Comparison]:
    """The reference's figures against the weights-source members of a reproduce sweep (the gradients source is in
    the sweep's own table: the reference printed no figure for it)."""
    done = [m for m in members if m["status"] == FINISHED]
    pretrained = [m for m in done if m["kind"] == PRETRAIN]
    clustered = [m for m in done if m["kind"] == CLUSTER and m["source"] == "weights" and m["k"] == K]
    finetuned = [m for m in done if m["kind"] == FINETUNE and m["source"] == "weights" and m["k"] == K]
    treated = [m for m in finetuned if m["lam"] == LAM]
    control = [m for m in finetuned if m["lam"] == 0.0]
    mismatch = ("does not hold up: the reference clustered rows and columns with two independent k-means runs, so "
                "its row cluster i and column cluster i were unrelated")
    rerun = ("does not hold up: the reference's finetune log came from re-executed notebook cells, not one "
             f"{FINETUNE_EPOCHS}-epoch run from the pretrained network")
    rows = [
        _against("pretrained accuracy", REFERENCE_PRETRAINED_ACCURACY, pretrained, "test_accuracy",
                 "does not hold up: outside the range of one seed here"),
        _against(f"clusterability, k={K} on weights", REFERENCE_CLUSTERABILITY_K2, clustered, "clusterability",
                 mismatch),
        _against(f"finetuned clusterability (λ={LAM:g})", REFERENCE_FINETUNED_CLUSTERABILITY, treated,
                 "clusterability", rerun),
        _against(f"finetuned accuracy (λ={LAM:g})", REFERENCE_FINETUNED_ACCURACY, treated, "test_accuracy", rerun),
        _against("control accuracy (λ=0, same steps)", None, control, "test_accuracy",
                 "the reference ran no control"),
    ]
    cost = paired_difference({m["seed"]: m["test_accuracy"] for m in control},
                             {m["seed"]: m["test_accuracy"] for m in treated})
    rows.append(Comparison(f"accuracy cost of λ={LAM:g} (control − finetuned)", None, cost, None, "-",
                           _cost_verdict(cost)))
    return rows


def _against(figure: str, reference: float | None, members: list[dict], key: str, fails: str) -> Comparison:
    values = [m[key] for m in members]
    estimate, interval = mean_ci(values), prediction_interval(values)
    share = p_share(members)
    if reference is None:
        verdict = fails
    elif interval is None:
        verdict = "cannot tell from fewer than two seeds"
    elif interval[0] <= reference <= interval[1]:
        verdict = "holds up: within the 95% range of one seed"
    else:
        verdict = fails
    return Comparison(figure, reference, estimate, interval, share, verdict)


def _cost_verdict(cost: Estimate) -> str:
    if cost.interval is None:
        return "the reference ran no control; cannot tell from fewer than two seeds"
    low, high = cost.interval
    if low <= 0 <= high:
        return ("the reference ran no control: λ=0 for the same steps is as accurate, so the gain after pretraining "
                "is more training, not the regulariser")
    if low > 0:
        return f"the reference ran no control: the regulariser costs {100 * cost.mean:.2f} accuracy points"
    return f"the reference ran no control: the regulariser gains {-100 * cost.mean:.2f} accuracy points"


def comparison_markdown(rows: list[Comparison]) -> str:
    head = ("figure", "reference", "clusterlab (mean ± 95% CI)", "one seed (95%)", f"p ≤ {ALPHA:g}", "verdict")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        interval = "-" if r.interval is None else f"{r.interval[0]:.4f} to {r.interval[1]:.4f}"
        reference = "-" if r.reference is None else f"{r.reference:g}"
        lines.append(f"| {r.figure} | {reference} | {with_ci(r.estimate.mean, r.estimate.ci)} "
                     f"(n={r.estimate.n}) | {interval} | {r.p_share} | {r.verdict} |")
    return "\n".join(lines)
