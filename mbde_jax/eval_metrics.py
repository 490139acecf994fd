"""Evaluation of every head a method has, over a whole split, padding masked out.

Heads reported (top-1 and top-5 accuracy, in %):
  each branch         'peer_0' .. 'peer_{m-2}' and 'leader' for methods with a group leader,
                      'branch_0' .. 'branch_{m-1}' otherwise;
  'peer_ensemble'     argmax of the mean of the peers' logits (all branches when there is no leader);
  'peer_mean'         the mean of the peers' accuracies;
  'gated_ensemble'    ONE's gate-weighted ensemble (method 'one' only);
  'deployed'          the head the method deploys (its name is in `deployed_head`).
Also: the mean cross-entropy (nats) 'ce/<head>' of every branch, of the ensembles and of the deployed head,
'diversity' (OKDDip's mean pairwise L2 distance of the peers' softmax outputs), and the attention matrix
[peers, peers] or ONE's gate [branches] averaged over the examples.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mbde_jax import losses
from mbde_jax.methods import Method
from mbde_jax.models.online_kd import ModelOutput


def head_names(method: Method, num_branches: int) -> list[str]:
    """Names of the branches in branch order."""
    if method.has_leader:
        return [f"peer_{i}" for i in range(num_branches - 1)] + ["leader"]
    return [f"branch_{i}" for i in range(num_branches)]


def deployed_branch(method: Method, num_branches: int) -> int:
    """Index of the deployed branch: the leader (last) or branch 0."""
    return num_branches - 1 if method.deployed == "leader" else 0


def _correct(logits: jax.Array, labels: jax.Array, mask: jax.Array, k: int) -> jax.Array:
    """Masked count of examples whose label is among the top k. logits [..., batch, classes] -> [...]."""
    k = min(k, logits.shape[-1])
    top_k = jax.lax.top_k(logits, k)[1]
    hit = jnp.any(top_k == labels[:, None], axis=-1)
    return jnp.sum(hit * mask, axis=-1)


def eval_sums(outputs: ModelOutput, labels: jax.Array, mask: jax.Array, method: Method) -> dict[str, jax.Array]:
    """Per-batch sums that add up over batches: correct counts, CE, diversity, attention and gate.

    Args:
      outputs: the eval-mode forward pass, logits [branch, batch, classes].
      labels: [batch]; mask: [batch], 1 for real examples and 0 for padding.
    """
    mask = mask.astype(jnp.float32)
    logits = outputs.logits.astype(jnp.float32)
    peers = logits[:-1] if method.has_leader else logits
    index = jnp.broadcast_to(labels[None, :, None], (logits.shape[0], labels.shape[0], 1))
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits, -1), index, -1)[..., 0]  # [m, B]

    def summed_nll(head_logits):  # [B, classes] -> the masked sum of the cross-entropy
        return jnp.sum(-jnp.take_along_axis(jax.nn.log_softmax(head_logits, -1), labels[:, None], -1)[:, 0] * mask)

    sums = {
        "count": jnp.sum(mask),
        "top1/branches": _correct(logits, labels, mask, 1),
        "top5/branches": _correct(logits, labels, mask, 5),
        "top1/peer_ensemble": _correct(jnp.mean(peers, axis=0), labels, mask, 1),
        "top5/peer_ensemble": _correct(jnp.mean(peers, axis=0), labels, mask, 5),
        "ce/branches": jnp.sum(nll * mask, axis=-1),
        "ce/peer_ensemble": summed_nll(jnp.mean(peers, axis=0)),
        "diversity": jnp.sum(losses.peer_diversity(peers) * mask),
    }
    if outputs.ensemble_logits is not None:
        sums["top1/gated_ensemble"] = _correct(outputs.ensemble_logits, labels, mask, 1)
        sums["top5/gated_ensemble"] = _correct(outputs.ensemble_logits, labels, mask, 5)
        sums["ce/gated_ensemble"] = summed_nll(outputs.ensemble_logits.astype(jnp.float32))
    if outputs.attention is not None:
        sums["attention"] = jnp.einsum("bac,b->ac", outputs.attention, mask)
    if outputs.gate is not None:
        sums["gate"] = jnp.einsum("bm,b->m", outputs.gate, mask)
    return sums


def accumulate(batch_sums: Iterable[dict[str, jax.Array]], into: dict[str, np.ndarray] | None = None
               ) -> dict[str, np.ndarray]:
    """Adds the per-batch sums on the host, in float64 (to `into`'s sums when given, in place)."""
    total: dict[str, np.ndarray] = {} if into is None else into
    for sums in batch_sums:
        for name, value in jax.device_get(sums).items():
            value = np.asarray(value, np.float64)
            total[name] = total[name] + value if name in total else value
    return total


def summarize(total: dict[str, np.ndarray], names: Sequence[str], deployed: int, has_leader: bool) -> dict:
    """Turns accumulated sums into the reported metrics (accuracies in %, JSON-friendly).

    Args:
      names: the branches' names in branch order (head_names); deployed: the deployed branch's index;
      has_leader: the last branch is a group leader, not a peer.
    """
    count = float(total["count"])
    if count == 0:
        raise ValueError("evaluation saw no examples (every mask was 0)")
    metrics: dict = {"num_examples": int(count)}
    for k in ("top1", "top5"):
        per_branch = 100.0 * total[f"{k}/branches"] / count
        for name, value in zip(names, per_branch):
            metrics[f"{k}/{name}"] = float(value)
        peer_values = per_branch[:-1] if has_leader else per_branch
        metrics[f"{k}/peer_mean"] = float(np.mean(peer_values))
        metrics[f"{k}/peer_ensemble"] = float(100.0 * total[f"{k}/peer_ensemble"] / count)
        if f"{k}/gated_ensemble" in total:
            metrics[f"{k}/gated_ensemble"] = float(100.0 * total[f"{k}/gated_ensemble"] / count)
        metrics[f"{k}/deployed"] = float(per_branch[deployed])
    for name, value in zip(names, total["ce/branches"] / count):
        metrics[f"ce/{name}"] = float(value)
    for ensemble in ("peer_ensemble", "gated_ensemble"):
        if f"ce/{ensemble}" in total:
            metrics[f"ce/{ensemble}"] = float(total[f"ce/{ensemble}"] / count)
    metrics["ce/deployed"] = float(total["ce/branches"][deployed] / count)
    metrics["diversity"] = float(total["diversity"] / count)
    if "attention" in total:
        metrics["attention"] = (total["attention"] / count).tolist()
    if "gate" in total:
        metrics["gate"] = (total["gate"] / count).tolist()
    metrics["deployed_head"] = names[deployed]
    return metrics

