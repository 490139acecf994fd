"""A config validated once and resolved into the pieces a run is made of.

`resolve(config)` is the only place that checks a config and derives anything from it: the method, the number of
branches, the model, the objective, the optimizer and learning-rate schedule, the dataset facts and the batch
and device facts. Everything downstream takes the Experiment (or the pieces it needs) and reads plain fields
(num_epochs, checkpoint_every_steps, ...) from `experiment.config`; nothing looks the method up again or
re-derives a count.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from mbde_jax import (compilation_cache, config_validation, eval_metrics, losses, methods, optim, sharding,
                      workdir as run_files)
from mbde_jax.data import info as dataset_info
from mbde_jax.models.online_kd import OnlineKDModel

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One resolved config.

    Attributes:
      config: the validated config, locked; its plain fields are read from here.
      config_json: the config as JSON values (what the workdir's config.json holds).
      method: the method `config.method` names.
      num_branches: branches of the model (vanilla: always 1), checked against the method's limits.
      head_names: the branches' names in branch order ('peer_0', ..., 'leader' or 'branch_0', ...).
      deployed_branch: index of the branch the method deploys.
      dataset: the dataset's static facts (classes, image shape, normalisation, splits).
      train_splits: the tfds split(s) training reads ('train', or CINIC-10's 'train+validation').
      model: the network with the method's heads.
      objective: (outputs, labels, params, ramp_weight) -> (loss, metrics), the loss settings bound.
      optimizer: weight decay and (Nesterov) momentum; the learning rate is applied by the train step.
      mesh: the 'data' mesh over every device of every process.
      input_on_device: the training data lives on the devices (config.input_on_device; unset: on GPU and TPU,
        where the host would otherwise be the bottleneck) rather than being fed by the host.
    """

    config: ml_collections.ConfigDict
    config_json: dict[str, Any]
    method: methods.Method
    num_branches: int
    head_names: tuple[str, ...]
    deployed_branch: int
    dataset: dataset_info.DatasetInfo
    train_splits: str
    model: OnlineKDModel
    objective: methods.Objective
    optimizer: optax.GradientTransformation
    mesh: jax.sharding.Mesh
    input_on_device: bool

    def learning_rate(self, epoch) -> jax.Array:
        """The learning rate of every step of 0-based `epoch` (traceable)."""
        return optim.learning_rate_at_epoch(epoch, self.config.learning_rate, self.config.lr_boundaries_epochs,
                                            self.config.lr_decay_factor)

    def ramp_weight(self, epoch) -> jax.Array:
        """w(epoch), the ramp-up weight of the distillation terms in 0-based `epoch` (traceable)."""
        return losses.rampup_weight(epoch, self.config.rampup_epochs)

    @property
    def per_device_batch_size(self) -> int:
        return self.config.batch_size // self.mesh.devices.size


def resolve(config: ml_collections.ConfigDict, *, mesh: jax.sharding.Mesh | None = None) -> Experiment:
    """Checks `config` and resolves it; the first field at fault raises a ConfigError naming it.

    Before JAX starts its backends it splits a CPU-only host into config.cpu_devices devices (see
    sharding.configure_host_devices); the mesh is then every device of every process unless `mesh` is given.
    A run of several processes on CPUs under a jax that deadlocks with the persistent compilation cache then
    switches it off (compilation_cache.cache_deadlocks).
    """
    config_validation.validate(config)
    sharding.configure_host_devices(config)
    method = methods.METHODS[config.method]
    num_branches = _num_branches(method, config.num_branches)
    mesh = mesh or sharding.make_data_mesh()
    compilation_cache.off_for_multi_process_cpu(mesh.devices.flat)
    for field in ("batch_size", "eval_batch_size"):
        try:
            sharding.check_batch_divisible(config[field], mesh, field=f"config.{field}")
        except ValueError as error:
            raise config_validation.ConfigError(str(error)) from None
    dataset = dataset_info.get_dataset_info(config.dataset)
    locked = config.copy_and_resolve_references()  # the caller's config stays as it was
    locked.lock()
    return Experiment(
        config=locked,
        config_json=run_files.config_json(locked),
        method=method,
        num_branches=num_branches,
        head_names=tuple(eval_metrics.head_names(method, num_branches)),
        deployed_branch=eval_metrics.deployed_branch(method, num_branches),
        dataset=dataset,
        train_splits=config.cinic10_train_splits if config.dataset == "cinic10" else dataset.train_split,
        model=_build_model(config, method, num_branches, dataset.num_classes),
        objective=functools.partial(method.objective, settings=_loss_settings(config)),
        optimizer=optim.momentum_and_weight_decay(config.momentum, config.nesterov, config.weight_decay),
        mesh=mesh,
        input_on_device=(jax.default_backend() != "cpu" if config.input_on_device is None
                         else config.input_on_device),
    )


def _num_branches(method: methods.Method, requested: int) -> int:
    """The model's branch count: the method's fixed count, or the requested one (its limits are checked by
    config_validation)."""
    return method.fixed_branches if method.fixed_branches is not None else requested


def _loss_settings(config: ml_collections.ConfigDict) -> methods.LossSettings:
    return methods.LossSettings(temperature=config.temperature, kd_weight=config.kd_weight,
                                cd_weight=config.cd_weight, cd_variant=config.cd_variant,
                                teacher_epsilon=config.kl_teacher_epsilon, detach_targets=config.detach_targets)


def _branch_execution(requested: str, num_branches: int) -> str:
    """How the branches run: `requested`, or for 'auto' the fastest on the backend (README, Performance).

    'vmap' lowers the stacked branches to grouped convolutions, which XLA's CPU backend runs far slower than
    plain ones; 'unrolled' runs one branch after another in the same program. A single branch (vanilla) is a
    plain network under 'vmap', whereas a length-1 scan keeps XLA:CPU's backward convolutions on a slow generic
    path, so it always gets 'vmap'.
    """
    if requested != "auto":
        return requested
    if num_branches == 1:
        return "vmap"
    return "unrolled" if jax.default_backend() == "cpu" else "vmap"


def _build_model(config: ml_collections.ConfigDict, method: methods.Method, num_branches: int,
                 num_classes: int) -> OnlineKDModel:
    """The model the config trains. Parameters, batch statistics and the logits the losses read are float32
    whatever config.compute_dtype (the dtype of convolutions and matmuls) is."""
    shared = method.shared_trunk if config.shared_trunk is None else bool(config.shared_trunk)
    return OnlineKDModel(
        arch=config.arch,
        num_classes=num_classes,
        num_branches=num_branches,
        heads=method.heads,
        shared_trunk=shared,
        trunk_grad_scale=1.0 / num_branches if (method.scale_trunk_gradient and shared) else 1.0,
        dropout_rate=config.dropout_rate,
        attention_reduction=config.attention_reduction,
        ffm_residual=config.ffm_residual,
        dtype=COMPUTE_DTYPES[config.compute_dtype],
        branch_execution=_branch_execution(config.branch_execution, num_branches),
    )
