"""Training input: batches of one dataset, a pure function of (seed, epoch), resumable at any batch.

Every process reads the training split(s) once into host memory as uint8 (CIFAR: 150 MB; CINIC-10
train+validation: 553 MB) and builds only its own rows of each global batch. The order and augmentation of an
epoch come from its EpochPlan (mbde_jax/data/epoch_plan.py), so batch k of epoch e is the same whether the epoch
ran from its start or was resumed at k (`epoch_batches(e, start_batch=k)`), for any number of devices or
processes. The last partial batch of every epoch is dropped: the train step is jitted on static shapes, and
since each epoch reshuffles, every example is still seen, just not in every epoch.

Two pipelines make the same batches bit for bit: TrainPipeline augments on the host with tf.data;
DeviceTrainPipeline keeps the dataset on the devices and augments there (config.input_on_device).
"""

from __future__ import annotations

from collections.abc import Iterator

import jax
import numpy as np
from mbde_jax.data.tf_runtime import tf

from mbde_jax import sharding
from mbde_jax.data import info as dataset_info
from mbde_jax.data.augmentation import augment_batch, augment_on_device, normalization_table, normalizer
from mbde_jax.data.epoch_plan import EpochPlan, make_epoch_plan
from mbde_jax.data.global_arrays import device_batches, global_array, process_rows, row_positions
from mbde_jax.data.preparation import load_split, prepare
from mbde_jax.data.tf_runtime import plain_graph, tf_data_options

# Training split choices offered for CINIC-10 (config field cinic10_train_splits).
CINIC10_TRAIN_SPLITS = ("train", "train+validation")


class TrainPipeline:
    """Training batches of one dataset, a pure function of (seed, epoch), resumable at any batch.

    Attributes:
        dataset: config name of the dataset.
        train_splits: the tfds split expression read (e.g. 'train', 'train+validation').
        global_batch_size: examples per step over all devices.
        num_examples: training examples in the pool (every process holds all of them): the whole split, or its
            first `max_examples`.
        steps_per_epoch: full batches per epoch; the last partial batch is dropped (static shapes under jit; the
            reshuffle each epoch means every example is still used).
        images: uint8 [n, H, W, C] the training images, in the fixed order plans index into.
        labels: int32 [n] their labels.
    """

    def __init__(self, dataset: str, *, global_batch_size: int, seed: int, mesh: jax.sharding.Mesh,
                 data_dir: str | None = None, train_splits: str | None = None, manual_dir: str | None = None,
                 download: bool = True, max_examples: int = 0):
        """Reads the training data into memory (preparing the dataset if needed).

        Args:
            dataset: config name (cifar10, cifar100, cinic10, digits).
            global_batch_size: config.batch_size; must be a multiple of the device count.
            seed: config.seed.
            mesh: the data mesh (mbde_jax.sharding.make_data_mesh()).
            data_dir: config.data_dir, the tfds data directory.
            train_splits: tfds split(s) to train on; default the dataset's training split. For CINIC-10 one of
                'train' or 'train+validation' (config.cinic10_train_splits).
            manual_dir: where CINIC-10.tar.gz was put by hand; default <data_dir>/downloads/manual.
            download: whether a missing dataset may be downloaded.
            max_examples: train on the split's first this many examples (config.train_examples); 0: all.
        """
        info = dataset_info.get_dataset_info(dataset)
        sharding.check_batch_divisible(global_batch_size, mesh)
        train_splits = train_splits or info.train_split
        if dataset == "cinic10" and train_splits not in CINIC10_TRAIN_SPLITS:
            raise ValueError(f"config.cinic10_train_splits={train_splits!r}; allowed values are "
                             f"{list(CINIC10_TRAIN_SPLITS)}.")
        builder = prepare(dataset, data_dir=data_dir, manual_dir=manual_dir, download=download)
        self.dataset = dataset
        self.train_splits = train_splits
        self.global_batch_size = global_batch_size
        self.mesh = mesh
        self._seed = seed
        self._rows = process_rows(global_batch_size, mesh)
        # Every process holds the whole pool and builds its rows of each global batch, so a batch (and with it
        # every result) is the same for any number of processes and devices.
        self._images_tf, self._labels_tf = load_split(builder, train_splits, info.image_shape)
        if max_examples:
            available = int(self._labels_tf.shape[0])
            if max_examples > available:
                raise ValueError(f"config.train_examples={max_examples} is more than the {available} training examples "
                                 f"of {dataset} ({train_splits}); give at most {available}, or 0 for all of them.")
            self._images_tf, self._labels_tf = self._images_tf[:max_examples], self._labels_tf[:max_examples]
        self.num_examples = int(self._labels_tf.shape[0])
        self.steps_per_epoch = self.num_examples // global_batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"config.batch_size={global_batch_size} is larger than the {self.num_examples} training "
                             f"examples of {dataset} ({train_splits}); lower config.batch_size.")
        self._normalize = normalizer(dataset)

    @property
    def images(self) -> np.ndarray:
        # np.asarray views the CPU tensor's buffer; .numpy() would copy it.
        return np.asarray(self._images_tf)

    @property
    def labels(self) -> np.ndarray:
        return np.asarray(self._labels_tf)

    def epoch_plan(self, epoch: int) -> EpochPlan:
        """Order and augmentation of `epoch` over the whole pool (see make_epoch_plan); the same on every process."""
        return make_epoch_plan(self.num_examples, seed=self._seed, epoch=epoch)

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, start_batch) at which training resumes after `step` completed train steps."""
        return divmod(step, self.steps_per_epoch)

    def _check_start_batch(self, start_batch: int) -> None:
        if not 0 <= start_batch <= self.steps_per_epoch:
            raise ValueError(f"start_batch={start_batch} is outside [0, {self.steps_per_epoch}] (steps per epoch).")

    def _make_batch(self, indices: tf.Tensor, offset_y: tf.Tensor, offset_x: tf.Tensor,
                    flip: tf.Tensor) -> dict[str, tf.Tensor]:
        images = augment_batch(tf.gather(self._images_tf, indices), offset_y, offset_x, flip)
        return {"image": self._normalize(images), "label": tf.gather(self._labels_tf, indices)}

    def epoch_batches(self, epoch: int, start_batch: int = 0) -> Iterator[dict[str, jax.Array]]:
        """Yields batches start_batch, ..., steps_per_epoch - 1 of `epoch`.

        Args:
            epoch: 0-based epoch; the batches are a pure function of (seed, epoch).
            start_batch: the first batch to yield; the saved data position of a resumed run.

        Yields:
            {'image': float32 [B, H, W, C] normalised, 'label': int32 [B]}, global jax.Arrays sharded on the batch
            axis over the mesh (B = global_batch_size).
        """
        # Not a generator itself, so that a bad start_batch fails at the call, not at the first batch.
        self._check_start_batch(start_batch)
        plan = self.epoch_plan(epoch)
        batch_starts = np.arange(start_batch, self.steps_per_epoch) * self.global_batch_size
        positions = row_positions(batch_starts, self._rows)
        ds = tf.data.Dataset.from_tensor_slices((plan.indices[positions], plan.offset_y[positions],
                                                 plan.offset_x[positions], plan.flip[positions]))
        ds = ds.batch(self._rows.stop - self._rows.start, drop_remainder=True)
        ds = ds.map(plain_graph(self._make_batch), num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.with_options(tf_data_options()).prefetch(2)
        return device_batches(ds.as_numpy_iterator(), self.mesh, self.global_batch_size)


class DeviceTrainPipeline(TrainPipeline):
    """TrainPipeline whose uint8 training set stays on the devices (config.input_on_device).

    The dataset is copied once to every device (CIFAR: 150 MB; CINIC-10 train+validation: 553 MB); a batch is
    then gathered, cropped, mirrored and normalised there by one jitted call per step, from the same EpochPlan
    as the host pipeline, so the batches are the same bit for bit and keep every guarantee: a pure
    function of (seed, epoch), resumable at any batch. The host only slices the plan (4 x B integers per
    step), so a 2-core host cannot starve a GPU or TPU. In a multi-process run every process holds the same
    pool and plan, and each fills only its own devices.
    """

    def __init__(self, dataset: str, *, global_batch_size: int, seed: int, mesh: jax.sharding.Mesh, **kwargs):
        super().__init__(dataset, global_batch_size=global_batch_size, seed=seed, mesh=mesh, **kwargs)
        replicated = sharding.replicated_sharding(mesh)
        self._batched = sharding.batch_sharding(mesh)
        self._device_data = tuple(global_array(value, replicated)
                                  for value in (self.images, self.labels, normalization_table(dataset)))
        self._augment = jax.jit(augment_on_device, out_shardings=self._batched)

    def epoch_batches(self, epoch: int, start_batch: int = 0) -> Iterator[dict[str, jax.Array]]:
        """As TrainPipeline.epoch_batches; the batches are computed on the devices."""
        self._check_start_batch(start_batch)
        plan = self.epoch_plan(epoch)
        columns = (plan.indices.astype(np.int32), plan.offset_y, plan.offset_x, plan.flip)
        images, labels, table = self._device_data
        batch_size = self.global_batch_size

        def batches() -> Iterator[dict[str, jax.Array]]:
            for k in range(start_batch, self.steps_per_epoch):
                window = slice(k * batch_size, (k + 1) * batch_size)
                # Each device receives its share of the plan and gathers its own examples.
                parts = tuple(global_array(column[window], self._batched) for column in columns)
                yield self._augment(images, labels, *parts, table)

        return batches()
