"""Trains and evaluates one experiment.

    python train.py --config configs/<experiment>.py --workdir <dir> [--config.<field>=<value> ...]

(the same as the installed `mbde-train`). Starting again with the same --workdir resumes from its latest
checkpoint. Several processes (hosts): every process runs the same command, with --coordinator_address,
--num_processes and --process_id (or on SLURM, Open MPI and Cloud TPU pods nothing extra: JAX detects them); see
the README, "Several processes and hosts".
"""

import sys

from mbde_jax import train

if __name__ == "__main__":
    train.main(sys.argv)
