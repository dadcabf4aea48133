"""Saving figures and tables with provenance, and the `figures/README.md` index.

Every figure is written as PNG and PDF, every table as Markdown, LaTeX and
CSV, each atomically, with a JSON sidecar `<name>.json` recording what made
it (preset, seeds, steps, git commit, date, whether it was a --quick run) and
which paper claim it tests. `write_index` rebuilds the index from the sidecars.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dashlib.io import atomic_write_bytes, atomic_write_json, atomic_write_text

CLAIMS = {
    "C1": "5.9x compression within 4 FID of the teacher",
    "C2": "distillation beats training the student from scratch",
    "C3": "output-level distillation collapses the guidance gap; DASH keeps it",
    "C4": "unconditional supervision gives over 60% of the total gain",
    "C5": "TIRT Transfer and the anchor add complementary gains",
    "C6": "output loss alone does not measure guidance preservation",
}


@dataclass(frozen=True)
class Provenance:
    """What produced an artifact; stored beside it."""

    preset: str
    seeds: tuple[int, ...]
    steps: Mapping[str, int]
    quick: bool = False
    notebook: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def noted(self, **notes: str | None) -> Provenance:
        """This provenance with the `notes` that are not None added to `extra` (a warning the
        figures index shows, e.g. `rho_undefined`)."""
        given = {k: v for k, v in notes.items() if v is not None}
        return dataclasses.replace(self, extra={**self.extra, **given}) if given else self

    def record(self, name: str, title: str, claims: Sequence[str], kind: str,
               files: Sequence[str]) -> dict[str, Any]:
        return {"name": name, "title": title, "kind": kind, "claims": list(claims),
                "files": list(files), "preset": self.preset, "seeds": list(self.seeds),
                "steps": dict(self.steps), "quick": self.quick, "notebook": self.notebook,
                "git_commit": git_commit(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                **dict(self.extra)}


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=False, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def save_figure(fig: Any, folder: str | Path, name: str, title: str, claims: Sequence[str],
                provenance: Provenance, data: Sequence[Mapping[str, Any]] | None = None) -> Path:
    """Write `<name>.png`, `<name>.pdf` and `<name>.json`; returns the PNG path. `data`
    (the plotted values, one dict per point or series) goes into the JSON sidecar only."""
    folder = Path(folder)
    record = provenance.record(name, title, claims, "figure", [f"{name}.png", f"{name}.pdf"])
    meta = json.dumps(record)
    if data is not None:
        record["data"] = [dict(d) for d in data]
    for ext, metadata in (("png", {"Description": meta}), ("pdf", {"Subject": meta})):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=150, bbox_inches="tight", metadata=metadata)
        atomic_write_bytes(folder / f"{name}.{ext}", buf.getvalue())
    atomic_write_json(folder / f"{name}.json", record)
    write_index(folder)
    return folder / f"{name}.png"


@dataclass(frozen=True)
class MeanStd:
    """A mean and standard deviation over seeds: "m ± s" in Markdown/LaTeX, and two
    numeric CSV columns `<column>_mean`, `<column>_std` (empty when missing)."""

    mean: float | None
    std: float | None
    digits: int = 3

    def __str__(self) -> str:
        if self.mean is None or math.isnan(self.mean):
            return "–"
        if self.std is None or math.isnan(self.std):
            return f"{self.mean:.{self.digits}f}"
        return f"{self.mean:.{self.digits}f} ± {self.std:.{self.digits}f}"


@dataclass(frozen=True)
class Shown:
    """A number with its display text (e.g. 1624577 shown as "1,624,577"): the text in
    Markdown/LaTeX, the number in the CSV."""

    value: float | int | None
    text: str

    def __str__(self) -> str:
        return self.text


def _csv_header(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> list[str]:
    """A MeanStd column becomes two columns, `<c>_mean` and `<c>_std`."""
    out: list[str] = []
    for c in columns:
        split = any(isinstance(r.get(c), MeanStd) for r in rows)
        out += [f"{c}_mean", f"{c}_std"] if split else [c]
    return out


def _csv_row(row: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
             columns: Sequence[str]) -> list[Any]:
    """Plain numbers for the CSV: NaN/None/missing are empty cells, so `read_csv` gives floats."""
    def number(v: Any) -> Any:
        return "" if v is None or (isinstance(v, float) and math.isnan(v)) else v

    out: list[Any] = []
    for c in columns:
        v = row.get(c)
        if any(isinstance(r.get(c), MeanStd) for r in rows):
            out += [number(v.mean), number(v.std)] if isinstance(v, MeanStd) else [number(v), ""]
        else:
            out.append(number(v.value if isinstance(v, Shown) else v))
    return out


def _cell(value: Any, digits: int) -> str:
    if isinstance(value, (MeanStd, Shown)):
        return str(value)
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.{digits}f}"
    return "–" if value is None else str(value)


def save_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], folder: str | Path,
               name: str, title: str, claims: Sequence[str], provenance: Provenance,
               digits: int = 3) -> Path:
    """Write `<name>.md`, `.tex`, `.csv` and `.json`; returns the Markdown path.

    Cells may be `MeanStd` ("m ± s" in Markdown/LaTeX, separate numeric `_mean`/`_std`
    CSV columns) or `Shown` (display text, numeric CSV value), so `pandas.read_csv`
    of the CSV gives numbers."""
    folder = Path(folder)
    cells = [[_cell(r.get(c), digits) for c in columns] for r in rows]
    md = [f"**{name}: {title}**", "", "| " + " | ".join(columns) + " |",
          "|" + "|".join("---" for _ in columns) + "|"]
    md += ["| " + " | ".join(row) + " |" for row in cells]
    atomic_write_text(folder / f"{name}.md", "\n".join(md) + "\n")
    esc = [c.replace("_", r"\_").replace("%", r"\%").replace("±", r"$\pm$") for c in columns]
    tex = [r"\begin{tabular}{" + "l" * len(columns) + "}", r"\toprule", " & ".join(esc) + r" \\",
           r"\midrule"]
    tex += [" & ".join(c.replace("_", r"\_").replace("±", r"$\pm$") for c in row) + r" \\"
            for row in cells]
    tex += [r"\bottomrule", r"\end{tabular}"]
    atomic_write_text(folder / f"{name}.tex", "\n".join(tex) + "\n")
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(_csv_header(rows, columns))
    writer.writerows([_csv_row(r, rows, columns) for r in rows])
    atomic_write_text(folder / f"{name}.csv", buf.getvalue())
    record = provenance.record(name, title, claims, "table",
                               [f"{name}.md", f"{name}.tex", f"{name}.csv"])
    atomic_write_json(folder / f"{name}.json", record)
    write_index(folder)
    return folder / f"{name}.md"


def show(path: str | Path) -> None:
    """Display a saved figure (PNG) or table (Markdown) in a notebook."""
    from IPython.display import Image, Markdown, display

    path = Path(path)
    display(Image(filename=str(path)) if path.suffix == ".png" else Markdown(path.read_text()))


def _marker(path: Path) -> dict:
    """A JSON object `dash reproduce` left beside the figures, {} where there is none."""
    try:
        found = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return found if isinstance(found, dict) else {}


def _folder_notes(folder: Path, records: Sequence[Mapping[str, Any]]) -> list[str]:
    """What the figures were made of where it is not the preset's own: the image folder
    (`data.json`, kept in the full-budget folder above a quick/ one), less the records that
    name data of their own (the workshop's toy data, its sidecars' `own_data`), a warning for
    records made from other contents of the folder (their `data_files`), and the preset
    keys changed (`overrides.json`), as `dashlib.reproduce.prepared_figures_dir` records them."""
    data = _marker(folder / "data.json") or (_marker(folder.parent / "data.json")
                                             if folder.name == "quick" else {})
    changed = _marker(folder / "overrides.json")
    own: dict[str, list[str]] = {}
    for r in records:
        if isinstance(r.get("own_data"), str):
            own.setdefault(r["own_data"], []).append(r["name"])
    besides = "".join(f" ({', '.join(names)}: {what})" for what, names in own.items())
    notes = [f"Data: the image folder {data['data_root']}{besides}."] if data.get("data_root") else []
    older = [r["name"] for r in records if r.get("data_files") not in (None, data.get("files"))]
    if data.get("files") and older:
        notes.append(f"Warning: {', '.join(older)} {'was' if len(older) == 1 else 'were'} made from "
                     f"earlier contents of the image folder (its images have changed since): "
                     f"rerun dash reproduce without --only to remake them.")
    if changed.get("overrides"):
        keys = ", ".join(f"{k} = {json.dumps(v)}" for k, v in changed["overrides"].items())
        notes.append(f"Changed from the {changed.get('preset', '')} preset: {keys}.")
    return notes


def write_index(folder: str | Path) -> Path:
    """Rebuild `README.md` in a figures folder from the sidecars found there."""
    folder = Path(folder)
    records = []
    for sidecar in sorted(folder.glob("*.json")):
        try:
            rec = json.loads(sidecar.read_text())
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and rec.get("kind") in ("figure", "table"):
            records.append(rec)
    # the repository's docs/paper.md from wherever the folder is (figures/, figures/<label>/quick/, ...)
    paper = Path(os.path.relpath(Path(__file__).resolve().parent.parent / "docs" / "paper.md",
                                 folder.resolve())).as_posix()
    lines = ["# Figures and tables", "",
             "Regenerated by the notebooks (`dash reproduce`); never edited by hand. Each entry "
             f"names the paper claim it tests ([docs/paper.md]({paper})) and what produced it.", "",
             "| id | what | claims | files | preset | seeds | quick | commit | date |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        files = ", ".join(f"[{f.split('.')[-1]}]({f})" for f in r["files"])
        claims = ", ".join(r["claims"])
        lines.append(f"| {r['name']} | {r['title']} | {claims} | {files} | {r['preset']} | "
                     f"{', '.join(map(str, r['seeds']))} | {'yes' if r['quick'] else 'no'} | "
                     f"{r['git_commit']} | {r['date']} |")
    from dashlib.adequacy import records_warning

    notes = [records_warning(records), *_folder_notes(folder, records),
             *sorted({f"Warning: {r['rho_undefined']}." for r in records if r.get("rho_undefined")})]
    if any(r.get("quick") for r in records):
        notes.append("Quick run: a smoke test at reduced budgets (dash reproduce --quick); its "
                     "numbers and verdicts are not the paper's claims.")
    lines[2:2] = [line for note in notes if note for line in (f"**{note}**", "")]
    lines += ["", "Claims:", ""] + [f"- **{k}**: {v}" for k, v in CLAIMS.items()]
    return atomic_write_text(folder / "README.md", "\n".join(lines) + "\n")
