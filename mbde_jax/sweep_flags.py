"""The flags of mbde-sweep (`python -m mbde_jax.sweep`), apart from mbde_jax.sweep so that `--help` answers before
its imports (JAX through mbde_jax.runs) and sweep.py stays one concern: running the sweep."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from absl import flags

from mbde_jax import command_line, distributed, slurm

TOOL = "mbde_jax.sweep"
USAGE = """usage: mbde-sweep --config FILE --workdir ROOT [--methods a,b] [--seeds 0,1,2] [--config.<field>=...]
                      [--shard i/N | --submit slurm [--slurm_<resource>=...] | --status] [--dry_run]

    Runs every method x seed of one config, each run in <workdir>/<method>/seed_<seed>; --shard trains one
    worker's share, --submit slurm submits the whole sweep as one array job, --status says where each run stands.
    """

@dataclasses.dataclass(frozen=True)
class Submission:
    """--submit slurm: the resources of each array task and the sweep's own flags for the tasks to run."""

    resources: slurm.Resources
    sweep_argv: tuple[str, ...]


# The sweep's flags that only the submitting command reads: the array tasks run the sweep without them.
_SUBMISSION_ONLY_FLAGS = ("submit", "dry_run", "shard", "status")


def define(argv: Sequence[str]) -> command_line.Define:
    """The sweep's flags (--config overrides from `argv`); returns (holders by name, the FlagValues)."""
    def define_on(fv: command_line.Flags):
        holders = dict(
            config=command_line.config_flag(fv, argv),
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
        flags.mark_flag_as_required("workdir", fv)
        return holders, fv

    return define_on


def _slurm_flags(fv: command_line.Flags) -> dict:
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


def reference() -> list[tuple[str, str, command_line.Flags]]:
    return [command_line.reference("mbde-sweep", USAGE, define([TOOL]))]


def parse(argv: Sequence[str]) -> dict:
    """The keyword arguments of mbde_jax.sweep.run for the command line `argv` (argv[0] the program); JAX's
    set-up (command_line.before_jax) done unless it is --status, which reads files only and so answers at once
    on a login node."""
    argv = list(argv)
    (holders, fv), positional = command_line.parse(TOOL, USAGE, argv, define(argv))
    command_line.no_positional(TOOL, positional)
    if not holders["status"].value:
        command_line.before_jax()
    value = {name: holder.value for name, holder in holders.items() if name != "launch"}
    submission = None
    if value["submit"] == "slurm":
        resources = slurm.Resources(
            tasks=value["slurm_tasks"], partition=value["slurm_partition"], time=value["slurm_time"],
            gpus_per_task=value["slurm_gpus_per_task"], cpus_per_task=value["slurm_cpus_per_task"],
            mem=value["slurm_mem"], array_parallelism=value["slurm_array_parallelism"],
            signal_seconds=value["slurm_signal_seconds"], job_name=value["slurm_job_name"],
            extra=tuple(value["slurm_option"] or ()), setup=value["slurm_setup"])
        submission = Submission(resources, tuple(task_argv(argv[1:], fv)))
    return dict(config=value["config"], method_names=value["methods"] if fv["methods"].present else None,
                seeds=value["seeds"] if fv["seeds"].present else None, root=value["workdir"],
                dry_run=value["dry_run"], launch=holders["launch"], shard=value["shard"], status=value["status"],
                submission=submission)


def task_argv(args: Sequence[str], fv: command_line.Flags) -> list[str]:
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
