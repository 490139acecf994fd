"""Trains and evaluates one experiment.

    python train.py --config configs/<experiment>.py --workdir <dir> [--config.<field>=<value> ...]

Starting again with the same --workdir resumes from its latest checkpoint. Multi-host: started on every host;
jax.distributed.initialize() runs when the environment describes a multi-process job (or with --distributed).
"""

import os
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False, "Resume a workdir whose checkpoint was made with a different config.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() (auto-detected on SLURM, Open MPI, Cloud TPU "
    "pods, or when JAX_COORDINATOR_ADDRESS is set).")
flags.mark_flags_as_required(["config", "workdir"])


def _multi_process_environment() -> bool:
    env = os.environ
    return bool(
        env.get("JAX_COORDINATOR_ADDRESS")
        or int(env.get("SLURM_NTASKS", "1")) > 1
        or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
        or "," in env.get("TPU_WORKER_HOSTNAMES", ""))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    import jax  # after flag parsing, so --help is fast

    if _DISTRIBUTED.value or _multi_process_environment():
        jax.distributed.initialize()
    from mbde_jax import cli_errors, lifecycle, train

    try:
        # What the user must change is in the message; a traceback would only bury it (MBDE_DEBUG=1 shows it).
        with cli_errors.one_line_errors("train.py"):
            train.train_and_evaluate(_CONFIG.value, _WORKDIR.value,
                                     allow_config_change=_ALLOW_CONFIG_CHANGE.value)
    except lifecycle.TrainingStopped as stopped:
        print(stopped, file=sys.stderr)
        sys.exit(stopped.exit_code)


if __name__ == "__main__":
    from mbde_jax import cli_errors

    remaining = cli_errors.parse_flags_or_exit("train.py", sys.argv)
    app.run(main, flags_parser=lambda _: remaining)
