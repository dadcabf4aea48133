"""torch-fidelity glue: image sets, feature extractors, the reference cache, the metrics.

Every image metric is torch-fidelity's own code (its feature extractors and metric functions):

    FID  = |mu_g - mu_r|^2 + Tr(S_g + S_r - 2 (S_g S_r)^(1/2))     (Heusel et al. 2017)
    IS   = exp E_x KL(p(y|x) || p(y)), over `isc_splits(N)` splits   (Salimans et al. 2016)
    KID  = unbiased MMD^2, cubic polynomial kernel, `kid_subsets(N)` (Binkowski et al. 2018)
    precision / recall: k-NN manifolds with k = 3                    (Kynkaanniemi et al. 2019)

in one of two feature spaces (`Extractor`):

* ``inception``: torch-fidelity's Inception-v3 ("2048" pool features, unbiased
  logits for IS), as the paper. Its weights file must be local; see
  `dashlib.inception`. PRC uses the same 2048 features (torch-fidelity's
  own default for PRC is VGG-16, another download).
* ``classifier``: dashlib's small CNN trained on the dataset (`dashlib.classifier`),
  registered as the torch-fidelity extractor "dash-classifier": its 4w-wide
  penultimate features for FID/KID/PRC and its logits for IS. Offline, any
  dataset; numbers are comparable only under the same classifier.

Reference features and FID statistics of the train split are computed once per
(dataset, extractor) and cached by dash itself under `<runs>/fidelity-cache/`
as plain tensors, read back with weights_only=True: torch-fidelity's own cache
unpickles with weights_only=False (any planted file would run code), so dash
never hands it a cache folder, and never lets it open a weights file
(`VerifiedInceptionV3`). An unreadable (truncated, empty, stale) cache file is
recomputed with one warning line; one holding anything but tensors is refused.
Generated images go in as uint8 (3, H, W) tensors; one-channel images are
repeated to three (the classifier reads one back).
"""

from __future__ import annotations

import io
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch_fidelity
from torch import Tensor
from torch.utils.data import Dataset as TorchDataset
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import isc_featuresdict_to_metric
from torch_fidelity.metric_kid import kid_featuresdict_to_metric
from torch_fidelity.metric_prc import prc_featuresdict_to_metric
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from torch_fidelity.utils import get_featuresdict_from_dataset

from dashlib.allocator import system_heap
from dashlib.classifier import load_classifier
from dashlib.config import IMAGE_METRICS, ConfigError, DataConfig, to_dict
from dashlib.data import Split, balanced_subset, data_identity, load_dataset, to_uint8
from dashlib.images import save_png
from dashlib.inception import inception_weights_path, load_inception_state
from dashlib.io import UnreadableCheckpointError, atomic_torch_save, file_digest, load_checkpoint
from dashlib.registry import Registry
from dashlib.runs import Run, config_hash, runs_root

CLASSIFIER_EXTRACTOR = "dash-classifier"
INCEPTION_EXTRACTOR = "dash-inception-v3"
CACHE_VERSION = 1
METRICS = IMAGE_METRICS  # the metric groups every extractor must serve
PRC_NEIGHBORHOOD = 3
#: The fewest real images the metrics compare with (precision/recall needs k + 2).
MIN_REFERENCE = PRC_NEIGHBORHOOD + 2
KID_SUBSET_SIZE = 1000
RNG_SEED = 2020  # torch-fidelity's default: KID subsets and the IS shuffle
FEATURE_BATCH = 128
#: rows of the distance matrix precision/recall holds at once: N_ref x PRC_BATCH floats
#: (torch-fidelity's default, 10,000, made one 10K-reference evaluation hold ~1.2 GB)
PRC_BATCH = 1024

#: torch-fidelity's result keys -> dash's short names.
METRIC_NAMES = {
    "frechet_inception_distance": "fid",
    "inception_score_mean": "isc_mean",
    "inception_score_std": "isc_std",
    "kernel_inception_distance_mean": "kid_mean",
    "kernel_inception_distance_std": "kid_std",
    "precision": "precision",
    "recall": "recall",
    "f_score": "f_score",
}
METRIC_KEYS = tuple(METRIC_NAMES.values())


# --- image sets ----------------------------------------------------------------

class ImageSet(TorchDataset):  # type: ignore[type-arg]
    """uint8 images (N, C, H, W) served one by one as torch-fidelity wants: (3, H, W) uint8."""

    def __init__(self, images: Tensor) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected uint8 images (N, 1 or 3, H, W), got {images.dtype} "
                             f"{tuple(images.shape)}; convert with dashlib.data.to_uint8")
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Tensor:
        return self.images[i].expand(3, -1, -1)


def from_uint8(images: Tensor) -> Tensor:
    """uint8 in [0, 255] (N, C, H, W) -> float32 in [-1, 1]; the inverse of `to_uint8`."""
    return images.float() / 127.5 - 1


def write_image_folder(images: Tensor, folder: str | Path) -> Path:
    """One PNG per image (uint8 (N, C, H, W)), a folder torch-fidelity reads as an input path."""
    folder = Path(folder)
    for i, image in enumerate(images):
        save_png(image.expand(3, -1, -1).contiguous(), folder / f"{i:06d}.png")
    return folder


# --- the classifier as a torch-fidelity feature extractor -------------------------

class ClassifierFeatures(FeatureExtractorBase):
    """torch-fidelity extractor over a dash classifier, read from `feature_extractor_weights_path`.

    uint8 (B, 3, H, W) -> "features" (B, 4w) and/or "logits" (B, K), float32.
    """

    def __init__(self, name: str, features_list: list[str],
                 feature_extractor_weights_path: str | None = None, **kwargs: object) -> None:
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise ValueError(f"the {CLASSIFIER_EXTRACTOR!r} extractor needs feature_extractor_weights_path "
                             f"= a classifier's final.pt (see dashlib.classifier.train_classifier)")
        self.model = load_classifier(feature_extractor_weights_path)
        self.requires_grad_(False)

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return ("features", "logits")

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return {"isc": "logits", "fid": "features", "kid": "features", "prc": "features"}[metric]

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> Tensor:
        return torch.zeros(1, 3, 8, 8, dtype=torch.uint8)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected uint8 (B, 3, H, W) images, got {x.dtype} {tuple(x.shape)}")
        features, logits = self.model(from_uint8(x[:, : self.model.in_channels]))
        out = {"features": features.float(), "logits": logits.float()}
        return tuple(out[name] for name in self.features_list)


class VerifiedInceptionV3(FeatureExtractorInceptionV3):
    """torch-fidelity's Inception-v3 built from weights dash checked, never re-read by torch-fidelity.

    `load_inception_state` reads the file once, checks its sha256 against the
    digest dash recorded (`weights_digest`) and loads it with weights_only=True.
    torch-fidelity's constructor always calls torch.load(weights_only=False)
    on what it is given, so it gets bytes dash serialised itself, here, from
    those tensors: nothing it unpickles comes from a file.
    """

    def __init__(self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None,
                 weights_digest: str | None = None, **kwargs: object) -> None:
        if feature_extractor_weights_path is None:
            raise ValueError(f"the {INCEPTION_EXTRACTOR!r} extractor needs feature_extractor_weights_path")
        own = io.BytesIO()
        torch.save(load_inception_state(feature_extractor_weights_path, weights_digest), own)
        own.seek(0)
        super().__init__(name, features_list, feature_extractor_weights_path=own, **kwargs)


for _name, _cls in ((CLASSIFIER_EXTRACTOR, ClassifierFeatures), (INCEPTION_EXTRACTOR, VerifiedInceptionV3)):
    if _name not in FEATURE_EXTRACTORS_REGISTRY:
        torch_fidelity.register_feature_extractor(_name, _cls)


# --- extractors and Inception weights ---------------------------------------------

@dataclass(frozen=True)
class Extractor:
    """One feature space: how results are prefixed, torch-fidelity's name, its weights, a cache id,
    and the sha256 prefix of the weights file when dash checked it (re-checked on every load)."""

    kind: str
    name: str
    weights: str
    cache_id: str
    digest: str | None = None


ExtractorFactory = Callable[[Run, "str | None", bool], Extractor]
#: feature_extractor name -> factory(classifier run, inception weights path, allow download).
EXTRACTORS: Registry[ExtractorFactory] = Registry("feature extractor")


@EXTRACTORS.register("classifier")
def classifier_extractor(classifier: Run, inception_weights: str | None = None,
                         download: bool = False) -> Extractor:
    """The dataset classifier's feature space (`classifier` is its finished run)."""
    return Extractor("classifier", CLASSIFIER_EXTRACTOR, str(classifier.final),
                     f"clf{file_digest(classifier.final)}")


@EXTRACTORS.register("inception")
def inception_extractor(classifier: Run, inception_weights: str | None = None,
                        download: bool = False) -> Extractor:
    """torch-fidelity's Inception-v3 (weights resolved by `inception_weights_path`)."""
    file = inception_weights_path(inception_weights, download)
    digest = file_digest(file)
    load_inception_state(file, digest)  # the file hashed is the file checked
    return Extractor("inception", INCEPTION_EXTRACTOR, str(file), f"incv3{digest}", digest)


def make_extractor(kind: str, classifier: Run, inception_weights: str | None = None,
                   download: bool = False) -> Extractor:
    return EXTRACTORS.get(kind)(classifier, inception_weights, download)


# --- reference set and metrics -------------------------------------------------------

@dataclass(frozen=True)
class Reference:
    """The real images metrics compare against (a dataset's train split, uint8) and their cache name."""

    images: Tensor
    name: str


#: A train split whose largest class holds more than this many times the images of its
#: smallest is not compared with as it is: the samples are class-balanced
#: (`balanced_labels`), so the reference is drawn balanced too.
IMBALANCE = 1.25


def evened(y: Tensor, at_most: int | None = None, seed: int = 0) -> Tensor | None:
    """Sorted indices of an equal number of rows of every class of labels `y` (N,) (the
    smallest class's count, within `at_most`), where the classes are imbalanced
    (`IMBALANCE`) and that leaves `MIN_REFERENCE` rows; else None (take the rows as they are)."""
    counts = torch.bincount(y)
    counts = counts[counts > 0]
    n = len(counts) * int(counts.min())
    if at_most is not None:
        n = min(n, at_most)
    if counts.max() <= IMBALANCE * counts.min() or n < MIN_REFERENCE:
        return None
    return balanced_subset(y, n, torch.Generator().manual_seed(seed))


def reference_set(data: DataConfig, max_reference: int | None = None, seed: int = 0,
                  train: Split | None = None) -> Reference:
    """The train split of `data` as uint8, or a class-balanced subset of at most `max_reference`
    images drawn with `seed`; named by dataset, size, the subset and a hash of the data config.
    An imbalanced split (`IMBALANCE`) gives the same number of images of every class (the
    smallest class's count, within `max_reference`): against natural proportions a perfect
    class-balanced generator would score a FID of the label mix alone. `train`: that split,
    when the caller has loaded `data` already (else it is loaded here)."""
    fields = data_identity(to_dict(data))
    train = load_dataset(data).train if train is None else train
    name = f"{data.name}{data.image_size}-train-{config_hash(fields)}"
    keep = evened(train.y, max_reference, seed)
    if keep is not None:
        return Reference(to_uint8(train.x[keep]), f"{name}-bal{len(keep)}s{seed}")
    if max_reference is not None and max_reference < len(train):
        keep = balanced_subset(train.y, max_reference, torch.Generator().manual_seed(seed))
        return Reference(to_uint8(train.x[keep]), f"{name}-ref{max_reference}s{seed}")
    return Reference(to_uint8(train.x), name)


def fidelity_cache_root() -> Path:
    """dash's cache of reference features/statistics: `<runs>/fidelity-cache`."""
    return runs_root() / "fidelity-cache"


def kid_subsets(n: int) -> int:
    """100 subsets of 1000 (the standard) when N > 1000; 10 otherwise.

    Subsets hold min(1000, N, N_ref) images. With N <= 1000 and a reference at least as
    large, every subset of the generated set is the whole set, so more subsets only
    resample the reference (with a smaller reference they draw N_ref of the N
    generated images each, and KID is noisier); each costs three N x N cubic kernels
    (~30 ms at N = 500 on one CPU thread), which 100 times would dominate.
    """
    return 100 if n > KID_SUBSET_SIZE else 10


def isc_splits(n: int) -> int:
    """10 splits (the standard) when each keeps >= 10 samples; fewer for small N."""
    return max(1, min(10, n // 10))


def feature_extractor(extractor: Extractor, cuda: bool) -> FeatureExtractorBase:
    """The torch-fidelity extractor of `extractor`, with the features every metric reads."""
    cls = FEATURE_EXTRACTORS_REGISTRY[extractor.name]
    layers = sorted({cls.get_default_feature_layer_for_metric(m) for m in METRICS})
    extra = {"weights_digest": extractor.digest} if extractor.digest else {}
    fe = cls(extractor.name, layers, feature_extractor_weights_path=extractor.weights, **extra)
    fe.requires_grad_(False).eval()
    return fe.cuda() if cuda else fe


def features(images: Tensor, fe: FeatureExtractorBase, cuda: bool) -> dict[str, Tensor]:
    """layer name -> (N, D) float32 features of uint8 `images` (N, C, H, W)."""
    return dict(get_featuresdict_from_dataset(ImageSet(images), fe, FEATURE_BATCH, cuda, True, False))


def reference_cache_file(reference: Reference, extractor: Extractor, cache_root: str | Path) -> Path:
    return Path(cache_root) / f"{reference.name}-{extractor.cache_id}-v{CACHE_VERSION}.pt"


def _warn(message: str) -> None:
    print(f"dash: warning: {message}", file=sys.stderr, flush=True)


def read_reference_cache(path: Path, n_ref: int, layers: list[str]) -> dict[str, Tensor] | None:
    """A cache file's tensors, or None (with one warning) when it is unreadable or stale.

    Loaded with weights_only=True: a file holding anything but tensors and plain
    containers is refused (CheckpointError), never unpickled.
    """
    try:
        obj = load_checkpoint(path, what="the fidelity cache file",
                              remedy="dash never writes such a file; delete it (dash recomputes it) and "
                                     "check who wrote it")
    except UnreadableCheckpointError as err:
        _warn(f"discarding unreadable fidelity cache file {path} ({str(err).split(': ', 1)[-1]}); "
              f"recomputing it")
        return None
    wanted = [*layers, "fid_mu", "fid_sigma"]
    if not (isinstance(obj, dict) and obj.get("version") == CACHE_VERSION
            and all(isinstance(obj.get(k), Tensor) for k in wanted)
            and all(obj[k].ndim == 2 and len(obj[k]) == n_ref for k in layers)):
        _warn(f"discarding fidelity cache file {path} (not this version's reference features for "
              f"{n_ref} images); recomputing it")
        return None
    return {k: obj[k] for k in wanted}


def reference_features(reference: Reference, extractor: Extractor, fe: FeatureExtractorBase, cuda: bool,
                       cache_root: str | Path, fid_layer: str) -> dict[str, Tensor]:
    """The reference's features per layer, plus its FID statistics "fid_mu" (D,) and "fid_sigma" (D, D).

    Read from dash's cache file when it is valid, else computed and written
    there (atomically: concurrent evaluations never see half a file).
    """
    path = reference_cache_file(reference, extractor, cache_root)
    if path.is_file():
        cached = read_reference_cache(path, len(reference.images), list(fe.features_list))
        if cached is not None:
            return cached
    out = features(reference.images, fe, cuda)
    stats = fid_features_to_statistics(out[fid_layer])
    out.update(fid_mu=torch.from_numpy(stats["mu"]), fid_sigma=torch.from_numpy(stats["sigma"]))
    remove_stale_cache_temps(path.parent)
    atomic_torch_save({"version": CACHE_VERSION, **out}, path)
    return out


#: A cache temp file this old (seconds) is stale: writing one takes seconds, and concurrent
#: evaluations share the folder, so younger ones may still be being written.
STALE_TEMP_AGE_S = 24 * 3600


def remove_stale_cache_temps(folder: Path, now: float | None = None) -> list[Path]:
    """Delete the `.*.tmp` files a killed cache write left in `folder`, once older than
    `STALE_TEMP_AGE_S` (a full-size feature file each)."""
    now = time.time() if now is None else now
    stale = [p for p in folder.glob(".*.tmp") if now - p.stat().st_mtime > STALE_TEMP_AGE_S]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def fidelity_metrics(samples: Tensor, reference: Reference, extractor: Extractor,
                     device: torch.device | str = "cpu", cache_root: str | Path | None = None,
                     metrics: tuple[str, ...] = IMAGE_METRICS) -> dict[str, float]:
    """FID, IS, KID, precision/recall of uint8 `samples` (N, C, H, W) against `reference`.

    KID subsets hold min(1000, N, N_ref) images (`kid_subsets`); PRC uses k = 3 neighbours,
    so N >= 5 is required. Returns the `METRIC_KEYS` of the groups in `metrics` (all four by
    default; {} when it is empty), as torch_fidelity.calculate_metrics would (same functions
    and settings), with the reference from dash's safe cache.
    """
    if not metrics:
        return {}
    n, n_ref = len(samples), len(reference.images)
    if min(n, n_ref) < PRC_NEIGHBORHOOD + 2:
        raise ConfigError(f"{min(n, n_ref)} images are too few for the metrics; use at least "
                          f"{PRC_NEIGHBORHOOD + 2} (precision/recall uses k = {PRC_NEIGHBORHOOD} neighbours)")
    cache = Path(cache_root) if cache_root is not None else fidelity_cache_root()
    cuda = torch.device(device).type == "cuda"
    fe = feature_extractor(extractor, cuda)
    layer = {m: fe.get_default_feature_layer_for_metric(m) for m in METRICS}
    real = reference_features(reference, extractor, fe, cuda, cache, layer["fid"])
    fake = features(samples, fe, cuda)
    settings = {"isc_splits": isc_splits(n), "samples_shuffle": True, "rng_seed": RNG_SEED,
                "kid_subsets": kid_subsets(n), "kid_subset_size": min(KID_SUBSET_SIZE, n, n_ref),
                "prc_neighborhood": PRC_NEIGHBORHOOD, "prc_batch_size": PRC_BATCH, "save_cpu_ram": True,
                "verbose": False}
    groups = {
        "isc": lambda: isc_featuresdict_to_metric(fake, layer["isc"], **settings),
        "fid": lambda: fid_statistics_to_metric(
            fid_features_to_statistics(fake[layer["fid"]]),
            {"mu": real["fid_mu"].numpy(), "sigma": real["fid_sigma"].numpy()}, False),
        "kid": lambda: kid_featuresdict_to_metric(fake, real, layer["kid"], **settings),
        "prc": lambda: prc_featuresdict_to_metric(fake, real, layer["prc"], **settings),
    }
    with system_heap():  # the metrics' distance blocks fragment the tuned heap (allocator.py)
        raw = {k: v for m in metrics for k, v in groups[m]().items()}
    return {short: float(raw[long]) for long, short in METRIC_NAMES.items() if long in raw}
