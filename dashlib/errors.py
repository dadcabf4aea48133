"""Errors that cross module boundaries and are known to the command line (one line, exit 2)."""

from __future__ import annotations


class EvaluationError(RuntimeError):
    """An evaluation worker process died; the message names the cell and the likely cause."""
