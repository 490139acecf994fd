"""Datasets: their facts, tfds builders, preparation and the train and eval input pipelines.

The input pipelines go tensorflow-datasets -> tf.data (or XLA, for a device-resident training set) -> global
jax.Arrays sharded on the batch axis.

  info.py           dataset facts (pure Python: config checks and model summaries need no TensorFlow)
  cinic10.py,       tfds builders the catalog lacks (CINIC-10 from its archive, scikit-learn's digits)
  digits.py
  cli.py            `python -m mbde_jax.data prepare <dataset>`
  tf_runtime.py     TensorFlow kept off the GPU and on a thread budget; tf.data options
  preparation.py    prepare a dataset (or fail fast with the fix), read a split into memory
  epoch_plan.py     the order and augmentation of an epoch, a pure function of (seed, epoch)
  augmentation.py   crop, flip and normalisation, on the host (TensorFlow) and on the devices (XLA)
  global_arrays.py  this process's rows of a global batch, and host data to global jax.Arrays
  train_input.py    training batches (TrainPipeline on the host, DeviceTrainPipeline on the devices)
  eval_input.py     evaluation batches, padded and masked (EvalInput)
  testing.py        mocked datasets for tests and benchmarks

This package imports nothing on its own, so that importing mbde_jax.data.info stays pure Python. The builders
import tensorflow_datasets: call register_builders() (preparation does) before asking tfds for 'cinic10' or
'sklearn_digits'.
"""


def register_builders() -> None:
    """Makes tfds know 'cinic10' and 'sklearn_digits' (defining a builder class registers it)."""
    from mbde_jax.data import cinic10, digits  # noqa: F401  pylint: disable=import-outside-toplevel
