"""The optimizer of the PyTorch references: SGD with Nesterov momentum and coupled weight decay.

PyTorch's SGD(weight_decay=wd, momentum=mu, nesterov=True) does, per parameter p with gradient g:
    g' = g + wd * p;  buf = mu * buf + g';  p -= lr * (g' + mu * buf)
optax.add_decayed_weights(wd) followed by optax.trace(mu, nesterov=True) gives g' + mu * buf (the decay is
added to the gradient before the momentum, on every parameter, batch-norm scales and biases included); the
train step multiplies that by -lr of the step's epoch (`apply_learning_rate`), as optax.sgd's own
scale_by_learning_rate would. Keeping the rate out of the optimizer makes it a function of the epoch, so the
optimizer (and the state it makes) does not depend on how many steps an epoch has.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax


def learning_rate_at_epoch(epoch, base_rate: float, boundaries_epochs: Sequence[int], decay_factor: float
                           ) -> jax.Array:
    """Piecewise-constant learning rate of 0-based `epoch`: base_rate, times decay_factor from each epoch in
    boundaries_epochs on.

    The boundaries count epochs from 1, as OKDDip's training actually behaves: it calls MultiStepLR.step() at
    the START of every epoch (PyTorch 1.0 idiom), so with milestones (150, 225) the 150th epoch (0-based 149)
    is the first at lr 0.01 and the 225th (0-based 224) the first at 0.001.
    """
    schedule = optax.piecewise_constant_schedule(
        base_rate, {int(boundary) - 1: decay_factor for boundary in boundaries_epochs})
    return schedule(epoch)


def momentum_and_weight_decay(momentum: float, nesterov: bool, weight_decay: float
                              ) -> optax.GradientTransformation:
    """g -> g' + mu * buf (Nesterov) or buf (heavy ball), with g' = g + weight_decay * p."""
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.trace(decay=momentum, nesterov=nesterov))


def apply_learning_rate(updates, learning_rate: jax.Array):
    """-learning_rate * updates, leaf by leaf in each leaf's dtype (optax.scale_by_learning_rate's arithmetic)."""
    return jax.tree.map(lambda update: jnp.asarray(-learning_rate, update.dtype) * update, updates)
