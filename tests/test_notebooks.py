"""Every notebook runs headless through papermill on the `tiny` preset.

They run in order in one runs folder (later notebooks reuse what earlier ones
trained, as in `dash reproduce`), then the expected figures and tables must
exist and every number in their sidecars and tables must be finite.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from pathlib import Path

import nbformat
import pytest

from dashlib.reproduce import EXTRA_NOTEBOOKS, NOTEBOOKS, ReproduceError, notebooks_dir, reproduce

FIGURES = ["F1_samples", "F2_gap_calibration", "F3_guidance_sweep", "F4_tirt_curriculum",
           "F5_dynamics", "F6_ablation", "F7_steps_compression"]
TABLES = ["T1_main_results", "T2_ablation", "T3_calibration", "T4_efficiency"]


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    root = tmp_path_factory.mktemp("reproduce")
    runs, figures = root / "runs", root / "figures"
    old = {k: os.environ.get(k) for k in ("DASH_RUNS", "MPLBACKEND")}
    os.environ.update(DASH_RUNS=str(runs), MPLBACKEND="Agg")
    try:
        paths = reproduce("tiny", figures=figures, device="cpu", progress=False)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return paths, figures / "tiny"


def test_every_notebook_ran(executed):
    paths, _ = executed
    assert [p.stem for p in paths] == list(NOTEBOOKS)
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(c.get("execution_count") for c in code), f"{path.name} has unexecuted cells"
        errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors, f"{path.name}: {errors[:1]}"


def test_no_progress_hides_the_bars_inside_the_notebooks(executed):
    """`reproduce(progress=False)` (`dash reproduce --no-progress`) reaches the notebooks'
    `progress` parameter: no tqdm bar (text, or a widget's text form) in any output."""
    paths, _ = executed
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
        text = "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in outputs)
        assert "%|" not in text, f"{path.name} shows a progress bar: {text[text.index('%|') - 40:][:120]!r}"


def test_every_figure_and_table_exists_with_provenance(executed):
    _, figures = executed
    for name in FIGURES:
        for ext in ("png", "pdf"):
            assert (figures / f"{name}.{ext}").stat().st_size > 1000, name
    for name in TABLES:
        for ext in ("md", "tex", "csv"):
            assert (figures / f"{name}.{ext}").stat().st_size > 50, name
    for name in FIGURES + TABLES:
        record = json.loads((figures / f"{name}.json").read_text())
        assert record["preset"] == "tiny" and record["git_commit"] and record["date"]
        assert record["claims"], name
    index = (figures / "README.md").read_text()
    assert all(name in index for name in FIGURES + TABLES)


def test_guidance_sweep_sidecar_holds_finite_plotted_values(executed):
    _, figures = executed
    data = json.loads((figures / "F3_guidance_sweep.json").read_text())["data"]
    assert {d["guidance"] for d in data} >= {"0", "tag"}
    assert {"teacher", "dash", "cond-only"} <= {d["method"] for d in data}
    for d in data:
        assert math.isfinite(d["fid_mean"]) and 0 <= d["accuracy_mean"] <= 1, d


def _numbers(text: str) -> list[float]:
    out = []
    for token in text.replace("±", " ").replace(",", "").split():
        try:
            out.append(float(token.rstrip("x%")))
        except ValueError:
            pass
    return out


def test_table_values_are_finite(executed):
    _, figures = executed
    for name in TABLES:
        with open(figures / f"{name}.csv") as f:
            rows = list(csv.DictReader(f))
        assert rows, name
        for row in rows:
            for value in row.values():
                assert all(math.isfinite(v) for v in _numbers(value or "")), (name, row)


#: (table, first-column value, column) cells that may be empty: the single-head student has
#: no unconditional branch, so no guidance gap and no unconditional error; the teacher's
#: speedup over its own FLOPs.
EMPTY_BY_DESIGN = {("T1_main_results", "single-head", "rho"),
                   *(("T3_calibration", "single-head", c) for c in ("rho", "cos", "gap_mse", "uncond_mse")),
                   ("T4_efficiency", "teacher", "speedup / FLOPs ratio")}


def test_table_cells_hold_a_number_wherever_one_is_due(executed):
    """NaN and None are written as empty cells (`report.save_table`), so a NaN FID would
    pass `test_table_values_are_finite`: every cell but those empty by design is filled
    (a std too: the tiny preset evaluates two seeds)."""
    _, figures = executed
    for name in TABLES:
        with open(figures / f"{name}.csv") as f:
            reader = csv.DictReader(f)
            first = reader.fieldnames[0]
            rows = list(reader)
        for row in rows:
            for column, value in row.items():
                if (name, row[first], column) not in EMPTY_BY_DESIGN:
                    assert value not in ("", None), (name, row[first], column)


def test_table_csvs_hold_numbers_with_mean_and_std_apart(executed):
    import pandas as pd

    _, figures = executed
    labels = {"model", "variant", "method", "TIRT"}
    for name in TABLES:
        df = pd.read_csv(figures / f"{name}.csv")
        for column in set(df.columns) - labels:
            assert df[column].dtype.kind in "if", (name, column, df[column].dtype)
    t1 = pd.read_csv(figures / "T1_main_results.csv")
    assert {"FID_mean", "FID_std", "accuracy_mean", "accuracy_std"} <= set(t1.columns)
    assert "±" in (figures / "T1_main_results.md").read_text()


def test_f1_sidecar_describes_what_was_drawn(executed):
    from dashlib.presets import get_preset

    _, figures = executed
    record = json.loads((figures / "F1_samples.json").read_text())
    assert record["seeds"] == [42]
    assert record["steps"]["ddim"] == get_preset("tiny").sample.steps
    assert record["class_names_shown"] == ["class0", "class1", "class2", "class3"]  # one per row, in order


def test_notebooks_are_committed_clean_and_thin():
    for name in NOTEBOOKS + EXTRA_NOTEBOOKS:
        nb = nbformat.read(notebooks_dir() / f"{name}.ipynb", as_version=4)
        assert nb.cells[0].cell_type == "markdown"
        params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(params) == 1 and nb.cells.index(params[0]) == 1, name
        for c in nb.cells:
            if c.cell_type == "code":
                assert not c.get("outputs") and not c.get("execution_count"), name
        # literals only: every line of the parameters cell is `name = <literal>`
        for line in params[0].source.splitlines():
            code = line.split("#")[0].strip()
            if code:
                name_, _, value = code.partition("=")
                assert name_.strip().isidentifier()
                import ast

                ast.literal_eval(value.strip())


def test_every_notebook_takes_preset_and_quick():
    """`dash reproduce --quick` only reaches notebooks that declare `quick`; one that did
    not (06 once) silently trained the full-budget teacher inside a quick run."""
    for name in NOTEBOOKS + EXTRA_NOTEBOOKS:
        nb = nbformat.read(notebooks_dir() / f"{name}.ipynb", as_version=4)
        params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        declared = {line.split("=")[0].strip() for line in params.source.splitlines() if "=" in line}
        assert {"preset", "quick"} <= declared, name


def test_claims_notebook_runs_only_when_named(tmp_path, monkeypatch):
    """08_claims is not in the default reproduction; `--only 08_claims` runs it (tiny: seconds)."""
    assert "08_claims" not in NOTEBOOKS
    monkeypatch.setenv("DASH_RUNS", str(tmp_path / "runs"))
    (path,) = reproduce("tiny", only=["08_claims"], figures=tmp_path / "figs", device="cpu",
                        progress=False, workers=1)
    figures = tmp_path / "figs" / "tiny"
    assert (figures / "F8_claims_budget.png").stat().st_size > 1000
    record = json.loads((figures / "F8_claims_budget.json").read_text())
    assert record["preset"] == "tiny" and record["complete"] and not record["missing"]
    assert record["total_cpu_s"] > 0 and {"fid_mean", "rho_mean"} <= set(record["data"][0])
    with open(figures / "T8_claims_verdicts.csv") as f:
        rows = list(csv.DictReader(f))
    verdict = (r"(holds|refuted|within spread) \([+-]\d+\.\d{3} vs \d+\.\d{3}\)"
               r"|no spread \(one seed\) \([+-]\d+\.\d{3}\)")
    assert rows and all(re.fullmatch(verdict, r[b]) for r in rows for b in ("2", "4")), rows
    with open(figures / "T8_claims_sweep.csv") as f:  # numbers, not "m ± s" text
        sweep = list(csv.DictReader(f))
    assert sweep and {"FID_mean", "FID_std", "rho_mean", "accuracy_std"} <= set(sweep[0])
    assert all(float(r["FID_mean"]) >= 0 and "±" not in "".join(r.values()) for r in sweep), sweep
    assert (tmp_path / "runs" / "tiny" / "claims_sweep.json").is_file()  # the resumable state


def test_a_failing_notebook_names_itself_and_the_cell(tmp_path, monkeypatch):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# broken"),
                nbformat.v4.new_code_cell("preset = 'tiny'", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("1 / 0")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    (tmp_path / "00_quickstart.ipynb").write_text(nbformat.writes(nb))
    monkeypatch.setattr("dashlib.reproduce.notebooks_dir", lambda: tmp_path)
    monkeypatch.setenv("DASH_RUNS", str(tmp_path / "runs"))
    with pytest.raises(ReproduceError, match=r"00_quickstart.ipynb failed in cell .*ZeroDivisionError"):
        reproduce("tiny", only=["00_quickstart"], figures=tmp_path / "figs", progress=False)


def test_unknown_notebook_is_refused():
    with pytest.raises(ReproduceError, match="unknown notebook"):
        reproduce("tiny", only=["99_nope"])
    assert Path(notebooks_dir()).is_dir()


@pytest.mark.skipif(os.name != "posix", reason="IPC sockets are POSIX-only; Windows keeps TCP")
def test_notebooks_talk_to_their_kernel_through_local_sockets_without_a_warning(tmp_path, capfd):
    from dashlib.reproduce import run_notebook

    source = tmp_path / "probe.ipynb"
    # the kernel reads its connection file (named on its command line) while it runs
    code = "import json, sys; print(open(sys.argv[sys.argv.index('-f') + 1]).read())"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)]), source)
    sockets = []
    for run in range(2):
        out = run_notebook(source, tmp_path / f"out{run}.ipynb", {}, progress=False)
        connection = json.loads(nbformat.read(out, as_version=4).cells[0].outputs[0]["text"])
        assert connection["transport"] == "ipc"
        sockets.append(Path(connection["ip"]))
    assert "without encryption" not in capfd.readouterr().err
    # in a folder of their own, never the notebook's (two reproductions at once would share
    # names there), and gone afterwards
    assert sockets[0].parent != sockets[1].parent and all(p.is_absolute() for p in sockets)
    assert not any(tmp_path in p.parents or p.parent.exists() for p in sockets)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out0.ipynb", "out1.ipynb", "probe.ipynb"]


def test_the_kernels_own_log_goes_to_a_file_kept_where_the_notebook_failed(tmp_path, capfd):
    """ipykernel's own messages (and the traceback it prints when Ctrl-C closes its sockets)
    go to <notebook>.kernel.log, not the terminal; it is kept, and named, where the notebook
    failed, and removed where it finished."""
    from dashlib.reproduce import run_notebook

    log_cell = nbformat.v4.new_code_cell('get_ipython().kernel.log.error("kernel-log-marker")')
    for name, cells in (("fails", [log_cell, nbformat.v4.new_code_cell('raise ValueError("boom")')]),
                        ("finishes", [log_cell])):
        nbformat.write(nbformat.v4.new_notebook(cells=cells), tmp_path / f"{name}.ipynb")
    with pytest.raises(ReproduceError, match="ValueError: boom.*the kernel's own log is .*fails.kernel.log"):
        run_notebook(tmp_path / "fails.ipynb", tmp_path / "out" / "fails.ipynb", {}, progress=False)
    assert "kernel-log-marker" in (tmp_path / "out" / "fails.kernel.log").read_text()
    run_notebook(tmp_path / "finishes.ipynb", tmp_path / "out" / "finishes.ipynb", {}, progress=False)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["fails.ipynb", "fails.kernel.log",
                                                                   "finishes.ipynb"]
    assert "kernel-log-marker" not in capfd.readouterr().err


def test_a_kernel_that_dies_is_one_reproduce_error(tmp_path):
    from dashlib.reproduce import run_notebook

    cells = [nbformat.v4.new_code_cell("import os; os._exit(3)")]
    nbformat.write(nbformat.v4.new_notebook(cells=cells), tmp_path / "dies.ipynb")
    with pytest.raises(ReproduceError, match="the kernel running notebook dies.ipynb died"):
        run_notebook(tmp_path / "dies.ipynb", tmp_path / "out" / "dies.ipynb", {}, progress=False)


def test_ctrl_c_silences_the_shutdown_noise_and_still_interrupts(monkeypatch):
    """After Ctrl-C papermill and asyncio would report the kernel shut down under the cell
    ("Kernel died while waiting for execute reply.", "Task exception was never retrieved");
    they are silenced from the signal on, and as they were once the notebook is left. An
    ignored SIGINT (a background job of a script) stays ignored; a handler of the caller's
    own still runs."""
    import logging
    import signal

    from dashlib.reproduce import INTERRUPT_NOISE, quiet_after_interrupt

    for name in INTERRUPT_NOISE:  # a `dash` command interrupted earlier in this process (a test)
        monkeypatch.setattr(logging.getLogger(name), "disabled", False)  # silenced them for good

    def silenced() -> list[bool]:
        return [logging.getLogger(n).disabled for n in INTERRUPT_NOISE]

    before = signal.getsignal(signal.SIGINT)
    with quiet_after_interrupt():
        assert silenced() == [False, False]
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
        assert silenced() == [True, True]
    assert silenced() == [False, False] and signal.getsignal(signal.SIGINT) is before
    calls = []
    for handler in (signal.SIG_IGN, lambda *args: calls.append(silenced())):
        signal.signal(signal.SIGINT, handler)
        try:
            with quiet_after_interrupt():
                signal.raise_signal(signal.SIGINT)
            assert signal.getsignal(signal.SIGINT) is handler
        finally:
            signal.signal(signal.SIGINT, before)
    assert calls == [[True, True]] and silenced() == [False, False]


def test_a_temporary_folder_too_long_for_socket_names_keeps_tcp(tmp_path, monkeypatch):
    from dashlib.reproduce import SOCKET_PATH_MAX, local_kernel

    deep = tmp_path / ("x" * (SOCKET_PATH_MAX - len(str(tmp_path))))
    deep.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(deep))
    with local_kernel() as kernel:
        assert kernel["kernel_manager_class"]().transport == "tcp"
    assert list(deep.iterdir()) == []  # the folder it tried is gone
    monkeypatch.setattr("tempfile.tempdir", None)  # the system's (short) default again
    with local_kernel() as kernel:
        assert kernel["kernel_manager_class"]().transport == "ipc"


def test_a_notebook_left_to_its_default_figures_folder_writes_where_dash_reproduce_would(
        tmp_path, monkeypatch):
    """A notebook run by hand with another preset used to write into figures/ (the digits
    reproduction's committed figures); its default figures_dir (None) now resolves to the
    folder `dash reproduce` uses for that preset, budget and quick setting."""
    import dashlib.reproduce as rep

    monkeypatch.setattr(rep, "notebooks_dir", lambda: tmp_path / "notebooks")
    figures = tmp_path / "figures"
    assert rep.notebook_figures_dir(None, "digits", False) == figures
    assert rep.notebook_figures_dir(None, "tiny", False) == figures / "tiny"
    assert rep.notebook_figures_dir(None, "tiny", True) == figures / "tiny" / "quick"
    assert rep.notebook_figures_dir(None, "digits", True) == figures / "quick"
    changed = rep.notebook_figures_dir(None, "digits", False, {"train.steps": 7})
    assert changed.parent == figures and changed.name.startswith("digits-set-")
    assert json.loads((changed / "overrides.json").read_text())["overrides"] == {"train.steps": 7}
    assert changed == rep.figures_dir("digits", False, None, rep.with_data_root("digits", {"train.steps": 7}))
    given = tmp_path / "mine"
    assert rep.notebook_figures_dir(str(given), "tiny", True) == given  # dash reproduce passes its own
    from PIL import Image

    for where, shade in (("a", 40), ("b", 200)):  # two image folders named "pets", other images
        for c in ("cat", "dog", "fox"):
            (tmp_path / where / "pets" / c).mkdir(parents=True)
            for i in range(3):
                Image.new("L", (8, 8), shade + 10 * i).save(tmp_path / where / "pets" / c / f"{i}.png")
    pets = {"data.name": "imagefolder", "data.data_root": str(tmp_path / "a" / "pets")}
    assert rep.notebook_figures_dir(None, "tiny", True, pets) == figures / "tiny-pets" / "quick"
    with pytest.raises(ReproduceError, match="set the notebook's figures_dir parameter"):
        rep.notebook_figures_dir(None, "tiny", True, {**pets, "data.data_root": str(tmp_path / "b" / "pets")})


def test_every_notebook_that_saves_figures_defaults_to_the_reproduce_folder():
    for name in NOTEBOOKS + EXTRA_NOTEBOOKS:
        nb = nbformat.read(notebooks_dir() / f"{name}.ipynb", as_version=4)
        params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        code = [c.source for c in nb.cells if c.cell_type == "code" and c is not params]
        uses = [i for i, src in enumerate(code) if re.search(r"\bfigures_dir\b", src)]
        if not uses:
            continue
        assert re.search(r"^figures_dir = None\b", params.source, re.M), name
        first = code[uses[0]]
        line = "figures_dir = notebook_figures_dir(figures_dir, preset, quick"
        assert line in first and not re.search(r"\bfigures_dir\b", first.split(line)[0]), name  # before use


def test_a_path_that_is_not_utf8_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    """papermill passes the parameters as UTF-8 text: a data root or figures folder named in
    Latin-1 bytes used to fail inside the first notebook with a traceback, after the figures
    folder and its data.json were written."""
    monkeypatch.setenv("DASH_RUNS", str(tmp_path / "runs"))
    latin1 = os.fsdecode(b"d\xe9j\xe0")
    (tmp_path / latin1 / "a").mkdir(parents=True)
    with pytest.raises(ReproduceError, match=r"b'.*d\\xe9j\\xe0' is not valid UTF-8"):
        reproduce("tiny", figures=tmp_path / "figs", device="cpu", progress=False,
                  overrides={"data.name": "imagefolder", "data.data_root": str(tmp_path / latin1)})
    with pytest.raises(ReproduceError, match="--figures"):
        reproduce("tiny", figures=tmp_path / latin1 / "figs", device="cpu", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [latin1]  # no figures, no runs
    assert [p.name for p in (tmp_path / latin1).iterdir()] == ["a"]
    # a link with a UTF-8 name is what the data root's error suggests: the check lets it pass
    # (the next check, an unknown notebook, is what stops this call)
    (tmp_path / "link").symlink_to(tmp_path / latin1)
    with pytest.raises(ReproduceError, match="unknown notebook"):
        reproduce("tiny", only=["bogus"], device="cpu", progress=False,
                  overrides={"data.name": "imagefolder", "data.data_root": str(tmp_path / "link")})
    # the figures go to the resolved folder, so a link does not help there, nor is it suggested
    with pytest.raises(ReproduceError, match=r"--figures .* use a folder whose full path is UTF-8"):
        reproduce("tiny", only=["bogus"], figures=tmp_path / "link" / "figs", device="cpu", progress=False)
    monkeypatch.delenv("DASH_RUNS")
    monkeypatch.chdir(tmp_path / latin1)  # the default runs/ (and data/) are the working directory's
    with pytest.raises(ReproduceError, match="runs/ in the working directory b'"):
        reproduce("tiny", only=["bogus"], device="cpu", progress=False)
