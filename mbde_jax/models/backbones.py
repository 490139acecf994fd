"""The registry of backbones: each one a trunk factory and a branch factory.

A trunk maps images [batch, 32, 32, 3] to the feature map at the branch point; a branch maps that map to
(last-block feature map, pooled feature, logits). Both are Flax modules whose mode (`train`) and compute
dtype are fixed at construction, so they can be vmapped without static call arguments.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import flax.linen as nn

from mbde_jax.models import densenet, layers, resnet, vgg


@dataclasses.dataclass(frozen=True)
class Backbone:
    """How to build one architecture's trunk and branch.

    Attributes:
      make_trunk: (train, dtype, name) -> module mapping images to the branch-point feature map.
      make_branch: (num_classes, train, dtype, dropout_rate, name) -> module returning
        (feature_map, pooled, logits).
      description: one line for listings.
    """

    make_trunk: Callable[..., nn.Module]
    make_branch: Callable[..., nn.Module]
    description: str


def _resnet(variant: str, description: str) -> Backbone:
    kwargs = resnet.RESNET_VARIANTS[variant]
    return Backbone(
        make_trunk=lambda train, dtype, name: resnet.ResNetTrunk(train=train, dtype=dtype, name=name, **kwargs),
        make_branch=lambda num_classes, train, dtype, dropout_rate, name: resnet.ResNetBranch(
            num_classes, train=train, dtype=dtype, name=name, **kwargs),
        description=description,
    )


BACKBONES: dict[str, Backbone] = {
    "resnet8": _resnet("resnet8", "ResNet-8, basic blocks 1-1-1: not in the paper; smoke tests and CI"),
    "resnet32": _resnet("resnet32", "ResNet-32, basic blocks 5-5-5, widths 16/32/64"),
    "resnet110": _resnet("resnet110", "ResNet-110 (OKDDip's), bottleneck blocks 12-12-12, 256-d features"),
    "wrn20_8": _resnet("wrn20_8", "WRN-20-8 (OKDDip's wide_resnet20_8), bottleneck 2-2-2, inner width x8"),
    "vgg16": Backbone(
        make_trunk=lambda train, dtype, name: vgg.VGGTrunk(train=train, dtype=dtype, name=name),
        make_branch=lambda num_classes, train, dtype, dropout_rate, name: vgg.VGGBranch(
            num_classes, dropout_rate=dropout_rate, train=train, dtype=dtype, name=name),
        description="VGG-16 with BN, 3-layer MLP head with dropout",
    ),
    "densenet40_12": Backbone(
        make_trunk=lambda train, dtype, name: densenet.DenseNetTrunk(train=train, dtype=dtype, name=name),
        make_branch=lambda num_classes, train, dtype, dropout_rate, name: densenet.DenseNetBranch(
            num_classes, train=train, dtype=dtype, name=name),
        description="DenseNet-BC 40-12 (blocks of 6 bottleneck layers, compression 0.5)",
    ),
}


def get_backbone(name: str) -> Backbone:
    """Returns the backbone called `name`, or raises a ValueError listing the valid names."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"config.arch: unknown architecture {name!r}; valid architectures are "
                         f"{sorted(BACKBONES)}.") from None


__all__ = ["BACKBONES", "Backbone", "get_backbone", "layers"]
