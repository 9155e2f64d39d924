"""A sweep's axes, declared once: the flag, the manifest key, the member-name part, the table column, the stage.

Member names, the manifest's grid, the result table (JSON, CSV, Markdown), the sweep view and `reproduce` all read
this list; adding an axis is one `Axis(...)` entry in AXES. Values are kept as JSON values (a shape is a list).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from engine.config import (
    Config,
    check_int,
    check_lam,
    check_source,
    finite_number,
    float32,
    parse_hidden,
    plain_number,
)
from engine.errors import ConfigError
from engine.plan import CLUSTER, FINETUNE, PRETRAIN

STAGES = (PRETRAIN, CLUSTER, FINETUNE)  # a member of a stage starts from a member of the stage before


def num_text(value: float) -> str:
    """A number as a name part: 3.0 -> '3', 0.25 -> '0.25' (the shortest text that reads back as the same float)."""
    text = f"{value:g}"
    return text if float(text) == value else repr(value)


def parse_list(flag: str, text: str, kind: type) -> list:
    """A comma-separated list of words, or of plain decimal numbers parsed as `kind`; at least one, and no empty
    item ('2,' is a typo, not a list)."""
    parts = [p.strip() for p in text.split(",")]
    if not all(parts):
        raise ConfigError(f"{flag} needs comma-separated values with none empty, not {text!r}.")
    if kind is str:
        return parts
    try:
        return [plain_number(p, kind) for p in parts]
    except ValueError:
        what = "whole numbers" if kind is int else "numbers"
        raise ConfigError(f"{flag} must be plain decimal {what}, comma-separated, not {text!r}.") from None


@dataclass(frozen=True)
class Span:
    """Seeds as two numbers, not a list: `head` (a saved sweep's seeds), then those of the range `tail` not among
    them. `--seeds 100000000` is counted (len) and refused or accepted before any list of it is made."""

    head: tuple
    tail: range

    def __len__(self) -> int:
        head = dict.fromkeys(self.head)  # as __iter__ yields them: each once
        return len(head) + len(self.tail) - sum(1 for v in head if v in self.tail)

    def __iter__(self) -> Iterator:
        yield from dict.fromkeys(self.head)
        seen = set(self.head)
        yield from (v for v in self.tail if v not in seen)


def parse_seeds(text: str) -> Span | list[int]:
    """'5' means five seeds, 1 to 5; '3..5' names seeds 3 to 5 ('7..7': seed 7 alone); a comma-separated list
    ('1,2,7') names them. A count or a range stays a Span (two numbers) until the sweep's size is accepted."""
    if ".." in text:
        first, last = parse_list("--seeds", text.replace("..", ",", 1), int)
        if not 0 <= first <= last:
            raise ConfigError(f"--seeds S..T needs 0 <= S <= T, not {text!r}.")
        return Span((), range(first, last + 1))
    if "," not in text:
        count = parse_list("--seeds", text, int)[0]
        check_int("--seeds", count, 1)
        return Span((), range(1, count + 1))
    return parse_list("--seeds", text, int)


def joined(first: Iterable, then: Span | list) -> Span | list:
    """`first`'s values then `then`'s, a Span kept a Span (a saved sweep's seeds and a --seeds N given again)."""
    return Span((*first, *then.head), then.tail) if isinstance(then, Span) else [*first, *then]


def parse_shapes(text: str) -> list[list[int]]:
    """'32,64' -> two networks, every hidden layer 32 (then 64) wide, two layers; '64x32x64' names a shape;
    '64*3' is three hidden layers of 64 (width * depth)."""
    return [_one_shape(part) for part in parse_list("--hidden", text, str)]


def _one_shape(part: str) -> list[int]:
    if "*" in part:
        width, _, depth = part.partition("*")
        if not depth.strip().isdigit() or "x" in width:
            raise ConfigError(f"--hidden's WIDTH*DEPTH needs one width and a whole number of layers, such as 128*3, "
                              f"not {part!r}.")
        return list(parse_hidden(",".join([width] * int(depth))))
    return list(parse_hidden(",".join(part.split("x")) if "x" in part else f"{part},{part}"))


def _seed(value: object) -> int:
    check_int("--seeds", value, 0)
    return value


def _k(value: object) -> int:
    check_int("--k", value, 2)
    return value


def _lam(value: object) -> float:
    check_lam(value)
    return float(value)


def _source(value: object) -> str:
    check_source(value)
    return value


def _shape_text(value: object) -> str:
    return "x".join(map(str, value))


def _shape(value: object) -> list[int]:
    return list(parse_hidden(value))


def _lr(value: object) -> float:
    if not finite_number(value) or value <= 0 or not float32(value):
        raise ConfigError(f"--lr must be positive numbers that float32 holds, not {value!r}.")
    return float(value)


def _prune(value: object) -> float:
    if not finite_number(value) or not 0 <= value < 1:
        raise ConfigError(f"--prune must be shares of the weights from 0 to below 1, not {value!r}.")
    return float(value)


def _epochs(value: object) -> int:
    check_int("--epochs", value, 0)
    return value


@dataclass(frozen=True)
class Axis:
    """One thing a sweep varies: a Config field, set from `stage` on (a pretraining axis reaches its members'
    clusterings and finetunings too)."""

    name: str  # the key in a member's point, its result and the table's rows; also the table's header
    field: str  # the Config field a value sets
    flag: str  # the sweep's flag
    key: str  # the values' key in sweep.json's grid (and in run_sweep's `grid_given`)
    stage: str  # the member kind from which the axis applies
    parse: Callable[[str], list]  # the flag's text -> values
    check: Callable[[object], object]  # a value -> the value checked and canonical, or ConfigError
    part: Callable[[object], str]  # a value -> its part of a member name
    help: str
    metavar: str = "X,X"
    text: Callable[[object], str] = str  # a value as a table cell
    ordered: bool = True  # values sorted ascending (else kept in the order given)
    always: bool = False  # in every sweep's grid (else only when given more than one value)
    default: Callable[[Config], list] | None = None  # the values of an `always` axis not given
    also: tuple = ()  # values always in the grid (λ=0, the control)
    label: str = ""  # the table's header, if not the name

    def values(self, given: Iterable) -> tuple:
        """The axis's grid values: checked, distinct, with `also`, ascending if `ordered`."""
        checked = [self.check(v) for v in [*given, *self.also]]
        distinct = list({_hashable(v): v for v in checked}.values())
        return tuple(sorted(distinct) if self.ordered else distinct)

    def count(self, given: Iterable) -> int:
        """How many values `values(given)` holds, a Span counted without listing it (its values are whole numbers
        of 0 or more already, and distinct)."""
        return len(given) if isinstance(given, Span) else len(self.values(given))


AXES: tuple[Axis, ...] = (
    Axis("seed", "seed", "--seeds", "seeds", PRETRAIN, parse_seeds, _seed, lambda v: f"s{v}",
         "N seeds (1 to N), S..T (seeds S to T), or a comma-separated list of seeds", "N|S..T|S,S", ordered=False,
         always=True),
    Axis("hidden", "hidden", "--hidden", "hidden", PRETRAIN, parse_shapes, _shape, lambda v: "h" + _shape_text(v),
         "hidden layer shapes, comma-separated: 32 means 32,32, 64x32x64 names three layers and 64*3 is three "
         "layers of 64 (default 128,128)", "W,WxW,W*D", text=_shape_text),
    Axis("lr", "lr", "--lr", "lr", PRETRAIN, lambda t: parse_list("--lr", t, float), _lr, lambda v: f"lr{num_text(v)}",
         "SGD learning rates, comma-separated (default 0.001)", text=lambda v: f"{v:g}"),
    Axis("epochs", "epochs", "--epochs", "epochs", PRETRAIN, lambda t: parse_list("--epochs", t, int), _epochs,
         lambda v: f"e{v}", "pretraining epochs, comma-separated (default 5)", "N,N"),
    Axis("prune", "prune", "--prune", "prune", PRETRAIN, lambda t: parse_list("--prune", t, float), _prune,
         lambda v: f"p{num_text(v)}", "shares of the weights pruned at the end of pretraining, comma-separated "
         "(default 0)", text=lambda v: f"{v:g}"),
    Axis("source", "cluster_on", "--cluster-on", "sources", CLUSTER, lambda t: parse_list("--cluster-on", t, str),
         _source, str, "weights and/or gradients, comma-separated (default weights)", "SOURCES", ordered=False,
         always=True, default=lambda base: [base.cluster_on]),
    Axis("k", "k", "--k", "k", CLUSTER, lambda t: parse_list("--k", t, int), _k, lambda v: f"k{v}",
         "numbers of clusters, comma-separated (default 2)", "K,K", always=True, default=lambda base: [base.k]),
    Axis("lam", "lam", "--lam", "lam", FINETUNE, lambda t: parse_list("--lam", t, float), _lam,
         lambda v: f"lam{num_text(v)}", "finetuning λs, comma-separated; 0 is always added (default 3)",
         text=lambda v: f"{v:g}", always=True, default=lambda base: [base.lam], also=(0.0,), label="λ"),
)
BY_KEY = {axis.key: axis for axis in AXES}
AXIS_FIELDS = frozenset(axis.field for axis in AXES)
def _hashable(value: object) -> object:
    return tuple(value) if isinstance(value, list) else value


def point_of(row: dict) -> dict:
    """The axis values a member's row or settings hold, in AXES order."""
    return {axis.name: row[axis.name] for axis in AXES if axis.name in row}


def group_key(row: dict, axes: list[Axis]) -> tuple:
    """A hashable key of `row`'s values on `axes` (None where the row has none)."""
    return tuple(_hashable(row.get(axis.name)) for axis in axes)


def cell(axis: Axis, value: object) -> str:
    return "-" if value is None else axis.text(value)


# ----- the command line ------------------------------------------------------------------------------------------


def add_axis_flags(parser: argparse.ArgumentParser) -> None:
    """A flag per axis, and a refusal for a setting's flag that an axis replaces under another name (--seed)."""
    for axis in AXES:
        parser.add_argument(axis.flag, dest=f"axis_{axis.name}", metavar=axis.metavar, help=axis.help)
    for axis in AXES:
        flag = "--" + axis.field.replace("_", "-")
        if flag != axis.flag:
            parser.add_argument(flag, dest=f"replaced_{axis.name}", help=argparse.SUPPRESS)


def grid_from_args(args: argparse.Namespace) -> dict:
    """The axis values given on the command line, by manifest key; a replaced flag is one sentence."""
    grid = {}
    for axis in AXES:
        if getattr(args, f"replaced_{axis.name}", None) is not None:
            flag = "--" + axis.field.replace("_", "-")
            raise ConfigError(f"{flag} has no meaning in a sweep: the sweep sets it per member from {axis.flag}; "
                              f"give {axis.flag} instead.")
        text = getattr(args, f"axis_{axis.name}", None)
        if text is not None:
            grid[axis.key] = axis.parse(text)
    return grid
