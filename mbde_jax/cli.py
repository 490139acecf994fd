"""Every command-line tool: absl flags, ml_collections config_flags for --config and --config.<field>=<value>.

    mbde-train      (python train.py)                  train and evaluate one config in a workdir
    mbde-sweep      (python -m mbde_jax.sweep)         every method x seed of a config
    mbde-report     (python -m mbde_jax.report)        tables and plots of finished runs
    mbde-evaluate   (python -m mbde_jax.evaluate)      every head of a checkpoint on a split
    mbde-export     (python -m mbde_jax.export)        the deployed branch as a standalone model
    mbde-summary    (python -m mbde_jax.summary)       parameter counts of a config's model
    mbde-benchmark  (python -m mbde_jax.benchmark)     images/s of the train and eval steps and of the input
    mbde-data       (python -m mbde_jax.data)          prepare a dataset ahead of training

This module imports nothing heavy: each command imports JAX, TensorFlow and tfds only after its flags are
parsed, so `--help` and a mistyped flag answer at once. Each call parses into its own absl FlagValues (with
absl's logging flags), so commands can also be called from Python, more than once, with an argv list.
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from absl import flags
from absl import logging as absl_logging

from mbde_jax import cli_errors, distributed, logs

Flags = flags.FlagValues


def _parse(tool: str, doc: str, argv: Sequence[str], define: Callable[[Flags], Any]) -> tuple[Any, list[str]]:
    """Defines the tool's flags on a fresh FlagValues, parses argv (argv[0] is the program) and returns
    (what `define` returned, the positional arguments). --help prints the usage and exits 0; a bad flag is
    one line (exit 1)."""
    flag_values = flags.FlagValues()
    flag_values.append_flag_values(flags.FLAGS)  # absl's own (--verbosity, --logtostderr, ...)
    defined = define(flag_values)
    if any(arg in ("--help", "-h", "--helpfull", "-?") for arg in argv[1:]):
        print(f"{inspect.cleandoc(doc)}\n\nflags:\n{_usage(flag_values)}")
        raise SystemExit(0)
    positional = cli_errors.parse_flags_or_exit(tool, list(argv), flag_values)[1:]
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # absl logging reads its flags from here
    absl_logging.use_absl_handler()
    logs.quiet_console()
    if flags.FLAGS["verbosity"].using_default_value:
        flags.FLAGS.verbosity = 0  # INFO, as absl's app.run does: the progress and evaluation lines are INFO
    return defined, positional


def _usage(flag_values: Flags) -> str:
    """One entry per flag this tool defines (absl's logging flags are left out), with its default."""
    lines = []
    for name in sorted(set(flag_values) - set(flags.FLAGS)):
        flag = flag_values[name]
        if flag.name != name or name.startswith("config."):  # short names; per-field config overrides
            continue
        default = "" if flag.default is None else f" (default: {flag.default_as_str})"
        lines.append(f"  --{name}: {flag.help}{default}")
    return "\n".join(lines)


def _config_flag(flag_values: Flags, argv: Sequence[str]):
    """The required --config flag; its --config.<field> overrides are the ones `argv` gives."""
    from ml_collections import config_flags  # pylint: disable=import-outside-toplevel

    from mbde_jax import config_utils  # pylint: disable=import-outside-toplevel

    holder = config_flags.DEFINE_config_file(
        "config", None, config_utils.CONFIG_FLAG_HELP + " Fields are overridden with --config.<field>=<value>.",
        flag_values=flag_values, lock_config=True, sys_argv=list(argv))
    flags.mark_flag_as_required("config", flag_values)
    return holder


def _before_jax() -> None:
    """Once the flags are parsed, before the command's heavy imports: TensorFlow imported quietly, and JAX's
    persistent compilation cache switched on (mbde_jax.compilation_cache)."""
    logs.import_tensorflow_quietly()
    from mbde_jax import compilation_cache  # pylint: disable=import-outside-toplevel

    compilation_cache.enable()


def _no_positional(tool: str, positional: list[str]) -> None:
    if positional:
        raise SystemExit(f"{tool}: error: unexpected arguments {positional}; flags are given as --name=value.")


def train(argv: Sequence[str] | None = None) -> None:
    """usage: mbde-train (or python train.py) --config FILE --workdir DIR [--config.<field>=<value> ...]

    Trains and evaluates one config; the same --workdir again resumes from its latest checkpoint.
    """
    tool, argv = "train.py", list(argv or sys.argv)

    def define(fv):
        config = _config_flag(fv, argv)
        workdir = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.", flag_values=fv)
        allow = flags.DEFINE_bool("allow_config_change", False, "Resume a workdir whose checkpoint was made with a "
                                  "different config.", flag_values=fv)
        flags.mark_flag_as_required("workdir", fv)
        return config, workdir, allow, distributed.define_flags(fv)

    (config, workdir, allow, launch), positional = _parse(tool, train.__doc__, argv, define)
    _no_positional(tool, positional)
    _before_jax()
    from mbde_jax import lifecycle  # pylint: disable=import-outside-toplevel

    try:
        # What the user must change is in the message; a traceback would only bury it (MBDE_DEBUG=1 shows it).
        with cli_errors.one_line_errors(tool):
            distributed.initialize(launch())  # before anything starts JAX's backends
            from mbde_jax import training  # pylint: disable=import-outside-toplevel

            training.train_and_evaluate(config.value, workdir.value, allow_config_change=allow.value)
    except lifecycle.TrainingStopped as stopped:
        from mbde_jax import slurm  # pylint: disable=import-outside-toplevel

        print(stopped, file=sys.stderr, flush=True)
        requeued = slurm.requeue_after_stop(stopped.signum)  # SLURM's time-limit warning: back in the queue
        if requeued:
            print(requeued, file=sys.stderr, flush=True)
        sys.exit(stopped.exit_code)


def sweep(argv: Sequence[str] | None = None) -> None:
    """usage: mbde-sweep --config FILE --workdir ROOT [--methods a,b] [--seeds 0,1,2] [--config.<field>=...]
                      [--shard i/N | --submit slurm [--slurm_<resource>=...] | --status] [--dry_run]

    Runs every method x seed of one config, each run in <workdir>/<method>/seed_<seed>; --shard trains one
    worker's share, --submit slurm submits the whole sweep as one array job, --status says where each run stands.
    """
    tool, argv = "mbde_jax.sweep", list(argv or sys.argv)

    def define(fv):
        holders = dict(
            config=_config_flag(fv, argv),
            methods=flags.DEFINE_list("methods", None, "Methods to run, comma separated (default: config.method); "
                                      "see the README's method table.", flag_values=fv),
            seeds=flags.DEFINE_list("seeds", None, "Seeds to run, comma separated (default: config.seed).",
                                    flag_values=fv),
            workdir=flags.DEFINE_string("workdir", None, "Root of the sweep: run M, seed S goes to "
                                        "<workdir>/M/seed_S.", flag_values=fv),
            dry_run=flags.DEFINE_bool("dry_run", False, "Only check the sweep and print what it would do (with "
                                      "--submit: the sbatch script, not submitted).", flag_values=fv),
            shard=flags.DEFINE_string("shard", None, "i/N: train only worker i's share of N (run k of the plan "
                                      "belongs to worker k mod N). Default: the SLURM array task's share inside "
                                      "an array job, else every run.", flag_values=fv),
            status=flags.DEFINE_bool("status", False, "Print where every run of the sweep stands (done, running, "
                                     "failed, stopped, not started) and train nothing.", flag_values=fv),
            submit=flags.DEFINE_enum("submit", None, ["slurm"], "Submit the whole sweep as one SLURM array job "
                                     "(see --slurm_*) instead of training here.", flag_values=fv),
            launch=distributed.define_flags(fv))  # every process of a multi-process sweep runs the same command
        holders.update(_slurm_flags(fv))
        return holders, fv

    def define_required(fv):
        defined = define(fv)
        flags.mark_flag_as_required("workdir", fv)
        return defined

    (holders, fv), positional = _parse(tool, sweep.__doc__, argv, define_required)
    _no_positional(tool, positional)
    if not holders["status"].value:  # the status reads files only: it answers at once on a login node
        _before_jax()
    from mbde_jax import sweep as sweep_lib  # pylint: disable=import-outside-toplevel

    value = {name: holder.value for name, holder in holders.items() if name != "launch"}
    submission = None
    if value["submit"] == "slurm":
        from mbde_jax import slurm  # pylint: disable=import-outside-toplevel

        resources = slurm.Resources(
            tasks=value["slurm_tasks"], partition=value["slurm_partition"], time=value["slurm_time"],
            gpus_per_task=value["slurm_gpus_per_task"], cpus_per_task=value["slurm_cpus_per_task"],
            mem=value["slurm_mem"], array_parallelism=value["slurm_array_parallelism"],
            signal_seconds=value["slurm_signal_seconds"], job_name=value["slurm_job_name"],
            extra=tuple(value["slurm_option"] or ()), setup=value["slurm_setup"])
        submission = sweep_lib.Submission(resources, tuple(_task_argv(argv[1:], fv)))
    sweep_lib.main(value["config"], value["methods"] if fv["methods"].present else None,
                   value["seeds"] if fv["seeds"].present else None, value["workdir"], value["dry_run"],
                   holders["launch"], shard=value["shard"], status=value["status"], submission=submission)


# The sweep's flags that only the submitting command reads: the array tasks run the sweep without them.
_SUBMISSION_ONLY_FLAGS = ("submit", "dry_run", "shard", "status")


def _task_argv(args: Sequence[str], fv: Flags) -> list[str]:
    """`args` without the submission's own flags (--submit, --slurm_*, --dry_run, --shard, --status)."""
    kept, skip_value = [], False
    for arg in args:
        if skip_value:
            skip_value = False
            continue
        name = arg.lstrip("-").split("=", 1)[0] if arg.startswith("--") else None
        base = name[2:] if name and name.startswith("no") and name[2:] in fv and fv[name[2:]].boolean else name
        if base and base in fv and (base in _SUBMISSION_ONLY_FLAGS or base.startswith("slurm_")):
            skip_value = "=" not in arg and not fv[base].boolean
            continue
        kept.append(arg)
    return kept


def _slurm_flags(fv: Flags) -> dict:
    """The resources each array task of `--submit slurm` asks for; unset ones are the cluster's defaults."""
    return dict(
        slurm_tasks=flags.DEFINE_integer("slurm_tasks", 0, "Array tasks (default: one per run of the sweep); "
                                         "fewer tasks each train several runs one after another.", flag_values=fv),
        slurm_array_parallelism=flags.DEFINE_integer("slurm_array_parallelism", 0, "At most this many tasks at "
                                                     "once (0: no limit).", flag_values=fv),
        slurm_partition=flags.DEFINE_string("slurm_partition", None, "sbatch --partition.", flag_values=fv),
        slurm_time=flags.DEFINE_string("slurm_time", None, "sbatch --time per task, e.g. 1-00:00:00; a task that "
                                       "reaches it checkpoints and is requeued.", flag_values=fv),
        slurm_gpus_per_task=flags.DEFINE_integer("slurm_gpus_per_task", 0, "sbatch --gpus-per-task.",
                                                 flag_values=fv),
        slurm_cpus_per_task=flags.DEFINE_integer("slurm_cpus_per_task", None, "sbatch --cpus-per-task.",
                                                 flag_values=fv),
        slurm_mem=flags.DEFINE_string("slurm_mem", None, "sbatch --mem per task, e.g. 32G.", flag_values=fv),
        slurm_signal_seconds=flags.DEFINE_integer("slurm_signal_seconds", 300, "SIGUSR1 this many seconds "
                                                  "before the time limit: checkpoint, then requeue.",
                                                  flag_values=fv),
        slurm_job_name=flags.DEFINE_string("slurm_job_name", "mbde-sweep", "sbatch --job-name.", flag_values=fv),
        slurm_option=flags.DEFINE_multi_string("slurm_option", None, "A further sbatch option as on its command "
                                               "line, e.g. --slurm_option=--account=abc (repeatable).",
                                               flag_values=fv),
        slurm_setup=flags.DEFINE_string("slurm_setup", None, "Shell commands each task runs first, e.g. "
                                        "'module load cuda/12.4'.", flag_values=fv))


def _workdir_tool(tool: str, doc: str, argv, extra: Callable[[Flags], dict]) -> dict:
    """Parses --workdir plus the tool's `extra` flags; returns {name: value}."""
    def define(fv):
        holders = {"workdir": flags.DEFINE_string("workdir", None, "A training workdir (holds config.json and "
                                                  "checkpoints/).", flag_values=fv), **extra(fv)}
        flags.mark_flag_as_required("workdir", fv)
        return holders

    holders, positional = _parse(tool, doc, argv or sys.argv, define)
    _no_positional(tool, positional)
    return {name: holder.value for name, holder in holders.items()}


def evaluate(argv: Sequence[str] | None = None) -> None:
    """usage: mbde-evaluate --workdir DIR [--split test] [--step N] [--json FILE]

    Evaluates a run's latest (or --step's) checkpoint on a split and prints every head's metrics.
    """
    values = _workdir_tool("mbde_jax.evaluate", evaluate.__doc__, argv, lambda fv: {
        "split": flags.DEFINE_string("split", None, "tfds split; default the dataset's test split.", flag_values=fv),
        "step": flags.DEFINE_integer("step", None, "Checkpoint step; default the latest.", flag_values=fv),
        "json_path": flags.DEFINE_string("json", None, "Also write the metrics to this JSON file.", flag_values=fv)})
    _before_jax()
    from mbde_jax import evaluate as evaluate_lib  # pylint: disable=import-outside-toplevel

    evaluate_lib.main(**values)


def export(argv: Sequence[str] | None = None) -> None:
    """usage: mbde-export --workdir DIR --out DIR [--step N]

    Writes a run's deployed branch as a standalone model (model.json + orbax variables).
    """
    values = _workdir_tool("mbde_jax.export", export.__doc__, argv, lambda fv: {
        "out": flags.DEFINE_string("out", None, "Directory to write the exported model to (required).",
                                   flag_values=fv),
        "step": flags.DEFINE_integer("step", None, "Checkpoint step; default the latest.", flag_values=fv)})
    _before_jax()
    from mbde_jax import export as export_lib  # pylint: disable=import-outside-toplevel

    export_lib.main(**values)


def report(argv: Sequence[str] | None = None) -> None:
    """usage: mbde-report PATH [PATH ...] [--out DIR]

    Tables and plots of every run under the given paths (a sweep root or training workdirs).
    """
    tool = "mbde_jax.report"
    out, paths = _parse(tool, report.__doc__, argv or sys.argv, lambda fv: flags.DEFINE_string(
        "out", None, "Output directory; default <path>/report when one path is given.", flag_values=fv))
    if not paths:
        raise SystemExit(f"{tool}: error: give a sweep root or one or more training workdirs.")
    if out.value is None and len(paths) > 1:
        raise SystemExit(f"{tool}: error: --out is needed when more than one path is given.")
    from mbde_jax import report as report_lib  # pylint: disable=import-outside-toplevel

    report_lib.main(paths, out.value or os.path.join(paths[0], "report"))


def summary(argv: Sequence[str] | None = None) -> None:
    """usage: mbde-summary --config FILE [--config.<field>=<value> ...]

    Parameter counts of a config's model (shared trunk, each branch, heads, deployed network).
    """
    tool, argv = "mbde_jax.summary", list(argv or sys.argv)
    config, positional = _parse(tool, summary.__doc__, argv, lambda fv: _config_flag(fv, argv))
    _no_positional(tool, positional)
    from mbde_jax import summary as summary_lib  # pylint: disable=import-outside-toplevel

    summary_lib.main(config.value)


def benchmark(argv: Sequence[str] | None = None):
    """Throughput: mbde-benchmark train|eval|startup --config FILE [--config.<field>=...] | input --dataset NAME."""
    from mbde_jax import benchmark as benchmark_lib  # pylint: disable=import-outside-toplevel  # light to import

    argv = list(argv or sys.argv)
    command = argv[1] if len(argv) > 1 else None
    if command in ("-h", "--help", "--helpfull"):
        print(benchmark_lib.__doc__.strip())
        raise SystemExit(0)
    if command not in benchmark_lib.COMMANDS:
        raise SystemExit(f"mbde_jax.benchmark: error: the first argument names the benchmark, one of "
                         f"{', '.join(benchmark_lib.COMMANDS)}; got {command!r} (--help lists them).")
    tool = f"mbde_jax.benchmark {command}"
    holders, positional = _parse(tool, benchmark_lib.__doc__, [argv[0]] + argv[2:],
                                 lambda fv: _benchmark_flags(command, fv, argv))
    _no_positional(tool, positional)
    settings = {name: holder.value for name, holder in holders.items()}
    settings["overrides"] = [arg for arg in argv[2:] if arg.startswith("--config.")]
    if "config" in settings:
        settings["config_file"] = cli_errors.flag_text(argv, "config")
    _before_jax()
    return benchmark_lib.run(command, **settings)


def _benchmark_flags(command: str, fv: Flags, argv: Sequence[str]) -> dict:
    holders = {"seed": flags.DEFINE_integer("seed", 0, "Seed of the synthetic or shuffled data.", flag_values=fv),
               "json_path": flags.DEFINE_string("json", None, "Also write the figures to this JSON file.",
                                                flag_values=fv)}
    if command in ("train", "eval"):
        return dict(holders, config=_config_flag(fv, argv),
                    steps=flags.DEFINE_integer("steps", 20, "Timed steps.", flag_values=fv),
                    warmup=flags.DEFINE_integer("warmup", 3, "Untimed steps after compiling.", flag_values=fv),
                    compare_xla_option=flags.DEFINE_string(
                        "compare_xla_option", None, "NAME=VALUE: also compile the step with this XLA option "
                        "(e.g. xla_cpu_enable_concurrency_optimized_scheduler=true) and time the two programs in "
                        "turn, one step each, so that a machine's drift hits both alike.", flag_values=fv))
    if command == "startup":
        return dict(holders, config=_config_flag(fv, argv),
                    data=flags.DEFINE_enum("data", "auto", ["auto", "real", "mock"], "real: the prepared dataset; "
                                           "mock: tfds mock data; auto: real for digits, mock otherwise.",
                                           flag_values=fv),
                    mock_examples=flags.DEFINE_integer("mock_examples", 0, "Examples per split with mock data (0: "
                                                       "two batches).", flag_values=fv),
                    timeout=flags.DEFINE_integer("timeout", 3600, "Seconds each training process may take.",
                                                 flag_values=fv))
    from mbde_jax.data import info as dataset_info  # pylint: disable=import-outside-toplevel

    holders["dataset"] = flags.DEFINE_enum("dataset", None, sorted(dataset_info.DATASETS), "Dataset.",
                                           flag_values=fv)
    flags.mark_flag_as_required("dataset", fv)
    return dict(
        holders,
        data=flags.DEFINE_enum("data", "auto", ["auto", "real", "mock"], "real: the prepared dataset; mock: tfds "
                               "mock data; auto: real for digits, mock otherwise.", flag_values=fv),
        mock_examples=flags.DEFINE_integer("mock_examples", 10_000, "Examples per split with --data=mock.",
                                           flag_values=fv),
        batch_size=flags.DEFINE_integer("batch_size", 128, "Global batch size.", flag_values=fv),
        num_batches=flags.DEFINE_integer("num_batches", 300, "Batches timed.", flag_values=fv),
        data_dir=flags.DEFINE_string("data_dir", None, "tfds data directory for --data=real.", flag_values=fv),
        input_on_device=flags.DEFINE_bool("input_on_device", False, "Measure the device-resident pipeline "
                                          "(config.input_on_device).", flag_values=fv),
        cpu_devices=flags.DEFINE_integer("cpu_devices", 0, "JAX devices a CPU-only host is split into, as "
                                         "config.cpu_devices (0: auto, as training).", flag_values=fv))


def data(argv: Sequence[str] | None = None) -> int:
    """usage: mbde-data prepare DATASET [--data_dir DIR] [--manual_dir DIR]

    Prepares a dataset ahead of training.
    """
    tool = "mbde_jax.data"

    def define(fv):
        return (flags.DEFINE_string("data_dir", None, "tfds data directory (default: $TFDS_DATA_DIR or "
                                    "~/tensorflow_datasets).", flag_values=fv),
                flags.DEFINE_string("manual_dir", None, "Directory holding a manually downloaded CINIC-10.tar.gz "
                                    "(default: <data_dir>/downloads/manual).", flag_values=fv))

    from mbde_jax.data import cli as data_cli  # pylint: disable=import-outside-toplevel

    (data_dir, manual_dir), positional = _parse(tool, data_cli.__doc__, argv or sys.argv, define)
    if len(positional) != 2 or positional[0] != "prepare":
        raise SystemExit(f"{tool}: error: usage: {tool} prepare <dataset> [--data_dir DIR] [--manual_dir DIR]; "
                         f"got {positional}.")
    _before_jax()
    return data_cli.prepare_command(positional[1], data_dir.value, manual_dir.value)


def _console(command: Callable) -> Callable[[], None]:
    """A console-script entry: runs `command` on sys.argv; an int it returns is the exit status."""
    def entry() -> None:
        result = command(sys.argv)
        sys.exit(result if isinstance(result, int) else 0)

    entry.__doc__ = command.__doc__
    return entry


mbde_train, mbde_sweep, mbde_report, mbde_evaluate, mbde_export, mbde_summary, mbde_benchmark, mbde_data = map(
    _console, (train, sweep, report, evaluate, export, summary, benchmark, data))
