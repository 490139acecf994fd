"""Training and evaluation of one run in its workdir: the training loop, restore, the train input.

The compiled steps (TrainState, train_step, eval_step, Trainer) are in mbde_jax.trainer, re-exported here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

import jax
import ml_collections
from absl import logging

from mbde_jax import (checkpoint, config_validation, distributed, experiment as experiment_lib, lifecycle, logs,
                      progress, provenance, tensorboard_scalars, train_metrics, workdir as run_files)
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
                        data_dir=config.data_dir, download=config.download, train_splits=experiment.train_splits)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, allow_config_change: bool = False
                       ) -> dict:
    """Resolves `config` (experiment.resolve: checked once, here) and runs it in `workdir`; see run_experiment."""
    return run_experiment(experiment_lib.resolve(config), workdir, allow_config_change=allow_config_change)


def run_experiment(experiment: Experiment, workdir: str, *, allow_config_change: bool = False) -> dict:
    """Trains `experiment` in `workdir`, resuming from its newest readable checkpoint; returns results.json's content.

    The workdir receives: config.json, checkpoints/ (orbax), TensorBoard events and their custom-scalars
    layout (tensorboard_scalars), history.json and metrics.csv (every evaluation), config_history.json (every
    config replaced with --allow_config_change) and, at the end, results.json (the final epoch's metrics of every head, the headline, and the best epoch's, labelled).
    One trainer at a time holds the workdir (lifecycle.WorkdirLock). The first SIGTERM or SIGINT finishes the
    current step, checkpoints and raises lifecycle.TrainingStopped.

    Args:
      allow_config_change: resume even if the workdir's checkpoint was made with a different config (not one
        that changes the state's shapes: run_files.STATE_SHAPING_FIELDS).
    """
    logs.quiet_library_info_logs()
    try:
        run_files.prepare(workdir)
    except OSError as error:
        raise config_validation.ConfigError(
            f"--workdir {workdir}: cannot be used ({error.strerror or error}); give a directory this user can "
            f"create and write.") from None
    lock = lifecycle.WorkdirLock(workdir) if jax.process_index() == 0 else contextlib.nullcontext()
    with lock, lifecycle.GracefulStop() as stop:
        return _train_and_evaluate(experiment, workdir, allow_config_change, stop, time.time())


def _train_and_evaluate(experiment: Experiment, workdir, allow_config_change, stop: lifecycle.GracefulStop,
                        entered: float) -> dict:
    config, mesh = experiment.config, experiment.mesh
    primary = jax.process_index() == 0  # the one process that writes the workdir's files
    logging.info("global batch %d = %d process(es) x %d device(s) x %d per device", config.batch_size,
                 jax.process_count(), len(mesh.local_devices), experiment.per_device_batch_size)
    run_provenance = provenance.collect()
    logging.info("made with: %s", provenance.format_provenance(run_provenance))
    logging.info("%s on %s (%s, %d branches), %d epochs, in %s: reading the data, initialising the model",
                 config.method, config.dataset, config.arch, experiment.num_branches, config.num_epochs, workdir)

    pipeline = make_train_pipeline(experiment)
    eval_input = EvalInput(config.dataset, global_batch_size=config.eval_batch_size, mesh=mesh,
                           data_dir=config.data_dir, download=config.download)
    steps_per_epoch = pipeline.steps_per_epoch
    trainer = Trainer(experiment, steps_per_epoch)
    total_steps = config.num_epochs * steps_per_epoch
    current_config = experiment.config_json

    checkpointer = checkpoint.Checkpointer(workdir, keep=config.keep_checkpoints)
    try:
        state, meta = checkpoint.restore_or_init(workdir, trainer, checkpointer, current_config,
                                                 allow_config_change)
    except BaseException:
        checkpointer.close()
        raise
    last_checkpoint = checkpointer.latest_step()
    logging.info("ready in %.1f s: %d steps per epoch, %d in all; the first step compiles the train step",
                 time.time() - entered, steps_per_epoch, total_steps)
    if primary:
        run_files.write_config(workdir, current_config)

    writer = tensorboard_scalars.create_writer(workdir, primary)
    if primary:
        tensorboard_scalars.write_layout(workdir)
        run_files.write_metrics_csv(workdir, meta["history"])  # drops rows of evaluations the checkpoint lacks
    if int(state.step) == 0:
        writer.write_hparams({k: v for k, v in current_config.items() if isinstance(v, (int, float, str, bool))})
    pending = train_metrics.PendingMetrics()
    pending.load_running_sums(meta.get("train_running_sums"))
    step = int(state.step)
    start_epoch, start_batch = divmod(step, steps_per_epoch)
    started = time.time()
    seconds_before = float(meta.get("train_seconds", 0.0))
    last_save_time = time.monotonic()
    console = progress.ConsoleProgress(
        total_steps=total_steps, steps_per_epoch=steps_per_epoch, num_epochs=config.num_epochs,
        global_batch=config.batch_size, every_seconds=config.log_every_seconds, start_step=step,
        evaluations_left=lambda step: sum(evaluates(e) for e in range(step // steps_per_epoch, config.num_epochs)))
    last_loss = None

    def write_train(summary: dict[str, float]) -> None:
        nonlocal last_loss
        if summary:
            last_loss = summary["loss"]
            writer.write_scalars(step, tensorboard_scalars.train_scalars(
                summary, experiment.num_branches, experiment.method.ramped))

    def save(step: int) -> None:
        nonlocal last_checkpoint, last_save_time
        write_train(pending.flush(last_checkpoint))  # never checkpoint a non-finite state
        meta["train_running_sums"] = pending.running_sums()
        meta["train_seconds"] = round(seconds_before + time.time() - started, 1)
        checkpointer.save(step, state, meta)
        last_checkpoint, last_save_time = step, time.monotonic()

    def evaluate(epoch: int) -> None:
        """Evaluates the state at the end of 0-based `epoch` and appends it to the history."""
        write_train(pending.flush(last_checkpoint))
        eval_started = console.evaluation_started()
        metrics = trainer.evaluate(state, eval_input.batches())
        entry = {"epoch": epoch + 1, "step": step, "metrics": metrics, "train": pending.epoch_means(),
                 "learning_rate": float(experiment.learning_rate(epoch)),
                 "ramp_weight": float(experiment.ramp_weight(epoch)),
                 "provenance": run_provenance}
        if meta["best"] is None or metrics["top1/deployed"] > meta["best"]["metrics"]["top1/deployed"]:
            meta["best"] = entry
        console.evaluation_done(eval_started, epoch + 1, metrics, meta["best"])
        meta["history"].append(entry)
        writer.write_scalars(step, tensorboard_scalars.test_scalars(metrics))
        if primary:
            run_files.write_history(workdir, meta["history"])
            run_files.write_metrics_csv(workdir, meta["history"])

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
        done_epochs = {entry["epoch"] for entry in meta["history"]}
        if start_batch == 0 and start_epoch > 0 and evaluates(start_epoch - 1) and start_epoch not in done_epochs:
            evaluate(start_epoch - 1)
        for epoch in range(start_epoch, config.num_epochs):
            for batch in pipeline.epoch_batches(epoch, start_batch):
                state, metrics = trainer.train_step(state, batch)
                pending.add(step, metrics)
                step += 1
                if step % config.log_every_steps == 0:
                    write_train(pending.flush(last_checkpoint))
                if console.line_due():
                    jax.block_until_ready(state.step)  # time computed steps, not dispatched ones
                images_per_second = console.step_done(step, last_loss)
                if images_per_second is not None:
                    writer.write_scalars(step, {"train/images_per_second": images_per_second})
                stopping = stop_signal()
                if stopping:
                    signum, by = stopping
                    save(step)
                    raise lifecycle.TrainingStopped(
                        f"stopped by {signal.Signals(signum).name}{by} at step {step} of {total_steps} (epoch "
                        f"{epoch + 1}, batch {step - epoch * steps_per_epoch} of {steps_per_epoch}); checkpoint "
                        f"saved in {checkpointer.directory}. Run the same command again to resume.", signum)
                if step % steps_per_epoch and (
                        (config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0)
                        or time_to_save()):
                    save(step)
            start_batch = 0
            if (epoch + 1) % config.checkpoint_every_epochs == 0 or epoch + 1 == config.num_epochs:
                save(step)
            if evaluates(epoch):
                evaluate(epoch)
            else:  # a train summary spans one epoch at most: its loss weights are constant (tensorboard_scalars)
                write_train(pending.flush(last_checkpoint))
        checkpointer.wait()
    finally:
        checkpointer.close()
        writer.flush()

    final = meta["history"][-1]
    session_seconds = round(time.time() - started, 1)
    results = {
        "method": config.method,
        "dataset": config.dataset,
        "arch": config.arch,
        "num_branches": experiment.num_branches,
        "seed": config.seed,
        "deployed_head": final["metrics"]["deployed_head"],
        "num_epochs": config.num_epochs,
        "steps": step,
        "final": final,
        "best": dict(meta["best"], note="best epoch by the deployed head's test top-1; for reference only, "
                                        "the headline is 'final'"),
        "train_seconds_this_session": session_seconds,
        "train_seconds": round(seconds_before + session_seconds, 1),  # every session of this run, resumes included
        "train_images_per_second": console.train_images_per_second(step),  # this session, evaluations excluded
        "provenance": run_provenance,
    }
    if primary:
        run_files.write_results(workdir, results)
    progress.log_final_block(results, os.path.join(workdir, run_files.RESULTS_FILE), time.time() - entered)
    return results
