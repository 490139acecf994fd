"""`python -m mbde_jax.data prepare <dataset>`: the same command as `mbde-data` (see mbde_jax/data/cli.py)."""

import sys

from mbde_jax import command_line
from mbde_jax.data import cli

sys.exit(command_line.exit_status(cli.main(sys.argv[1:])))
