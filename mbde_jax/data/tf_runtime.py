"""TensorFlow as this project uses it: a data feeder kept off the GPU and on a small thread budget.

TensorFlow here only feeds data, so it is kept off any GPU (tf.config.set_visible_devices([], 'GPU'), before it
initialises a device) and on a small thread budget so that it does not starve the XLA train step:
  * MBDE_TF_THREADS (environment variable, default half the CPU cores, at least 1) sizes TensorFlow's
    inter-op and intra-op thread pools and the private thread pool of every tf.data pipeline made here;
  * each tf.data op runs single-threaded inside (max_intra_op_parallelism = 1): batches are produced whole, in
    parallel with the train step, rather than each op fanning out over every core.

The settings are applied when this module is imported, because they can only change before TensorFlow
initialises its runtime: every module of mbde_jax.data that runs TensorFlow imports this one.
"""

from __future__ import annotations

import logging
import os

from mbde_jax import logs

logs.import_tensorflow_quietly()  # a notebook or script that imports mbde_jax.data first

import tensorflow as tf  # noqa: E402  # pylint: disable=wrong-import-position

TF_THREADS = max(1, int(os.environ.get("MBDE_TF_THREADS", (os.cpu_count() or 2) // 2)))


def _configure_tensorflow() -> None:
    """Hides GPUs from TensorFlow and caps its threads; must run before TensorFlow initialises its runtime."""
    try:
        tf.config.set_visible_devices([], "GPU")
        tf.config.threading.set_inter_op_parallelism_threads(TF_THREADS)
        tf.config.threading.set_intra_op_parallelism_threads(TF_THREADS)
    except RuntimeError as e:  # Someone used TensorFlow first; the settings can no longer change.
        logging.warning("TensorFlow was initialised before mbde_jax.data.tf_runtime could configure it: %s", e)


_configure_tensorflow()


def tf_data_options(threads: int = TF_THREADS) -> tf.data.Options:
    """Options of every tf.data pipeline here: `threads` private threads, one per op, deterministic order."""
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
    # The order of examples is part of the result (a resumed run must see the same batches).
    options.deterministic = True
    return options


def plain_graph(fn):
    """`fn` traced as it is, without AutoGraph's source rewrite: the map functions have no Python control flow
    over tensors, and the rewrite (gast) warns on Python 3.13 and costs time at every trace."""
    return tf.autograph.experimental.do_not_convert(fn)
