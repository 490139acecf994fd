"""config.compute_dtype: bfloat16 convolutions and matmuls, float32 parameters, statistics, logits and losses;
float32 (the default) unchanged."""

from __future__ import annotations

import pathlib

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest

from mbde_jax import config_utils, experiment, training

ROOT = pathlib.Path(__file__).resolve().parents[1]
IMAGES = jnp.asarray(np.random.default_rng(0).standard_normal((4, 32, 32, 3)), jnp.float32)
LABELS = jnp.asarray([1, 0, 7, 3])


def _config(**overrides):
    config = config_utils.load_sibling(str(ROOT / "configs" / "test.py"), "test").get_config()
    config.update_from_flattened_dict({"method": "mbde", **overrides})
    return config


def _variables(model):
    # Compiled as one program, as everything below: op by op, XLA's CPU compiler builds a program per operation
    # (bfloat16 ones included), which took minutes in all.
    return jax.jit(lambda: model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, IMAGES[:1],
                                      train=False))()


def _loss_fn(config):
    model, objective = experiment.resolve(config).model, experiment.resolve(config).objective
    variables = _variables(model)

    def loss(params):
        outputs, updates = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, IMAGES,
                                       train=True, mutable=["batch_stats"])
        value, _ = objective(outputs, LABELS, params, 0.5)
        return value, (outputs, updates["batch_stats"])

    return loss, variables


def _equations(jaxpr, primitive: str):
    """Every equation named `primitive` in a closed jaxpr, nested calls included."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == primitive:
            found.append(eqn)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            found.extend(_equations(sub, primitive))
    return found


def test_bfloat16_runs_convolutions_and_matmuls_in_bfloat16():
    loss, variables = _loss_fn(_config(compute_dtype="bfloat16"))
    jaxpr = jax.make_jaxpr(jax.grad(lambda p: loss(p)[0]))(variables["params"]).jaxpr
    convs = _equations(jaxpr, "conv_general_dilated")
    dots = _equations(jaxpr, "dot_general")
    assert convs and dots
    for eqn in convs:  # forward and backward convolutions alike
        assert {v.aval.dtype for v in eqn.invars} == {jnp.dtype(jnp.bfloat16)}, eqn
    # Every matmul of the model (classifier, attention projections) reads bfloat16; the losses' own
    # contractions (attention-weighted targets, CD's kernel products) stay float32.
    assert any({v.aval.dtype for v in eqn.invars} == {jnp.dtype(jnp.bfloat16)} for eqn in dots)


def test_bfloat16_keeps_parameters_statistics_logits_and_loss_in_float32():
    loss, variables = _loss_fn(_config(compute_dtype="bfloat16"))
    for leaf in jax.tree.leaves(variables):
        assert leaf.dtype == jnp.float32
    (value, (outputs, batch_stats)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
    assert value.dtype == jnp.float32 and np.isfinite(value)
    assert outputs.logits.dtype == outputs.peer_targets.dtype == jnp.float32
    for leaf in jax.tree.leaves(batch_stats) + jax.tree.leaves(grads):
        assert leaf.dtype == jnp.float32


def test_bfloat16_loss_is_close_to_float32():
    value32 = _loss_fn(_config())[0]
    value16 = _loss_fn(_config(compute_dtype="bfloat16"))[0]
    params = _variables(experiment.resolve(_config()).model)["params"]
    np.testing.assert_allclose(jax.jit(value16)(params)[0], jax.jit(value32)(params)[0], rtol=2e-2)


def test_float32_is_the_default_and_unchanged():
    config = _config()
    assert config.compute_dtype == "float32"
    model = experiment.resolve(config).model
    assert model == experiment.resolve(config).model.clone(dtype=jnp.float32)
    loss, variables = _loss_fn(config)
    jaxpr = jax.make_jaxpr(jax.grad(lambda p: loss(p)[0]))(variables["params"]).jaxpr
    for eqn in _equations(jaxpr, "conv_general_dilated") + _equations(jaxpr, "dot_general"):
        assert {v.aval.dtype for v in eqn.invars} == {jnp.dtype(jnp.float32)}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_train_step_keeps_a_float32_state(dtype):
    config = _config(compute_dtype=dtype)
    trainer = training.Trainer(experiment.resolve(config), steps_per_epoch=4)
    state = trainer.init_state()
    batch = {"image": jnp.tile(IMAGES, (2, 1, 1, 1)), "label": jnp.tile(LABELS, 2)}
    state, metrics = trainer.train_step(state, batch)
    assert np.isfinite(float(metrics["loss"])) and metrics["loss"].dtype == jnp.float32
    for leaf in jax.tree.leaves((state.params, state.batch_stats, state.opt_state)):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            assert leaf.dtype == jnp.float32
