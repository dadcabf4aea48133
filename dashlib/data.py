"""Datasets as in-memory tensors: images in [-1, 1], (N, C, H, W) float32, labels (N,) int64.

Every dataset has a `train` split and a held-out `test` split (digits and
synthetic: a fixed, seeded, class-stratified split). Calibration diagnostics
and classifier checks use `test`; FID reference statistics use `train`, as
the paper does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dashlib.config import DataConfig
from dashlib.registry import Registry


class DataNotFoundError(FileNotFoundError):
    """A dataset's files are missing; the message says where and how to get them."""


@dataclass(frozen=True)
class Split:
    x: Tensor  # (N, C, H, W) float32 in [-1, 1]
    y: Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Dataset:
    name: str
    train: Split
    test: Split
    num_classes: int
    class_names: tuple[str, ...]

    @property
    def channels(self) -> int:
        return int(self.train.x.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train.x.shape[-1])


Loader = Callable[[DataConfig], Dataset]
DATASETS: Registry[Loader] = Registry("dataset")


def load_dataset(config: DataConfig) -> Dataset:
    """Load (from disk or memory) the dataset a config names, resized to its image_size."""
    return DATASETS.get(config.name)(config)


def _to_unit_range(images: np.ndarray | Tensor, max_value: float) -> Tensor:
    x = torch.as_tensor(np.asarray(images), dtype=torch.float32)
    return x / max_value * 2 - 1


def _resize(x: Tensor, size: int) -> Tensor:
    if x.shape[-1] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False).clamp(-1, 1)


def stratified_split(x: Tensor, y: Tensor, fraction: float, seed: int) -> tuple[Split, Split]:
    """A seeded per-class split: `fraction` of every class is held out."""
    g = torch.Generator().manual_seed(seed)
    train_idx, test_idx = [], []
    for c in y.unique().tolist():
        idx = (y == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = max(1, round(fraction * len(idx)))
        test_idx.append(idx[:k])
        train_idx.append(idx[k:])
    tr, te = torch.cat(train_idx).sort().values, torch.cat(test_idx).sort().values
    return Split(x[tr], y[tr]), Split(x[te], y[te])


@DATASETS.register("digits")
def load_digits(config: DataConfig) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1,797 images, 10 classes); no download."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = _resize(_to_unit_range(bunch.images[:, None], 16.0), config.image_size)
    y = torch.as_tensor(bunch.target, dtype=torch.long)
    train, test = stratified_split(x, y, config.holdout_fraction, config.split_seed)
    return Dataset("digits", train, test, 10, tuple(str(i) for i in range(10)))


@DATASETS.register("synthetic")
def load_synthetic(config: DataConfig) -> Dataset:
    """Class-structured random images for tests: a smooth per-class prototype plus noise.

    4 classes, 1 channel; `synthetic_size` images in all. Fully determined by
    `split_seed`.
    """
    g = torch.Generator().manual_seed(config.split_seed)
    k, s = 4, config.image_size
    coarse = torch.rand(k, 1, 4, 4, generator=g) * 2 - 1
    prototypes = F.interpolate(coarse, size=(s, s), mode="bilinear", align_corners=False)
    y = torch.arange(config.synthetic_size) % k
    noise = 0.15 * torch.randn(config.synthetic_size, 1, s, s, generator=g)
    x = (prototypes[y] + noise).clamp(-1, 1)
    train, test = stratified_split(x, y, config.holdout_fraction, config.split_seed)
    return Dataset("synthetic", train, test, k, tuple(f"class{i}" for i in range(k)))


@dataclass(frozen=True)
class TorchvisionSource:
    """How to find one torchvision dataset on disk and explain its absence."""

    cls_name: str
    folder: str
    url: str
    num_classes: int
    max_value: float = 255.0


_SOURCES = {
    "cifar10": TorchvisionSource("CIFAR10", "cifar-10-batches-py",
                                 "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", 10),
    "cifar100": TorchvisionSource("CIFAR100", "cifar-100-python",
                                  "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", 100),
    "mnist": TorchvisionSource("MNIST", "MNIST/raw",
                               "https://ossci-datasets.s3.amazonaws.com/mnist/", 10),
    "fashion-mnist": TorchvisionSource("FashionMNIST", "FashionMNIST/raw",
                                       "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                                       10),
}


def _open_torchvision(name: str, config: DataConfig, train: bool) -> object:
    import torchvision.datasets as tvd

    src = _SOURCES[name]
    root = Path(config.data_root).expanduser()
    try:
        return getattr(tvd, src.cls_name)(root=str(root), train=train, download=config.download)
    except (RuntimeError, OSError) as err:
        how = ("it could not be downloaded (no internet?)" if config.download
               else "downloading is off")
        raise DataNotFoundError(
            f"{name} was not found under {root / src.folder} and {how}. Either allow the "
            f"download with --set data.download=true (DataConfig.download) on a machine with "
            f"internet access, or fetch {src.url} yourself, extract it into a folder DIR and pass "
            f"--set data.data_root=DIR (`dash evaluate`: --data-root DIR). "
            f"[{type(err).__name__}: {err}]"
        ) from None


def _torchvision_split(name: str, config: DataConfig, train: bool) -> tuple[Split, tuple[str, ...]]:
    """One split and the class names."""
    ds = _open_torchvision(name, config, train)
    data = np.asarray(ds.data)  # type: ignore[attr-defined]
    if data.ndim == 3:  # MNIST-like: (N, H, W)
        data = data[:, None]
    else:  # CIFAR: (N, H, W, C)
        data = data.transpose(0, 3, 1, 2)
    x = _resize(_to_unit_range(data, _SOURCES[name].max_value), config.image_size)
    y = torch.as_tensor(np.asarray(ds.targets), dtype=torch.long)  # type: ignore[attr-defined]
    classes = tuple(getattr(ds, "classes", [str(i) for i in range(_SOURCES[name].num_classes)]))
    return Split(x, y), classes


def _torchvision_loader(name: str) -> Loader:
    def load(config: DataConfig) -> Dataset:
        train, classes = _torchvision_split(name, config, train=True)
        test, _ = _torchvision_split(name, config, train=False)
        return Dataset(name, train, test, _SOURCES[name].num_classes, classes)

    load.__doc__ = f"torchvision's {_SOURCES[name].cls_name}: `data_root`, optional `download`."
    return load


for _name in _SOURCES:
    DATASETS.add(_name, _torchvision_loader(_name))


def to_uint8(x: Tensor) -> Tensor:
    """Images in [-1, 1] (N, C, H, W) -> uint8 in [0, 255]."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def batch_indices(n: int, batch_size: int, generator: torch.Generator) -> Tensor:
    """A batch of row indices (B,) drawn uniformly with replacement."""
    return torch.randint(0, n, (batch_size,), generator=generator)
