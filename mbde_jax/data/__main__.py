"""`python -m mbde_jax.data prepare <dataset>`: the same command as `mbde-data` (see mbde_jax/data/cli.py)."""

from mbde_jax import cli

cli.mbde_data()
