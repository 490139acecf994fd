"""JAX's persistent compilation cache, on for every command unless switched off.

A new process otherwise compiles the model's initialisation, train step and eval step again (tens of seconds
on a CPU, more for a big network); with the cache it reads them from disk. Where it is, first match wins:
  MBDE_COMPILATION_CACHE=off   no persistent cache (JAX's in-memory one only)
  MBDE_COMPILATION_CACHE=DIR   that directory
  JAX_COMPILATION_CACHE_DIR    JAX's own variable, honoured as JAX honours it
  default                      $XDG_CACHE_HOME/mbde_jax/xla, i.e. ~/.cache/mbde_jax/xla
It is an environment setting and not a config field: it does not change what is trained, and a config field
would be recorded in config.json, where a different value would stop a resume.

Safety: JAX keys every entry by the program, the compile options, the devices and the jax/jaxlib versions, so
another version or a code change misses and never reuses a stale program; entries are written by process 0
of a run only, each in one rename, so several processes may share the directory. A directory that cannot be
created or written gives one warning and the command goes on without the cache. It grows by about 15 MB per
config and version; clearing it (`rm -rf ~/.cache/mbde_jax/xla`) only costs the next run its compilations.

In a run of several processes on CPUs only process 0 finds its programs in the cache (the others' keys differ,
and only process 0 writes); the others compile theirs. With jax 0.12.1 and later (outside setup.cfg's range, but
a user may install it) a process running a program read from the cache waited forever at the first collective
for a process that had compiled its own, so from that release on such a run compiles in every process, without
the cache.
"""

from __future__ import annotations

import os
import socket

from absl import logging

SWITCH = "MBDE_COMPILATION_CACHE"
OFF = "off"
# Programs compiled faster than this are not written: JAX's default (1 s) would leave out the small helper
# programs (input conversions, augmentation) that a run compiles by the dozen.
MIN_COMPILE_SECONDS = 0.2


def default_directory(environ: dict | None = None) -> str:
    env = os.environ if environ is None else environ
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "mbde_jax", "xla")


def directory_for(environ: dict | None = None) -> str | None:
    """The cache directory the environment asks for, or None when it is switched off."""
    env = os.environ if environ is None else environ
    switch = env.get(SWITCH, "").strip()
    if switch.lower() == OFF:
        return None
    return switch or env.get("JAX_COMPILATION_CACHE_DIR") or default_directory(env)


def _writable(directory: str) -> str | None:
    """None when `directory` can be created and written, else why not."""
    try:
        os.makedirs(directory, exist_ok=True)
        probe = os.path.join(directory, f".write_test.{socket.gethostname()}.{os.getpid()}")
        with open(probe, "w") as f:
            f.write("x")
        os.remove(probe)
    except OSError as error:
        return error.strerror or str(error)
    return None


def describe(directory: str) -> str:
    """'<dir> (N entries, X MB)'."""
    entries, size = 0, 0
    try:
        with os.scandir(directory) as listing:
            for entry in listing:
                if entry.is_file() and not entry.name.startswith("."):
                    entries += 1
                    size += entry.stat().st_size
    except OSError:
        pass
    return f"{directory} ({entries} entries, {size / 1e6:.0f} MB)"


def enable(environ: dict | None = None) -> str | None:
    """Points JAX at the cache directory (before the first compilation); returns it, or None when off or
    unusable (then one warning says why and what to do)."""
    import jax  # pylint: disable=import-outside-toplevel

    env = os.environ if environ is None else environ
    directory = directory_for(env)
    if directory is not None:
        problem = _writable(directory)
        if problem:
            logging.warning("compilation cache %s cannot be used (%s): compiling without it. Give a writable "
                            "directory with %s=DIR, or switch it off with %s=%s.", directory, problem, SWITCH,
                            SWITCH, OFF)
            directory = None
    if directory is None:
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", directory)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in env:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    logging.info("compilation cache: %s; %s=off switches it off", describe(directory), SWITCH)
    return directory


# The first jax release whose multi-process CPU runs deadlocked with a program read from the cache.
FIRST_DEADLOCKING_JAX = (0, 12, 1)


def cache_deadlocks(platforms: set[str], process_count: int, jax_version: tuple[int, ...]) -> bool:
    """Whether a run of `process_count` processes on devices of `platforms` (e.g. {"cpu"}) under jax
    `jax_version` (e.g. (0, 12, 1)) must run without the persistent cache (see the module's docstring)."""
    return process_count > 1 and platforms == {"cpu"} and tuple(jax_version[:3]) >= FIRST_DEADLOCKING_JAX


def off_for_multi_process_cpu(devices) -> bool:
    """Switches the persistent cache off when `devices` (every device of the run, backends started, nothing
    compiled yet) are CPUs of several processes and this jax is one that deadlocks with it (cache_deadlocks);
    returns whether it did."""
    import jax  # pylint: disable=import-outside-toplevel

    platforms = {device.platform for device in devices}
    if not cache_deadlocks(platforms, jax.process_count(), jax.__version_info__):
        return False
    if jax.config.jax_enable_compilation_cache:
        jax.config.update("jax_enable_compilation_cache", False)
        logging.info("compilation cache off: a run of several processes on CPUs compiles in every process")
    return True
