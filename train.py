"""Trains and evaluates one experiment.

    python train.py --config configs/<experiment>.py[:<arg>] --workdir <dir> [--config.<field>=<value> ...]

e.g. --config configs/paper.py:cifar100,resnet32 (the text after ':' goes to that file's get_config).

Starting again with the same --workdir resumes from its latest checkpoint. Several processes (hosts): every
process runs the same command, with --coordinator_address, --num_processes and --process_id (or on SLURM, Open
MPI and Cloud TPU pods nothing extra: JAX detects them); see the README, "Several processes and hosts".
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from mbde_jax import config_utils, distributed

_CONFIG = config_flags.DEFINE_config_file("config", None, config_utils.CONFIG_FLAG_HELP, lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False, "Resume a workdir whose checkpoint was made with a different config.")
_LAUNCH = distributed.define_flags()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from mbde_jax import cli_errors, lifecycle

    try:
        # What the user must change is in the message; a traceback would only bury it (MBDE_DEBUG=1 shows it).
        with cli_errors.one_line_errors("train.py"):
            distributed.initialize(_LAUNCH())  # before anything starts JAX's backends
            from mbde_jax import training  # after flag parsing, so --help is fast

            training.train_and_evaluate(_CONFIG.value, _WORKDIR.value,
                                     allow_config_change=_ALLOW_CONFIG_CHANGE.value)
    except lifecycle.TrainingStopped as stopped:
        print(stopped, file=sys.stderr)
        sys.exit(stopped.exit_code)


if __name__ == "__main__":
    from mbde_jax import cli_errors

    remaining = cli_errors.parse_flags_or_exit("train.py", sys.argv)
    app.run(main, flags_parser=lambda _: remaining)
