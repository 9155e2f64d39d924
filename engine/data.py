"""Datasets held whole as normalised float tensors on the compute device."""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.datacache import Splits, cached_splits
from engine.errors import DataError

IDX_CLASSES = 10  # MNIST and Fashion-MNIST both label their images 0 to 9
# (torchvision class name, file prefix of the four IDX files)
_IDX_SETS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
# The reference study normalised MNIST with these constants; other sets use their own training statistics.
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
SYNTHETIC_SHAPE = (28, 28)
SYNTHETIC_SIZES = (4096, 1024)


@dataclass
class Dataset:
    """Train and test splits as device tensors: x float32 (N, features), y int64 (N,)."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    n_classes: int
    source: str

    @property
    def n_features(self) -> int:
        return self.train_x.shape[1]

    @property
    def n_train(self) -> int:
        return self.train_x.shape[0]


DOWNLOAD_ROOT = Path.home() / ".cache" / "clusterlab" / "data"


def default_data_dirs(name: str) -> list[Path]:
    """Where a dataset is looked for when --data-dir is not given, in order."""
    dirs = [Path(os.environ["CLUSTERLAB_DATA"])] if os.environ.get("CLUSTERLAB_DATA") else []
    dirs.append(DOWNLOAD_ROOT)
    if name == "fashion-mnist":
        dirs.append(Path("/usr/share/datasets/fashion-mnist"))
    else:
        dirs.append(Path("../shared/datasets/mnist"))
    return dirs


def check_source(name: str, data_dir: str | None) -> None:
    """Before any work: --data-dir is only for sets read from files, and such a set's four files are there (found,
    or downloaded once where no --data-dir is given); DataError with one sentence otherwise."""
    if data_dir is not None and name not in _IDX_SETS:
        raise DataError(f"--data-dir is only for datasets read from files ({', '.join(_IDX_SETS)}); "
                        f"drop it for --dataset {name}.")
    if name in _IDX_SETS:
        _find_idx_set(name, data_dir)


def load_dataset(name: str, data_dir: str | None, seed: int, device: torch.device) -> Dataset:
    """Load a dataset by name onto `device`; raises DataError with one clear sentence on failure."""
    check_source(name, data_dir)
    if name in _IDX_SETS:
        splits, source = _idx_splits(name, data_dir)
    elif name == "digits":
        splits, source = _normalised(*_digits(), None), "scikit-learn digits"
    elif name == "synthetic":
        splits, source = _normalised(*synthetic_arrays(seed), None), f"synthetic (seed {seed})"
    else:
        raise DataError(f"Unknown dataset {name!r}.")
    return Dataset(
        name=name,
        **{split: _to_device(array, device) for split, array in splits.items()},
        n_classes=int(max(splits["train_y"].max(), splits["test_y"].max())) + 1,
        source=source,
    )


def _normalised(train_x, train_y, test_x, test_y, stats: tuple[float, float] | None) -> Splits:
    """Splits with float32 images (N, features) standardised in place by `stats` (mean, std), else by the
    training images' own, and int64 labels. The image arrays must be float32 ones the caller gives up."""
    mean, std = stats if stats else (float(train_x.mean()), float(train_x.std()))
    for x in (train_x, test_x):
        x -= mean
        x /= std
    return {"train_x": train_x, "train_y": train_y.astype(np.int64),
            "test_x": test_x, "test_y": test_y.astype(np.int64)}


def _to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """One copy from a cache's memory map into memory the tensor owns, as the file may change while we run.
    On the CPU that memory is numpy's: numpy asks the kernel for huge pages, so faulting in MNIST's 188 MB of
    training images costs 22 ms of CPU against 75 ms into torch.empty's small pages (medians of 8, 2-core box)."""
    if isinstance(array, np.memmap) and device.type == "cpu":
        array = np.array(array)
    return torch.from_numpy(array).to(device)


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (gzip-compressed or not) as a uint8 array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"Could not read {path}: {exc}. Check the file or point --data-dir elsewhere.") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an IDX file of unsigned bytes; re-download it or fix --data-dir.")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(bytearray(data), dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {body.size}.")
    return body.reshape(dims)


def find_idx_files(folder: Path, tv_name: str) -> dict[str, Path] | None:
    """The four IDX files in `folder`, flat or in torchvision's <root>/<Name>/raw layout, .gz or not."""
    for where in (folder, folder / tv_name / "raw"):
        found = {}
        for key, stem in IDX_FILES.items():
            for candidate in (where / stem, where / f"{stem}.gz"):
                if candidate.is_file():
                    found[key] = candidate
                    break
        if len(found) == len(IDX_FILES):
            return found
    return None


def _idx_splits(name: str, data_dir: str | None) -> tuple[Splits, str]:
    """The set's splits, from the cache when it holds these very files, and the folder they came from."""
    folder, files = _find_idx_set(name, data_dir)
    stats = (MNIST_MEAN, MNIST_STD) if name == "mnist" else None
    normalisation = f"x/255, then standardised by {stats or 'the training images mean and std'}"
    return cached_splits(name, files, normalisation, lambda: _decode_idx(files, stats)), str(folder)


def _find_idx_set(name: str, data_dir: str | None) -> tuple[Path, dict[str, Path]]:
    tv_name = _IDX_SETS[name]
    folders = [Path(data_dir)] if data_dir else default_data_dirs(name)
    why = ""
    if data_dir is None and not any(find_idx_files(f, tv_name) for f in folders):
        why = _download(name, DOWNLOAD_ROOT)
        why = f" and downloading failed ({why})" if why else ""
    for folder in folders:
        files = find_idx_files(folder, tv_name)
        if files:
            return folder, files
    looked = ", ".join(str(f) for f in folders)
    raise DataError(
        f"{name} not found: looked for the four IDX files ({IDX_FILES['train_x']}[.gz] and the others) in "
        f"{looked}{why}; pass --data-dir with a folder holding them, or use --dataset digits offline."
    )


def _decode_idx(files: dict[str, Path], stats: tuple[float, float] | None) -> Splits:
    train_x, train_y, test_x, test_y = (read_idx(files[key]) for key in IDX_FILES)
    for key, images, labels in (("train_y", train_x, train_y), ("test_y", test_x, test_y)):
        _check_labels(files[key], images, labels)
    return _normalised(_unit_rows(train_x), train_y, _unit_rows(test_x), test_y, stats)


def _check_labels(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """A label outside the set's classes would silently widen the network's output layer (n_classes is the
    largest label + 1), and a count mismatch would pair images with the wrong labels: refuse both."""
    if len(labels) != len(images):
        raise DataError(f"{path} holds {len(labels)} labels for {len(images)} images; replace it with the "
                        "original IDX file.")
    bad = np.flatnonzero(labels >= IDX_CLASSES)
    if bad.size:
        raise DataError(f"{path} has label {int(labels[bad[0]])} at index {int(bad[0])}, outside the set's "
                        f"classes 0 to {IDX_CLASSES - 1}; the file is damaged: replace it with the original.")


def _unit_rows(images: np.ndarray) -> np.ndarray:
    """uint8 images (N, H, W) as float32 rows (N, H*W) scaled to [0, 1]."""
    rows = images.reshape(len(images), -1).astype(np.float32)
    rows /= 255.0
    return rows


def _download(name: str, root: Path) -> str:
    """Fetch with torchvision's own dataset class; returns the reason it failed, or ''."""
    from torchvision import datasets

    cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
    try:
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except Exception as exc:  # noqa: BLE001 - any network or disk failure means "not available"
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return ""


def _digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    # A fixed, class-interleaved split: the last fifth of the file is the test set.
    n_test = len(x) // 5
    return x[:-n_test], y[:-n_test], x[-n_test:], y[-n_test:]


def synthetic_arrays(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Ten noisy class prototypes of MNIST's shape: learnable in a few hundred steps."""
    rng = np.random.default_rng(seed)
    n_features = SYNTHETIC_SHAPE[0] * SYNTHETIC_SHAPE[1]
    n_classes = 10
    prototypes = rng.random((n_classes, n_features), dtype=np.float32) < 0.2
    splits = []
    for n in SYNTHETIC_SIZES:
        y = rng.integers(0, n_classes, size=n)
        noise = rng.random((n, n_features), dtype=np.float32)
        x = np.clip(prototypes[y] * 0.8 + noise * 0.6, 0.0, 1.0).astype(np.float32)
        splits += [x, y.astype(np.int64)]
    return splits[0], splits[1], splits[2], splits[3]
