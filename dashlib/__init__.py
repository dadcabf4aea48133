"""dashlib: DASH (dual-branch score distillation) for compact class-conditional diffusion models."""

__version__ = "0.1.0"
