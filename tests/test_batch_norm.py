"""layers.BatchNorm against PyTorch's nn.BatchNorm2d/1d (momentum 0.1, eps 1e-5), recomputed in NumPy float64."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbde_jax import sharding
from mbde_jax.models import layers

EPSILON = 1e-5
MOMENTUM = 0.9  # weight of the old running statistic: PyTorch's momentum 0.1


def _random(shape, seed, loc=0.0, scale=1.0):
    return np.random.default_rng(seed).normal(loc, scale, size=shape)


def np_train_step(x, scale, bias, running_mean, running_var):
    """PyTorch's training-mode batch norm in float64: (output, new running mean, new running var).

    Normalises with the biased batch variance; updates the running variance with the unbiased one.
    """
    x = np.asarray(x, np.float64)
    axes = tuple(range(x.ndim - 1))
    n = x.size // x.shape[-1]
    mean, var = x.mean(axis=axes), x.var(axis=axes)
    out = (x - mean) / np.sqrt(var + EPSILON) * scale + bias
    new_mean = MOMENTUM * running_mean + (1 - MOMENTUM) * mean
    new_var = MOMENTUM * running_var + (1 - MOMENTUM) * var * n / (n - 1)
    return out, new_mean, new_var


def _variables(features, seed):
    """Params and running statistics away from their initial values, so that the checks must read them."""
    return {
        "params": {"scale": jnp.asarray(1 + 0.3 * _random(features, seed), jnp.float32),
                   "bias": jnp.asarray(0.5 * _random(features, seed + 1), jnp.float32)},
        "batch_stats": {"mean": jnp.asarray(_random(features, seed + 2), jnp.float32),
                        "var": jnp.asarray(np.abs(1 + _random(features, seed + 3)), jnp.float32)},
    }


def _train_step(variables, x):
    """Our module in training mode: (output, updated batch_stats)."""
    out, updates = layers.batch_norm(True).apply(variables, x, mutable=["batch_stats"])
    return out, updates["batch_stats"]


def _as_float64(tree):
    return jax.tree_util.tree_map(lambda v: np.asarray(v, np.float64), tree)


@pytest.mark.parametrize("shape", [(4, 3, 3, 2), (5, 3)], ids=["2d_nhwc", "1d_batch_features"])
def test_training_step_matches_pytorch(shape):
    """(a) an NHWC map as BatchNorm2d; (e) [batch, features] as BatchNorm1d (ONE's gate)."""
    x = jnp.asarray(_random(shape, seed=0, loc=0.7, scale=2.0), jnp.float32)
    variables = _variables(shape[-1], seed=1)
    out, stats = jax.jit(_train_step)(variables, x)
    v = _as_float64(variables)
    expected_out, expected_mean, expected_var = np_train_step(
        x, v["params"]["scale"], v["params"]["bias"], v["batch_stats"]["mean"], v["batch_stats"]["var"])
    assert out.shape == shape and out.dtype == jnp.float32
    np.testing.assert_allclose(out, expected_out, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats["mean"], expected_mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(stats["var"], expected_var, rtol=1e-6, atol=1e-6)


def test_running_variance_is_updated_with_the_unbiased_batch_variance():
    """(b) var * n / (n - 1): PyTorch's update, which Flax's nn.BatchNorm (biased) does not make."""
    x = jnp.asarray(_random((4, 3, 3, 2), seed=2, scale=1.5), jnp.float32)
    n = 4 * 3 * 3
    initial = {"params": {"scale": jnp.ones(2), "bias": jnp.zeros(2)},
               "batch_stats": {"mean": jnp.zeros(2), "var": jnp.ones(2)}}
    _, stats = _train_step(initial, x)
    batch_var = np.asarray(x, np.float64).var(axis=(0, 1, 2))
    np.testing.assert_allclose(stats["var"], MOMENTUM + (1 - MOMENTUM) * batch_var * n / (n - 1), rtol=1e-6)
    # The biased update differs by more than the tolerance above, so the check tells the two apart...
    biased = MOMENTUM + (1 - MOMENTUM) * batch_var
    assert np.all(np.abs(np.asarray(stats["var"]) - biased) > 1e-3 * biased)
    # ...and Flax's own BatchNorm, with the same variables, makes the biased one.
    flax_bn = nn.BatchNorm(use_running_average=False, momentum=MOMENTUM, epsilon=EPSILON)
    _, flax_updates = flax_bn.apply(initial, x, mutable=["batch_stats"])
    np.testing.assert_allclose(flax_updates["batch_stats"]["var"], biased, rtol=1e-5)


def test_variance_keeps_its_precision_when_the_mean_is_large():
    """(c) mean 4000, std 1 in float32: the two-pass variance is accurate where E[x^2] - E[x]^2 is not."""
    x = jnp.asarray(_random((64, 4, 4, 2), seed=3, loc=4000.0, scale=1.0), jnp.float32)
    x64 = np.asarray(x, np.float64)
    true_var = x64.var(axis=(0, 1, 2))
    n = x64.size // 2
    # The fast form in float32, as Flax's nn.BatchNorm computes it by default, is badly off on this input.
    fast_var = jax.jit(lambda v: jnp.mean(v * v, axis=(0, 1, 2)) - jnp.mean(v, axis=(0, 1, 2)) ** 2)(x)
    assert np.all(np.abs(np.asarray(fast_var, np.float64) - true_var) > 0.1 * true_var)
    initial = {"params": {"scale": jnp.ones(2), "bias": jnp.zeros(2)},
               "batch_stats": {"mean": jnp.zeros(2), "var": jnp.zeros(2)}}
    out, stats = jax.jit(_train_step)(initial, x)
    running_var = np.asarray(stats["var"], np.float64)  # (1 - momentum) * unbiased batch variance
    np.testing.assert_allclose(running_var / (1 - MOMENTUM) * (n - 1) / n, true_var, rtol=1e-3)
    np.testing.assert_allclose(np.asarray(out, np.float64).var(axis=(0, 1, 2)), true_var / (true_var + EPSILON),
                               rtol=1e-3)
    expected_out, _, _ = np_train_step(x64, 1.0, 0.0, 0.0, 0.0)
    np.testing.assert_allclose(out, expected_out, atol=2e-3)


@pytest.mark.parametrize("shape", [(4, 3, 3, 2), (5, 3)], ids=["2d_nhwc", "1d_batch_features"])
def test_eval_mode_uses_the_running_statistics_and_leaves_them(shape):
    """(d) the running statistics normalise, whatever the batch, and are not updated."""
    x = jnp.asarray(_random(shape, seed=4, loc=-1.0, scale=3.0), jnp.float32)
    variables = _variables(shape[-1], seed=5)
    out, updates = layers.batch_norm(False).apply(variables, x, mutable=["batch_stats"])
    v = _as_float64(variables)
    expected = ((np.asarray(x, np.float64) - v["batch_stats"]["mean"]) / np.sqrt(v["batch_stats"]["var"] + EPSILON)
                * v["params"]["scale"] + v["params"]["bias"])
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    jax.tree_util.tree_map(np.testing.assert_array_equal, updates["batch_stats"], variables["batch_stats"])
    alone = layers.batch_norm(False).apply(variables, x[:1])
    np.testing.assert_allclose(alone, out[:1], rtol=1e-6, atol=1e-6)


def test_variables_are_flax_batch_norms_and_start_at_identity():
    x = jnp.zeros((2, 3, 3, 5), jnp.float32)
    ours = layers.batch_norm(True).init(jax.random.key(0), x)
    theirs = nn.BatchNorm(use_running_average=False).init(jax.random.key(0), x)
    assert jax.tree_util.tree_structure(ours) == jax.tree_util.tree_structure(theirs)
    assert jax.tree_util.tree_map(lambda v: (v.shape, v.dtype), ours) == jax.tree_util.tree_map(
        lambda v: (v.shape, v.dtype), theirs)
    for name, value in (("scale", 1.0), ("bias", 0.0)):
        np.testing.assert_array_equal(ours["params"][name], value)
    for name, value in (("mean", 0.0), ("var", 1.0)):  # initialising in training mode does not move them
        np.testing.assert_array_equal(ours["batch_stats"][name], value)


def test_bfloat16_input_gives_float32_statistics_and_output():
    x = jnp.asarray(_random((4, 3, 3, 2), seed=6, loc=2.0), jnp.bfloat16)
    variables = _variables(2, seed=7)
    out, stats = _train_step(variables, x)
    assert out.dtype == jnp.float32
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(stats))
    v = _as_float64(variables)
    expected_out, expected_mean, expected_var = np_train_step(
        np.asarray(x.astype(jnp.float32)), v["params"]["scale"], v["params"]["bias"], v["batch_stats"]["mean"],
        v["batch_stats"]["var"])
    np.testing.assert_allclose(out, expected_out, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats["var"], expected_var, rtol=1e-6)
    eval_out = layers.batch_norm(False).apply(variables, x)
    assert eval_out.dtype == jnp.float32


def test_a_single_value_per_channel_is_refused_in_training():
    variables = _variables(3, seed=8)
    with pytest.raises(ValueError, match="more than one value per channel"):
        _train_step(variables, jnp.ones((1, 3)))
    layers.batch_norm(True).init(jax.random.key(0), jnp.ones((1, 3)))  # initialising does not update


def test_statistics_cover_the_global_batch_on_a_data_mesh():
    """Under jit with the batch split over the devices, the statistics and n are those of the whole batch."""
    mesh = sharding.make_data_mesh()
    x = jnp.asarray(_random((2 * jax.device_count(), 3, 3, 2), seed=9, loc=1.0, scale=2.0), jnp.float32)
    variables = _variables(2, seed=10)
    out, stats = jax.jit(_train_step)(variables, jax.device_put(x, sharding.batch_sharding(mesh)))
    v = _as_float64(variables)
    expected_out, expected_mean, expected_var = np_train_step(
        x, v["params"]["scale"], v["params"]["bias"], v["batch_stats"]["mean"], v["batch_stats"]["var"])
    np.testing.assert_allclose(out, expected_out, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats["mean"], expected_mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(stats["var"], expected_var, rtol=1e-6, atol=1e-6)
