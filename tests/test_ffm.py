"""Peer attention and the Feature Fusion Module against NumPy float64 recomputations from their params."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized

from mbde_jax.models import ffm

PEERS, BATCH, CHANNELS, CLASSES = 3, 4, 64, 10  # resnet32's peers: 3 branches of 64-channel 8x8 maps
# FFM parameters for these peers: depthwise 3x3 over 192 channels, two BNs (scale + bias), pointwise 192x192.
FFM_PARAMS = 192 * 9 + 2 * 2 * 192 + 192 * 192
BN_EPSILON = 1e-5


def _random(shape, seed, scale=1.0):
    return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _count(tree):
    return sum(x.size for x in jax.tree_util.tree_leaves(tree))


def _np(x):
    return np.asarray(x, np.float64)


def np_batch_norm(x, params, running_stats=None):
    """BN over every axis but the channels: the running statistics, or (training) the batch's, biased."""
    if running_stats is None:
        axes = tuple(range(x.ndim - 1))
        mean, var = x.mean(axis=axes), x.var(axis=axes)
    else:
        mean, var = _np(running_stats["mean"]), _np(running_stats["var"])
    return (x - mean) / np.sqrt(var + BN_EPSILON) * _np(params["scale"]) + _np(params["bias"])


def np_ffm(peer_maps, params, batch_stats, residual):
    """METHOD.md's recipe: concat on channels, depthwise 3x3, BN, ReLU, 1x1, BN, ReLU, split, GAP."""
    peers, batch, height, width, channels = peer_maps.shape
    x = np.concatenate(list(_np(peer_maps)), axis=-1)  # [batch, h, w, peers * channels], peer-major
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    kernel = _np(params["depthwise_conv"]["kernel"])[:, :, 0, :]  # [3, 3, channels]
    x = sum(padded[:, dy:dy + height, dx:dx + width, :] * kernel[dy, dx] for dy in range(3) for dx in range(3))
    for bn in ("depthwise_bn", "pointwise_bn"):
        if bn == "pointwise_bn":
            x = x @ _np(params["pointwise_conv"]["kernel"])[0, 0]
        x = np.maximum(np_batch_norm(x, params[bn], batch_stats and batch_stats[bn]), 0.0)
    pooled = x.mean(axis=(1, 2)).reshape(batch, peers, channels).transpose(1, 0, 2)
    if residual:
        pooled = pooled + _np(peer_maps).mean(axis=(2, 3))
    return pooled


def np_attention(peer_features, peer_logits, query_kernel, key_kernel):
    """alpha_ab = softmax_b(q_a . k_b) over all peers b; target_a = sum_b alpha_ab t_b."""
    queries = _np(peer_features) @ _np(query_kernel)  # [peers, batch, d / 8]
    keys = _np(peer_features) @ _np(key_kernel)
    energy = np.einsum("abe,cbe->bac", queries, keys)
    attention = np.exp(energy - energy.max(axis=-1, keepdims=True))
    attention /= attention.sum(axis=-1, keepdims=True)
    targets = np.einsum("bac,cbk->abk", attention, _np(peer_logits))
    return targets, attention


def _perturbed(tree, seed):
    """Moves every leaf off its initial value (BN scale 1, bias 0) so that the recomputation must use it."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return jax.tree_util.tree_unflatten(
        treedef, [leaf + _random(leaf.shape, seed + i, 0.2) for i, leaf in enumerate(leaves)])


class PeerAttentionTest(chex.TestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.features = _random((PEERS, BATCH, CHANNELS), seed=0, scale=2.0)
        cls.logits = _random((PEERS, BATCH, CLASSES), seed=1, scale=3.0)
        cls.module = ffm.PeerAttention()
        cls.params = cls.module.init(jax.random.key(0), cls.features, cls.logits)["params"]

    def test_params_are_shared_projections_without_bias(self):
        shapes = jax.tree_util.tree_map(jnp.shape, self.params)
        self.assertEqual(shapes, {"query": {"kernel": (CHANNELS, CHANNELS // 8)},
                                  "key": {"kernel": (CHANNELS, CHANNELS // 8)}})
        self.assertFalse(np.allclose(self.params["query"]["kernel"], self.params["key"]["kernel"]))

    @chex.variants(with_jit=True, without_jit=True)
    def test_targets_are_attention_weighted_peer_logits(self):
        targets, attention = self.variant(
            lambda p, h, z: self.module.apply({"params": p}, h, z))(self.params, self.features, self.logits)
        chex.assert_shape(targets, (PEERS, BATCH, CLASSES))
        chex.assert_shape(attention, (BATCH, PEERS, PEERS))
        np.testing.assert_allclose(attention.sum(axis=-1), np.ones((BATCH, PEERS)), rtol=1e-6)
        expected_targets, expected_attention = np_attention(
            self.features, self.logits, self.params["query"]["kernel"], self.params["key"]["kernel"])
        np.testing.assert_allclose(attention, expected_attention, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(targets, expected_targets, rtol=1e-4, atol=1e-5)
        # The attention is not trivial (uniform or one-hot), so the check above weighs the peers.
        self.assertGreater(float(attention.max() - attention.min()), 0.1)
        self.assertLess(float(attention.max()), 0.999)

    def test_features_smaller_than_reduction_are_rejected(self):
        with self.assertRaisesRegex(ValueError, "attention_reduction"):
            ffm.PeerAttention(reduction=8).init(jax.random.key(0), self.features[..., :4], self.logits)


class FeatureFusionModuleTest(chex.TestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.maps = _random((PEERS, BATCH, 8, 8, CHANNELS), seed=2)
        cls.variables = ffm.FeatureFusionModule().init(jax.random.key(1), cls.maps)

    def test_parameter_count_and_layout(self):
        shapes = jax.tree_util.tree_map(jnp.shape, self.variables["params"])
        self.assertEqual(shapes, {
            "depthwise_conv": {"kernel": (3, 3, 1, PEERS * CHANNELS)},
            "depthwise_bn": {"scale": (PEERS * CHANNELS,), "bias": (PEERS * CHANNELS,)},
            "pointwise_conv": {"kernel": (1, 1, PEERS * CHANNELS, PEERS * CHANNELS)},
            "pointwise_bn": {"scale": (PEERS * CHANNELS,), "bias": (PEERS * CHANNELS,)},
        })
        self.assertEqual(_count(self.variables["params"]), FFM_PARAMS)

    @parameterized.parameters(1, 2, 3)
    def test_output_shapes(self, peers):
        maps = jax.ShapeDtypeStruct((peers, 2, 4, 4, 16), jnp.float32)
        module = ffm.FeatureFusionModule()
        variables = jax.eval_shape(module.init, jax.random.key(1), maps)
        fused, state = jax.eval_shape(lambda v, x: module.apply(v, x, mutable=["batch_stats"]), variables, maps)
        chex.assert_shape(fused, (peers, 2, 16))
        self.assertEqual(jax.tree_util.tree_structure(state["batch_stats"]),
                         jax.tree_util.tree_structure(variables["batch_stats"]))

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(train=(True, False), residual=(False, True))
    def test_matches_numpy_recipe(self, train, residual):
        params = _perturbed(self.variables["params"], seed=10)
        batch_stats = _perturbed(self.variables["batch_stats"], seed=20)
        batch_stats["depthwise_bn"]["var"] = jnp.abs(batch_stats["depthwise_bn"]["var"])
        batch_stats["pointwise_bn"]["var"] = jnp.abs(batch_stats["pointwise_bn"]["var"])
        module = ffm.FeatureFusionModule(residual=residual, train=train)
        fused, _ = self.variant(lambda v, x: module.apply(v, x, mutable=["batch_stats"]))(
            {"params": params, "batch_stats": batch_stats}, self.maps)
        chex.assert_shape(fused, (PEERS, BATCH, CHANNELS))
        expected = np_ffm(self.maps, params, None if train else batch_stats, residual)
        np.testing.assert_allclose(fused, expected, rtol=1e-4, atol=1e-4)
        self.assertGreater(float(jnp.abs(fused).mean()), 0.05)

    def test_residual_adds_pooled_peer_map(self):
        def fuse(residual):
            return ffm.FeatureFusionModule(residual=residual).apply(self.variables, self.maps,
                                                                     mutable=["batch_stats"])[0]
        gap = jnp.mean(self.maps, axis=(2, 3))
        np.testing.assert_allclose(fuse(True) - fuse(False), gap, atol=1e-5)
        self.assertGreater(float(jnp.abs(gap).max()), 0.1)
