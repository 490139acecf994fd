"""The flags of mbde-export (`python -m mbde_jax.export`), apart from mbde_jax.export so that `--help` answers
before its imports (JAX, orbax). parse(argv) gives the keyword arguments of mbde_jax.export.run."""

from __future__ import annotations

from absl import flags

from mbde_jax import command_line

USAGE = """usage: mbde-export --workdir DIR --out DIR [--step N]

    Writes a run's deployed branch as a standalone model (model.json + orbax variables).
    """

reference, parse = command_line.workdir_tool("mbde_jax.export", "mbde-export", USAGE, lambda fv: {
    "out": flags.DEFINE_string("out", None, "Directory to write the exported model to (required).", flag_values=fv),
    "step": flags.DEFINE_integer("step", None, "Checkpoint step; default the latest.", flag_values=fv)})
