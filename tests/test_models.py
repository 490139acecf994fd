"""Backbones and the multi-branch network: shapes, parameter counts, initialisation, batch norm, errors."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from mbde_jax import models
from mbde_jax.models import initializers, multibranch

# (feature map shape after the branch, trunk output shape) for a 32x32 input.
EXPECTED_SHAPES = {
    "resnet32": ((8, 8, 64), (16, 16, 32)),
    "resnet110": ((8, 8, 256), (16, 16, 128)),
    "wrn20_8": ((8, 8, 256), (16, 16, 128)),
    "vgg16": ((1, 1, 512), (2, 2, 512)),
    "densenet40_12": ((8, 8, 132), (8, 8, 60)),
}

# OKDDip's PyTorch models (models/model_cifar/*.py), counted with torch: sum(p.numel() for p in parameters()).
# Single networks: resnet.py, vgg.py, densenet.py; "4 branches" is the GL model minus W_L and W_E.
OKDDIP_SINGLE_COUNTS = {
    ("resnet32", 10): 466_906, ("resnet32", 100): 472_756,
    ("resnet110", 10): 1_147_738, ("resnet110", 100): 1_170_868,
    ("wrn20_8", 10): 6_848_090, ("wrn20_8", 100): 6_871_220,
    ("vgg16", 10): 15_253_578, ("vgg16", 100): 15_299_748,
    ("densenet40_12", 10): 176_122, ("densenet40_12", 100): 188_092,
}
OKDDIP_FOUR_BRANCH_COUNTS = {  # resnet_GL / vgg_GL with num_branches=4, minus 2 * d * d/8 (W_L, W_E)
    ("resnet32", 100): 1_554_272 - 2 * 64 * 8, ("resnet32", 10): 1_530_872 - 2 * 64 * 8,
    ("resnet110", 100): 3_874_016 - 2 * 256 * 32, ("wrn20_8", 100): 22_611_936 - 2 * 256 * 32,
    ("vgg16", 100): 38_342_608 - 2 * 512 * 64,
}

IMAGES = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)


def _init(model, images=IMAGES):
    return model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, images, train=False)


@functools.lru_cache(maxsize=None)
def _cached_init(model):
    """The output-shape tests' variables, once per model for the with/without-jit variants, made as training
    makes them (models.initializers: traced, then one small program of draws), not by a compiled model.init,
    which compiles a random-number program per variable (hundreds for a ResNet-110)."""
    treedef, leaves = initializers.describe(lambda: _init(model))
    draws = jax.jit(lambda seed: initializers.draw_standard(leaves, seed))(0)
    return initializers.assemble(treedef, leaves, {kind: np.asarray(draw) for kind, draw in draws.items()})


def _count(tree):
    return sum(x.size for x in jax.tree_util.tree_leaves(tree))


def _abstract_params(arch, num_classes, num_branches, shared_trunk=True):
    model = models.MultiBranchNet(arch, num_classes, num_branches, shared_trunk)
    return jax.eval_shape(lambda: _init(model))["params"]


class OutputShapeTest(parameterized.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(arch=sorted(EXPECTED_SHAPES), num_branches=(1, 2, 4))
    def test_output_shapes(self, arch, num_branches):
        model = models.MultiBranchNet(arch, num_classes=10, num_branches=num_branches)
        variables = _cached_init(model)

        @self.variant
        def forward(variables, images):
            return model.apply(variables, images, train=True, mutable=["batch_stats"],
                               rngs={"dropout": jax.random.key(2)})

        out, new_state = forward(variables, IMAGES)
        map_shape, trunk_shape = EXPECTED_SHAPES[arch]
        chex.assert_shape(out.logits, (num_branches, 2, 10))
        chex.assert_shape(out.feature_maps, (num_branches, 2, *map_shape))
        chex.assert_shape(out.pooled_features, (num_branches, 2, map_shape[-1]))
        chex.assert_shape(out.trunk_features, (2, *trunk_shape))
        chex.assert_tree_all_finite(out)
        self.assertEqual(set(new_state), {"batch_stats"})


class ParameterCountTest(parameterized.TestCase):

    @parameterized.parameters(*OKDDIP_SINGLE_COUNTS)
    def test_single_network_matches_okddip(self, arch, num_classes):
        params = _abstract_params(arch, num_classes, num_branches=1)
        self.assertEqual(_count(params), OKDDIP_SINGLE_COUNTS[arch, num_classes])

    @parameterized.parameters(*OKDDIP_FOUR_BRANCH_COUNTS)
    def test_four_branches_on_a_trunk_match_okddip(self, arch, num_classes):
        params = _abstract_params(arch, num_classes, num_branches=4)
        self.assertEqual(_count(params), OKDDIP_FOUR_BRANCH_COUNTS[arch, num_classes])

    def test_resnet32_cifar100_split(self):
        params = _abstract_params("resnet32", 100, num_branches=4)
        self.assertEqual(_count(params["trunk"]), 112_592)
        self.assertEqual(_count(params["branches"]), 4 * 360_164)
        self.assertEqual(_count(params), 1_553_248)

    def test_independent_networks_have_no_trunk(self):
        params = _abstract_params("resnet32", 100, num_branches=3, shared_trunk=False)
        self.assertNotIn("trunk", params)
        self.assertEqual(_count(params), 3 * 472_756)

    def test_densenet_branches_own_their_block3(self):
        # OKDDip's densenet_GL shares one block-3 object between branches; ours does not.
        single = _count(_abstract_params("densenet40_12", 100, num_branches=1))
        four = _abstract_params("densenet40_12", 100, num_branches=4)
        self.assertEqual(_count(four), _count(four["trunk"]) + 4 * (single - _count(four["trunk"])))
        self.assertEqual(_count(four), 404_824)


class InitialisationTest(parameterized.TestCase):

    def test_branches_start_different(self):
        params = _init(models.MultiBranchNet("resnet32", 10, num_branches=4))["params"]
        kernels = params["branches"]["branch"]["stage3"]["block0"]["conv1"]["kernel"]
        chex.assert_shape(kernels, (4, 3, 3, 32, 64))
        for i in range(4):
            for j in range(i + 1, 4):
                self.assertFalse(np.allclose(kernels[i], kernels[j]), f"branches {i} and {j} start equal")

    def test_conv_init_is_kaiming_normal_fan_out(self):
        params = _init(models.MultiBranchNet("resnet32", 10, num_branches=4))["params"]
        kernels = params["branches"]["branch"]["stage3"]["block0"]["conv2"]["kernel"]  # 3x3, 64 -> 64
        expected_std = np.sqrt(2.0 / (3 * 3 * 64))
        np.testing.assert_allclose(np.std(kernels), expected_std, rtol=0.05)

    def test_classifier_init_is_torch_uniform(self):
        params = _init(models.MultiBranchNet("resnet32", 100, num_branches=2))["params"]
        classifier = params["branches"]["branch"]["classifier"]
        bound = 1 / np.sqrt(64)
        for leaf in (classifier["kernel"], classifier["bias"]):
            self.assertLessEqual(float(jnp.max(jnp.abs(leaf))), bound)
            self.assertGreater(float(jnp.max(jnp.abs(leaf))), 0.9 * bound)

    def test_batch_norm_starts_at_identity(self):
        variables = _init(models.MultiBranchNet("resnet32", 10, num_branches=2))
        bn = variables["params"]["trunk"]["stem_bn"]
        np.testing.assert_array_equal(bn["scale"], 1.0)
        np.testing.assert_array_equal(bn["bias"], 0.0)
        stats = variables["batch_stats"]["trunk"]["stem_bn"]
        np.testing.assert_array_equal(stats["mean"], 0.0)
        np.testing.assert_array_equal(stats["var"], 1.0)


class BatchNormModeTest(parameterized.TestCase):

    def setUp(self):
        self.model = models.MultiBranchNet("resnet32", 10, num_branches=2)
        self.variables = _init(self.model)

    def test_training_mode_updates_statistics_with_pytorch_momentum(self):
        _, state = self.model.apply(self.variables, IMAGES, train=True, mutable=["batch_stats"])
        old = self.variables["batch_stats"]["trunk"]["stem_bn"]["mean"]
        new = state["batch_stats"]["trunk"]["stem_bn"]["mean"]
        self.assertFalse(np.allclose(old, new))
        # Every branch's statistics move, and differently (different weights, same input).
        branch_means = state["batch_stats"]["branches"]["branch"]["stage3"]["block0"]["bn1"]["mean"]
        self.assertFalse(np.allclose(branch_means[0], branch_means[1]))

    def test_momentum_is_pytorch_0_1(self):
        conv_out = jax.lax.conv_general_dilated(
            IMAGES, self.variables["params"]["trunk"]["stem_conv"]["kernel"], (1, 1), ((1, 1), (1, 1)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"))
        _, state = self.model.apply(self.variables, IMAGES, train=True, mutable=["batch_stats"])
        expected = 0.9 * 0.0 + 0.1 * np.mean(conv_out, axis=(0, 1, 2))
        np.testing.assert_allclose(state["batch_stats"]["trunk"]["stem_bn"]["mean"], expected, rtol=1e-4,
                                   atol=1e-6)

    def test_eval_mode_leaves_statistics_alone(self):
        _, state = self.model.apply(self.variables, IMAGES, train=False, mutable=["batch_stats"])
        chex.assert_trees_all_equal(state["batch_stats"], self.variables["batch_stats"])

    def test_eval_mode_output_does_not_depend_on_the_rest_of_the_batch(self):
        full = self.model.apply(self.variables, IMAGES, train=False).logits
        alone = self.model.apply(self.variables, IMAGES[:1], train=False).logits
        np.testing.assert_allclose(full[:, :1], alone, rtol=1e-5, atol=1e-5)


class ErrorTest(parameterized.TestCase):

    @parameterized.named_parameters(
        ("missing_batch_axis", (32, 32, 3)),
        ("channels_first", (2, 3, 32, 32)),
        ("grey", (2, 32, 32, 1)),
        ("rank5", (1, 2, 32, 32, 3)),
    )
    def test_bad_input_shape_is_named(self, shape):
        model = models.MultiBranchNet("resnet32", 10, num_branches=2)
        with self.assertRaisesRegex(ValueError, r"\[batch, height, width, 3\].*got shape"):
            _init(model, jnp.zeros(shape))

    def test_unknown_architecture_lists_valid_ones(self):
        model = models.MultiBranchNet("resnet33", 10, num_branches=2)
        with self.assertRaisesRegex(ValueError, r"config\.arch.*'resnet33'.*densenet40_12.*resnet32.*vgg16"):
            _init(model)

    def test_vgg_refuses_images_that_are_not_32x32(self):
        with self.assertRaisesRegex(ValueError, "vgg16 expects 32x32"):
            _init(models.MultiBranchNet("vgg16", 10, num_branches=1), jnp.zeros((1, 64, 64, 3)))


class ScaleGradientTest(parameterized.TestCase):

    def test_identity_forward_scaled_backward(self):
        x = jnp.arange(3.0)
        np.testing.assert_array_equal(multibranch.scale_gradient(x, 0.25), x)
        grad = jax.grad(lambda v: jnp.sum(multibranch.scale_gradient(v, 0.25) ** 2))(x)
        np.testing.assert_allclose(grad, 0.25 * 2 * x)


if __name__ == "__main__":
    pytest.main([__file__])
