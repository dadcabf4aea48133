"""The label of a reproduction: what names its figures folder, its executed notebooks'
folder and the claims sweep's state (`runs/<label>/`, `figures/<label>/`).

The label is the preset's name, plus `-<dataset>` for other data (`-<folder name>` for an
image folder) and `-set-<hash>` for any other override that changes a result, so a changed
budget never shares a folder with the preset's own. Its own module, below both
`dashlib.reproduce` and `dashlib.claims`, which each name folders by it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from dashlib.io import absolute


def output_label(preset: str, overrides: Mapping[str, Any]) -> str:
    """<preset>, then -<dataset> (`data_label`), then -set-<8 hex> (`budget_changes`)."""
    changes = budget_changes(preset, overrides)
    digest = hashlib.sha256(json.dumps(changes, sort_keys=True, default=str).encode()).hexdigest()
    return preset + data_label(overrides) + (f"-set-{digest[:8]}" if changes else "")


#: Override keys that say where files come from, not what is computed. Not
#: `eval.inception_weights`: dash checks only the shape of a weights file named there, so
#: another file could give other FIDs; its figures get a folder of their own.
WHERE_KEYS = ("data.name", "data.data_root", "data.download", "eval.download_weights")


def budget_changes(preset: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The overrides that change a result: not the data's location (`WHERE_KEYS`; the
    dataset itself is in `data_label`) and not a preset field set to its own value."""
    from dashlib.presets import get_preset

    base = get_preset(preset)

    def same(key: str, value: Any) -> bool:
        section, _, field = key.partition(".")
        current = getattr(getattr(base, section, None), field, _MISSING) if field else _MISSING
        as_list = (list, tuple)
        if isinstance(current, as_list) and isinstance(value, as_list):
            return list(current) == list(value)
        return current is not _MISSING and current == value and type(current) is type(value)

    return {k: v for k, v in sorted(overrides.items()) if k not in WHERE_KEYS and not same(k, v)}


_MISSING = object()


def data_label(overrides: Mapping[str, Any]) -> str:
    """"" for the preset's own data, else "-<dataset>" ("-<folder name>" for an image folder)."""
    from dashlib.data import is_user_folder

    name = overrides.get("data.name")
    if not name:
        return ""
    if is_user_folder(name) and overrides.get("data.data_root"):
        # made absolute, so "." or "../pets" name the folder, as they do once `resolve_overrides`
        # ran; a symbolic link is named as given, not by its target
        return f"-{absolute(str(overrides['data.data_root'])).name}"
    return f"-{name}"
