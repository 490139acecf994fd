"""`python -m mbde_jax.data prepare <dataset>`: see mbde_jax/data/cli.py."""

import sys

from mbde_jax.data import cli

sys.exit(cli.main(sys.argv[1:]))
