"""Evaluation input: every example of a split exactly once per pass, in a fixed order, without augmentation.

The last batch is padded to the full batch size and carries mask 0 on the padding, so summing metrics times mask
counts every example once. An EvalInput is built once per run and reads its split once: the training loop
evaluates the same split again and again, and decoding it (for CINIC-10, 90,000 test PNGs) costs more than a
pass over it in memory. It holds the split as uint8 for its lifetime (CINIC-10's test split: 276 MB).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import jax
import numpy as np
from mbde_jax.data.tf_runtime import tf

from mbde_jax import sharding
from mbde_jax.data import info as dataset_info
from mbde_jax.data.augmentation import normalizer
from mbde_jax.data.global_arrays import device_batches, process_rows, row_positions
from mbde_jax.data.preparation import load_split, prepare
from mbde_jax.data.tf_runtime import plain_graph, tf_data_options


class EvalInput:
    """The batches of one evaluation split, read into memory once.

    Attributes:
        dataset: config name of the dataset.
        split: the tfds split read (the dataset's test split unless another was asked for).
        global_batch_size: examples per batch over all devices.
        mesh: the data mesh the batches are sharded over.
        num_examples: examples in the split; each is in exactly one batch of every pass.
    """

    def __init__(self, dataset: str, *, split: str | None = None, global_batch_size: int,
                 mesh: jax.sharding.Mesh, data_dir: str | None = None, manual_dir: str | None = None,
                 download: bool = True):
        """Checks the batch size and reads the split into memory (preparing the dataset if needed).

        Args:
            dataset: config name.
            split: tfds split; default the dataset's test split ('validation' is CINIC-10's other held-out split).
            global_batch_size: config.eval_batch_size; must be a multiple of the device count.
            mesh: the data mesh.
            data_dir, manual_dir, download: as for mbde_jax.data.train_input.TrainPipeline.
        """
        info = dataset_info.get_dataset_info(dataset)
        sharding.check_batch_divisible(global_batch_size, mesh, field="config.eval_batch_size")
        split = split or info.eval_split
        builder = prepare(dataset, data_dir=data_dir, manual_dir=manual_dir, download=download)
        self.dataset = dataset
        self.split = split
        self.global_batch_size = global_batch_size
        self.mesh = mesh
        # As for training: every process reads the split and builds its rows of each global batch, so batch k
        # holds examples k * B .. (k + 1) * B - 1 whatever the number of processes.
        self._images_tf, self._labels_tf = load_split(builder, split, info.image_shape)
        self.num_examples = int(self._labels_tf.shape[0])
        self._normalize = normalizer(dataset)
        rows = process_rows(global_batch_size, mesh)
        batch_starts = np.arange(math.ceil(self.num_examples / global_batch_size)) * global_batch_size
        positions = row_positions(batch_starts, rows)
        is_real = positions < self.num_examples
        indices = np.where(is_real, positions, 0)
        # Built once; every pass iterates it afresh.
        ds = tf.data.Dataset.from_tensor_slices((indices, is_real)).batch(rows.stop - rows.start)
        ds = ds.map(plain_graph(self._make_batch), num_parallel_calls=tf.data.AUTOTUNE)
        self._local_batches = ds.with_options(tf_data_options()).prefetch(2)

    def _make_batch(self, batch_indices: tf.Tensor, mask: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"image": self._normalize(tf.gather(self._images_tf, batch_indices)),
                "label": tf.gather(self._labels_tf, batch_indices) * tf.cast(mask, tf.int32),
                "mask": tf.cast(mask, tf.float32)}

    def batches(self) -> Iterator[dict[str, jax.Array]]:
        """Yields one pass over the split: the same batches, in the same order, at every call.

        Yields:
            {'image': float32 [B, H, W, C], 'label': int32 [B], 'mask': float32 [B]}, global jax.Arrays sharded on
            the batch axis (B = global_batch_size). mask is 1 for real examples and 0 for the padding that fills
            the last batch (padding repeats an example, with label and mask 0); summed over all batches it equals
            num_examples exactly.
        """
        return device_batches(self._local_batches.as_numpy_iterator(), self.mesh, self.global_batch_size)
