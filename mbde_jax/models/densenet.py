"""OKDDip's CIFAR DenseNet-BC 40-12, split into a shared trunk and a branch.

Layout (NHWC), as OKDDip's models/model_cifar/densenet*.py (growth 12, bottleneck width 4 x 12,
compression 0.5, 24 initial features, blocks of 6 BC layers):
  trunk  = conv3x3(24) | block 1 (24 -> 96) | transition (96 -> 48, avg pool)
           | block 2 (48 -> 120) | transition (120 -> 60, avg pool)            -> [batch, 8, 8, 60]
  branch = block 3 (60 -> 132) | BN | ReLU | global average pool | linear classifier
Convs use kaiming_normal_ with its defaults (fan_in), linear biases start at zero.

Difference from the reference: OKDDip's multi-branch DenseNet registers ONE block-3 object under every
branch name, so its "branches" share block 3 and differ only in the final BN and classifier. Here every
branch owns its block 3, as the method intends; a 4-branch model therefore has 3 more copies of block 3
than OKDDip's (see README, "Parameter counts").
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mbde_jax.models import initializers, layers

GROWTH_RATE = 12
BOTTLENECK_WIDTH = 4 * GROWTH_RATE
LAYERS_PER_BLOCK = 6
INITIAL_FEATURES = 24
COMPRESSION = 0.5


class DenseLayer(nn.Module):
    """BN-ReLU-conv1x1(48)-BN-ReLU-conv3x3(12), concatenated to its input.

    [batch, h, w, c] -> [batch, h, w, c + 12]. Layers named as the reference's _DenseLayer: norm1, conv1
    (1x1), norm2, conv2 (3x3).
    """

    train: bool = True
    dtype: layers.Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = layers.relu(layers.batch_norm(self.train, name="norm1")(x))
        y = layers.conv(BOTTLENECK_WIDTH, 1, kernel_init=layers.kaiming_normal_fan_in, dtype=self.dtype,
                        name="conv1")(y)
        y = layers.relu(layers.batch_norm(self.train, name="norm2")(y))
        y = layers.conv(GROWTH_RATE, 3, kernel_init=layers.kaiming_normal_fan_in, dtype=self.dtype,
                        name="conv2")(y)
        return jnp.concatenate([x, y.astype(x.dtype)], axis=-1)


def _dense_block(x: jax.Array, train: bool, dtype: layers.Dtype, prefix: str) -> jax.Array:
    for i in range(LAYERS_PER_BLOCK):
        x = DenseLayer(train, dtype, name=f"{prefix}_layer{i}")(x)
    return x


def _transition(x: jax.Array, train: bool, dtype: layers.Dtype, prefix: str) -> jax.Array:
    """BN-ReLU-conv1x1 halving the channels, then a 2x2 average pool."""
    x = layers.relu(layers.batch_norm(train, name=f"{prefix}_bn")(x))
    x = layers.conv(int(x.shape[-1] * COMPRESSION), 1, kernel_init=layers.kaiming_normal_fan_in, dtype=dtype,
                    name=f"{prefix}_conv")(x)
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


class DenseNetTrunk(nn.Module):
    """Stem, blocks 1-2 and their transitions. [batch, 32, 32, 3] -> [batch, 8, 8, 60]."""

    train: bool = True
    dtype: layers.Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        x = layers.conv(INITIAL_FEATURES, 3, kernel_init=layers.kaiming_normal_fan_in, dtype=self.dtype,
                        name="stem_conv")(images)
        x = _dense_block(x, self.train, self.dtype, "block1")
        x = _transition(x, self.train, self.dtype, "transition1")
        x = _dense_block(x, self.train, self.dtype, "block2")
        return _transition(x, self.train, self.dtype, "transition2")


class DenseNetBranch(nn.Module):
    """Block 3, final BN + ReLU, pool and classifier.

    [batch, 8, 8, 60] -> (feature map [batch, 8, 8, 132], pooled [batch, 132], logits [batch, num_classes]).
    """

    num_classes: int
    train: bool = True
    dtype: layers.Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        x = _dense_block(x, self.train, self.dtype, "block3")
        feature_map = layers.relu(layers.batch_norm(self.train, name="final_bn")(x))
        pooled = layers.global_average_pool(feature_map)
        logits = layers.linear(self.num_classes, pooled.shape[-1], bias_init=initializers.zeros,
                               dtype=self.dtype, name="classifier")(pooled)
        return feature_map, pooled, logits
