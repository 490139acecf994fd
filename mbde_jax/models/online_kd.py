"""The trained model of an online-distillation method: the multi-branch network plus the method's heads.

Heads (`heads` field):
  'none'           plain branches (CL-ILR, DML, individual, vanilla)
  'attention'      OKDDip's peer attention on the pooled peer features (okddip, mbde_no_ffm)
  'ffm_attention'  the Feature Fusion Module feeding the peer attention (mbde, mbde_no_cd)
  'gate'           ONE's gate on the trunk feature, giving the gated ensemble (one)
"""

from __future__ import annotations

from typing import Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from mbde_jax.models import ffm, one_gate
from mbde_jax.models import MultiBranchNet, layers

HEADS = ("none", "attention", "ffm_attention", "gate")


@flax.struct.dataclass
class ModelOutput:
    """Everything the objectives and the evaluation read.

    Attributes:
      logits: [branch, batch, classes], every branch; with a leader it is the last one.
      feature_maps: [branch, batch, h, w, c], last-block feature maps.
      pooled_features: [branch, batch, c].
      trunk_features: [batch, h', w', c'] at the branch point.
      peer_targets: [peers, batch, classes], attention-mixed target logits z~ ('attention' heads), else None.
      attention: [batch, peers, peers], rows sum to one ('attention' heads), else None.
      gate: [batch, branch], ONE's branch weights ('gate' head), else None.
      ensemble_logits: [batch, classes], ONE's gated ensemble sum_i g_i z_i ('gate' head), else None.
    """

    logits: jax.Array
    feature_maps: jax.Array
    pooled_features: jax.Array
    trunk_features: jax.Array
    peer_targets: Optional[jax.Array] = None
    attention: Optional[jax.Array] = None
    gate: Optional[jax.Array] = None
    ensemble_logits: Optional[jax.Array] = None


class OnlineKDModel(nn.Module):
    """Multi-branch network ('network') plus the heads of one method.

    Variables: 'network' (with 'trunk' and 'branches'), and 'ffm', 'peer_attention' or 'gate' for the heads.
    With attention heads the peers are branches 0 .. m-2 and branch m-1 is the group leader.
    """

    arch: str
    num_classes: int
    num_branches: int
    heads: str = "none"
    shared_trunk: bool = True
    trunk_grad_scale: float = 1.0
    dropout_rate: float = 0.5
    attention_reduction: int = 8
    ffm_residual: bool = False
    dtype: layers.Dtype = jnp.float32
    branch_execution: str = "vmap"

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> ModelOutput:
        """images [batch, height, width, 3] -> ModelOutput (see its docstring for shapes)."""
        if self.heads not in HEADS:
            raise ValueError(f"OnlineKDModel.heads: unknown heads {self.heads!r}; valid: {list(HEADS)}.")
        out = MultiBranchNet(
            arch=self.arch, num_classes=self.num_classes, num_branches=self.num_branches,
            shared_trunk=self.shared_trunk, trunk_grad_scale=self.trunk_grad_scale,
            dropout_rate=self.dropout_rate, dtype=self.dtype, branch_execution=self.branch_execution,
            name="network")(images, train=train)
        extras = {}
        if self.heads in ("attention", "ffm_attention"):
            num_peers = self.num_branches - 1
            peer_logits = out.logits[:num_peers]
            if self.heads == "ffm_attention":
                peer_features = ffm.FeatureFusionModule(
                    residual=self.ffm_residual, train=train, dtype=self.dtype, name="ffm")(
                        out.feature_maps[:num_peers])
            else:
                peer_features = out.pooled_features[:num_peers]
            targets, attention = ffm.PeerAttention(
                reduction=self.attention_reduction, dtype=self.dtype, name="peer_attention")(
                    peer_features, peer_logits)
            extras = dict(peer_targets=targets, attention=attention)
        elif self.heads == "gate":
            gate = one_gate.OneGate(self.num_branches, train=train, dtype=self.dtype, name="gate")(
                out.trunk_features)
            ensemble = jnp.einsum("bm,mbk->bk", gate, out.logits.astype(jnp.float32))
            extras = dict(gate=gate, ensemble_logits=ensemble)
        return ModelOutput(
            logits=out.logits, feature_maps=out.feature_maps, pooled_features=out.pooled_features,
            trunk_features=out.trunk_features, **extras)


def classifier_kernels(params) -> jax.Array:
    """The final linear layer's kernel of every branch, [branch, features, classes], from model params."""
    return params["network"]["branches"]["branch"]["classifier"]["kernel"]
