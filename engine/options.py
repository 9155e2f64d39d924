"""Every setting declared once: its flag, help and text parser, for argparse, the UI's fields and its validators.

Defaults and range checks live on `Config` (one place); an option only turns text into a typed value, so a bad
value reads the same wherever it was typed: `Config(...)` or `config.replace(...)` says what is wrong with it.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields

from engine.config import DATASETS, DEVICES, NULL_METHODS, SOURCES, Config, plain_number
from engine.errors import ConfigError

_KIND_WORDS = {int: "a whole number in digits", float: "a plain decimal number (like 0.001 or 1e-3)", str: "text",
               bool: "yes or no"}
_METAVARS = {int: "N", float: "X", str: "TEXT", bool: ""}
_BOOLS = {"yes": True, "no": False, "true": True, "false": False, "on": True, "off": False, "1": True, "0": False}


@dataclass(frozen=True)
class Option:
    """One `Config` field as the user sees it."""

    name: str  # the Config field
    flag: str
    kind: type
    help: str
    metavar: str = ""

    @property
    def default(self) -> object:
        field = next(f for f in fields(Config) if f.name == self.name)
        return None if field.default is MISSING else field.default

    @property
    def label(self) -> str:
        return self.flag.removeprefix("--")

    def parse(self, text: str) -> object:
        """The typed value of `text`; None for empty text (the default). Ranges are Config's to check."""
        text = text.strip()
        if not text:
            return None
        if self.kind is str:
            return text
        if self.kind is bool:
            if text.lower() not in _BOOLS:
                raise ConfigError(f"{self.flag} must be yes or no, not {text!r}.")
            return _BOOLS[text.lower()]
        try:
            return plain_number(text, self.kind)
        except ValueError:
            raise ConfigError(f"{self.flag} must be {_KIND_WORDS[self.kind]}, not {text!r}.") from None

    def text(self, value: object) -> str:
        """The field text that parses back to `value`."""
        if value is None:
            return ""
        if isinstance(value, tuple):
            return ",".join(map(str, value))
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, float):
            return f"{value:g}"
        return str(value)

    def check(self, config: Config, text: str) -> object:
        """Parse `text` and check it in the context of `config` (k against its layer, say); the value."""
        value = self.parse(text)
        config.replace(**{self.name: value if value is not None else self.default})
        return value


OPTIONS: tuple[Option, ...] = (
    Option("dataset", "--dataset", str, f"data set: {', '.join(DATASETS)} (default mnist)", "NAME"),
    Option("data_dir", "--data-dir", str,
           "folder with the dataset's four IDX files, .gz or not, flat or torchvision layout", "PATH"),
    Option("hidden", "--hidden", str, "hidden layer widths, comma-separated (default 128,128)", "W,W"),
    Option("layer", "--layer", str,
           "studied Linear layer, 1-based; must be hidden-to-hidden (default: the middle one); 'all' clusters the "
           "whole network as one graph (Filan et al.'s construction)", "N|all"),
    Option("lr", "--lr", float, "SGD learning rate (default 0.001)"),
    Option("batch_size", "--batch-size", int, "batch size (default 64)"),
    Option("seed", "--seed", int, "seed of weights, batch order and the null (default 42)"),
    Option("epochs", "--epochs", int, "pretraining epochs (default 5)"),
    Option("steps", "--steps", int, "pretrain for exactly this many optimizer steps instead of --epochs"),
    Option("eval_every", "--eval-every", int, "test accuracy every N steps, and at each epoch's end (default 400)"),
    Option("k", "--k", int, "number of clusters (default 2)"),
    Option("cluster_on", "--cluster-on", str, f"what to co-cluster: {' or '.join(SOURCES)} (default weights)",
           "SOURCE"),
    Option("finetune_epochs", "--finetune-epochs", int,
           "regularised finetuning epochs; 0 skips finetuning (default 10)"),
    Option("lam", "--lam", float, "regulariser strength: loss = CE - lam * clusterability (default 3.0)"),
    Option("device", "--device", str, f"compute device: {', '.join(DEVICES)} (default auto: CUDA when present)",
           "DEVICE"),
    Option("autosave_every", "--autosave-every", int, "save the session every N steps (default 500)"),
    Option("control", "--control", bool, "before finetuning, train a λ=0 twin for the same steps from the same state "
           "and data order: the control the finetuned accuracy is compared with"),
    Option("null", "--null", str, f"shuffle for the significance null: {' or '.join(NULL_METHODS)} (permute: every "
           "entry of the layer, of each layer with --layer all; rows: within each row, keeping each unit's weights; "
           "layer_nonzero: only the non-zero entries; rows_nonzero: the non-zero entries within each row, keeping "
           "a pruned layer's zeros and each unit's weights) (default rows; for pruned networks rows_nonzero). "
           "`clusterlab calibrate` finds permute miscalibrated on units of unequal scale (with --layer all it "
           "rejects 199 of 200 networks without modularity at p <= 0.05) and layer_nonzero where magnitude pruning "
           "follows the units' scale (44 of 200); rows and rows_nonzero stay calibrated there", "SHUFFLE"),
    Option("null_samples", "--null-samples", int,
           "shuffled layers re-co-clustered for each p-value; 0 turns the null off (default 100)"),
    Option("prune", "--prune", float, "share of all weights to zero at the end of pretraining, smallest |w| first "
           "(global magnitude pruning); they stay zero through every later step (default 0: no pruning)"),
    Option("prune_recover", "--prune-recover", int,
           "epochs of training right after pruning, the pruned weights held at zero; without --prune plain "
           "extra pretraining, so a sweep over --prune trains every member as long (default 0)"),
)
BY_NAME = {option.name: option for option in OPTIONS}


def metavar(option: Option) -> str:
    return option.metavar or _METAVARS[option.kind]


def config_from_texts(texts: dict[str, str | None], base: Config | None = None) -> Config:
    """A validated Config from option texts keyed by field name (None or empty: keep base's or the default)."""
    given = {}
    for name, text in texts.items():
        if text is None:
            continue
        value = BY_NAME[name].parse(text)
        if value is not None:
            given[name] = value
    return base.replace(**given) if base is not None else Config(**given)
