"""What made a run: library versions, devices, processes and the code's git commit.

Different JAX and Flax versions give different numbers for the same config (float order, initialisers,
compiler choices), so every run records this block (results.json and each history.json entry) and the report
never averages runs of different versions together.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import subprocess
import sys

import jax

# Distributions whose versions change a run's numbers or how it is read back. TensorFlow is installed as
# either 'tensorflow' or 'tensorflow-cpu'; the first one found is recorded under "tensorflow".
LIBRARIES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "tensorflow-datasets", "numpy")
TENSORFLOW_DISTRIBUTIONS = ("tensorflow", "tensorflow-cpu")
# The fields that decide whether two runs' numbers may be averaged together (the report's check).
VERSION_FIELDS = ("jax", "jaxlib", "flax")


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def library_versions() -> dict[str, str | None]:
    """{'python': '3.13.0', 'jax': ..., 'tensorflow': ... or None when not installed}."""
    versions = {"python": platform.python_version()}
    versions.update({name: _version(name) for name in LIBRARIES})
    versions["tensorflow"] = next(filter(None, map(_version, TENSORFLOW_DISTRIBUTIONS)), None)
    return versions


@functools.lru_cache(maxsize=1)
def code_version() -> dict:
    """The package version and, when the code runs from a git checkout, its commit and whether it was dirty.

    Cached: the code does not change while a process runs, and git is asked once.
    """
    from mbde_jax import __version__

    source = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    found = {"package": __version__, "git_commit": None, "git_dirty": None}

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", source, *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit:
        found["git_commit"] = commit.strip()
        status = git("status", "--porcelain", "--untracked-files=no")
        found["git_dirty"] = None if status is None else bool(status.strip())
    return found


def collect() -> dict:
    """The provenance block of this process: versions, platform, devices, processes and code.

    Starts JAX's backends if they were not started yet (device kind and count are part of the block).
    """
    devices = jax.devices()
    return {
        "versions": library_versions(),
        "platform": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "process_count": jax.process_count(),
        "os": f"{platform.system()} {platform.machine()}",
        "executable": sys.executable,
        "code": code_version(),
    }


def version_key(provenance: dict | None) -> tuple:
    """The (name, version) pairs of VERSION_FIELDS; runs with different keys must not be averaged."""
    versions = (provenance or {}).get("versions", {})
    return tuple((name, versions.get(name)) for name in VERSION_FIELDS)


def describe_versions(key: tuple) -> str:
    """'jax 0.10.2, jaxlib 0.10.2, flax 0.12.8' ('unknown' for a run that recorded none)."""
    return ", ".join(f"{name} {version or 'unknown'}" for name, version in key)


def format_provenance(provenance: dict | None) -> str:
    """One line for a person: versions, devices and code."""
    if not provenance:
        return "no provenance recorded (the run was made before mbde_jax recorded it)"
    versions = provenance.get("versions", {})
    code = provenance.get("code", {})
    libraries = ", ".join(f"{name} {version}" for name, version in versions.items() if version)
    commit = code.get("git_commit")
    where = (f"git {commit[:12]}{' (dirty)' if code.get('git_dirty') else ''}" if commit else "not a git checkout")
    return (f"{libraries}; {provenance.get('device_count')} x {provenance.get('device_kind')} "
            f"({provenance.get('platform')}) over {provenance.get('process_count')} process(es); "
            f"mbde_jax {code.get('package')}, {where}")
