"""The flags of mbde-evaluate (`python -m mbde_jax.evaluate`), apart from mbde_jax.evaluate so that `--help`
answers before its imports (JAX, TensorFlow). parse(argv) gives the keyword arguments of mbde_jax.evaluate.run."""

from __future__ import annotations

from absl import flags

from mbde_jax import command_line

USAGE = """usage: mbde-evaluate --workdir DIR [--split test] [--step N] [--json FILE]

    Evaluates a run's latest (or --step's) checkpoint on a split and prints every head's metrics.
    """

reference, parse = command_line.workdir_tool("mbde_jax.evaluate", "mbde-evaluate", USAGE, lambda fv: {
    "split": flags.DEFINE_string("split", None, "tfds split; default the dataset's test split.", flag_values=fv),
    "step": flags.DEFINE_integer("step", None, "Checkpoint step; default the latest.", flag_values=fv),
    "json_path": flags.DEFINE_string("json", None, "Also write the metrics to this JSON file.", flag_values=fv)})
