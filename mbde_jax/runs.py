"""The runs a report compares: finding workdirs, reading them, and leaving out what must not be averaged.

A run is left out, with the reason, when it is incomplete, when its config differs from that of the runs the
report uses in a field that shapes the result (any but method, seed and BOOKKEEPING_FIELDS), when it was made
with other jax/jaxlib/flax versions than the others (or resumed across versions), when one of its JSON files
cannot be read, or when it repeats a method and seed already counted. A run that differs only in bookkeeping
fields is used, and its differences are listed (Run.bookkeeping_differences). Nothing is averaged in silently.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from typing import Sequence

from mbde_jax import provenance, workdir as run_files
from mbde_jax.methods import METHODS

# Config fields that vary between the runs of one comparison.
PER_RUN_FIELDS = ("method", "seed")
# Config fields that cannot change a run's numbers: where the data is read from and whether it may be downloaded,
# how often checkpoints are written and how many are kept (a resumed run repeats the uninterrupted one bit for
# bit), how often the train metrics are written (the epoch means sum the same steps in the same order) and the
# console's progress lines. The one list of them: the report groups runs on every other field, and a finished
# run rerun with other values of these is still finished (finished_results). Not here: the fields that choose how
# a computation runs (cpu_devices, branch_execution, seed_execution, input_on_device, eval_batch_size), which
# may change the last bits of a result.
BOOKKEEPING_FIELDS = ("data_dir", "download", "checkpoint_every_epochs", "checkpoint_every_steps",
                      "checkpoint_every_minutes", "keep_checkpoints", "log_every_steps", "log_every_seconds")


@dataclasses.dataclass
class Run:
    """One training workdir as the report sees it.

    Attributes:
      config: config.json. history: history.json (one entry per evaluation; [] when absent).
      results: results.json, or None when the run has not finished.
      left_out: why the report does not use it; None when it is used.
      bookkeeping_differences: how a used run's BOOKKEEPING_FIELDS differ from the values most runs have;
        None if they do not.
    """

    workdir: str
    config: dict
    history: list
    results: dict | None
    left_out: str | None = None
    bookkeeping_differences: str | None = None

    @property
    def method(self) -> str:
        return self.config.get("method", "?")

    @property
    def seed(self) -> int:
        return self.config.get("seed", "?")

    @property
    def version_key(self) -> tuple:
        """(name, version) of jax, jaxlib and flax in results.json's provenance block."""
        return provenance.version_key((self.results or {}).get("provenance"))

    def history_version_keys(self) -> list[tuple]:
        """The distinct version keys of the history entries, in order (two or more: resumed across versions)."""
        keys = []
        for entry in self.history:
            key = provenance.version_key(entry.get("provenance"))
            if key not in keys:
                keys.append(key)
        return keys

    @property
    def final_metrics(self) -> dict:
        return self.results["final"]["metrics"]


def find_workdirs(paths: Sequence[str]) -> list[str]:
    """Every directory at or below `paths` that holds a config.json, sorted, without repeats."""
    found = []
    for path in paths:
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{path} is not a directory (give a sweep root or training workdirs)")
        for directory, subdirs, files in os.walk(path):
            subdirs[:] = sorted(d for d in subdirs if d != "checkpoints")  # orbax's tree holds no runs
            if run_files.CONFIG_FILE in files:
                found.append(os.path.normpath(directory))
    unique = sorted(set(found))
    if not unique:
        raise FileNotFoundError(f"no run (a directory with config.json) under {list(paths)}")
    return unique


def _load_run(workdir: str) -> Run:
    """Reads a run's files; a file that cannot be read leaves the run out, naming the file and why."""
    paths = {name: os.path.join(workdir, file_name) for name, file_name in (
        ("config", run_files.CONFIG_FILE), ("history", run_files.HISTORY_FILE), ("results", run_files.RESULTS_FILE))}
    loaded = {"config": {}, "history": [], "results": None}
    unreadable = []
    for name, path in paths.items():
        if name == "config" or os.path.exists(path):
            try:
                loaded[name] = run_files.read_json(path)
            except run_files.UnreadableRunFile as error:
                unreadable.append(str(error))
    run = Run(workdir, **loaded)
    if unreadable:
        run.left_out = "unreadable: " + "; ".join(unreadable)
    return run


def _incomplete(run: Run) -> str | None:
    last = run.history[-1]["epoch"] if run.history else 0
    if run.results is None:
        return f"incomplete: no results.json (evaluated up to epoch {last} of {run.config['num_epochs']})"
    if run.results["final"]["epoch"] != run.config["num_epochs"]:
        return (f"incomplete: results.json is of epoch {run.results['final']['epoch']}, the config asks for "
                f"{run.config['num_epochs']}")
    if not run.history:
        return "incomplete: no history.json"
    return None


def finished_results(workdir: str, config: dict) -> dict | None:
    """results.json's content when the run in `workdir` has finished what `config` (JSON values) asks for: its
    results are of the config's last epoch and its config.json differs from `config` in BOOKKEEPING_FIELDS at
    most. None otherwise (not finished, another config, or a file that cannot be read)."""
    try:
        results = run_files.read_if_present(workdir, run_files.RESULTS_FILE)
        saved = run_files.read_if_present(workdir, run_files.CONFIG_FILE)
    except run_files.UnreadableRunFile:
        return None
    if not results or saved is None or results.get("final", {}).get("epoch") != config["num_epochs"]:
        return None
    return None if run_files.config_differences(saved, config, ignored=BOOKKEEPING_FIELDS) else results


def _shared_config(config: dict) -> str:
    return json.dumps({k: v for k, v in config.items() if k not in PER_RUN_FIELDS + BOOKKEEPING_FIELDS},
                      sort_keys=True)


def _config_difference(config: dict, reference: dict, names: Sequence[str]) -> str:
    return ", ".join(f"{name} {config.get(name, '<absent>')!r} (the others: {reference.get(name, '<absent>')!r})"
                     for name in sorted(names) if config.get(name, "<absent>") != reference.get(name, "<absent>"))


def _usual_values(configs: Sequence[dict], names: Sequence[str]) -> dict:
    """{name: the value most of `configs` have (the first found on a tie)}."""
    usual = {}
    for name in names:
        counts = collections.Counter(json.dumps(config.get(name, "<absent>")) for config in configs)
        usual[name] = json.loads(counts.most_common(1)[0][0])
    return usual


def _mixed_versions(run: Run) -> str | None:
    keys = run.history_version_keys()
    if len(keys) > 1:
        return ("resumed across library versions (history.json holds epochs made with "
                + " and with ".join(provenance.describe_versions(key) for key in keys) + ")")
    return None


def _leave_out_other_versions(runs: Sequence[Run]) -> None:
    versions = collections.Counter(run.version_key for run in runs if run.left_out is None)
    if len(versions) > 1:
        reference = versions.most_common(1)[0][0]
        for run in runs:
            if run.left_out is None and run.version_key != reference:
                run.left_out = (f"made with {provenance.describe_versions(run.version_key)} (the others: "
                                f"{provenance.describe_versions(reference)}); runs of different versions are "
                                f"never averaged together")


def load_runs(paths: Sequence[str]) -> list[Run]:
    """Loads every run under `paths` and marks the ones the report must leave out (Run.left_out).

    The runs of one report are one comparison: they must share their config except for method, seed and
    BOOKKEEPING_FIELDS. The config shared by most complete runs (the first found on a tie) is the reference; runs
    with another are left out, as are incomplete or unreadable runs and repeats of a (method, seed) already
    counted; a used run whose bookkeeping fields differ from the values most runs have has them listed.
    Among the rest, the jax/jaxlib/flax versions of most runs are the reference and runs made with others are
    left out: different versions give different numbers for one config.
    """
    runs = [_load_run(workdir) for workdir in find_workdirs(paths)]
    for run in runs:
        run.left_out = run.left_out or _incomplete(run) or _mixed_versions(run)
    groups = collections.Counter(_shared_config(run.config) for run in runs if run.left_out is None)
    if groups:
        reference_key = groups.most_common(1)[0][0]
        reference = next(run.config for run in runs if _shared_config(run.config) == reference_key)
        for run in runs:
            if run.config and _shared_config(run.config) != reference_key:
                names = (set(run.config) | set(reference)) - set(PER_RUN_FIELDS + BOOKKEEPING_FIELDS)
                reason = f"config differs from the other runs': {_config_difference(run.config, reference, names)}"
                run.left_out = f"{run.left_out}; {reason}" if run.left_out else reason
        grouped = [run for run in runs if run.left_out is None]
        usual = _usual_values([run.config for run in grouped], BOOKKEEPING_FIELDS)
        for run in grouped:
            run.bookkeeping_differences = _config_difference(run.config, usual, BOOKKEEPING_FIELDS) or None
    _leave_out_other_versions(runs)
    counted: dict[tuple[str, int], str] = {}
    for run in runs:
        if run.left_out is None:
            key = (run.method, run.seed)
            if key in counted:
                run.left_out = f"repeats method {run.method} seed {run.seed} of {counted[key]}"
            else:
                counted[key] = run.workdir
    return runs


def included(runs: Sequence[Run]) -> list[Run]:
    return [run for run in runs if run.left_out is None]


def method_order(name: str) -> tuple[int, str]:
    names = list(METHODS)
    return (names.index(name) if name in names else len(names), name)


def by_method(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """The used runs grouped by method (in mbde_jax.methods.METHODS order), each group sorted by seed."""
    groups: dict[str, list[Run]] = collections.defaultdict(list)
    for run in included(runs):
        groups[run.method].append(run)
    return {name: sorted(groups[name], key=lambda run: run.seed) for name in sorted(groups, key=method_order)}

