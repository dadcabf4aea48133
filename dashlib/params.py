"""Notebook (papermill) parameters, checked by type where the library first reads them.

papermill injects whatever the caller passes (`-p quick no` arrives as the
string "no"), and Python's truthiness would turn any non-empty string into
True. Every parameter a notebook declares has one expected type here;
`check_params` refuses anything else with one error that names the parameter,
what it got and what it takes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dashlib.config import ConfigError


class ParameterError(ConfigError):
    """A notebook parameter has the wrong type; the message names it and the fix."""


#: parameter name -> (accepted types, what to write instead).
#: bool is never accepted for int or float (True is an int to Python, not to a user).
PARAMETERS: dict[str, tuple[tuple[type, ...], str]] = {
    "preset": ((str,), 'a preset name such as "digits"'),
    "quick": ((bool,), "True or False"),
    "device": ((str,), '"auto", "cpu", "cuda" or "cuda:N"'),
    "workers": ((int,), "a whole number >= 1"),
    "figures_dir": ((str, Path), "a folder path (text)"),
    "runs_dir": ((str, Path, type(None)), "a folder path (text) or None"),
    "methods": ((list, tuple), 'a list of method names, e.g. ["dash"]'),
    "student_runs": ((dict, type(None)), "a dict of display name -> run folder"),
    "label": ((int,), "a class index (whole number)"),
    "y": ((int,), "a class index (whole number)"),
    "t_fraction": ((int, float), "a number in [0, 1]"),
    "field_t_fraction": ((int, float), "a number in [0, 1]"),
    "guidance": ((str,), '"tag" or "constant"'),
    "seed": ((int,), "a whole number >= 0"),
    "n_stats": ((int,), "a whole number >= 1"),
    "guidance_scales": ((list, tuple), 'a list of numbers and/or "tag"'),
    "overrides": ((dict, type(None)), 'a dict of dotted preset keys, e.g. {"train.steps": 500}'),
    "threads": ((int, type(None)), "a whole number >= 1, or None for the available cores"),
    "run_solutions": ((bool,), "True or False"),
    "progress": ((bool, type(None)), "True or False (None in `pipeline.budget`: the bars as they are)"),
}


def _type_ok(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in types
    return isinstance(value, types)


def check_params(**values: Any) -> None:
    """Raise ParameterError for the first value whose type its parameter does not take.

    Names not in `PARAMETERS` are not checked (library keyword arguments that
    no notebook exposes); a `preset` may also be a Preset object.
    """
    from dashlib.config import Preset

    for name, value in values.items():
        if name not in PARAMETERS or (name == "preset" and isinstance(value, Preset)):
            continue
        types, hint = PARAMETERS[name]
        if not _type_ok(value, types):
            raise ParameterError(f"notebook parameter {name} = {value!r} is a {type(value).__name__}; "
                                 f"it must be {hint}")
    _check_items(values)


def _check_items(values: Mapping[str, Any]) -> None:
    """Containers hold the right items: method names, folder paths, numbers or "tag"."""
    methods: Sequence[Any] = values.get("methods") or ()
    if any(not isinstance(m, str) for m in methods):
        raise ParameterError(f"notebook parameter methods = {methods!r} must list method names (text)")
    runs: Mapping[Any, Any] = values.get("student_runs") or {}
    if any(not isinstance(k, str) or not isinstance(v, (str, Path)) for k, v in runs.items()):
        raise ParameterError(f"notebook parameter student_runs = {runs!r} must map names (text) to "
                             f"run folders (text)")
    scales: Sequence[Any] = values.get("guidance_scales") or ()
    if any(s != "tag" and (isinstance(s, bool) or not isinstance(s, (int, float))) for s in scales):
        raise ParameterError(f"notebook parameter guidance_scales = {scales!r} must hold numbers "
                             f'and/or "tag"')
    if "guidance_scales" in values and not scales:
        raise ParameterError('notebook parameter guidance_scales = [] is empty: give at least one w or "tag"')
    for name in ("t_fraction", "field_t_fraction"):
        if name in values and not 0 <= values[name] <= 1:
            raise ParameterError(f"notebook parameter {name} = {values[name]!r} is out of range: "
                                 f"it must be a number in [0, 1] (0: t = 0, 1: t = T - 1)")
