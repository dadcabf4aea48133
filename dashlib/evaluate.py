"""Sample quality of trained runs: samples, torch-fidelity metrics, guidance fidelity, sweeps.

One *cell* is `n` class-balanced samples (labels 0, 1, ..., K-1, 0, ...) of one
run at one guidance setting (constant w or TAG), DDIM step count and seed,
drawn with the run's preset sampler (DDIM, eta = 0, docs/paper.md method 4). Per cell:

* FID, IS, KID, precision/recall through torch-fidelity (`dashlib.fidelity`)
  in the dataset classifier's feature space, and in Inception-v3's too when
  `EvalConfig.feature_extractor == "inception"`; keys are prefixed
  `classifier_` / `inception_`;
* guidance fidelity: the classifier's accuracy on the samples drawn for each
  requested class (`accuracy`, `accuracy_per_class`).

Cells are cached in the run folder (`eval/cells/<key>.json`, and with
`keep_samples` the uint8 samples in `eval/samples/<key>.pt`), keyed by a hash
of everything that determines them (final.pt's content, sampler settings, N,
seed, feature spaces), so reruns and overlapping sweeps reuse them. A model
without a null branch (single-head, cfg=False) ignores the guidance scale, so
its cells at different w share one sample set (`guidance_applied` is false).

`evaluate_runs` spreads the distinct cells over single-threaded worker
processes on CPU (on these small models two 1-thread processes beat one
2-thread process) and returns an `EvalReport`: tidy rows, one per run x
guidance x steps x seed, and a summary with the mean and sample standard
deviation (ddof = 1; null for one seed) over seeds.
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import sys
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dashlib import bars
from dashlib.artifacts import Artifact, load_artifact
from dashlib.classifier import Classifier, load_classifier, predict, train_classifier
from dashlib.config import ConfigError, DataConfig, EvalConfig, Preset, SampleConfig, from_dict, to_dict
from dashlib.data import LOCATION_FIELDS, is_user_folder, load_dataset, to_uint8
from dashlib.device import check_batch_fits, resolve_device
from dashlib.errors import EvaluationError
from dashlib.fidelity import (
    METRIC_KEYS,
    PRC_NEIGHBORHOOD,
    Extractor,
    Reference,
    evened,
    fidelity_cache_root,
    fidelity_metrics,
    file_digest,
    from_uint8,
    make_extractor,
    reference_set,
)
from dashlib.generate import generate
from dashlib.guidance import Guidance, one_branch
from dashlib.inception import check_weights
from dashlib.io import (
    CorruptFileError,
    absolute,
    atomic_torch_save,
    atomic_write_json,
    load_checkpoint,
    read_json_object,
)
from dashlib.runs import Run, RunStateError, config_hash, map_data
from dashlib.sampling import balanced_labels
from dashlib.threads import use_threads
from dashlib.unet import count_params

#: Bumped when the way a cell is computed changes, so cached cells are recomputed.
EVAL_VERSION = 1
MAX_LOADED_MODELS = 2
MIN_SAMPLES = PRC_NEIGHBORHOOD + 2


# --- what is evaluated ------------------------------------------------------------

@dataclass(frozen=True)
class RunSpec:
    """What evaluation needs to know about one finished run (resolved once, in the parent)."""

    path: str
    name: str
    kind: str
    method: str
    preset: str
    data: dict[str, Any]
    sample: dict[str, Any]
    digest: str
    cfg: bool
    num_classes: int
    params: int
    params_nonzero: int
    T: int


@dataclass(frozen=True)
class Cell:
    """n samples of one run at one guidance setting, step count and seed."""

    run: RunSpec
    guidance: Guidance
    steps: int
    seed: int
    n: int

    def sample_config(self) -> SampleConfig:
        """The run's sampler at this cell's steps, its guidance fields set to the cell's."""
        base = from_dict(SampleConfig, self.run.sample)
        return self.guidance.in_config(dataclasses.replace(base, steps=self.steps))

    def samples_key(self) -> str:
        sample = to_dict(self.sample_config())
        if not self.run.cfg:  # no null branch: the scale never enters the sampler
            sample.update(guidance="ignored", w=None)
        return config_hash({"final": self.run.digest, "sample": sample, "n": self.n, "seed": self.seed,
                            "labels": "balanced"})

    def key(self, extractors: Sequence[Extractor], reference: str, metrics: Sequence[str]) -> str:
        return config_hash({"samples": self.samples_key(), "extractors": [e.cache_id for e in extractors],
                            "reference": reference, "metrics": list(metrics), "version": EVAL_VERSION})


@dataclass(frozen=True)
class Task:
    """A cell plus everything a worker process needs to evaluate it (picklable)."""

    cell: Cell
    extractors: tuple[Extractor, ...]
    classifier: str
    reference: str
    cache_root: str
    device: str
    keep_samples: bool
    max_reference: int
    reference_seed: int
    metrics: tuple[str, ...]

    @property
    def key(self) -> str:
        return self.cell.key(self.extractors, self.reference, self.metrics)

    def describe(self) -> str:
        c = self.cell
        return (f"{c.run.name} at guidance {c.guidance.label}, {c.steps} DDIM steps, seed {c.seed}, "
                f"{c.n} samples")

    @property
    def cell_file(self) -> Path:
        return Path(self.cell.run.path) / "eval" / "cells" / f"{self.key}.json"

    @property
    def samples_file(self) -> Path:
        return Path(self.cell.run.path) / "eval" / "samples" / f"{self.cell.samples_key()}.pt"


def run_preset(run: Run | str | Path) -> str:
    """The preset a run was made with: from config.json, final.pt's config or results.json."""
    run = (run if isinstance(run, Run) else Run(Path(run))).require_folder()
    for source in (run.config, run.results):
        if source.is_file():
            name = read_json_object(source).get("preset")
            if name:
                return str(name)
    if run.final.is_file():
        name = load_checkpoint(run.final).get("config", {}).get("preset")
        if name:
            return str(name)
    raise RunStateError(f"{run.path}: cannot tell which preset the run belongs to (no 'preset' in its "
                        f"config.json, results.json or final.pt); is it a dash run folder?")


def run_spec(run: Run | str | Path, sample: SampleConfig | None = None,
             data_root: str | None = None, download: bool = False) -> RunSpec:
    """Resolve a finished run: its preset, data, sampler settings, size and weights digest."""
    from dashlib.presets import get_preset

    run = run if isinstance(run, Run) else Run(Path(run))
    if not run.final.is_file():
        raise RunStateError(f"{run.path} has no final.pt: only finished runs can be evaluated")
    preset_name = run_preset(run)
    preset = get_preset(preset_name)
    artifact = load_artifact(run)
    results = read_json_object(run.results) if run.results.is_file() else {}
    kind = str(load_checkpoint(run.final).get("kind", "model"))
    data = from_dict(DataConfig, artifact.config["data"]) if "data" in artifact.config else preset.data
    own_sample = artifact.config.get("sample")
    sample = sample or (from_dict(SampleConfig, own_sample) if own_sample else preset.sample)
    if data_root is not None:
        data = dataclasses.replace(data, data_root=data_root)
    if download:
        data = dataclasses.replace(data, download=True)
    check_run_data(run, data)
    model = artifact.model
    return RunSpec(
        # absolute: the rows and reports name the run wherever they are read from (as the CLI does)
        path=str(absolute(run.path)), name=run.path.name, kind=kind,
        method=str(artifact.extra.get("method") or results.get("method") or kind),
        preset=preset_name, data=to_dict(data), sample=to_dict(sample),
        digest=file_digest(run.final), cfg=bool(model.config.cfg), num_classes=model.config.num_classes,
        params=count_params(model), params_nonzero=count_params(model, nonzero=True),
        T=artifact.diffusion.T)


#: the `--set` key prefixes `dash evaluate` takes (and `WHERE_DATA`: where the data is now)
EVALUATION_KEYS = ("eval.", "sample.")
WHERE_DATA = tuple(f"data.{field}" for field in LOCATION_FIELDS)


def check_run_keys(run: Run, overrides: Mapping[str, Any], prefixes: tuple[str, ...], what: str) -> None:
    """Refuse `--set` keys a finished run fixes: all but `prefixes` and where the data is."""
    fixed = sorted(k for k in overrides if not k.startswith(prefixes) and k not in WHERE_DATA)
    if fixed:
        takes = " and ".join(f"{p}*" for p in prefixes)
        raise ConfigError(f"{', '.join(fixed)}: the run {run.path} fixes these ({what} takes {takes} "
                          f"keys, and --data-root); train another run to change them")


def evaluation_settings(run: Run | str | Path, overrides: Mapping[str, Any]) -> tuple[Preset, SampleConfig]:
    """(preset, sampler) to evaluate `run` with: the preset it was made with, on its own
    data (sized for its classes, so at least one sample per class) and its own sampler
    settings (a single-head student's), with `eval.*` and `sample.*` overrides and
    `data.data_root` and `data.download` for data that has moved or is not here yet. Any
    other key is refused: the run fixes it.
    The preset keeps its registered image size and models (a run trained at another size
    may have needed model changes that only its own files hold): evaluation reads the
    run's models and data from the run (`run_spec`), and this preset for `eval` and
    `sample` alone."""
    from dashlib.config import override
    from dashlib.presets import get_preset

    run = run if isinstance(run, Run) else Run(Path(run))
    name = run_preset(run)
    check_run_keys(run, overrides, EVALUATION_KEYS, "evaluation")
    config = read_json_object(run.config) if run.config.is_file() else {}
    data = {f"data.{k}": v for k, v in config.get("data", {}).items() if k != "image_size"}
    preset = get_preset(name, **{**data, **overrides})
    own = config.get("sample")
    sample_keys = {k.removeprefix("sample."): v for k, v in overrides.items() if k.startswith("sample.")}
    sample = override(from_dict(SampleConfig, own), **sample_keys) if own else preset.sample
    return preset, sample


def check_run_data(run: Run, data: DataConfig) -> None:
    """Refuse data other than what the run was trained on, where the config does not fix
    the data (an image folder, named by a content fingerprint): the run folder's name
    ends in the hash of its config (`dashlib.runs.run_id`, the data's fingerprint in it),
    so the config with `data` in place must hash to it again."""
    from dashlib.data import DATASETS
    from dashlib.runs import run_id

    if data.name not in DATASETS or DATASETS.get(data.name).fingerprint is None or not run.config.is_file():
        return
    payload = map_data(read_json_object(run.config), lambda _: to_dict(data))
    if not run.path.name.endswith("-" + run_id(payload)):
        raise ConfigError(f"the images under {data.data_root} are not those {run.path} was trained on "
                          f"(their names, sizes or contents differ, or the run was made by an older "
                          f"dash); pass the folder it was trained on with --data-root")


def cells(specs: Iterable[RunSpec], guidance: Sequence[Guidance | str | float], steps: Sequence[int],
          seeds: Sequence[int], n: int) -> list[Cell]:
    """Every (run, guidance, steps, seed) combination, in that nesting order; each guidance
    spec ("tag", "3", ...) is parsed against the run's sampler (its TAG parameters)."""
    out = []
    for spec in specs:
        base = from_dict(SampleConfig, spec.sample)
        # one cell per setting: "3" and "3.0", or a step count given twice, would count as seeds
        settings = list(dict.fromkeys(Guidance.parse(g, base) for g in guidance))
        out += [Cell(spec, g, s, seed, n) for g in settings for s in dict.fromkeys(steps)
                for seed in dict.fromkeys(seeds)]
    return out


# --- evaluating one cell ---------------------------------------------------------------

def sample_images(artifact: Artifact, config: SampleConfig, n: int, seed: int,
                  device: torch.device | str = "cpu",
                  guidance: Guidance | None = None) -> tuple[Tensor, Tensor]:
    """(uint8 samples (n, C, H, W), labels (n,)): n samples balanced over the classes, seeded,
    guided by `guidance` (default: `config`'s)."""
    labels = balanced_labels(n, artifact.model.config.num_classes)
    x = generate(artifact, config, labels, seed, device, guidance=guidance)
    if not bool(torch.isfinite(x).all()):  # to_uint8 would score NaN as black pixels
        raise EvaluationError(f"{artifact.run.path} sampled non-finite "
                              f"values (guidance {(guidance or Guidance.from_config(config)).label}, "
                              f"{config.steps} steps, seed {seed}): its weights or this guidance scale "
                              f"overflow; nothing from this cell would be a real score")
    return to_uint8(x), labels


def guidance_fidelity(classifier: Classifier, images: Tensor, labels: Tensor,
                      num_classes: int) -> dict[str, Any]:
    """The classifier's accuracy on samples (uint8 (N, C, H, W)) drawn for `labels` (N,).

    `accuracy_per_class[k]` is over the samples requested as class k (NaN if none).
    Floats are refused: `generate`'s [-1, 1] samples read as uint8 would score chance.
    """
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 images (N, C, H, W) in 0-255, got {images.dtype} "
                         f"{tuple(images.shape)}; convert generate()'s [-1, 1] samples with "
                         f"dashlib.data.to_uint8")
    if labels.shape != images.shape[:1]:
        raise ValueError(f"expected one label per image: {tuple(labels.shape)} labels for "
                         f"{images.shape[0]} images")
    correct = (predict(classifier, from_uint8(images)) == labels).float()
    per_class = [float(correct[labels == k].mean()) if bool((labels == k).any()) else math.nan
                 for k in range(num_classes)]
    return {"accuracy": float(correct.mean()), "accuracy_per_class": per_class}


class CellEvaluator:
    """Evaluates tasks, keeping a few loaded models, classifiers and reference sets."""

    def __init__(self) -> None:
        self.artifacts: OrderedDict[str, Artifact] = OrderedDict()
        self.classifiers: dict[str, Classifier] = {}
        self.references: dict[str, Reference] = {}

    def artifact(self, path: str, device: torch.device) -> Artifact:
        if path not in self.artifacts:
            self.artifacts[path] = load_artifact(path, device=device)
            while len(self.artifacts) > MAX_LOADED_MODELS:
                self.artifacts.popitem(last=False)
        self.artifacts.move_to_end(path)
        return self.artifacts[path]

    def classifier(self, path: str, device: torch.device) -> Classifier:
        if path not in self.classifiers:
            self.classifiers[path] = load_classifier(path, device)
        return self.classifiers[path]

    def reference(self, data: dict[str, Any], max_reference: int, seed: int) -> Reference:
        name = config_hash({"data": data, "max": max_reference, "seed": seed})
        if name not in self.references:
            self.references[name] = reference_set(from_dict(DataConfig, data), max_reference, seed)
        return self.references[name]

    def samples(self, task: Task, device: torch.device) -> tuple[Tensor, Tensor, float]:
        """(uint8 samples, labels, seconds spent sampling; 0 when read from the cache)."""
        if task.keep_samples and task.samples_file.is_file():
            saved = load_checkpoint(task.samples_file)
            return saved["images"], saved["labels"], 0.0
        start = time.perf_counter()
        artifact = self.artifact(task.cell.run.path, device)
        cell = task.cell
        images, labels = sample_images(artifact, cell.sample_config(), cell.n, cell.seed, device,
                                       cell.guidance)
        elapsed = time.perf_counter() - start
        if task.keep_samples:
            atomic_torch_save({"images": images, "labels": labels}, task.samples_file)
        return images, labels, elapsed

    def measure(self, task: Task) -> dict[str, Any]:
        """Metrics of one task's cell: from its cache file, or computed and cached."""
        cached = cached_cell(task)
        if cached is not None:
            return {**cached, "cached": True}
        device = resolve_device(task.device)
        images, labels, sample_time = self.samples(task, device)
        start = time.perf_counter()
        reference = self.reference(task.cell.run.data, task.max_reference, task.reference_seed)
        metrics: dict[str, Any] = {}
        for extractor in task.extractors:
            scores = fidelity_metrics(images, reference, extractor, device, task.cache_root, task.metrics)
            metrics.update({f"{extractor.kind}_{k}": v for k, v in scores.items()})
        metrics.update(guidance_fidelity(self.classifier(task.classifier, device), images, labels,
                                         task.cell.run.num_classes))
        result = {"key": task.key, "samples_key": task.cell.samples_key(), **metrics,
                  "sample_time_s": sample_time, "metric_time_s": time.perf_counter() - start}
        atomic_write_json(task.cell_file, result)
        return {**result, "cached": False}


def cached_cell(task: Task) -> dict[str, Any] | None:
    """A task's cached metrics, or None when missing, for another key, or corrupt (recomputed)."""
    if not task.cell_file.is_file():
        return None
    try:
        cached = read_json_object(task.cell_file)
    except CorruptFileError:
        return None
    return cached if cached.get("key") == task.key else None


_WORKER: CellEvaluator | None = None
_LIMITS: object = None  # keeps the worker's thread-pool limits alive


def _init_worker(threads: int, parent: int) -> None:
    """Single-threaded torch and BLAS (numpy's, used by the metrics): workers never oversubscribe;
    and gone with `parent` (`dashlib.workers`)."""
    from threadpoolctl import threadpool_limits

    from dashlib.workers import die_with_parent

    global _WORKER, _LIMITS
    die_with_parent(parent)
    use_threads(threads)
    _LIMITS = threadpool_limits(threads)
    _WORKER = CellEvaluator()


def _measure_in_worker(task: Task) -> dict[str, Any]:
    assert _WORKER is not None, "worker not initialised"
    return _WORKER.measure(task)


# --- many runs ------------------------------------------------------------------------------

@dataclass
class EvalReport:
    """Tidy results: `rows` (one per run x guidance x steps x seed), `summary` (over seeds), `meta`."""

    rows: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    meta: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"meta": self.meta, "summary": self.summary, "rows": self.rows}

    def write(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_dict())


def row(cell: Cell, measured: dict[str, Any], primary: str) -> dict[str, Any]:
    """The tidy row of one cell: identity columns, its measurements, and the primary
    feature space's metrics again without prefix (`fid` = `<primary>_fid`, ...)."""
    spec = cell.run
    ident = {"run": spec.path, "name": spec.name, "kind": spec.kind, "method": spec.method,
             "preset": spec.preset, "guidance": cell.guidance.label,
             "w": cell.guidance.constant, "guidance_applied": spec.cfg,
             "ddim_steps": cell.steps, "seed": cell.seed, "n": cell.n, "params": spec.params,
             "params_nonzero": spec.params_nonzero}
    values = {k: v for k, v in measured.items() if k not in ("key", "samples_key")}
    # a metric left out of EvalConfig.metrics is null, here and in every feature space
    return {**ident, **{k: values.get(f"{primary}_{k}") for k in METRIC_KEYS}, **values}


def metric_columns(extractors: Sequence[Extractor]) -> list[str]:
    return list(METRIC_KEYS) + [f"{e.kind}_{k}" for e in extractors for k in METRIC_KEYS] + ["accuracy"]


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else math.nan


def summarize(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> list[dict[str, Any]]:
    """Mean and sample std (ddof = 1) over seeds of every column, per (run, guidance, ddim_steps)."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["run"], r["guidance"], r["ddim_steps"]), []).append(r)
    out = []
    for group in groups.values():
        first = group[0]
        entry = {k: first[k] for k in ("run", "name", "kind", "method", "preset", "guidance", "w",
                                       "guidance_applied", "ddim_steps", "n", "params", "params_nonzero")}
        entry["seeds"] = [r["seed"] for r in group]
        entry["classifier_test_accuracy"] = first.get("classifier_test_accuracy")
        for col in columns:
            values = [float(r[col]) for r in group if r.get(col) is not None]
            entry[f"{col}_mean"] = statistics.fmean(values) if values else None
            entry[f"{col}_std"] = _std(values) if values else None
        per_class = torch.tensor([r["accuracy_per_class"] for r in group], dtype=torch.float64)
        entry["accuracy_per_class_mean"] = per_class.mean(0).tolist()
        out.append(entry)
    return out


def default_workers(device: torch.device, tasks: int) -> int:
    """One process on CUDA; on CPU one single-threaded process per core (at most one per task)."""
    if device.type == "cuda":
        return 1
    return max(1, min(os.cpu_count() or 1, tasks))


@dataclass(frozen=True)
class Space:
    """Per dataset: its classifier run, the feature spaces, the reference set's cache name."""

    classifier: Run
    extractors: tuple[Extractor, ...]
    reference: str
    real: dict[str, dict[str, float]]

    def describe(self) -> dict[str, Any]:
        """The classifier's run and data, its held-out accuracy, plain and class-balanced
        (`test_accuracy` is the lower of the two, what `dashlib.adequacy` judges by: the
        samples it classifies are class-balanced), and the real test split's metrics."""
        results = self.classifier.read_results()
        plain, balanced = results.get("test_accuracy"), results.get("balanced_test_accuracy")
        judged = min(plain, balanced) if plain is not None and balanced is not None else plain
        return {"run": str(self.classifier.path), "dataset": results.get("dataset"),
                "test_accuracy": judged, "plain_test_accuracy": plain, "balanced_test_accuracy": balanced,
                "test_split_metrics": self.real}


def prepare_spaces(specs: Sequence[RunSpec], config: EvalConfig, device: torch.device,
                   progress: bool) -> dict[str, Space]:
    """data-config hash -> Space, for every dataset the runs use.

    Trains (or reuses) the classifier and fills the reference cache here, in
    the parent, so worker processes never race to write them. Doing so it
    scores the real test split against the train split: the floor a perfect
    model would reach at N = len(test) (`Space.real`, in the results' meta).
    """
    out = {}
    for key, data_dict in {config_hash(s.data): s.data for s in specs}.items():
        data = from_dict(DataConfig, data_dict)
        clf = train_classifier(data, config, device=str(device), progress=progress)
        kinds = ["classifier"] + (["inception"] if config.feature_extractor == "inception" else [])
        extractors = tuple(make_extractor(k, clf, config.inception_weights, config.download_weights)
                           for k in kinds)
        dataset = load_dataset(data)  # once: a folder or CIFAR is decoded in seconds, not free
        reference = reference_set(data, config.max_reference, config.reference_seed, dataset.train)
        check_reference_size(data, len(reference.images))
        split = dataset.test
        even = evened(split.y, seed=config.reference_seed)  # as balanced as the samples and reference
        test = to_uint8(split.x if even is None else split.x[even])
        real = real_floor(test, reference, extractors, config, device)
        out[key] = Space(clf, extractors, reference.name, real)
    return out


def check_max_reference(config: EvalConfig, classes: int) -> None:
    """Refuse a reference cap below the class count: its class-balanced subset would leave
    classes out of every metric."""
    if config.max_reference is not None and config.max_reference < classes:
        raise ConfigError(f"EvalConfig.max_reference = {config.max_reference} is too small: the reference "
                          f"set would leave out classes of the {classes}; give at least {classes}")


def check_reference_size(data: DataConfig, n: int | None = None) -> None:
    """Refuse a reference set (`n` images; by default the train split of a dataset whose
    content the config does not fix, a user's image folder) too small for the metrics."""
    if n is None:
        if not is_user_folder(data.name):
            return  # the other registered datasets are fixed and large enough: never loaded here
        n = len(load_dataset(data).train)
    if n < MIN_SAMPLES:
        raise ConfigError(f"the reference set (the train split of {data.name}) holds {n} images; the "
                          f"metrics need at least {MIN_SAMPLES}: add images, or hold fewer out "
                          f"(data.holdout_fraction; a folder with its own test/ split: move images "
                          f"from test/ to train/)")


def real_floor(test: Tensor, reference: Reference, extractors: Sequence[Extractor], config: EvalConfig,
               device: torch.device) -> dict[str, dict[str, float]]:
    """The real test split (N, C, H, W) uint8 scored against the reference, per feature space:
    {} (with a note) when the split is too small to score, which only loses this reference line."""
    if len(test) < MIN_SAMPLES:
        print(f"dash: note: the test split holds {len(test)} images, too few to score as the real-data "
              f"floor (at least {MIN_SAMPLES}); evaluating without it", file=sys.stderr)
        return {}
    return {e.kind: fidelity_metrics(test, reference, e, device, fidelity_cache_root(), config.metrics)
            for e in extractors}


def check_request(specs: Sequence[RunSpec], config: EvalConfig, steps: Sequence[int]) -> None:
    """Refuse, before any work, what cannot be evaluated."""
    if not specs:
        raise ConfigError("evaluate_runs needs at least one run")
    T = min(s.T for s in specs)
    if any(k < 1 or k > T for k in steps):
        raise ConfigError(f"DDIM steps {list(steps)} are invalid: each must be between 1 and the "
                          f"{T} diffusion timesteps; choose at most {T}")
    check_weights(config)
    classes = max(s.num_classes for s in specs)
    check_max_reference(config, classes)
    check_n_samples(config.n_samples, classes)


def check_n_samples(n: int, classes: int) -> None:
    """Refuse fewer samples per evaluation cell than one per class and the metrics' minimum
    (`MIN_SAMPLES`); `pipeline.budget` asks too, so a reproduction fails before it trains."""
    least = max(MIN_SAMPLES, classes)
    if n < least:
        raise ConfigError(f"EvalConfig.n_samples (dash evaluate --n, --set eval.n_samples) = "
                          f"{n} is too small: samples are balanced "
                          f"over the classes and the metrics need {MIN_SAMPLES}; ask for at least {least}")


def check_run_list(runs: object) -> None:
    """Refuse what `evaluate_runs` would misread: a dict (its keys would be taken as run
    folders) or one run (a path's characters would)."""
    if isinstance(runs, Mapping):
        raise ConfigError("runs is a dict (name -> run): pass list(runs.values()), or use "
                          "dashlib.pipeline.evaluate(budget, runs), which keeps the names")
    if isinstance(runs, (str, Path, Run)):
        raise ConfigError(f"runs = {runs!r} is one run: pass a list of runs, e.g. [{runs!r}]")


def evaluate_runs(runs: Sequence[Run | str | Path], config: EvalConfig,
                  steps: Sequence[int] | None = None, workers: int | None = None, device: str = "auto",
                  progress: bool = True, sample: SampleConfig | None = None,
                  data_root: str | None = None, out: str | Path | None = None,
                  download: bool = False) -> EvalReport:
    """Evaluate every run at `config.guidance` x `steps` (default: `config.ddim_steps`) x `config.seeds`.

    `workers=None` picks `default_workers`. Each run samples with the sampler
    settings stored in its config (single-head students), else its preset's;
    `sample` replaces both (steps and guidance are still set per cell).
    `data_root` says where the datasets live now, `download` lets torchvision fetch
    them there (datasets it hosts). Rows carry every feature
    space's metrics prefixed (`classifier_fid`, `inception_fid`) and the
    primary one's (`config.feature_extractor`) unprefixed (`fid`). Writes the
    report to `out` if given.
    """
    check_run_list(runs)
    start = time.perf_counter()
    dev = resolve_device(device)
    # a run given twice (two names for one folder) is one run: its rows would count as seeds
    specs = list({s.path: s for s in (run_spec(r, sample, data_root, download) for r in runs)}.values())
    steps = tuple(steps) if steps is not None else (config.ddim_steps,)
    check_request(specs, config, steps)
    size = max(int(s.data["image_size"]) for s in specs)  # one channel: a lower bound of what sampling needs
    check_batch_fits(config.n_samples, (1, size, size), dev, "--n (EvalConfig.n_samples)")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"workers = {workers!r} is invalid: at least 1 worker process is needed")
    spaces = prepare_spaces(specs, config, dev, progress)
    tasks = []
    for cell in cells(specs, config.guidance, steps, config.seeds, config.n_samples):
        space = spaces[config_hash(cell.run.data)]
        tasks.append(Task(cell, space.extractors, str(space.classifier.final), space.reference,
                          str(fidelity_cache_root()), str(dev), config.keep_samples,
                          config.max_reference, config.reference_seed, tuple(config.metrics)))
    unique = {t.key: t for t in tasks}
    n_workers = workers if workers is not None else default_workers(dev, len(unique))
    measured = measure_all(list(unique.values()), n_workers, progress)
    adequacy = {k: sp.describe()["test_accuracy"] for k, sp in spaces.items()}  # dashlib.adequacy
    rows = [{**row(t.cell, measured[t.key], config.feature_extractor),
             "classifier_test_accuracy": adequacy[config_hash(t.cell.run.data)]} for t in tasks]
    meta = {"config": to_dict(config), "ddim_steps": list(steps), "primary": config.feature_extractor,
            "device": str(dev), "workers": n_workers, "torch_threads": torch.get_num_threads(),
            "classifiers": {sp.classifier.path.name: sp.describe() for sp in spaces.values()},
            "extractors": [dataclasses.asdict(e) for sp in spaces.values() for e in sp.extractors],
            "cells": len(tasks), "distinct_cells": len(unique),
            "computed": sum(not m.get("cached") for m in measured.values()),
            "wall_time_s": time.perf_counter() - start, "version": EVAL_VERSION}
    report = EvalReport(rows, summarize(rows, metric_columns(tasks[0].extractors)), meta)
    if out is not None:
        report.write(out)
    return report


def cost(task: Task) -> float:
    """Relative sampling cost: parameters x rows per sample x steps x samples. A CFG
    run has 2 rows per sample, but 1 where the mix is one branch
    (`dashlib.guidance.one_branch`, as `guided_eps` samples it)."""
    cell = task.cell
    rows = 2 if cell.run.cfg and not one_branch(cell.guidance.constant) else 1
    return cell.run.params * rows * cell.steps * cell.n


def measure_all(tasks: Sequence[Task], workers: int, progress: bool) -> dict[str, dict[str, Any]]:
    """key -> measurements; cached cells are read in this process, the rest spread over workers.

    The costliest cells start first so that two workers finish together.
    """
    evaluator = CellEvaluator()
    results: dict[str, dict[str, Any]] = {}
    todo = []
    for task in tasks:
        if cached_cell(task) is not None:
            results[task.key] = evaluator.measure(task)
        else:
            todo.append(task)
    todo.sort(key=cost, reverse=True)
    bar = bars.bar(total=len(tasks), initial=len(results), desc="evaluate", disable=not progress,
               dynamic_ncols=True)
    with bar:
        if workers <= 1 or len(todo) <= 1:
            for task in todo:
                results[task.key] = evaluator.measure(task)
                bar.update(1)
        else:
            with ProcessPoolExecutor(min(workers, len(todo)), mp_context=get_context("spawn"),
                                     initializer=_init_worker, initargs=(1, os.getpid())) as pool:
                futures = {pool.submit(_measure_in_worker, t): t for t in todo}
                for future in as_completed(futures):
                    results[futures[future].key] = _worker_result(future, futures[future], workers)
                    bar.update(1)
    return results


def _worker_result(future: Any, task: Task, workers: int) -> dict[str, Any]:
    try:
        return dict(future.result())
    except BrokenProcessPool:
        raise EvaluationError(
            f"an evaluation worker process died while evaluating {task.describe()} (no Python error: "
            f"most likely the system killed it for lack of memory; {workers} workers ran at once). "
            f"Lower --workers, eval.n_samples or eval.max_reference (now {task.max_reference}) with "
            f"--set, and rerun: finished cells are kept") from None


# --- single runs and sweeps ---------------------------------------------------------

def results_path(run: Run | str | Path, config: EvalConfig, steps: Sequence[int],
                 sample: SampleConfig | None = None) -> Path:
    """`<run>/eval/results-<hash of the settings>.json`."""
    path = run.path if isinstance(run, Run) else Path(run)
    settings = {"config": to_dict(config), "steps": list(steps),
                "sample": to_dict(sample) if sample is not None else None}
    return path / "eval" / f"results-{config_hash(settings)}.json"


def sweep_guidance(runs: Sequence[Run | str | Path], config: EvalConfig, **kwargs: Any) -> EvalReport:
    """Every run at `config.sweep_guidance` (w = 0, 1, 2, 3, 4 and TAG by default)."""
    return evaluate_runs(runs, dataclasses.replace(config, guidance=config.sweep_guidance), **kwargs)


def sweep_steps(runs: Sequence[Run | str | Path], config: EvalConfig, guidance: str | float = "tag",
                **kwargs: Any) -> EvalReport:
    """Every run at `config.sweep_steps` DDIM steps (10, 20, 50, 100 by default), at one
    guidance setting ("tag" or a constant w)."""
    return evaluate_runs(runs, dataclasses.replace(config, guidance=(guidance,)),
                         steps=config.sweep_steps, **kwargs)
