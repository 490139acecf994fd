"""Reading back what a training run left in its workdir."""

from __future__ import annotations

import json
import os

import jax
import ml_collections

from mbde_jax import checkpoint, sharding, training


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run in `workdir` was started with (config.json), with JSON lists turned back into tuples."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: {workdir} is not a training workdir (train.py writes "
                                f"config.json when a run starts).")
    with open(path) as f:
        fields = json.load(f)
    return ml_collections.ConfigDict({k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


def restore_latest(workdir: str, mesh: jax.sharding.Mesh | None = None, step: int | None = None
                   ) -> tuple[training.Trainer, training.TrainState, dict]:
    """The Trainer of the run's config and its latest (or `step`'s) checkpointed state and metadata."""
    config = load_config(workdir)
    mesh = mesh or sharding.make_data_mesh()
    # The schedule does not shape the state, so any steps_per_epoch restores it; the saved history has the rest.
    trainer = training.Trainer(config, mesh, steps_per_epoch=1)
    checkpointer = checkpoint.Checkpointer(workdir, read_only=True)
    try:
        if checkpointer.latest_step() is None:
            raise FileNotFoundError(f"no checkpoint in {checkpointer.directory}: the run in {workdir} has not "
                                    f"saved one yet.")
        state, meta = checkpointer.restore(trainer.abstract_state(), step=step)
    finally:
        checkpointer.close()
    return trainer, state, meta
