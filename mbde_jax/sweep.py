"""Runs every method x seed of one config, each in its own workdir: in one process, or shared out over workers.

    mbde-sweep --config configs/paper.py:cifar100,resnet32 --methods mbde,okddip --seeds 0,1,2 \\
        --workdir workdirs/c100_r32 [--config.<field>=<value> ...] [--dry_run] [--shard i/N] [--status]
        [--submit slurm --slurm_<resource>=... ]

Shares: the plan's runs (method-major) are dealt round-robin over N workers: run k belongs to worker k mod N, so
every run belongs to exactly one worker whatever order the workers start in. `--shard i/N` trains worker i's
share (N shells, one per GPU with CUDA_VISIBLE_DEVICES, or N array tasks); inside a SLURM array job the share
is the task's (mbde_jax.slurm). `--submit slurm` submits the whole sweep as one array job; `--status` says
where every run stands (mbde_jax.sweep_status), whoever trains it.

Layout: the run of method M and seed S lives in <workdir>/M/seed_S/ (a normal training workdir: config.json,
history.json, results.json, checkpoints/, TensorBoard events), so `python -m mbde_jax.report <workdir>` finds
every run of the sweep.

Each run is `mbde_jax.training.run_experiment` of a copy of the config with `method` and `seed` replaced, in
this process, on every device it sees; in a multi-process run (the launch flags of train.py: every process runs
the same sweep command) each run spans every process. Starting the same sweep again:
  * skips a finished run: results.json reports the config's last epoch and config.json equals the config;
  * resumes a stopped run from its latest checkpoint (train_and_evaluate resumes by itself);
  * starts a run that has no checkpoint yet.
Everything that could stop the sweep later is checked before the first run starts: the method names, each run's
config, and every existing workdir's config against the one it would now be given. A run that fails (e.g. a
non-finite loss) does not stop the others; the sweep exits with an error naming it at the end.

Runs that differ only in seed share their compiled programs (the seed is an argument of the compiled init and
train step, see mbde_jax.trainer): the sweep's closing lines say what each run compiled, e.g. the second seed
"compiled nothing". "read from the cache" counts the programs JAX's persistent compilation cache
(JAX_COMPILATION_CACHE_DIR) held already.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # `python -m mbde_jax.sweep`, mbde-sweep: its flags answer before the imports below
    from mbde_jax import sweep_flags

    _COMMAND_LINE = sweep_flags.parse(sys.argv)

import collections
import contextlib
import dataclasses
import os
import time
import traceback
from typing import Any, Callable, Sequence

import ml_collections
from absl import logging

from mbde_jax import (cli_errors, command_line, distributed, lifecycle, logs, methods, slurm, sweep_flags, sweep_status,
                      workdir as run_files)
from mbde_jax.runs import BOOKKEEPING_FIELDS

# Fields in which a finished run's config.json may differ from the sweep's config and still be skipped as this
# sweep's run: they cannot change what was trained (where the data was read from, checkpoint and log intervals).
IGNORED_FIELDS = BOOKKEEPING_FIELDS

STATUS_FINISHED = "finished"  # results.json of the config's last epoch: skipped
STATUS_RESUME = "resume"      # a checkpoint but no final results: resumed from the checkpoint
STATUS_NEW = "new"            # no checkpoint: trained from the start


@dataclasses.dataclass(frozen=True)
class Shard:
    """Worker `index` of `count`: it trains the runs at positions index, index + count, ... of the plan."""

    index: int = 0
    count: int = 1

    def owns(self, position: int) -> bool:
        return position % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """Shard from 'i/N' (0 <= i < N); ValueError naming --shard otherwise."""
    index, slash, count = text.partition("/")
    try:
        shard = Shard(int(index), int(count))
    except ValueError:
        shard = None
    if not slash or shard is None or not 0 <= shard.index < shard.count:
        raise ValueError(f"--shard={text}: give the worker as i/N with 0 <= i < N, e.g. --shard 0/4 for the "
                         f"first of 4 workers")
    return shard


def resolve_shard(text: str | None, environ: dict | None = None) -> Shard:
    """--shard when given; else the SLURM array task's share; else the whole sweep."""
    if text:
        return parse_shard(text)
    task = slurm.array_task(environ)
    return Shard(*task) if task else Shard()


def run_workdir(root: str, method: str, seed: int) -> str:
    """The workdir of one run of a sweep rooted at `root`: <root>/<method>/seed_<seed>, where train.py
    --config.num_seeds puts its seeds too."""
    return run_files.seed_workdir(os.path.join(root, method), seed)


def run_config(config: ml_collections.ConfigDict, method: str, seed: int) -> ml_collections.ConfigDict:
    """A copy of `config` with `method` and `seed` replaced (the original is not touched)."""
    copy = config.copy_and_resolve_references()
    copy.method = method
    copy.seed = seed
    return copy


def _latest_checkpoint_step(workdir: str) -> int | None:
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        return None
    from mbde_jax import checkpoint  # orbax: imported only when a workdir has checkpoints

    checkpointer = checkpoint.Checkpointer(workdir, read_only=True)
    try:
        return checkpointer.latest_step()
    finally:
        checkpointer.close()


@dataclasses.dataclass
class PlannedRun:
    """One method x seed of a sweep and what the sweep will do with it.

    Attributes:
      experiment: the run's config, resolved (mbde_jax.experiment.Experiment).
      status: STATUS_FINISHED, STATUS_RESUME or STATUS_NEW before the sweep runs it.
      checkpoint_step: the step a resumed run restarts from.
      outcome: after the sweep: 'skipped', 'trained', 'resumed' or 'failed: <error>'.
      compilations: after the sweep: how many times each jitted function (by name, e.g. 'train_step') was
        compiled while the run trained; cache_hits: how many of them the persistent compilation cache held.
    """

    method: str
    seed: int
    workdir: str
    config: ml_collections.ConfigDict
    experiment: Any
    status: str
    checkpoint_step: int | None = None
    outcome: str | None = None
    seconds: float = 0.0
    compilations: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    cache_hits: int = 0


def _finished(workdir: str, config: ml_collections.ConfigDict) -> bool:
    results = run_files.read_if_present(workdir, run_files.RESULTS_FILE)
    return bool(results) and results.get("num_epochs") == config.num_epochs and \
        results["final"]["epoch"] == config.num_epochs


def _config_conflict(workdir: str, config: ml_collections.ConfigDict, ignored: Sequence[str]) -> str | None:
    """What differs between the workdir's config.json and `config` outside `ignored` (None if nothing, or no
    config.json)."""
    saved = run_files.read_if_present(workdir, run_files.CONFIG_FILE)
    if saved is None:
        return None
    current = run_files.config_json(config)
    fields = run_files.config_differences(saved, current, ignored=tuple(ignored))
    if not fields:
        return None
    return ", ".join(f"{name}: {saved.get(name, '<absent>')!r} there, {current.get(name, '<absent>')!r} now"
                     for name in fields)


def plan(config: ml_collections.ConfigDict, method_names: Sequence[str], seeds: Sequence[int], root: str
         ) -> list[PlannedRun]:
    """Checks everything a sweep needs and says what it will do with each run, method-major.

    Raises:
      ValueError: an unknown method (the message lists the valid ones), a run config that does not validate,
        an empty or repeated list, or an existing workdir made with a different config.
    """
    if not method_names or not seeds:
        raise ValueError("the sweep needs at least one method (--methods) and one seed (--seeds)")
    if config.get("num_seeds", 1) != 1:
        raise ValueError(f"--config.num_seeds={config.num_seeds}: the sweep trains its --seeds one run after "
                         f"another; to train seeds together use train.py --config.num_seeds=k --config.seed=<first> "
                         f"--workdir <sweep root>/<method> (the same seed_<s> layout)")
    from mbde_jax import experiment as experiment_lib  # JAX: imported once the flags are parsed

    for name, values in (("methods", method_names), ("seeds", seeds)):
        if len(set(values)) != len(values):
            raise ValueError(f"--{name} lists a value twice: {list(values)}")
    unknown = [name for name in method_names if name not in methods.METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; valid methods are {list(methods.METHODS)}")
    runs, conflicts = [], []
    for method in method_names:
        for seed in seeds:
            workdir = run_workdir(root, method, seed)
            config_for_run = run_config(config, method, seed)
            # Each run's config is checked here, once. Resolving splits the host's CPU into devices before
            # anything (reading a checkpoint) starts JAX's backends, so every run, fresh or resumed, sees the
            # devices a fresh run would.
            experiment = experiment_lib.resolve(config_for_run)
            checkpoint_step = _latest_checkpoint_step(workdir)
            finished = _finished(workdir, config_for_run)
            # train_and_evaluate refuses to resume a checkpoint of a config that differs in any field, data_dir
            # included; a finished run is only read, so where its data was read from does not matter.
            conflict = _config_conflict(workdir, config_for_run, ignored=IGNORED_FIELDS if finished else ())
            if conflict and (checkpoint_step is not None or os.path.exists(os.path.join(workdir, "results.json"))):
                conflicts.append(f"{workdir}: {conflict}")
                continue
            if finished:
                status = STATUS_FINISHED
            elif checkpoint_step is not None:
                status = STATUS_RESUME
            else:
                status = STATUS_NEW
            runs.append(PlannedRun(method, seed, workdir, config_for_run, experiment, status, checkpoint_step))
    if conflicts:
        raise ValueError("these workdirs hold runs of a different config; give the sweep a new --workdir (or "
                         "move them away) rather than mixing experiments:\n  " + "\n  ".join(conflicts))
    return runs


def describe(run: PlannedRun) -> str:
    """One line: the run and what the sweep does (or did) with it."""
    what = run.outcome or {STATUS_FINISHED: "finished: will be skipped",
                           STATUS_RESUME: f"stopped: will resume from step {run.checkpoint_step}",
                           STATUS_NEW: "will start"}[run.status]
    took = f" ({run.seconds:.0f} s{_compiled_text(run)})" if run.outcome in ("trained", "resumed") else ""
    return f"{run.method:<12} seed {run.seed:<4} {what}{took}  [{run.workdir}]"


def _compiled_text(run: PlannedRun) -> str:
    steps = {name: count for name, count in run.compilations.items() if name in _STEP_NAMES}
    if not steps:
        return "; compiled nothing"
    cached = f", {run.cache_hits} of all its programs read from the cache" if run.cache_hits else ""
    return "; compiled " + ", ".join(f"{name} x{count}" for name, count in sorted(steps.items())) + cached


# The compiled programs of a run the sweep reports (mbde_jax.trainer); JAX also compiles small helpers
# (conversions, the device-resident input's augmentation) that are counted but not listed.
_STEP_NAMES = ("initial_draws", "create_train_state", "train_step", "eval_step")


@contextlib.contextmanager
def _counting_compilations(run: PlannedRun):
    """Counts into `run` the XLA compilations (by function name) and persistent-cache hits inside the block."""
    from mbde_jax import startup  # pylint: disable=import-outside-toplevel

    def on_cache_hit() -> None:
        run.cache_hits += 1

    with startup.compilations(lambda name, _: run.compilations.update([name]), on_cache_hit):
        yield


def _primary_process() -> bool:
    return distributed.process_index() == 0


def run_sweep(config: ml_collections.ConfigDict, method_names: Sequence[str], seeds: Sequence[int], root: str, *,
              train_fn: Callable[[Any, str], dict] | None = None, dry_run: bool = False,
              shard: Shard = Shard()) -> list[PlannedRun]:
    """Plans the sweep (see `plan`), then trains every run of `shard` that is not finished, one after another.

    Args:
      train_fn: trains one (experiment, workdir); default mbde_jax.training.run_experiment.
      dry_run: only plan and log what would be done.
      shard: the worker this process is; the whole plan is checked, its share trained.
    Returns:
      The share's runs in order, each with its `outcome`. A failed run is logged with its traceback, recorded
      for the sweep's status (sweep_status.FAILURE_FILE) and the others still run; the caller decides what a
      failure means (the CLI exits with status 1).
    """
    everything = plan(config, method_names, seeds, root)
    runs = [run for position, run in enumerate(everything) if shard.owns(position)]
    todo = sum(run.status != STATUS_FINISHED for run in runs)
    share = f", share {shard}: {len(runs)} of its {len(everything)} runs" if shard.count > 1 else ""
    logging.info("sweep of %d runs under %s%s (%d to train):\n%s", len(everything), root, share, todo,
                 "\n".join(describe(run) for run in runs))
    if dry_run:
        return runs
    if train_fn is None:
        from mbde_jax import training  # TensorFlow, tfds and orbax: imported only when something is trained

        train_fn = training.run_experiment
    # Between runs no training loop listens for signals: this one does, so that a signal there stops the
    # sweep before its next run (and SLURM's SIGUSR1 still leads to a requeue) instead of killing it.
    with lifecycle.GracefulStop() as between_runs:
        for index, run in enumerate(runs, 1):
            if run.status == STATUS_FINISHED:
                run.outcome = "skipped"
                continue
            if between_runs.requested:
                raise lifecycle.TrainingStopped(
                    f"stopped by {between_runs.name} before {run.method} seed {run.seed} started (nothing to "
                    f"checkpoint).", between_runs.signum)
            logging.info("sweep run %d/%d: %s", index, len(runs), describe(run))
            started = time.time()
            if _primary_process():
                sweep_status.record_start(run.workdir, str(shard))
            try:
                with _counting_compilations(run):
                    train_fn(run.experiment, run.workdir)
            except lifecycle.TrainingStopped:  # the user or the scheduler asked the whole sweep to stop
                run.outcome = "stopped"
                raise
            except Exception as error:  # one diverged or broken run must not lose the rest of a long sweep
                if distributed.is_peer_failure(error):  # but without its other processes no run can go on
                    raise
                logging.error("sweep run %s seed %d failed:\n%s", run.method, run.seed, traceback.format_exc())
                run.outcome = f"failed: {type(error).__name__}: {' '.join(str(error).split())}"
                if _primary_process():
                    sweep_status.record_failure(run.workdir, run.outcome.removeprefix("failed: "))
            else:
                run.outcome = "resumed" if run.status == STATUS_RESUME else "trained"
            run.seconds = time.time() - started
    logging.info("sweep done%s:\n%s", f" (share {shard})" if shard.count > 1 else "",
                 "\n".join(describe(run) for run in runs))
    return runs


def _parse_seeds(values: Sequence[str]) -> list[int]:
    try:
        return [int(value) for value in values]
    except ValueError:
        raise ValueError(f"--seeds must be whole numbers separated by commas, e.g. 0,1,2; got {list(values)}"
                         ) from None


def _status(config: ml_collections.ConfigDict, method_names: Sequence[str], seeds: Sequence[int],
            root: str) -> None:
    print(sweep_status.format_status(sweep_status.sweep_status(root, method_names, seeds, config.num_epochs,
                                                               run_workdir)))


def _submit(config: ml_collections.ConfigDict, method_names: Sequence[str], seeds: Sequence[int], root: str,
            dry_run: bool, submission: sweep_flags.Submission) -> None:
    """Checks the whole sweep here, then submits it as one array job (or prints the script with --dry_run)."""
    runs = plan(config, method_names, seeds, root)
    resources = submission.resources
    if not resources.tasks:
        resources = dataclasses.replace(resources, tasks=len(runs))
    if resources.tasks > len(runs):
        raise ValueError(f"--slurm_tasks={resources.tasks}: the sweep has only {len(runs)} runs; give at most "
                         f"{len(runs)} tasks")
    script = slurm.sbatch_script(submission.sweep_argv, root, resources)
    todo = sum(run.status != STATUS_FINISHED for run in runs)
    if dry_run:
        print(f"# {len(runs)} runs ({todo} to train) over {resources.tasks} array task(s); not submitted "
              f"(--dry_run). The script:\n{script}", end="")
        return
    job_id = slurm.submit(script, root)
    print(f"submitted SLURM array job {job_id}: {len(runs)} runs ({todo} to train) over {resources.tasks} "
          f"task(s); logs {slurm.task_log_path(root, '<task>')}\n"
          f"where every run stands: the same command with --status instead of --submit; "
          f"tables and plots when done: mbde-report {root}")


def main(argv: Sequence[str] | None = None) -> None:
    """The command: argv as sys.argv (argv[0] the program); None reads sys.argv."""
    run(**sweep_flags.parse(command_line.program_argv(argv)))


def run(config: ml_collections.ConfigDict, method_names: Sequence[str] | None, seeds: Sequence[str] | None,
        root: str, dry_run: bool, launch: Callable[[], distributed.LaunchSettings], *, shard: str | None = None,
        status: bool = False, submission: sweep_flags.Submission | None = None) -> None:
    """The sweep command once sweep_flags parsed it: methods and seeds default to the config's."""
    logs.quiet_library_info_logs()
    try:
        # A bad sweep is one line (cli_errors), without the flag listing of a usage error.
        with cli_errors.one_line_errors("mbde_jax.sweep"):
            # A flag given empty (--methods=) is an empty list, refused by plan(); only an absent one defaults.
            method_names = [config.method] if method_names is None else method_names
            seed_values = [config.seed] if seeds is None else _parse_seeds(seeds)
            if status:
                return _status(config, method_names, seed_values, root)
            if submission is not None:
                return _submit(config, method_names, seed_values, root, dry_run, submission)
            share = resolve_shard(shard)
            distributed.initialize(launch())
            runs = run_sweep(config, method_names, seed_values, root, dry_run=dry_run, shard=share)
    except lifecycle.TrainingStopped as stopped:  # a signal stopped the run in progress after a checkpoint
        requeued = slurm.requeue_after_stop(stopped.signum)
        print(f"{stopped}\n{requeued or 'The sweep stopped there; run the same sweep command again to continue.'}",
              file=sys.stderr, flush=True)
        sys.exit(stopped.exit_code)
    failed = [run for run in runs if run.outcome and run.outcome.startswith("failed")]
    if failed:
        raise SystemExit(f"{len(failed)} run(s) failed:\n" + "\n".join(describe(run) for run in failed))
    if not dry_run:
        whose = f"share {share}: " if share.count > 1 else ""
        print(f"{whose}all {len(runs)} runs finished; tables and plots: mbde-report {root}")


if __name__ == "__main__":
    run(**_COMMAND_LINE)
