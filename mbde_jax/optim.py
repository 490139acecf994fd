"""The optimizer of the PyTorch references: SGD with Nesterov momentum and coupled weight decay.

PyTorch's SGD(weight_decay=wd, momentum=mu, nesterov=True) does, per parameter p with gradient g:
    g' = g + wd * p;  buf = mu * buf + g';  p -= lr * (g' + mu * buf)
optax.add_decayed_weights(wd) followed by optax.sgd(lr, mu, nesterov=True) is the same update: the decay is
added to the gradient before the momentum (coupled), on every parameter, batch-norm scales and biases included.
"""

from __future__ import annotations

import ml_collections
import optax


def learning_rate_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
    """Piecewise-constant learning rate: config.learning_rate, multiplied by config.lr_decay_factor from each
    epoch in config.lr_boundaries_epochs on.

    The boundaries count epochs from 1, as OKDDip's training actually behaves: it calls MultiStepLR.step() at
    the START of every epoch (PyTorch 1.0 idiom), so with milestones (150, 225) the 150th epoch (0-based 149)
    is the first at lr 0.01 and the 225th (0-based 224) the first at 0.001.
    """
    boundaries = {(int(epoch) - 1) * steps_per_epoch: config.lr_decay_factor
                  for epoch in config.lr_boundaries_epochs}
    return optax.piecewise_constant_schedule(config.learning_rate, boundaries)


def make_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.GradientTransformation:
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay),
        optax.sgd(learning_rate_schedule(config, steps_per_epoch), momentum=config.momentum,
                  nesterov=config.nesterov),
    )
