"""The run's settings as one validated dataclass, shared by the CLI, the UI and the engine."""

from __future__ import annotations

import argparse
import math
import os
import re
import struct
from dataclasses import asdict, dataclass, fields

from engine.errors import ConfigError

DATASETS = ("mnist", "fashion-mnist", "digits", "synthetic")
SOURCES = ("weights", "gradients")
# Shuffle every entry of each layer, within each row, or only the non-zero entries (for pruned networks).
NULL_METHODS = ("permute", "rows", "layer_nonzero", "rows_nonzero")
DEVICES = ("auto", "cpu", "cuda")
ALL = "all"  # --layer all: cluster the whole network as one graph
FLOAT32_MAX = 3.4028234663852886e38
FLOAT32_TINY = 1.401298464324817e-45  # the smallest float32 above 0 (subnormal)
# scikit-learn's k-means (a RandomState) takes seeds up to 2**32 - 1, less than torch takes: the clustering bounds it.
MAX_SEED = 2**32 - 1
# Far above the largest training set (60,000 images), so full-batch training stays possible, while the buffers
# sized by the batch stay small; a larger batch could only waste memory.
MAX_BATCH_SIZE = 2**20
# The most optimizer steps one job may take: a million MNIST epochs, days of training at any speed this project has
# measured; a saved plan asking for more is damage (10**15 would train forever without a word).
MAX_STEPS = 10**9
# The memory estimate assumes MNIST's shape, the largest dataset: inputs, training and test images, classes.
_INPUTS, _TRAIN, _TEST, _CLASSES = 784, 60_000, 10_000, 10
# The trainer's raw studied-layer gradients buffer holds at most max(out * in, this many) floats.
_PENDING_FLOATS = 1 << 20


def parse_hidden(text: str | tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """'128,128' -> (128, 128); at least two hidden layers so a hidden-to-hidden layer exists."""
    if isinstance(text, str):
        parts = [p.strip() for p in text.split(",")]  # "128,,128" or "128," is a typo, not two widths
        try:
            widths = tuple(plain_number(p, int) for p in parts)
        except ValueError:
            raise ConfigError(
                f"--hidden must be comma-separated layer widths such as 128,128, not {text!r}."
            ) from None
    elif isinstance(text, (list, tuple)) and all(whole_number(w) for w in text):
        widths = tuple(int(w) for w in text)
    else:
        raise ConfigError(f"--hidden must be comma-separated layer widths such as 128,128, not {text!r}.")
    if len(widths) < 2 or any(w < 2 for w in widths):
        raise ConfigError(
            "--hidden needs at least two hidden layers of width 2 or more (for example 128,128),"
            f" got {','.join(map(str, widths)) or 'nothing'}."
        )
    return widths


@dataclass(frozen=True)
class Config:
    """Every setting of a run. Invalid values raise ConfigError with a message naming the flag."""

    dataset: str = "mnist"
    data_dir: str | None = None
    hidden: tuple[int, ...] = (128, 128)
    layer: int | str | None = None  # a hidden-to-hidden layer's 1-based index, or "all": the whole network
    lr: float = 1e-3
    batch_size: int = 64
    seed: int = 42
    epochs: int = 5
    steps: int | None = None
    eval_every: int = 400
    k: int = 2
    cluster_on: str = "weights"
    finetune_epochs: int = 10
    lam: float = 3.0
    device: str = "auto"
    autosave_every: int = 500
    control: bool = False  # before finetuning, train a λ=0 twin for the same steps: the accuracy baseline
    null: str = "rows"  # how the layer is shuffled for the significance null (rows: calibrated on every layer)
    null_samples: int = 100  # shuffles re-co-clustered for each p-value; 0 turns the null off
    prune: float = 0.0  # share of all weights zeroed (smallest |w| first) at the end of pretraining, kept zero after
    prune_recover: int = 0  # epochs right after pruning, its zeros held (without --prune: plain extra epochs)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", parse_hidden(self.hidden))
        if not isinstance(self.control, bool):
            raise ConfigError(f"--control must be yes or no, not {self.control!r}.")
        check_null(self.null, self.null_samples)
        if self.dataset not in DATASETS:
            raise ConfigError(f"--dataset must be one of {', '.join(DATASETS)}, not {self.dataset!r}.")
        check_source(self.cluster_on)
        if self.device not in DEVICES:
            raise ConfigError(f"--device must be one of {', '.join(DEVICES)}, not {self.device!r}.")
        if self.data_dir is not None and not isinstance(self.data_dir, str):
            raise ConfigError(f"--data-dir must be a folder path, not {self.data_dir!r}.")
        check_int("--batch-size", self.batch_size, 1)
        if self.batch_size > MAX_BATCH_SIZE:
            raise ConfigError(
                f"--batch-size must be at most {MAX_BATCH_SIZE} (more than any training set holds), "
                f"not {self.batch_size!r}."
            )
        for flag, epochs in (("--epochs", self.epochs), ("--finetune-epochs", self.finetune_epochs)):
            check_int(flag, epochs, 0)
            if epochs * math.ceil(_TRAIN / self.batch_size) > MAX_STEPS:  # MNIST's epochs are the longest
                raise ConfigError(f"{flag} {epochs} would be more than {MAX_STEPS:,} steps at --batch-size "
                                  f"{self.batch_size} (the most one job may take); ask for fewer epochs.")
        check_int("--eval-every", self.eval_every, 1)
        check_int("--autosave-every", self.autosave_every, 1)
        check_int("--seed", self.seed, 0)
        if self.seed > MAX_SEED:
            raise ConfigError(
                f"--seed must be at most {MAX_SEED} (2**32 - 1, the largest seed the clustering takes), "
                f"not {self.seed!r}."
            )
        if self.steps is not None:
            check_int("--steps", self.steps, 0)
        if (self.steps or 0) > MAX_STEPS:
            raise ConfigError(f"--steps must be at most {MAX_STEPS:,} (the most one job may take), not {self.steps!r}.")
        if not finite_number(self.lr) or self.lr <= 0:
            raise ConfigError(f"--lr must be a positive number, not {self.lr!r}.")
        if not float32(self.lr):  # too large, or so small it is 0 in float32: the step would be inf or nothing
            raise ConfigError(
                f"--lr must be a positive number that float32 (the training precision) holds, from 1.4e-45 to "
                f"{FLOAT32_MAX:.1e}, not {self.lr!r}."
            )
        check_lam(self.lam)
        n_layers = len(self.hidden) + 1
        if isinstance(self.layer, str) and self.layer != ALL and _PLAIN[int].fullmatch(self.layer):
            object.__setattr__(self, "layer", int(self.layer))  # the text of a UI field or a flag
        if self.layer is not None and self.layer != ALL and not (
                whole_number(self.layer) and 2 <= self.layer <= n_layers - 1):
            raise ConfigError(
                f"--layer must name a hidden-to-hidden layer, 2 to {n_layers - 1} for --hidden "
                f"{','.join(map(str, self.hidden))}, or be 'all' (the whole network), not {self.layer!r}."
            )
        if self.whole_network and self.cluster_on != "weights":
            raise ConfigError("--layer all clusters the network's weights only; use --cluster-on weights.")
        check_k(self.k, self.layer_shape)
        if not finite_number(self.prune) or not 0 <= self.prune < 1:
            raise ConfigError(f"--prune must be a share of the weights from 0 to below 1 (like 0.9), "
                              f"not {self.prune!r}.")
        check_int("--prune-recover", self.prune_recover, 0)
        check_memory(self)

    @property
    def whole_network(self) -> bool:
        """Whether the clusters are the whole network's (`--layer all`), not one layer's."""
        return self.layer == ALL

    @property
    def studied_layer(self) -> int:
        """1-based index of the studied Linear layer (fc2 for two hidden layers); with `--layer all`, the middle
        one, whose units the ablation silences, the picture shows and the gradient statistic F describes."""
        if self.layer is not None and self.layer != ALL:
            return self.layer
        return 2 + (len(self.hidden) - 2) // 2

    @property
    def layer_shape(self) -> tuple[int, int]:
        """(rows, cols) of the studied weight matrix: (its output width, its input width)."""
        i = self.studied_layer
        return self.hidden[i - 1], self.hidden[i - 2]

    def replace(self, **changes) -> Config:
        """A validated copy with some fields changed."""
        data = self.to_dict()
        data.update(changes)
        return Config.from_dict(data)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["hidden"] = list(self.hidden)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Config:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"Unknown config field(s): {', '.join(unknown)}.")
        return cls(**data)


def check_k(k: object, layer_shape: tuple[int, int]) -> None:
    """k must be at least 2 and no larger than the studied layer's smaller side."""
    width = min(layer_shape)
    if not whole_number(k) or not 2 <= k <= width:
        raise ConfigError(f"--k must be a whole number from 2 to {width} (the studied layer's width), not {k!r}.")


def check_lam(lam: object) -> None:
    if not finite_number(lam) or lam < 0:
        raise ConfigError(f"--lam must be a finite number of 0 or more, not {lam!r}.")
    if float32(lam) is None:
        raise ConfigError(
            f"--lam must be a number that float32 (the training precision) holds, at most {FLOAT32_MAX:.1e}, "
            f"not {lam!r}."
        )
    if lam != 0 and float32(lam) == 0:  # trained as λ=0: a second control shown as a finetuned row
        raise ConfigError(f"--lam {lam!r} is 0 in float32 (the training precision); give 0 for the λ=0 control "
                          f"or at least {FLOAT32_TINY:.1e}.")


def check_null(method: object, samples: object) -> None:
    """`--null` names a shuffle and `--null-samples` is a whole number (0 turns the null off)."""
    if method not in NULL_METHODS:
        raise ConfigError(f"--null must be one of {', '.join(NULL_METHODS)}, not {method!r}.")
    check_int("--null-samples", samples, 0)


def check_source(source: object) -> None:
    if source not in SOURCES:
        raise ConfigError(f"--cluster-on must be 'weights' or 'gradients', not {source!r}.")


def check_int(flag: str, value: object, minimum: int) -> None:
    """A whole number (not a bool) of at least `minimum`, or ConfigError naming the flag."""
    if not whole_number(value) or value < minimum:
        raise ConfigError(f"{flag} must be a whole number of {minimum} or more, not {value!r}.")


def estimate_memory(config: Config) -> int:
    """Bytes of host memory a run of `config` needs at least, for a dataset of MNIST's shape (the largest).

    The training state is the float32 weights, the float64 gradient statistic S (in x in, of the studied layer)
    and the buffer of raw gradients not yet folded into S; it is counted twice, live and as the checkpoint being
    written (or loaded on resume), which is built on the host even when training runs on CUDA. Added to it: the
    dataset, a training batch's activations and gradients, and the test set's activations during evaluation.
    """
    widths = (_INPUTS, *config.hidden, _CLASSES)
    state = _state_bytes(config)
    batch = min(config.batch_size, _TRAIN)  # a batch never holds more than the training set
    activations = 4 * batch * (sum(widths) + 2 * max(widths)) + 4 * _TEST * 2 * max(widths)
    data = (4 * _INPUTS + 8) * (_TRAIN + _TEST)  # float32 images and int64 labels
    return 2 * state + activations + data + 4 * config.batch_size


def checkpoint_bytes(config: Config) -> int:
    """Bytes of one checkpoint of `config` at most, for a dataset of MNIST's shape: the training state (see
    estimate_memory) and the data order (an int64 per training image)."""
    return _state_bytes(config) + 8 * _TRAIN


def steps_per_epoch(config: Config) -> int:
    """Optimizer steps in an epoch of a training set of MNIST's size (the largest)."""
    return -(-_TRAIN // config.batch_size)


def _state_bytes(config: Config) -> int:
    """The float32 weights, the float64 gradient statistic S (in x in, of the studied layer) and the buffer of raw
    gradients not yet folded into S."""
    widths = (_INPUTS, *config.hidden, _CLASSES)
    out_w, in_w = config.layer_shape
    weights = 4 * sum(a * b for a, b in zip(widths[:-1], widths[1:], strict=True))
    return weights + 8 * in_w * in_w + 4 * max(out_w * in_w, _PENDING_FLOATS)


def available_memory() -> int | None:
    """Bytes of memory a new allocation can get: MemAvailable in /proc/meminfo (it counts reclaimable caches),
    else the physical memory; None where neither can be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def check_memory(config: Config) -> None:
    """Refuse a config whose estimated memory (see estimate_memory) exceeds the memory available now."""
    needed, available = estimate_memory(config), available_memory()
    if available is not None and needed > available:
        raise ConfigError(
            f"--hidden {','.join(map(str, config.hidden))} with --batch-size {config.batch_size} needs about "
            f"{needed / 1e9:.1f} GB of memory (weights, gradient statistic, data and a checkpoint copy), more than "
            f"the {available / 1e9:.1f} GB available; use narrower layers or a smaller batch."
        )


def finite_number(value: object) -> bool:
    """An int or float (not a bool) that is neither infinite nor NaN, nor an int too large for a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def float32(value: float) -> float | None:
    """`value` as float32 (the training precision) rounds it, or None where float32 overflows to infinity."""
    try:
        return struct.unpack("<f", struct.pack("<f", value))[0]
    except OverflowError:
        return None


_PLAIN = {int: re.compile(r"[+-]?[0-9]+"), float: re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")}


def plain_number(text: str, kind: type[int] | type[float]) -> int | float:
    """`text` as a plain decimal of `kind` (float also takes an exponent: 1e-3); ValueError for what Python's
    int()/float() accept beyond that ('1_0', 'inf', 'nan', '0x10', ' 1 ')."""
    if not _PLAIN[kind].fullmatch(text):
        raise ValueError(text)
    return kind(text)


def plain_int(text: str) -> int:
    """An argparse `type` for a whole number written as a plain decimal (plain_number)."""
    return _plain_arg(text, int)


def plain_float(text: str) -> float:
    """An argparse `type` for a number written as a plain decimal (plain_number)."""
    return _plain_arg(text, float)


def _plain_arg(text: str, kind: type[int] | type[float]) -> int | float:
    try:
        return plain_number(text, kind)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"must be {what} written as a plain decimal, not {text!r}") from None


def whole_number(value: object) -> bool:
    """An int that is not a bool (JSON's true is no count)."""
    return isinstance(value, int) and not isinstance(value, bool)
