"""The run's settings as one validated dataclass, shared by the CLI, the UI and the engine."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from engine.errors import ConfigError

DATASETS = ("mnist", "fashion-mnist", "digits", "synthetic")
SOURCES = ("weights", "gradients")
DEVICES = ("auto", "cpu", "cuda")


def parse_hidden(text: str | tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """'128,128' -> (128, 128); at least two hidden layers so a hidden-to-hidden layer exists."""
    if isinstance(text, str):
        parts = [p.strip() for p in text.split(",") if p.strip()]
        try:
            widths = tuple(int(p) for p in parts)
        except ValueError:
            raise ConfigError(
                f"--hidden must be comma-separated layer widths such as 128,128, not {text!r}."
            ) from None
    else:
        widths = tuple(int(w) for w in text)
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
    layer: int | None = None
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

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", parse_hidden(self.hidden))
        if not isinstance(self.control, bool):
            raise ConfigError(f"--control must be yes or no, not {self.control!r}.")
        if self.dataset not in DATASETS:
            raise ConfigError(f"--dataset must be one of {', '.join(DATASETS)}, not {self.dataset!r}.")
        check_source(self.cluster_on)
        if self.device not in DEVICES:
            raise ConfigError(f"--device must be one of {', '.join(DEVICES)}, not {self.device!r}.")
        check_int("--batch-size", self.batch_size, 1)
        check_int("--epochs", self.epochs, 0)
        check_int("--finetune-epochs", self.finetune_epochs, 0)
        check_int("--eval-every", self.eval_every, 1)
        check_int("--autosave-every", self.autosave_every, 1)
        check_int("--seed", self.seed, 0)
        if self.steps is not None:
            check_int("--steps", self.steps, 0)
        if not _finite(self.lr) or self.lr <= 0:
            raise ConfigError(f"--lr must be a positive number, not {self.lr!r}.")
        check_lam(self.lam)
        n_layers = len(self.hidden) + 1
        if self.layer is not None and not (isinstance(self.layer, int) and 2 <= self.layer <= n_layers - 1):
            raise ConfigError(
                f"--layer must name a hidden-to-hidden layer, 2 to {n_layers - 1} for --hidden "
                f"{','.join(map(str, self.hidden))}, not {self.layer!r}."
            )
        check_k(self.k, self.layer_shape)

    @property
    def studied_layer(self) -> int:
        """1-based index of the studied Linear layer (fc2 for two hidden layers)."""
        if self.layer is not None:
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
    if not isinstance(k, int) or isinstance(k, bool) or not 2 <= k <= width:
        raise ConfigError(f"--k must be a whole number from 2 to {width} (the studied layer's width), not {k!r}.")


def check_lam(lam: object) -> None:
    if not _finite(lam) or lam < 0:
        raise ConfigError(f"--lam must be a finite number of 0 or more, not {lam!r}.")


def check_source(source: object) -> None:
    if source not in SOURCES:
        raise ConfigError(f"--cluster-on must be 'weights' or 'gradients', not {source!r}.")


def check_int(flag: str, value: object, minimum: int) -> None:
    """A whole number (not a bool) of at least `minimum`, or ConfigError naming the flag."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{flag} must be a whole number of {minimum} or more, not {value!r}.")


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
