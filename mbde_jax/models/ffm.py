"""MBDE's Feature Fusion Module (FFM) and OKDDip's peer attention.

Both take per-peer quantities stacked on a leading branch axis and return per-peer quantities.

Peer attention (OKDDip): for peer features h_a, q_a = W_L h_a and k_b = W_E h_b with W_L, W_E shared by all
peers (d -> d / reduction, no bias); alpha_ab = softmax_b(q_a . k_b) over ALL peers b, a included, without a
1/sqrt(d) scale; the target logits of peer a are z~_a = sum_b alpha_ab t_b.

FFM (our recipe; the paper's layers are unknown): concatenate the peers' last-block maps on channels,
depthwise 3x3 conv -> BN -> ReLU -> 1x1 conv -> BN -> ReLU, split back into one chunk per peer, global
average pool -> h_a. With `residual`, h_a = GAP(s_a) + fused_a.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mbde_jax.models import layers


class PeerAttention(nn.Module):
    """Attention-weighted target logits for every peer.

    Attributes:
      reduction: W_L, W_E map d features to d // reduction (OKDDip's factor 8).
    """

    reduction: int = 8
    dtype: layers.Dtype = jnp.float32

    @nn.compact
    def __call__(self, peer_features: jax.Array, peer_logits: jax.Array) -> tuple[jax.Array, jax.Array]:
        """peer_features [peers, batch, d], peer_logits [peers, batch, classes] ->
        (targets [peers, batch, classes], attention [batch, peers, peers], rows summing to one)."""
        d = peer_features.shape[-1]
        if d // self.reduction < 1:
            raise ValueError(f"PeerAttention: feature size {d} is smaller than the reduction factor "
                             f"{self.reduction}; lower config.attention_reduction.")
        project = lambda name: nn.Dense(  # noqa: E731
            d // self.reduction, use_bias=False, kernel_init=layers.torch_uniform(d), dtype=self.dtype,
            name=name)
        queries = project("query")(peer_features)  # W_L
        keys = project("key")(peer_features)  # W_E
        energy = jnp.einsum("abe,cbe->bac", queries, keys).astype(jnp.float32)
        attention = jax.nn.softmax(energy, axis=-1)
        targets = jnp.einsum("bac,cbk->abk", attention, peer_logits.astype(jnp.float32))
        return targets, attention


class DepthwiseConv3x3(nn.Module):
    """A 3x3 depthwise convolution (one filter per channel, zero padding 1), as nine shifted multiply-adds.

    [batch, height, width, channels] -> same shape. The parameter is that of
    nn.Conv(channels, (3, 3), feature_group_count=channels): 'kernel' [3, 3, 1, channels], same initialiser,
    so checkpoints and initial values are unchanged. Why not nn.Conv: XLA:CPU runs a convolution with one
    group per channel, and above all its weight gradient, as a dense channels x channels convolution (192x the
    work at m = 4: ~100 ms of a train step); the shifted form is elementwise and takes ~1 ms forward.
    """

    kernel_init: layers.Initializer = layers.kaiming_normal_fan_out
    dtype: layers.Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (3, 3, 1, channels), jnp.float32)
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        height, width = x.shape[1:3]
        padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        out = padded[:, :height, :width, :] * kernel[0, 0, 0]
        for i in range(3):
            for j in range(3):
                if i or j:
                    out = out + padded[:, i:i + height, j:j + width, :] * kernel[i, j, 0]
        return out


class FeatureFusionModule(nn.Module):
    """Fuses the peers' last-block maps into one feature vector per peer.

    Attributes:
      residual: add each peer's own pooled map to its fused vector.
      train: batch-norm mode (batch statistics and their update in training).
    """

    residual: bool = False
    train: bool = True
    dtype: layers.Dtype = jnp.float32

    @nn.compact
    def __call__(self, peer_maps: jax.Array) -> jax.Array:
        """peer_maps [peers, batch, height, width, channels] -> fused features [peers, batch, channels]."""
        peers, batch, height, width, channels = peer_maps.shape
        stacked = jnp.moveaxis(peer_maps, 0, 3).reshape(batch, height, width, peers * channels)
        fused = DepthwiseConv3x3(dtype=self.dtype, name="depthwise_conv")(stacked)
        fused = layers.relu(layers.batch_norm(self.train, name="depthwise_bn")(fused))
        fused = nn.Conv(peers * channels, (1, 1), use_bias=False, kernel_init=layers.kaiming_normal_fan_out,
                        dtype=self.dtype, name="pointwise_conv")(fused)
        fused = layers.relu(layers.batch_norm(self.train, name="pointwise_bn")(fused))
        pooled = layers.global_average_pool(fused).reshape(batch, peers, channels)
        pooled = jnp.moveaxis(pooled, 1, 0)
        if self.residual:
            pooled = pooled + layers.global_average_pool(peer_maps.reshape(peers * batch, height, width, channels)
                                                         ).reshape(peers, batch, channels)
        return pooled.astype(jnp.float32)
