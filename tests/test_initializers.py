"""The training's initialisation (models.initializers): every model is described, each variable follows its
initializer, and a variable's values depend on the seed, its path and its shape only."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbde_jax import models, trainer as trainer_lib
from mbde_jax.models import initializers
from mbde_jax.models.online_kd import HEADS, OnlineKDModel

SHAPE = (32, 32, 3)


def _initial(model, seed):
    description = trainer_lib.describe_variables(model, SHAPE)
    return jax.jit(lambda s: trainer_lib.initial_variables(description, s))(jnp.int32(seed))


def _paths(tree):
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in flat}


@pytest.mark.parametrize("arch", sorted(models.BACKBONES))
@pytest.mark.parametrize("heads", HEADS)
def test_every_variable_of_every_model_is_described(arch, heads):
    model = OnlineKDModel(arch, 10, num_branches=3, heads=heads)
    treedef, leaves = trainer_lib.describe_variables(model, SHAPE)
    plain = jax.eval_shape(lambda: model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)},
                                              jnp.zeros((1, *SHAPE)), train=False))
    assert treedef == jax.tree.structure(plain)
    assert [leaf.shape for leaf in leaves] == [x.shape for x in jax.tree.leaves(plain)]
    assert {leaf.kind for leaf in leaves} <= set(initializers.KINDS)
    assert all(leaf.scale > 0 for leaf in leaves if leaf.kind != "constant")


def test_each_variable_follows_its_initializer():
    params_and_stats = _initial(OnlineKDModel("resnet32", 100, num_branches=4, heads="ffm_attention"), 3)
    params, stats = params_and_stats["params"], params_and_stats["batch_stats"]
    branch = params["network"]["branches"]["branch"]
    kernels = branch["stage3"]["block0"]["conv2"]["kernel"]  # [branch, 3, 3, 64, 64], kaiming fan_out
    assert kernels.shape == (4, 3, 3, 64, 64)
    np.testing.assert_allclose(np.std(kernels), math.sqrt(2.0 / (3 * 3 * 64)), rtol=0.03)
    assert abs(float(np.mean(kernels))) < 0.003
    for i in range(4):
        np.testing.assert_allclose(np.std(kernels[i]), math.sqrt(2.0 / (3 * 3 * 64)), rtol=0.05)
        for j in range(i + 1, 4):
            assert not np.allclose(kernels[i], kernels[j]), f"branches {i} and {j} start equal"
    bound = 1 / math.sqrt(64)
    for leaf in (branch["classifier"]["kernel"], branch["classifier"]["bias"]):  # torch uniform
        assert float(jnp.max(jnp.abs(leaf))) <= bound
        assert float(jnp.max(jnp.abs(leaf))) > 0.9 * bound
    np.testing.assert_allclose(np.std(branch["classifier"]["kernel"]), bound / math.sqrt(3), rtol=0.05)
    np.testing.assert_array_equal(params["network"]["trunk"]["stem_bn"]["scale"], 1.0)
    np.testing.assert_array_equal(params["network"]["trunk"]["stem_bn"]["bias"], 0.0)
    np.testing.assert_array_equal(stats["network"]["trunk"]["stem_bn"]["mean"], 0.0)
    np.testing.assert_array_equal(stats["network"]["trunk"]["stem_bn"]["var"], 1.0)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params_and_stats))


def test_values_depend_on_the_seed_the_path_and_the_shape_only():
    mbde = _paths(_initial(OnlineKDModel("resnet8", 10, num_branches=3, heads="ffm_attention"), 0))
    okddip = _paths(_initial(OnlineKDModel("resnet8", 10, num_branches=3, heads="attention"), 0))
    wider = _paths(_initial(OnlineKDModel("resnet8", 10, num_branches=4, heads="attention"), 0))
    other_seed = _paths(_initial(OnlineKDModel("resnet8", 10, num_branches=3, heads="ffm_attention"), 1))
    network = [path for path in mbde if path.startswith("['params']['network']")]
    assert network and any("['ffm']" in path for path in mbde) and not any("['ffm']" in p for p in okddip)
    for path in network:  # the heads do not move the network's values
        np.testing.assert_array_equal(mbde[path], okddip[path])
        if "['branches']" in path:  # a fourth branch leaves the first three as they were
            np.testing.assert_array_equal(wider[path][:3], okddip[path])
    for path, values in mbde.items():
        if values.std() > 0:  # every random variable changes with the seed
            assert not np.any(values == other_seed[path]), path
    again = _paths(_initial(OnlineKDModel("resnet8", 10, num_branches=3, heads="ffm_attention"), 0))
    for path, values in mbde.items():
        np.testing.assert_array_equal(values, again[path])


def test_the_host_assembly_gives_the_traced_values():
    description = trainer_lib.describe_variables(OnlineKDModel("resnet8", 10, num_branches=2, heads="gate"), SHAPE)
    seed = jnp.int32(5)
    draws = {kind: np.asarray(x) for kind, x in jax.jit(
        lambda s: initializers.draw_standard(description[1], s))(seed).items()}
    assert set(draws) == {"normal", "uniform"}
    assert -1.0 <= draws["uniform"].min() and draws["uniform"].max() < 1.0
    on_host = initializers.assemble(*description, draws)
    traced = jax.jit(lambda s: trainer_lib.initial_variables(description, s))(seed)
    for a, b in zip(jax.tree.leaves(on_host), jax.tree.leaves(traced)):
        assert isinstance(a, np.ndarray)
        # XLA may fuse the scaling into the draw's program and round the product differently (seen on
        # jax 0.12 for VGG-16's variables: 2 ulp); training always assembles on the host.
        np.testing.assert_array_max_ulp(a, np.asarray(b), maxulp=2)


def test_a_variable_without_an_initializer_of_ours_is_named():
    class Plain(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            return nn.Dense(3, name="head")(x)  # flax's default initializers

    with pytest.raises(TypeError, match=r"\['params'\]\['head'\]\['bias'\].*Initializer"):
        trainer_lib.describe_variables(Plain(), SHAPE)
