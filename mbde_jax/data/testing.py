"""Mocked datasets for tests and benchmarks: the real input pipelines over random examples, with no download."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

import tensorflow_datasets as tfds

from mbde_jax.data import info as dataset_info
from mbde_jax.data import register_builders
from mbde_jax.data import tf_runtime  # noqa: F401  pylint: disable=unused-import  (configures TensorFlow first)


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
    _write_info_atomically(builder.info, builder.data_dir)
    with tfds.testing.mock_data(num_examples=num_examples, data_dir=metadata_dir,
                                policy=tfds.testing.MockPolicy.USE_FILES):
        yield


def _write_info_atomically(info, directory: str) -> None:
    """Writes `info`'s metadata files into `directory`, each file replaced whole.

    The processes of a multi-process test run share one metadata directory and start together: tfds writes
    its files in place (truncate, then write), so one process could read another's half-written
    dataset_info.json. Written beside and renamed into place, a reader sees the old file or the new one.
    """
    os.makedirs(directory, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".metadata-", dir=directory)
    try:
        info.write_to_directory(staging)
        for name in os.listdir(staging):
            os.replace(os.path.join(staging, name), os.path.join(directory, name))
    finally:
        for name in os.listdir(staging):
            os.remove(os.path.join(staging, name))
        os.rmdir(staging)
