"""Evaluation sums and summaries against NumPy: every head's cross-entropy, padding masked out."""

import jax.numpy as jnp
import numpy as np
import pytest

from mbde_jax import eval_metrics, methods
from mbde_jax.models.online_kd import ModelOutput


def _nll(logits, labels):
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return -log_probs[np.arange(len(labels)), labels]


def test_cross_entropy_of_every_head_with_padding_masked():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 4, 5)).astype(np.float32)  # 2 peers + leader, 4 examples (the last padding)
    labels = np.array([0, 3, 1, 4])
    mask = np.array([1, 1, 1, 0])
    method = methods.METHODS["mbde"]
    outputs = ModelOutput(logits=jnp.asarray(logits), feature_maps=None, pooled_features=None,
                          trunk_features=None, peer_targets=None, attention=None, gate=None, ensemble_logits=None)
    sums = eval_metrics.eval_sums(outputs, jnp.asarray(labels), jnp.asarray(mask), method)
    names = ["peer_0", "peer_1", "leader"]
    metrics = eval_metrics.summarize(eval_metrics.accumulate([sums]), names, deployed=2, has_leader=True)
    real = slice(0, 3)
    for index, name in enumerate(names):
        assert metrics[f"ce/{name}"] == pytest.approx(_nll(logits[index], labels)[real].mean(), rel=1e-5)
    ensemble = logits[:2].mean(0)  # the peers' mean logits; the leader is not a peer
    assert metrics["ce/peer_ensemble"] == pytest.approx(_nll(ensemble, labels)[real].mean(), rel=1e-5)
    assert metrics["ce/deployed"] == metrics["ce/leader"]
    assert metrics["num_examples"] == 3
