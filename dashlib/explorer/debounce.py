"""Coalesce bursts of widget events into one redraw."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Debouncer:
    """Calls `fn()` once, `delay_s` after the last of a burst of `trigger()` calls.

    Inside a running asyncio loop (a Jupyter kernel handling widget messages)
    the call is scheduled with `loop.call_later`, so holding an arrow key on a
    slider redraws once; with no running loop (scripts, tests, papermill) or
    `delay_s == 0` it calls `fn()` at once.
    """

    def __init__(self, fn: Callable[[], object], delay_s: float) -> None:
        if delay_s < 0:
            raise ValueError(f"delay_s = {delay_s} must be >= 0")
        self.fn, self.delay_s = fn, delay_s
        self._handle: asyncio.TimerHandle | None = None
        self.calls = 0

    def trigger(self, *_: object) -> None:
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or self.delay_s == 0:
            self._fire()
            return
        if self._handle is not None:
            self._handle.cancel()
        self._handle = loop.call_later(self.delay_s, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self.calls += 1
        self.fn()
