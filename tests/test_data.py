"""Datasets: IDX files in every supported layout, clear errors for truncated or missing files."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.data import find_idx_files, load_dataset, read_idx
from engine.errors import DataError

STEMS = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """The dataset cache in tmp_path: these throwaway IDX sets must not land in the user's ~/.cache."""
    monkeypatch.setenv("CLUSTERLAB_CACHE", str(tmp_path / "cache"))


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_set(folder: Path, gz: bool, n_train: int = 20, n_test: int = 10) -> dict[str, np.ndarray]:
    """Four small MNIST-shaped IDX files (labels 0-9) in `folder`; returns the arrays written."""
    rng = np.random.default_rng(0)
    arrays = {
        "train_x": rng.integers(0, 256, (n_train, 28, 28)),
        "train_y": np.arange(n_train) % 10,
        "test_x": rng.integers(0, 256, (n_test, 28, 28)),
        "test_y": np.arange(n_test) % 10,
    }
    folder.mkdir(parents=True, exist_ok=True)
    for key, stem in STEMS.items():
        data = idx_bytes(arrays[key])
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("torchvision_layout", [False, True])
def test_find_and_load_idx_layouts(tmp_path, gz, torchvision_layout):
    root = tmp_path / "data"
    folder = root / "MNIST" / "raw" if torchvision_layout else root
    arrays = write_idx_set(folder, gz)
    found = find_idx_files(root, "MNIST")
    assert found is not None
    assert set(found) == set(STEMS)
    assert all(path.parent == folder for path in found.values())
    assert all(path.name.endswith(".gz") == gz for path in found.values())
    np.testing.assert_array_equal(read_idx(found["train_x"]), arrays["train_x"])
    data = load_dataset("mnist", str(root), 0, CPU)
    assert data.train_x.shape == (20, 784) and data.test_x.shape == (10, 784)
    assert data.train_x.dtype == torch.float32 and data.train_y.dtype == torch.int64
    assert data.n_classes == 10
    assert data.train_y.tolist() == arrays["train_y"].tolist()


def test_incomplete_folder_is_not_found(tmp_path):
    write_idx_set(tmp_path, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    assert find_idx_files(tmp_path, "MNIST") is None


@pytest.mark.parametrize("gz", [True, False])
def test_truncated_idx_is_a_data_error(tmp_path, gz):
    write_idx_set(tmp_path, gz=False)
    path = tmp_path / STEMS["train_x"]
    data = path.read_bytes()[:-100]
    if gz:
        path.unlink()
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    with pytest.raises(DataError, match="truncated"):
        read_idx(path)
    with pytest.raises(DataError, match=path.name):
        load_dataset("mnist", str(tmp_path), 0, CPU)


def test_broken_gzip_is_a_data_error(tmp_path):
    write_idx_set(tmp_path, gz=True)
    path = tmp_path / f"{STEMS['train_x']}.gz"
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(DataError, match=path.name):
        read_idx(path)


def test_not_an_idx_file(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(b"hello, world")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(path)


def test_missing_data_dir_names_the_remedies(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset("mnist", str(tmp_path / "nowhere"), 0, CPU)
    message = str(info.value)
    assert "--data-dir" in message and "digits" in message and "nowhere" in message
    assert "\n" not in message


def test_synthetic_is_seeded_and_mnist_shaped():
    a = load_dataset("synthetic", None, 7, CPU)
    b = load_dataset("synthetic", None, 7, CPU)
    c = load_dataset("synthetic", None, 8, CPU)
    assert a.train_x.shape == (4096, 784) and a.test_x.shape == (1024, 784)
    assert a.n_classes == 10
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.train_y, b.train_y)
    assert not torch.equal(a.train_x, c.train_x)


def test_digits_loads_offline():
    data = load_dataset("digits", None, 0, CPU)
    assert data.n_features == 64 and data.n_classes == 10
    assert data.n_train + data.test_x.shape[0] == 1797
    assert torch.isfinite(data.train_x).all()


@pytest.mark.parametrize("label, expected", [(200, "label 200 at index 3"), (10, "label 10 at index 3")])
def test_a_label_outside_the_classes_is_refused_not_a_wider_network(tmp_path, label, expected):
    # One damaged byte used to give an (label + 1)-output network and exit 0.
    write_idx_set(tmp_path, gz=False)
    path = tmp_path / STEMS["train_y"]
    data = bytearray(path.read_bytes())
    data[8 + 3] = label  # header: magic (4 bytes) and one dimension (4 bytes)
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=f"{expected}, outside the set's classes 0 to 9"):
        load_dataset("mnist", str(tmp_path), 0, CPU)


def test_label_and_image_counts_must_agree(tmp_path):
    write_idx_set(tmp_path, gz=False)
    (tmp_path / STEMS["test_y"]).write_bytes(idx_bytes(np.arange(9) % 10))
    with pytest.raises(DataError, match="holds 9 labels for 10 images"):
        load_dataset("mnist", str(tmp_path), 0, CPU)
