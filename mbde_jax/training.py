"""Training and evaluation of one run in its workdir: the training loop, restore, the train input.

The compiled steps (TrainState, train_step, eval_step, Trainer) are in mbde_jax.trainer, re-exported here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import Sequence

import jax
import ml_collections
from absl import logging

from mbde_jax import (checkpoint, config_validation, distributed, experiment as experiment_lib, lifecycle, logs,
                      progress, provenance, run_record, runs, seed_group, startup, train_metrics, workdir as run_files)
from mbde_jax.data import train_input
from mbde_jax.data.eval_input import EvalInput
from mbde_jax.experiment import Experiment
# re-exported: the loop's callers, the tools and the tests reach the compiled steps through this module
from mbde_jax.trainer import TrainState, Trainer, create_train_state, eval_step, train_step  # noqa: F401


NonFiniteLossError = train_metrics.NonFiniteLossError  # re-exported: callers catch training.NonFiniteLossError


def restore_latest(workdir: str, step: int | None = None, *, mesh: jax.sharding.Mesh | None = None
                   ) -> tuple[Trainer, TrainState, dict]:
    """A Trainer of the run's config (config.json) and its latest (or `step`'s) checkpointed state and metadata."""
    trainer = Trainer(experiment_lib.resolve(run_files.load_config(workdir), mesh=mesh))
    checkpointer = checkpoint.Checkpointer(workdir, read_only=True)
    try:
        if checkpointer.latest_step() is None:
            raise FileNotFoundError(f"no checkpoint in {checkpointer.directory}: the run in {workdir} has not "
                                    f"saved one yet.")
        checkpoint.check_layout(checkpointer.restore_meta(), checkpointer.directory)
        state, meta = checkpointer.restore(trainer.abstract_state(), step=step)
    finally:
        checkpointer.close()
    return trainer, state, meta


def make_train_pipeline(experiment: Experiment) -> train_input.TrainPipeline:
    """The training input of `experiment`: on the devices or on the host, as experiment.input_on_device says."""
    config = experiment.config
    pipeline_cls = train_input.DeviceTrainPipeline if experiment.input_on_device else train_input.TrainPipeline
    return pipeline_cls(config.dataset, global_batch_size=config.batch_size, seed=config.seed, mesh=experiment.mesh,
                        data_dir=config.data_dir, download=config.download, train_splits=experiment.train_splits,
                        max_examples=config.train_examples)


def seed_configs(config: ml_collections.ConfigDict) -> list[ml_collections.ConfigDict]:
    """The per-seed configs of config.num_seeds seeds: seeds config.seed, config.seed + 1, ..., each with
    num_seeds 1, which is what each seed's config.json holds: exactly its separate run's config."""
    configs = []
    for offset in range(config.num_seeds):
        copy = config.copy_and_resolve_references()
        copy.seed, copy.num_seeds = config.seed + offset, 1
        configs.append(copy)
    return configs


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, allow_config_change: bool = False
                       ) -> dict | list[dict]:
    """Resolves `config` (experiment.resolve: checked once, here) and runs it in `workdir`; see run_experiments.

    With config.num_seeds = k > 1 the k seeds train together (mbde_jax.seed_group), seed s in
    <workdir>/seed_<s>, and the list of their results is returned.
    """
    if config.num_seeds == 1:
        return run_experiment(experiment_lib.resolve(config), workdir, allow_config_change=allow_config_change)
    experiments = [experiment_lib.resolve(seed_config) for seed_config in seed_configs(config)]
    return run_experiments(experiments, [run_files.seed_workdir(workdir, e.config.seed) for e in experiments],
                           seed_execution=config.seed_execution, allow_config_change=allow_config_change)


def run_experiment(experiment: Experiment, workdir: str, *, allow_config_change: bool = False) -> dict:
    """Trains `experiment` in `workdir`; returns results.json's content. See run_experiments."""
    return run_experiments([experiment], [workdir], allow_config_change=allow_config_change)[0]


def run_experiments(experiments: Sequence[Experiment], workdirs: Sequence[str], *, seed_execution: str = "auto",
                    allow_config_change: bool = False) -> list[dict]:
    """Trains `experiments` (one, or the seeds of a group: configs that differ only in seed) together, each in
    its workdir, resuming from their newest readable checkpoint (run_record.restore_records); returns each
    results.json's content.

    Each workdir receives: config.json, checkpoints/ (orbax), TensorBoard events and their custom-scalars
    layout (tensorboard_scalars), history.json and metrics.csv (every evaluation), config_history.json (every
    config replaced with --allow_config_change) and, at the end, results.json (the final epoch's metrics of every
    head, the headline, and the best epoch's, labelled). One trainer at a time holds a workdir
    (lifecycle.WorkdirLock). The first SIGTERM or SIGINT finishes the current step, checkpoints every run and
    raises lifecycle.TrainingStopped; a second one stops at once, with one line naming the step the next run
    resumes from. Runs that have finished already (runs.finished_results) are left as they are: one line each,
    nothing trained, evaluated or written, and their results.json returned.

    Args:
      seed_execution: how a group's seed axis runs (seed_group.resolve_seed_execution).
      allow_config_change: resume even if the workdir's checkpoint was made with a different config (not one
        that changes the state's shapes: run_files.STATE_SHAPING_FIELDS).
    """
    logs.quiet_library_info_logs()
    for workdir in workdirs:
        config_validation.prepare_workdir(workdir)
    with contextlib.ExitStack() as stack:
        if jax.process_index() == 0:
            for workdir in workdirs:
                stack.enter_context(lifecycle.WorkdirLock(workdir))
        finished = [runs.finished_results(workdir, e.config_json) for e, workdir in zip(experiments, workdirs)]
        if all(finished):  # a rerun of a finished run: its records must not change (nor be "evaluated again")
            for workdir, results in zip(workdirs, finished):
                _log_already_finished(workdir, results)
            return finished
        stop = stack.enter_context(lifecycle.GracefulStop())
        execution = "loop" if len(experiments) == 1 else seed_group.resolve_seed_execution(seed_execution)
        return _train_together(experiments, workdirs, execution, allow_config_change, stop, time.time())


def _log_already_finished(workdir: str, results: dict) -> None:
    final = results["final"]
    logging.info("%s has finished already: %s on %s, epoch %d of %d, %s top-1 %.2f%% (%s); nothing was trained, "
                 "evaluated or rewritten. To train on, raise --config.num_epochs and pass --allow_config_change; to "
                 "train again, use a new --workdir.", workdir, results["method"], results["dataset"], final["epoch"],
                 results["num_epochs"], results["deployed_head"], final["metrics"]["top1/deployed"],
                 os.path.join(workdir, run_files.RESULTS_FILE))


def _train_together(experiments: Sequence[Experiment], workdirs: Sequence[str], execution: str,
                    allow_config_change: bool, stop: lifecycle.GracefulStop, entered: float) -> list[dict]:
    experiment = experiments[0]  # the configs differ only in seed
    config, mesh, num_runs = experiment.config, experiment.mesh, len(experiments)
    primary = jax.process_index() == 0  # the one process that writes the workdirs' files
    logging.info("global batch %d = %d process(es) x %d device(s) x %d per device", config.batch_size,
                 jax.process_count(), len(mesh.local_devices), experiment.per_device_batch_size)
    run_provenance = provenance.collect()
    logging.info("made with: %s", provenance.format_provenance(run_provenance))
    where = workdirs[0] if num_runs == 1 else (f"{os.path.dirname(workdirs[0])}/seed_* (seeds "
                                               f"{', '.join(str(e.config.seed) for e in experiments)}, {execution})")
    logging.info("%s on %s (%s, %d branches), %d epochs, in %s: reading the data, initialising the model",
                 config.method, config.dataset, config.arch, experiment.num_branches, config.num_epochs, where)

    clock = startup.StartupClock(entered)
    with clock.listening():
        with clock.piece("data"):
            pipelines = [make_train_pipeline(e) for e in experiments]
        with clock.piece("evaluation input"):
            eval_input = EvalInput(config.dataset, global_batch_size=config.eval_batch_size, mesh=mesh,
                                   data_dir=config.data_dir, download=config.download)
        steps_per_epoch = pipelines[0].steps_per_epoch
        total_steps = config.num_epochs * steps_per_epoch
        records = []
        try:
            with clock.piece("workdir records"):
                for e, workdir in zip(experiments, workdirs):
                    records.append(run_record.RunRecord(e, workdir, primary))
            with clock.piece("model"):
                group = seed_group.SeedGroup(experiments, steps_per_epoch, execution)
                state, step = run_record.restore_records(records, group, allow_config_change)
        except BaseException:
            for record in records:
                record.close()
            raise
    clock.rename("model", f"restoring step {step}" if step else "model initialisation")
    logging.info("ready in %s: %d steps per epoch, %d in all; the first step compiles the train step",
                 clock.describe(), steps_per_epoch, total_steps, extra={"startup_seconds": clock.figures()})

    def resumes_from() -> str:
        """For the line a second signal prints: the run stops at once, a save in progress left incomplete."""
        kept = [record.last_checkpoint for record in records]
        if None in kept:
            return f"no checkpoint was complete yet: the next run starts from step 0 of {total_steps}"
        return (f"the next run resumes from step {min(kept)} of {total_steps}, the latest complete checkpoint in "
                f"{_checkpoint_directories(records)}: run the same command again")

    stop.resumes_from = resumes_from
    start_epoch, start_batch = divmod(step, steps_per_epoch)
    started = time.time()
    last_save_time = time.monotonic()
    console = progress.ConsoleProgress(
        total_steps=total_steps, steps_per_epoch=steps_per_epoch, num_epochs=config.num_epochs,
        global_batch=config.batch_size * num_runs, every_seconds=config.log_every_seconds, start_step=step,
        evaluations_left=lambda step: sum(evaluates(e) for e in range(step // steps_per_epoch, config.num_epochs)),
        num_seeds=num_runs)

    def write_train() -> None:
        for record in records:
            record.write_train(step)

    def save() -> None:
        nonlocal last_save_time
        for record, seed_state in zip(records, group.states(state)):
            record.save(step, seed_state, time.time() - started)
        last_save_time = time.monotonic()

    def evaluate(epoch: int) -> None:
        """Evaluates the states at the end of 0-based `epoch` and appends them to the histories."""
        write_train()
        eval_started = console.evaluation_started()
        for record, metrics in zip(records, group.evaluate(state, eval_input.batches)):
            record.add_evaluation(epoch, step, metrics, run_provenance)
        console.evaluation_done(eval_started, epoch + 1,
                                [(record.config.seed, record.meta["history"][-1]["metrics"], record.meta["best"])
                                 for record in records])

    def evaluates(epoch: int) -> bool:
        return (epoch + 1) % config.eval_every_epochs == 0 or epoch + 1 == config.num_epochs

    def time_to_save() -> bool:
        if not config.checkpoint_every_minutes or step % config.log_every_steps:
            return False
        due = time.monotonic() - last_save_time >= 60.0 * config.checkpoint_every_minutes
        # Every process must take the same decision: process 0's clock decides.
        return bool(distributed.gather_ints(int(due))[0])

    def stop_signal() -> tuple[int, str] | None:
        """(signal, who received it) when the run stops after this step, the same on every process; else None."""
        if jax.process_count() == 1:
            return (stop.signum, "") if stop.requested else None
        # Processes agree at log steps only: a collective every step would keep the host from running ahead.
        if step % config.log_every_steps:
            return None
        received = distributed.gather_ints(stop.signum or 0)
        receivers = [index for index, signum in enumerate(received) if signum]
        if not receivers:
            return None
        return received[receivers[0]], f" (received by process {', '.join(map(str, receivers))})"

    try:
        # A checkpoint is written before its epoch is evaluated, so a failing evaluation loses no training;
        # a run resumed at the end of an epoch whose evaluation is missing evaluates it first.
        done_epochs = {entry["epoch"] for entry in records[0].meta["history"]}
        if start_batch == 0 and start_epoch > 0 and evaluates(start_epoch - 1) and start_epoch not in done_epochs:
            evaluate(start_epoch - 1)
        for epoch in range(start_epoch, config.num_epochs):
            epoch_batches = zip(*(pipeline.epoch_batches(epoch, start_batch) for pipeline in pipelines))
            for batches in epoch_batches:
                state, per_seed_metrics = group.train_step(state, batches)
                for record, (metrics, index) in zip(records, per_seed_metrics):
                    record.pending.add(step, metrics, index)
                step += 1
                if step % config.log_every_steps == 0:
                    write_train()
                if console.line_due():
                    jax.block_until_ready(group.step_of(state))  # time computed steps, not dispatched ones
                    if primary:  # for the sweep's status of a running run
                        for workdir in workdirs:
                            run_files.write_progress(workdir, step, total_steps)
                losses = [record.last_loss for record in records if record.last_loss is not None]
                images_per_second = console.step_done(step, sum(losses) / len(losses) if losses else None)
                if images_per_second is not None:
                    for record in records:
                        record.writer.write_scalars(step, {"train/images_per_second": images_per_second / num_runs})
                stopping = stop_signal()
                if stopping:
                    signum, by = stopping
                    save()
                    raise lifecycle.TrainingStopped(
                        f"stopped by {signal.Signals(signum).name}{by} at step {step} of {total_steps} (epoch "
                        f"{epoch + 1}, batch {step - epoch * steps_per_epoch} of {steps_per_epoch}); "
                        f"checkpoint saved in {_checkpoint_directories(records)}. Run the same command again "
                        f"to resume.", signum)
                if step % steps_per_epoch and (
                        (config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0)
                        or time_to_save()):
                    save()
            start_batch = 0
            if (epoch + 1) % config.checkpoint_every_epochs == 0 or epoch + 1 == config.num_epochs:
                save()
            if evaluates(epoch):
                evaluate(epoch)
            else:  # a train summary spans one epoch at most: its loss weights are constant (tensorboard_scalars)
                write_train()
        for record in records:
            record.checkpointer.wait()
    finally:
        for record in records:
            record.close()

    session_seconds = time.time() - started
    images_per_second = console.train_images_per_second(step)  # this session, evaluations excluded
    every_results = [record.results(step, session_seconds, images_per_second and images_per_second / num_runs,
                                    run_provenance) for record in records]
    for record, results in zip(records, every_results):
        progress.log_final_block(results, os.path.join(record.workdir, run_files.RESULTS_FILE),
                                 time.time() - entered, runs_together=num_runs)
    return every_results


def _checkpoint_directories(records: Sequence[run_record.RunRecord]) -> str:
    if len(records) == 1:
        return records[0].checkpointer.directory
    return f"{os.path.dirname(records[0].workdir)}/seed_*/checkpoints"
