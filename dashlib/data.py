"""Datasets as in-memory tensors: images in [-1, 1], (N, C, H, W) float32, labels (N,) int64.

Every dataset has a `train` split and a held-out `test` split (digits and
synthetic: a fixed, seeded, class-stratified split). Calibration diagnostics
and classifier checks use `test`; FID reference statistics use `train`, as
the paper does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dashlib.config import DataConfig, from_dict, one_of
from dashlib.imagefolder import (
    FolderImages,
    folder_channels,
    folder_classes,
    folder_classes_of,
    folder_fingerprint,
    read_split,
    split_folders,
    split_minimum,
)
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


@dataclass(frozen=True)
class DatasetInfo:
    """What the models must match, known without loading the images."""

    num_classes: int
    channels: int


@dataclass(frozen=True)
class DatasetSource:
    """A registered dataset: `load` reads it; `info` is cheap (class and channel counts)."""

    load: Loader
    info: Callable[[DataConfig], DatasetInfo]
    #: a hash of the files, for sources whose content the config does not fix (None: it does)
    fingerprint: Callable[[DataConfig], str] | None = None
    #: whether it reads files under `DataConfig.data_root` (False: built in, or generated)
    reads_files: bool = True
    #: whether it is a user's own folder of images at `data_root`: its size and classes are
    #: known only by reading it, and its figures are named after the folder
    user_folder: bool = False
    #: the class names in label order without loading the images (None: `load` them)
    names: Callable[[DataConfig], tuple[str, ...]] | None = None


def is_user_folder(name: object) -> bool:
    """Whether dataset `name` is a registered source of a user's own image folder (False
    for other and unknown names: those are refused where the config is checked)."""
    return isinstance(name, str) and name in DATASETS and DATASETS.get(name).user_folder


DATASETS: Registry[DatasetSource] = Registry("dataset")


def class_names(config: DataConfig) -> tuple[str, ...]:
    """The dataset's class names in label order, by its source's cheap `names` where it has one
    (an image folder's listing: label i is the i-th folder name in sorted order; CIFAR's meta
    file), else from loading it."""
    names = source(config).names
    return names(config) if names is not None else load_dataset(config).class_names


def source(config: DataConfig) -> DatasetSource:
    """The registered source of `config.name`; an unknown name is a `ConfigError`
    naming `DataConfig.name` and the choices."""
    one_of(config, "name", DATASETS.names())
    return DATASETS.get(config.name)


def load_dataset(config: DataConfig) -> Dataset:
    """Load (from disk or memory) the dataset a config names, resized to its image_size
    and converted to `config.channels` (when not 0)."""
    data = source(config).load(config)
    if config.channels and config.channels != data.channels:
        data = Dataset(data.name, _convert(data.train, config.channels),
                       _convert(data.test, config.channels), data.num_classes, data.class_names)
    return data


def dataset_info(config: DataConfig) -> DatasetInfo:
    """Class and channel count of the dataset a config names (after `config.channels`)."""
    info = source(config).info(config)
    return DatasetInfo(info.num_classes, config.channels or info.channels)


def _convert(split: Split, channels: int) -> Split:
    """Grey -> RGB (repeat) or RGB -> grey (ITU-R 601 luma)."""
    if channels == 3:
        return Split(split.x.expand(-1, 3, -1, -1).contiguous(), split.y)
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return Split((split.x * luma).sum(1, keepdim=True), split.y)


def _fixed(num_classes: int, channels: int) -> Callable[[DataConfig], DatasetInfo]:
    return lambda config: DatasetInfo(num_classes, channels)


def _to_unit_range(images: np.ndarray | Tensor, max_value: float) -> Tensor:
    x = torch.as_tensor(np.asarray(images), dtype=torch.float32)
    return x / max_value * 2 - 1


def _resize(x: Tensor, size: int) -> Tensor:
    if x.shape[-1] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False).clamp(-1, 1)


def stratified_split(x: Tensor, y: Tensor, fraction: float, seed: int) -> tuple[Split, Split]:
    """A seeded per-class split: `fraction` of every class is held out, at least one image
    and never all of them (a class of 2 keeps one to train on whatever the fraction)."""
    g = torch.Generator().manual_seed(seed)
    train_idx, test_idx = [], []
    for c in y.unique().tolist():
        idx = (y == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = min(max(1, round(fraction * len(idx))), len(idx) - 1)
        test_idx.append(idx[:k])
        train_idx.append(idx[k:])
    tr, te = torch.cat(train_idx).sort().values, torch.cat(test_idx).sort().values
    return Split(x[tr], y[tr]), Split(x[te], y[te])


def load_digits(config: DataConfig) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1,797 images, 10 classes); no download."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = _resize(_to_unit_range(bunch.images[:, None], 16.0), config.image_size)
    y = torch.as_tensor(bunch.target, dtype=torch.long)
    train, test = stratified_split(x, y, config.holdout_fraction, config.split_seed)
    return Dataset("digits", train, test, 10, tuple(str(i) for i in range(10)))


DATASETS.add("digits", DatasetSource(load_digits, _fixed(10, 1), reads_files=False,
                                     names=lambda config: tuple(str(i) for i in range(10))))


def load_synthetic(config: DataConfig) -> Dataset:
    """Class-structured random images for tests: a smooth per-class prototype plus noise.

    `synthetic_classes` classes (4 by default), 1 channel; `synthetic_size`
    images in all. Fully determined by `split_seed`.
    """
    g = torch.Generator().manual_seed(config.split_seed)
    k, s = config.synthetic_classes, config.image_size
    coarse = torch.rand(k, 1, 4, 4, generator=g) * 2 - 1
    prototypes = F.interpolate(coarse, size=(s, s), mode="bilinear", align_corners=False)
    y = torch.arange(config.synthetic_size) % k
    noise = 0.15 * torch.randn(config.synthetic_size, 1, s, s, generator=g)
    x = (prototypes[y] + noise).clamp(-1, 1)
    train, test = stratified_split(x, y, config.holdout_fraction, config.split_seed)
    return Dataset("synthetic", train, test, k, tuple(f"class{i}" for i in range(k)))


DATASETS.add("synthetic", DatasetSource(
    load_synthetic, lambda config: DatasetInfo(config.synthetic_classes, 1), reads_files=False,
    names=lambda config: tuple(f"class{i}" for i in range(config.synthetic_classes))))


@dataclass(frozen=True)
class TorchvisionSource:
    """How to find one torchvision dataset on disk and explain its absence."""

    cls_name: str
    folder: str
    url: str
    num_classes: int
    channels: int
    max_value: float = 255.0
    #: what to fetch from `url` by hand, where none of torchvision's download is allowed
    files: tuple[str, ...] = ()

    def fetch(self) -> str:
        """How to put the files in place by hand, under a data root DIR."""
        if not self.files:
            return f"fetch {self.url} yourself, extract it into a folder DIR (giving DIR/{self.folder}/)"
        return (f"fetch {', '.join(self.files)} from {self.url} yourself and gunzip them into "
                f"DIR/{self.folder}/")


_MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                "t10k-labels-idx1-ubyte.gz")
_SOURCES = {
    "cifar10": TorchvisionSource("CIFAR10", "cifar-10-batches-py",
                                 "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", 10, 3),
    "cifar100": TorchvisionSource("CIFAR100", "cifar-100-python",
                                  "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", 100, 3),
    "mnist": TorchvisionSource("MNIST", "MNIST/raw",
                               "https://ossci-datasets.s3.amazonaws.com/mnist/", 10, 1, files=_MNIST_FILES),
    "fashion-mnist": TorchvisionSource("FashionMNIST", "FashionMNIST/raw",
                                       "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                                       10, 1, files=_MNIST_FILES),
}


def _open_torchvision(name: str, config: DataConfig, train: bool) -> object:
    import torchvision.datasets as tvd

    src = _SOURCES[name]
    root = Path(config.data_root).expanduser().resolve()
    try:
        return getattr(tvd, src.cls_name)(root=str(root), train=train, download=config.download)
    except (RuntimeError, OSError) as err:
        how = ("it could not be downloaded (no internet?)" if config.download
               else "downloading is off")
        raise DataNotFoundError(
            f"{name} was not found under {root / src.folder} and {how}. Either allow the "
            f"download with --download (--set data.download=true) on a machine with "
            f"internet access, or {src.fetch()} and pass "
            f"--data-root DIR (the same as --set data.data_root=DIR). "
            f"[{type(err).__name__}: {err}]"
        ) from None


def _cifar_root(name: str, config: DataConfig) -> Path:
    """The CIFAR root, its archive downloaded first where it is missing and allowed (else the
    error that says how to get it); dash reads the files itself (`dashlib.cifar`)."""
    root = Path(config.data_root).expanduser().resolve()
    if not (root / _SOURCES[name].folder).is_dir():
        _open_torchvision(name, config, train=True)
    return root


def _cifar_split(name: str, config: DataConfig, train: bool) -> tuple[Split, tuple[str, ...]]:
    """One CIFAR split, read by `dashlib.cifar` (safe unpickling, any copy in the published
    layout); torchvision only downloads it, when `download` is on and the folder is missing."""
    from dashlib import cifar

    root = _cifar_root(name, config)
    try:
        images, labels = cifar.read_split(root, name, train)
    except cifar.CifarFormatError as err:
        raise DataNotFoundError(f"{name} under {root} is incomplete or damaged: {err}. Fetch "
                                f"{_SOURCES[name].url} again and extract it into {root}") from None
    x = _resize(_to_unit_range(images, 255.0), config.image_size)
    return Split(x, torch.as_tensor(labels)), _cifar_names(name)(config)


def _cifar_names(name: str) -> Callable[[DataConfig], tuple[str, ...]]:
    """CIFAR's class names from its meta file alone (numbers where it has none)."""
    def names(config: DataConfig) -> tuple[str, ...]:
        from dashlib import cifar

        return cifar.class_names(_cifar_root(name, config), name, _SOURCES[name].num_classes)

    return names


def _torchvision_split(name: str, config: DataConfig, train: bool) -> tuple[Split, tuple[str, ...]]:
    """One split and the class names."""
    if name.startswith("cifar"):
        return _cifar_split(name, config, train)
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


def _cifar_fingerprint(name: str) -> Callable[[DataConfig], str]:
    def fingerprint(config: DataConfig) -> str:
        from dashlib import cifar

        root = _cifar_root(name, config)
        try:
            return cifar.fingerprint(root, name)
        except cifar.CifarFormatError as err:
            raise DataNotFoundError(f"{name} under {root} is incomplete: {err}. Fetch "
                                    f"{_SOURCES[name].url} again and extract it into {root}") from None

    return fingerprint


for _name in _SOURCES:
    _cifar = _name.startswith("cifar")
    DATASETS.add(_name, DatasetSource(_torchvision_loader(_name),
                                      _fixed(_SOURCES[_name].num_classes, _SOURCES[_name].channels),
                                      _cifar_fingerprint(_name) if _cifar else None,
                                      names=_cifar_names(_name) if _cifar else None))


def _imagefolder_split(images: FolderImages) -> Split:
    return Split(_to_unit_range(images.x, 255.0), images.y)


def load_imagefolder(config: DataConfig) -> Dataset:
    """Your own images under `data_root`, one sub-folder per class (`dashlib.imagefolder`)."""
    from dashlib.io import runs_root

    train_dir, test_dir = split_folders(config.data_root)
    minimum = split_minimum(test_dir)
    if test_dir is not None:  # from the listings, before any image is decoded
        _same_classes(test_dir, folder_classes_of(test_dir, minimum), train_dir,
                      folder_classes_of(train_dir, minimum))
    channels = config.channels or folder_channels(config.data_root)
    cache = runs_root() / "data-cache"
    content = folder_fingerprint(config.data_root)  # computed once per process for the run's id anyway
    train = read_split(train_dir, config.image_size, channels, cache, content=content, minimum=minimum)
    if test_dir is None:
        train_split, test_split = stratified_split(_imagefolder_split(train).x, train.y,
                                                   config.holdout_fraction, config.split_seed)
    else:
        test = read_split(test_dir, config.image_size, channels, cache, content=content, minimum=minimum)
        train_split, test_split = _imagefolder_split(train), _imagefolder_split(test)
    return Dataset("imagefolder", train_split, test_split, len(train.classes), train.classes)


def _imagefolder_info(config: DataConfig) -> DatasetInfo:
    """Class and channel counts from the listings (no image decoded); a test folder naming
    other classes than the train folder is refused here, before anything trains."""
    classes = folder_classes(config.data_root)
    train_dir, test_dir = split_folders(config.data_root)
    if test_dir is not None:
        _same_classes(test_dir, folder_classes_of(test_dir, split_minimum(test_dir)), train_dir, classes)
    return DatasetInfo(len(classes), config.channels or folder_channels(config.data_root))


def _same_classes(test_dir: Path, test: tuple[str, ...], train_dir: Path, train: tuple[str, ...]) -> None:
    """The two splits must name the same class folders (a label is a folder's place in the
    sorted names, so one class more or less shifts every label after it)."""
    if test == train:
        return
    only_train = [c for c in train if c not in test]
    only_test = [c for c in test if c not in train]
    lower = {c.lower() for c in only_train} & {c.lower() for c in only_test}
    what = [f"{train_dir.name}/ only: {only_train}"] * bool(only_train) + \
        [f"{test_dir.name}/ only: {only_test}"] * bool(only_test)
    raise DataNotFoundError(
        f"{test_dir} and {train_dir} name different classes ({'; '.join(what)}"
        + (f"; {sorted(lower)} differ in case only, and names are case-sensitive" if lower else "")
        + "): give both the same class folders (add the missing ones with their images, or move "
          "the extra ones out), since a label is a class folder's place among the sorted names")


DATASETS.add("imagefolder", DatasetSource(load_imagefolder, _imagefolder_info,
                                          lambda config: folder_fingerprint(config.data_root),
                                          user_folder=True,
                                          names=lambda config: folder_classes(config.data_root)))

#: DataConfig fields that say where the data is, not what it is: never part of an identity.
LOCATION_FIELDS = ("data_root", "download")


def data_identity(fields: Mapping[str, Any]) -> dict[str, Any]:
    """What a dataset is, for run folders and caches: its config fields (a `DataConfig` as a
    dict) without where it lives, plus `"files"`, the source's fingerprint of its content,
    for sources whose content the config does not fix (an image folder). So a run is found
    again when its data moves, and two folders of the same shape never share one."""
    out = {k: v for k, v in fields.items() if k not in LOCATION_FIELDS}
    name = fields.get("name")
    entry = DATASETS.get(name) if isinstance(name, str) and name in DATASETS else None
    if entry is not None and entry.fingerprint is not None and fields.get("data_root"):
        out["files"] = entry.fingerprint(from_dict(DataConfig, dict(fields)))
    return out


def to_uint8(x: Tensor) -> Tensor:
    """Images in [-1, 1] (N, C, H, W) -> uint8 in [0, 255]."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def balanced_subset(y: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """Sorted indices of n rows of labels `y` (N,), as even over the classes as their
    sizes allow: a seeded permutation per class, then round-robin over the classes."""
    order = torch.randperm(len(y), generator=generator)
    shuffled = y[order]
    rank = torch.empty_like(order)
    for c in shuffled.unique():
        mask = shuffled == c
        rank[mask] = torch.arange(int(mask.sum()))
    keys = rank * (int(y.max()) + 1) + shuffled  # rank first, then class
    return order[keys.argsort()[:n]].sort().values


def batch_indices(n: int, batch_size: int, generator: torch.Generator) -> Tensor:
    """A batch of row indices (B,) drawn uniformly with replacement."""
    return torch.randint(0, n, (batch_size,), generator=generator)
