"""The epoch plan: the order and augmentation of every example of an epoch, a pure function of (seed, epoch).

The example order and every example's augmentation come from a counter-based hash (splitmix64) of (seed, epoch,
example position), so batch k of epoch e is the same whether the epoch ran from its start or was resumed at k,
on any machine, library version, number of devices or number of processes. Pure NumPy: the host and the device
train pipelines read the same plan.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# Zero padding on each side before the random crop (METHOD.md: 4-pixel pad + random 32x32 crop); the plan's crop
# offsets are positions in the padded image.
PAD = 4

# Stateless randomness: splitmix64 keyed by (seed, epoch, stream), counted by example position.
_GOLDEN = 0x9E3779B97F4A7C15  # 2^64 / golden ratio: the splitmix64 increment.
_MASK64 = (1 << 64) - 1


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 arrays (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _random_bits(count: int, *key_words: int) -> np.ndarray:
    """uint64 [count]: element i is a hash of (key_words, i), independent of `count`."""
    key = np.zeros(1, np.uint64)
    for word in key_words:
        key = _mix64(key ^ np.uint64(word & _MASK64)) + np.uint64(_GOLDEN)
    counters = np.arange(1, count + 1, dtype=np.uint64) * np.uint64(_GOLDEN)
    return _mix64(key + counters)


def _uniform_int(bits: np.ndarray, shift: int, width: int, upper: int) -> np.ndarray:
    """Integers in [0, upper) from `width` bits of `bits` starting at `shift` (multiply-shift, bias < upper/2^width)."""
    field = (bits >> np.uint64(shift)) & np.uint64((1 << width) - 1)
    return ((field * np.uint64(upper)) >> np.uint64(width)).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class EpochPlan:
    """Everything random about one epoch, by position in the epoch (the same on every process).

    Attributes:
        indices: int64 [n] the example at each position (a permutation of range(n)).
        offset_y: int32 [n] top row of the crop window in the padded image, in [0, 2 * PAD].
        offset_x: int32 [n] left column of the crop window in the padded image, in [0, 2 * PAD].
        flip: bool [n] whether the crop is mirrored left-right.
    """

    indices: np.ndarray
    offset_y: np.ndarray
    offset_x: np.ndarray
    flip: np.ndarray


# The third key word once was the process index (each process shuffled its own share); it stays 0 so that the
# plans, and so single-process results, are those of earlier versions.
_PLAN_KEY_WORD = 0


def make_epoch_plan(num_examples: int, *, seed: int, epoch: int) -> EpochPlan:
    """The order and augmentation of one epoch over the whole pool: a pure function of its arguments."""
    order_bits = _random_bits(num_examples, seed, epoch, _PLAN_KEY_WORD, 0)
    augment_bits = _random_bits(num_examples, seed, epoch, _PLAN_KEY_WORD, 1)
    return EpochPlan(
            indices=np.argsort(order_bits, kind="stable"),
            offset_y=_uniform_int(augment_bits, 0, 24, 2 * PAD + 1),
            offset_x=_uniform_int(augment_bits, 24, 24, 2 * PAD + 1),
            flip=((augment_bits >> np.uint64(63)) == 1))
