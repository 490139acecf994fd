"""A thin wrapper over orbax's CheckpointManager for the training state and its JSON metadata.

Each checkpoint holds two items: 'state' (params, batch_stats, optimizer state, step; restored against an
abstract target so shapes, dtypes and shardings come back as the running program expects) and 'meta' (JSON:
the evaluation history, the best epoch so far and the config that made the run). The data position is the
step: the input pipeline is a pure function of (seed, epoch) and resumes at step % steps_per_epoch.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Saves and restores (state, meta) pairs under <workdir>/checkpoints, keeping the latest `keep`."""

    def __init__(self, workdir: str, keep: int = 3, *, read_only: bool = False):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        options = ocp.CheckpointManagerOptions(
            # Synchronous: a save has landed when save() returns, so a run killed right after is resumable
            # from it; CIFAR-sized states write in well under a second, so nothing is gained by overlapping.
            enable_async_checkpointing=False,
            create=not read_only,
            read_only=read_only,
            preservation_policy=ocp.checkpoint_managers.LatestN(n=keep),
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Saves `state` and `meta` at `step` (returns once the checkpoint is complete on disk)."""
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
        """Restores the checkpoint at `step` (default: the latest) shaped and sharded like `abstract_state`."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
        return restored["state"], restored["meta"]

    def restore_meta(self, step: int | None = None) -> dict:
        """Only the JSON metadata of a checkpoint (cheap: no arrays are read)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) of a pytree of arrays: the restore target."""
    return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, tree)
