"""Your own images: a folder with one sub-folder per class (torchvision's `ImageFolder` layout).

    DIR/cat/001.png, DIR/cat/002.jpg, DIR/dog/a.png, ...          (one split: dash holds out
                                                                    `holdout_fraction` per class)
    DIR/train/cat/..., DIR/test/cat/...  (or DIR/val/...)         (the folder's own split;
                                                                    `TRAIN_FOLDERS`, `TEST_FOLDERS`
                                                                    in any case)

Images of any size and mode are centre-cropped to a square and resized
(PIL's antialiased bilinear) to the preset's image size; they become grey (1
channel) when every image `folder_channels` opens (the first of each class and
`PEEK` spread over the folder) is grey, else RGB (3), unless
`DataConfig.channels` says otherwise. Grey images deeper than 8 bits are
scaled to 8 bits, not clipped (PIL's own conversion clips them): 16-bit
("I;16*") and 32-bit integer ("I") images by value / 257 (the 16-bit range),
floating-point ("F") images as [0, 1] when every value lies in it, else as
0-255. Decoded tensors are cached under
`<runs>/data-cache/`, keyed by the files' names, sizes and modification times,
so a changed folder is read again.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from dashlib import bars
from dashlib.io import FS_ERRORS, files_fingerprint, runs_root

if TYPE_CHECKING:
    import PIL.Image

PEEK = 16
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F", "P;L")
#: full-scale value of grey modes deeper than 8 bits (None: "F", judged per image)
DEEP_GREY_SCALE: dict[str, float | None] = {"I": 65535.0, "I;16": 65535.0, "I;16B": 65535.0,
                                            "I;16L": 65535.0, "I;16N": 65535.0, "F": None}
#: names of a folder's own split folders, matched in any case ("Train", "VAL", ...)
TRAIN_FOLDERS = ("train", "training")
TEST_FOLDERS = ("test", "testing", "val", "valid", "validation")
#: JPEGs are decoded (PIL draft mode) at no less than this multiple of the target size
DRAFT_FACTOR = 2
#: part of the decode cache's key: bumped when decoding changes, so old caches are not reused
DECODE_VERSION = 3
#: entries (files and folders) the class folders of one split may hold: far more than any image
#: dataset's (ImageNet's training split: 1.3 million), far fewer than a system folder's
MAX_ENTRIES = 10_000_000
#: the EXIF tag of a photo's orientation (1: upright; 2-8: mirrored and/or turned)
EXIF_ORIENTATION = 0x0112
#: images per decoding task (`decode_all`): enough that the pool's overhead per task is small
DECODE_CHUNK = 64


class ImageFolderError(FileNotFoundError):
    """The folder is missing or not laid out as one sub-folder of images per class."""


@dataclass(frozen=True)
class FolderImages:
    """Decoded images of one split: uint8 (N, C, S, S), labels (N,) int64, class names."""

    x: Tensor
    y: Tensor
    classes: tuple[str, ...]


def existing_root(root: str | Path) -> Path:
    """The image folder as an absolute path, or an error that says how to give one."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise ImageFolderError(
            f"image folder {root} {what}; pass --data-root DIR (--set data.data_root=DIR) with "
            f"one sub-folder of images per class, e.g. DIR/cat/*.png, DIR/dog/*.png")
    return root


def check_runs_outside(classes: Path, runs: Path) -> None:
    """Refuse a folder of class folders that holds dash's own runs folder (`runs`, resolved):
    the first command would write its checkpoints, caches and notebooks into what the next
    one reads as a class. A runs folder beside the split folders, or under a hidden folder,
    is never read."""
    if runs != classes and classes not in runs.parents:
        return
    inside = runs.relative_to(classes).parts
    if inside and skipped(inside[0]):
        return
    raise ImageFolderError(
        f"dash's runs folder {runs} lies inside the image folder {classes}, so its checkpoints, caches "
        f"and notebooks would be read as images of a class: run dash from a folder outside it, or "
        f"set DASH_RUNS to one")


def split_folders(root: str | Path) -> tuple[Path, Path | None]:
    """(train folder, test folder or None): DIR/train + DIR/test (`TRAIN_FOLDERS`,
    `TEST_FOLDERS`, any case; of several test folders the first in that order, so test/
    over val/) if DIR holds both, (DIR/train, None) if a train folder is DIR's only
    folder, else (DIR, None) when no folder is a split: one of those names holding
    sub-folders and no images (`_holds_classes`; a "train" folder of images is a class). Any
    other layout with a split folder is an error: read as classes, every image would be
    labelled with its split's name."""
    root = existing_root(root)
    own = runs_root().resolve()  # dash's runs folder beside the splits is neither a split nor a class
    folders = sorted(e.name for e in os.scandir(root)
                     if e.is_dir() and not skipped(e.name) and (root / e.name).resolve() != own)
    # a folder of a split's name that holds images is a class ("train" is one of CIFAR-100's)
    train = [f for f in folders if f.lower() in TRAIN_FOLDERS and _holds_classes(root / f)]
    test = [f for f in folders if f.lower() in TEST_FOLDERS and _holds_classes(root / f)]
    if len(train) == 1 and test:
        splits = root / train[0], root / min(test, key=lambda f: TEST_FOLDERS.index(f.lower()))
        for split in splits:
            check_runs_outside(split, own)
        return splits
    if len(train) == 1 and len(folders) == 1:  # a train split alone: its classes, with a held-out part
        check_runs_outside(root / train[0], own)
        return root / train[0], None
    if train or test:
        others = [f for f in folders if f not in train + test]
        what = (f"beside {', '.join(others)}" if others else
                f"with {len(train)} train folders" if train else "without a train folder")
        raise ImageFolderError(
            f"{root} holds the split folder(s) {', '.join(train + test)} {what}; "
            f"lay it out as DIR/<class>/<images>, "
            f"or as one train folder ({', '.join(TRAIN_FOLDERS)}) of DIR/<train>/<class>/<images>, "
            f"alone or with a test folder ({', '.join(TEST_FOLDERS)}) laid out alike"
            f"{_loose_images_note(root, folders)}")
    check_runs_outside(root, own)
    return root, None


def _loose_images_note(root: Path, folders: Sequence[str]) -> str:
    """For an error: "; note: ..." naming each split-named folder of `root` among `folders`
    that holds class folders and loose images too, which make it read as a class; else ""."""
    notes = []
    for name in folders:
        if name.lower() not in (*TRAIN_FOLDERS, *TEST_FOLDERS):
            continue
        try:
            folders_in, loose = _contents(root / name)
        except OSError:  # unreadable: the error this note adds to is the one to see
            continue
        if loose and folders_in:
            shown = ", ".join(loose[:3]) + (", ..." if len(loose) > 3 else "")
            notes.append(f"{name}/ holds class folders and {len(loose)} loose image(s) ({shown}), so it "
                         f"is read as a class, not a split: move those images into a class folder or "
                         f"out of {name}/")
    return "".join(f"; note: {note}" for note in notes)


def _one_level_down_note(root: Path, classes: Sequence[str]) -> str:
    """For the one-class error: "; note: ..." when that one folder holds sub-folders and no
    images of its own (a grouping folder, DIR/animals/<class>/...), naming it as the
    --data-root that was likely meant; else ""."""
    if len(classes) != 1:
        return ""
    inner = root / classes[0]
    try:
        names, loose = _contents(inner)
    except OSError:
        return ""
    if loose or len(names) < 2:
        return ""
    shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
    return (f"; note: {classes[0]}/ holds {len(names)} folders ({shown}) and no images of its own: "
            f"if those are the classes, pass --data-root {inner}")


def _holds_classes(folder: Path) -> bool:
    """Whether a folder looks like a split (sub-folders, no images of its own) rather
    than a class (images)."""
    folders_in, loose = _contents(folder)
    return bool(folders_in) and not loose


def _contents(folder: Path) -> tuple[list[str], list[str]]:
    """(the names of `folder`'s sub-folders, those of the images directly in it), each sorted,
    `skipped` names left out."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    entries = [e for e in os.scandir(folder) if not skipped(e.name)]
    return (sorted(e.name for e in entries if _is_dir(e)),
            sorted(e.name for e in entries if not _is_dir(e) and e.name.lower().endswith(IMG_EXTENSIONS)))


def skipped(name: str) -> bool:
    """Whether a file or folder name is left out of a listing: hidden ones (".ipynb_checkpoints",
    macOS's "._photo.jpg" and ".DS_Store") and the "__MACOSX" folder of zips made on a Mac,
    none of which are images or classes."""
    return name.startswith(".") or name == "__MACOSX"


def _listing(folder: Path):  # noqa: ANN202 (torchvision is imported lazily)
    """torchvision's ImageFolder over `folder` without decoding, `skipped` names left out."""
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

    class Listing(ImageFolder):
        def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
            classes = sorted(e.name for e in os.scandir(directory) if e.is_dir() and not skipped(e.name))
            if not classes:
                raise FileNotFoundError(f"Couldn't find any class folder in {directory}.")
            return classes, {c: i for i, c in enumerate(classes)}

    def valid(path: str) -> bool:  # a broken symbolic link is not an image either
        return not any(skipped(part) for part in Path(path).relative_to(folder).parts) \
            and has_file_allowed_extension(path, IMG_EXTENSIONS) and os.path.isfile(path)

    # empty classes are listed, so that `_listed` says what their folders hold instead
    return Listing(str(folder), loader=lambda path: path, is_valid_file=valid, allow_empty=True)


def _samples(folder: Path, minimum: int) -> tuple[tuple[tuple[str, int], ...], tuple[str, ...]]:
    """((path, label) of every image, class names) of one split folder whose classes need
    `minimum` images each (`split_minimum`): listed once per process until a class folder
    changes (`_dir_state`), however many of the loader's steps (fingerprint, channels,
    classes, decoding) ask."""
    return _listed(folder, _dir_state(folder), minimum)


def split_minimum(test: Path | None) -> int:
    """Images each class needs, by what `split_folders` found: 2 without a test split (dash
    holds some out: one to train on, one to test), 1 in either split of a train + test pair.
    Decided from the folder the user gave, never from its parent: a train/ folder given
    itself is held out from like any other."""
    return 2 if test is None else 1


def check_tree(folder: Path, limit: int | None = None) -> None:
    """Refuse, before torchvision's listing walks them (following symbolic links), class
    folders that hold a symbolic-link loop, which it would follow level after level listing
    the same images each time, or more than `limit` (`MAX_ENTRIES`) entries, which means the
    folder is not a dataset (say --data-root / or a home folder) and would take long to list."""
    limit = MAX_ENTRIES if limit is None else limit
    count = 0
    # (folder, the (device, inode) of every folder above it): a loop meets one of its own
    stack = [(e.path, frozenset()) for e in sorted(os.scandir(folder), key=lambda e: e.name, reverse=True)
             if not skipped(e.name) and _is_dir(e)]
    while stack:
        directory, above = stack.pop()
        try:
            info = os.stat(directory)
            entries = list(os.scandir(directory))
        except OSError:  # unreadable: torchvision's walk skips it too
            continue
        key = (info.st_dev, info.st_ino)
        if key in above:
            raise ImageFolderError(
                f"{loop_link(folder, Path(directory))} links to a folder that contains it (a symbolic-"
                f"link loop, which the listing would follow level after level); remove that link, "
                f"or pass --data-root the folder that holds one sub-folder of images per class")
        count += len(entries)
        if count > limit:
            raise ImageFolderError(
                f"the class folders of {folder} hold more than {limit:,} files and folders: is it the "
                f"image folder? Pass --data-root DIR with one sub-folder of images per class, e.g. "
                f"DIR/cat/*.png, DIR/dog/*.png")
        stack.extend((e.path, above | {key}) for e in reversed(entries) if _is_dir(e))


def loop_link(folder: Path, directory: Path) -> Path:
    """The symbolic link that closes a loop `check_tree` met at `directory`: the last link on
    its path below `folder` (a loop is noticed one level past its link: class0/up -> ..
    shows as class0/up/class0)."""
    parts = directory.relative_to(folder).parts
    links = [folder.joinpath(*parts[:i]) for i in range(1, len(parts) + 1)
             if folder.joinpath(*parts[:i]).is_symlink()]
    return links[-1] if links else directory


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows symbolic links, as torchvision's walk does
    except OSError:
        return False


@functools.lru_cache(maxsize=16)
def _listed(folder: Path, state: tuple,
            minimum: int = 2) -> tuple[tuple[tuple[str, int], ...], tuple[str, ...]]:
    check_tree(folder)
    try:
        listing = _listing(folder)
    except (FileNotFoundError, RuntimeError) as err:
        raise ImageFolderError(f"{folder} is not an image folder: {str(err).rstrip('. ')}. Lay it out as "
                               f"{folder}/<class name>/<image files>") from None
    counts = np.bincount([c for _, c in listing.samples], minlength=len(listing.classes))
    if len(listing.classes) < 2:
        raise ImageFolderError(f"{folder} holds {len(listing.classes)} class folder(s): class-conditional "
                               f"diffusion needs at least 2 (one sub-folder of images per class)"
                               f"{_loose_images_note(folder, listing.classes)}"
                               f"{_one_level_down_note(folder, listing.classes)}")
    if counts.min() < minimum:
        name = listing.classes[int(counts.argmin())]
        raise ImageFolderError(f"class {name!r} in {folder} has {counts.min()} image(s); every class "
                               f"needs at least {minimum}{_others(folder / name, listing.samples)}")
    return tuple(listing.samples), tuple(listing.classes)


def _others(folder: Path, samples: list[tuple[str, int]]) -> str:
    """What a class folder holds besides its images, for an error: "" if nothing, else
    the left-out files counted by suffix and the suffixes that are read."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    suffixes = _unread(folder, {Path(p) for p, _ in samples}, classes_below=False)
    if not suffixes:
        return ""
    left = ", ".join(f"{n} {suffix}" for suffix, n in sorted(suffixes.items()))
    return (f" (left out there: {left}; images are read from {', '.join(IMG_EXTENSIONS)}; "
            f"convert the others to PNG)")


def _dir_state(folder: Path) -> tuple:
    """(name, mtime) of `folder` and its sub-folders: what adding, removing or renaming an
    image in a class folder changes, cheap to read (no file is listed)."""
    return ((str(folder), folder.stat().st_mtime_ns),
            *((e.path, e.stat().st_mtime_ns) for e in os.scandir(folder) if e.is_dir()))


def _folder_state(root: Path) -> tuple:
    """`_dir_state` of the root and of its split folders."""
    splits = (*TRAIN_FOLDERS, *TEST_FOLDERS)
    folders = (root, *(Path(e.path) for e in os.scandir(root) if e.is_dir() and e.name.lower() in splits))
    return tuple(item for folder in folders for item in _dir_state(folder))


@functools.lru_cache(maxsize=16)
def _fingerprint(root: Path, state: tuple) -> str:
    train, test = split_folders(root)
    return files_fingerprint((Path(path).relative_to(root).as_posix(), path)
                             for folder in ((train, test) if test is not None else (train,))
                             for path, _ in _samples(folder, split_minimum(test))[0])


def folder_fingerprint(root: str | Path) -> str:
    """A hash of what an image folder holds, not where it is: every image's path relative to
    the folder, its size in bytes and the bytes at both its ends (`file_ends`). Part of every
    run's and cache's identity (`dashlib.data.data_identity`), so two folders with the same
    class count never share a run; a folder that moves, or is copied, keeps it. Cached per
    process until a class folder changes (an image edited in place, to the same byte size
    and only away from its ends, is not noticed)."""
    root = existing_root(root)
    return _fingerprint(root, _folder_state(root))


def decode_errors() -> tuple[type[BaseException], ...]:
    """What PIL raises for a file it cannot decode: besides its own and I/O errors, a damaged
    header or chunk escapes its plugins as ValueError ("Truncated IHDR chunk", a bad PPM
    number, "invalid palette size"), SyntaxError ("broken PNG file"), EOFError or
    struct.error, depending on the format."""
    import struct

    from PIL import Image, UnidentifiedImageError

    return (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError, SyntaxError,
            EOFError, struct.error)


def unreadable(path: str, err: BaseException) -> ImageFolderError:
    """The error for an image file PIL cannot decode (truncated, or not an image)."""
    return ImageFolderError(f"cannot read image {path}: {err}; remove or replace that file")


def folder_channels(root: str | Path) -> int:
    """1 if the images looked at are all grey, else 3: the first of each class (so that a
    class of colour images among grey ones is seen) and `PEEK` spread evenly over the rest."""
    from PIL import Image

    train, test = split_folders(root)
    samples, _ = _samples(train, split_minimum(test))
    firsts: dict[int, int] = {}
    for i, (_, label) in enumerate(samples):
        firsts.setdefault(label, i)
    spread = {round(i * (len(samples) - 1) / max(PEEK - 1, 1)) for i in range(PEEK)}
    for path, _ in (samples[i] for i in sorted({*firsts.values(), *spread})):
        try:
            with Image.open(path) as image:
                mode = image.mode
        except decode_errors() as err:
            raise unreadable(path, err) from None
        if mode not in GREY_MODES:
            return 3
    return 1


def folder_classes(root: str | Path) -> tuple[str, ...]:
    """The class names of the image folder's train split."""
    train, test = split_folders(root)
    return folder_classes_of(train, split_minimum(test))


def left_out(root: str | Path) -> dict[str, int]:
    """What the image folder holds that is no image of a class, counted by kind: files of
    other types in the class folders by suffix (".gif", ".txt", "(none)"), links to nothing
    ("broken link"), files lying beside the class folders or beside the split folders, and
    folders beside a used split (an unused "val/" where "test/" is taken): {} when every
    file is read. For `dash info`; hidden names (`skipped`) are not counted."""
    top = existing_root(root)
    train, test = split_folders(top)
    out: Counter[str] = Counter()
    for split in (train, test):
        if split is None:
            continue
        out.update(_unread(split, {Path(p) for p, _ in _samples(split, split_minimum(test))[0]}))
    if train != top:  # a split layout: what lies beside train/ (and test/) is not read either
        used = {train.name, *([test.name] if test is not None else [])}
        for e in os.scandir(top):
            if skipped(e.name) or e.name in used:
                continue
            out["unused folder " + e.name if _is_dir(e) else "beside the split folders"] += 1
    return dict(sorted(out.items()))


def _unread(folder: Path, images: set[Path], classes_below: bool = True) -> Counter[str]:
    """The files under `folder` (links followed, hidden names skipped) that are not among
    `images`, counted by `_left_out_kind`; with `classes_below` the files lying in `folder`
    itself are counted as beside the class folders (a split), else by suffix (one class)."""
    out: Counter[str] = Counter()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not skipped(d)]
        here = Path(dirpath)
        for name in filenames:
            path = here / name
            if not (skipped(name) or path in images):
                out[_left_out_kind(path, classes_below and here == folder)] += 1
    return out


def _left_out_kind(path: Path, beside_classes: bool) -> str:
    if beside_classes:
        return "beside the class folders"
    if not path.exists():
        return "broken link"
    return path.suffix.lower() or "(none)"


def folder_classes_of(split: Path, minimum: int = 2) -> tuple[str, ...]:
    """The class names of one split folder (listed, not decoded) whose classes need `minimum`
    images each (`split_minimum`)."""
    return _samples(split, minimum)[1]


def eight_bit(image: PIL.Image.Image) -> PIL.Image.Image:
    """A PIL image with more than 8 bits per grey value as an 8-bit "L" image, scaled by
    `DEEP_GREY_SCALE` (a float image's full scale is 1 if its values lie in [0, 1], else
    255); any other image unchanged."""
    from PIL import Image

    if image.mode not in DEEP_GREY_SCALE:
        return image
    values = np.asarray(image, dtype=np.float64)
    full = DEEP_GREY_SCALE[image.mode]
    if full is None:
        full = 1.0 if values.size and np.nanmin(values) >= 0 and np.nanmax(values) <= 1 else 255.0
    scaled = np.nan_to_num(values * (255.0 / full), nan=0.0)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))


def _decode(path: str, size: int, channels: int) -> np.ndarray:
    """One image -> uint8 (C, size, size): upright, centre square crop, antialiased resize.

    A photo's EXIF orientation is applied first (phones store most pictures turned a
    quarter), as a viewer shows it. A JPEG is decoded at the smallest of 1/1, 1/2, 1/4,
    1/8 scale that keeps both sides at least `DRAFT_FACTOR` x size (PIL's draft mode;
    bench/decode_speed.py: 0.23-0.35x the time of a full-size decode), and the centre
    square, in the full image's coordinates, is resampled from that smaller decode."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            w, h = image.size
            orientation = image.getexif().get(EXIF_ORIENTATION, 1)
            if orientation in (5, 6, 7, 8):  # a quarter turn: the sides swap
                w, h = h, w
            side = min(w, h)
            box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
            image.draft(None, (DRAFT_FACTOR * size, DRAFT_FACTOR * size))
            if orientation != 1:
                image = ImageOps.exif_transpose(image)
            image = eight_bit(image).convert("L" if channels == 1 else "RGB")
            if image.size == (w, h):
                image = image.crop(box)
                box = None
            else:  # the same square of the drafted image, in its (fractional) coordinates,
                # cut out first so that, as for a full decode, no pixel beyond it is resampled
                sx, sy = image.size[0] / w, image.size[1] / h
                x0, y0, x1, y1 = box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy
                left, top = math.floor(x0), math.floor(y0)
                image = image.crop((left, top, math.ceil(x1), math.ceil(y1)))
                box = (x0 - left, y0 - top, x1 - left, y1 - top)
            image = image.resize((size, size), Image.Resampling.BILINEAR, box=box, reducing_gap=None)
            array = np.asarray(image, dtype=np.uint8)
    except decode_errors() as err:
        raise unreadable(path, err) from None
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def decode_all(paths: list[str], size: int, channels: int,
               done: Callable[[int], object] = lambda n: None) -> list[np.ndarray]:
    """`_decode` of every path, in order, on `torch.get_num_threads()` threads, in chunks
    of at most `DECODE_CHUNK`; `done(n)` after each chunk. PIL releases the GIL while it
    decodes and resizes: two threads took 0.60 [0.50, 0.65] of one thread's wall time on
    48 2,400x1,800 JPEGs (bench/decode_speed.py). The result does not depend on the
    thread count."""
    threads = torch.get_num_threads()
    step = max(1, min(DECODE_CHUNK, math.ceil(len(paths) / threads)))  # every thread gets work
    chunks = [paths[i:i + step] for i in range(0, len(paths), step)]

    def decode_chunk(chunk: list[str]) -> list[np.ndarray]:
        return [_decode(path, size, channels) for path in chunk]

    def collect(results: Iterable[list[np.ndarray]]) -> list[np.ndarray]:
        arrays = []
        for decoded in results:
            arrays += decoded
            done(len(decoded))
        return arrays

    workers = min(threads, len(chunks))
    if workers <= 1:
        return collect(map(decode_chunk, chunks))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return collect(pool.map(decode_chunk, chunks))


def _cache_key(samples: tuple[tuple[str, int], ...], size: int, channels: int, content: str = "") -> str:
    """Names, labels, sizes and modification times of the files, and `content` (the folder's
    fingerprint, which reads the bytes at each file's ends: a copy that keeps times, `cp -p`
    or an archive's, of other images of the same sizes changes it)."""
    digest = hashlib.sha256(f"{DECODE_VERSION}:{size}:{channels}:{content}".encode())
    for path, label in samples:
        stat = Path(path).stat()
        digest.update(f"{path}\0{label}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode(errors=FS_ERRORS))
    return digest.hexdigest()[:16]


def _read_cache(path: Path) -> FolderImages | None:
    """The cached decoded split, or None (one warning) when the file is truncated or
    corrupt, so it is decoded again; a file refused as unsafe still raises."""
    from dashlib.io import UnreadableCheckpointError, load_checkpoint

    try:
        saved = load_checkpoint(path)
        return FolderImages(saved["x"], saved["y"], tuple(saved["classes"]))
    except (UnreadableCheckpointError, KeyError) as err:
        warnings.warn(f"discarding the unreadable image cache {path} ({err}); decoding the images again",
                      stacklevel=3)
        return None


def read_split(folder: Path, size: int, channels: int, cache_dir: Path | None,
               progress: bool = True, content: str = "", minimum: int = 2) -> FolderImages:
    """Every image of one split folder, decoded (or read from the cache, keyed by `_cache_key`
    with `content`, the image folder's `folder_fingerprint`); its classes need `minimum`
    images each (`split_minimum`)."""
    from dashlib.io import atomic_torch_save

    samples, classes = _samples(folder, minimum)
    cache = (cache_dir / f"imagefolder-{_cache_key(samples, size, channels, content)}.pt"
             if cache_dir else None)
    saved = _read_cache(cache) if cache is not None and cache.is_file() else None
    if saved is not None:
        return saved
    with bars.bar(total=len(samples), desc=f"decode {folder.name}", dynamic_ncols=True,
              disable=not progress or len(samples) < 2000) as bar:
        x = torch.from_numpy(np.stack(decode_all([path for path, _ in samples], size, channels, bar.update)))
    unread = _unread(folder, {Path(p) for p, _ in samples})
    if unread:  # said once, when the split is decoded (later loads read the cache)
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(unread.items()))
        print(f"dash: note: {folder}: {sum(unread.values())} file(s) left out, not images dash "
              f"reads ({kinds}); `dash info` lists what an image folder holds", file=sys.stderr)
    y = torch.tensor([label for _, label in samples], dtype=torch.long)
    if cache is not None:
        atomic_torch_save({"x": x, "y": y, "classes": list(classes)}, cache)
    return FolderImages(x, y, classes)
