"""The forms chosen for speed compute what the plain forms compute: the branch executions (vmap, unrolled,
scan), the materialised ReLU, the FFM's depthwise convolution as shifted multiply-adds; and the CPU device
split's choices."""

from __future__ import annotations

import os
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbde_jax import config_utils, experiment, sharding, training
from mbde_jax.models import ffm
from mbde_jax.models import layers

ROOT = pathlib.Path(__file__).resolve().parents[1]
IMAGES = jnp.asarray(np.random.default_rng(1).standard_normal((6, 32, 32, 3)), jnp.float32)
LABELS = jnp.asarray([1, 0, 7, 3, 9, 2])


def _config(**overrides):
    config = config_utils.load_sibling(str(ROOT / "configs" / "test.py"), "test").get_config()
    config.update_from_flattened_dict(overrides)
    return config


def _loss_and_grads(config, variables):
    """Loss, logits, updated batch statistics and parameter gradients of one training forward/backward."""
    model, objective = experiment.resolve(config).model, experiment.resolve(config).objective

    def loss(params):
        outputs, updates = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, IMAGES,
                                       train=True, mutable=["batch_stats"])
        return objective(outputs, LABELS, params, 0.5)[0], (outputs.logits, updates["batch_stats"])

    (value, (logits, stats)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
    return value, logits, stats, grads


def _initial_variables(config):
    trainer = training.Trainer(experiment.resolve(config))
    state = trainer.init_state()
    return {"params": state.params, "batch_stats": state.batch_stats}


@pytest.mark.parametrize("method", ["mbde", "dml"])
def test_branch_executions_agree(method):
    """The same initial variables, and from them the same results to float32 rounding."""
    initial = {execution: _initial_variables(_config(method=method, branch_execution=execution))
               for execution in ("unrolled", "vmap", "scan")}
    for execution in ("vmap", "scan"):
        for a, b in zip(jax.tree.leaves(initial[execution]), jax.tree.leaves(initial["unrolled"])):
            np.testing.assert_array_equal(a, b)
    results = {execution: _loss_and_grads(_config(method=method, branch_execution=execution), initial["unrolled"])
               for execution in ("unrolled", "vmap", "scan")}
    value, logits, stats, grads = results["unrolled"]
    for execution in ("vmap", "scan"):
        other_value, other_logits, other_stats, other_grads = results[execution]
        np.testing.assert_allclose(other_value, value, rtol=1e-5)
        np.testing.assert_allclose(other_logits, logits, rtol=1e-4, atol=1e-4)
        for a, b in zip(jax.tree.leaves(other_stats), jax.tree.leaves(stats)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
        assert jax.tree.structure(other_grads) == jax.tree.structure(grads)
        for a, b in zip(jax.tree.leaves(other_grads), jax.tree.leaves(grads)):
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=2e-5 * max(1.0, float(np.abs(b).max())))


def test_auto_branch_execution_is_unrolled_on_cpu_and_vmap_for_one_branch():
    assert jax.default_backend() == "cpu"
    assert experiment.resolve(_config(branch_execution="auto")).model.branch_execution == "unrolled"
    assert experiment.resolve(_config(method="vanilla", branch_execution="auto")).model.branch_execution == "vmap"
    assert experiment.resolve(_config(method="vanilla", branch_execution="scan")).model.branch_execution == "scan"


def test_relu_matches_nn_relu_and_its_gradient():
    x = jnp.asarray([-3.0, -0.0, 0.0, 1e-30, 2.5, jnp.inf, -jnp.inf, jnp.nan])
    y = layers.relu(x)
    np.testing.assert_array_equal(y[:6], nn.relu(x)[:6])
    assert y[6] == 0 and np.isnan(y[7])  # nn.relu(-inf) is 0 too; NaN stays NaN (the loss guard sees it)
    upstream = jnp.arange(1.0, 9.0)
    np.testing.assert_array_equal(jax.vjp(layers.relu, x)[1](upstream)[0][:7],
                                  jax.vjp(nn.relu, x)[1](upstream)[0][:7])
    z = jnp.asarray(np.random.default_rng(2).standard_normal((4, 5, 6)), jnp.float32)
    np.testing.assert_array_equal(jax.grad(lambda v: jnp.sum(layers.relu(v) ** 2))(z),
                                  jax.grad(lambda v: jnp.sum(nn.relu(v) ** 2))(z))


def test_depthwise_conv_matches_a_grouped_convolution():
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((3, 8, 8, 12)), jnp.float32)
    dy = jnp.asarray(rng.standard_normal((3, 8, 8, 12)), jnp.float32)
    module = ffm.DepthwiseConv3x3()
    params = module.init(jax.random.key(0), x)
    reference = nn.Conv(12, (3, 3), padding=((1, 1), (1, 1)), feature_group_count=12, use_bias=False,
                        kernel_init=layers.kaiming_normal_fan_out)
    # Same variables and the same initial values as the grouped nn.Conv it replaces.
    reference_params = reference.init(jax.random.key(0), x)
    np.testing.assert_array_equal(params["params"]["kernel"], reference_params["params"]["kernel"])
    y, vjp = jax.vjp(lambda p, v: module.apply(p, v), params, x)
    y_ref, vjp_ref = jax.vjp(lambda p, v: reference.apply(p, v), params, x)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(vjp(dy)), jax.tree.leaves(vjp_ref(dy))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cores,overrides,expected", [
    (2, {}, 2), (8, {}, 2), (1, {}, 1), (2, {"batch_size": 9}, 1), (2, {"eval_batch_size": 5}, 1),
    (2, {"cpu_devices": 3}, 3), (1, {"cpu_devices": 4}, 4)])
def test_cpu_device_count(monkeypatch, cores, overrides, expected):
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    assert sharding.auto_cpu_devices(_config(**overrides)) == expected


def test_an_explicit_host_device_count_is_left_alone():
    # The suite chose 2 devices in XLA_FLAGS (tests/conftest.py); the config must not override it.
    assert sharding.HOST_DEVICE_COUNT_FLAG in os.environ["XLA_FLAGS"]
    assert not sharding.configure_host_devices(_config(cpu_devices=1))
    assert jax.device_count() == 2
