"""The flags of mbde-summary (`python -m mbde_jax.summary`), apart from mbde_jax.summary so that `--help` answers
before its imports (JAX, flax)."""

from __future__ import annotations

from collections.abc import Sequence

from mbde_jax import command_line

TOOL = "mbde_jax.summary"
USAGE = """usage: mbde-summary --config FILE [--config.<field>=<value> ...]

    Parameter counts of a config's model (shared trunk, each branch, heads, deployed network).
    """


def define(argv: Sequence[str]) -> command_line.Define:
    return lambda fv: command_line.config_flag(fv, argv)


def reference() -> list[tuple[str, str, command_line.Flags]]:
    return [command_line.reference("mbde-summary", USAGE, define([TOOL]))]


def parse(argv: Sequence[str]) -> dict:
    """The keyword arguments of mbde_jax.summary.run for the command line `argv` (argv[0] the program)."""
    argv = list(argv)
    config, positional = command_line.parse(TOOL, USAGE, argv, define(argv))
    command_line.no_positional(TOOL, positional)
    return dict(config=config.value)
