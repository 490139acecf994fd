"""Loss functions of online distillation: pure functions on arrays, no state, no config objects.

Every function accepts leading axes before [batch, classes] (e.g. a branch axis) and reduces only the batch
and class axes, so one call covers a whole stack of branches.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

CD_VARIANTS = ("classes", "features", "classes_squared", "features_squared", "cosine")


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean over the batch of -log softmax(logits)[label].

    Args:
      logits: [..., batch, classes].
      labels: [batch] integer class indices.
    Returns:
      [...]: one value per leading index.
    """
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    index = jnp.broadcast_to(labels.astype(jnp.int32)[:, None], (*log_probs.shape[:-1], 1))
    picked = jnp.take_along_axis(log_probs, index, axis=-1)[..., 0]
    return -jnp.mean(picked, axis=-1)


def kl_divergence(
    teacher_logits: jax.Array,
    student_logits: jax.Array,
    temperature: float,
    teacher_epsilon: float = 1e-7,
) -> jax.Array:
    """T^2 * mean over the batch of sum over classes p_t (log p_t - log p_s), the distillation loss.

    p_t = softmax(teacher / T) + teacher_epsilon and p_s = softmax(student / T). The epsilon reproduces
    OKDDip's KL_Loss, which adds 1e-7 to the teacher probabilities (inside the log too); 0 gives the exact
    KL divergence. Gradients flow into both arguments; detach the teacher with jax.lax.stop_gradient.

    Args:
      teacher_logits, student_logits: [..., batch, classes].
    Returns:
      [...].
    """
    t = jnp.asarray(temperature, jnp.float32)
    p_teacher = jax.nn.softmax(teacher_logits.astype(jnp.float32) / t, axis=-1) + teacher_epsilon
    log_p_student = jax.nn.log_softmax(student_logits.astype(jnp.float32) / t, axis=-1)
    per_example = jnp.sum(p_teacher * (jnp.log(p_teacher) - log_p_student), axis=-1)
    return t * t * jnp.mean(per_example, axis=-1)


def _safe_sqrt(x: jax.Array) -> jax.Array:
    """sqrt with a zero (not NaN) gradient at 0, so orthogonal classifiers do not poison the update."""
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def _peer_pairs(num_peers: int) -> tuple[jax.Array, jax.Array]:
    i, j = jnp.triu_indices(num_peers, k=1)
    return i, j


def classifier_diversification(peer_kernels: jax.Array, variant: str = "classes") -> jax.Array:
    """The Classifier Diversification (CD) loss over every pair of peer classifiers.

    Args:
      peer_kernels: [peers, features, classes], each peer's classifier weight (no bias), W_i.
      variant: one of CD_VARIANTS:
        'classes'           sum_{i<j} ||W_i^T W_j||_F   (classes x classes inner products; the default)
        'features'          sum_{i<j} ||W_i W_j^T||_F   (features x features)
        'classes_squared'   sum_{i<j} ||W_i^T W_j||_F^2
        'features_squared'  sum_{i<j} ||W_i W_j^T||_F^2
        'cosine'            sum_{i<j} mean_k |cos(W_i[:, k], W_j[:, k])|  (matching class vectors)
    Returns:
      A scalar; 0 with fewer than two peers.
    """
    if variant not in CD_VARIANTS:
        raise ValueError(f"config.cd_variant: unknown CD variant {variant!r}; valid variants are "
                         f"{list(CD_VARIANTS)}.")
    w = peer_kernels.astype(jnp.float32)
    if w.shape[0] < 2:
        return jnp.zeros((), jnp.float32)
    i, j = _peer_pairs(w.shape[0])
    w_i, w_j = w[i], w[j]  # [pairs, features, classes]
    if variant == "cosine":
        dots = jnp.sum(w_i * w_j, axis=1)
        norms = _safe_sqrt(jnp.sum(w_i * w_i, axis=1)) * _safe_sqrt(jnp.sum(w_j * w_j, axis=1))
        cosine = dots / jnp.maximum(norms, 1e-12)
        return jnp.sum(jnp.mean(jnp.abs(cosine), axis=-1))
    if variant.startswith("classes"):
        products = jnp.einsum("pfk,pfl->pkl", w_i, w_j)
    else:
        products = jnp.einsum("pfk,pgk->pfg", w_i, w_j)
    squared_norms = jnp.sum(products * products, axis=(1, 2))
    if variant.endswith("squared"):
        return jnp.sum(squared_norms)
    return jnp.sum(_safe_sqrt(squared_norms))


def peer_diversity(peer_logits: jax.Array) -> jax.Array:
    """OKDDip's diversity: per example, the mean over peer pairs of ||softmax(z_i) - softmax(z_j)||_2.

    Args:
      peer_logits: [peers, batch, classes].
    Returns:
      [batch]; average it over the examples (masking padding) for the reported figure. Zeros with fewer
      than two peers.
    """
    probs = jax.nn.softmax(peer_logits.astype(jnp.float32), axis=-1)
    if probs.shape[0] < 2:
        return jnp.zeros(probs.shape[1], jnp.float32)
    i, j = _peer_pairs(probs.shape[0])
    distances = _safe_sqrt(jnp.sum((probs[i] - probs[j]) ** 2, axis=-1))  # [pairs, batch]
    return jnp.mean(distances, axis=0)


def rampup_weight(epoch: jax.Array | int, rampup_epochs: int) -> jax.Array:
    """exp(-5 (1 - min(epoch, R) / R)^2), the sigmoid-shaped ramp-up of the distillation weight.

    `epoch` is the 0-based epoch (the weight changes per epoch, not per step); rampup_epochs = 0 gives 1.
    """
    if rampup_epochs <= 0:
        return jnp.ones((), jnp.float32)
    progress = jnp.clip(jnp.asarray(epoch, jnp.float32), 0.0, rampup_epochs) / rampup_epochs
    return jnp.exp(-5.0 * (1.0 - progress) ** 2)
