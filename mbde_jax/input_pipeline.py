"""Input pipelines: tensorflow-datasets -> tf.data -> global jax.Arrays sharded on the batch axis.

Training (TrainPipeline): every process reads the training split(s) once into host memory as uint8 (CIFAR:
150 MB; CINIC-10 train+validation: 553 MB) and builds only its own rows of each global batch (`process_rows`:
the rows its devices hold). An epoch is a pure function of (config seed, epoch): the example order and every
example's augmentation come from a counter-based hash of (seed, epoch, example position), so batch k of epoch
e is the same whether the epoch ran from its start or was resumed at k (`epoch_batches(e, start_batch=k)`), on
any machine, library version, number of devices or number of processes.
Augmentation: 4-pixel zero pad, random 32x32 crop, horizontal flip with probability 1/2; then per-channel
normalisation with the constants in mbde_jax/data/info.py. The last partial batch of every epoch is
dropped: the train step is jitted on static shapes, and since each epoch reshuffles, every example is still
seen, just not in every epoch.

Evaluation (eval_batches): no augmentation; every example exactly once. The last batch is padded to the full
batch size and carries mask 0 on the padding, so summing metrics times mask counts every example once.

Datasets that are not prepared are prepared on first use when their download host answers. When it does not,
`prepare` fails within seconds (tfds's own retries would take minutes) with a message that says which dataset,
which directory was searched, and what command or manual step fixes it.

TensorFlow here only feeds data, so it is kept off any GPU (tf.config.set_visible_devices([], 'GPU'), before it
initialises a device) and on a small thread budget so that it does not starve the XLA train step:
  * MBDE_TF_THREADS (environment variable, default half the CPU cores, at least 1) sizes TensorFlow's
    inter-op and intra-op thread pools and the private thread pool of every tf.data pipeline made here;
  * each tf.data op runs single-threaded inside (max_intra_op_parallelism = 1): batches are produced whole, in
    parallel with the train step, rather than each op fanning out over every core.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import logging
import math
import os
import re
import socket
import threading
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from mbde_jax import distributed, sharding
from mbde_jax.data import info as dataset_info
from mbde_jax.data import register_builders

TF_THREADS = max(1, int(os.environ.get("MBDE_TF_THREADS", (os.cpu_count() or 2) // 2)))

# Zero padding on each side before the random crop (METHOD.md: 4-pixel pad + random 32x32 crop).
PAD = 4
# Seconds to wait for a download host before declaring it unreachable.
PROBE_TIMEOUT_S = 5.0
# Where the tfds catalog builders download from; the host of the URL is what `prepare` probes. CINIC-10's
# comes from mbde_jax.data.cinic10.ARCHIVE; 'digits' is inside scikit-learn. Tests point these at a closed
# local port.
DOWNLOAD_URLS: dict[str, str] = {
        "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
}
# Training split choices offered for CINIC-10 (config field cinic10_train_splits).
CINIC10_TRAIN_SPLITS = ("train", "train+validation")

_GOLDEN = 0x9E3779B97F4A7C15  # 2^64 / golden ratio: the splitmix64 increment.
_MASK64 = (1 << 64) - 1


def _configure_tensorflow() -> None:
    """Hides GPUs from TensorFlow and caps its threads; must run before TensorFlow initialises its runtime."""
    try:
        tf.config.set_visible_devices([], "GPU")
        tf.config.threading.set_inter_op_parallelism_threads(TF_THREADS)
        tf.config.threading.set_intra_op_parallelism_threads(TF_THREADS)
    except RuntimeError as e:  # Someone used TensorFlow first; the settings can no longer change.
        logging.warning("TensorFlow was initialised before mbde_jax.input_pipeline could configure it: %s", e)


_configure_tensorflow()


def _tf_data_options(threads: int = TF_THREADS) -> tf.data.Options:
    """Options of every tf.data pipeline here: `threads` private threads, one per op, deterministic order."""
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
    # The order of examples is part of the result (a resumed run must see the same batches).
    options.deterministic = True
    return options


# --------------------------------------------------------------------------------------------------------------
# Preparation, with a fast failure when the data can be neither found nor downloaded.


class DatasetUnavailableError(RuntimeError):
    """A dataset is not prepared and cannot be prepared from here."""


def resolve_data_dir(data_dir: str | None) -> str:
    """The tfds data directory to use: `data_dir`, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    return os.path.abspath(os.path.expanduser(data_dir or tfds.core.constants.get_default_data_dir()))


def default_manual_dir(data_dir: str) -> str:
    """tfds's default manual directory for a data directory: <data_dir>/downloads/manual."""
    return os.path.join(data_dir, "downloads", "manual")


def _probe(url: str, timeout_s: float) -> str | None:
    """Returns None when a TCP connection to the URL's host (or to the HTTP(S) proxy, if one is configured for it)
    opens within `timeout_s`, else the reason it did not.

    The connection is tried in a daemon thread so that a hanging DNS lookup, which socket timeouts do not cover,
    cannot hold the caller past the deadline.
    """
    parsed = urllib.parse.urlsplit(url)
    target = parsed
    proxy = urllib.request.getproxies().get(parsed.scheme)
    if proxy and not urllib.request.proxy_bypass(parsed.hostname or ""):
        target = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    host = target.hostname or ""
    port = target.port or (443 if target.scheme == "https" else 80)
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            outcome.append(None)
        except OSError as e:
            outcome.append(f"{type(e).__name__}: {e}")

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout_s + 1.0)
    where = f"{host}:{port}" + (" (proxy)" if target is not parsed else "")
    if not outcome:
        return f"{where} did not answer within {timeout_s:g} s"
    return None if outcome[0] is None else f"{where} unreachable ({outcome[0]})"


def _unavailable_message(dataset: str, builder: tfds.core.DatasetBuilder, data_dir: str, manual_dir: str,
                         reason: str) -> str:
    lines = [f"Dataset '{dataset}' is not prepared in the data directory {data_dir} "
             f"(searched {builder.data_dir}), and it cannot be downloaded: {reason}."]
    if dataset == "cinic10":
        from mbde_jax.data import cinic10  # pylint: disable=import-outside-toplevel
        archive = cinic10.ARCHIVE
        lines += [f"Its archive is not in the manual directory either ({os.path.join(manual_dir, archive.filename)}).",
                  "To fix it: download the archive on any machine with network access,",
                  f"    {archive.url}",
                  f"put it (not extracted) at {os.path.join(manual_dir, archive.filename)}, then run",
                  f"    python -m mbde_jax.data prepare cinic10 --data_dir {data_dir} --manual_dir {manual_dir}"]
    else:
        lines += ["To fix it: on a machine with network access run",
                  f"    python -m mbde_jax.data prepare {dataset} --data_dir <DIR>",
                  f"then copy <DIR>/{builder.name} to {os.path.join(data_dir, builder.name)} on this machine "
                  "(or set config.data_dir to a directory that holds it)."]
    lines.append("To try the code with no network at all, use dataset 'digits' (bundled with scikit-learn).")
    return "\n".join(lines)


def prepare(dataset: str, *, data_dir: str | None = None, manual_dir: str | None = None,
            download: bool = True) -> tfds.core.DatasetBuilder:
    """Returns the tfds builder of `dataset`, prepared in `data_dir`, preparing it first if needed.

    Args:
        dataset: a config dataset name (cifar10, cifar100, cinic10, digits).
        data_dir: tfds data directory; default $TFDS_DATA_DIR or ~/tensorflow_datasets.
        manual_dir: where a manually downloaded archive (CINIC-10.tar.gz) is; default <data_dir>/downloads/manual.
        download: whether a missing dataset may be downloaded.

    Raises:
        ValueError: unknown dataset name (the message lists the valid ones).
        DatasetUnavailableError: not prepared and its download host does not answer within PROBE_TIMEOUT_S
            (or download=False); the message says what to do.
        mbde_jax.data.cinic10.ArchiveError: the CINIC-10 archive is truncated, corrupted or not the release.
    """
    info = dataset_info.get_dataset_info(dataset)
    register_builders()
    data_dir = resolve_data_dir(data_dir)
    manual_dir = os.path.abspath(os.path.expanduser(manual_dir)) if manual_dir else default_manual_dir(data_dir)
    builder = tfds.builder(info.tfds_name, data_dir=data_dir)
    if not distributed.is_multi_process():
        return _prepare_here(dataset, builder, data_dir, manual_dir, download)
    if distributed.all_processes(_is_prepared(builder)):
        return builder
    # Process 0 prepares first; the others then find it prepared on a shared disk, or prepare their own copy on
    # a host's local disk, without two processes writing one folder at once.
    if jax.process_index() == 0:
        _prepare_here(dataset, builder, data_dir, manual_dir, download)
    distributed.barrier(f"mbde_prepare_{dataset}")
    if jax.process_index() != 0:
        _prepare_here(dataset, builder, data_dir, manual_dir, download)
    return builder


def _is_prepared(builder: tfds.core.DatasetBuilder) -> bool:
    # Checking for the metadata file first spares the user tfds's warning about an incomplete folder.
    return (builder.data_path / "dataset_info.json").exists() and builder.is_prepared()


def _prepare_here(dataset: str, builder: tfds.core.DatasetBuilder, data_dir: str, manual_dir: str,
                  download: bool) -> tfds.core.DatasetBuilder:
    """Prepares `builder` in this process unless it is prepared already; returns it."""
    if _is_prepared(builder):
        return builder
    url = DOWNLOAD_URLS.get(dataset)
    if dataset == "cinic10":
        from mbde_jax.data import cinic10  # pylint: disable=import-outside-toplevel
        # No network needed when the archive is in the manual directory.
        url = None if os.path.exists(os.path.join(manual_dir, cinic10.ARCHIVE.filename)) else cinic10.ARCHIVE.url
    if url is not None:
        reason = "downloads are disabled (download=False)" if not download else _probe(url, PROBE_TIMEOUT_S)
        if reason is not None:
            raise DatasetUnavailableError(_unavailable_message(dataset, builder, data_dir, manual_dir, reason))
    logging.info("Preparing %s in %s", dataset, builder.data_dir)
    # try_download_gcs=False: fetch from the original source only, the host just probed.
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            manual_dir=manual_dir, try_download_gcs=False))
    return builder


# --------------------------------------------------------------------------------------------------------------
# Stateless randomness: splitmix64 keyed by (seed, epoch, stream), counted by example position.


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


# --------------------------------------------------------------------------------------------------------------
# Image operations (TensorFlow, batched).


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


def _normalizer(dataset: str):
    """Returns fn(uint8 [..., C]) -> float32 [..., C]: (x / 255 - mean) / std with the dataset's constants."""
    scale, shift = (tf.constant(c) for c in normalization_constants(dataset))
    return lambda images: tf.cast(images, tf.float32) * scale + shift


# --------------------------------------------------------------------------------------------------------------
# Reading splits and feeding devices.


def _plain_graph(fn):
    """`fn` traced as it is, without AutoGraph's source rewrite: the map functions have no Python control flow
    over tensors, and the rewrite (gast) warns on Python 3.13 and costs time at every trace."""
    return tf.autograph.experimental.do_not_convert(fn)


def _load_split(builder: tfds.core.DatasetBuilder, split, image_shape: tuple[int, int, int]
                ) -> tuple[tf.Tensor, tf.Tensor]:
    """Decodes a (sub)split into memory, in the builder's fixed order.

    Returns:
        images uint8 [N, H, W, C], labels int32 [N], as CPU tensors the tf.data pipelines gather from.
    """
    # Decoding (PNG, for CINIC-10 180,000 of them) happens once, before training: all cores may help.
    ds = builder.as_dataset(split=split, shuffle_files=False,
                            read_config=tfds.ReadConfig(options=_tf_data_options(os.cpu_count() or 1)))
    ds = ds.map(_plain_graph(lambda ex: (ex["image"], tf.cast(ex["label"], tf.int32)))).batch(1024).prefetch(1)
    images, labels = [], []
    try:
        for image_block, label_block in ds.as_numpy_iterator():
            images.append(image_block)
            labels.append(label_block)
    except tf.errors.OpError as error:  # a truncated or corrupt tfrecord: name the files, not TF's graph node
        name = str(split)
        files = sorted(path for part in name.split("+")
                       for path in glob.glob(os.path.join(builder.data_dir, f"{builder.name}-{part}.*")))
        message = re.sub(r"\{\{.*?\}\}\s*", "", error.message).splitlines()[0][:200]  # TF's graph node ids
        raise DatasetUnavailableError(
            f"{builder.name} split {name} in {builder.data_dir} cannot be read ({type(error).__name__}: "
            f"{message}); files: {', '.join(map(os.path.basename, files)) or 'none'}. "
            f"The prepared data is damaged: delete {builder.data_dir} and prepare it again "
            f"(python -m mbde_jax.data prepare {builder.name}).") from None
    if not labels:
        raise ValueError(f"{builder.name} split {split} is empty in {builder.data_dir}.")
    images_np, labels_np = np.concatenate(images), np.concatenate(labels)
    if images_np.shape[1:] != tuple(image_shape):
        raise ValueError(f"{builder.name} images are {images_np.shape[1:]}, expected {tuple(image_shape)}.")
    return tf.constant(images_np), tf.constant(labels_np)


# The last evaluation split read, kept because the training loop evaluates the same split again and again (for
# CINIC-10, decoding its 90,000 test PNGs takes longer than copying them). One entry: it holds up to 276 MB.
_eval_split_cache: dict[tuple[str, str], tuple[tf.Tensor, tf.Tensor]] = {}


def _load_eval_split(builder: tfds.core.DatasetBuilder, split, image_shape: tuple[int, int, int]
                     ) -> tuple[tf.Tensor, tf.Tensor]:
    key = (os.fspath(builder.data_dir), repr(split))
    if key not in _eval_split_cache:
        _eval_split_cache.clear()
        _eval_split_cache[key] = _load_split(builder, split, image_shape)
    return _eval_split_cache[key]


def process_rows(global_batch_size: int, mesh: jax.sharding.Mesh) -> slice:
    """The rows of every global batch that this process's devices hold (and so this process builds).

    Every process has the same number of devices and the mesh lists each process's devices together, so the
    rows are one contiguous block; which block is decided by the mesh, not by the process index.
    """
    index_map = sharding.batch_sharding(mesh).addressable_devices_indices_map((global_batch_size,))
    starts = sorted({index[0].start or 0 for index in index_map.values()})
    size = global_batch_size // mesh.devices.size
    if starts != list(range(starts[0], starts[0] + size * len(starts), size)):
        raise ValueError(f"this process's devices hold rows {starts} (each {size} long) of a batch, not one "
                         f"contiguous block; build the mesh with sharding.make_data_mesh().")
    return slice(starts[0], starts[0] + size * len(starts))


def _device_batches(local_batches: Iterator[dict[str, np.ndarray]], mesh: jax.sharding.Mesh,
                    global_batch_size: int, buffer_size: int = 2) -> Iterator[dict[str, jax.Array]]:
    """Turns process-local numpy batches into global jax.Arrays sharded on the batch axis, `buffer_size` ahead.

    Keeping a batch or two in flight lets the host-to-device copy overlap the train step.
    """
    batch_sharding = sharding.batch_sharding(mesh)

    def to_global(batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        return {name: jax.make_array_from_process_local_data(
                        batch_sharding, value, (global_batch_size,) + value.shape[1:])
                for name, value in batch.items()}

    queue: deque = deque()
    for batch in local_batches:
        queue.append(to_global(batch))
        if len(queue) > buffer_size:
            yield queue.popleft()
    while queue:
        yield queue.popleft()


class TrainPipeline:
    """Training batches of one dataset, a pure function of (seed, epoch), resumable at any batch.

    Attributes:
        dataset: config name of the dataset.
        train_splits: the tfds split expression read (e.g. 'train', 'train+validation').
        global_batch_size: examples per step over all devices.
        num_examples: training examples in the pool (every process holds all of them).
        steps_per_epoch: full batches per epoch; the last partial batch is dropped (static shapes under jit; the
            reshuffle each epoch means every example is still used).
        images: uint8 [n, H, W, C] the training images, in the fixed order plans index into.
        labels: int32 [n] their labels.
    """

    def __init__(self, dataset: str, *, global_batch_size: int, seed: int, mesh: jax.sharding.Mesh,
                 data_dir: str | None = None, train_splits: str | None = None, manual_dir: str | None = None,
                 download: bool = True):
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
        self._images_tf, self._labels_tf = _load_split(builder, train_splits, info.image_shape)
        self.num_examples = int(self._labels_tf.shape[0])
        self.steps_per_epoch = self.num_examples // global_batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"config.batch_size={global_batch_size} is larger than the {self.num_examples} training "
                             f"examples of {dataset} ({train_splits}); lower config.batch_size.")
        self._normalize = _normalizer(dataset)

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
        if not 0 <= start_batch <= self.steps_per_epoch:
            raise ValueError(f"start_batch={start_batch} is outside [0, {self.steps_per_epoch}] (steps per epoch).")
        plan = self.epoch_plan(epoch)
        batch_starts = np.arange(start_batch, self.steps_per_epoch) * self.global_batch_size
        positions = (batch_starts[:, None] + np.arange(self._rows.start, self._rows.stop)[None, :]).reshape(-1)
        ds = tf.data.Dataset.from_tensor_slices((plan.indices[positions], plan.offset_y[positions],
                                                 plan.offset_x[positions], plan.flip[positions]))
        ds = ds.batch(self._rows.stop - self._rows.start, drop_remainder=True)
        ds = ds.map(_plain_graph(self._make_batch), num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.with_options(_tf_data_options()).prefetch(2)
        return _device_batches(ds.as_numpy_iterator(), self.mesh, self.global_batch_size)


def normalization_constants(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) float32 [C] with normalised = uint8 * scale + shift, the same values _normalizer uses."""
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


def _global_array(value: np.ndarray, array_sharding: jax.sharding.Sharding) -> jax.Array:
    """A global jax.Array from a host array that every process holds whole; each process fills its own devices."""
    return jax.make_array_from_callback(value.shape, array_sharding, lambda index: value[index])


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
        self._device_data = tuple(_global_array(value, replicated)
                                  for value in (self.images, self.labels, normalization_table(dataset)))
        self._augment = jax.jit(augment_on_device, out_shardings=self._batched)

    def epoch_batches(self, epoch: int, start_batch: int = 0) -> Iterator[dict[str, jax.Array]]:
        """As TrainPipeline.epoch_batches; the batches are computed on the devices."""
        if not 0 <= start_batch <= self.steps_per_epoch:
            raise ValueError(f"start_batch={start_batch} is outside [0, {self.steps_per_epoch}] (steps per epoch).")
        plan = self.epoch_plan(epoch)
        columns = (plan.indices.astype(np.int32), plan.offset_y, plan.offset_x, plan.flip)
        images, labels, table = self._device_data
        batch_size = self.global_batch_size

        def batches() -> Iterator[dict[str, jax.Array]]:
            for k in range(start_batch, self.steps_per_epoch):
                window = slice(k * batch_size, (k + 1) * batch_size)
                # Each device receives its share of the plan and gathers its own examples.
                parts = tuple(_global_array(column[window], self._batched) for column in columns)
                yield self._augment(images, labels, *parts, table)

        return batches()


def make_train_pipeline(config, mesh: jax.sharding.Mesh) -> TrainPipeline:
    """The training pipeline `config` asks for: on the devices when config.input_on_device is True, or when it
    is unset (auto) and the default backend is a GPU or TPU; on the host otherwise."""
    on_device = config.input_on_device
    if on_device is None:
        on_device = jax.default_backend() != "cpu"
    pipeline_cls = DeviceTrainPipeline if on_device else TrainPipeline
    return pipeline_cls(
            config.dataset, global_batch_size=config.batch_size, seed=config.seed, mesh=mesh,
            data_dir=config.data_dir, download=config.download,
            train_splits=config.cinic10_train_splits if config.dataset == "cinic10" else None)


def num_eval_examples(dataset: str, *, split: str | None = None, data_dir: str | None = None,
                      manual_dir: str | None = None, download: bool = True) -> int:
    """Examples in an evaluation split (default the dataset's test split), from the dataset's metadata."""
    info = dataset_info.get_dataset_info(dataset)
    builder = prepare(dataset, data_dir=data_dir, manual_dir=manual_dir, download=download)
    return builder.info.splits[split or info.eval_split].num_examples


def eval_batches(dataset: str, *, split: str | None = None, global_batch_size: int, mesh: jax.sharding.Mesh,
                 data_dir: str | None = None, manual_dir: str | None = None,
                 download: bool = True) -> Iterator[dict[str, jax.Array]]:
    """Yields every example of an evaluation split exactly once, in a fixed order, without augmentation.

    The checks and the reading happen at the call; the returned iterator only produces batches.

    Args:
        dataset: config name.
        split: tfds split; default the dataset's test split ('validation' is CINIC-10's other held-out split).
        global_batch_size: examples per batch over all devices; a multiple of the device count.
        mesh: the data mesh.
        data_dir, manual_dir, download: as for TrainPipeline.

    Yields:
        {'image': float32 [B, H, W, C], 'label': int32 [B], 'mask': float32 [B]}, global jax.Arrays sharded on the
        batch axis. mask is 1 for real examples and 0 for the padding that fills the last batch (padding repeats
        an example, with label and mask 0); summed over all batches it equals the split's size exactly.
    """
    info = dataset_info.get_dataset_info(dataset)
    sharding.check_batch_divisible(global_batch_size, mesh, field="config.eval_batch_size")
    split = split or info.eval_split
    builder = prepare(dataset, data_dir=data_dir, manual_dir=manual_dir, download=download)
    # As for training: every process reads the split and builds its rows of each global batch, so batch k holds
    # examples k * B .. (k + 1) * B - 1 whatever the number of processes.
    images_tf, labels_tf = _load_eval_split(builder, split, info.image_shape)
    num_examples = int(labels_tf.shape[0])
    rows = process_rows(global_batch_size, mesh)
    batch_starts = np.arange(math.ceil(num_examples / global_batch_size)) * global_batch_size
    positions = (batch_starts[:, None] + np.arange(rows.start, rows.stop)[None, :]).reshape(-1)
    is_real = positions < num_examples
    indices = np.where(is_real, positions, 0)
    normalize = _normalizer(dataset)

    def make_batch(batch_indices: tf.Tensor, mask: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"image": normalize(tf.gather(images_tf, batch_indices)),
                "label": tf.gather(labels_tf, batch_indices) * tf.cast(mask, tf.int32),
                "mask": tf.cast(mask, tf.float32)}

    ds = tf.data.Dataset.from_tensor_slices((indices, is_real)).batch(rows.stop - rows.start)
    ds = ds.map(_plain_graph(make_batch), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.with_options(_tf_data_options()).prefetch(2)
    return _device_batches(ds.as_numpy_iterator(), mesh, global_batch_size)


# --------------------------------------------------------------------------------------------------------------
# Mocked data for tests and benchmarks.


@contextlib.contextmanager
def mocked_dataset(dataset: str, *, num_examples: int, metadata_dir: str) -> Iterator[None]:
    """Within the context, `dataset` reads as `num_examples` random examples in each of its splits.

    Wraps tfds.testing.mock_data with metadata written to `metadata_dir` that gives every split exactly
    `num_examples` examples, so the pipeline runs unchanged: the dataset counts as prepared and the split sizes
    in its metadata match what is read. Random uint8 images of the dataset's shape, labels in range; every split
    yields the same examples.
    """
    info = dataset_info.get_dataset_info(dataset)
    register_builders()
    builder = tfds.builder(info.tfds_name, data_dir=metadata_dir)
    split_names = ("train", "validation", "test") if dataset == "cinic10" else (info.train_split, info.eval_split)
    builder.info.set_splits(tfds.core.SplitDict([
            tfds.core.SplitInfo(name=name, shard_lengths=[num_examples], num_bytes=0,
                                filename_template=tfds.core.ShardedFileTemplate(
                                        data_dir=builder.data_path, dataset_name=builder.name, split=name,
                                        filetype_suffix="tfrecord"))
            for name in split_names]))
    os.makedirs(builder.data_dir, exist_ok=True)
    builder.info.write_to_directory(builder.data_dir)
    with tfds.testing.mock_data(num_examples=num_examples, data_dir=metadata_dir,
                                policy=tfds.testing.MockPolicy.USE_FILES):
        yield
