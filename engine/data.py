"""Datasets held whole as normalised float tensors on the compute device."""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.errors import DataError

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


def load_dataset(name: str, data_dir: str | None, seed: int, device: torch.device) -> Dataset:
    """Load a dataset by name onto `device`; raises DataError with one clear sentence on failure."""
    if name in _IDX_SETS:
        arrays, source = _load_idx_set(name, data_dir)
        train_x, train_y, test_x, test_y = arrays
        train_x = train_x.reshape(len(train_x), -1).astype(np.float32) / 255.0
        test_x = test_x.reshape(len(test_x), -1).astype(np.float32) / 255.0
        if name == "mnist":
            mean, std = MNIST_MEAN, MNIST_STD
        else:
            mean, std = float(train_x.mean()), float(train_x.std())
    elif name == "digits":
        train_x, train_y, test_x, test_y = _digits()
        mean, std = float(train_x.mean()), float(train_x.std())
        source = "scikit-learn digits"
    elif name == "synthetic":
        train_x, train_y, test_x, test_y = synthetic_arrays(seed)
        mean, std = float(train_x.mean()), float(train_x.std())
        source = f"synthetic (seed {seed})"
    else:
        raise DataError(f"Unknown dataset {name!r}.")

    def put(x: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(x)).to(device=device, dtype=dtype)

    return Dataset(
        name=name,
        train_x=put((train_x - mean) / std, torch.float32),
        train_y=put(train_y, torch.int64),
        test_x=put((test_x - mean) / std, torch.float32),
        test_y=put(test_y, torch.int64),
        n_classes=int(max(train_y.max(), test_y.max())) + 1,
        source=source,
    )


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


def _load_idx_set(name: str, data_dir: str | None) -> tuple[list[np.ndarray], str]:
    tv_name = _IDX_SETS[name]
    folders = [Path(data_dir)] if data_dir else default_data_dirs(name)
    why = ""
    if data_dir is None and not any(find_idx_files(f, tv_name) for f in folders):
        why = _download(name, DOWNLOAD_ROOT)
        why = f" and downloading failed ({why})" if why else ""
    for folder in folders:
        files = find_idx_files(folder, tv_name)
        if files:
            return [read_idx(files[key]) for key in IDX_FILES], str(folder)
    looked = ", ".join(str(f) for f in folders)
    raise DataError(
        f"{name} not found: looked for the four IDX files ({IDX_FILES['train_x']}[.gz] and the others) in "
        f"{looked}{why}; pass --data-dir with a folder holding them, or use --dataset digits offline."
    )


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
