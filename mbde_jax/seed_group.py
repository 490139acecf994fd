"""Several seeds of one experiment trained together: the group's state, its train step and its evaluation.

A SeedGroup runs k experiments that differ only in their seed in lockstep: step t of every seed runs at the same
time, each seed on its own batches (its own data order and augmentation), so each seed computes exactly what its
separate run computes. How the seed axis runs (config.seed_execution):

  * 'vmap': the k states are stacked on a leading seed axis and one compiled program steps every seed
    (jax.vmap of the train step): k times the work per kernel launch, which fills a GPU or TPU that one small
    CIFAR network leaves mostly idle;
  * 'loop': the states stay separate and the one compiled train step (trainer.py: the seed is its argument) is
    called once per seed: on XLA:CPU the batched convolutions that vmap makes are slower than plain ones;
  * 'auto': vmap on a GPU or TPU, loop on a CPU (README, Performance).

Parameters, batch statistics and optimizer state are stacked as [k, ...] under 'vmap' and a list of k TrainStates
under 'loop'; `states` and `from_states` convert either to and from the per-seed TrainStates that are
checkpointed, so a seed's workdir holds an ordinary run.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mbde_jax import config_validation, eval_metrics, sharding
from mbde_jax.experiment import Experiment
from mbde_jax.trainer import TrainState, Trainer, eval_step, train_step

SEED_EXECUTIONS = config_validation.SEED_EXECUTIONS


def resolve_seed_execution(requested: str, backend: str | None = None) -> str:
    """'vmap' or 'loop': `requested`, or for 'auto' the faster on the backend (README, Performance)."""
    if requested not in SEED_EXECUTIONS:
        raise ValueError(f"config.seed_execution: unknown value {requested!r}; valid values are "
                         f"{list(SEED_EXECUTIONS)}")
    if requested != "auto":
        return requested
    return "loop" if (backend or jax.default_backend()) == "cpu" else "vmap"


def _stack(trees: Sequence[Any]) -> Any:
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def _unstack(tree: Any, size: int) -> list:
    return [jax.tree.map(lambda leaf, i=i: leaf[i], tree) for i in range(size)]


class SeedGroup:
    """The compiled steps of k experiments that differ only in seed, on one mesh.

    Args:
      experiments: the seeds' experiments, in seed order (the same config but its seed).
      steps_per_epoch: as Trainer's (None: a group that restores and evaluates only).
      execution: 'vmap' or 'loop' (resolve_seed_execution).
    """

    def __init__(self, experiments: Sequence[Experiment], steps_per_epoch: int | None, execution: str):
        if execution not in ("vmap", "loop"):
            raise ValueError(f"execution must be 'vmap' or 'loop', not {execution!r}")
        self.trainers = [Trainer(experiment, steps_per_epoch) for experiment in experiments]
        self.size, self.execution = len(self.trainers), execution
        if execution == "vmap":
            self._compile_stacked(experiments[0], steps_per_epoch)

    def _compile_stacked(self, experiment: Experiment, steps_per_epoch: int | None) -> None:
        mesh, size = experiment.mesh, self.size
        replicated, batched = sharding.replicated_sharding(mesh), sharding.batch_sharding(mesh)
        self._seeds = jax.make_array_from_callback(
            (size,), replicated, lambda index: np.asarray([t.experiment.config.seed for t in self.trainers],
                                                          np.int32)[index])
        self._stack_states = jax.jit(lambda states: _stack(states), out_shardings=replicated)
        self._unstack_states = jax.jit(lambda stacked: _unstack(stacked, size), out_shardings=replicated)
        stacked_eval = jax.vmap(functools.partial(eval_step, experiment=experiment), in_axes=(0, None))
        self._eval = jax.jit(stacked_eval, in_shardings=(replicated, batched), out_shardings=replicated)
        self._train = None
        if steps_per_epoch is not None:
            stacked_step = jax.vmap(functools.partial(train_step, experiment=experiment,
                                                      steps_per_epoch=steps_per_epoch))
            # The seeds' batches arrive as a list (each sharded over the batch) and are stacked inside the
            # program: no extra dispatch, and the stacked batch keeps its batch axis sharded.
            self._train = jax.jit(lambda state, batches, seeds: stacked_step(state, _stack(batches), seeds),
                                  in_shardings=(replicated, batched, replicated),
                                  out_shardings=(replicated, replicated), donate_argnums=(0,))

    def init(self) -> Any:
        """The group state of freshly initialised seeds (each exactly its own run's initial state)."""
        # Each seed is initialised by its own run's compiled initialisation, then stacked: the initial state is
        # then exactly its separate run's whatever the PRNG (jax's 'rbg' draws other bits under vmap).
        return self.from_states([trainer.init_state() for trainer in self.trainers])

    def states(self, group_state: Any) -> list[TrainState]:
        """The k per-seed TrainStates of `group_state`, in seed order."""
        return self._unstack_states(group_state) if self.execution == "vmap" else list(group_state)

    def from_states(self, states: Sequence[TrainState]) -> Any:
        """The group state of k per-seed TrainStates (restored checkpoints), which must be at one step."""
        steps = {int(state.step) for state in states}
        if len(steps) != 1:
            raise ValueError(f"the seeds of a group must be at one step, not at steps {sorted(steps)}")
        return self._stack_states(list(states)) if self.execution == "vmap" else list(states)

    def step_of(self, group_state: Any) -> jax.Array:
        """The steps done (int32 scalar on the devices; the same for every seed)."""
        return group_state.step[0] if self.execution == "vmap" else group_state[0].step

    def train_step(self, group_state: Any, batches: Sequence[dict[str, jax.Array]]
                   ) -> tuple[Any, list[tuple[dict[str, jax.Array], int | None]]]:
        """One step of every seed, seed i on batches[i] -> (group state, per seed (metrics, index)).

        A seed's scalar metrics are metrics[name] (index None) or, under 'vmap', metrics[name][index] of the
        stacked [k] metrics: they are indexed once fetched to the host (train_metrics.PendingMetrics.add), not
        sliced on the device at every step.
        """
        if self.execution == "vmap":
            group_state, metrics = self._train(group_state, list(batches), self._seeds)
            return group_state, [(metrics, index) for index in range(self.size)]
        stepped = [trainer.train_step(state, batch)
                   for trainer, state, batch in zip(self.trainers, group_state, batches)]
        return [state for state, _ in stepped], [(metrics, None) for _, metrics in stepped]

    def lower_train_step(self, group_state: Any, batches: Sequence[dict[str, jax.Array]]) -> jax.stages.Lowered:
        """The program one train_step runs (under 'loop': once per seed), lowered for ahead-of-time compilation
        (benchmarks); run it compiled with run_compiled."""
        if self.execution == "vmap":
            return self._train.lower(group_state, list(batches), self._seeds)
        return self.trainers[0].jitted_train_step.lower(group_state[0], batches[0], self.trainers[0].seed)

    def run_compiled(self, compiled: jax.stages.Compiled, group_state: Any, batches: Sequence[dict[str, jax.Array]]
                     ) -> tuple[Any, Any]:
        """train_step through `compiled` (lower_train_step's program compiled) -> (group state, metrics)."""
        if self.execution == "vmap":
            return compiled(group_state, list(batches), self._seeds)
        stepped = [compiled(state, batch, trainer.seed)
                   for trainer, state, batch in zip(self.trainers, group_state, batches)]
        return [state for state, _ in stepped], [metrics for _, metrics in stepped]

    def evaluate(self, group_state: Any, make_batches: Callable[[], Iterable[dict[str, jax.Array]]]) -> list[dict]:
        """Every seed's test metrics (eval_metrics.summarize); make_batches() gives a pass over the eval split.

        Under 'loop' each seed is evaluated as its separate run is (Trainer.evaluate, a pass each); under 'vmap'
        one pass evaluates every seed.
        """
        if self.execution == "loop":
            return [trainer.evaluate(state, make_batches()) for trainer, state in zip(self.trainers, group_state)]
        totals: list[dict] = [{} for _ in range(self.size)]
        for batch in make_batches():
            sums = jax.device_get(self._eval(group_state, batch))
            for index, total in enumerate(totals):
                eval_metrics.accumulate([{name: value[index] for name, value in sums.items()}], into=total)
        experiment = self.trainers[0].experiment
        return [eval_metrics.summarize(total, experiment.head_names, experiment.deployed_branch,
                                       experiment.method.has_leader) for total in totals]
