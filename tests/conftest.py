"""Shared test set-up.

* Two fake CPU devices for the whole suite, so that every test that builds a mesh exercises real batch
  sharding. XLA reads the flag once, when jax first initialises its backends, so it is set here, before any
  test module imports jax.
* The 'rbg' PRNG for the suite: XLA's CPU compiler spends ~15 s compiling the threefry random bits of a
  DenseNet's initialisation and ~3 s with rbg. Runs use jax's default (threefry); no test compares random
  values against a threefry-specific constant.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_DEFAULT_PRNG_IMPL", "rbg")
