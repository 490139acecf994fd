"""The command-line tools by name: the console scripts, and the CLI reference built from the flags themselves.

    mbde-train      (python train.py)                  train and evaluate one config in a workdir
    mbde-sweep      (python -m mbde_jax.sweep)         every method x seed of a config
    mbde-report     (python -m mbde_jax.report)        tables and plots of finished runs
    mbde-evaluate   (python -m mbde_jax.evaluate)      every head of a checkpoint on a split
    mbde-export     (python -m mbde_jax.export)        the deployed branch as a standalone model
    mbde-summary    (python -m mbde_jax.summary)       parameter counts of a config's model
    mbde-benchmark  (python -m mbde_jax.benchmark)     images/s of the train and eval steps and of the input
    mbde-data       (python -m mbde_jax.data)          prepare a dataset ahead of training

Each tool owns its flags and its command line (mbde_jax.command_line is what they parse with); this module only
names them and imports each lazily, by name, so that it depends on no tool and no tool on it. A console script
runs its tool's module as `python -m` does; the tool parses its flags before its heavy imports (JAX, TensorFlow),
so `--help` and a mistyped flag answer at once.
"""

from __future__ import annotations

import importlib
import runpy
import sys
from collections.abc import Callable

# console-script name -> (the module `python -m` runs, one line on what the command does)
COMMANDS: dict[str, tuple[str, str]] = {
    "mbde-train": ("mbde_jax.train", "Train and evaluate one config in a workdir (also python train.py)."),
    "mbde-sweep": ("mbde_jax.sweep", "Every method x seed of a config: here, sharded, or as a SLURM array job."),
    "mbde-report": ("mbde_jax.report", "Tables and plots of finished runs."),
    "mbde-evaluate": ("mbde_jax.evaluate", "Every head of a checkpoint on a split."),
    "mbde-export": ("mbde_jax.export", "The deployed branch as a standalone model."),
    "mbde-summary": ("mbde_jax.summary", "Parameter counts of a config's model."),
    "mbde-benchmark": ("mbde_jax.benchmark", "Images/s of the train and eval steps, of the input, and the start-up."),
    "mbde-data": ("mbde_jax.data", "Prepare a dataset ahead of training."),
}
# Where each command's flags are defined: a module that imports nothing heavy (its `reference()` lists them).
_FLAG_MODULES = {
    "mbde-train": "mbde_jax.train", "mbde-sweep": "mbde_jax.sweep_flags", "mbde-report": "mbde_jax.report_flags",
    "mbde-evaluate": "mbde_jax.evaluate_flags", "mbde-export": "mbde_jax.export_flags",
    "mbde-summary": "mbde_jax.summary_flags", "mbde-benchmark": "mbde_jax.benchmark_flags",
    "mbde-data": "mbde_jax.data.cli",
}


def command_reference(name: str):
    """One entry per usage form of console command `name`: (invocation, usage text, an absl FlagValues holding
    exactly the flags that form defines, not parsed: neither absl's logging flags nor --config.<field>).
    mbde-benchmark has one per benchmark (train, eval, input, startup), the others one."""
    if name not in COMMANDS:
        raise KeyError(f"unknown command {name!r}; the commands are {', '.join(COMMANDS)}")
    return importlib.import_module(_FLAG_MODULES[name]).reference()


def _console(name: str) -> Callable[[], None]:
    """The console script `name`: its tool's module run as `python -m` runs it, on sys.argv."""
    def entry() -> None:
        runpy.run_module(COMMANDS[name][0], run_name="__main__")
        sys.exit(0)

    entry.__doc__ = f"{name}: {COMMANDS[name][1]}"
    return entry


mbde_train, mbde_sweep, mbde_report, mbde_evaluate, mbde_export, mbde_summary, mbde_benchmark, mbde_data = map(
    _console, COMMANDS)
