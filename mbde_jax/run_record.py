"""One run's records inside the training loop: its workdir's checkpoints, history, metrics.csv, TensorBoard
events and results; and the restore of the runs that train together (one run, or a seed group's seeds).

The training loop (mbde_jax.training) owns the state and the steps; a RunRecord owns what is written about one
run, so a seed trained in a group leaves exactly the files its separate run leaves.
"""

from __future__ import annotations

from typing import Any, Sequence

from mbde_jax import checkpoint, config_validation, tensorboard_scalars, train_metrics, workdir as run_files
from mbde_jax.experiment import Experiment


class RunRecord:
    """The records of one run (one seed) in its workdir.

    Attributes:
      meta: what its checkpoints carry besides the state: config, history, best, train_seconds, running sums.
      last_loss: the train loss of the last flush (None before one).
    """

    def __init__(self, experiment: Experiment, workdir: str, primary: bool):
        self.experiment, self.workdir, self.primary = experiment, workdir, primary
        self.config = experiment.config
        self.checkpointer = checkpoint.Checkpointer(workdir, keep=self.config.keep_checkpoints)
        self.pending = train_metrics.PendingMetrics()
        self.meta: dict = {}
        self.writer = None
        self.last_loss: float | None = None
        self.last_checkpoint: int | None = None
        self.seconds_before = 0.0

    def open(self, meta: dict, step: int) -> None:
        """Starts this session's records of a run restored (or initialised) at `step` with `meta`."""
        self.meta = meta
        self.last_checkpoint = self.checkpointer.latest_step()
        self.seconds_before = float(meta.get("train_seconds", 0.0))
        if self.primary:
            run_files.write_config(self.workdir, self.experiment.config_json)
        self.writer = tensorboard_scalars.create_writer(self.workdir, self.primary)
        if self.primary:
            tensorboard_scalars.write_layout(self.workdir)
            run_files.write_metrics_csv(self.workdir, meta["history"])  # drops rows the checkpoint lacks
        if step == 0:
            self.writer.write_hparams({k: v for k, v in self.experiment.config_json.items()
                                       if isinstance(v, (int, float, str, bool))})
        self.pending.load_running_sums(meta.get("train_running_sums"))

    def write_train(self, step: int) -> None:
        """Flushes the pending train metrics to TensorBoard (raises NonFiniteLossError on a non-finite loss)."""
        summary = self.pending.flush(self.last_checkpoint)
        if summary:
            self.last_loss = summary["loss"]
            self.writer.write_scalars(step, tensorboard_scalars.train_scalars(
                summary, self.experiment.num_branches, self.experiment.method.ramped))

    def save(self, step: int, state: Any, session_seconds: float) -> None:
        self.write_train(step)  # never checkpoint a non-finite state
        self.meta["train_running_sums"] = self.pending.running_sums()
        self.meta["train_seconds"] = round(self.seconds_before + session_seconds, 1)
        self.checkpointer.save(step, state, self.meta)
        self.last_checkpoint = step

    def add_evaluation(self, epoch: int, step: int, metrics: dict, run_provenance: dict) -> None:
        """Appends the evaluation at the end of 0-based `epoch` to the history, metrics.csv and TensorBoard."""
        experiment = self.experiment
        entry = {"epoch": epoch + 1, "step": step, "metrics": metrics, "train": self.pending.epoch_means(),
                 "learning_rate": float(experiment.learning_rate(epoch)),
                 "ramp_weight": float(experiment.ramp_weight(epoch)),
                 "provenance": run_provenance}
        best = self.meta["best"]
        if best is None or metrics["top1/deployed"] > best["metrics"]["top1/deployed"]:
            self.meta["best"] = entry
        self.meta["history"].append(entry)
        self.writer.write_scalars(step, tensorboard_scalars.test_scalars(metrics))
        if self.primary:
            run_files.write_history(self.workdir, self.meta["history"])
            run_files.write_metrics_csv(self.workdir, self.meta["history"])

    def results(self, step: int, session_seconds: float, images_per_second: float | None,
                run_provenance: dict) -> dict:
        """results.json's content (written by the primary process) of the finished run."""
        config = self.config
        results = {
            "method": config.method,
            "dataset": config.dataset,
            "arch": config.arch,
            "num_branches": self.experiment.num_branches,
            "seed": config.seed,
            "deployed_head": self.meta["history"][-1]["metrics"]["deployed_head"],
            "num_epochs": config.num_epochs,
            "steps": step,
            "final": self.meta["history"][-1],
            "best": dict(self.meta["best"], note="best epoch by the deployed head's test top-1; for reference "
                                                 "only, the headline is 'final'"),
            "train_seconds_this_session": round(session_seconds, 1),
            # every session of this run, resumes included
            "train_seconds": round(self.seconds_before + session_seconds, 1),
            "train_images_per_second": images_per_second,  # this session, evaluations excluded
            "provenance": run_provenance,
        }
        if self.primary:
            run_files.write_results(self.workdir, results)
        return results

    def close(self) -> None:
        try:
            self.checkpointer.close()
        finally:
            if self.writer is not None:
                self.writer.close()


def restore_records(records: Sequence[RunRecord], group, allow_config_change: bool) -> tuple[Any, int]:
    """(group state, step) of runs that train together (a mbde_jax.seed_group.SeedGroup's seeds, or one run),
    each restored from its own workdir; each record is opened (RunRecord.open).

    A single run resumes from its newest readable checkpoint. Seeds resume together from the newest step every
    one of them has a checkpoint of (a group stopped by a signal checkpoints every seed at one step; one killed
    between two seeds' saves does not): a seed's newer checkpoints are moved aside, never deleted, since its
    rerun from the common step writes them again exactly. Seeds with no common step are refused in one line.
    """
    checkpointers = [record.checkpointer for record in records]
    steps = [set(c.all_steps()) for c in checkpointers]
    common = set.intersection(*steps)
    if not any(steps):
        group_state = group.init()
        for record in records:
            record.open({"config": record.experiment.config_json, "history": [], "best": None,
                         "train_seconds": 0.0}, 0)
        return group_state, 0
    if len(records) > 1 and not common:
        described = ", ".join(f"{record.workdir}: {sorted(s) or 'none'}" for record, s in zip(records, steps))
        raise config_validation.ConfigError(
            f"the seeds of this group have no checkpoint step in common ({described}); resume each seed on its "
            f"own (train.py --workdir <its directory> --config.seed=<its seed>), or move the checkpoints away.")
    newest_common = max(common) if len(records) > 1 else None
    restored = []
    for record, checkpointer, own_steps in zip(records, checkpointers, steps):
        if newest_common is not None:
            for newer in sorted(s for s in own_steps if s > newest_common):
                checkpointer.set_aside(newer, f"is newer than step {newest_common}, the newest step every seed "
                                              f"of the group has (resuming there writes it again)")
        restored.append(checkpoint.restore_or_init(record.workdir, group.trainers[0], checkpointer,
                                                   record.experiment.config_json, allow_config_change))
    states, metas = [state for state, _ in restored], [meta for _, meta in restored]
    if len({int(state.step) for state in states}) > 1:
        described = ", ".join(f"{record.workdir}: step {int(state.step)}" for record, state in zip(records, states))
        raise config_validation.ConfigError(
            f"the seeds of this group resumed at different steps ({described}): a checkpoint could not be "
            f"read; resume each seed on its own (train.py --workdir <its directory> --config.seed=<its seed>).")
    for record, state, meta in zip(records, states, metas):
        record.open(meta, int(state.step))
    return group.from_states(states), int(states[0].step)
