"""Sample generation for a trained run: tensors in memory, or a PNG grid + tensor file."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from dashlib.artifacts import Artifact, load_artifact
from dashlib.config import ConfigError, DataConfig, Preset, SampleConfig, from_dict, to_dict
from dashlib.data import class_names, source
from dashlib.device import check_batch_fits, resolve_device
from dashlib.distributed import barrier, is_main, sample_sharded
from dashlib.guidance import Guidance
from dashlib.images import save_grid
from dashlib.io import atomic_torch_save, check_writable_dir, file_digest
from dashlib.runs import Run, RunStateError, config_hash
from dashlib.runtime import Runtime, inference_model, precision_name, sampling_dtype
from dashlib.sampling import DDIMSampler, balanced_labels


def model_run(preset: Preset, run: str | Path | None) -> Run:
    """The run to sample: the given folder, or the preset's finished teacher."""
    if run is not None:
        found = Run(Path(run)).require_folder()
        if not found.final.is_file():
            raise RunStateError(f"{found.path} has no finished model (final.pt); train it first")
        return found
    from dashlib.teacher import teacher_run

    teacher = teacher_run(preset)
    if not teacher.final.is_file():
        raise RunStateError(f"no trained teacher for preset {preset.name!r} (looked in "
                            f"{teacher.path}); run `dash train-teacher --preset {preset.name}` first, with "
                            f"the same --set and --data-root options as here")
    return teacher


def model_class_names(artifact: Artifact, preset: Preset) -> list[str] | None:
    """The names of the classes a model was trained on, in label order: from the data its
    checkpoint records (else the preset's), where its source names them cheaply (an image
    folder's listing, CIFAR's meta file, the built-in sets: `DatasetSource.names`), never by
    loading or downloading a dataset; None where they cannot be read now (the data moved or
    is gone: the labels still index the classes)."""
    import dataclasses

    recorded = artifact.config.get("data")
    data = dataclasses.replace(from_dict(DataConfig, recorded) if recorded else preset.data, download=False)
    if source(data).names is None:  # MNIST names its classes only once loaded
        return None
    try:
        names = list(class_names(data))
    except (OSError, ConfigError):  # moved, deleted or unreadable since training: not needed to sample
        return None
    return names if len(names) == artifact.model.config.num_classes else None


def generate(artifact: Artifact, config: SampleConfig, labels: Tensor, seed: int,
             device: torch.device | str = "cpu", runtime: Runtime | None = None,
             guidance: Guidance | None = None) -> Tensor:
    """Samples (N, C, H, W) in [-1, 1] for `labels` (N,), seeded by `seed`, guided by
    `guidance` (default: the one `config` selects).

    Under torchrun the samples are split across the ranks and gathered back
    in order; every rank returns all N (dashlib.distributed.sample_sharded).
    """
    dev = torch.device(device)
    model = inference_model(artifact.model.to(dev), runtime or Runtime(), dev)
    sampler = DDIMSampler(artifact.diffusion, config, guidance)
    return sample_sharded(sampler, model, labels, torch.Generator().manual_seed(seed))


def sample_to_files(preset: Preset, run: str | Path | None, guidance: Guidance | str | float | None,
                    n: int, seed: int, out: str | Path | None = None,
                    device: str = "auto", runtime: Runtime | None = None) -> tuple[Path, Path]:
    """Write a class-per-row PNG grid and a tensor file {samples, labels, class_names, ...};
    returns their paths.

    `guidance`: "tag", a constant w, or None for the preset's sampler setting. `class_names`
    names label i (the model's data, `model_class_names`), None where that data is not here."""
    src = model_run(preset, run)
    dev = resolve_device(device)
    folder = check_writable_dir(Path(out) if out else src.path / "samples", "the samples folder (--out)")
    artifact = load_artifact(src, device=dev)
    if not artifact.model.config.cfg and guidance is not None:
        raise ConfigError(f"{src.path} is a single-head student: it has no unconditional branch, so "
                          f"--w and --tag do not apply (it samples with the guidance it was distilled "
                          f"at); leave them out")
    config = preset.sample
    chosen = Guidance.from_config(config) if guidance is None else Guidance.parse(guidance, config)
    k = artifact.model.config.num_classes
    if n < k:
        raise ConfigError(f"--n = {n} is too small: the grid has one row per class, so ask for "
                          f"at least {k} samples (a multiple of {k} fills every row equally)")
    shape = (artifact.model.config.in_channels, *(2 * (artifact.model.config.image_size,)))
    check_batch_fits(n, shape, dev, "--n")
    labels = balanced_labels(n, k)
    samples = generate(artifact, config, labels, seed, dev, runtime, chosen)
    # a single-head student applies no guidance of its own: its files say so, not a w
    tag = ("single-head" if not artifact.model.config.cfg
           else chosen.label if chosen.constant is None else f"w{chosen.label}")
    # the settings the name does not spell out (eta, TAG's w range, spacing, ...) and the model
    # (its weights' digest: several models may be sampled into one --out folder) hashed into it,
    # so that other samples never overwrite these; the batch size only where it changes the
    # samples (eta > 0 draws each step's noise chunk by chunk), the precision only where it is
    # reduced
    dtype = sampling_dtype(artifact.model, runtime or Runtime(), dev)
    settings = {**to_dict(chosen.in_config(config)), "model": file_digest(src.final),
                "batch_size": config.batch_size if config.eta > 0 else None,
                **({"precision": precision_name(dtype)} if dtype is not None else {})}
    stem = f"samples-{tag}-steps{config.steps}-n{n}-seed{seed}-{config_hash(settings)[:6]}"
    png, tensor = folder / f"{stem}.png", folder / f"{stem}.pt"
    if is_main():  # under torchrun rank 0 writes, the others wait for the files
        names = model_class_names(artifact, preset)
        save_grid(samples, labels, k, png)
        atomic_torch_save({"samples": samples, "labels": labels, "guidance": tag, "class_names": names,
                           "steps": config.steps, "seed": seed, "sampler": to_dict(config),
                           "precision": precision_name(dtype)}, tensor)
    barrier()
    return png, tensor
