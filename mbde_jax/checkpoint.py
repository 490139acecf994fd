"""A thin wrapper over orbax's CheckpointManager for the training state and its JSON metadata.

Each checkpoint holds two items: 'state' (params, batch_stats, optimizer state, step; restored against an
abstract target so shapes, dtypes and shardings come back as the running program expects) and 'meta' (JSON:
the evaluation history, the best epoch so far and the config that made the run). The data position is the
step: the input pipeline is a pure function of (seed, epoch) and resumes at step % steps_per_epoch.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import glob
import os
import shutil
import time
from typing import Any, Callable, Iterator

import jax
import orbax.checkpoint as ocp
from absl import logging

from mbde_jax import config_validation, distributed, logs, workdir as workdir_files

# The layout of the saved state's tree, recorded in every checkpoint's metadata. Raised whenever the tree changes
# (layer names, optimizer state), so that a workdir of another layout is refused by name rather than taken for
# damaged. Layout 1 (unrecorded): Flax's call-order layer names, the learning-rate schedule in the optimizer
# state. Layout 2: explicit layer names, the learning rate applied outside the optimizer.
STATE_LAYOUT = 2

# Orbax writes a step into '<step>.orbax-checkpoint-tmp-<n>' and renames it when complete; a run killed mid-save
# leaves that folder behind.
TMP_PATTERN = "*.orbax-checkpoint-tmp*"


# How long a closing event loop waits for the reads and writes it started (local file operations: milliseconds;
# bounded so that a task that never ends cannot hold up the exit, e.g. past SLURM's KillWait after a signal).
_PENDING_TASKS_TIMEOUT_SECONDS = 10.0


class _LoopClosedAfterItsTasks(asyncio.SelectorEventLoop):
    """An event loop whose close() first lets the tasks still pending on it end, and retrieves the errors of all
    the tasks it ran.

    orbax runs every save and restore on a fresh event loop (asyncio_utils.run_sync) and closes it when the
    asyncio.gather of its tensorstore reads or writes returns, which it does at the first failure. The other reads
    are still in flight in tensorstore's threads; each that finishes then calls call_soon_threadsafe on the closed
    loop, and tensorstore prints that "RuntimeError: Event loop is closed" with a traceback: hundreds of them for
    one damaged checkpoint or one full disk. Letting them end before the loop closes ends them.

    A write that fails in the same loop iteration as the one that stopped the loop is done, but the gather's
    callback that would have retrieved its error never runs; asyncio then logs "Task exception was never
    retrieved" with a traceback when the task is collected. Every task's error is the one the caller already has
    (the first to fail), so close() retrieves them all.
    """

    def __init__(self) -> None:
        super().__init__()
        self._tasks_run: list[asyncio.Task] = []

    def create_task(self, coro, **kwargs) -> asyncio.Task:
        task = super().create_task(coro, **kwargs)
        self._tasks_run.append(task)
        return task

    def close(self) -> None:
        if not self.is_closed() and not self.is_running():
            pending = asyncio.all_tasks(self)
            if pending:
                self.run_until_complete(asyncio.wait(pending, timeout=_PENDING_TASKS_TIMEOUT_SECONDS))
            for task in {*self._tasks_run, *pending}:
                if task.done() and not task.cancelled():
                    task.exception()  # marks it retrieved
            self._tasks_run.clear()
        super().close()


class _TasksEndBeforeLoopsClose(asyncio.DefaultEventLoopPolicy):
    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        return _LoopClosedAfterItsTasks()


@contextlib.contextmanager
def _orbax_calls() -> Iterator[None]:
    """Around every call into orbax: the event loops it creates (in any thread) let their tasks end before they
    close (_LoopClosedAfterItsTasks). The previous event loop policy comes back afterwards."""
    previous = asyncio.get_event_loop_policy()
    if isinstance(previous, _TasksEndBeforeLoopsClose):  # nested
        yield
        return
    asyncio.set_event_loop_policy(_TasksEndBeforeLoopsClose())
    try:
        yield
    finally:
        asyncio.set_event_loop_policy(previous)


def _brief(error: BaseException) -> str:
    """The error's message without the JSON specs tensorstore appends (hundreds of characters each)."""
    return " ".join(str(error).split()).split(" [tensorstore_spec")[0][:300] or type(error).__name__


def _save_failure_reason(error: BaseException) -> str:
    """What stopped a save, in a few words."""
    text = " ".join(str(error).split())
    if isinstance(error, OSError) and error.errno == errno.ENOSPC or "No space left on device" in text:
        return "no space left on the device"
    if isinstance(error, OSError) and error.errno == errno.EACCES or "Permission denied" in text:
        return "permission denied"
    return _brief(error)


class CheckpointSaveError(OSError):
    """A checkpoint could not be written (disk full, permissions); the partial save was removed."""


class CheckpointUnreadableError(RuntimeError):
    """No checkpoint of a workdir can be read; the unreadable ones were moved aside, not deleted."""


class CheckpointLayoutError(ValueError):
    """A workdir's checkpoints hold a state of another layout than this version reads; nothing was changed."""


def check_layout(meta: dict, directory: str) -> None:
    """Raises CheckpointLayoutError unless the checkpoint whose metadata is `meta` has this version's layout."""
    found = meta.get("state_layout", 1)
    if found != STATE_LAYOUT:
        raise CheckpointLayoutError(
            f"{directory} holds checkpoints of state layout {found}; this mbde_jax reads layout {STATE_LAYOUT} "
            f"(explicit layer names, the learning rate outside the optimizer state), so they cannot be restored. "
            f"Use a new --workdir, or the mbde_jax version that made them; the checkpoints were left as they are.")


class Checkpointer:
    """Saves and restores (state, meta) pairs under <workdir>/checkpoints, keeping the latest `keep`."""

    def __init__(self, workdir: str, keep: int = 3, *, read_only: bool = False):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        # Where unreadable steps are moved (outside `directory`, so orbax never lists them again).
        self.set_aside_directory = os.path.join(os.path.abspath(workdir), "checkpoints_unreadable")
        self._keep, self._read_only = keep, read_only
        if not read_only:
            self._remove_partial_saves()
            distributed.barrier("mbde_checkpoint_cleanup")  # no process lists the folder while it is cleaned
        self._manager = self._open()

    def _open(self) -> ocp.CheckpointManager:
        options = ocp.CheckpointManagerOptions(
            # Synchronous: a save has landed when save() returns, so a run killed right after is resumable
            # from it; CIFAR-sized states write in well under a second, so nothing is gained by overlapping.
            enable_async_checkpointing=False,
            create=not self._read_only,
            read_only=self._read_only,
            preservation_policy=ocp.checkpoint_managers.LatestN(n=self._keep),
        )
        return ocp.CheckpointManager(self.directory, options=options, item_handlers={
            "state": ocp.PyTreeCheckpointHandler(type_handler_registry=_state_type_handlers()),
            "meta": ocp.JsonCheckpointHandler()})

    def _remove_partial_saves(self, announce: bool = True) -> None:
        if jax.process_index() != 0:
            return
        for partial in glob.glob(os.path.join(self.directory, TMP_PATTERN)):
            shutil.rmtree(partial, ignore_errors=True)
            if announce:
                logging.warning("removed %s: a checkpoint save that did not complete", partial)

    def _set_aside(self, step: int, error: BaseException | None) -> None:
        """Moves an unreadable step out of the checkpoint directory (renamed, never deleted); `error` is this
        process's reason, None when the step read here but not on another process."""
        reason = f"{type(error).__name__}: {_brief(error)}" if error is not None else "unreadable on another process"
        if self._read_only:
            logging.warning("checkpoint step %d in %s cannot be read (%s); trying the previous one", step,
                            self.directory, reason)
            return
        self.set_aside(step, f"cannot be read ({reason})", self.set_aside_directory)

    def set_aside(self, step: int, why: str, directory: str | None = None) -> None:
        """Moves checkpoint `step` into `directory` (default <workdir>/checkpoints_set_aside), renamed, never
        deleted, with one warning that says `why` (e.g. "cannot be read (...)"). Every process must call it."""
        directory = directory or os.path.join(os.path.dirname(self.directory), "checkpoints_set_aside")
        if jax.process_index() == 0:
            os.makedirs(directory, exist_ok=True)
            target = os.path.join(directory, f"{step}.{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(os.path.join(self.directory, str(step)), target)
            logging.warning("checkpoint step %d %s; moved it to %s and resuming from an earlier one", step, why,
                            target)
        distributed.barrier(f"mbde_checkpoint_set_aside_{step}")  # every process then lists the folder anew
        self._manager.close()
        self._manager = self._open()

    def _newest_readable(self, read: Callable[[int], Any]) -> tuple[int, Any]:
        """(step, read(step)) for the newest step `read` succeeds on, setting aside each one it fails on.

        In a multi-process run a step counts as readable only when it reads on every process, so that all
        of them resume from the same step.
        """
        steps = sorted(self._manager.all_steps(), reverse=True)
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        for step in steps:
            value, error = None, None
            try:
                value = read(step)
            except Exception as read_error:  # orbax/tensorstore raise many types for damaged files
                error = read_error
            if distributed.all_processes(error is None):
                return step, value
            self._set_aside(step, error)
        raise CheckpointUnreadableError(
            f"no checkpoint in {self.directory} can be read (steps {', '.join(map(str, steps))}"
            f"{'' if self._read_only else f' were moved to {self.set_aside_directory}'}); start a new run "
            f"with another --workdir, or move a good checkpoint back into {self.directory}.")

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Saves `state` and `meta` at `step` (returns once the checkpoint is complete on disk).

        A save that fails raises CheckpointSaveError, one line naming the cause and the step the next run resumes
        from; orbax's own log records of that failure (a traceback per writer thread) are dropped with it
        (MBDE_DEBUG=1 keeps them), those of a save that succeeds are passed on.
        """
        try:
            with logs.library_records_held("/orbax/"), _orbax_calls():
                self._manager.save(step, args=ocp.args.Composite(
                    state=ocp.args.PyTreeSave(state),
                    meta=ocp.args.JsonSave(dict(meta, state_layout=STATE_LAYOUT))), force=True)
        except Exception as error:  # ENOSPC and EACCES reach us wrapped in orbax's and tensorstore's types
            self._remove_partial_saves(announce=False)  # the error below says so
            kept = self.latest_step()
            resumes = (f"the next run resumes from step {kept}, the latest checkpoint, which is intact"
                       if kept is not None else "there is no earlier checkpoint: the next run starts from step 0")
            raise CheckpointSaveError(
                f"checkpoint step {step} could not be written in {self.directory} ({_save_failure_reason(error)}); "
                f"the partial save was removed and {resumes}. Free space or fix the permissions, then run the "
                f"same command again.") from error

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def _read(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        with _orbax_calls():
            restored = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(abstract_state, restore_args=ocp.checkpoint_utils.construct_restore_args(
                    abstract_state)), meta=ocp.args.JsonRestore()))
        return restored["state"], _checked_meta(restored["meta"])

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
        """Restores the checkpoint at `step`, shaped and sharded like `abstract_state`.

        Default: the newest readable step; each newer step that cannot be read is moved aside with a one-line
        warning (a read-only Checkpointer only skips it). Raises CheckpointUnreadableError when none can be read.
        """
        if step is not None:
            return self._read(step, abstract_state)
        _, restored = self._newest_readable(lambda candidate: self._read(candidate, abstract_state))
        return restored

    def restore_meta(self) -> dict:
        """The JSON metadata of the newest step whose metadata reads (cheap: no arrays are read)."""
        def read(step: int) -> dict:
            with _orbax_calls():
                restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
            return _checked_meta(restored["meta"])
        return self._newest_readable(read)[1]

    def close(self) -> None:
        with _orbax_calls():
            self._manager.wait_until_finished()
            self._manager.close()


def _state_type_handlers() -> ocp.type_handlers.TypeHandlerRegistry:
    """orbax's default type handlers, except that a replicated jax.Array is written whole by its first replica.

    orbax's default on CPU and TPU ("replica parallel") has each replica of a replicated array write a slice of
    it, and every slice is an XLA program of its own, compiled for each array shape in each new process: a
    multi-device run's first checkpoint compiled one per parameter array (a ResNet has hundreds) to share out the
    writing of a few megabytes. orbax already writes whole arrays on GPUs; checkpoints written either way restore
    alike."""
    handlers = [(kind, ocp.type_handlers.get_type_handler(kind)) for kind in ocp.type_handlers.supported_types()
                if kind is not jax.Array]
    return ocp.type_handlers.create_type_handler_registry(
        *handlers, (jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False)))


def _checked_meta(meta: Any) -> dict:
    """`meta` if it is the JSON item this module writes; a ValueError (an unreadable step) otherwise."""
    if not isinstance(meta, dict) or "config" not in meta:
        raise ValueError("its metadata holds no config")
    return meta


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) of a pytree of arrays: the restore target."""
    return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, tree)


def restore_or_init(workdir, trainer, checkpointer, current_config, allow_config_change):
    """(state, meta) from the newest readable checkpoint, after checking its config against `current_config`;
    or trainer's fresh state. A checkpoint of another state layout or of other state shapes is refused with one
    line (config_validation.ConfigError), before anything is restored."""
    if checkpointer.latest_step() is None:
        return trainer.init_state(), {"config": current_config, "history": [], "best": None, "train_seconds": 0.0}
    saved = checkpointer.restore_meta()
    check_layout(saved, checkpointer.directory)  # before a restore could take it for damaged
    differences = workdir_files.config_differences(saved["config"], current_config)
    shaping = [name for name in differences if name in workdir_files.STATE_SHAPING_FIELDS]
    if shaping:
        changes = ", ".join(f"{name} {saved['config'].get(name)!r} -> {current_config.get(name)!r}"
                            for name in shaping)
        raise config_validation.ConfigError(
            f"{workdir} holds a checkpoint whose state has other shapes ({changes}); it cannot be resumed with "
            f"these values. Use a new --workdir, or the workdir's config.json values.")
    if differences and not allow_config_change:
        raise config_validation.ConfigError(
            f"{workdir} holds a checkpoint of a run with a different config (fields: "
            f"{', '.join(differences)}). Use a new --workdir, or pass --allow_config_change to resume it "
            f"with the new values.")
    state, meta = checkpointer.restore(trainer.abstract_state())
    if differences and jax.process_index() == 0:
        path = workdir_files.record_config_change(workdir, meta["config"], int(state.step), differences)
        logging.warning("config changed (%s) at step %d; the previous config is kept in %s",
                        ", ".join(differences), int(state.step), path)
    meta["config"] = current_config
    logging.info("resumed from step %d in %s", int(state.step), checkpointer.directory)
    return state, meta
