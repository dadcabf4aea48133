"""CIFAR-10/100 from the "python version" archives, read without running their pickles' code.

The archives (`cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta`;
`cifar-100-python/train, test, meta`) are Python pickles of dicts holding a
uint8 `data` array (N, 3072) and a list of labels. torchvision unpickles them
with the full unpickler and checks each file's MD5, so a re-packed or partial
copy is refused as "corrupted". dash reads them with an unpickler that admits
only what such files contain (numpy arrays, lists, dicts, bytes), so a
tampered file cannot run code, and needs no MD5 match: any root in the
published layout works (the tests build one with random images).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dashlib.io import files_fingerprint

#: (module, name) pairs a CIFAR batch's pickle may reference; everything else is refused.
ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
           ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


@dataclass(frozen=True)
class Layout:
    folder: str
    train: tuple[str, ...]
    test: str
    meta: str
    label_key: str
    names_key: str
    num_classes: int


LAYOUTS = {
    "cifar10": Layout("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch",
                      "batches.meta", "labels", "label_names", 10),
    "cifar100": Layout("cifar-100-python", ("train",), "test", "meta", "fine_labels", "fine_label_names",
                       100),
}


class CifarFormatError(FileNotFoundError):
    """A CIFAR file is missing or not a CIFAR batch."""


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR batch")
        return super().find_class(module, name)


def read_pickle(path: Path) -> dict[str, object]:
    """One CIFAR pickle as a dict with str keys (the files are Python 2 pickles: latin1)."""
    if not path.is_file():
        raise CifarFormatError(f"{path} is missing")
    try:
        with open(path, "rb") as f:
            obj = _BatchUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise CifarFormatError(f"{path} is not a CIFAR batch ({type(err).__name__}: {err})") from None
    if not isinstance(obj, dict):
        raise CifarFormatError(f"{path} is not a CIFAR batch (a {type(obj).__name__}, not a dict)")
    return {k.decode() if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _images_labels(batch: dict[str, object], layout: Layout, path: Path) -> tuple[np.ndarray, np.ndarray]:
    label_key, k = layout.label_key, layout.num_classes
    try:
        data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[label_key], dtype=np.int64).reshape(-1)
    except (KeyError, ValueError, TypeError) as err:
        raise CifarFormatError(f"{path} lacks CIFAR's 'data' (N, 3072) uint8 array or its "
                               f"'{label_key}' list ({type(err).__name__}: {err})") from None
    if len(labels) != len(data):
        raise CifarFormatError(f"{path}: {len(data)} images but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= k):
        raise CifarFormatError(f"{path}: labels run from {labels.min()} to {labels.max()}, outside "
                               f"the {k} classes 0-{k - 1}")
    return data, labels


def read_split(root: Path, name: str, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, 3, 32, 32) and int64 labels (N,) of one split."""
    layout = LAYOUTS[name]
    files = layout.train if train else (layout.test,)
    parts = [_images_labels(read_pickle(root / layout.folder / f), layout, root / layout.folder / f)
             for f in files]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def fingerprint(root: Path, name: str) -> str:
    """A hash of the batch files' names, sizes and the bytes at both ends of each (as an
    image folder's, `dashlib.imagefolder.folder_fingerprint`): any copy in the published
    layout is read, so a re-packed or relabelled one (or `write_cifar_root`'s noise) must
    not share runs with the real archive."""
    layout = LAYOUTS[name]
    files = []
    for f in (*layout.train, layout.test, layout.meta):
        path = root / layout.folder / f
        if path.is_file():
            files.append((f, path))
        elif f != layout.meta:  # the meta file is optional: class names default to numbers
            raise CifarFormatError(f"{path} is missing")
    return files_fingerprint(files)


def class_names(root: Path, name: str, num_classes: int) -> tuple[str, ...]:
    layout = LAYOUTS[name]
    path = root / layout.folder / layout.meta
    if not path.is_file():
        return tuple(str(i) for i in range(num_classes))
    names = read_pickle(path).get(layout.names_key, [])
    if not isinstance(names, (list, tuple)) or len(names) != num_classes:  # not this layout's: numbers
        return tuple(str(i) for i in range(num_classes))
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def write_cifar_root(root: Path, name: str = "cifar10", per_batch: int = 40, seed: int = 0) -> Path:
    """`root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}` (or CIFAR-100's
    `cifar-100-python/{train, test, meta}`): dicts with a uint8 'data' (N, 3072) and labels,
    every class present in every batch. For trying the paper path offline and for tests:
    the images are noise."""
    rng = np.random.default_rng(seed)
    layout = LAYOUTS[name]
    k = layout.num_classes
    folder = root / layout.folder
    folder.mkdir(parents=True, exist_ok=True)
    label_key = layout.label_key
    files = [*layout.train, layout.test]
    for f in files:
        n = max(per_batch, 2 * k)
        labels = (np.arange(n) % k).tolist()
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        with open(folder / f, "wb") as fh:
            pickle.dump({b"batch_label": f.encode(), b"data": data, label_key.encode(): labels,
                         b"filenames": [b"x.png"] * n}, fh, protocol=2)
    with open(folder / layout.meta, "wb") as fh:
        pickle.dump({layout.names_key.encode(): [f"c{i}".encode() for i in range(k)]}, fh, protocol=2)
    return root
