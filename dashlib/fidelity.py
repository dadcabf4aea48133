"""torch-fidelity glue: image sets, feature extractors, the reference cache, the metrics.

Every image metric goes through `torch_fidelity.calculate_metrics`:

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
(dataset, extractor) by torch-fidelity and cached under `<runs>/fidelity-cache/`.
Generated images go in as uint8 (3, H, W) tensors; one-channel images are
repeated to three (the classifier reads one back).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch_fidelity
from torch import Tensor
from torch.utils.data import Dataset as TorchDataset
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from dashlib.classifier import load_classifier
from dashlib.config import IMAGE_METRICS, ConfigError, DataConfig, to_dict
from dashlib.data import balanced_subset, load_dataset, to_uint8
from dashlib.images import save_png
from dashlib.inception import inception_weights_path
from dashlib.registry import Registry
from dashlib.runs import Run, config_hash, runs_root

CLASSIFIER_EXTRACTOR = "dash-classifier"
INCEPTION_EXTRACTOR = "inception-v3-compat"
PRC_NEIGHBORHOOD = 3
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


if CLASSIFIER_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
    torch_fidelity.register_feature_extractor(CLASSIFIER_EXTRACTOR, ClassifierFeatures)


# --- extractors and Inception weights ---------------------------------------------

@dataclass(frozen=True)
class Extractor:
    """One feature space: how results are prefixed, torch-fidelity's name, its weights, a cache id."""

    kind: str
    name: str
    weights: str
    cache_id: str


def file_digest(path: str | Path, length: int = 16) -> str:
    """A short sha256 of a file's content (weights files identify caches by it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]


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
    return Extractor("inception", INCEPTION_EXTRACTOR, str(file), f"incv3{file_digest(file)}")


def make_extractor(kind: str, classifier: Run, inception_weights: str | None = None,
                   download: bool = False) -> Extractor:
    return EXTRACTORS.get(kind)(classifier, inception_weights, download)


# --- reference set and metrics -------------------------------------------------------

@dataclass(frozen=True)
class Reference:
    """The real images metrics compare against (a dataset's train split, uint8) and their cache name."""

    images: Tensor
    name: str


def reference_set(data: DataConfig, max_reference: int | None = None, seed: int = 0) -> Reference:
    """The train split of `data` as uint8, or a class-balanced subset of at most `max_reference`
    images drawn with `seed`; named by dataset, size, the subset and a hash of the data config."""
    fields = {k: v for k, v in to_dict(data).items() if k not in ("data_root", "download")}
    train = load_dataset(data).train
    name = f"{data.name}{data.image_size}-train-{config_hash(fields)}"
    if max_reference is not None and max_reference < len(train):
        keep = balanced_subset(train.y, max_reference, torch.Generator().manual_seed(seed))
        return Reference(to_uint8(train.x[keep]), f"{name}-ref{max_reference}s{seed}")
    return Reference(to_uint8(train.x), name)


def fidelity_cache_root() -> Path:
    """torch-fidelity's cache for reference features/statistics: `<runs>/fidelity-cache`."""
    return runs_root() / "fidelity-cache"


def kid_subsets(n: int) -> int:
    """100 subsets of 1000 (the standard) when N > 1000; 10 otherwise.

    With N <= 1000 every subset of the generated set is the whole set, so more
    subsets only resample the reference; each costs three N x N cubic kernels
    (~30 ms at N = 500 on one CPU thread), which 100 times would dominate.
    """
    return 100 if n > KID_SUBSET_SIZE else 10


def isc_splits(n: int) -> int:
    """10 splits (the standard) when each keeps >= 10 samples; fewer for small N."""
    return max(1, min(10, n // 10))


def fidelity_metrics(samples: Tensor, reference: Reference, extractor: Extractor,
                     device: torch.device | str = "cpu", cache_root: str | Path | None = None,
                     metrics: tuple[str, ...] = IMAGE_METRICS) -> dict[str, float]:
    """FID, IS, KID, precision/recall of uint8 `samples` (N, C, H, W) against `reference`.

    KID subsets hold min(1000, N, N_ref) images (`kid_subsets`); PRC uses k = 3 neighbours,
    so N >= 5 is required. Returns the `METRIC_KEYS` of the groups in `metrics`
    (all four by default; {} when `metrics` is empty).
    """
    if not metrics:
        return {}
    n, n_ref = len(samples), len(reference.images)
    if min(n, n_ref) < PRC_NEIGHBORHOOD + 2:
        raise ConfigError(f"{min(n, n_ref)} images are too few for the metrics; use at least "
                          f"{PRC_NEIGHBORHOOD + 2} (precision/recall uses k = {PRC_NEIGHBORHOOD} neighbours)")
    cache = Path(cache_root) if cache_root is not None else fidelity_cache_root()
    cache.mkdir(parents=True, exist_ok=True)
    raw = torch_fidelity.calculate_metrics(
        input1=ImageSet(samples), input2=ImageSet(reference.images),
        input2_cache_name=f"{reference.name}-{extractor.cache_id}", cache_root=str(cache), cache=True,
        feature_extractor=extractor.name, feature_extractor_weights_path=extractor.weights,
        fid="fid" in metrics, isc="isc" in metrics, kid="kid" in metrics, prc="prc" in metrics,
        isc_splits=isc_splits(n),
        kid_subsets=kid_subsets(n), kid_subset_size=min(KID_SUBSET_SIZE, n, n_ref),
        prc_neighborhood=PRC_NEIGHBORHOOD, prc_batch_size=PRC_BATCH, rng_seed=RNG_SEED,
        batch_size=FEATURE_BATCH,
        cuda=torch.device(device).type == "cuda", save_cpu_ram=True, verbose=False)
    return {short: float(raw[long]) for long, short in METRIC_NAMES.items() if long in raw}
