"""Run the quick benchmarks and summarise them (`make bench`).

Each benchmark runs as its own process with its defaults (mostly digits on CPU,
cifar10 too where it is cheap or on CUDA) and writes bench/results/<name>.json; this script
then writes bench/results/summary.json and summary.md, and with `--readme`
puts the summary into README.md between the `bench` markers. The wall time
of `make reproduce` (bench/reproduce_time.py, ~45 min) is not run here; its
last result is included when present.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import RESULTS, environment

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
QUICK = ("train_throughput", "sampler_overhead", "distill_step", "sampling_speed", "peak_memory",
         "gpu_hours")
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def run(name: str, device: str) -> float:
    """Run one benchmark script; returns its wall time."""
    args = [] if name == "gpu_hours" else ["--device", device]
    start = time.perf_counter()
    subprocess.run([sys.executable, str(BENCH / f"{name}.py"), *args], check=True)
    return time.perf_counter() - start


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    return list(data.get("rows", []))


def summarise() -> tuple[dict[str, Any], str]:
    """Key numbers of every result file present, as JSON and as markdown."""
    summary: dict[str, Any] = {"environment": environment()}
    md: list[str] = []
    for prefix, names in results_by_family().items():
        if prefix == "reproduce" and not names:
            md += ["**reproduce_time**: `make reproduce` not timed yet "
                   "(`python bench/reproduce_time.py`, ~45 min).", ""]
        for name in names:
            data = _load(name)
            if data is None or "environment" not in data:
                continue
            lines, key = FAMILIES[prefix](data)
            summary[name] = {"device": data.get("device"), "date": data["environment"]["date"],
                             "threads": data["environment"]["threads"], **key}
            env = data["environment"]
            md += [f"**{name}** ({env['device']}, {env['threads']} threads, {env['date'][:10]})", "",
                   *lines, ""]
    return summary, "\n".join(md).strip()


def _throughput(d: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    lines = ["| preset | model | params | images/s (batch) |", "|---|---|---|---|"]
    lines += [f"| {r['preset']} | {r['model']} | {r['params'] / 1e6:.2f}M | "
              f"{r['images_per_s']:.1f} ({r['batch']}) |" for r in _rows(d)]
    return lines, {"images_per_s": {f"{r['preset']}/{r['model']}": r["images_per_s"] for r in _rows(d)}}


def _overhead(d: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    lines = [f"| preset | model | guidance | sampling / (steps x forward), target <= {d['target']} |",
             "|---|---|---|---|"]
    lines += [f"| {r['preset']} | {r['model']} | {r['guidance']} | {r['overhead']:.3f} |" for r in _rows(d)]
    return lines, {"overhead": {f"{r['preset']}/{r['model']}/{r['guidance']}": r["overhead"]
                                for r in _rows(d)}}


def _distill(d: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    lines = [f"| preset | batch | passes (ms) | step / passes (target <= {d['target']}) | "
             "loss+backward / passes |", "|---|---|---|---|---|"]
    lines += [f"| {r['preset']} | {r['batch']} | {r['passes_s'] * 1e3:.1f} | {r['ratio_step']:.3f} | "
              f"{r['ratio_objective']:.3f} |" for r in _rows(d)]
    return lines, {"ratio_step": {r["preset"]: r["ratio_step"] for r in _rows(d)}}


def _speed(d: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    lines = ["| preset | threads (clock) | batch x steps | teacher (s) | student (s) | speedup | "
             "FLOPs ratio | speedup / FLOPs ratio (rounds: median [min, max]) |",
             "|---|---|---|---|---|---|---|---|"]
    rows = _rows(d)
    for r in rows:
        o = r.get("speedup_over_flops_rounds")
        per_round = (f"{o['median']:.2f} [{o['min']:.2f}, {o['max']:.2f}]" if o
                     else f"{r['speedup_over_flops']:.2f}")
        lines.append(f"| {r['preset']} | {r.get('threads', '')} ({r.get('clock', 'wall')}) | "
                     f"{r['batch']} x {r['steps']} | "
                     f"{r['teacher_latency_s']:.2f} | {r['student_latency_s']:.2f} | "
                     f"{r['speedup']:.2f}x | {r['flops_ratio']:.2f}x | {per_round} |")

    def key(r: dict[str, Any]) -> str:
        return f"{r['preset']}@{r['threads']}" if "threads" in r else r["preset"]

    return lines, {"speedup": {key(r): r["speedup"] for r in rows},
                   "flops_ratio": {key(r): r["flops_ratio"] for r in rows},
                   "speedup_over_flops": {key(r): r["speedup_over_flops"] for r in rows}}


def _train_step(d: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    rows = _rows(d)
    compiled = any("compiled" in r["ratio_to_old"] for r in rows)
    fp32 = any("default_fp32" in r["ratio_to_old"] for r in rows)  # since the bf16 rule
    forced = any("default_bf16" in r["ratio_to_old"] for r in rows)
    old_bf16 = any("old_bf16" in r["ratio_to_old"] for r in rows)
    cpu = ([f"On {d['cpu']} (bf16 instructions, AMX or AVX-512 BF16: "
            f"{'yes' if d.get('cpu_bf16_fast') else 'no'}):", ""] if d.get("cpu") else [])
    lines = [*cpu,
             "| model | params | batch | threads (clock) | default / old step (rounds: median [min, max]) | "
             "channels-last alone | fused AdamW alone |" + (" default in fp32 | autocast |" if fp32 else "")
             + (" forced bf16 / default in fp32 (medians) |" if forced else "")
             + (" old step in bf16 / old |" if old_bf16 else "")
             + (" compiled (first step) |" if compiled else ""),
             "|---|---|---|---|---|---|---|" + ("---|---|" if fp32 else "") + ("---|" if forced else "")
             + ("---|" if old_bf16 else "")
             + ("---|" if compiled else "")]
    ratios = {}
    for r in rows:
        q = r["ratio_to_old"]
        dflt = q["default"]
        amp = "none (fp32)" if r.get("amp") == "None" else str(r.get("amp")).removeprefix("torch.")
        extra = (f" {q['default_fp32']['median']:.2f} | {amp} |"
                 if "default_fp32" in q else (" - | - |" if fp32 else ""))
        if forced:
            extra += (f" {q['default_bf16']['median'] / q['default_fp32']['median']:.2f} |"
                      if "default_bf16" in q else " - |")
        if old_bf16:
            extra += f" {q['old_bf16']['median']:.2f} |" if "old_bf16" in q else " - |"
        extra += (f" {q['compiled']['median']:.2f} ({r['compile_first_step_s']:.0f} s) |"
                  if "compiled" in q else (" - |" if compiled else ""))
        lines.append(f"| {r['preset']} {r['role']} | {r['params'] / 1e6:.2f}M | {r['batch']} | "
                     f"{r['threads']} ({r['clock']}) | "
                     f"{dflt['median']:.2f} [{dflt['min']:.2f}, {dflt['max']:.2f}] | "
                     f"{q['channels_last_only']['median']:.2f} | {q['fused_only']['median']:.2f} |" + extra)
        ratios[f"{r['preset']}/{r['role']}@{r['threads']}"] = dflt["median"]
    return lines, {"default_over_old": ratios}


def _model_ratios(d: dict[str, Any], key: str, header: str,
                  extra: Callable[[dict[str, Any]], str] = lambda r: ""
                  ) -> tuple[list[str], dict[str, Any]]:
    """One row per model of a per-model ratio (`key`: median [min, max] over rounds);
    `header` names the ratio and any columns `extra` appends."""
    columns = 4 + header.count("|") + 1
    lines = [f"| model | ch | rows | clock | {header} |", "|" + "---|" * columns]
    ratios = {}
    for r in _rows(d):
        q = r[key]
        lines.append(f"| {r['preset']} {r['role']} | {r['ch']} | {r['rows']} | {r['clock']} | "
                     f"{q['median']:.2f} [{q['min']:.2f}, {q['max']:.2f}] |{extra(r)}")
        ratios[f"{r['preset']}/{r['role']}"] = q["median"]
    return lines, {key: ratios}


def _freeze(d: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    return _model_ratios(d, "frozen_over_eager", "frozen / eager forward (rounds: median [min, max]) | "
                         "trace (s) | max abs difference",
                         lambda r: f" {r['trace_s']:.1f} | {r['max_abs_diff']:.1e} |")


def _onednn(d: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    return _model_ratios(d, "fused_over_frozen",
                         "oneDNN-fused / frozen forward (rounds: median [min, max]) | max abs difference",
                         lambda r: f" {r['fused_max_abs_diff']:.1e} |")


def _layout(d: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    rows = _rows(d)
    freeze = rows[0].get("freeze", "off (eager)") if rows else ""
    return _model_ratios(d, "nhwc_over_nchw",
                         f"NHWC / NCHW forward, freeze {freeze} (rounds: median [min, max])")


def _profile(d: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    lines = ["| preset | layout | teacher / student ms | conv GFLOP/s teacher / student | GroupNorm share "
             "teacher / student | speedup / FLOPs | convolutions alone |", "|---|---|---|---|---|---|---|"]
    key = {}
    for r in _rows(d):
        t, s = r["teacher"], r["student"]
        measured = r.get("speedup_over_flops", r["time_ratio"] / r["flops_ratio"])
        # files written before the bound was reported: the same quantity from the conv shares
        conv_ms = [m["share"]["conv"] * m["ms_per_forward"] for m in (t, s)]
        bound = r.get("conv_bound_speedup_over_flops", conv_ms[0] / conv_ms[1] / r["flops_ratio"])
        lines.append(f"| {r['preset']} | {d.get('channels_last', 'auto')} | {t['ms_per_forward']:.1f} / "
                     f"{s['ms_per_forward']:.1f} | {t['conv_gflops_per_s']:.0f} / "
                     f"{s['conv_gflops_per_s']:.0f} | "
                     f"{t['share']['group_norm']:.2f} / {s['share']['group_norm']:.2f} | {measured:.2f} | "
                     f"{bound:.2f} |")
        key[r["preset"]] = {"speedup_over_flops": measured, "conv_bound_speedup_over_flops": bound}
    return lines, key


def _upsample(d: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    lines = ["| preset | input (B, C, H, W) | NCHW kernel us | dash us (rounds: median [min, max] of the "
             "NCHW kernel's) | detour us | broadcast us | NHWC kernel us |", "|---|---|---|---|---|---|---|"]
    key = {}
    for r in _rows(d):
        us, q = r["median_us"], r["dash_over_nchw_kernel"]
        shape = "x".join(map(str, r["shape"]))
        lines.append(f"| {r['preset']} | {shape} | {us['nchw_kernel']:.0f} | {us['dash']:.0f} "
                     f"({q['median']:.2f} [{q['min']:.2f}, {q['max']:.2f}]) | {us['detour']:.0f} | "
                     f"{us['broadcast']:.0f} | {us['nhwc_kernel']:.0f} |")
        key[shape] = q["median"]
    return lines, {"dash_over_nchw_kernel": key}


def _memory(d: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    rows = _rows(d)
    method = rows[0]["method"] if rows else ""
    lines = [f"| preset | scenario | peak MiB ({method}) |", "|---|---|---|"]
    lines += [f"| {r['preset']} | {r['scenario']} | "
              f"{'n/a' if r['peak_bytes'] is None else format(r['peak_bytes'] / 2**20, '.1f')} |"
              for r in rows]
    return lines, {"peak_mib": {f"{r['preset']}/{r['scenario']}": None if r["peak_bytes"] is None
                                else r["peak_bytes"] / 2**20 for r in rows}}


def _gpu_hours(d: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    hours = {f"{p['preset']}/{r['phase']}": {"1gpu": r["hours_1gpu"], "8gpu": r["hours_8gpu"]}
             for p in d["presets"] for r in p["rows"]}
    return ["Estimated GPU hours for the cifar presets: the table above and docs/scaling.md."], \
        {"hours": hours}


def _reproduce(d: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    stages = d.get("notebook_s", {})
    per = f"; notebooks: {', '.join(f'{k} {v:.0f} s' for k, v in stages.items())}" if stages else ""
    where = f" in the checkout of {d['checkout_commit']}" if "checkout_commit" in d else ""
    return [f"`{d['command']}`{where}: {d['wall_min']:.1f} min (exit {d['returncode']}){per}"], \
        {"wall_min": d["wall_min"], "returncode": d["returncode"], "notebook_s": stages,
         "commit": d.get("checkout_commit", d["environment"].get("git_commit"))}


def _pool(d: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    stage = d.get("stage", "distillation")  # results before --stage timed notebook 02's pool
    lines = [f"Stage: {stage} (notebook {'04' if stage == 'ablations' else '02'}'s training pool)", "",
             f"| round | commit | wall s | students' own s (sum) | efficiency ({d['workers']} workers) "
             "| weights = this checkout's |", "|---|---|---|---|---|---|"]
    for r in d["runs"]:
        same = r.get("weights_identical_to_this_checkout")
        lines.append(f"| {r['round']} | {r['commit']} | {r['wall_s']:.0f} | {r['sum_runs_s']:.0f} | "
                     f"{r['pool_efficiency']:.2f} | {'-' if same is None else same} |")
    return lines, {"wall_s": {f"{r['round']}/{r['commit']}": r["wall_s"] for r in d["runs"]}}


Cells = Callable[[dict[str, Any]], str]


def _ratio_table(d: dict[str, Any], header: str, ratio: str, key: Cells, first: Cells,
                 last: Cells) -> tuple[list[str], dict[str, Any]]:
    """A markdown row per result row: `first` cells, the ratio's median [min, max], `last` cells."""
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    ratios = {}
    for r in _rows(d):
        q = r[ratio]
        lines.append(f"| {first(r)} | {q['median']:.2f} [{q['min']:.2f}, {q['max']:.2f}] | {last(r)} |")
        ratios[key(r)] = q["median"]
    return lines, {ratio: ratios}


def _allocator(d: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    return _ratio_table(
        d, "| model | work | tuned / glibc defaults, CPU time (rounds: median [min, max]) | "
           "page faults per call (defaults -> tuned) |", "tuned_over_system",
        key=lambda r: f"{r['preset']}/{r['role']}/{r['mode']}",
        first=lambda r: f"{r['preset']} {r['role']} | {r['mode']}, {r['rows']} rows",
        last=lambda r: f"{r['system_faults']:,.0f} -> {r['tuned_faults']:,.0f}")


def _decode(d: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    lines, key = _ratio_table(
        d, "| JPEG | target | draft / full decode, CPU time (rounds: median [min, max]) | "
           "max / mean abs pixel difference |", "draft_over_full",
        key=lambda r: f"{r['photo'][0]}x{r['photo'][1]}/{r['target']}",
        first=lambda r: f"{r['photo'][0]}x{r['photo'][1]} | {r['target']}",
        last=lambda r: f"{r['max_abs_diff']} / {r['mean_abs_diff']:.2f}")
    threads = d.get("decode_all")
    if threads:
        q = threads["two_over_one_wall"]
        size = "x".join(map(str, threads["size"]))
        lines += ["", f"`decode_all` over {threads['photos']} {size} JPEGs: "
                  f"two threads / one {q['median']:.2f} [{q['min']:.2f}, {q['max']:.2f}] (wall clock)"]
        key["decode_two_over_one_threads"] = q["median"]
    return lines, key


Formatter = Callable[[dict[str, Any]], tuple[list[str], dict[str, Any]]]

# Result families: bench/results/<name>.json is summarised by the formatter of the
# longest prefix here that `name` starts with (sampling_speed_zen4 by sampling_speed,
# freeze_speed_onednn by its own), families in this order, a family's files by name, so
# a result written under a new --name needs no entry. Files of no family are left out.
FAMILIES: dict[str, Formatter] = {
    "train_throughput": _throughput, "sampler_overhead": _overhead, "distill_step": _distill,
    "sampling_speed": _speed, "peak_memory": _memory, "gpu_hours": _gpu_hours,
    "freeze_speed": _freeze, "freeze_speed_onednn": _onednn, "allocator_speed": _allocator,
    "train_step_speed": _train_step, "layout_speed": _layout, "forward_profile": _profile,
    "upsample_speed": _upsample, "reproduce": _reproduce, "decode_speed": _decode,
    "distill_pool": _pool,
}


def family(name: str) -> str | None:
    """The family prefix a result file's name belongs to (the longest match), or None."""
    matches = [prefix for prefix in FAMILIES if name.startswith(prefix)]
    return max(matches, key=len) if matches else None


def results_by_family() -> dict[str, list[str]]:
    """{family: [result names, sorted]} for the result files present, in FAMILIES order."""
    names = sorted(path.stem for path in RESULTS.glob("*.json"))
    return {prefix: [n for n in names if family(n) == prefix] for prefix in FAMILIES}


def update_readme(text: str) -> None:
    path = ROOT / "README.md"
    doc = path.read_text()
    if BEGIN not in doc:
        print(f"{path} has no {BEGIN} marker; not updated")
        return
    path.write_text(re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), f"{BEGIN}\n{text}\n{END}", doc,
                           flags=re.S))
    print(f"updated {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=QUICK, help="run only these (default: all quick ones)")
    ap.add_argument("--summary-only", action="store_true", help="summarise existing results only")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--readme", action="store_true", help="write the summary into README.md")
    args = ap.parse_args()
    walls = {}
    if not args.summary_only:
        for name in args.only or QUICK:
            print(f"== {name}", flush=True)
            walls[name] = run(name, args.device)
    summary, text = summarise()
    summary["bench_wall_s"] = walls
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (RESULTS / "summary.md").write_text(text + "\n")
    print(RESULTS / "summary.json")
    if args.readme:
        update_readme(text)


if __name__ == "__main__":
    main()
