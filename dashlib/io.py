"""Atomic file writes and safe checkpoint loading.

Every artifact (checkpoint, results JSON, figure, table) is written to a
temporary file in the same folder, flushed to disk, then renamed over the
target: a crash while saving leaves the previous version intact and never a
truncated file. Checkpoints are loaded with `weights_only=True`, so a file
that would run code when unpickled is refused.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import os
import pickle
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, unsafe or from another configuration."""


class OutputPathError(OSError):
    """A file or folder dash must write cannot be made there; the message names it and why."""


def _reason(err: OSError) -> str:
    """`[Errno 20] Not a directory: 'x'` -> "x: not a directory" (the path that failed, and why)."""
    what = (err.strerror or type(err).__name__).lower()
    return f"{err.filename}: {what}" if err.filename else what


def absolute(path: str | Path) -> Path:
    """`path` with ~ expanded and made absolute against the working directory, symbolic links
    kept: a data root given as a link is named by the link (its figures folder,
    `dashlib.labels.data_label`), as the user wrote it. A path with ".." is resolved, links
    and all, since "link/.." is the link target's parent, not the link's folder."""
    path = Path(path).expanduser()
    return path.resolve() if ".." in path.parts else Path(os.path.abspath(path))


def make_dir(path: str | Path, what: str) -> Path:
    """mkdir -p `path`, or an OutputPathError naming it, `what` it is for, and the reason."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"cannot use {path} as {what}: it is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputPathError(f"cannot create {path} ({what}): {_reason(err)}") from None
    return path


def check_writable_dir(path: str | Path, what: str) -> Path:
    """Refuse a folder that could not be created or written: `path` is a file, or its nearest
    existing ancestor is a file, not writable, or takes no new folder (an empty probe folder
    is made there and removed at once; nothing else is written)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"cannot use {path} as {what}: it is a file, not a folder")
    ancestor = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if not ancestor.is_dir():
        raise OutputPathError(f"cannot create {path} ({what}): {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputPathError(f"cannot create {path} ({what}): {ancestor} is not writable")
    try:  # os.access says yes to root everywhere, even where nothing can be made (/proc)
        probe = tempfile.mkdtemp(dir=ancestor, prefix=".dash-probe-")
    except OSError as err:
        raise OutputPathError(f"cannot create {path} ({what}): nothing can be made in {ancestor} "
                              f"({err.strerror})") from None
    os.rmdir(probe)
    return path


def refuse_folder(path: Path, what: str | None = None, example: str | None = None) -> None:
    """An OutputPathError if the file `path` (`what` it is for) is an existing folder; `example`:
    a file name to suggest inside it."""
    if path.is_dir():
        raise OutputPathError(f"cannot write {path}{f' ({what})' if what else ''}: it is a folder"
                              + (f"; give a file name such as {path / example}" if example else ""))


def check_writable_file(path: str | Path, what: str, example: str = "results.json") -> Path:
    """Refuse a file that could not be written, before any work that would end in writing it:
    `path` is a folder, or its folder could not be created or written (`check_writable_dir`)."""
    path = Path(path)
    refuse_folder(path, what, example)
    check_writable_dir(path.parent, f"the folder of {what}")
    return path


def atomic_write(path: str | Path, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Call `write(f)` on a temporary file, fsync it, then rename it to `path`.

    Any OSError (no folder, a file where a folder should be, no permission, disk
    full) becomes an OutputPathError naming `path`; the previous version stays.
    """
    path = Path(path)
    make_dir(path.parent, f"the folder for {path.name}")
    refuse_folder(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise OutputPathError(f"cannot write {path} ({_reason(err)})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give what open() would
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and not isinstance(err, OutputPathError):
            raise OutputPathError(f"cannot write {path} ({_reason(err)})") from err
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))  # type: ignore[arg-type,return-value]


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def _jsonable(value: Any) -> Any:
    """Non-finite floats become null (strict JSON has no NaN/Infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _jsonable(value.tolist())
    if isinstance(value, Path):
        return str(value)
    return value


def printable(name: str) -> str:
    """A file or folder name as text any drawing library takes: bytes that are not UTF-8
    (held with surrogate escapes, which matplotlib and PIL cannot draw) shown as \\xNN."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def json_line(record: Any) -> str:
    """One line of strict JSON (non-finite floats as null, as in every JSON file dash
    writes), for logs that other tools read line by line (jq, JavaScript)."""
    return json.dumps(_jsonable(record)) + "\n"


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(_jsonable(data), indent=2, sort_keys=False) + "\n")


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    return atomic_write(path, lambda f: torch.save(obj, f))


class CorruptFileError(RuntimeError):
    """A JSON file dash wrote is no longer valid JSON (or not the object it should be)."""


def read_json(path: str | Path) -> Any:
    """A JSON file's content; a CorruptFileError naming the file when it is not valid JSON."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptFileError(f"{path} is corrupt: not valid JSON ({type(err).__name__}: "
                               f"{str(err).splitlines()[0][:120]}); restore it, or delete the run "
                               f"folder and rerun") from None


def read_json_object(path: str | Path) -> dict[str, Any]:
    """`read_json` for files that hold one JSON object (config.json, results.json)."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise CorruptFileError(f"{path} is corrupt: it holds a JSON {type(data).__name__}, not an "
                               f"object; restore it, or delete the run folder and rerun")
    return data


class UnreadableCheckpointError(CheckpointError):
    """A checkpoint file that is truncated, corrupt or not a dash dict (as opposed to
    one refused as unsafe): a cache may recompute it instead of failing."""


def is_pickle(data: bytes) -> bool:
    """Whether `data` is torch's zip format (a pickle inside) or reads as a pickle stream of
    any protocol (its opcodes parsed up to STOP, never executed): a refused pickle is unsafe,
    anything else merely unreadable."""
    import pickletools

    if data[:4] == b"PK\x03\x04":
        return True
    try:
        for _ in pickletools.genops(io.BytesIO(data)):
            pass
    except Exception:  # noqa: BLE001 (any parse failure: not a pickle)
        return False
    return True


def load_checkpoint(path: str | Path, what: str = "",
                    remedy: str = "Only load checkpoints written by dash; delete the file and retrain "
                                  "(--force) if it is yours.") -> dict[str, Any]:
    """Load a checkpoint safely (weights_only=True) with errors that say what to do.

    `what` names the file in the refusal (e.g. "the fidelity cache file") and `remedy`
    says what to do about it. A file holding anything but tensors and plain containers
    raises CheckpointError and is never unpickled; a truncated, corrupt or non-dict one
    raises UnreadableCheckpointError (a CheckpointError), which a cache may catch and
    recompute.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not is_pickle(path.read_bytes()):  # text or other bytes: not a pickle that was refused
            raise UnreadableCheckpointError(
                f"{path} is not a readable checkpoint (not a pickle stream, nor torch's format). "
                f"Delete it and rerun with --force, or restore it from a backup.") from None
        raise CheckpointError(
            f"refusing to load {what + ' ' if what else ''}{path}: it holds objects other than tensors "
            f"and plain containers, so loading it could run arbitrary code (weights_only=True refused "
            f"it: {str(err).splitlines()[0]}). {remedy}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise UnreadableCheckpointError(
            f"{path} is not a readable checkpoint (truncated or corrupt: "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). "
            f"Delete it and rerun with --force, or restore it from a backup."
        ) from None
    if not isinstance(obj, dict):
        raise UnreadableCheckpointError(
            f"{path} is not a dash checkpoint (a {type(obj).__name__}, not a dict)")
    return obj


def check_config_match(path: str | Path, stored: Mapping[str, Any], expected: Mapping[str, Any],
                       what: str = "config") -> None:
    """Raise CheckpointError naming every field where a checkpoint's config differs."""
    diffs = _diff(stored, expected)
    if diffs:
        shown = "; ".join(f"{k}: checkpoint has {a!r}, expected {b!r}" for k, a, b in diffs[:8])
        raise CheckpointError(f"{path} was written for another {what} ({shown}). "
                              f"Use a checkpoint of this configuration, or --force to retrain.")


def _diff(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out: list[tuple[str, Any, Any]] = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        a, b = list(a), list(b)
    return [] if a == b else [(prefix.rstrip("."), a, b)]


def runs_root() -> Path:
    """`$DASH_RUNS` if set, else `runs/` in the working directory; a file there is refused.
    (Here, below both, so that `data` and `runs` can use it without importing each other.)"""
    root = Path(os.environ.get("DASH_RUNS") or "runs")
    if root.exists() and not root.is_dir():
        raise OutputPathError(f"the runs folder {root} (DASH_RUNS) is a file, not a folder; "
                              f"point DASH_RUNS at a folder")
    return root


def file_digest(path: str | Path, length: int = 16) -> str:
    """A short sha256 of a file's content (weights files identify caches by it); read once
    per process while the file's size and modification time stay the same."""
    info = os.stat(path)
    return _digest(str(Path(path).resolve()), info.st_size, info.st_mtime_ns)[:length]


@functools.lru_cache(maxsize=64)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


#: bytes read from each end of a file for a content fingerprint (`file_ends`)
FINGERPRINT_BYTES = 4096


def file_ends(path: str | Path) -> bytes:
    """The first and last `FINGERPRINT_BYTES` of a file (all of a smaller one): where two
    files of one name and size differ (a PNG's or JPEG's compressed pixels run to its end,
    a BMP's rows or a CIFAR batch's arrays fill it), read in a few microseconds however
    large the file. Image folders and CIFAR copies are fingerprinted by it."""
    with open(path, "rb") as f:
        head = f.read(FINGERPRINT_BYTES)
        if len(head) < FINGERPRINT_BYTES:
            return head
        f.seek(max(f.tell(), os.fstat(f.fileno()).st_size - FINGERPRINT_BYTES))
        return head + f.read()


#: How a file name is hashed as bytes: the bytes it has on disk, also where they are not
#: UTF-8 (an old zip's or a latin-1 copy's "caf\xe9.png", which Python holds as a lone
#: surrogate); a UTF-8 name hashes as before.
FS_ERRORS = "surrogateescape"


def files_fingerprint(files: Iterable[tuple[str, str | Path]]) -> str:
    """A 16-hex hash of (name, path) pairs: each name, its file's size and `file_ends`
    (image folders name their files by relative path, CIFAR copies by batch name)."""
    digest = hashlib.sha256()
    for name, path in files:
        digest.update(f"{name}\0{os.stat(path).st_size}\0".encode(errors=FS_ERRORS))
        digest.update(file_ends(path))
    return digest.hexdigest()[:16]
