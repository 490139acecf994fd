"""One objective per online-distillation method, and the model each one trains.

An objective is `objective(outputs, labels, params, ramp_weight) -> (loss, metrics)`:
  outputs      mbde_jax.models.online_kd.ModelOutput of the training forward pass,
  labels       [batch] integer labels,
  params       the model's params (the CD loss reads the peer classifier kernels),
  ramp_weight  w(e), the per-epoch ramp-up weight of the distillation terms,
and `metrics` holds every named term of the loss (unweighted) plus the weights applied, so that
loss == ce [+ ce_ensemble] + kd_weight * ramp_weight * (kd terms) + cd_weight * cd, exactly.

Temperature T, the weights and the options come from LossSettings, bound by mbde_jax.experiment.resolve.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp

from mbde_jax import losses
from mbde_jax.models.online_kd import ModelOutput, classifier_kernels

Objective = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


@dataclasses.dataclass(frozen=True)
class LossSettings:
    """The loss hyperparameters (config fields of the same meaning in brackets).

    Attributes:
      temperature: T of every KL term, which is also multiplied by T^2 [temperature].
      kd_weight: alpha, the weight of the distillation terms [kd_weight].
      cd_weight: lambda, the weight of the Classifier Diversification loss [cd_weight].
      cd_variant: see losses.classifier_diversification [cd_variant].
      teacher_epsilon: added to the teacher probabilities, as OKDDip's KL_Loss [kl_teacher_epsilon].
      detach_targets: stop gradients through every distillation target [detach_targets]. Off in OKDDip's
        code; on, it freezes the attention and FFM parameters, which learn only through the targets.
    """

    temperature: float = 3.0
    kd_weight: float = 1.0
    cd_weight: float = 5e-8
    cd_variant: str = "classes"
    teacher_epsilon: float = 1e-7
    detach_targets: bool = False

    def target(self, logits: jax.Array) -> jax.Array:
        return jax.lax.stop_gradient(logits) if self.detach_targets else logits

    def kl(self, teacher: jax.Array, student: jax.Array) -> jax.Array:
        """Sum over any leading axes of KL_T(teacher -> student)."""
        return jnp.sum(losses.kl_divergence(self.target(teacher), student, self.temperature, self.teacher_epsilon))


def _ce(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Sum over branches of the mean cross-entropy."""
    return jnp.sum(losses.cross_entropy(logits, labels))


def _mean_of_others(logits: jax.Array) -> jax.Array:
    """[m, batch, classes] -> [m, batch, classes], entry i the mean of every branch but i."""
    m = logits.shape[0]
    return (jnp.sum(logits, axis=0, keepdims=True) - logits) / (m - 1)


def leader_objective(outputs: ModelOutput, labels, params, ramp_weight, *, settings: LossSettings,
                     use_cd: bool):
    """MBDE / OKDDip family: peers 0..m-2 learn from attention targets, the leader (m-1) from the peer mean.

    loss = sum_i CE(z_i) + alpha w (sum_a KL(z~_a -> z_a) + KL(mean_a z_a -> z_leader)) + lambda L_CD(peers)
    """
    peers, leader = outputs.logits[:-1], outputs.logits[-1]
    ce = _ce(outputs.logits, labels)
    kd_first = settings.kl(outputs.peer_targets, peers)
    kd_second = settings.kl(jnp.mean(peers, axis=0), leader)
    cd = (losses.classifier_diversification(classifier_kernels(params)[:-1], settings.cd_variant)
          if use_cd else jnp.zeros((), jnp.float32))
    cd_weight = settings.cd_weight if use_cd else 0.0
    loss = ce + settings.kd_weight * ramp_weight * (kd_first + kd_second) + cd_weight * cd
    return loss, dict(loss=loss, ce=ce, kd_first_level=kd_first, kd_second_level=kd_second, cd=cd,
                      ramp_weight=jnp.asarray(ramp_weight, jnp.float32),
                      kd_weight=jnp.asarray(settings.kd_weight, jnp.float32),
                      cd_weight=jnp.asarray(cd_weight, jnp.float32))


def one_objective(outputs: ModelOutput, labels, params, ramp_weight, *, settings: LossSettings):
    """ONE: loss = sum_i CE(z_i) + CE(z_e) + alpha w sum_i KL(z_e -> z_i), z_e the gated ensemble."""
    del params
    ce = _ce(outputs.logits, labels)
    ce_ensemble = jnp.sum(losses.cross_entropy(outputs.ensemble_logits, labels))
    kd = settings.kl(jnp.broadcast_to(outputs.ensemble_logits, outputs.logits.shape), outputs.logits)
    loss = ce + ce_ensemble + settings.kd_weight * ramp_weight * kd
    return loss, dict(loss=loss, ce=ce, ce_ensemble=ce_ensemble, kd=kd,
                      ramp_weight=jnp.asarray(ramp_weight, jnp.float32),
                      kd_weight=jnp.asarray(settings.kd_weight, jnp.float32))


def mean_of_others_objective(outputs: ModelOutput, labels, params, ramp_weight, *, settings: LossSettings,
                             ramped: bool):
    """CL-ILR (ramped) and DML (not ramped): each branch learns from the mean of the other branches.

    loss = sum_i CE(z_i) + alpha w sum_i KL(mean_{j != i} z_j -> z_i), with w = 1 when not ramped.
    """
    del params
    weight = jnp.asarray(ramp_weight if ramped else 1.0, jnp.float32)
    ce = _ce(outputs.logits, labels)
    kd = settings.kl(_mean_of_others(outputs.logits), outputs.logits)
    loss = ce + settings.kd_weight * weight * kd
    return loss, dict(loss=loss, ce=ce, kd=kd, ramp_weight=weight,
                      kd_weight=jnp.asarray(settings.kd_weight, jnp.float32))


def cross_entropy_objective(outputs: ModelOutput, labels, params, ramp_weight, *, settings: LossSettings):
    """individual / vanilla: loss = sum_i CE(z_i), no distillation."""
    del params, ramp_weight, settings
    ce = _ce(outputs.logits, labels)
    return ce, dict(loss=ce, ce=ce)


@dataclasses.dataclass(frozen=True)
class Method:
    """What a method trains and how.

    Attributes:
      name: the `config.method` value.
      objective: an objective with a `settings` keyword (see the module docstring).
      heads: OnlineKDModel heads ('none', 'attention', 'ffm_attention', 'gate').
      has_leader: the last branch is a group leader taught by the peers; the others are peers.
      min_branches: the smallest num_branches that makes sense.
      shared_trunk: the default of config.shared_trunk.
      scale_trunk_gradient: CL-ILR's rescaling of the branch gradients into the trunk by 1/m.
      fixed_branches: the method always has this many branches (vanilla: 1), whatever the config says.
      deployed: the head kept for inference and reported as "the model".
      description: one line for listings.
      ramped: its distillation terms are weighted by the ramp-up w(e) (dml's are not; individual and vanilla
        have none).
    """

    name: str
    objective: Objective
    heads: str
    has_leader: bool
    min_branches: int
    deployed: str
    description: str
    shared_trunk: bool = True
    scale_trunk_gradient: bool = False
    fixed_branches: int | None = None
    ramped: bool = True


def _leader_method(name: str, heads: str, use_cd: bool, description: str) -> Method:
    return Method(name=name, objective=functools.partial(leader_objective, use_cd=use_cd), heads=heads,
                  has_leader=True, min_branches=3, deployed="leader", description=description)


METHODS: dict[str, Method] = {
    "mbde": _leader_method("mbde", "ffm_attention", True, "MBDE: FFM + peer attention, two-level KD, CD on peers"),
    "okddip": _leader_method("okddip", "attention", False, "OKDDip: peer attention on pooled features, two-level KD"),
    "mbde_no_cd": _leader_method("mbde_no_cd", "ffm_attention", False, "MBDE without the CD loss"),
    "mbde_no_ffm": _leader_method("mbde_no_ffm", "attention", True, "MBDE without the FFM (= OKDDip + CD)"),
    "one": Method(name="one", objective=one_objective, heads="gate", has_leader=False, min_branches=2,
                  deployed="branch_0", description="ONE: gated ensemble teacher"),
    "clilr": Method(name="clilr", objective=functools.partial(mean_of_others_objective, ramped=True),
                    heads="none", has_leader=False, min_branches=2, deployed="branch_0",
                    scale_trunk_gradient=True,
                    description="CL-ILR: mean of the other branches as target, trunk gradient / m"),
    "dml": Method(name="dml", objective=functools.partial(mean_of_others_objective, ramped=False),
                  heads="none", has_leader=False, min_branches=2, deployed="branch_0", shared_trunk=False,
                  ramped=False, description="DML: independent networks, each taught by the mean of the others"),
    "individual": Method(name="individual", objective=cross_entropy_objective, heads="none", has_leader=False,
                         min_branches=1, deployed="branch_0", ramped=False,
                         description="branches on a shared trunk trained with CE only"),
    "vanilla": Method(name="vanilla", objective=cross_entropy_objective, heads="none", has_leader=False,
                      min_branches=1, deployed="branch_0", fixed_branches=1,
                      ramped=False, description="one network, CE"),
}
