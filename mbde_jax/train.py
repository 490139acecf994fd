"""The train command: `mbde-train`, `python train.py` and `python -m mbde_jax.train` (mbde_jax.training trains).

Its flags and its command line live here, apart from mbde_jax.training, so that `--help` and a mistyped flag
answer before JAX and TensorFlow are imported.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from absl import flags

from mbde_jax import cli_errors, command_line, distributed

TOOL = "train.py"
USAGE = """usage: mbde-train (or python train.py) --config FILE --workdir DIR [--config.<field>=<value> ...]

    Trains and evaluates one config; the same --workdir again resumes from its latest checkpoint.
    """


def define(argv: Sequence[str]) -> command_line.Define:
    """The train command's flags (--config overrides from `argv`), the launch flags of mbde_jax.distributed."""
    def define_on(fv: command_line.Flags):
        config = command_line.config_flag(fv, argv)
        workdir = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.", flag_values=fv)
        allow = flags.DEFINE_bool("allow_config_change", False, "Resume a workdir whose checkpoint was made with a "
                                  "different config.", flag_values=fv)
        flags.mark_flag_as_required("workdir", fv)
        return config, workdir, allow, distributed.define_flags(fv)

    return define_on


def reference() -> list[tuple[str, str, command_line.Flags]]:
    return [command_line.reference("mbde-train", USAGE, define([TOOL]))]


def main(argv: Sequence[str] | None = None) -> None:
    """The command: argv as sys.argv (argv[0] the program); None reads sys.argv."""
    argv = command_line.program_argv(argv)
    (config, workdir, allow, launch), positional = command_line.parse(TOOL, USAGE, argv, define(argv))
    command_line.no_positional(TOOL, positional)
    with cli_errors.one_line_errors(TOOL):
        # Launch flags, config or workdir that cannot run are one line before TensorFlow's import (seconds), and
        # in that order, so that a refused launch creates no workdir. Validation imports JAX's modules but starts
        # none of its backends, which distributed.initialize must precede.
        from mbde_jax import config_validation  # pylint: disable=import-outside-toplevel

        launch_settings = launch()
        config_validation.validate(config.value)
        config_validation.prepare_workdir(workdir.value)
    command_line.before_jax()
    from mbde_jax import lifecycle  # pylint: disable=import-outside-toplevel

    try:
        # What the user must change is in the message; a traceback would only bury it (MBDE_DEBUG=1 shows it).
        with cli_errors.one_line_errors(TOOL):
            distributed.initialize(launch_settings)  # before anything starts JAX's backends
            from mbde_jax import training  # pylint: disable=import-outside-toplevel

            training.train_and_evaluate(config.value, workdir.value, allow_config_change=allow.value)
    except lifecycle.TrainingStopped as stopped:
        from mbde_jax import slurm  # pylint: disable=import-outside-toplevel

        print(stopped, file=sys.stderr, flush=True)
        requeued = slurm.requeue_after_stop(stopped.signum)  # SLURM's time-limit warning: back in the queue
        if requeued:
            print(requeued, file=sys.stderr, flush=True)
        sys.exit(stopped.exit_code)


if __name__ == "__main__":
    main()
