"""A backbone for the tests of the seed's plumbing: ResNet-8 with a dropout layer before its classifier.

Dropout is why the seed reaches the train step (its key comes from the seed); VGG-16, the one paper backbone
with dropout, takes minutes of XLA compilation on a small CPU, this one seconds. `registered()` adds it to the
registry for the duration of a test, as `config.arch = NAME`.
"""

import contextlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from mbde_jax.models import backbones, initializers, layers, resnet

NAME = "resnet8_dropout"
_RESNET8 = resnet.RESNET_VARIANTS["resnet8"]


class DropoutBranch(nn.Module):
    """ResNet-8's last stage and pool, dropout, then the classifier: (feature map, pooled, logits)."""

    num_classes: int
    dropout_rate: float = 0.5
    train: bool = True
    dtype: layers.Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        feature_map = resnet._ResNetStage(_RESNET8["block"], 64, _RESNET8["blocks_per_stage"][2], 2,
                                          _RESNET8["width_per_group"], self.train, self.dtype, name="stage3")(x)
        pooled = layers.global_average_pool(feature_map)
        h = nn.Dropout(self.dropout_rate, deterministic=not self.train)(pooled)
        logits = layers.linear(self.num_classes, h.shape[-1], kernel_init=initializers.normal(0.01),
                               bias_init=initializers.zeros, dtype=self.dtype, name="classifier")(h)
        return feature_map, pooled, logits


BACKBONE = backbones.Backbone(
    make_trunk=lambda train, dtype, name: resnet.ResNetTrunk(train=train, dtype=dtype, name=name, **_RESNET8),
    make_branch=lambda num_classes, train, dtype, dropout_rate, name: DropoutBranch(
        num_classes, dropout_rate=dropout_rate, train=train, dtype=dtype, name=name),
    description="ResNet-8 with dropout before the classifier: tests only",
)


@contextlib.contextmanager
def registered():
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(backbones.BACKBONES, NAME, BACKBONE)
        yield NAME
