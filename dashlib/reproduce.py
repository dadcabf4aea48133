"""Run every notebook in order, headless, with papermill.

Executed copies go under `runs/<label>/notebooks[-quick]/`; figures and tables
under `figures/` (the digits preset), `figures/<label>/` (any other) and a
`quick/` subfolder for --quick runs, so a quick run never overwrites the full
one. The label is the preset's name, plus `-<dataset>` for other data and
`-set-<hash>` for any other override that changes a result (`--set train.steps=100`,
`--seeds 1`), so a changed budget never overwrites the preset's own figures; such a
folder holds `overrides.json` saying what was changed. A failing cell stops the run
with an error naming the notebook and cell.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from dashlib.io import absolute, check_writable_dir
from dashlib.labels import WHERE_KEYS, budget_changes, data_label, output_label  # noqa: F401 (API)
from dashlib.runs import runs_root

NOTEBOOKS = ("00_quickstart", "01_teacher", "02_distillation", "03_evaluation", "04_ablations",
             "05_guidance_gap", "06_explorer", "07_workshop")
#: Run only when named (`--only 08_claims`): they do not fit the default reproduction's budget.
EXTRA_NOTEBOOKS = ("08_claims",)
#: notebooks that read none of the preset's data (the workshop's toy models make their own)
DATALESS_NOTEBOOKS = ("07_workshop",)
DEFAULT_PRESET = "digits"


class ReproduceError(RuntimeError):
    """A notebook failed; the message names it and the cell."""


def notebooks_dir() -> Path:
    """The repository's notebooks/ folder (beside the dashlib package)."""
    return Path(__file__).resolve().parent.parent / "notebooks"


def figures_dir(preset: str, quick: bool, root: str | Path | None = None,
                overrides: Mapping[str, Any] | None = None) -> Path:
    """figures/ (digits, its own budget), else figures/<label>/ (`output_label`); a
    quick/ subfolder for --quick."""
    base = Path(root) if root else notebooks_dir().parent / "figures"
    label = output_label(preset, overrides or {})
    if label != DEFAULT_PRESET:
        base = base / label
    return base / "quick" if quick else base


def prepared_figures_dir(preset: str, quick: bool, root: str | Path | None,
                         overrides: Mapping[str, Any], elsewhere: str = "pass --figures DIR") -> Path:
    """`figures_dir`, absolute and claimed for its data (`claim_figures_folder`); a budget
    changed by `overrides` is written beside the figures (overrides.json), so the
    -set-<hash> folder says what it holds. `overrides` as `resolve_overrides` returns them."""
    fig_dir = figures_dir(preset, quick, root, overrides).resolve()
    claim_figures_folder(figures_dir(preset, False, root, overrides).resolve(), preset, overrides, elsewhere)
    changes = budget_changes(preset, overrides)
    if changes:
        from dashlib.io import atomic_write_json

        fig_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(fig_dir / "overrides.json", {"preset": preset, "overrides": changes})
    return fig_dir


def notebook_figures_dir(figures: str | Path | None, preset: str, quick: bool,
                         overrides: Mapping[str, Any] | None = None) -> Path:
    """A notebook's `figures_dir` parameter: a folder is used as given (`dash reproduce`
    passes its own); None is the folder `dash reproduce` would use for this preset, budget
    and data (`figures_dir`), so a notebook run by hand with another preset does not
    overwrite the digits figures in figures/. An unknown preset is refused either way (the
    workshop, which reads only the name, ran its laptop budget for a typo)."""
    from dashlib.params import ParameterError
    from dashlib.presets import PRESETS

    if preset not in PRESETS.names():
        raise ParameterError(f"notebook parameter preset = {preset!r} is not a preset: choose one of "
                             f"{', '.join(PRESETS.names())}")
    if figures is not None:
        return Path(figures)
    from dashlib.pipeline import notebook_overrides

    # the notebook's budget has checked the overrides; its relative data root is the repository's
    return prepared_figures_dir(preset, quick, None, notebook_overrides(preset, overrides),
                                elsewhere="set the notebook's figures_dir parameter to a folder")


def claim_figures_folder(folder: Path, preset: str, overrides: Mapping[str, Any],
                         elsewhere: str = "pass --figures DIR") -> None:
    """An image folder's figures go to figures/<preset>-<folder name>/, so two folders of
    one name would share it: the folder records its data (`data.json`: root and content
    fingerprint), and a folder of the same name elsewhere with other images is refused
    (moved, or the same root with images added, it is taken as the same data). `elsewhere`
    says how the caller picks another folder (a notebook: its figures_dir parameter)."""
    from dashlib.data import is_user_folder

    if not is_user_folder(overrides.get("data.name")):
        return
    from dashlib.config import to_dict
    from dashlib.data import data_identity
    from dashlib.io import atomic_write_json, read_json
    from dashlib.presets import get_preset

    root = str(overrides["data.data_root"])
    data = get_preset(preset, **{k: v for k, v in overrides.items() if k.startswith("data.")}).data
    files = data_identity(to_dict(data)).get("files")
    marker = folder / "data.json"
    if marker.is_file():
        old = read_json(marker)
        if old.get("data_root") != root and old.get("files") != files:
            raise ReproduceError(
                f"{folder} holds the figures of the image folder {old.get('data_root')}; {root} has the "
                f"same name but other images, and its figures would replace them: {elsewhere} "
                f"(a folder of its own), or delete {folder}")
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(marker, {"data_root": root, "files": files})


def run_notebook(source: Path, target: Path, parameters: Mapping[str, Any],
                 progress: bool = True) -> Path:
    """Execute one notebook with papermill; raise ReproduceError on a failing cell.

    With `progress`, a `RunWatcher` line shows the training steps and evaluation
    cells of the runs this notebook writes (papermill's own bar counts cells only).
    The kernel's own log (`kernel_log`) is kept beside the executed copy only where the
    notebook did not finish.
    """
    import papermill as pm
    from nbclient.exceptions import DeadKernelError

    from dashlib.watch import RunWatcher

    target.parent.mkdir(parents=True, exist_ok=True)
    declared = pm.inspect_notebook(str(source))
    # only what the notebook's parameters cell declares (the rest would only warn)
    parameters = {k: v for k, v in parameters.items() if k in declared}
    log = kernel_log(target)
    finished = False
    try:
        with open(log, "wb") as log_file, RunWatcher(runs_root().resolve(), source.stem, enabled=progress), \
                local_kernel(log_file) as kernel, quiet_after_interrupt():
            pm.execute_notebook(str(source), str(target), parameters=parameters,
                                cwd=str(source.parent), progress_bar=False, kernel_name="python3",
                                log_output=False, **kernel)
        finished = True
    except KeyboardInterrupt:
        finished = True  # the user's: its log holds only the shutdown noise hidden on purpose
        raise
    except pm.PapermillExecutionError as err:
        raise ReproduceError(
            f"notebook {source.name} failed in cell {err.cell_index} (execution count "
            f"{err.exec_count}): {err.ename}: {err.evalue}. The executed copy with the full "
            f"traceback is {target}{log_note(log)}") from None
    except DeadKernelError as err:
        raise ReproduceError(f"the kernel running notebook {source.name} died ({err}); the cells it "
                             f"finished are in {target}{log_note(log)}") from None
    finally:
        if finished or not log_note(log):
            log.unlink(missing_ok=True)
    return target


#: Loggers that report, after a Ctrl-C, the kernel being shut down under a running cell: papermill's
#: "Kernel died while waiting for execute reply." and asyncio's "Task exception was never retrieved"
#: with nbclient's DeadKernelError; the interrupt was the user's, and `dash` says what a rerun keeps.
INTERRUPT_NOISE = ("papermill", "asyncio")


@contextlib.contextmanager
def quiet_after_interrupt() -> Iterator[None]:
    """While a notebook runs, a Ctrl-C (SIGINT) first silences `INTERRUPT_NOISE`, then goes to
    the handler that was there (Python's own raises KeyboardInterrupt); on exit the handler
    and the loggers are as they were. Where SIGINT is ignored (a background job of a script)
    or left to the OS, or cannot be handled here (outside the main thread), nothing changes.
    The `dash` command silences them again for its exit (`silence_interrupt_noise`), when
    asyncio reports last."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous in (signal.SIG_IGN, signal.SIG_DFL, None):
        yield
        return
    loggers = {logger: logger.disabled for logger in map(logging.getLogger, INTERRUPT_NOISE)}

    def interrupted(signum: int, frame: Any) -> None:
        silence_interrupt_noise()
        previous(signum, frame)  # a handler: SIG_IGN, SIG_DFL and None are left alone above

    signal.signal(signal.SIGINT, interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        for logger, disabled in loggers.items():
            logger.disabled = disabled


def silence_interrupt_noise() -> None:
    """Silence `INTERRUPT_NOISE` for good: after a Ctrl-C, in a process about to exit."""
    for name in INTERRUPT_NOISE:
        logging.getLogger(name).disabled = True


def log_note(log: Path) -> str:
    """"; the kernel's own log is LOG" where the kernel wrote one, else ""."""
    return f"; the kernel's own log is {log}" if log.is_file() and log.stat().st_size else ""


def kernel_log(target: Path) -> Path:
    """Where the kernel of the notebook executed to `target` writes its own messages:
    ipykernel's log, and the traceback it prints when an interrupt (Ctrl-C) closes its
    sockets under it; they would otherwise reach the terminal. A cell's output goes to the
    notebook either way."""
    return target.with_name(target.stem + ".kernel.log")


#: The longest socket file path every POSIX system takes (sun_path: 108 bytes on Linux, 104 on
#: macOS, each with its terminating NUL).
SOCKET_PATH_MAX = 103


@contextlib.contextmanager
def local_kernel(log: IO[bytes] | None = None) -> Iterator[dict[str, Any]]:
    """papermill's kernel options: a kernel manager whose kernel writes its own log (its
    stderr) to `log` (None: this process's stderr), and talks to this process through
    local socket files (IPC) where the OS has them: over TCP the traffic crosses
    unencrypted local ports, and every kernel start prints ipykernel's warning about it.
    Windows has no IPC and keeps TCP.

    The sockets lie in a new temporary folder, removed on exit: jupyter_client's default
    names them in the working directory (the checkout's notebooks/), where two
    reproductions at once would take each other's sockets. Where no such folder can be
    made, or its path is too long for a socket's name (`SOCKET_PATH_MAX`; a long $TMPDIR),
    TCP is kept."""
    try:
        folder = tempfile.mkdtemp(prefix="dash-kernel-") if os.name == "posix" else None
    except OSError:
        folder = None
    if folder is not None and len(os.path.join(folder, "kernel-65535")) > SOCKET_PATH_MAX:
        os.rmdir(folder)
        folder = None
    try:
        yield {"kernel_manager_class": kernel_manager(folder, log)}
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def kernel_manager(folder: str | None, log: IO[bytes] | None) -> type:
    """jupyter_client's kernel manager, its sockets in `folder` (None: TCP) and its
    kernel's stderr to `log` (None: inherited)."""
    from jupyter_client.manager import AsyncKernelManager

    class DashKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs: Any) -> None:
            where = {} if folder is None else {"transport": "ipc", "ip": os.path.join(folder, "kernel")}
            super().__init__(**{**where, **kwargs})

        async def _async_launch_kernel(self, kernel_cmd: list[str], **kw: Any) -> None:
            await super()._async_launch_kernel(kernel_cmd, **({"stderr": log} if log else {}), **kw)

    return DashKernelManager


def notebook_parameters(preset: str, quick: bool, figures: Path, device: str, threads: int,
                        workers: int, overrides: Mapping[str, Any], progress: bool = True) -> dict[str, Any]:
    """What every notebook may declare; `run_notebook` passes each the ones it declares."""
    return {"preset": preset, "quick": quick, "figures_dir": str(figures), "device": device,
            "runs_dir": str(runs_root().resolve()), "threads": threads, "workers": workers,
            "overrides": dict(overrides), "progress": progress}


def with_data_root(preset: str, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """The overrides with the data root (the preset's where none is given) made absolute
    against the caller's working directory (the notebooks run in notebooks/)."""
    from dashlib.presets import get_preset

    out = dict(overrides or {})
    root = out.get("data.data_root")
    if root is None:
        root = get_preset(preset).data.data_root
    out["data.data_root"] = str(absolute(str(root)))
    if isinstance(out.get("eval.inception_weights"), str):  # a file named from the caller's folder too
        out["eval.inception_weights"] = str(absolute(out["eval.inception_weights"]))
    return out


def resolve_overrides(preset: str, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """`with_data_root`, checked by building the budget once."""
    from dashlib.pipeline import budget

    out = with_data_root(preset, overrides)
    budget(preset, overrides=out)  # a bad preset, key or dataset fails here, before any notebook
    return out


def _overridden(preset: str, overrides: Mapping[str, Any]) -> Any:
    """The preset with the dotted (preset-key) overrides applied; budget keys left out."""
    from dashlib.presets import get_preset

    return get_preset(preset, **{k: v for k, v in overrides.items() if "." in k})


def check_data_present(preset: str, overrides: Mapping[str, Any], names: Sequence[str]) -> None:
    """Find (or, where allowed, download) the files of a dataset read from files, when one of
    the notebooks `names` reads it, so that missing files fail here, in seconds, and not
    inside the first notebook. A dataset hashed by its content (CIFAR, an image folder) is
    fingerprinted (cheap, and cached for the run ids); any other (MNIST) loaded."""
    from dashlib.data import DATASETS, load_dataset

    if all(name in DATALESS_NOTEBOOKS for name in names):
        return
    data = _overridden(preset, overrides).data
    source = DATASETS.get(data.name)
    if not source.reads_files:
        return
    if source.fingerprint is not None:
        source.fingerprint(data)
    else:
        load_dataset(data)


#: The notebooks that score samples in the preset's feature space (FID/IS).
EVALUATING_NOTEBOOKS = ("03_evaluation", "04_ablations", "08_claims")


def check_feature_space(preset: str, overrides: Mapping[str, Any], names: Sequence[str]) -> None:
    """Find (or, where `eval.download_weights` allows, download) the Inception-v3 weights when
    the preset scores in that space and one of the notebooks `names` scores samples, so that a
    missing file fails here, and not after the teacher and every student have trained. The
    error names the remedies as `--set` keys (`dashlib.inception.SET_OPTIONS`)."""
    from dashlib.inception import SET_OPTIONS, check_weights

    if any(name in EVALUATING_NOTEBOOKS for name in names):
        check_weights(_overridden(preset, overrides).eval, SET_OPTIONS)


def check_text_paths(paths: Mapping[str, tuple[str | Path | None, str]]) -> None:
    """Refuse a path whose name is not valid UTF-8 (bytes such as an old archive's Latin-1
    b'd\\xe9j\\xe0'), before anything is written: papermill hands the notebooks their
    parameters as UTF-8 text and would fail in the first notebook. `paths` maps what each
    is to (the path exactly as the notebooks get it, the fix to suggest). The other commands
    read such paths by their bytes."""
    for what, (path, fix) in paths.items():
        if path is None:
            continue
        try:
            str(path).encode("utf-8")
        except UnicodeEncodeError:
            raise ReproduceError(f"{what} {os.fsencode(str(path))!r} is not valid UTF-8, and dash reproduce "
                                 f"passes it to the notebooks as text: {fix}") from None


def reproduce(preset: str = DEFAULT_PRESET, quick: bool = False, only: Sequence[str] | None = None,
              figures: str | Path | None = None, device: str = "auto", progress: bool = True,
              overrides: Mapping[str, Any] | None = None, threads: int | None = None,
              workers: int = 2) -> list[Path]:
    """Run the notebooks in order (or `only` some of them); returns the executed copies.

    `overrides` (dotted preset keys, as `--set`) and `threads` reach every notebook.
    """
    from dashlib.threads import default_threads

    utf8 = "rename it, or use a folder whose full path is UTF-8"
    given_root = (overrides or {}).get("data.data_root") is not None
    check_text_paths({  # as the notebooks get them: resolved, but the data root keeps its links
        "the runs folder ($DASH_RUNS)" if os.environ.get("DASH_RUNS") else "runs/ in the working directory":
            (runs_root().resolve(), utf8),
        "the checkout": (notebooks_dir(), utf8),
        "--figures": (None if figures is None else Path(absolute(str(figures))).resolve(), utf8),
        "--data-root" if given_root else "the preset's data root (in the working directory)":
            (with_data_root(preset, overrides)["data.data_root"],
             "rename it, or give --data-root a symbolic link with a UTF-8 name that points at it"),
    })
    if figures is not None:  # a file there would fail in the first notebook that saves a figure
        check_writable_dir(figures_dir(preset, quick, figures, overrides), "the figures folder (--figures)")
    from dashlib.device import resolve_device

    resolve_device(device)  # a bad --device fails here, not in the second notebook
    names = list(dict.fromkeys(only)) if only else list(NOTEBOOKS)  # each once, in the order given
    unknown = [n for n in names if n not in NOTEBOOKS + EXTRA_NOTEBOOKS]
    if unknown:
        raise ReproduceError(f"unknown notebook(s) {unknown}; choose from "
                             f"{list(NOTEBOOKS + EXTRA_NOTEBOOKS)}")
    overrides = resolve_overrides(preset, overrides)
    if "08_claims" in names:  # its refusals before any notebook runs or writes
        from dashlib.claims import check_plan

        check_plan(preset, quick, overrides)
    check_data_present(preset, overrides, names)
    check_feature_space(preset, overrides, names)
    out_dir = runs_root().resolve() / output_label(preset, overrides) / (
        "notebooks-quick" if quick else "notebooks")
    fig_dir = prepared_figures_dir(preset, quick, figures, overrides)
    params = notebook_parameters(preset, quick, fig_dir, device, threads or default_threads(), workers,
                                 overrides, progress)
    done = []
    start = time.perf_counter()
    for i, name in enumerate(names, 1):
        t0 = time.perf_counter()
        print(f"[{i}/{len(names)}] {name}.ipynb ...", file=sys.stderr, flush=True)
        done.append(run_notebook(notebooks_dir() / f"{name}.ipynb", out_dir / f"{name}.ipynb",
                                 params, progress=progress))
        print(f"[{i}/{len(names)}] {name}.ipynb done in {time.perf_counter() - t0:.0f} s",
              file=sys.stderr, flush=True)
    print(f"all {len(names)} notebooks done in {time.perf_counter() - start:.0f} s; figures in "
          f"{fig_dir}", file=sys.stderr)
    return done
