"""The flags of mbde-report (`python -m mbde_jax.report`), apart from mbde_jax.report so that `--help` answers
before its imports (matplotlib, and JAX through mbde_jax.runs)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from absl import flags

from mbde_jax import command_line

TOOL = "mbde_jax.report"
USAGE = """usage: mbde-report PATH [PATH ...] [--out DIR]

    Tables and plots of every run under the given paths (a sweep root or training workdirs).
    """


def define(fv: command_line.Flags):
    return flags.DEFINE_string("out", None, "Output directory; default <path>/report when one path is given.",
                               flag_values=fv)


def reference() -> list[tuple[str, str, command_line.Flags]]:
    return [command_line.reference("mbde-report", USAGE, define)]


def parse(argv: Sequence[str]) -> dict:
    """The keyword arguments of mbde_jax.report.run for the command line `argv` (argv[0] the program)."""
    out, paths = command_line.parse(TOOL, USAGE, argv, define)
    if not paths:
        raise SystemExit(f"{TOOL}: error: give a sweep root or one or more training workdirs.")
    if out.value is None and len(paths) > 1:
        raise SystemExit(f"{TOOL}: error: --out is needed when more than one path is given.")
    return dict(paths=paths, out_dir=out.value or os.path.join(paths[0], "report"))
