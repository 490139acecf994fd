"""ONE's gate (Lan et al., NeurIPS 2018, as OKDDip's resnet_one.py builds it): branch weights from the trunk."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mbde_jax.models import layers


class OneGate(nn.Module):
    """ONE's gate: softmax(ReLU(BN(Linear(GAP(trunk feature))))) over the branches.

    Attributes:
      num_branches: size of the gate.
      train: batch-norm mode.
    """

    num_branches: int
    train: bool = True
    dtype: layers.Dtype = jnp.float32

    @nn.compact
    def __call__(self, trunk_features: jax.Array) -> jax.Array:
        """trunk_features [batch, height, width, channels] -> gate [batch, branches], rows summing to one."""
        pooled = layers.global_average_pool(trunk_features)
        scores = layers.linear(self.num_branches, pooled.shape[-1], dtype=self.dtype, name="linear")(pooled)
        scores = nn.relu(layers.batch_norm(self.train, name="bn")(scores))
        return jax.nn.softmax(scores.astype(jnp.float32), axis=-1)
