"""Shared test set-up.

* Two fake CPU devices for the whole suite, so that every test that builds a mesh exercises real batch
  sharding. XLA reads the flag once, when jax first initialises its backends, so it is set here, before any
  test module imports jax.
* The 'rbg' PRNG for the suite: XLA's CPU compiler spends ~15 s compiling the threefry random bits of a
  DenseNet's model.init, which the model tests call, and ~3 s with rbg. Runs use jax's default (threefry) for
  dropout, and the training's initialisation draws with threefry whatever the default (models.initializers),
  so it is the same here as in a run; no test compares random values against a threefry-specific constant.
* A persistent XLA compilation cache in the temp directory, shared by both test workers and the training
  subprocesses they start (they inherit the environment): many tests compile the same programs, so most
  compilations after the first are file reads, even from an empty cache (as in CI). Keys include
  the program and the compile options, so a code change can only miss, never reuse a stale executable.
  Unbounded (about 15 MB per version of the code; a size limit needs the `filelock` package, which JAX
  otherwise reports as a cache read error on every entry).
"""

import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_DEFAULT_PRNG_IMPL", "rbg")
_USER_ID = getattr(os, "getuid", lambda: 0)()  # one cache per user: a shared /tmp may hold another's
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"mbde_jax_test_xla_cache_{_USER_ID}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
