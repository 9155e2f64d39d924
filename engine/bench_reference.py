"""What `clusterlab bench` measures the engine's step against: the reference study's loop, and the step's roofline.

The reference loop is the old style of training (torchvision's MNIST dataset + PIL transforms through a shuffled
DataLoader, nn.Sequential forward, autograd, torch.optim.SGD, the studied layer's gradient cloned into a list every
step), over the same images as the engine's Dataset. The roofline is the step's GEMMs alone, at the same sizes.
"""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine.config import Config
from engine.data import (
    IDX_FILES,
    MNIST_MEAN,
    MNIST_STD,
    default_data_dirs,
    find_idx_files,
    load_dataset,
    synthetic_arrays,
)
from engine.errors import ConfigError
from engine.model import build_mlp, studied_weight

REFERENCE_GRADS_KEPT = 1000  # the reference kept every gradient; past this many they are only counted
SEED = 42


# ------------------------------------------------------------------------------------------------------ data


def datasets(name: str, data_dir: str | None, device: torch.device, tmp: Path, notes: list[str]):
    """The engine's Dataset and the reference's torch Dataset over the same images, and the name used."""
    if name == "mnist":
        folders = [Path(data_dir)] if data_dir else default_data_dirs("mnist")
        found = next(((f, files) for f in folders if (files := find_idx_files(f, "MNIST"))), None)
        if found is None and data_dir:
            raise ConfigError(f"--data-dir {data_dir} holds no MNIST IDX files ({IDX_FILES['train_x']}[.gz] and "
                              "the other three); point it at a folder that has them, or leave it out.")
        if found is None:
            notes.append(f"MNIST not found in {', '.join(map(str, folders))}: both loops use synthetic data of "
                         "MNIST's shape (784 features, 10 classes) instead")
        else:
            folder, files = found
            data = load_dataset("mnist", str(folder), SEED, device)
            return data, _torchvision_mnist(files, tmp), "mnist"
    data = load_dataset("synthetic", None, SEED, device)
    train_x, train_y, _, _ = synthetic_arrays(SEED)
    images = np.rint(train_x.reshape(-1, 28, 28) * 255.0).astype(np.uint8)
    notes.append("synthetic images go through PIL + ToTensor + Normalize in the reference, like torchvision's MNIST")
    return data, _PILImages(images, train_y), "synthetic"


def _torchvision_mnist(files: dict[str, Path], tmp: Path):
    """torchvision's own MNIST class over a temporary root holding uncompressed copies of the IDX files."""
    from torchvision import datasets, transforms

    raw = tmp / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for key, stem in IDX_FILES.items():
        source = files[key]
        if source.suffix == ".gz":
            with gzip.open(source, "rb") as f_in, open(raw / stem, "wb") as f_out:
                shutil.copyfileobj(f_in, f_out)
        else:
            shutil.copyfile(source, raw / stem)
    return datasets.MNIST(str(tmp), train=True, download=False, transform=_reference_transform(transforms))


def _reference_transform(transforms):
    return transforms.Compose([transforms.ToTensor(), transforms.Normalize((MNIST_MEAN,), (MNIST_STD,))])


class _PILImages(torch.utils.data.Dataset):
    """uint8 images served as torchvision's MNIST serves them: a PIL image per sample, then the transforms."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        from torchvision import transforms

        self.images, self.labels = images, labels
        self.transform = _reference_transform(transforms)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i], mode="L")), int(self.labels[i])


# ----------------------------------------------------------------------------------------------- reference


class ReferenceLoop:
    """The reference study's loop: DataLoader batches, module forward, autograd, SGD, gradient clones kept."""

    def __init__(self, dataset, config: Config, n_classes: int, device: torch.device) -> None:
        self.device = device
        self.model = build_mlp(784, config.hidden, n_classes, config.seed).to(device)
        self.weight = studied_weight(self.model, config.studied_layer)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=config.lr)
        generator = torch.Generator().manual_seed(config.seed)
        self.loader = torch.utils.data.DataLoader(dataset, batch_size=config.batch_size, shuffle=True,
                                                  generator=generator)
        self.batches = iter(self.loader)
        self.grads: list[torch.Tensor] = []
        self.grads_seen = 0
        self.running_loss = 0.0

    def run(self, steps: int) -> None:
        for _ in range(steps):
            try:
                x, y = next(self.batches)
            except StopIteration:
                self.batches = iter(self.loader)
                x, y = next(self.batches)
            x, y = x.to(self.device).view(x.size(0), -1), y.to(self.device)
            self.optimizer.zero_grad()
            loss = F.cross_entropy(self.model(x), y)
            loss.backward()
            self.grads_seen += 1
            if len(self.grads) < REFERENCE_GRADS_KEPT:
                self.grads.append(self.weight.grad.clone())
            self.optimizer.step()
            self.running_loss += loss.item()


class Roofline:
    """The step's GEMMs alone, at the engine's batch and widths: per layer the forward product, the input gradient
    (all but the first layer) and the weight update fused into its gradient's GEMM (addmm_), into preallocated
    outputs. What the engine's step spends beyond this is gathering the batch, elementwise work and dispatch."""

    def __init__(self, config: Config, data, device: torch.device) -> None:
        widths = (data.n_features, *config.hidden, data.n_classes)
        generator = torch.Generator().manual_seed(SEED)

        def rand(*shape: int) -> torch.Tensor:
            return (torch.randn(*shape, generator=generator) * 0.1).to(device)

        b = config.batch_size
        self.lr = config.lr
        self.weights = [rand(n_out, n_in) for n_in, n_out in zip(widths[:-1], widths[1:], strict=True)]
        self.acts = [rand(b, n_in) for n_in in widths[:-1]]  # each layer's input
        self.grads = [rand(b, n_out) for n_out in widths[1:]]  # each layer's output gradient
        self.outs = [torch.empty(b, n_out, device=device) for n_out in widths[1:]]
        self.ins = [torch.empty(b, n_in, device=device) for n_in in widths[:-1]]

    def run(self, steps: int, sync: Callable[[], None]) -> None:
        layers = list(zip(self.weights, self.acts, self.grads, self.outs, self.ins, strict=True))
        for _ in range(steps):
            for w, a, _, out, _ in layers:
                torch.mm(a, w.t(), out=out)
            for i, (w, a, d, _, d_in) in reversed(list(enumerate(layers))):
                if i:
                    torch.mm(d, w, out=d_in)
                w.addmm_(d.t(), a, alpha=-self.lr)
        sync()
