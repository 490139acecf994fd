"""`python -m mbde_jax.data prepare`, the fast failure without network, and `python -m mbde_jax.benchmark input`."""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import subprocess
import sys
import threading
import time

import pytest

from mbde_jax import benchmark
from mbde_jax.data import preparation, train_input
from mbde_jax.data import cli as data_cli
from mbde_jax.data import cinic10

FAIL_FAST_S = 30.0


def _closed_port() -> int:
    """A local port nothing listens on: connecting is refused at once, like a host with no route."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def no_network(monkeypatch):
    """Every download address of every dataset points at a closed local port."""
    port = _closed_port()
    for name in preparation.DOWNLOAD_URLS:
        monkeypatch.setitem(preparation.DOWNLOAD_URLS, name, f"http://127.0.0.1:{port}/{name}.tar.gz")
    monkeypatch.setattr(cinic10, "ARCHIVE", dataclasses.replace(
            cinic10.ARCHIVE, url=f"http://127.0.0.1:{port}/CINIC-10.tar.gz"))


def test_prepare_digits_prints_where_and_how_big(tmp_path, capsys):
    assert data_cli.main(["prepare", "digits", "--data_dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"is prepared in {tmp_path}/sklearn_digits/1.0.0" in out
    assert re.search(r"[\d.]+ (KiB|MiB) on disk", out)
    assert "train: 1,442 examples" in out and "test: 355 examples" in out
    # tfds's own "Downloading and preparing dataset Unknown size ..." lines would only repeat ours: no download.
    assert "Downloading and preparing" not in out and "Subsequent calls" not in out, out
    # Preparing again reuses it.
    assert data_cli.main(["prepare", "digits", "--data_dir", str(tmp_path)]) == 0


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_unprepared_dataset_without_network_fails_fast_with_the_fix(tmp_path, capsys, no_network, dataset):
    start = time.monotonic()
    assert data_cli.main(["prepare", dataset, "--data_dir", str(tmp_path)]) == 1
    assert time.monotonic() - start < FAIL_FAST_S
    err = capsys.readouterr().err
    assert f"Dataset '{dataset}' is not prepared in the data directory {tmp_path}" in err
    assert f"python -m mbde_jax.data prepare {dataset} --data_dir" in err
    assert "cannot be downloaded" in err and "unreachable" in err


def test_unprepared_cinic10_without_network_names_the_manual_step(tmp_path, no_network):
    start = time.monotonic()
    with pytest.raises(preparation.DatasetUnavailableError) as error:
        preparation.prepare("cinic10", data_dir=str(tmp_path))
    assert time.monotonic() - start < FAIL_FAST_S
    message = str(error.value)
    manual = os.path.join(str(tmp_path), "downloads", "manual")
    assert "Dataset 'cinic10' is not prepared" in message and str(tmp_path) in message
    assert f"put it (not extracted) at {manual}/CINIC-10.tar.gz" in message
    assert f"python -m mbde_jax.data prepare cinic10 --data_dir {tmp_path} --manual_dir {manual}" in message


def test_training_pipeline_fails_fast_too(tmp_path, no_network):
    from mbde_jax import sharding  # pylint: disable=import-outside-toplevel

    start = time.monotonic()
    with pytest.raises(preparation.DatasetUnavailableError, match="python -m mbde_jax.data prepare cifar10"):
        train_input.TrainPipeline("cifar10", global_batch_size=8, seed=0, mesh=sharding.make_data_mesh(),
                                  data_dir=str(tmp_path))
    assert time.monotonic() - start < FAIL_FAST_S


def test_a_host_that_never_answers_is_given_up_on_at_the_deadline(tmp_path, monkeypatch):
    # Like a DNS lookup that hangs: no socket timeout covers it, the probe's own deadline must.
    released = threading.Event()

    def hang(*args, **kwargs):
        released.wait(20)
        raise OSError("released by the test")

    monkeypatch.setattr(preparation.socket, "create_connection", hang)
    monkeypatch.setattr(preparation, "PROBE_TIMEOUT_S", 0.5)
    start = time.monotonic()
    try:
        with pytest.raises(preparation.DatasetUnavailableError, match="did not answer within 0.5 s"):
            preparation.prepare("cifar10", data_dir=str(tmp_path))
        assert time.monotonic() - start < 5
    finally:
        released.set()  # Lets the abandoned probe thread end now rather than in a later test.


def test_download_false_refuses_without_probing(tmp_path):
    with pytest.raises(preparation.DatasetUnavailableError, match=r"downloads are disabled \(download=False\)"):
        preparation.prepare("cifar10", data_dir=str(tmp_path), download=False)


def test_command_line_fails_fast_through_an_unreachable_proxy(tmp_path):
    # The real entry point in a fresh interpreter. Its only way out is an HTTPS proxy on a closed local port,
    # so this holds (and downloads nothing) on machines with network too.
    env = dict(os.environ, HTTPS_PROXY=f"http://127.0.0.1:{_closed_port()}", NO_PROXY="")
    env.pop("https_proxy", None)
    env.pop("no_proxy", None)
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "mbde_jax.data", "prepare", "cifar100", "--data_dir", str(tmp_path)],
                            capture_output=True, text=True, env=env, timeout=120, check=False)
    assert time.monotonic() - start < FAIL_FAST_S
    assert result.returncode == 1
    assert "Dataset 'cifar100' is not prepared" in result.stderr and "(proxy)" in result.stderr
    assert "python -m mbde_jax.data prepare cifar100 --data_dir <DIR>" in result.stderr


def test_unknown_dataset_lists_the_valid_ones():
    with pytest.raises(SystemExit) as exit_info:
        data_cli.main(["prepare", "mnist"])
    assert str(exit_info.value) == ("mbde_jax.data: error: unknown dataset 'mnist'; valid datasets are "
                                    "['cifar10', 'cifar100', 'cinic10', 'digits'].")


def test_benchmark_input_reports_images_per_second(tmp_path, capsys):
    benchmark.main(["input", "--dataset", "digits", "--data_dir", str(tmp_path), "--num_batches", "5",
                    "--batch_size", "32"])
    out = capsys.readouterr().out
    assert "dataset=digits data=real examples=1442 batch=32" in out
    assert float(re.search(r"([\d,]+) training images/s", out).group(1).replace(",", "")) > 0
