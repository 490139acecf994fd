"""Every method's objective recomputed by hand (NumPy float64, from METHOD.md) on the model's own outputs,
the gradient flow each method promises, the ONE gate, and the config checks.

Models are resnet8 (configs/test.py's: the objectives and gradient paths are the same at any depth, and it
compiles in a fraction of resnet32's time) on 4 CIFAR-sized images with 10 classes; each distinct model is
traced and compiled once per process (functools.lru_cache), and its variables are drawn in NumPy with the
shapes of `model.init` (compiling the initialisation would cost seconds per model and tests nothing here).
"""

import dataclasses
import functools
import importlib.util
import pathlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized

from mbde_jax import experiment, losses, methods
from mbde_jax.models.online_kd import classifier_kernels
from test_ffm import FFM_PARAMS, np_attention, np_ffm
from test_losses import np_cd, np_cd_gradient, np_cross_entropy, np_kl, np_softmax

ALL_METHODS = ("mbde", "okddip", "mbde_no_cd", "mbde_no_ffm", "one", "clilr", "dml", "individual", "vanilla")
LEADER_METHODS = ("mbde", "okddip", "mbde_no_cd", "mbde_no_ffm")
CD_METHODS = ("mbde", "mbde_no_ffm")
IMAGES = jnp.asarray(np.random.default_rng(0).standard_normal((4, 32, 32, 3)), jnp.float32)
LABELS = jnp.asarray([3, 0, 7, 3])
RAMP = 0.37
# Loss settings away from the defaults, so that a term that ignores its setting shows: cd_weight and the
# teacher epsilon are large enough for their effect to be visible in a float32 total.
SETTINGS = dict(temperature=2.5, kd_weight=0.7, cd_weight=0.3, kl_teacher_epsilon=1e-3)
# What is left of gradients of size <= 1 that are computed twice and subtracted: float32 rounding.
CANCELLATION = 1e-6


def _load_default_config():
    spec = importlib.util.spec_from_file_location(
        "mbde_default_config", pathlib.Path(__file__).resolve().parents[1] / "configs" / "default.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config


get_default_config = _load_default_config()


def make_config(method, **overrides):
    config = get_default_config()
    config.dataset = "cifar10"
    config.arch = "resnet8"
    config.method = method
    for name, value in overrides.items():
        setattr(config, name, value)
    return config


def _path_names(path):
    return [getattr(key, "key", None) for key in path]


@functools.lru_cache(maxsize=None)
def _variables(model):
    """float32 variables with the shapes of model.init: He-normal kernels, BN scale ~1 and biases ~0, jittered."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), IMAGES, train=False))
    rng = np.random.default_rng(1)

    def draw(path, leaf):
        names = _path_names(path)
        if names[-1] in ("mean", "var"):  # running statistics: unused in training mode
            return jnp.full(leaf.shape, float(names[-1] == "var"), jnp.float32)
        noise = rng.standard_normal(leaf.shape)
        if names[-1] == "scale":
            return jnp.asarray(1.0 + 0.1 * noise, jnp.float32)
        if names[-1] == "bias":
            return jnp.asarray(0.1 * noise, jnp.float32)
        fan_in = np.prod(leaf.shape[1 if "branches" in names else 0:-1])  # no vmapped branch axis
        return jnp.asarray(noise * np.sqrt(2.0 / fan_in), jnp.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def _apply(model, params, batch_stats):
    outputs, _ = model.apply({"params": params, "batch_stats": batch_stats}, IMAGES, train=True,
                             mutable=["batch_stats"])
    return outputs


@functools.lru_cache(maxsize=None)
def _outputs(model):
    """The training-mode forward pass."""
    variables = _variables(model)
    return jax.jit(functools.partial(_apply, model))(variables["params"], variables["batch_stats"])


def _gradients(model, variables, objectives):
    """The gradient of each objective (outputs, labels, params, ramp) -> loss w.r.t. the params: jax.jacrev of
    their stacked values, one forward pass and one batched backward pass. Leaves [len(objectives), ...]."""
    def values(params):
        outputs = _apply(model, params, variables["batch_stats"])
        return jnp.stack([objective(outputs, LABELS, params, RAMP) for objective in objectives])

    return jax.jit(jax.jacrev(values))(variables["params"])


def _loss(config):
    objective = experiment.resolve(config).objective
    return lambda *args: objective(*args)[0]


@functools.lru_cache(maxsize=None)
def _mbde_gradients():
    """Gradients of the mbde objective: as configured, with detached targets, and CD's share alone.

    CD's share is the gradient of objective(cd_weight=1) - objective(cd_weight=0) on the same forward pass: the
    CE and KD terms are the same in both, so their gradients cancel (up to float32 rounding, CANCELLATION)
    and CD's gradient is left.
    """
    model = experiment.resolve(make_config("mbde", **SETTINGS)).model
    with_cd, without_cd = (_loss(make_config("mbde", **{**SETTINGS, "cd_weight": w})) for w in (1.0, 0.0))
    objectives = {
        "default": _loss(make_config("mbde", **SETTINGS)),
        "detached": _loss(make_config("mbde", detach_targets=True, **SETTINGS)),
        "cd_only": lambda *args: with_cd(*args) - without_cd(*args),
    }
    stacked = _gradients(model, _variables(model), tuple(objectives.values()))
    return {name: jax.tree_util.tree_map(lambda g, i=i: g[i], stacked) for i, name in enumerate(objectives)}


def np_terms(method, outputs, params, config, ramp):
    """The named parts of `method`'s loss computed from their definitions (METHOD.md) in float64, and the
    weight each part has in the total: {name: (value, weight)}."""
    t, eps = config.temperature, config.kl_teacher_epsilon
    logits, labels = np.asarray(outputs.logits, np.float64), np.asarray(LABELS)
    kd_weight = config.kd_weight * (1.0 if method == "dml" else ramp)
    terms = {"ce": (np_cross_entropy(logits, labels).sum(), 1.0)}
    if method in LEADER_METHODS:
        peers, leader = logits[:-1], logits[-1]
        terms["kd_first_level"] = (np_kl(outputs.peer_targets, peers, t, eps).sum(), kd_weight)
        terms["kd_second_level"] = (np_kl(peers.mean(axis=0), leader, t, eps), kd_weight)
        if method in CD_METHODS:
            terms["cd"] = (np_cd(classifier_kernels(params)[:-1], config.cd_variant), config.cd_weight)
        else:
            terms["cd"] = (0.0, 0.0)
    elif method == "one":
        ensemble = np.asarray(outputs.ensemble_logits, np.float64)
        terms["ce_ensemble"] = (np_cross_entropy(ensemble, labels), 1.0)
        terms["kd"] = (sum(np_kl(ensemble, student, t, eps) for student in logits), kd_weight)
    elif method in ("clilr", "dml"):
        others = [np.delete(logits, i, axis=0).mean(axis=0) for i in range(len(logits))]
        terms["kd"] = (sum(np_kl(teacher, student, t, eps) for teacher, student in zip(others, logits)), kd_weight)
    return terms


def _run_objective(method, ramp=RAMP, **overrides):
    config = make_config(method, **{**SETTINGS, **overrides})
    model = experiment.resolve(config).model
    params, outputs = _variables(model)["params"], _outputs(model)
    loss, metrics = experiment.resolve(config).objective(outputs, LABELS, params, ramp)
    return config, model, params, outputs, loss, metrics


class ObjectiveTest(parameterized.TestCase):

    @parameterized.parameters(*[(method, "classes") for method in ALL_METHODS],
                              *[("mbde", variant) for variant in losses.CD_VARIANTS[1:]],
                              ("mbde_no_ffm", "cosine"))
    def test_total_is_the_sum_of_its_parts(self, method, cd_variant):
        config, _, params, outputs, loss, metrics = _run_objective(method, cd_variant=cd_variant)
        terms = np_terms(method, outputs, params, config, RAMP)
        for name, (value, _) in terms.items():
            np.testing.assert_allclose(metrics[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
        expected = sum(value * weight for value, weight in terms.values())
        np.testing.assert_allclose(loss, expected, rtol=1e-5)
        np.testing.assert_allclose(metrics["loss"], loss, rtol=0)
        # Every term matters: the KD terms and CD are not negligible next to CE.
        for name, (value, weight) in terms.items():
            if weight:
                self.assertGreater(value * weight, 1e-3 * expected, msg=name)

    @parameterized.parameters(*ALL_METHODS)
    def test_ramp_weight_scales_only_the_kd_terms(self, method):
        config, _, params, outputs, loss_low, metrics_low = _run_objective(method, ramp=0.2)
        *_, loss_high, metrics_high = _run_objective(method, ramp=0.9)
        kd = sum(value for name, (value, _) in np_terms(method, outputs, params, config, 1.0).items()
                 if name.startswith("kd"))
        ramped = method != "dml" and kd > 0
        expected_difference = config.kd_weight * (0.9 - 0.2) * kd if ramped else 0.0
        np.testing.assert_allclose(loss_high - loss_low, expected_difference, rtol=1e-4, atol=1e-5)
        for name in ("ce", "ce_ensemble", "cd"):
            if name in metrics_low:
                np.testing.assert_array_equal(metrics_high[name], metrics_low[name], err_msg=name)
        if method == "dml":
            self.assertGreater(kd, 0.01)
            np.testing.assert_array_equal(metrics_low["ramp_weight"], 1.0)

    @parameterized.parameters("mbde", "okddip")
    def test_peer_targets_recomputed_from_params(self, method):
        _, _, params, outputs, *_ = _run_objective(method)
        peers = len(outputs.logits) - 1
        if method == "mbde":  # the FFM fuses the peers' last-block maps
            features = np_ffm(outputs.feature_maps[:peers], params["ffm"], None, residual=False)
        else:  # OKDDip: the peers' pooled features
            features = outputs.pooled_features[:peers]
        targets, attention = np_attention(features, outputs.logits[:peers],
                                          params["peer_attention"]["query"]["kernel"],
                                          params["peer_attention"]["key"]["kernel"])
        np.testing.assert_allclose(outputs.attention, attention, rtol=1e-3, atol=1e-5)
        np.testing.assert_allclose(outputs.peer_targets, targets, rtol=1e-3, atol=1e-4)

    def test_methods_registry(self):
        self.assertCountEqual(methods.METHODS, ALL_METHODS)


class GradientFlowTest(parameterized.TestCase):

    def _heads(self, grads):
        return {"W_L": grads["peer_attention"]["query"]["kernel"],
                "W_E": grads["peer_attention"]["key"]["kernel"],
                **{"/".join(_path_names(path)): leaf
                   for path, leaf in jax.tree_util.tree_flatten_with_path(grads["ffm"])[0]}}

    def test_attention_and_ffm_learn_through_the_targets(self):
        heads = self._heads(_mbde_gradients()["default"])
        self.assertLen(heads, 8)  # W_L, W_E and the FFM's 6 tensors
        for name, grad in heads.items():
            self.assertGreater(float(jnp.abs(grad).max()), 1e-6, msg=name)

    def test_detached_targets_freeze_attention_and_ffm(self):
        grads = _mbde_gradients()["detached"]
        for name, grad in self._heads(grads).items():
            np.testing.assert_array_equal(grad, np.zeros_like(grad), err_msg=name)
        self.assertGreater(float(jnp.abs(classifier_kernels(grads)).max()), 1e-6)

    def test_cd_gradient_reaches_every_peer_classifier_and_never_the_leader(self):
        grads = _mbde_gradients()["cd_only"]
        kernels = classifier_kernels(_variables(experiment.resolve(make_config("mbde")).model)["params"])
        kernel_grads = classifier_kernels(grads)
        np.testing.assert_allclose(kernel_grads[:-1], np_cd_gradient(kernels[:-1]), rtol=1e-4, atol=1e-6)
        for peer in range(len(kernel_grads) - 1):
            self.assertGreater(float(jnp.abs(kernel_grads[peer]).min()), 0.0)
        # CE and KD cancel up to float32 rounding of their gradients (~1e-7 of their scale); what is left
        # elsewhere must be that rounding, not a gradient: not on the leader's kernel, the classifier biases,
        # the backbone or the heads.
        full = _mbde_gradients()["default"]
        self.assertGreater(float(jnp.abs(classifier_kernels(full)[-1]).max()), 1e-2)
        for path, grad in jax.tree_util.tree_flatten_with_path(grads)[0]:
            names = _path_names(path)
            if names[-2:] == ["classifier", "kernel"]:
                grad = grad[-1]
            np.testing.assert_allclose(grad, np.zeros_like(grad), atol=CANCELLATION, err_msg=str(names))

    def test_clilr_divides_the_trunk_gradient_by_m(self):
        config = make_config("clilr", **SETTINGS)
        model = experiment.resolve(config).model
        self.assertEqual(model.trunk_grad_scale, 1.0 / config.num_branches)
        unscaled = dataclasses.replace(model, trunk_grad_scale=1.0)
        variables = _variables(model)
        objective = (_loss(config),)
        scaled_grads, unscaled_grads = (jax.tree_util.tree_map(lambda g: g[0], _gradients(m, variables, objective))
                                        for m in (model, unscaled))
        trunk, trunk_unscaled = scaled_grads["network"]["trunk"], unscaled_grads["network"]["trunk"]
        self.assertGreater(max(float(jnp.abs(g).max()) for g in jax.tree_util.tree_leaves(trunk)), 1e-6)
        chex.assert_trees_all_close(trunk, jax.tree_util.tree_map(lambda g: g / config.num_branches,
                                                                  trunk_unscaled), rtol=1e-5, atol=1e-9)
        chex.assert_trees_all_close(scaled_grads["network"]["branches"], unscaled_grads["network"]["branches"],
                                    rtol=1e-5, atol=1e-9)


class OneGateTest(parameterized.TestCase):

    def test_ensemble_is_the_gated_sum_and_gate_matches_numpy(self):
        _, model, params, outputs, *_ = _run_objective("one")
        gate, logits = np.asarray(outputs.gate, np.float64), np.asarray(outputs.logits, np.float64)
        chex.assert_shape(outputs.gate, (len(LABELS), model.num_branches))
        np.testing.assert_allclose(gate.sum(axis=-1), np.ones(len(LABELS)), rtol=1e-6)
        expected = sum(gate[:, i:i + 1] * logits[i] for i in range(model.num_branches))
        np.testing.assert_allclose(outputs.ensemble_logits, expected, rtol=1e-5, atol=1e-5)
        # softmax(ReLU(BN(Linear(GAP(trunk feature))))), BN on the batch's statistics in training.
        gate_params = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), params["gate"])
        scores = (np.asarray(outputs.trunk_features, np.float64).mean(axis=(1, 2)) @ gate_params["linear"]["kernel"]
                  + gate_params["linear"]["bias"])
        scores = (scores - scores.mean(axis=0)) / np.sqrt(scores.var(axis=0) + 1e-5)
        scores = np.maximum(scores * gate_params["bn"]["scale"] + gate_params["bn"]["bias"], 0.0)
        np.testing.assert_allclose(gate, np_softmax(scores), rtol=1e-4, atol=1e-5)
        self.assertGreater(float(gate.max() - gate.min()), 0.05)  # not a uniform gate


class ConfigTest(parameterized.TestCase):

    def test_unknown_method_lists_valid_ones(self):
        with self.assertRaisesRegex(ValueError, "config.method='mbdee': must be one of") as raised:
            experiment.resolve(make_config("mbdee"))
        for method in ALL_METHODS:
            self.assertIn(repr(method), str(raised.exception))

    def test_unknown_cd_variant_lists_valid_ones(self):
        with self.assertRaisesRegex(ValueError, "config.cd_variant='rows': must be one of") as raised:
            experiment.resolve(make_config("mbde", cd_variant="rows")).objective
        for variant in ("classes", "features", "classes_squared", "features_squared", "cosine"):
            self.assertIn(repr(variant), str(raised.exception))

    @parameterized.parameters(*[(method, 3) for method in LEADER_METHODS],
                              *[(method, 2) for method in ("one", "clilr", "dml")])
    def test_too_few_branches_are_rejected(self, method, minimum):
        with self.assertRaisesRegex(ValueError, f"num_branches >= {minimum}; got {minimum - 1}"):
            experiment.resolve(make_config(method, num_branches=minimum - 1)).model
        self.assertEqual(experiment.resolve(make_config(method, num_branches=minimum)).model.num_branches,
                         minimum)

    def test_single_network_methods(self):
        self.assertEqual(experiment.resolve(make_config("individual", num_branches=1)).model.num_branches, 1)
        self.assertEqual(experiment.resolve(make_config("vanilla", num_branches=4)).model.num_branches, 1)

    @parameterized.parameters(("mbde", "ffm_attention", True, 1.0), ("mbde_no_cd", "ffm_attention", True, 1.0),
                              ("okddip", "attention", True, 1.0), ("mbde_no_ffm", "attention", True, 1.0),
                              ("one", "gate", True, 1.0), ("clilr", "none", True, 0.25),
                              ("dml", "none", False, 1.0), ("individual", "none", True, 1.0),
                              ("vanilla", "none", True, 1.0))
    def test_each_method_builds_its_model(self, method, heads, shared_trunk, trunk_grad_scale):
        model = experiment.resolve(make_config(method)).model
        self.assertEqual((model.heads, model.shared_trunk, model.trunk_grad_scale, model.num_classes),
                         (heads, shared_trunk, trunk_grad_scale, 10))

    def test_clilr_on_separate_networks_rescales_nothing(self):
        self.assertEqual(experiment.resolve(make_config("clilr", shared_trunk=False)).model.trunk_grad_scale, 1.0)

    def test_loss_settings_follow_the_config(self):
        # The dataclass defaults are the config's defaults ...
        self.assertEqual(experiment.resolve(make_config("mbde")).objective.keywords["settings"],
                         methods.LossSettings())
        # ... and every field is read from the config.
        fields = dict(temperature=4.0, kd_weight=0.5, cd_weight=2.0, cd_variant="cosine", teacher_epsilon=0.0,
                      detach_targets=True)
        config = make_config("mbde", **{("kl_teacher_epsilon" if name == "teacher_epsilon" else name): value
                                        for name, value in fields.items()})
        self.assertEqual(experiment.resolve(config).objective.keywords["settings"], methods.LossSettings(**fields))

    def test_mbde_heads_have_the_expected_size(self):
        params = _variables(experiment.resolve(make_config("mbde")).model)["params"]
        count = lambda tree: sum(x.size for x in jax.tree_util.tree_leaves(tree))  # noqa: E731
        self.assertEqual(count(params["ffm"]), FFM_PARAMS)
        self.assertEqual(count(params["peer_attention"]), 2 * 64 * (64 // 8))
