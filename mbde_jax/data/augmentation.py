"""Training augmentation and per-channel normalisation, on the host (TensorFlow) and on the devices (XLA).

Augmentation: 4-pixel zero pad, random 32x32 crop, horizontal flip with probability 1/2, at the offsets and flips
of an EpochPlan; then per-channel normalisation with the constants in mbde_jax/data/info.py. Evaluation images
are normalised only. The host and the device versions give the same batches bit for bit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from mbde_jax.data.tf_runtime import tf

from mbde_jax.data import info as dataset_info
from mbde_jax.data.epoch_plan import PAD


def augment_batch(images: tf.Tensor, offset_y: tf.Tensor, offset_x: tf.Tensor, flip: tf.Tensor) -> tf.Tensor:
    """Zero-pads by PAD, crops a window of the original size at the given offsets, mirrors where `flip`.

    Args:
        images: uint8 [B, H, W, C].
        offset_y, offset_x: int32 [B] window corner in the padded image, in [0, 2 * PAD].
        flip: bool [B].

    Returns:
        uint8 [B, H, W, C].
    """
    height, width = images.shape[1], images.shape[2]
    padded = tf.pad(images, [[0, 0], [PAD, PAD], [PAD, PAD], [0, 0]])
    rows = offset_y[:, None] + tf.range(height, dtype=tf.int32)[None]  # [B, H]
    cols = offset_x[:, None] + tf.range(width, dtype=tf.int32)[None]  # [B, W]
    # Mirroring the window = reading its columns right to left.
    cols = tf.where(flip[:, None], tf.reverse(cols, axis=[1]), cols)
    window_rows = tf.gather(padded, rows, axis=1, batch_dims=1)  # [B, H, W + 2 PAD, C]
    return tf.gather(window_rows, cols, axis=2, batch_dims=1)  # [B, H, W, C]


def normalizer(dataset: str):
    """Returns fn(uint8 [..., C]) -> float32 [..., C]: (x / 255 - mean) / std with the dataset's constants."""
    scale, shift = (tf.constant(c) for c in normalization_constants(dataset))
    return lambda images: tf.cast(images, tf.float32) * scale + shift


def normalization_constants(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) float32 [C] with normalised = uint8 * scale + shift, the same values `normalizer` uses."""
    info = dataset_info.get_dataset_info(dataset)
    return (np.asarray([1.0 / (255.0 * s) for s in info.std], np.float32),
            np.asarray([-m / s for m, s in zip(info.mean, info.std)], np.float32))


def normalization_table(dataset: str) -> np.ndarray:
    """float32 [256, C]: entry [v, c] is the normalised value of byte v in channel c, rounded as the host does.

    The device pipeline looks values up instead of computing them: XLA contracts x * scale + shift into a
    fused multiply-add (one rounding, where TensorFlow and NumPy round twice), which would move a third of the
    pixels by one ulp.
    """
    scale, shift = normalization_constants(dataset)
    return np.arange(256, dtype=np.float32)[:, None] * scale + shift


def augment_on_device(images: jax.Array, labels: jax.Array, indices: jax.Array, offset_y: jax.Array,
                      offset_x: jax.Array, flip: jax.Array, table: jax.Array) -> dict[str, jax.Array]:
    """The training batch of augment_batch + normalisation, computed by XLA from a device-resident dataset.

    Args:
        images: uint8 [n, H, W, C], labels: int32 [n], the whole training set (on every device).
        indices, offset_y, offset_x, flip: [B] the batch's slice of an EpochPlan.
        table: float32 [256, C] from normalization_table.

    Returns:
        {'image': float32 [B, H, W, C], 'label': int32 [B]}: the same gather, pad, window and mirror as the host
        pipeline and the same normalised values, so the batches equal TrainPipeline's bit for bit.
    """
    height, width, channels = images.shape[1:]
    padded = jnp.pad(images[indices], ((0, 0), (PAD, PAD), (PAD, PAD), (0, 0)))
    windows = jax.vmap(lambda image, y, x: jax.lax.dynamic_slice(image, (y, x, 0), (height, width, channels)))(
            padded, offset_y, offset_x)
    windows = jnp.where(flip[:, None, None, None], windows[:, :, ::-1, :], windows)
    return {"image": table[windows.astype(jnp.int32), jnp.arange(channels)], "label": labels[indices]}
