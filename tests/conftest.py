"""Shared test set-up.

Two fake CPU devices for the whole suite, so that every test that builds a mesh exercises real batch
sharding. XLA reads the flag once, when jax first initialises its backends, so it is set here, before any
test module imports jax.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
