"""A shared trunk and m identical branches whose variables are stacked on a leading branch axis.

The branches are ONE Flax module vmapped over the branch axis: params and batch_stats gain a leading axis
of size m, each branch is initialised from its own RNG, and every per-branch quantity comes out as one
array with a branch axis. With `shared_trunk=False` the trunk is empty and each "branch" is a whole network
(DML's m independent students); with m = 1 and a shared trunk it is the plain single network.

Branch order follows OKDDip: branches 0 .. m-2 are the peers, branch m-1 is the group leader.
"""

from __future__ import annotations

import functools

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from mbde_jax.models import backbones, layers


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def scale_gradient(x: jax.Array, scale: float) -> jax.Array:
    """Identity in the forward pass; multiplies the incoming gradient by `scale` in the backward pass."""
    return x


def _scale_gradient_fwd(x: jax.Array, scale: float) -> tuple[jax.Array, None]:
    return x, None


def _scale_gradient_bwd(scale: float, _: None, g: jax.Array) -> tuple[jax.Array]:
    return (g * jnp.asarray(scale, g.dtype),)


scale_gradient.defvjp(_scale_gradient_fwd, _scale_gradient_bwd)


@flax.struct.dataclass
class MultiBranchOutput:
    """What the multi-branch network returns.

    Attributes:
      logits: [branch, batch, classes].
      feature_maps: [branch, batch, height, width, channels], each branch's last-block feature map.
      pooled_features: [branch, batch, channels], the feature each classifier reads (global average pool
        of the feature map; VGG's 1x1 map flattened).
      trunk_features: [batch, height', width', channels'], the trunk output at the branch point (the input
        images themselves when the trunk is not shared).
    """

    logits: jax.Array
    feature_maps: jax.Array
    pooled_features: jax.Array
    trunk_features: jax.Array


class BranchNet(nn.Module):
    """One branch of `arch`; with `include_trunk`, a whole network (trunk then branch).

    Returns (feature_map [batch, h, w, c], pooled [batch, c], logits [batch, num_classes]).
    """

    arch: str
    num_classes: int
    include_trunk: bool = False
    dropout_rate: float = 0.5
    train: bool = True
    dtype: layers.Dtype = jnp.float32
    as_scan_body: bool = False

    @nn.compact
    def __call__(self, x: jax.Array):
        """x -> outputs; as the body of nn.scan, x is the (unchanged) carry and the result (x, outputs)."""
        inputs = x
        backbone = backbones.get_backbone(self.arch)
        if self.include_trunk:
            x = backbone.make_trunk(self.train, self.dtype, "trunk")(x)
        outputs = backbone.make_branch(self.num_classes, self.train, self.dtype, self.dropout_rate, "branch")(x)
        return (inputs, outputs) if self.as_scan_body else outputs


class MultiBranchNet(nn.Module):
    """Trunk + `num_branches` vmapped branches.

    Attributes:
      arch: a name from mbde_jax.models.BACKBONES.
      num_classes: classifier outputs per branch.
      num_branches: m, the number of branches (m - 1 peers and one leader for MBDE/OKDDip).
      shared_trunk: False gives m independent full networks (DML).
      trunk_grad_scale: the gradient flowing from the branches into the trunk is multiplied by this
        (identity forward); CL-ILR uses 1 / m. Ignored without a shared trunk.
      dropout_rate: dropout of VGG's MLP head; other backbones have none.
      dtype: compute dtype of convolutions and matmuls (parameters stay float32).

    Variables: params and batch_stats under 'trunk' (absent without a shared trunk) and 'branches', the
    latter with a leading branch axis of size m.
    """

    arch: str
    num_classes: int
    num_branches: int = 4
    shared_trunk: bool = True
    trunk_grad_scale: float = 1.0
    dropout_rate: float = 0.5
    dtype: layers.Dtype = jnp.float32
    branch_execution: str = "vmap"

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> MultiBranchOutput:
        """images [batch, height, width, 3] (NHWC, normalised) -> MultiBranchOutput.

        In training mode batch statistics are used and updated (pass mutable=['batch_stats']) and VGG's
        dropout draws from the 'dropout' RNG; in eval mode the running averages are used.
        """
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(
                f"MultiBranchNet expects images of shape [batch, height, width, 3] (NHWC, RGB); got shape "
                f"{tuple(images.shape)}. Add a batch axis to a single image, and move channels last if your "
                f"data is NCHW.")
        if self.num_branches < 1:
            raise ValueError(f"config.num_branches must be at least 1; got {self.num_branches}.")
        backbone = backbones.get_backbone(self.arch)
        if self.shared_trunk:
            trunk_features = backbone.make_trunk(train, self.dtype, "trunk")(images)
            branch_input = scale_gradient(trunk_features, self.trunk_grad_scale)
        else:
            trunk_features = branch_input = images
        branch_fields = dict(arch=self.arch, num_classes=self.num_classes, include_trunk=not self.shared_trunk,
                             dropout_rate=self.dropout_rate, train=train, dtype=self.dtype, name="branches")
        stacked = dict(variable_axes={"params": 0, "batch_stats": 0}, split_rngs={"params": True, "dropout": True})
        if self.branch_execution == "vmap":
            branches = nn.vmap(BranchNet, in_axes=None, out_axes=0, axis_size=self.num_branches, **stacked)
            feature_maps, pooled, logits = branches(**branch_fields)(branch_input)
        elif self.branch_execution in ("scan", "unrolled"):
            branches = nn.scan(BranchNet, length=self.num_branches, out_axes=0,
                               unroll=self.num_branches if self.branch_execution == "unrolled" else 1, **stacked)
            _, (feature_maps, pooled, logits) = branches(as_scan_body=True, **branch_fields)(branch_input)
        else:
            raise ValueError(f"config.branch_execution: unknown value {self.branch_execution!r}; valid values are "
                             f"['vmap', 'scan', 'unrolled'].")
        # The losses and the evaluation read float32 logits whatever the compute dtype (mixed precision).
        return MultiBranchOutput(logits=logits.astype(jnp.float32), feature_maps=feature_maps,
                                 pooled_features=pooled, trunk_features=trunk_features)
