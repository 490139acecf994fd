"""The loss functions against NumPy float64 references written from METHOD.md, with and without jit.

The `np_*` references are also used by tests/test_methods.py to recompute every objective by hand.
"""

import functools
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized

from mbde_jax import losses

# float32 rounding of log p_t - log p_s is a few 1e-7 per class on these inputs; a
# KL value is a p_t-weighted sum of them times T^2, so it is exact to within T^2 * 1e-6.
KL_ROUNDING = 1e-6


def _random(shape, seed, scale=1.0):
    return scale * np.random.default_rng(seed).standard_normal(shape)


def _f32(x):
    return jnp.asarray(x, jnp.float32)


def _f64(x):
    """What the float32 function sees, widened back to float64 for the NumPy reference."""
    return np.asarray(_f32(x), np.float64)


def np_log_softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def np_softmax(logits):
    return np.exp(np_log_softmax(logits))


def np_cross_entropy(logits, labels):
    """[..., batch, classes] -> [...]: mean over the batch of -log softmax(z)[label]."""
    log_probs = np_log_softmax(np.asarray(logits, np.float64))
    return -log_probs[..., np.arange(len(labels)), labels].mean(axis=-1)


def np_kl(teacher, student, temperature, epsilon=1e-7):
    """[..., batch, classes] -> [...]: T^2 * batch mean of sum_k p_t log(p_t / p_s), p_t (+epsilon)."""
    p_t = np_softmax(np.asarray(teacher, np.float64) / temperature) + epsilon
    p_s = np_softmax(np.asarray(student, np.float64) / temperature)
    return temperature**2 * np.sum(p_t * np.log(p_t / p_s), axis=-1).mean(axis=-1)


def np_cd(kernels, variant="classes"):
    """METHOD.md's CD over peer pairs i < j of kernels [peers, features, classes]."""
    kernels = np.asarray(kernels, np.float64)
    total = 0.0
    for i, j in itertools.combinations(range(len(kernels)), 2):
        w_i, w_j = kernels[i], kernels[j]
        if variant == "cosine":
            cosines = [w_i[:, k] @ w_j[:, k] / (np.linalg.norm(w_i[:, k]) * np.linalg.norm(w_j[:, k]))
                       for k in range(w_i.shape[1])]
            total += np.mean(np.abs(cosines))
            continue
        product = w_i.T @ w_j if variant.startswith("classes") else w_i @ w_j.T
        norm = np.linalg.norm(product, "fro")
        total += norm**2 if variant.endswith("squared") else norm
    return total


def np_cd_gradient(kernels):
    """d/dW_i of sum_{i<j} ||W_i^T W_j||_F = sum_{j != i} W_j W_j^T W_i / ||W_i^T W_j||_F."""
    kernels = np.asarray(kernels, np.float64)
    grads = np.zeros_like(kernels)
    for i, j in itertools.permutations(range(len(kernels)), 2):
        grads[i] += kernels[j] @ kernels[j].T @ kernels[i] / np.linalg.norm(kernels[i].T @ kernels[j], "fro")
    return grads


def np_diversity(peer_logits):
    """[peers, batch, classes] -> [batch]: mean over peer pairs of ||softmax(z_i) - softmax(z_j)||_2."""
    probs = np_softmax(np.asarray(peer_logits, np.float64))
    pairs = itertools.combinations(range(len(probs)), 2)
    return np.mean([np.linalg.norm(probs[i] - probs[j], axis=-1) for i, j in pairs], axis=0)


def np_rampup(epoch, rampup_epochs):
    return 1.0 if rampup_epochs == 0 else np.exp(-5.0 * (1.0 - min(epoch, rampup_epochs) / rampup_epochs) ** 2)


def _orthogonal_kernels(num_peers=3, features=12, classes=9):
    """Peer kernels on disjoint feature rows AND disjoint class columns: W_i^T W_j = 0 and W_i W_j^T = 0."""
    kernels = np.zeros((num_peers, features, classes))
    rows, cols = features // num_peers, classes // num_peers
    for p in range(num_peers):
        kernels[p, p * rows:(p + 1) * rows, p * cols:(p + 1) * cols] = _random((rows, cols), seed=p)
    return kernels


class CrossEntropyTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(((5, 10),), ((2, 3, 5, 10),))
    def test_matches_numpy(self, shape):
        logits = _random(shape, seed=1, scale=3.0)
        labels = np.array([0, 9, 3, 3, 7])
        value = self.variant(losses.cross_entropy)(_f32(logits), jnp.asarray(labels))
        chex.assert_shape(value, shape[:-2])
        np.testing.assert_allclose(value, np_cross_entropy(_f64(logits), labels), rtol=1e-5, atol=1e-6)


class KLDivergenceTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters((1.0, 0.0, ()), (3.0, 1e-7, (3,)), (3.0, 1e-3, (2, 3)))
    def test_matches_direct_computation(self, temperature, epsilon, leading):
        teacher = _random((*leading, 6, 10), seed=2, scale=3.0)
        student = _random((*leading, 6, 10), seed=3, scale=3.0)
        kl = self.variant(functools.partial(losses.kl_divergence, temperature=temperature,
                                            teacher_epsilon=epsilon))
        value = kl(_f32(teacher), _f32(student))
        chex.assert_shape(value, leading)
        expected = np_kl(_f64(teacher), _f64(student), temperature, epsilon)
        assert np.all(expected > 0.1)  # the inputs are far apart: a relative check means something
        np.testing.assert_allclose(value, expected, rtol=1e-5)

    def test_default_epsilon_is_okddips(self):
        teacher, student = _random((4, 10), seed=4), _random((4, 10), seed=5)
        np.testing.assert_allclose(losses.kl_divergence(_f32(teacher), _f32(student), 3.0),
                                   np_kl(_f64(teacher), _f64(student), 3.0, epsilon=1e-7), rtol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(10, 100)
    def test_zero_for_equal_logits_without_epsilon(self, num_classes):
        logits = _f32(_random((8, num_classes), seed=6, scale=3.0))
        value = self.variant(lambda z: losses.kl_divergence(z, z, 3.0, teacher_epsilon=0.0))(logits)
        self.assertLessEqual(abs(float(value)), 9.0 * KL_ROUNDING)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(10, 100)
    def test_equal_logits_with_default_epsilon_within_derived_bound(self, num_classes):
        # With p_t = p + e, q = p: KL = T^2 mean_b sum_k (p_k + e) log(1 + e / p_k). From
        # x / (1 + x) <= log(1 + x) <= x:  T^2 K e  <=  KL  <=  T^2 (K e + e^2 mean_b sum_k 1 / p_k).
        temperature, epsilon = 3.0, 1e-7
        logits = _random((8, num_classes), seed=7, scale=3.0)
        value = float(self.variant(lambda z: losses.kl_divergence(z, z, temperature))(_f32(logits)))
        p = np_softmax(_f64(logits) / temperature)
        lower = temperature**2 * num_classes * epsilon
        upper = temperature**2 * (num_classes * epsilon + epsilon**2 * np.mean(np.sum(1.0 / p, axis=-1)))
        slack = temperature**2 * KL_ROUNDING
        self.assertBetween(value, lower - slack, upper + slack)
        self.assertLess(upper + slack, 1e-3)  # "close to zero"

    def test_gradients_reach_student_and_teacher(self):
        # d/dz_s = T (sum_k p_t,k * p_s - p_t) / batch; the teacher is not detached (OKDDip detaches nothing).
        temperature, epsilon = 3.0, 1e-7
        teacher, student = _random((4, 10), seed=8, scale=2.0), _random((4, 10), seed=9, scale=2.0)
        grad_teacher, grad_student = jax.jit(jax.grad(losses.kl_divergence, argnums=(0, 1)), static_argnums=(2, 3))(
            _f32(teacher), _f32(student), temperature, epsilon)
        p_t = np_softmax(_f64(teacher) / temperature) + epsilon
        p_s = np_softmax(_f64(student) / temperature)
        expected = temperature * (p_t.sum(axis=-1, keepdims=True) * p_s - p_t) / len(teacher)
        np.testing.assert_allclose(grad_student, expected, rtol=1e-4, atol=1e-7)
        self.assertGreater(float(jnp.abs(grad_teacher).max()), 1e-3)


class ClassifierDiversificationTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(*losses.CD_VARIANTS)
    def test_matches_numpy(self, variant):
        kernels = _random((4, 16, 10), seed=10, scale=0.3)  # 6 pairs
        value = self.variant(functools.partial(losses.classifier_diversification, variant=variant))(
            _f32(kernels))
        chex.assert_shape(value, ())
        np.testing.assert_allclose(value, np_cd(_f64(kernels), variant), rtol=1e-5)

    @parameterized.parameters(*losses.CD_VARIANTS)
    def test_zero_for_orthogonal_kernels_positive_otherwise(self, variant):
        kernels = _orthogonal_kernels()
        self.assertEqual(np_cd(kernels, "classes") + np_cd(kernels, "features"), 0.0)  # the set-up
        cd = functools.partial(losses.classifier_diversification, variant=variant)
        self.assertEqual(float(cd(_f32(kernels))), 0.0)
        # At zero the loss has no NaN gradient (the sqrt is guarded).
        chex.assert_tree_all_finite(jax.jit(jax.grad(cd))(_f32(kernels)))
        self.assertGreater(float(cd(_f32(_random(kernels.shape, seed=11)))), 0.0)

    def test_gradient_matches_numpy(self):
        kernels = _random((3, 16, 10), seed=12, scale=0.3)
        grads = jax.jit(jax.grad(losses.classifier_diversification))(_f32(kernels))
        np.testing.assert_allclose(grads, np_cd_gradient(_f64(kernels)), rtol=1e-4, atol=1e-6)

    def test_single_peer_gives_zero(self):
        self.assertEqual(float(losses.classifier_diversification(_f32(_random((1, 8, 5), seed=13)))), 0.0)

    def test_unknown_variant_lists_valid_ones(self):
        with self.assertRaisesRegex(ValueError, "unknown CD variant 'rows'") as raised:
            losses.classifier_diversification(_f32(_random((3, 8, 5), seed=14)), "rows")
        for variant in losses.CD_VARIANTS:
            self.assertIn(repr(variant), str(raised.exception))
        self.assertLen(losses.CD_VARIANTS, 5)


class PeerDiversityTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(2, 4)
    def test_matches_numpy(self, num_peers):
        logits = _random((num_peers, 6, 10), seed=15, scale=2.0)
        value = self.variant(losses.peer_diversity)(_f32(logits))
        chex.assert_shape(value, (6,))
        np.testing.assert_allclose(value, np_diversity(_f64(logits)), rtol=1e-5, atol=1e-7)

    def test_zero_for_identical_peers_and_single_peer(self):
        logits = np.broadcast_to(_random((1, 6, 10), seed=16), (3, 6, 10))
        np.testing.assert_array_equal(losses.peer_diversity(_f32(logits)), np.zeros(6))
        np.testing.assert_array_equal(losses.peer_diversity(_f32(logits[:1])), np.zeros(6))


class RampupTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters((0, -5.0), (20, -5.0 * 0.75**2), (40, -1.25), (80, 0.0), (200, 0.0))
    def test_hand_values(self, epoch, log_expected):
        expected = np.exp(log_expected)
        value = self.variant(functools.partial(losses.rampup_weight, rampup_epochs=80))(jnp.asarray(epoch))
        np.testing.assert_allclose(value, expected, rtol=1e-6)
        np.testing.assert_allclose(np_rampup(epoch, 80), expected, rtol=1e-12)

    @parameterized.parameters(0, 7, 300)
    def test_no_rampup_gives_one(self, epoch):
        self.assertEqual(float(losses.rampup_weight(epoch, 0)), 1.0)
