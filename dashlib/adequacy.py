"""Is the dataset classifier good enough to judge samples? (FID and accuracy use it.)

Every evaluation records the feature classifier's held-out test accuracy
(`classifier_test_accuracy` in each row, summary entry and the T1 sidecar: the lower
of its plain and its class-balanced accuracy, since the samples it judges are
class-balanced and an imbalanced test split can hide a classifier that names one
class for everything; `dashlib.evaluate.Space.describe`);
below `ADEQUATE_ACCURACY` the FID and accuracy columns are weak (the classifier
itself confuses the classes), and the figures index says so.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

ADEQUATE_ACCURACY = 0.9


def report_accuracy(report: Any) -> float | None:
    """The lowest test accuracy of the classifiers an `EvalReport` used (None if unknown)."""
    values = [c.get("test_accuracy") for c in report.meta.get("classifiers", {}).values()]
    values = [float(v) for v in values if v is not None]
    return min(values) if values else None


def warning(accuracy: float | None, what: str = "the dataset classifier") -> str | None:
    """A one-line warning when `accuracy` < ADEQUATE_ACCURACY, else None."""
    if accuracy is None or accuracy >= ADEQUATE_ACCURACY:
        return None
    return (f"Warning: {what} reaches only {accuracy:.3f} test accuracy (< {ADEQUATE_ACCURACY}), "
            f"so the FID and accuracy columns are weak judges of this data; try a larger "
            f"data.image_size (e.g. digits16) or a longer-trained classifier "
            f"(--set eval.classifier_steps=N).")


def records_warning(records: Iterable[Mapping[str, Any]]) -> str | None:
    """The warning for the lowest `classifier_test_accuracy` among figure/table sidecars."""
    values = [r["classifier_test_accuracy"] for r in records
              if isinstance(r.get("classifier_test_accuracy"), (int, float))]
    return warning(min(values)) if values else None
