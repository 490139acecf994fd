"""OKDDip's CIFAR VGG-16 (with batch norm), split into a shared trunk and a branch.

Layout (NHWC), as OKDDip's models/model_cifar/vgg*.py:
  trunk  = conv(64) conv(64) maxpool | conv(128) x2 maxpool | conv(256) x3 maxpool | conv(512) x3 maxpool
  branch = conv(512) x3 maxpool (a 1x1 map on 32x32 inputs), flatten,
           Linear 512-512, ReLU, Dropout, Linear 512-512, ReLU, Dropout, Linear 512-classes
Every conv is 3x3 with a bias (zero-initialised), followed by BN and ReLU. Linear weights ~ N(0, 0.01),
biases zero, as the reference's vgg.py.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mbde_jax.models import initializers, layers


def _conv_bn_relu_stage(
    x: jax.Array, features: int, num_convs: int, train: bool, dtype: layers.Dtype, prefix: str
) -> jax.Array:
    """`num_convs` conv-BN-ReLU layers then a 2x2 max pool (halves height and width)."""
    for i in range(num_convs):
        x = layers.conv(features, 3, use_bias=True, dtype=dtype, name=f"{prefix}_conv{i}")(x)
        x = layers.relu(layers.batch_norm(train, name=f"{prefix}_bn{i}")(x))
    return nn.max_pool(x, (2, 2), strides=(2, 2))


class VGGTrunk(nn.Module):
    """The first four conv stages. [batch, 32, 32, 3] -> [batch, 2, 2, 512]."""

    train: bool = True
    dtype: layers.Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        x = _conv_bn_relu_stage(images, 64, 2, self.train, self.dtype, "stage1")
        x = _conv_bn_relu_stage(x, 128, 2, self.train, self.dtype, "stage2")
        x = _conv_bn_relu_stage(x, 256, 3, self.train, self.dtype, "stage3")
        return _conv_bn_relu_stage(x, 512, 3, self.train, self.dtype, "stage4")


class VGGBranch(nn.Module):
    """The fifth conv stage and the three-layer MLP head.

    [batch, 2, 2, 512] -> (feature map [batch, 1, 1, 512], pooled [batch, 512], logits [batch, num_classes]).
    Dropout draws from the 'dropout' RNG stream in training mode.
    """

    num_classes: int
    dropout_rate: float = 0.5
    train: bool = True
    dtype: layers.Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        feature_map = _conv_bn_relu_stage(x, 512, 3, self.train, self.dtype, "stage5")
        if feature_map.shape[1:3] != (1, 1):
            raise ValueError(
                f"vgg16 expects 32x32 input images (its last stage must end on a 1x1 map, as OKDDip's "
                f"flattening classifier assumes); the last stage produced {feature_map.shape[1:3]}."
            )
        pooled = feature_map.reshape(feature_map.shape[0], -1)
        normal = initializers.normal(0.01)
        zeros = initializers.zeros
        h = pooled
        for i in range(2):
            h = layers.linear(512, h.shape[-1], kernel_init=normal, bias_init=zeros, dtype=self.dtype,
                              name=f"classifier_hidden{i}")(h)
            h = nn.Dropout(self.dropout_rate, deterministic=not self.train)(layers.relu(h))
        logits = layers.linear(self.num_classes, h.shape[-1], kernel_init=normal, bias_init=zeros,
                               dtype=self.dtype, name="classifier")(h)
        return feature_map, pooled, logits
