"""What train.py prints: short lines of our own, no library noise, a closing block."""

from __future__ import annotations

import logging
import os
import pathlib
import re
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from absl import logging as absl_logging

from mbde_jax import logs

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOISE = ("absl::InitializeLog", "oneDNN custom operations", "cpu_feature_guard", "Setting work unit notes",
         "logging_writer", "xla_bridge", "Unable to initialize backend", "steps_per_sec", "[Hyperparameters]",
         "\x1b[")


def test_filtered_stderr_drops_the_tensorflow_banner_and_keeps_every_other_line(capfd):
    with logs.filtered_stderr():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
        os.write(2, b"I0000 00:00:1.0 1 port.cc:153] oneDNN custom operations are on. You may see ...\n")
        os.write(2, b"a warning of the library that must stay\n")
        os.write(2, b"To enable the following instructions: AVX2, in other operations, rebuild TensorFlow\n")
        os.write(2, b"and a second one\n")
    assert capfd.readouterr().err == "a warning of the library that must stay\nand a second one\n"


def _library_record(message: str) -> logging.LogRecord:
    return logging.LogRecord("absl", logging.ERROR, "/site-packages/orbax/checkpoint/future.py", 1, message, (), None)


def _handled_by_absl(monkeypatch) -> list[str]:
    """The messages of the records that get past absl logger's filters (what its handler would print)."""
    shown: list[str] = []
    absl_logger = absl_logging.get_absl_logger()
    monkeypatch.setattr(absl_logger, "callHandlers", lambda record: shown.append(record.getMessage()))
    monkeypatch.delenv("MBDE_DEBUG", raising=False)
    return shown


def test_held_library_records_pass_on_success_and_drop_on_failure_even_from_a_thread_that_fails_later(monkeypatch):
    shown = _handled_by_absl(monkeypatch)
    absl_logger = absl_logging.get_absl_logger()
    with logs.library_records_held("/orbax/"):
        absl_logger.handle(_library_record("held, then passed on"))
        assert shown == []
    assert shown == ["held, then passed on"]

    # A failed save: one writer's error reaches the caller while another writer thread is still failing; it
    # logs its own traceback after the block raised. Both are dropped; the filter goes once that thread ends.
    # The writer is like orbax's future threads, whose join() raises the error they ended with: waiting for it
    # must not print that error as an uncaught exception of the waiting thread.
    release = threading.Event()
    uncaught = []
    monkeypatch.setattr(threading, "excepthook", uncaught.append)

    class WriterRaisingOnJoin(threading.Thread):
        def join(self, timeout=None):
            super().join(timeout)
            raise OSError("No space left on device (raised again by join)")

    def late_writer():
        release.wait(10)
        absl_logger.handle(_library_record("a writer that failed after the block raised"))

    writer = WriterRaisingOnJoin(target=late_writer)
    with pytest.raises(OSError):
        with logs.library_records_held("/orbax/", late_records_s=30):
            writer.start()
            absl_logger.handle(_library_record("the first writer's failure"))
            raise OSError("No space left on device")
    release.set()
    threading.Thread.join(writer)
    for _ in range(100):  # the filter is removed by a watcher thread once the writer has ended
        if not any(isinstance(f, logs._HeldRecords) for f in absl_logger.filters):
            break
        time.sleep(0.05)
    absl_logger.handle(_library_record("after the writers ended"))
    assert shown == ["held, then passed on", "after the writers ended"]
    assert uncaught == []


def test_the_library_imports_tensorflow_without_keras_and_tf_keras_still_loads_it():
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from mbde_jax import training  # as a notebook or script imports the library: TensorFlow comes with it
        import tensorflow as tf
        print(sorted(name for name in ("keras", "sklearn") if name in sys.modules))
        print([int(v) for v in tf.data.Dataset.range(3).map(lambda v: v * 2).as_numpy_iterator()])
        print(tf.keras.layers.Dense(2)(tf.ones((1, 3))).shape, "keras" in sys.modules)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, MBDE_DEBUG=""))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["[]", "[0, 2, 4]", "(1, 2) True"]


def test_train_console_is_our_lines_only_and_ends_with_the_summary(tmp_path):
    workdir = tmp_path / "run"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from mbde_jax import cli
        from mbde_jax.data import testing
        with testing.mocked_dataset("cifar10", num_examples=32, metadata_dir={str(tmp_path / "meta")!r}):
            cli.train(["train.py", "--config", {str(ROOT / "configs" / "test.py")!r}, "--workdir",
                       {str(workdir)!r}, "--config.log_every_seconds=0.001"])
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("MBDE_DEBUG", "TF_CPP_MIN_LOG_LEVEL")}
    completed = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                               timeout=600, env=env)
    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = completed.stderr.splitlines()
    for noise in NOISE:
        assert noise not in completed.stderr, noise
    ours = [line for line in lines if re.match(r"^[IWE] \d\d:\d\d:\d\d ", line)]
    strays = [line for line in lines if line not in ours and not line.startswith("  ")]
    assert not strays, strays
    assert any(re.match(r"^I \S+ epoch 2/2  step 7/8 \(87%\)  [\d.]+ images/s  loss [\d.]+  ETA \d:\d\d:\d\d$",
                        line) for line in ours), lines
    assert sum(" test top-1 leader " in line for line in ours) == 2
    assert ours[-5].endswith("finished mbde on cifar10 (resnet8, 3 branches): 2 epochs, 8 steps")
    assert ours[-1].endswith(f"  results: {workdir / 'results.json'} (and metrics.csv, history.json, TensorBoard "
                             f"events beside it)")
    assert not any("train/" in line or "test/" in line for line in ours)  # scalars go to TensorBoard only
