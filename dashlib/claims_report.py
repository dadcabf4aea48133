"""F8 and the per-budget claims tables, from a claims sweep's results (`dashlib.claims`).

* F8: FID, accuracy and rho against the distillation budget, mean and seed
  spread (± one sample std) per variant, one column of panels per resolution;
  the teacher's FID and accuracy as dashed lines, rho = 1 (the teacher's gap) dotted.
* T8a (`T8_claims_sweep`): every variant's FID / accuracy / rho per budget.
* T8b (`T8_claims_verdicts`): every comparison's verdict per budget (a claim
  holds only where its margin exceeds the seed spread; `dashlib.claims.verdict`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dashlib.config import ConfigError
from dashlib.report import MeanStd, Provenance, save_figure, save_table

#: The DASH variants' own colours (the methods keep `plots.colour`'s).
VARIANT_COLOURS = {"dash-no-tirt": "#9467bd", "dash-relearned-tirt": "#e377c2",
                   "dash-principled": "#17becf", "dash-uniform": "#bcbd22"}

PANELS = (("fid", "FID (classifier features)", True), ("accuracy", "accuracy", False),
          ("rho", "rho (gap ratio)", True))


def _pm(mean: float | None, std: float | None, digits: int = 3) -> MeanStd:
    """"m ± s" in Markdown and LaTeX, numeric `_mean` / `_std` columns in the CSV."""
    return MeanStd(mean, std, digits)


def figure(state: Mapping[str, Any]) -> Any:
    """F8: rows FID / accuracy / rho, one column per resolution (preset)."""
    import matplotlib.pyplot as plt

    from dashlib import plots

    plots.style()
    presets = list(dict.fromkeys(p["preset"] for p in state["plan"]))
    fig, axes = plt.subplots(len(PANELS), len(presets), figsize=(4.6 * len(presets), 9.0),
                             squeeze=False, sharex="col")
    for col, preset in enumerate(presets):
        entries = [e for e in state["summary"] if e["preset"] == preset]
        for row, (metric, label, log) in enumerate(PANELS):
            ax = axes[row][col]
            _panel(ax, entries, metric, label, log, state["teachers"].get(preset, {}))
            if row == 0:
                ax.set_title(f"{preset}")
            if row == len(PANELS) - 1:
                _budget_axis(ax, state, preset, entries)
    _legend(fig, axes)
    note = "" if state.get("complete") else f" (partial: {len(state.get('missing', []))} cells missing)"
    fig.suptitle(f"F8: students against the distillation budget, mean ± std over seeds{note}")
    fig.tight_layout()
    return fig


def _panel(ax: Any, entries: list[Mapping[str, Any]], metric: str, label: str, log: bool,
           teacher: Mapping[str, Any]) -> None:
    """One metric of one preset: each variant's mean ± std over seeds against the budget,
    and the teacher's line (rho's is 1 by definition)."""
    import matplotlib.ticker as ticker

    from dashlib import plots

    variants = list(dict.fromkeys(e["variant"] for e in entries))
    for i, v in enumerate(variants):
        pts = sorted((e["budget"], e[f"{metric}_mean"], e[f"{metric}_std"] or 0.0)
                     for e in entries if e["variant"] == v and e[f"{metric}_mean"] is not None)
        if not pts:
            continue
        x, m, s = zip(*pts)
        # a small per-variant offset along the (log) budget axis keeps error bars apart
        x = [b * (1 + 0.025 * (i - (len(variants) - 1) / 2)) for b in x]
        c = VARIANT_COLOURS.get(v) or plots.colour(v)
        ls = "--" if v.startswith("dash-") else "-"
        ax.errorbar(x, m, yerr=s, fmt=ls, marker="o", ms=4, color=c, capsize=2.5,
                    lw=2.4 if v == "dash" else 1.4, label=v)
    if not entries:
        ax.text(0.5, 0.7, "not run yet", transform=ax.transAxes, ha="center", va="center", color="grey")
    if metric in ("fid", "accuracy") and teacher.get(metric) is not None:
        ax.axhline(teacher[metric], color="black", ls=":", lw=1.2, label="teacher")
    if metric == "rho":
        ax.axhline(1.0, color="black", ls=":", lw=1.2, label="teacher (rho = 1)")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    if log:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_ylabel(label)


def _budget_axis(ax: Any, state: Mapping[str, Any], preset: str, entries: list[Mapping[str, Any]]) -> None:
    """The bottom row's x axis: ticks at the budgets run or planned, as plain numbers."""
    ax.set_xlabel("distillation budget (steps)")
    planned = [p["budgets"] for p in state["plan"] if p["preset"] == preset]
    budgets = sorted({e["budget"] for e in entries} | set(planned[0] if planned else ()))
    if budgets:
        ax.set_xlim(min(budgets) / 1.3, max(budgets) * 1.3)
        ax.set_xticks(budgets)
        ax.set_xticklabels([str(b) for b in budgets])


def _legend(fig: Any, axes: Any) -> None:
    """One legend below the panels, with every label any panel drew, once."""
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=min(5, len(labels)), frameon=False,
               bbox_to_anchor=(0.5, -0.06))


def sweep_rows(state: Mapping[str, Any]) -> list[dict[str, Any]]:
    """T8a: one row per (preset, variant, budget)."""
    return [{"preset": e["preset"], "variant": e["variant"], "budget": e["budget"],
             "seeds": ", ".join(map(str, e["seeds"])),
             "FID": _pm(e["fid_mean"], e["fid_std"]), "accuracy": _pm(e["accuracy_mean"], e["accuracy_std"]),
             "rho": _pm(e["rho_mean"], e["rho_std"])} for e in state["summary"]]


def verdict_rows(state: Mapping[str, Any]) -> list[dict[str, Any]]:
    """T8b: one row per (preset, comparison), one column per budget."""
    budgets = sorted({v["budget"] for v in state["verdicts"]})
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for v in state["verdicts"]:
        row = rows.setdefault((v["preset"], v["comparison"]),
                              {"preset": v["preset"], "comparison": v["comparison"]})
        margin = "" if v["margin"] is None else f" ({v['margin']:+.3f}"
        spread = "" if v["margin"] is None else (f" vs {v['spread']:.3f})" if v["spread"] is not None
                                                 else ")")
        row[str(v["budget"])] = f"{v['verdict']}{margin}{spread}"
    return [{**r, **{str(b): r.get(str(b), "–") for b in budgets}} for r in rows.values()]


def provenance(state: Mapping[str, Any], quick: bool, notebook: str = "08_claims") -> Provenance:
    """What the figures and tables show: the budgets and seeds of the cells summarised (those of
    earlier plans too, a slice the bench ran before: `bench/claims_sweep.py --budgets`), or the
    plan's where none is done yet; `missing` lists the plan's cells still to run."""
    from dashlib.calibration import rho_undefined

    parts = state["plan"]

    def shown(preset: str, key: str, planned: Sequence[int]) -> list[int]:
        done = {v for e in state["summary"] if e["preset"] == preset
                for v in (e[key] if key == "seeds" else [e[key]])}
        return sorted(done or planned)

    budgets = {f"{p['preset']}_budgets": ",".join(map(str, shown(p["preset"], "budget", p["budgets"])))
               for p in parts}
    return Provenance(",".join(p["preset"] for p in parts),
                      tuple(sorted({s for p in parts for s in shown(p["preset"], "seeds", p["seeds"])})),
                      budgets,
                      quick=quick, notebook=notebook,
                      extra={"complete": state["complete"], "missing": state["missing"],
                             "total_cpu_s": state["total_cpu_s"], "eval": [p["eval"] for p in parts],
                             "classifier_test_accuracy": _classifier_accuracy(state),
                             "distill_seeds_note": "seeds are distillation seeds; one eval seed each"},
                      ).noted(rho_undefined=rho_undefined(state["cells"].values()))


def _classifier_accuracy(state: Mapping[str, Any]) -> float | None:
    values = [c.get("classifier_test_accuracy") for c in [*state["cells"].values(),
                                                           *state["teachers"].values()]]
    values = [v for v in values if v is not None]
    return min(values) if values else None


def save_all(state: Mapping[str, Any], folder: str | Path, quick: bool = False) -> list[Path]:
    """Write F8, T8_claims_sweep and T8_claims_verdicts into `folder`; returns their paths."""
    import matplotlib.pyplot as plt

    prov = provenance(state, quick)
    fig = figure(state)
    f8 = save_figure(fig, folder, "F8_claims_budget", "FID, accuracy and rho against the "
                     "distillation budget (mean ± std over distillation seeds)",
                     ["C2", "C3", "C5"], prov, data=state["summary"])
    plt.close(fig)
    rows = sweep_rows(state)
    ta = save_table(rows, ["preset", "variant", "budget", "seeds", "FID", "accuracy", "rho"], folder,
                    "T8_claims_sweep", "every variant per budget (mean ± std over seeds)",
                    ["C2", "C3", "C5"], prov)
    vrows = verdict_rows(state)
    budgets = sorted({v["budget"] for v in state["verdicts"]})
    tb = save_table(vrows, ["preset", "comparison", *map(str, budgets)], folder, "T8_claims_verdicts",
                    "claims per budget: holds only where the margin exceeds the seed spread",
                    ["C2", "C3", "C5"], prov)
    return [f8, ta, tb]


def markdown(state: Mapping[str, Any], preset: str) -> str:
    """The README's claims-per-budget table for one preset (verdict and margin vs spread)."""
    rows = [r for r in verdict_rows(state) if r["preset"] == preset]
    budgets = sorted({v["budget"] for v in state["verdicts"] if v["preset"] == preset})
    lines = ["| comparison | " + " | ".join(f"{b} steps" for b in budgets) + " |",
             "|---|" + "---|" * len(budgets)]
    lines += ["| " + r["comparison"] + " | " + " | ".join(r[str(b)] for b in budgets) + " |"
              for r in rows]
    return "\n".join(lines)


def missing_text(state: Mapping[str, Any], parts: Sequence[str] | None = None) -> str:
    """Which planned cells are missing, grouped by (preset, budget)."""
    groups: dict[tuple[str, int], list[str]] = {}
    for key in state["missing"]:
        preset, variant, budget, seed = key.split("/")
        if parts is None or preset in parts:
            groups.setdefault((preset, int(budget)), []).append(f"{variant}@{seed}")
    if not groups:
        return "none"
    return "; ".join(f"{p} {b} steps: {len(v)} cells" for (p, b), v in sorted(groups.items()))


README_START, README_END = "<!-- claims-budget-table -->", "<!-- /claims-budget-table -->"


def readme_block(state: Mapping[str, Any], source: str = "bench/results/claims_sweep.json") -> str:
    """The README's generated block: per preset, the per-budget verdicts and what is missing;
    `source` names the JSON it summarises."""
    lines = [README_START]
    for part in state["plan"]:
        preset = part["preset"]
        done = sorted({c["budget"] for c in state["cells"].values() if c["preset"] == preset})
        lines += ["", f"**{preset}** (budgets run: {', '.join(map(str, done)) or 'none'}; "
                      f"missing cells: {missing_text(state, [preset])})"]
        if done:
            lines += ["", markdown(state, preset)]
    status = "complete" if state["complete"] else "**partial**"
    lines += ["", f"Sweep {status}: {len(state['cells'])} students, total CPU time "
                  f"{state['total_cpu_s'] / 60:.0f} min over {len(state['sessions'])} session(s) "
                  f"(summarised at commit {state['git_commit']}; {source}).",
              README_END]
    return "\n".join(lines)


def readme_span(text: str) -> tuple[int, int]:
    """Where the generated block lies in a README's text (start, end); a `ConfigError` where
    its markers are missing."""
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise ConfigError(f"the README has no claims block to fill: put the lines {README_START} and "
                          f"{README_END} where it goes (--readme)")
    return start, end + len(README_END)


def fill_readme(text: str, state: Mapping[str, Any], source: str = "bench/results/claims_sweep.json") -> str:
    """`text` with the block between the README markers replaced by `readme_block(state, source)`."""
    start, end = readme_span(text)
    return text[:start] + readme_block(state, source) + text[end:]
