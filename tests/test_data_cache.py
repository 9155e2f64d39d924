"""Dataset cache: hits, rebuilds on changed or damaged files, identical tensors, no cache when it cannot write;
background imports."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import engine.clustering
import engine.data
from engine import datacache
from engine.data import MNIST_MEAN, MNIST_STD, find_idx_files, load_dataset, read_idx
from engine.errors import DataError
from tests.conftest import MNIST_DIR, needs_mnist
from tests.test_data import STEMS, write_idx_set

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("CLUSTERLAB_CACHE", str(root))
    return root


@pytest.fixture
def decodes(monkeypatch) -> list[Path]:
    """Every IDX file decoded from now on: an empty list means the cache served the load."""
    seen: list[Path] = []

    def counting(path: Path) -> np.ndarray:
        seen.append(path)
        return read_idx(path)

    monkeypatch.setattr(engine.data, "read_idx", counting)
    return seen


def entries(cache: Path) -> list[Path]:
    return sorted(p for p in cache.iterdir()) if cache.is_dir() else []


def reference(folder: Path, name: str) -> dict[str, torch.Tensor]:
    """The splits as load_dataset computed them before the cache existed, written out independently."""
    files = find_idx_files(folder, "MNIST" if name == "mnist" else "FashionMNIST")
    raw = {key: read_idx(path) for key, path in files.items()}
    train_x = raw["train_x"].reshape(len(raw["train_x"]), -1).astype(np.float32) / 255.0
    test_x = raw["test_x"].reshape(len(raw["test_x"]), -1).astype(np.float32) / 255.0
    mean, std = (MNIST_MEAN, MNIST_STD) if name == "mnist" else (float(train_x.mean()), float(train_x.std()))
    return {"train_x": torch.as_tensor((train_x - mean) / std), "test_x": torch.as_tensor((test_x - mean) / std),
            "train_y": torch.as_tensor(raw["train_y"]).long(), "test_y": torch.as_tensor(raw["test_y"]).long()}


def assert_identical(data, expected: dict[str, torch.Tensor]) -> None:
    for split, tensor in expected.items():
        got = getattr(data, split)
        assert got.dtype == tensor.dtype and got.shape == tensor.shape, split
        assert torch.equal(got, tensor), f"{split} differs"


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_second_load_is_served_from_the_cache_with_identical_tensors(tmp_path, cache, decodes, name):
    folder = tmp_path / "data"
    write_idx_set(folder, gz=True)
    expected = reference(folder, name)
    first = load_dataset(name, str(folder), 0, CPU)
    assert len(decodes) == 4 and len(entries(cache)) == 1
    decodes.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's warning about tensors over non-writable arrays
        second = load_dataset(name, str(folder), 0, CPU)
    assert decodes == []
    assert_identical(first, expected)
    assert_identical(second, expected)
    assert second.n_classes == first.n_classes == 10 and second.source == first.source == str(folder)


def test_loaded_tensors_own_their_memory(tmp_path, cache):
    folder = tmp_path / "data"
    write_idx_set(folder, gz=False)
    load_dataset("mnist", str(folder), 0, CPU)
    data = load_dataset("mnist", str(folder), 0, CPU)
    before = data.train_x.clone()
    (entry,) = entries(cache)
    with open(entry / "train_x.npy", "r+b") as f:  # the file changing under a running session
        f.seek(-4 * 784, os.SEEK_END)
        f.write(np.full(784, 7.0, dtype=np.float32).tobytes())
    assert torch.equal(data.train_x, before)


def test_a_changed_source_file_rebuilds_the_cache(tmp_path, cache, decodes):
    folder = tmp_path / "data"
    arrays = write_idx_set(folder, gz=False)
    load_dataset("mnist", str(folder), 0, CPU)
    (old,) = entries(cache)
    labels = folder / STEMS["train_y"]
    header = labels.read_bytes()[:8]
    labels.write_bytes(header + ((arrays["train_y"] + 1) % 10).astype(np.uint8).tobytes())  # same size
    stat = labels.stat()
    os.utime(labels, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    decodes.clear()
    data = load_dataset("mnist", str(folder), 0, CPU)
    assert len(decodes) == 4
    assert data.train_y.tolist() == ((arrays["train_y"] + 1) % 10).tolist()
    (new,) = entries(cache)  # the stale entry is gone, not left to fill the disk
    assert new != old


def test_separate_folders_keep_separate_entries(tmp_path, cache, decodes):
    for sub in ("a", "b"):
        write_idx_set(tmp_path / sub, gz=True)
        load_dataset("mnist", str(tmp_path / sub), 0, CPU)
    assert len(entries(cache)) == 2
    decodes.clear()
    load_dataset("mnist", str(tmp_path / "a"), 0, CPU)
    assert decodes == []


@pytest.mark.parametrize("damage", ["truncate", "garbage", "delete", "wrong dtype"])
def test_a_damaged_cache_is_rebuilt_with_one_warning(tmp_path, cache, decodes, caplog, damage):
    folder = tmp_path / "data"
    write_idx_set(folder, gz=True)
    expected = reference(folder, "mnist")
    load_dataset("mnist", str(folder), 0, CPU)
    (entry,) = entries(cache)
    target = entry / "train_x.npy"
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:-100])
    elif damage == "garbage":
        target.write_bytes(b"not an npy file")
    elif damage == "delete":
        target.unlink()
    else:
        np.save(target, np.zeros((20, 784), dtype=np.float64))
    decodes.clear()
    with caplog.at_level(logging.WARNING, logger="clusterlab"):
        data = load_dataset("mnist", str(folder), 0, CPU)
    assert_identical(data, expected)
    warnings_logged = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings_logged) == 1 and "rebuilding" in warnings_logged[0].getMessage()
    assert "\n" not in warnings_logged[0].getMessage()
    assert len(decodes) == 4
    decodes.clear()
    assert_identical(load_dataset("mnist", str(folder), 0, CPU), expected)
    assert decodes == []  # rebuilt whole


def test_an_unwritable_cache_only_means_no_cache(tmp_path, monkeypatch, decodes, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("the cache folder cannot be created under a file")
    monkeypatch.setenv("CLUSTERLAB_CACHE", str(blocker / "cache"))
    folder = tmp_path / "data"
    write_idx_set(folder, gz=True)
    expected = reference(folder, "mnist")
    with caplog.at_level(logging.WARNING, logger="clusterlab"):
        for _ in range(2):
            assert_identical(load_dataset("mnist", str(folder), 0, CPU), expected)
    assert len(decodes) == 8 and caplog.records == []


@pytest.mark.parametrize("failure", [OSError("No space left on device"), KeyboardInterrupt()])
def test_an_interrupted_write_leaves_no_partial_entry(tmp_path, cache, monkeypatch, failure):
    folder = tmp_path / "data"
    write_idx_set(folder, gz=True)
    real_save = np.save
    written: list[str] = []

    def failing_save(path, array, **kwargs):
        if written:
            raise failure
        written.append(str(path))
        real_save(path, array, **kwargs)

    monkeypatch.setattr(datacache.np, "save", failing_save)
    if isinstance(failure, OSError):
        assert_identical(load_dataset("mnist", str(folder), 0, CPU), reference(folder, "mnist"))
    else:
        with pytest.raises(KeyboardInterrupt):
            load_dataset("mnist", str(folder), 0, CPU)
    assert written and entries(cache) == []  # not even the temporary folder


def test_a_missing_source_is_still_a_data_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_dataset("mnist", str(tmp_path / "nowhere"), 0, CPU)


@pytest.mark.parametrize("name", ["digits", "synthetic"])
def test_data_dir_is_refused_for_datasets_without_files(tmp_path, name):
    with pytest.raises(DataError, match="--data-dir") as info:
        load_dataset(name, str(tmp_path), 0, CPU)
    assert name in str(info.value) and "\n" not in str(info.value)


@needs_mnist
@pytest.mark.slow
def test_real_mnist_from_the_cache_is_bit_identical(cache, decodes):
    expected = reference(MNIST_DIR, "mnist")
    load_dataset("mnist", str(MNIST_DIR), 0, CPU)
    decodes.clear()
    data = load_dataset("mnist", str(MNIST_DIR), 0, CPU)
    assert decodes == []
    assert_identical(data, expected)
    assert data.n_train == 60000 and data.n_classes == 10
