"""Decoded, normalised dataset splits cached as .npy files, so a second run maps them instead of decoding."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

log = logging.getLogger("clusterlab")

# Bump when what is stored, or how it is computed, changes: old entries then simply stop matching.
CACHE_VERSION = 1
SPLITS = ("train_x", "train_y", "test_x", "test_y")
DTYPES = {"train_x": np.float32, "train_y": np.int64, "test_x": np.float32, "test_y": np.int64}
Splits = dict[str, np.ndarray]


def cache_root() -> Path:
    """The folder holding every cached dataset: $CLUSTERLAB_CACHE, else ~/.cache/clusterlab/datasets."""
    override = os.environ.get("CLUSTERLAB_CACHE")
    return Path(override) if override else Path.home() / ".cache" / "clusterlab" / "datasets"


def cached_splits(name: str, sources: dict[str, Path], normalisation: str, build: Callable[[], Splits]) -> Splits:
    """The splits built from `sources` by `build`, read from the cache when an entry for exactly these files
    (paths, sizes, mtimes), this normalisation, this numpy and this cache version exists and is whole; else
    built and stored for next time. Cached arrays are copy-on-write memory maps. A cache that cannot be read
    is rebuilt with a warning; one that cannot be written only costs the speed-up."""
    try:
        entry = _entry_dir(name, sources, normalisation)
        found = entry.is_dir()
    except OSError as exc:  # a source vanished since it was found (`build` says so), or the cache is unreachable
        log.debug("dataset cache skipped: %s", exc)
        return build()
    if found:
        try:
            return _read_entry(entry)
        except (OSError, ValueError, EOFError) as exc:
            log.warning("dataset cache %s is unreadable (%s); rebuilding it", entry, exc)
            shutil.rmtree(entry, ignore_errors=True)
    splits = build()
    _store(entry, splits)
    return splits


def _entry_dir(name: str, sources: dict[str, Path], normalisation: str) -> Path:
    """<root>/<name>-<hash of the source paths>-<hash of everything the content depends on>."""
    files = {split: Path(path).resolve() for split, path in sources.items()}
    stats = {split: path.stat() for split, path in files.items()}
    key = {
        "version": CACHE_VERSION,
        "numpy": np.__version__,
        "normalisation": normalisation,
        "files": {split: [str(files[split]), stats[split].st_size, stats[split].st_mtime_ns] for split in files},
    }
    where = _digest(sorted(str(path) for path in files.values()))
    return cache_root() / f"{name}-{where}-{_digest(key)}"


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def _read_entry(entry: Path) -> Splits:
    """Map the four splits; a truncated or mistyped file raises ValueError."""
    splits = {split: np.load(entry / f"{split}.npy", mmap_mode="c", allow_pickle=False) for split in SPLITS}
    for split, array in splits.items():
        ndim = 2 if split.endswith("_x") else 1
        if array.dtype != DTYPES[split] or array.ndim != ndim:
            raise ValueError(f"{split}.npy holds {array.dtype} of {array.ndim} dimensions")
    if len(splits["train_x"]) != len(splits["train_y"]) or len(splits["test_x"]) != len(splits["test_y"]):
        raise ValueError("images and labels differ in number")
    if splits["train_x"].shape[1] != splits["test_x"].shape[1]:
        raise ValueError("train and test images differ in size")
    return splits


def _store(entry: Path, splits: Splits) -> None:
    """Write into a temporary folder, then rename it into place: a reader never sees a half-written entry."""
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=entry.parent))
    except OSError as exc:
        log.debug("dataset cache not written: %s", exc)
        return
    try:
        for split in SPLITS:
            np.save(tmp / f"{split}.npy", np.asarray(splits[split], dtype=DTYPES[split]), allow_pickle=False)
        os.rename(tmp, entry)
    except OSError as exc:  # a full disk, or another process stored the same entry first: either way, no harm
        log.debug("dataset cache not written: %s", exc)
        return
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone once renamed; else a partial write, Ctrl-C included
    _drop_stale(entry)


def _drop_stale(entry: Path) -> None:
    """Remove older entries for the same source files (they changed since): each holds hundreds of MB."""
    sources_prefix = entry.name.rsplit("-", 1)[0] + "-"
    for other in entry.parent.glob(f"{sources_prefix}*"):
        if other != entry and other.is_dir() and not other.name.startswith("."):
            shutil.rmtree(other, ignore_errors=True)
