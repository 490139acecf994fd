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
names them and imports each lazily, by name, so that it depends on no tool and no tool on it. From Python,
`mbde_jax.cli.<tool>(argv)` (train, sweep, ..., data) runs the same command as the console script. A console script
runs its tool's module as `python -m` does; the tool parses its flags before its heavy imports (JAX, TensorFlow),
so `--help` and a mistyped flag answer at once.
"""

from __future__ import annotations

import importlib
import runpy
import sys
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple


class _Tool(NamedTuple):
    module: str         # what `python -m` runs (mbde-train: mbde_jax.train, which train.py calls)
    summary: str
    flags: str          # where its flags are defined: a module that imports nothing heavy
    main: str           # whose main(argv) runs the command from Python
    main_takes_program: bool = True  # benchmark's and data's main take the arguments after the program name


_TOOLS = {
    "mbde-train": _Tool("mbde_jax.train", "Train and evaluate one config in a workdir (also python train.py).",
                        "mbde_jax.train", "mbde_jax.train"),
    "mbde-sweep": _Tool("mbde_jax.sweep", "Every method x seed of a config: here, sharded, or as a SLURM array job.",
                        "mbde_jax.sweep_flags", "mbde_jax.sweep"),
    "mbde-report": _Tool("mbde_jax.report", "Tables and plots of finished runs.", "mbde_jax.report_flags",
                         "mbde_jax.report"),
    "mbde-evaluate": _Tool("mbde_jax.evaluate", "Every head of a checkpoint on a split.", "mbde_jax.evaluate_flags",
                           "mbde_jax.evaluate"),
    "mbde-export": _Tool("mbde_jax.export", "The deployed branch as a standalone model.", "mbde_jax.export_flags",
                         "mbde_jax.export"),
    "mbde-summary": _Tool("mbde_jax.summary", "Parameter counts of a config's model.", "mbde_jax.summary_flags",
                          "mbde_jax.summary"),
    "mbde-benchmark": _Tool("mbde_jax.benchmark", "Images/s of the train and eval steps, of the input, and the "
                            "start-up.", "mbde_jax.benchmark_flags", "mbde_jax.benchmark", main_takes_program=False),
    "mbde-data": _Tool("mbde_jax.data", "Prepare a dataset ahead of training.", "mbde_jax.data.cli",
                       "mbde_jax.data.cli", main_takes_program=False),
}
# console-script name -> (the module `python -m` runs, one line on what the command does)
COMMANDS: dict[str, tuple[str, str]] = {name: (tool.module, tool.summary) for name, tool in _TOOLS.items()}


def command_reference(name: str) -> list[tuple[str, str, Any]]:
    """One entry per usage form of console command `name`: (invocation, usage text, an absl FlagValues holding
    exactly the flags that form defines, not parsed: neither absl's logging flags nor --config.<field>).
    mbde-benchmark has one per benchmark (train, eval, input, startup), the others one."""
    if name not in _TOOLS:
        raise KeyError(f"unknown command {name!r}; the commands are {', '.join(_TOOLS)}")
    return importlib.import_module(_TOOLS[name].flags).reference()


def _console(name: str) -> Callable[[], None]:
    """The console script `name`: its tool's module run as `python -m` runs it, on sys.argv."""
    def entry() -> None:
        runpy.run_module(_TOOLS[name].module, run_name="__main__")
        sys.exit(0)

    entry.__doc__ = f"{name}: {_TOOLS[name].summary}"
    return entry


def _from_python(name: str) -> Callable[..., Any]:
    """`cli.<tool>(argv)`: the command `name` with argv as sys.argv has it (argv[0] the program; None: sys.argv);
    returns what the tool's main returns."""
    tool = _TOOLS[name]

    def command(argv: Sequence[str] | None = None) -> Any:
        argv = list(argv or sys.argv)
        return importlib.import_module(tool.main).main(argv if tool.main_takes_program else argv[1:])

    command.__name__ = command.__qualname__ = name.removeprefix("mbde-")
    command.__doc__ = f"{name} from Python: argv as sys.argv has it (argv[0] the program). {tool.summary}"
    return command


mbde_train, mbde_sweep, mbde_report, mbde_evaluate, mbde_export, mbde_summary, mbde_benchmark, mbde_data = map(
    _console, _TOOLS)
train, sweep, report, evaluate, export, summary, benchmark, data = map(_from_python, _TOOLS)
