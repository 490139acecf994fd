"""Every file a run keeps in its workdir besides checkpoints: names, reading and writing.

  config.json          the config the run was started (or last resumed) with, as JSON values
  history.json         one entry per evaluation (epoch, step, every head's metrics, train means, provenance)
  metrics.csv          the same, one row per evaluation: every head's test top-1/top-5/CE, diversity, lr,
                       ramp weight, the epoch's train means; rewritten from the history at each evaluation and
                       at each resume, so it never repeats or keeps a row the checkpointed history does not have
  results.json         written when the run finishes: the final epoch (the headline) and the best, labelled
  progress.json        the step the trainer has reached (rewritten with each progress line), for the sweep's status
  config_history.json  every config replaced by a resume with --allow_config_change, and at which step

Pure Python (json and os only), so the sweep's planning and the report read workdirs without JAX. Writes are
atomic (a reader never sees half a file); in a multi-process run only process 0 calls them.
"""

from __future__ import annotations

import contextlib
import csv
import io
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
PROGRESS_FILE = "progress.json"
METRICS_CSV_FILE = "metrics.csv"
# Train means that are config constants, not measurements: config.json has them.
_CONSTANT_TRAIN_MEANS = ("kd_weight", "cd_weight", "learning_rate", "ramp_weight")

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


def _write_atomically(path: str, text: str) -> None:
    """Writes `text` to `path` through a temporary file, so that `path` is either its old or its new text."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "w", newline="") as f:
            f.write(text)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if error.filename is None:  # raised by the flush at close (a full disk): name the file it was for
            raise OSError(error.errno, error.strerror, path) from None
        raise
    os.replace(tmp, path)


def _write_json(path: str, payload: Any) -> None:
    _write_atomically(path, json.dumps(payload, indent=2, sort_keys=True))


def seed_workdir(workdir: str, seed: int) -> str:
    """Where seed `seed` of a run of several seeds (config.num_seeds > 1) in `workdir` lives."""
    return os.path.join(workdir, f"seed_{seed}")


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


_KIND_ORDER = ("top1", "top5", "ce")
_HEAD_ORDER = ("leader", "peer_mean", "peer_ensemble", "gated_ensemble", "deployed")


def _metric_order(name: str) -> tuple:
    """top-1, top-5, then CE; within each the branches in branch order, then the ensembles and the deployed head;
    then the rest (diversity)."""
    kind, _, head = name.partition("/")
    if kind not in _KIND_ORDER:
        return (len(_KIND_ORDER), 0, 0, name)
    prefix, _, number = head.rpartition("_")
    if prefix in ("peer", "branch") and number.isdigit():
        return (_KIND_ORDER.index(kind), 0, int(number), "")
    return (_KIND_ORDER.index(kind), 1 + (_HEAD_ORDER.index(head) if head in _HEAD_ORDER else len(_HEAD_ORDER)),
            0, head)


def metrics_rows(history: list) -> tuple[list[str], list[list]]:
    """(columns, rows) of metrics.csv: epoch, step, learning_rate, ramp_weight, test/<metric> for
    every scalar test metric (in eval_metrics.summarize's order), train/<mean> for the epoch's train means."""
    if not history:
        return [], []
    first = history[0]
    # A restored history may hold its keys sorted: the order is set here, not taken from the entry.
    test_names = sorted((name for name, value in first["metrics"].items() if isinstance(value, float)),
                        key=_metric_order)
    train_names = sorted(name for name in first.get("train", {}) if name not in _CONSTANT_TRAIN_MEANS)
    columns = (["epoch", "step", "learning_rate", "ramp_weight"]
               + [f"test/{name}" for name in test_names] + [f"train/{name}" for name in train_names])
    rows = [[entry["epoch"], entry["step"], entry["learning_rate"], entry["ramp_weight"]]
            + [entry["metrics"].get(name, "") for name in test_names]
            + [entry.get("train", {}).get(name, "") for name in train_names] for entry in history]
    return columns, rows


def write_metrics_csv(workdir: str, history: list) -> None:
    """<workdir>/metrics.csv from the whole history (see the module docstring)."""
    columns, rows = metrics_rows(history)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    _write_atomically(os.path.join(workdir, METRICS_CSV_FILE), text.getvalue())


def write_progress(workdir: str, step: int, total_steps: int) -> None:
    _write_json(os.path.join(workdir, PROGRESS_FILE), {"step": step, "total_steps": total_steps,
                                                       "time": time.strftime("%Y-%m-%d %H:%M:%S")})


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
