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
import re
import tempfile

import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_DEFAULT_PRNG_IMPL", "rbg")
_USER_ID = getattr(os, "getuid", lambda: 0)()  # one cache per user: a shared /tmp may hold another's
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"mbde_jax_test_xla_cache_{_USER_ID}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: a test of tens of seconds or more (a training, a subprocess run, a SLURM job); the suite "
                   "starts these first")


# Module fixtures that train or start processes: the tests using one go to one worker, which builds it once.
_COSTLY_MODULE_FIXTURES = ("finished_run", "two_epoch_run", "two_runs", "recorded_run")
# test_models' output-shape tests of one architecture (its branch counts, with and without jit) go to one worker:
# the eager variants compile each operation once per shape and process, and most shapes recur between them.
_OUTPUT_SHAPE_ARCH = re.compile(r"test_models\.py::OutputShapeTest::test_output_shapes_\(arch='(\w+)'")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's hook, which reads the xdist_group marks added here
def pytest_collection_modifyitems(config, items):
    """The slow tests first, so that the two workers of `pytest -n 2` end together instead of one running the
    last long test while the other has nothing left. setup.cfg's `--dist loadgroup --no-loadscope-reorder`
    hands the tests out one by one in this order, as a worker runs short, and the tests of one xdist_group as
    one unit to one worker. The SLURM cluster's tests are one group, the very first: they take turns on the
    cluster (test_slurm.cluster), and in two workers one would wait for the other. The tests sharing a costly
    module fixture are a group each, next to the slow tests. Otherwise the collected order is kept."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "cluster" in fixtures:
            item.add_marker(pytest.mark.xdist_group("slurm_cluster"))
        for name in _COSTLY_MODULE_FIXTURES:
            if name in fixtures:
                item.add_marker(pytest.mark.xdist_group(f"{item.module.__name__}.{name}"))
        architecture = _OUTPUT_SHAPE_ARCH.search(item.nodeid)
        if architecture:
            item.add_marker(pytest.mark.xdist_group(f"test_models.{architecture.group(1)}"))

    def rank(item):
        group = item.get_closest_marker("xdist_group")
        if group and group.args[0] == "slurm_cluster":
            return 0
        return 1 if group or item.get_closest_marker("slow") else 2

    items[:] = sorted(items, key=rank)
