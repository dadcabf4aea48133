"""The paper's figures (F1-F7) and tables (T1-T4), produced from runs.

Each function loads what it needs from finished runs, draws or tabulates it
through `dashlib.plots` / `dashlib.report`, and returns the path it wrote.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch

from dashlib import plots
from dashlib.artifacts import Artifact, load_artifact
from dashlib.data import class_names
from dashlib.distill.methods import METHODS, counts_nonzero
from dashlib.guidance import Guidance
from dashlib.images import grid_image, grid_labels, shown_classes
from dashlib.pipeline import Budget
from dashlib.report import MeanStd, Provenance, Shown, save_figure, save_table
from dashlib.runs import Run
from dashlib.sampling import DDIMSampler


def read_log(run: Run) -> list[dict[str, Any]]:
    if not run.log.exists():
        return []
    return [json.loads(line) for line in run.log.read_text().splitlines() if line.strip()]


def _save(fig: Any, b: Budget, folder: str | Path, name: str, title: str, claims: list[str],
          notebook: str, data: list[dict[str, Any]] | None = None,
          provenance: Provenance | None = None) -> Path:
    """Save and close `fig`; the sidecar records `provenance` (default: the budget's)."""
    path = save_figure(fig, folder, name, title, claims, provenance or b.provenance(notebook), data)
    plt.close(fig)
    return path


# --- F1 ---------------------------------------------------------------------------------

def f1_sample_grids(b: Budget, models: Mapping[str, Artifact], folder: str | Path,
                    seed: int = 42, notebook: str = "02_distillation") -> Path:
    """Every model samples the same classes from the same initial noise."""
    config, guidance = b.preset.sample, b.guidance
    k = b.preset.teacher.num_classes
    shown = shown_classes(k)
    labels, rows = grid_labels(shown, b.grid_per_class)
    m = len(shown)
    grids = {}
    for name, art in models.items():
        sampler = DDIMSampler(art.diffusion, config, guidance)
        x = sampler.sample(art.model, labels, torch.Generator().manual_seed(seed))
        grids[name] = grid_image(x, rows, m, scale=1 if x.shape[-1] >= 16 else 2)
    subset = "" if m == k else f", {m} of {k} classes"
    every = class_names(b.preset.data)
    names = [every[i] for i in shown.tolist()]
    fig = plots.sample_grids(grids, f"{guidance.title}, {config.steps} DDIM steps, seed {seed}{subset}",
                             row_names=names)
    # The sidecar describes what was drawn: this seed and the sampler's step count, not the
    # evaluation's seeds, DDIM steps and sample count (the data's fingerprint stays).
    base = b.provenance(notebook)
    kept = {k: v for k, v in base.extra.items() if k != "eval_samples"}
    drawn = dataclasses.replace(base, seeds=(seed,), steps={**base.steps, "ddim": config.steps},
                                extra={**kept, "guidance": b.table_guidance,
                                       "samples_per_class": b.grid_per_class,
                                       **({} if m == k else {"classes_shown": shown.tolist()}),
                                       "class_names_shown": names})
    return _save(fig, b, folder, "F1_samples", "Sample grids of the teacher and every student",
                 ["C1", "C2", "C3"], notebook, provenance=drawn)


# --- F2 / T3 -----------------------------------------------------------------------------

def calibrations(runs: Mapping[str, Run]) -> dict[str, dict[str, Any]]:
    """{method: calibration dict} from the runs' results.json (EMA students)."""
    return {m: r.read_results()["calibration"] for m, r in runs.items()}


def f2_gap_calibration(b: Budget, runs: Mapping[str, Run], folder: str | Path,
                       notebook: str = "05_guidance_gap") -> Path:
    from dashlib.calibration import rho_undefined

    cals = calibrations(runs)
    fig = plots.gap_calibration(cals)
    prov = b.provenance(notebook).noted(rho_undefined=rho_undefined(cals.values(), per_bin=True))
    return _save(fig, b, folder, "F2_gap_calibration",
                 "Guidance-gap calibration (rho, cos) across timesteps per method", ["C3"], notebook,
                 provenance=prov)


T3_COLUMNS = ["method", "params", "rho", "cos", "gap_mse", "cond_mse", "uncond_mse", "final_loss"]


def t3_calibration(b: Budget, runs: Mapping[str, Run], folder: str | Path,
                   notebook: str = "02_distillation") -> Path:
    rows = []
    undefined = _rho_undefined(runs)
    for method in plots.ordered(list(runs)):
        r = runs[method].read_results()
        term = plots.OUTPUT_TERM.get(method, "loss")
        rho = None if undefined else r["rho"]
        rows.append({"method": method, "params": _count(r["params"]), "rho": rho, "cos": r["cos"],
                     "gap_mse": r["gap_mse"], "cond_mse": r["cond_mse"],
                     "uncond_mse": r["uncond_mse"], "final_loss": r["final_losses"].get(term)})
    return save_table(rows, T3_COLUMNS, folder, "T3_calibration",
                      "Calibration on held-out matched inputs (EMA students): rho, cos, gap MSE, "
                      "branch MSEs against the teacher, final output-level loss", ["C3", "C6"],
                      b.provenance(notebook).noted(rho_undefined=undefined), digits=4)


def _rho_undefined(runs: Mapping[str, Run]) -> str | None:
    """Why rho is undefined for these students (`calibration.rho_undefined`), or None."""
    from dashlib.calibration import rho_undefined

    return rho_undefined(runs[m].read_results().get("calibration", {}) for m in runs)


# --- F4 ------------------------------------------------------------------------------------

def f4_tirt_curriculum(b: Budget, teacher_run: Run, folder: str | Path,
                       notebook: str = "01_teacher") -> Path:
    art = load_artifact(teacher_run)
    if art.weighting is None:
        raise ValueError("the teacher has no timestep weighting to plot")
    fig = plots.tirt_curriculum(read_log(teacher_run), art.weighting.profile(prior=True).tolist(),
                                art.weighting.profile().tolist(), art.diffusion.T,
                                weighting=b.preset.train.weighting)
    return _save(fig, b, folder, "F4_tirt_curriculum",
                 "The teacher's TIRT weights over training, the Min-SNR-5 prior and the drift",
                 ["C5"], notebook)


# --- F5 ------------------------------------------------------------------------------------

def f5_dynamics(b: Budget, runs: Mapping[str, Run], folder: str | Path,
                notebook: str = "02_distillation") -> Path:
    fig = plots.distillation_dynamics({m: read_log(r) for m, r in runs.items()})
    return _save(fig, b, folder, "F5_dynamics",
                 "Distillation dynamics: output-level loss against rho and cos over training",
                 ["C6"], notebook)


# --- inline views (not saved) -------------------------------------------------------------

def guidance_strip(b: Budget, model: Artifact, scales: tuple[float, ...] = (0, 1, 4),
                   seed: int = 0) -> Any:
    """Sample grids of one model at several constant guidance scales, side by side."""
    from matplotlib.figure import Figure

    k = b.preset.teacher.num_classes
    shown = shown_classes(k)
    labels, rows = grid_labels(shown, b.grid_per_class)
    fig = Figure(figsize=(3.2 * len(scales), 3.6))
    for i, w in enumerate(scales):
        sampler = DDIMSampler(model.diffusion, b.preset.sample, Guidance.parse(w, b.preset.sample))
        x = sampler.sample(model.model, labels, torch.Generator().manual_seed(seed))
        ax = fig.add_subplot(1, len(scales), i + 1)
        ax.imshow(grid_image(x, rows, len(shown), scale=2).permute(1, 2, 0).numpy(),
                  interpolation="nearest")
        ax.set_title(f"w = {w:g}" + {0: " (unconditional)", 1: " (conditional)"}.get(w, ""))
        ax.axis("off")
    fig.tight_layout()
    return fig


def gap_heatmaps(b: Budget, models: Mapping[str, Artifact],
                 t_fractions: tuple[float, ...] = (0.1, 0.4, 0.7), index: int = 0, seed: int = 0) -> Any:
    """delta = eps(y) - eps(null), channel-averaged, for one held-out image; rows are
    models, columns the timesteps round(f * T) for each fraction f of the schedule's T
    (100, 400, 700 at T = 1000; fixed timesteps all became T - 1 at T = 100), one
    symmetric colour scale per column."""
    from matplotlib.figure import Figure

    from dashlib.calibration import branch_outputs
    from dashlib.data import load_dataset

    T = b.preset.diffusion.T
    if not t_fractions or not all(0 <= f <= 1 for f in t_fractions):
        raise ValueError(f"t_fractions = {t_fractions!r}: give fractions of T in [0, 1]")
    steps = sorted({min(round(f * T), T - 1) for f in t_fractions})
    test = load_dataset(b.preset.data).test
    x0 = test.x[index:index + 1].expand(len(steps), -1, -1, -1)
    y = test.y[index:index + 1].expand(len(steps))
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    t = torch.tensor(steps)
    names = plots.ordered(list(models))
    deltas: dict[str, Any] = {}
    for name in names:
        art = models[name]
        x_t = art.diffusion.q_sample(x0, t, eps)
        cond, uncond = branch_outputs(art.model, x_t, t, y)
        deltas[name] = (cond - uncond).mean(1) if art.model.config.cfg else None
    fig = Figure(figsize=(2.2 * len(steps) + 1, 2.0 * len(names)))
    scale = [max(float(d[j].abs().max()) for d in deltas.values() if d is not None) or 1.0
             for j in range(len(steps))]
    for i, name in enumerate(names):
        for j, step in enumerate(steps):
            ax = fig.add_subplot(len(names), len(steps), i * len(steps) + j + 1)
            ax.set_xticks([])
            ax.set_yticks([])
            if deltas[name] is None:
                ax.text(0.5, 0.5, "no null\nbranch", ha="center", va="center", fontsize=8)
            else:
                ax.imshow(deltas[name][j].numpy(), cmap="RdBu_r", vmin=-scale[j], vmax=scale[j])
            if j == 0:
                ax.set_ylabel(name, fontsize=8, color=plots.colour(name))
            if i == 0:
                ax.set_title(f"t = {step}", fontsize=9)
    label = plots.label(class_names(b.preset.data)[int(y[0])])
    fig.suptitle(f"guidance gap δ for held-out image #{index} (class {label})")
    fig.tight_layout(rect=(0, 0, 1, 0.95))  # the title above the column headings
    return fig


# --- evaluation outputs -------------------------------------------------------------------

def _pm(mean: float | None, std: float | None, digits: int = 3) -> MeanStd:
    return MeanStd(mean, std, digits)


def _count(n: int) -> Shown:
    return Shown(n, f"{n:,}")


def _fixed(x: float | None, digits: int = 2) -> Shown:
    """x to `digits` decimals in Markdown/LaTeX ("–" when missing), the full number in the CSV."""
    missing = x is None or x != x
    return Shown(None if missing else x, "–" if missing else f"{x:.{digits}f}")


def _summary(report: Any, guidance: str) -> dict[str, dict[str, Any]]:
    """{method: summary row} at one guidance setting (and the report's one step count)."""
    return {r["method"]: r for r in report.summary if r["guidance"] == guidance}


T1_COLUMNS = ["model", "params", "compression", "FID", "IS", "accuracy", "rho"]


def t1_main_results(b: Budget, report: Any, runs: Mapping[str, Run], folder: str | Path,
                    notebook: str = "03_evaluation") -> Path:
    """Every model at the table guidance: params, FID, IS, guidance fidelity, rho."""
    rows_by = _summary(report, b.table_guidance)
    teacher_params = rows_by["teacher"]["params"]
    rows = []
    undefined = _rho_undefined(runs)
    for name in plots.ordered(list(rows_by)):
        r = rows_by[name]
        params = r["params_nonzero"] if counts_nonzero(name) else r["params"]
        rho = runs[name].read_results().get("rho") if name in runs else (1.0 if name == "teacher" else None)
        rho = None if undefined else rho
        ratio = teacher_params / params
        rows.append({"model": name, "params": _count(params), "compression": Shown(ratio, f"{ratio:.2f}x"),
                     "FID": _pm(r.get("fid_mean"), r.get("fid_std")),
                     "IS": _pm(r.get("isc_mean_mean"), r.get("isc_mean_std"), 2),
                     "accuracy": _pm(r.get("accuracy_mean"), r.get("accuracy_std")),
                     "rho": _fixed(rho)})
    feature = b.preset.eval.feature_extractor
    return save_table(rows, T1_COLUMNS, folder, "T1_main_results",
                      f"Main results ({b.guidance.title}, {b.preset.eval.ddim_steps} DDIM steps, "
                      f"{b.preset.eval.n_samples} samples; FID/IS in the {feature} feature space; "
                      f"mean ± std over seeds {', '.join(map(str, b.seeds))})",
                      ["C1", "C2", "C3"],
                      _with_classifier(b.provenance(notebook), report).noted(rho_undefined=undefined))


def _with_classifier(prov: Any, report: Any) -> Any:
    """The provenance with the feature classifier's test accuracy (dashlib.adequacy)."""
    from dashlib.adequacy import report_accuracy

    return dataclasses.replace(prov, extra={**prov.extra,
                                            "classifier_test_accuracy": report_accuracy(report)})


def f3_guidance_sweep(b: Budget, report: Any, folder: str | Path,
                      notebook: str = "03_evaluation") -> Path:
    label = f"{b.preset.eval.feature_extractor} FID"
    fig = plots.guidance_sweep(report.rows, quality="fid", fidelity="accuracy", quality_label=label,
                               chance=1 / b.preset.teacher.num_classes)
    keys = ("method", "guidance", "ddim_steps", "n", "seeds", "fid_mean", "fid_std",
            "accuracy_mean", "accuracy_std")
    data = [{k: r[k] for k in keys if k in r} for r in report.summary]
    return _save(fig, b, folder, "F3_guidance_sweep",
                 "Sample quality and guidance fidelity against guidance scale, per method",
                 ["C1", "C3"], notebook, data)


T4_COLUMNS = ["model", "params", "GFLOPs (50-step CFG run, batch 64)", "latency (s)",
              "peak memory (MB)", "speedup", "FLOPs ratio", "speedup / FLOPs ratio"]


def t4_efficiency(b: Budget, teacher: Artifact, student: Artifact, folder: str | Path,
                  notebook: str = "03_evaluation") -> Path:
    """Table 4: a CFG sampling run of `b.efficiency_steps` x batch `b.efficiency_batch`
    (the paper's 50 x 64 by default), latency the median of `b.efficiency_repeats`."""
    from dashlib.device import resolve_device
    from dashlib.efficiency import efficiency

    steps, batch, repeats = b.efficiency_steps, b.efficiency_batch, b.efficiency_repeats
    e = efficiency(b.preset, teacher.model, student.model, resolve_device(b.device), steps=steps,
                   batch=batch, repeats=repeats)
    rows = []
    timed = "speedup" in e  # none with efficiency_repeats = 0: those cells stay empty, not 0
    for name, cost in (("teacher", e["teacher"]), ("dash student", e["student"])):
        is_teacher = name == "teacher"
        peak = cost.get("peak_memory_bytes")
        rows.append({"model": name, "params": _count(cost["params"]),
                     T4_COLUMNS[2]: cost["flops"] / 1e9,
                     "latency (s)": cost.get("latency_s"),
                     "peak memory (MB)": None if peak is None else peak / 2**20,
                     "speedup": (1.0 if timed else None) if is_teacher else e.get("speedup"),
                     "FLOPs ratio": 1.0 if is_teacher else e["flops_ratio"],
                     "speedup / FLOPs ratio": None if is_teacher else e.get("speedup_over_flops_ratio")})
    memory = e["teacher"].get("peak_memory_method") or "not measured"
    latency = f"latency median of {repeats}" if timed else "latency not measured (efficiency_repeats = 0)"
    columns = [T4_COLUMNS[0], T4_COLUMNS[1], f"GFLOPs ({steps}-step CFG run, batch {batch})",
               *T4_COLUMNS[3:]]
    for r in rows:
        r[columns[2]] = r.pop(T4_COLUMNS[2])
    threads = f"{e['threads']} thread{'' if e['threads'] == 1 else 's'}"
    return save_table(rows, columns, folder, "T4_efficiency",
                      f"Efficiency on {e['device_name']} ({threads}; {e['guidance']} "
                      f"guidance; {latency}; memory: {memory})", ["C1"],
                      b.provenance(notebook), digits=2)


# --- ablation and sweeps -------------------------------------------------------------------

T2_COLUMNS = ["variant", "L_im", "L_un", "L_an", "TIRT", "FID", "accuracy", "rho", "cos"]


def ablation_quality(b: Budget, report: Any) -> dict[str, dict[int, float]]:
    """{variant: {seed: FID}} at the table guidance."""
    out: dict[str, dict[int, float]] = {}
    for r in report.rows:
        if r["guidance"] == b.table_guidance:
            out.setdefault(r["method"], {})[r["seed"]] = r["fid"]
    return out


def t2_ablation(b: Budget, report: Any, runs: Mapping[str, Run], folder: str | Path,
                notebook: str = "04_ablations") -> Path:
    from dashlib.ablation import LEAVE_ONE_OUT, PATH

    summary = _summary(report, b.table_guidance)
    rows, variants = [], PATH + LEAVE_ONE_OUT
    for v in variants:
        res, s = runs[v.name].read_results(), summary[v.name]
        p = v.preset(b.preset)
        method = METHODS.get(v.method)
        weights = method.term_weights(method.hyperparameters(p.distill, p.sample))
        tirt = res.get("tirt", "uniform")
        rows.append({"variant": v.name, **{f"L_{k}": f"{weights.get(k, 0.0):g}" for k in ("im", "un", "an")},
                     "TIRT": tirt, "FID": _pm(s.get("fid_mean"), s.get("fid_std")),
                     "accuracy": _pm(s.get("accuracy_mean"), s.get("accuracy_std")),
                     "rho": _fixed(res["rho"]), "cos": _fixed(res["cos"])})
    return save_table(rows, T2_COLUMNS, folder, "T2_ablation",
                      "DASH ablation: the additive path cond-only → +L_un → +L_an → +TIRT Transfer, "
                      "and leave-one-out variants (FID mean ± std over seeds)", ["C4", "C5"],
                      b.provenance(notebook).noted(
                          rho_undefined=_rho_undefined({v.name: runs[v.name] for v in variants})))


def f6_ablation(b: Budget, report: Any, folder: str | Path, notebook: str = "04_ablations") -> Path:
    from dashlib.ablation import shares_over_seeds

    shares = shares_over_seeds(ablation_quality(b, report))
    fig = plots.ablation_shares({f"{k}": v for k, v in shares.items()})
    return _save(fig, b, folder, "F6_ablation",
                 "Each DASH component's share of the total gain (FID), spread over seeds",
                 ["C4", "C5"], notebook)


def f7_steps_and_compression(b: Budget, steps_report: Any, width_report: Any,
                             width_runs: Mapping[str, Run], folder: str | Path,
                             notebook: str = "04_ablations") -> Path:
    teacher_params = next(r["params"] for r in steps_report.rows if r["method"] == "teacher")
    width_rows = []
    for r in width_report.rows:
        if r["guidance"] == b.table_guidance:
            width_rows.append({**r, "compression_ratio": teacher_params / r["params"],
                               "label": r["method"]})
    label = f"{b.preset.eval.feature_extractor} FID"
    teacher_fid = [r["fid"] for r in steps_report.rows if r["method"] == "teacher"
                   and r["ddim_steps"] == b.preset.eval.ddim_steps]
    reference = sum(teacher_fid) / len(teacher_fid) if teacher_fid else None
    fig = plots.steps_and_compression(steps_report.rows, width_rows, quality="fid", quality_label=label,
                                      reference=reference)
    return _save(fig, b, folder, "F7_steps_compression",
                 "Quality against DDIM steps and against compression ratio (DASH students)",
                 ["C1"], notebook)
