"""The compiled steps of one experiment: the train state, the sharded jit train and eval steps, Trainer.

Parallelism: one 'data' mesh axis over every device of every process; batches are sharded on it, the train
state is replicated, and jax.jit inserts the gradient all-reduce. Batch-norm statistics are computed over the
global batch, so a run does not depend on the device count.

The seed is an argument of the compiled initialisation and train step, not a constant: runs that differ only in
seed (a sweep's) share one compiled program each, in one process (Trainer reuses the jitted steps) and across
processes (the programs, and so the persistent compilation cache's keys, are the same).
"""

from __future__ import annotations

import collections
import functools
import json
from typing import Any, Iterator

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mbde_jax import checkpoint, eval_metrics, optim, sharding
from mbde_jax.experiment import Experiment
from mbde_jax.models import initializers
from mbde_jax.models.online_kd import OnlineKDModel


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training. The data position is derived from `step`."""

    step: jax.Array  # int32 scalar: train steps completed
    params: Any
    batch_stats: Any
    opt_state: Any


def create_train_state(params: Any, batch_stats: Any, *, tx: optax.GradientTransformation) -> TrainState:
    """The state at step 0 of initial params and batch statistics (initial_variables's): the optimizer's state
    is tx.init(params)."""
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt_state=tx.init(params))


def describe_variables(model: OnlineKDModel, image_shape: tuple[int, int, int]) -> tuple[Any, tuple]:
    """(tree structure, leaf descriptions) of the model's variables (models.initializers.describe): traced,
    not compiled."""
    return initializers.describe(lambda: model.init(
        {"params": jax.random.key(0), "dropout": jax.random.key(1)}, jnp.zeros((1, *image_shape), jnp.float32),
        train=False))


def initial_variables(description: tuple[Any, tuple], seed: jax.Array) -> dict[str, Any]:
    """{'params', 'batch_stats'} at initialisation (traceable; the Trainer draws under jit and assembles on the
    host, which gives the same values up to float32 rounding: models.initializers)."""
    treedef, leaves = description
    return initializers.assemble(treedef, leaves, initializers.draw_standard(leaves, seed))


def train_step(state: TrainState, batch: dict[str, jax.Array], seed: jax.Array, *, experiment: Experiment,
               steps_per_epoch: int) -> tuple[TrainState, dict[str, jax.Array]]:
    """One SGD step: a pure function of (state, batch, seed).

    The step number lives in the state (so a restored state cannot disagree with it); the dropout key is
    fold_in(key(seed), step + 1); the learning rate and the ramp-up weight are those of epoch
    step // steps_per_epoch. experiment.config.seed is not read: the seed is an argument, so the runs of a
    sweep that differ only in seed share one compiled step.

    Args:
      batch: {'image': float32 [batch, H, W, 3], 'label': int32 [batch]}.
      seed: int32 scalar, the run's config.seed.
    Returns:
      The next state and scalar metrics: every named loss term, the learning rate, and the train accuracy
      of the deployed head.
    """
    step = state.step
    epoch = step // steps_per_epoch
    ramp_weight = experiment.ramp_weight(epoch)
    dropout_key = jax.random.fold_in(jax.random.key(seed), step + 1)

    def loss_fn(params):
        outputs, updates = experiment.model.apply(
            {"params": params, "batch_stats": state.batch_stats}, batch["image"], train=True,
            mutable=["batch_stats"], rngs={"dropout": dropout_key})
        loss, metrics = experiment.objective(outputs, batch["label"], params, ramp_weight)
        return loss, (metrics, updates["batch_stats"], outputs.logits[experiment.deployed_branch])

    grads, (metrics, batch_stats, deployed_logits) = jax.grad(loss_fn, has_aux=True)(state.params)
    directions, opt_state = experiment.optimizer.update(grads, state.opt_state, state.params)
    learning_rate = experiment.learning_rate(epoch)
    params = optax.apply_updates(state.params, optim.apply_learning_rate(directions, learning_rate))
    metrics = dict(metrics)
    metrics["learning_rate"] = jnp.asarray(learning_rate, jnp.float32)
    metrics["accuracy_deployed"] = 100.0 * jnp.mean(jnp.argmax(deployed_logits, -1) == batch["label"])
    new_state = state.replace(step=step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
    return new_state, metrics


def eval_step(state: TrainState, batch: dict[str, jax.Array], *, experiment: Experiment) -> dict[str, jax.Array]:
    """Eval-mode forward pass of one padded batch -> sums to accumulate (see eval_metrics.eval_sums)."""
    outputs = experiment.model.apply({"params": state.params, "batch_stats": state.batch_stats}, batch["image"],
                                     train=False)
    return eval_metrics.eval_sums(outputs, batch["label"], batch["mask"], experiment.method)


# Jitted functions by what they depend on (the config without its seed, the mesh, for the train step also the
# epoch length), most recent last: a few configs' worth.
_COMPILED_STEPS: collections.OrderedDict = collections.OrderedDict()
_MAX_COMPILED = 16


def _cached_jit(key: tuple, make):
    if key not in _COMPILED_STEPS:
        _COMPILED_STEPS[key] = make()
        if len(_COMPILED_STEPS) > _MAX_COMPILED:
            _COMPILED_STEPS.popitem(last=False)
    _COMPILED_STEPS.move_to_end(key)
    return _COMPILED_STEPS[key]


def _compiled_steps(experiment: Experiment, steps_per_epoch: int | None) -> tuple:
    """(init, train_step or None, eval_step), jitted once per experiment-but-its-seed and mesh (and, for the
    train step, epoch length).

    The steps never read experiment.config.seed (the seed is their argument), and everything else they depend
    on is derived from the config and the mesh: so the runs of a sweep that differ only in seed, and the
    evaluation of a run after its training, reuse the first one's traced and compiled programs.
    """
    seedless = json.dumps({k: v for k, v in experiment.config_json.items() if k != "seed"}, sort_keys=True)
    replicated = sharding.replicated_sharding(experiment.mesh)
    batched = sharding.batch_sharding(experiment.mesh)
    init = _cached_jit(("init", seedless, experiment.mesh), lambda: _Initialisation(experiment))
    evaluate = _cached_jit(("eval", seedless, experiment.mesh), lambda: jax.jit(
        functools.partial(eval_step, experiment=experiment), in_shardings=(replicated, batched),
        out_shardings=replicated))
    step = None
    if steps_per_epoch is not None:
        step = _cached_jit(("train", seedless, experiment.mesh, steps_per_epoch), lambda: jax.jit(
            functools.partial(train_step, experiment=experiment, steps_per_epoch=steps_per_epoch),
            in_shardings=(replicated, batched, replicated), out_shardings=(replicated, replicated),
            donate_argnums=(0,)))
    return init, step, evaluate


def initial_draws(leaves: tuple, seed: jax.Array) -> dict[str, jax.Array]:
    """The standard draws of every random variable (models.initializers.draw_standard), named for the logs."""
    return initializers.draw_standard(leaves, seed)


class _Initialisation:
    """seed -> the initial TrainState of one experiment-but-its-seed, in two small compiled programs.

    jit(initial_draws) computes every random variable's standard draws as flat arrays (seed -> a few MB); the
    host scales and reshapes them (initializers.assemble: no compilation per variable) and puts them on the
    devices; jit(create_train_state) adds the step and the optimizer state. One jit of flax's init instead would
    compile each variable's random-number program separately (models.initializers says why that is slow).
    """

    def __init__(self, experiment: Experiment):
        self.description = describe_variables(experiment.model, experiment.dataset.image_shape)
        self.replicated = sharding.replicated_sharding(experiment.mesh)
        self.draw = jax.jit(functools.partial(initial_draws, self.description[1]), out_shardings=self.replicated)
        self.create = jax.jit(functools.partial(create_train_state, tx=experiment.optimizer),
                              out_shardings=self.replicated, donate_argnums=(0, 1))

    def __call__(self, seed: jax.Array) -> TrainState:
        # replicated: every process holds the whole draws, so each assembles the same values
        draws = {kind: np.asarray(array.addressable_data(0)) for kind, array in self.draw(seed).items()}
        variables = jax.tree.map(
            lambda value: jax.make_array_from_callback(value.shape, self.replicated, lambda index: value[index]),
            initializers.assemble(*self.description, draws))
        return self.create(variables["params"], variables.get("batch_stats", {}))

    def abstract(self) -> TrainState:
        treedef, leaves = self.description
        variables = jax.tree_util.tree_unflatten(treedef, [jax.ShapeDtypeStruct(leaf.shape, leaf.dtype)
                                                           for leaf in leaves])
        return jax.eval_shape(self.create, variables["params"], variables.get("batch_stats", {}))


def _with_seed(step, seed: jax.Array, state: TrainState, batch: dict[str, jax.Array]):
    return step(state, batch, seed)


class Trainer:
    """The compiled steps of one experiment on its mesh.

    Args:
      steps_per_epoch: full batches per epoch of the training data; needed by the train step only (the learning
        rate and the ramp-up weight are functions of the epoch), so a Trainer that restores and evaluates a
        run is made without it.
    """

    def __init__(self, experiment: Experiment, steps_per_epoch: int | None = None):
        self.experiment = experiment
        self.steps_per_epoch = steps_per_epoch
        self._init, self.jitted_train_step, self.eval_step = _compiled_steps(experiment, steps_per_epoch)
        # int32, as a Python int seed becomes under jax.random.key: the keys (and so every run) are unchanged
        # (made per shard, so that it is one global array however many processes the mesh spans)
        self.seed = jax.make_array_from_callback((), sharding.replicated_sharding(experiment.mesh),
                                                 lambda _: np.int32(experiment.config.seed))
        self.train_step = self._no_train_step
        if self.jitted_train_step is not None:  # (state, batch) -> (state, metrics), the seed bound
            self.train_step = functools.partial(_with_seed, self.jitted_train_step, self.seed)

    @staticmethod
    def _no_train_step(*_):
        raise TypeError("this Trainer was made without steps_per_epoch, so it can restore and evaluate but "
                        "not train; pass Trainer(experiment, steps_per_epoch=...).")

    def init_state(self) -> TrainState:
        return self._init(self.seed)

    def abstract_state(self) -> TrainState:
        return checkpoint.abstract_like(self._init.abstract())

    def evaluate(self, state: TrainState, batches: Iterator[dict[str, jax.Array]]) -> dict:
        total = eval_metrics.accumulate(self.eval_step(state, batch) for batch in batches)
        experiment = self.experiment
        return eval_metrics.summarize(total, experiment.head_names, experiment.deployed_branch,
                                      experiment.method.has_leader)
