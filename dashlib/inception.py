"""Where the Inception-v3 weights for FID/IS come from, offline first.

torch-fidelity downloads its Inception-v3 (ported from TensorFlow's 2015
graph) through torch.hub on first use. dash never downloads silently: the
weights are a file the user names (`--inception-weights`), else the file in
torch.hub's cache (where an earlier torch-fidelity download put it), else,
only with `--download-weights`, a download. Otherwise one error says where it
looked and how to get the file. This module imports torch-fidelity lazily, so
the CLI can name its error without paying for that import.
"""

from __future__ import annotations

import hashlib
import io
import pickle
from pathlib import Path
from urllib.error import URLError
from urllib.parse import urlparse

import torch
from torch import Tensor

from dashlib.config import EvalConfig
from dashlib.io import is_pickle


class InceptionWeightsError(FileNotFoundError):
    """The Inception-v3 weights file is missing or not the right file; the message says how to get it."""


def inception_url() -> str:
    """The URL torch-fidelity downloads the weights from."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    return str(URL_INCEPTION_V3)


def inception_cache_file() -> Path:
    """Where torch-fidelity's download (torch.hub) keeps the weights: <hub>/checkpoints/<file>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(inception_url()).path).name


#: How each command takes the three remedies (`weights`, `download`, `classifier`) and names a
#: given file (`given`, with `{file}`): `dash evaluate`'s options, and the preset keys of every
#: command that takes --set (`dash reproduce`, the claims sweep).
EVALUATE_OPTIONS = {"weights": "--inception-weights FILE (EvalConfig.inception_weights)",
                    "download": "--download-weights", "classifier": "--extractor classifier",
                    "given": "--inception-weights {file}"}
SET_OPTIONS = {"weights": "--set eval.inception_weights=FILE", "download": "--set eval.download_weights=true",
               "classifier": "--set eval.feature_extractor=classifier",
               "given": "--set eval.inception_weights={file}"}


def how_to_get(problem: str, options: dict[str, str] | None = None) -> str:
    """The error text for weights that are missing or unusable (`problem`), naming the
    remedies as `options` spells them (`EVALUATE_OPTIONS` by default)."""
    say = options or EVALUATE_OPTIONS
    return (f"Inception-v3 weights for FID/IS: {problem}. Offline, fetch "
            f"{inception_url()} on a machine with internet, copy it here and pass "
            f"{say['weights']}, or put it at {inception_cache_file()}; with internet, "
            f"{say['download']} lets dash fetch it. Without it, {say['classifier']} gives the "
            f"offline classifier FID.")


def _download(file: Path, options: dict[str, str] | None = None) -> None:
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(inception_url(), str(file), progress=False)
    except (URLError, OSError) as err:
        raise InceptionWeightsError(how_to_get(
            f"downloading to {file} failed: {type(err).__name__}: {err}", options)) from None


def inception_weights_path(path: str | None, download: bool = False,
                           options: dict[str, str] | None = None) -> Path:
    """The local Inception-v3 weights: `path`, else torch.hub's cache, else (if allowed) a download.

    The file is checked by `load_inception_state` (a weights_only load that
    must hold the 1008-way `fc` of the ported net). Errors name the remedies as
    `options` spells them (`how_to_get`).
    """
    given = (options or EVALUATE_OPTIONS)["given"]
    if path is not None:
        file = Path(path).expanduser()
        if file.is_dir():
            raise InceptionWeightsError(how_to_get(f"{given.format(file=file)} is a folder, not the file",
                                                   options))
        if not file.is_file():
            raise InceptionWeightsError(how_to_get(f"{given.format(file=file)} does not exist", options))
    else:
        file = inception_cache_file()
        if not file.is_file() and download:
            _download(file, options)
        if not file.is_file():
            raise InceptionWeightsError(how_to_get(
                f"none was given ({given.format(file='FILE')}), and torch-fidelity's cache has no "
                f"{file}", options))
    load_inception_state(file, options=options)
    return file


def check_weights(config: EvalConfig, options: dict[str, str] | None = None) -> None:
    """Where `config` scores with Inception-v3, find (or, where `download_weights` allows,
    download) and check its weights now, before any work; errors name the remedies as
    `options` spells them (`how_to_get`)."""
    if config.feature_extractor == "inception":
        inception_weights_path(config.inception_weights, config.download_weights, options)


def load_inception_state(file: str | Path, digest: str | None = None,
                         options: dict[str, str] | None = None) -> dict[str, Tensor]:
    """The Inception-v3 state dict of `file`, read ONCE into memory and loaded from those bytes.

    The bytes are hashed (sha256) and must start with `digest` when one is given
    (the digest dash recorded when it first checked the file), then loaded with
    weights_only=True, so what was checked is exactly what is used; torch-fidelity
    never opens the file itself (`dashlib.fidelity.VerifiedInceptionV3`). Errors name the
    remedies as `options` spells them (`how_to_get`).
    """
    file = Path(file)
    try:
        data = file.read_bytes()
    except OSError as err:
        raise InceptionWeightsError(f"cannot read Inception-v3 weights {file}: {err.strerror}") from None
    found = hashlib.sha256(data).hexdigest()
    if digest is not None and not found.startswith(digest):
        raise InceptionWeightsError(f"{file} changed since dash checked it (sha256 {found[:len(digest)]}, "
                                    f"expected {digest}); rerun to check the new file")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not is_pickle(data):  # text or other bytes: no weights file at all, not a refused pickle
            raise InceptionWeightsError(how_to_get(
                f"{file} is not a PyTorch weights file (neither torch's zip format nor a pickle)",
                options)) from None
        raise InceptionWeightsError(
            f"refusing to load {file}: it holds objects other than tensors, so loading it could run "
            f"arbitrary code ({str(err).splitlines()[0]})") from None
    except (RuntimeError, EOFError, ValueError) as err:
        raise InceptionWeightsError(f"{file} is not usable Inception-v3 weights (truncated or corrupt: "
                                    f"{type(err).__name__})") from None
    fc = state.get("fc.weight") if isinstance(state, dict) else None
    if not isinstance(fc, Tensor) or tuple(fc.shape) != (1008, 2048):
        raise InceptionWeightsError(how_to_get(
            f"{file} is not torch-fidelity's Inception-v3 file (no 1008x2048 fc.weight)", options))
    return dict(state)
