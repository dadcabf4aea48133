"""Subcommands of `dash`; importing this package registers them all."""

from dashlib.commands import core, distill, evaluate, reproduce  # noqa: F401
