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

_shown = True


def show_bars(enabled: bool | None) -> None:
    """Show (True, the default) or hide (False) every progress bar this process makes from
    now on; None leaves them as they are. `enabled` is the notebooks' `progress` parameter,
    so it is checked as one."""
    from dashlib.params import check_params

    check_params(progress=enabled)
    if enabled is not None:
        global _shown
        _shown = enabled


def bar(*args: Any, disable: bool = False, auto: bool = False, **kwargs: Any) -> Any:
    """A tqdm bar (the same arguments), hidden where `disable` or `show_bars(False)` says so;
    `auto`: tqdm.auto's, a widget in Jupyter and text elsewhere (the workshop's)."""
    if auto:
        from tqdm.auto import tqdm
    else:
        from tqdm import tqdm
    return tqdm(*args, disable=disable or not _shown, **kwargs)
