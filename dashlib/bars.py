"""Progress bars: tqdm behind one process-wide switch.

Every long loop in dashlib shows a tqdm bar unless its caller passes `disable`.
`show_bars(False)` hides them all in this process, whatever the callers pass: a
headless reproduction (`dash reproduce --no-progress`) hands its notebooks
`progress = False`, and their bars would otherwise fill the executed notebooks'
outputs, from library code that never sees the flag (an image folder's decoding,
the classifier an evaluation trains).
"""

from __future__ import annotations

from typing import Any

from tqdm import tqdm

_shown = True


def show_bars(enabled: bool) -> None:
    """Show (True, the default) or hide every progress bar this process makes from now on;
    `enabled` is the notebooks' `progress` parameter, so it is checked as one (a bool)."""
    from dashlib.params import check_params

    check_params(progress=enabled)
    global _shown
    _shown = enabled


def bars_shown() -> bool:
    """Whether progress bars are shown in this process (`show_bars`)."""
    return _shown


def bar(*args: Any, disable: bool = False, **kwargs: Any) -> tqdm:
    """A tqdm bar (the same arguments), hidden where `disable` or `show_bars(False)` says so."""
    return tqdm(*args, disable=disable or not _shown, **kwargs)
