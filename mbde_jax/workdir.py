"""Every file a run keeps in its workdir besides checkpoints: names, reading and writing.

  config.json          the config the run was started (or last resumed) with, as JSON values
  history.json         one entry per evaluation (epoch, step, every head's metrics, train means, provenance)
  results.json         written when the run finishes: the final epoch (the headline) and the best, labelled
  config_history.json  every config replaced by a resume with --allow_config_change, and at which step

Pure Python (json and os only), so the sweep's planning and the report read workdirs without JAX. Writes are
atomic (a reader never sees half a file); in a multi-process run only process 0 calls them.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

import ml_collections

CONFIG_FILE = "config.json"
HISTORY_FILE = "history.json"
RESULTS_FILE = "results.json"
CONFIG_HISTORY_FILE = "config_history.json"

# Fields that shape the checkpointed state: a checkpoint cannot be resumed with other values, even when the
# user allows a config change (orbax would only report an array shape mismatch).
STATE_SHAPING_FIELDS = ("dataset", "arch", "num_branches", "method", "shared_trunk", "attention_reduction")


class UnreadableRunFile(ValueError):
    """A run's JSON file exists but cannot be read (truncated, not JSON, unreadable)."""


def prepare(workdir: str) -> None:
    """Creates `workdir` and checks this process can write there; raises OSError otherwise."""
    os.makedirs(workdir, exist_ok=True)
    # Per-process name: the processes of a multi-process run share the workdir.
    probe = os.path.join(workdir, f".write_test.{socket.gethostname()}.{os.getpid()}")
    with open(probe, "w"):
        pass
    os.remove(probe)


def read_json(path: str) -> Any:
    """The JSON value in `path`; UnreadableRunFile (naming the file) if it cannot be read or parsed."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UnreadableRunFile(f"{path} cannot be read ({type(error).__name__}: {error})") from None


def read_if_present(workdir: str, name: str) -> Any:
    """read_json of <workdir>/<name>, or None when the file does not exist."""
    path = os.path.join(workdir, name)
    return read_json(path) if os.path.exists(path) else None


def _write_json(path: str, payload: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def config_json(config: ml_collections.ConfigDict) -> dict:
    """The config as JSON values: what config.json holds and what configs are compared as."""
    return json.loads(config.to_json())


def config_differences(saved: dict, current: dict, ignored: tuple[str, ...] = ()) -> list[str]:
    """Names of the fields (outside `ignored`) whose values differ between two JSON-normalised configs."""
    names = sorted(set(saved) | set(current))
    return [n for n in names if n not in ignored and saved.get(n, "<absent>") != current.get(n, "<absent>")]


def write_config(workdir: str, config: dict) -> None:
    _write_json(os.path.join(workdir, CONFIG_FILE), config)


def write_history(workdir: str, history: list) -> None:
    _write_json(os.path.join(workdir, HISTORY_FILE), history)


def write_results(workdir: str, results: dict) -> None:
    _write_json(os.path.join(workdir, RESULTS_FILE), results)


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run in `workdir` was started with (config.json), with JSON lists turned back into tuples."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: {workdir} is not a training workdir (train.py writes "
                                f"config.json when a run starts).")
    fields = read_json(path)
    return ml_collections.ConfigDict({k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


def record_config_change(workdir: str, saved_config: dict, replaced_at_step: int, changed: list[str]) -> str:
    """Appends the config being replaced (and where) to <workdir>/config_history.json; returns the path."""
    path = os.path.join(workdir, CONFIG_HISTORY_FILE)
    history = read_if_present(workdir, CONFIG_HISTORY_FILE) or []
    history.append({"replaced_at_step": replaced_at_step, "changed_fields": changed,
                    "replaced_on": time.strftime("%Y-%m-%d %H:%M:%S"), "config": saved_config})
    _write_json(path, history)
    return path
