"""Prepared datasets: finding or preparing them in a tfds data directory, and reading a split into memory.

Datasets that are not prepared are prepared on first use when their download host answers. When it does not,
`prepare` fails within seconds (tfds's own retries would take minutes) with a message that says which dataset,
which directory was searched, and what command or manual step fixes it. A prepared split that cannot be read
(a truncated or corrupt tfrecord) fails the same way, naming its files.
"""

from __future__ import annotations

import contextlib
import glob
import io
import logging
import os
import re
import socket
import sys
import threading
import urllib.parse
import urllib.request

import jax
import numpy as np
from mbde_jax.data.tf_runtime import tf
import tensorflow_datasets as tfds

from mbde_jax import distributed
from mbde_jax.data import info as dataset_info
from mbde_jax.data import register_builders
from mbde_jax.data.tf_runtime import plain_graph, tf_data_options

if not sys.stderr.isatty():
    tfds.disable_progress_bar()  # its bars are terminal escape codes: in a log file they are noise

# Seconds to wait for a download host before declaring it unreachable.
PROBE_TIMEOUT_S = 5.0
# Where the tfds catalog builders download from; the host of the URL is what `prepare` probes. CINIC-10's
# comes from mbde_jax.data.cinic10.ARCHIVE; 'digits' is inside scikit-learn. Tests point these at a closed
# local port.
DOWNLOAD_URLS: dict[str, str] = {
        "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
}


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
    # tfds prints "Downloading and preparing dataset Unknown size ..." and "... Subsequent calls will reuse this
    # data." to stdout; for a preparation without a download (digits, CINIC-10 from its manual archive) they
    # only repeat our line above. A download keeps them: they say what is being fetched.
    quiet = contextlib.redirect_stdout(io.StringIO()) if url is None else contextlib.nullcontext()
    with quiet:
        # try_download_gcs=False: fetch from the original source only, the host just probed.
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
                manual_dir=manual_dir, try_download_gcs=False))
    return builder


def load_split(builder: tfds.core.DatasetBuilder, split, image_shape: tuple[int, int, int]
               ) -> tuple[tf.Tensor, tf.Tensor]:
    """Decodes a (sub)split into memory, in the builder's fixed order.

    Returns:
        images uint8 [N, H, W, C], labels int32 [N], as CPU tensors the tf.data pipelines gather from.
    """
    # Decoding (PNG, for CINIC-10 180,000 of them) happens once per run, before training: all cores may help.
    ds = builder.as_dataset(split=split, shuffle_files=False,
                            read_config=tfds.ReadConfig(options=tf_data_options(os.cpu_count() or 1)))
    ds = ds.map(plain_graph(lambda ex: (ex["image"], tf.cast(ex["label"], tf.int32)))).batch(1024).prefetch(1)
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
