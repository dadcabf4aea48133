"""Distillation: DASH and every baseline the paper compares (see `methods`)."""

from dashlib.distill.methods import METHODS, DistillObjective
from dashlib.distill.run import distill, distill_many, distill_payload, distill_run, resolve_config

__all__ = ["METHODS", "DistillObjective", "distill", "distill_many", "distill_payload",
           "distill_run", "resolve_config"]
