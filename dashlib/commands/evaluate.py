"""Evaluation commands: evaluate, train-classifier, efficiency."""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path
from typing import Any

from dashlib.cliargs import (
    add_preset,
    add_runtime,
    command,
    count_arg,
    data_overrides,
    preset_from_args,
    reads_no_files,
    runtime_from_args,
    seed_arg,
    workers_arg,
)
from dashlib.config import FLOAT32_MAX, ConfigError, EvalConfig


def _guidance(value: str) -> str:
    """--w entries: a number or "tag" (kept as text, as EvalConfig.guidance holds them)."""
    if value.lower() == "tag":
        return "tag"
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is neither a number nor 'tag'") from None
    if not math.isfinite(number) or abs(number) > FLOAT32_MAX:
        raise argparse.ArgumentTypeError(f"{value!r} is not a finite number (|w| <= 3.4e38, float32)")
    from dashlib.guidance import number_label

    return number_label(number)


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="run folder of the model to evaluate (teacher or student)")
    p.add_argument("--n", type=count_arg,
                   help="samples per cell, balanced over classes (default: the preset's)")
    p.add_argument("--seeds", type=seed_arg, nargs="+",
                   help="sampling seeds (default: the preset's, 42 123 456)")
    p.add_argument("--w", type=_guidance, nargs="+", metavar="W|tag",
                   help="guidance settings: constant scales and/or 'tag' (default: the preset's)")
    p.add_argument("--steps", type=int, nargs="+", help="DDIM steps (default: the preset's eval.ddim_steps)")
    p.add_argument("--extractor", choices=("classifier", "inception"),
                   help="primary feature space (default: the preset's; the classifier is always scored)")
    p.add_argument("--inception-weights", help="local Inception-v3 weights file (torch-fidelity's .pth)")
    p.add_argument("--download-weights", action="store_true",
                   help="allow downloading the Inception-v3 weights when they are not found locally")
    p.add_argument("--data-root", help="where the run's dataset lives now, if it moved (the same files)")
    p.add_argument("--download", action="store_true",
                   help="let torchvision download the run's dataset (cifar10/100, mnist, fashion-mnist) "
                        "to --data-root if it is not there")
    p.add_argument("--workers", type=workers_arg,
                   help="worker processes (default: one per CPU core; 1 on CUDA)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override an eval.* or sample.* field, e.g. --set eval.classifier_steps=300 "
                        "(repeatable; the run fixes the rest)")
    add_runtime(p, speed=False)  # sampling in the workers follows the speed rules of dashlib.runtime


def _fmt(mean: float | None, std: float | None) -> str:
    if mean is None or math.isnan(mean):
        return "-"  # a metric left out of eval.metrics
    return f"{mean:.3f}" if std is None or math.isnan(std) else f"{mean:.3f} +- {std:.3f}"


def _print_summary(summary: list[dict[str, Any]]) -> None:
    for entry in summary:
        cols = [f"{k[:-5]} {_fmt(entry[k], entry[k[:-5] + '_std'])}" for k in entry
                if k.endswith("_fid_mean") or k in ("isc_mean_mean", "accuracy_mean")]
        print(f"{entry['name']} {entry['guidance']:>4} steps {entry['ddim_steps']:>3}: " + ", ".join(cols),
              file=sys.stderr)


#: Sampler keys each evaluation cell sets itself, and the option that sets them.
CELL_KEYS = {"sample.steps": "--steps", "sample.guidance": "--w", "sample.w": "--w"}


@command("evaluate", "sample a run and score it: FID/IS/KID/PRC (torch-fidelity) and guidance fidelity",
         _evaluate_args, interrupted="the evaluation cells finished so far are kept in the run "
                                     "folder; rerun the command to compute the rest",
         out_of_memory="lower --set sample.batch_size, --n, --set eval.max_reference or --workers")
def cmd_evaluate(args: argparse.Namespace) -> int:
    from dashlib.evaluate import evaluate_runs, evaluation_settings, results_path
    from dashlib.io import absolute

    overrides = data_overrides(args)  # --set and --data-root, the root relative to the caller
    per_cell = sorted(k for k in overrides if k in CELL_KEYS)
    if per_cell:
        raise ConfigError(f"{', '.join(per_cell)}: every evaluation cell sets its own guidance and DDIM "
                          f"steps, so this would be ignored; use "
                          f"{' and '.join(sorted({CELL_KEYS[k] for k in per_cell}))} "
                          f"(several values allowed)")
    preset, sample = evaluation_settings(args.run, overrides)
    if "data.data_root" in overrides and reads_no_files(preset.data.name):  # the run names its data
        raise ConfigError(f"--data-root (data.data_root) is given, but {args.run} was trained on "
                          f"{preset.data.name!r}, which reads no files; leave --data-root out")
    changes = {"n_samples": args.n, "seeds": tuple(args.seeds) if args.seeds else None,
               "guidance": tuple(args.w) if args.w else None, "feature_extractor": args.extractor,
               "inception_weights": args.inception_weights,
               "download_weights": args.download_weights or None}
    config = dataclasses.replace(preset.eval, **{k: v for k, v in changes.items() if v is not None})
    check_extractor_options(config, args)
    steps = tuple(args.steps) if args.steps else (config.ddim_steps,)
    run = str(absolute(args.run))  # the results name it wherever they are read from
    report = evaluate_runs([run], config, steps=steps, workers=args.workers, device=args.device,
                           progress=not args.no_progress, sample=sample,
                           data_root=overrides.get("data.data_root"),
                           download=bool(overrides.get("data.download")))
    path = report.write(results_path(run, config, steps, sample))
    for clf in report.meta["classifiers"].values():
        print(f"classifier {clf['run']}: test accuracy {clf['test_accuracy']:.4f} (the lower of plain and "
              f"class-balanced)", file=sys.stderr)
    _print_summary(report.summary)
    print(path)
    return 0


def check_extractor_options(config: EvalConfig, args: argparse.Namespace) -> None:
    """Refuse Inception options when the evaluation will not use Inception (they would be
    ignored), given as options or as `--set eval.*` keys: `config` is the evaluation's."""
    if config.feature_extractor == "inception":
        return
    given = [flag if getattr(args, dest) else f"--set eval.{dest}"
             for flag, dest in (("--inception-weights", "inception_weights"),
                                ("--download-weights", "download_weights")) if getattr(config, dest)]
    if given:
        verb, them = ("apply", "them") if len(given) > 1 else ("applies", "it")
        raise ConfigError(f"{' and '.join(given)} {verb} to the Inception features, but this evaluation "
                          f"scores with the {config.feature_extractor}; add --extractor inception "
                          f"or leave {them} out")


def _classifier_args(p: argparse.ArgumentParser) -> None:
    add_preset(p)
    p.add_argument("--steps", type=count_arg,
                   help="training steps (default: the preset's eval.classifier_steps)")
    p.add_argument("--force", action="store_true", help="retrain even if a finished classifier exists")
    add_runtime(p, speed=False)


@command("train-classifier", "train (or reuse) the dataset classifier used for classifier FID and "
         "guidance fidelity", _classifier_args,
         out_of_memory="lower --set eval.classifier_batch_size")
def cmd_train_classifier(args: argparse.Namespace) -> int:
    from dashlib.classifier import train_classifier

    preset = preset_from_args(args, **{"eval.classifier_steps": args.steps})
    run = train_classifier(preset.data, preset.eval, force=args.force, device=args.device,
                           progress=not args.no_progress)
    results = run.read_results()
    print(f"classifier on {results['dataset']}: test accuracy {results['test_accuracy']:.4f}, "
          f"class-balanced {results['balanced_test_accuracy']:.4f} ({results['n_test']} images), "
          f"{results['wall_time_s']:.0f} s", file=sys.stderr)
    print(run.results)
    return 0


def _efficiency_args(p: argparse.ArgumentParser) -> None:
    add_preset(p)
    p.add_argument("--teacher-run", help="teacher run folder (default: the preset's teacher architecture)")
    p.add_argument("--student-run", help="student run folder (default: the preset's student architecture)")
    p.add_argument("--steps", type=count_arg, default=50, help="DDIM steps of the sampling run (default 50)")
    p.add_argument("--batch", type=count_arg, default=64, help="batch size (default 64)")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed runs after a warm-up; 0 counts params and FLOPs only (default 3)")
    p.add_argument("--out", help="output JSON (default: runs/<preset>/efficiency-<hash>/results.json)")
    add_runtime(p)


@command("efficiency", "teacher vs student: params, FLOPs, latency and peak memory of 50-step CFG "
         "sampling (Table 4)", _efficiency_args, out_of_memory="lower --batch")
def cmd_efficiency(args: argparse.Namespace) -> int:
    import torch

    from dashlib.artifacts import load_artifact
    from dashlib.config import to_dict
    from dashlib.device import resolve_device
    from dashlib.efficiency import efficiency
    from dashlib.io import atomic_write_json
    from dashlib.runs import make_run
    from dashlib.unet import build_unet

    preset = preset_from_args(args)
    check_efficiency_args(args)
    device = resolve_device(args.device)
    teacher = load_artifact(args.teacher_run).model if args.teacher_run else build_unet(preset.teacher, 0)
    student = load_artifact(args.student_run).model if args.student_run else build_unet(preset.student, 0)
    check_same_data(teacher.config, student.config, args)
    note_run_kinds(args)
    runtime = runtime_from_args(args)
    result = efficiency(preset, teacher, student, device, steps=args.steps, batch=args.batch,
                        repeats=args.repeats, runtime=runtime)
    result["teacher"]["source"] = args.teacher_run or "preset architecture (untrained weights)"
    result["student"]["source"] = args.student_run or "preset architecture (untrained weights)"
    payload = {"preset": preset.name, "teacher": to_dict(teacher.config), "student": to_dict(student.config),
               "teacher_run": args.teacher_run, "student_run": args.student_run, "steps": args.steps,
               "batch": args.batch, "device": str(device),
               # what else changes the measurement: the sampler (one branch at w = 0 or 1 halves the
               # rows), the speed options and the threads
               "sample": to_dict(preset.sample), "diffusion": to_dict(preset.diffusion),
               "runtime": dataclasses.asdict(runtime), "threads": torch.get_num_threads()}
    if args.out:
        out = Path(args.out)
    else:
        run = make_run(preset.name, "efficiency", payload)
        atomic_write_json(run.config, payload)
        out = run.results
    atomic_write_json(out, result)
    print_efficiency(result, args)
    print(out)
    return 0


def check_efficiency_args(args: argparse.Namespace) -> None:
    """Refuse a negative --repeats and an unwritable --out before minutes of timing, not after
    (--steps and --batch are `count_arg`s)."""
    from dashlib.io import check_writable_file

    if args.repeats < 0:
        raise ConfigError(f"--repeats = {args.repeats} is invalid: must be >= 0")
    if args.out:
        check_writable_file(args.out, "--out", "efficiency.json")


def note_run_kinds(args: argparse.Namespace) -> None:
    """A note where --teacher-run names a student's run or --student-run a teacher's (their
    results.json `kind`): the numbers are measured either way, but a teacher against itself
    reads 1.00x, which a swap of only one of the two runs would not explain."""
    from dashlib.runs import Run

    def kind(folder: str | None) -> str | None:
        run = Run(Path(folder)) if folder else None
        return run.read_results().get("kind") if run is not None and run.results.is_file() else None

    kinds = {"--teacher-run": (args.teacher_run, kind(args.teacher_run), "teacher"),
             "--student-run": (args.student_run, kind(args.student_run), "student")}
    if [k for _, k, _ in kinds.values()] == ["student", "teacher"]:
        return  # both swapped: the FLOPs note after the measurement says so
    for flag, (folder, found, expected) in kinds.items():
        if found is not None and found != expected:
            print(f"note: {flag} {folder} is a {found}'s run, not a {expected}'s", file=sys.stderr)


def print_efficiency(result: dict[str, Any], args: argparse.Namespace) -> None:
    """The measurement in one line on stderr, after a note where the two runs look swapped."""
    t, s = result["teacher"], result["student"]
    if t["flops_per_sample"] < s["flops_per_sample"]:
        print(f"note: the teacher ({args.teacher_run or 'the preset architecture'}) costs fewer FLOPs "
              f"than the student ({args.student_run or 'the preset architecture'}), so the ratios are "
              f"below 1; were --teacher-run and --student-run swapped?", file=sys.stderr)
    line = (f"FLOPs {t['flops_per_sample'] / 1e9:.1f}G vs {s['flops_per_sample'] / 1e9:.1f}G per sample "
            f"({result['flops_ratio']:.2f}x)")
    if "speedup" in result:
        line += (f"; latency {t['latency_s']:.2f} s vs {s['latency_s']:.2f} s ({result['speedup']:.2f}x, "
                 f"{result['speedup_over_flops_ratio']:.2f} of the FLOPs ratio)")
    print(line, file=sys.stderr)


#: What a teacher and a student compared in `dash efficiency` must share: the same images.
SAME_DATA_FIELDS = ("image_size", "in_channels", "num_classes")


def check_same_data(teacher: Any, student: Any, args: argparse.Namespace) -> None:
    """Refuse a teacher and a student made for other data (a run against the preset's default
    architecture of another size): their FLOPs ratio would compare different images."""
    differ = [f for f in SAME_DATA_FIELDS if getattr(teacher, f) != getattr(student, f)]
    if differ:
        sides = "; ".join(f"{f}: teacher {getattr(teacher, f)}, student {getattr(student, f)}"
                          for f in differ)
        raise ConfigError(f"the teacher ({args.teacher_run or 'the preset architecture'}) and the student "
                          f"({args.student_run or 'the preset architecture'}) are made for other images "
                          f"({sides}); give both --teacher-run and --student-run, or the --preset (and "
                          f"--set) the run was trained with")
