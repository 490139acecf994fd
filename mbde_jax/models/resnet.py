"""CIFAR ResNets of OKDDip (resnet32, resnet110, wrn20_8), split into a shared trunk and a branch.

Layout (NHWC), as OKDDip's models/model_cifar/resnet*.py:
  trunk  = conv3x3(16) + BN + ReLU, stage 1 (planes 16, stride 1), stage 2 (planes 32, stride 2)
  branch = stage 3 (planes 64, stride 2), global average pool, linear classifier
resnet32: basic blocks 5-5-5 (resnet8: 1-1-1, a small model for smoke tests and the test suite). resnet110: bottleneck blocks 12-12-12 (expansion 4, 256-d features).
wrn20_8: bottleneck blocks 2-2-2 whose inner width is 8x the planes (`width_per_group=512`).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from mbde_jax.models import layers


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut. Output channels = planes.

    [batch, h, w, c] -> [batch, h / strides, w / strides, planes]. Layers named as OKDDip's BasicBlock:
    conv1, bn1, conv2, bn2, and downsample_conv, downsample_bn for its `downsample` projection.
    """

    planes: int
    strides: int = 1
    train: bool = True
    dtype: layers.Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = layers.conv(self.planes, 3, strides=self.strides, dtype=self.dtype, name="conv1")(x)
        y = layers.relu(layers.batch_norm(self.train, name="bn1")(y))
        y = layers.conv(self.planes, 3, dtype=self.dtype, name="conv2")(y)
        y = layers.batch_norm(self.train, name="bn2")(y)
        return layers.relu(y + _shortcut(x, self.planes, self.strides, self.train, self.dtype))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 convolutions; output channels = 4 * planes.

    [batch, h, w, c] -> [batch, h / strides, w / strides, 4 * planes]. The inner width is
    planes * width_per_group / 64, as torchvision's Bottleneck that OKDDip reuses; layers named as it:
    conv1/bn1 (1x1), conv2/bn2 (3x3), conv3/bn3 (1x1), downsample_conv/downsample_bn.
    """

    planes: int
    strides: int = 1
    width_per_group: int = 64
    train: bool = True
    dtype: layers.Dtype = jnp.float32

    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = self.planes * self.width_per_group // 64
        y = layers.conv(width, 1, dtype=self.dtype, name="conv1")(x)
        y = layers.relu(layers.batch_norm(self.train, name="bn1")(y))
        y = layers.conv(width, 3, strides=self.strides, dtype=self.dtype, name="conv2")(y)
        y = layers.relu(layers.batch_norm(self.train, name="bn2")(y))
        y = layers.conv(self.planes * self.expansion, 1, dtype=self.dtype, name="conv3")(y)
        y = layers.batch_norm(self.train, name="bn3")(y)
        shortcut = _shortcut(x, self.planes * self.expansion, self.strides, self.train, self.dtype)
        return layers.relu(y + shortcut)


def _shortcut(x: jax.Array, channels: int, strides: int, train: bool, dtype: layers.Dtype) -> jax.Array:
    """Identity, or a strided 1x1 conv + BN where the shape changes (torchvision's `downsample`)."""
    if strides == 1 and x.shape[-1] == channels:
        return x
    x = layers.conv(channels, 1, strides=strides, dtype=dtype, name="downsample_conv")(x)
    return layers.batch_norm(train, name="downsample_bn")(x)


class _ResNetStage(nn.Module):
    """`num_blocks` residual blocks; the first one carries the stride."""

    block: str  # "basic" or "bottleneck"
    planes: int
    num_blocks: int
    strides: int
    width_per_group: int
    train: bool
    dtype: layers.Dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.num_blocks):
            strides = self.strides if i == 0 else 1
            if self.block == "basic":
                x = BasicBlock(self.planes, strides, self.train, self.dtype, name=f"block{i}")(x)
            else:
                x = Bottleneck(
                    self.planes, strides, self.width_per_group, self.train, self.dtype, name=f"block{i}"
                )(x)
        return x


class ResNetTrunk(nn.Module):
    """Stem and stages 1-2. [batch, 32, 32, 3] -> [batch, 16, 16, 32 * expansion]."""

    block: str
    blocks_per_stage: tuple[int, int, int]
    width_per_group: int = 64
    train: bool = True
    dtype: layers.Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        x = layers.conv(16, 3, dtype=self.dtype, name="stem_conv")(images)
        x = layers.relu(layers.batch_norm(self.train, name="stem_bn")(x))
        stage = functools.partial(
            _ResNetStage, self.block, width_per_group=self.width_per_group, train=self.train, dtype=self.dtype
        )
        x = stage(16, self.blocks_per_stage[0], 1, name="stage1")(x)
        return stage(32, self.blocks_per_stage[1], 2, name="stage2")(x)


class ResNetBranch(nn.Module):
    """Stage 3, global average pool and classifier.

    [batch, 16, 16, c] -> (feature map [batch, 8, 8, 64 * expansion], pooled [batch, 64 * expansion],
    logits [batch, num_classes]).
    """

    num_classes: int
    block: str
    blocks_per_stage: tuple[int, int, int]
    width_per_group: int = 64
    train: bool = True
    dtype: layers.Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        feature_map = _ResNetStage(
            self.block, 64, self.blocks_per_stage[2], 2, self.width_per_group, self.train, self.dtype, name="stage3"
        )(x)
        pooled = layers.global_average_pool(feature_map)
        logits = layers.linear(self.num_classes, pooled.shape[-1], dtype=self.dtype, name="classifier")(pooled)
        return feature_map, pooled, logits


RESNET_VARIANTS: dict[str, dict] = {
    "resnet8": dict(block="basic", blocks_per_stage=(1, 1, 1), width_per_group=64),
    "resnet32": dict(block="basic", blocks_per_stage=(5, 5, 5), width_per_group=64),
    "resnet110": dict(block="bottleneck", blocks_per_stage=(12, 12, 12), width_per_group=64),
    "wrn20_8": dict(block="bottleneck", blocks_per_stage=(2, 2, 2), width_per_group=64 * 8),
}
