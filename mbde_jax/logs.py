"""Console logging that shows this project's progress, not every library's internals.

  * INFO records of orbax, tfds, jax internals, etils and matplotlib (its font cache) are dropped (warnings and errors are kept);
  * our lines are short: level letter, time, message (absl's thread id and file:line are for debugging);
  * TensorFlow's start-up banner (absl's pre-init notice, the oneDNN and CPU-feature notes), which its C++
    code writes straight to file descriptor 2 while it is imported, is filtered out of that import's output;
    every other line of it is passed on. TF_CPP_MIN_LOG_LEVEL defaults to 1 (TensorFlow's C++ INFO off);
  * that import leaves Keras to load when tf.keras is first used: TensorFlow imports Keras eagerly (and Keras
    scikit-learn, for its wrappers), which is about 40% of the import, and only tf.data is used here.
MBDE_DEBUG=1 keeps everything as the libraries write it.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import logging as std_logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence

from absl import logging

# Libraries whose INFO lines (one per checkpoint file, per tf.data reader, ...) drown the training log.
_QUIET_PATHS = ("/orbax/", "/tensorflow_datasets/", "/jax/_src/", "/etils/", "/matplotlib/")
# Lines TensorFlow's C++ code prints while it is imported, whatever TF_CPP_MIN_LOG_LEVEL says.
TENSORFLOW_BANNER = ("All log messages before absl::InitializeLog() is called are written to STDERR",
                      "oneDNN custom operations are on", "cpu_feature_guard.cc",
                      "To enable the following instructions:")


def _debugging() -> bool:
    return bool(os.environ.get("MBDE_DEBUG"))


class _QuietLibraries(std_logging.Filter):
    def filter(self, record: std_logging.LogRecord) -> bool:
        if "/orbax/" in record.pathname and "read only" in record.getMessage().replace("read_only", "read only"):
            return False  # reading a checkpoint (evaluate, export, report) is read-only on purpose
        if record.levelno >= std_logging.WARNING:
            return True
        return not any(path in record.pathname for path in _QUIET_PATHS)


class _ShortFormat(std_logging.Formatter):
    def __init__(self):
        super().__init__("%(levelname).1s %(asctime)s %(message)s", datefmt="%H:%M:%S")


def quiet_library_info_logs() -> None:
    """Drops INFO/DEBUG records of orbax, tfds, jax internals and etils from absl's handler (idempotent)."""
    handler = logging.get_absl_handler()
    if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
        handler.addFilter(_QuietLibraries())


def quiet_console() -> None:
    """The command-line tools' console: library INFO dropped, short lines (unless MBDE_DEBUG is set)."""
    if _debugging():
        return
    quiet_library_info_logs()
    logging.get_absl_handler().setFormatter(_ShortFormat())
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")


class _HeldRecords(std_logging.Filter):
    def __init__(self, path: str):
        super().__init__()
        self.path, self.records = path, []

    def filter(self, record: std_logging.LogRecord) -> bool:
        if self.path in record.pathname:
            self.records.append(record)  # from any thread: orbax logs its writers' failures from theirs
            return False
        return True


# How long the records of a failed block's threads are still dropped after it raised: bounded, so that a thread
# that never ends (a pool's idle worker) cannot keep the filter for the rest of the process.
LATE_RECORDS_S = 60.0


@contextlib.contextmanager
def library_records_held(path: str, late_records_s: float = LATE_RECORDS_S) -> Iterator[None]:
    """Holds the log records of the library whose files lie under `path` (e.g. "/orbax/") while the block runs:
    they are passed on when it ends normally and dropped when it raises, since the error raised names the
    failure they report (a traceback each) in one line. MBDE_DEBUG=1 holds nothing.

    When the block raises, the threads it started that are still running (orbax's other writers: the first
    writer's error reaches the caller while the others are still failing) go on being dropped until they end,
    or for `late_records_s` at most."""
    if _debugging():
        yield
        return
    held = _HeldRecords(path)
    logger = logging.get_absl_logger()  # absl's logging module writes every record through this logger
    logger.addFilter(held)
    threads_before = set(threading.enumerate())
    try:
        yield
    except BaseException:
        still_running = [thread for thread in threading.enumerate()
                         if thread not in threads_before and thread.is_alive()]
        if still_running:
            threading.Thread(target=_remove_filter_after, args=(logger, held, still_running, late_records_s),
                             name="library_records_held", daemon=True).start()
        else:
            logger.removeFilter(held)
        raise
    logger.removeFilter(held)
    for record in held.records:
        logger.handle(record)


def _remove_filter_after(logger: std_logging.Logger, held: _HeldRecords, threads: list[threading.Thread],
                         timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for thread in threads:
        # Thread's own join: orbax's future threads override join() to raise the error they ended with, which
        # the block has already raised to the caller.
        threading.Thread.join(thread, max(0.0, deadline - time.monotonic()))
    logger.removeFilter(held)


@contextlib.contextmanager
def filtered_stderr(dropped: Sequence[str] = TENSORFLOW_BANNER) -> Iterator[None]:
    """Holds what is written to file descriptor 2 (C++ code included) until the block ends, then passes on
    every line that contains none of `dropped`."""
    sys.stderr.flush()
    saved_stderr = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved_stderr, 2)
            os.close(saved_stderr)
            captured.seek(0)
            output = captured.read().decode(errors="replace")
            kept = [line for line in output.splitlines(keepends=True) if not any(d in line for d in dropped)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


class _KerasDeferred(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """While installed, an import of the `keras` package fails (ImportError), though it is found where it is.

    TensorFlow's import loads keras.src.optimizers in a `try ... except ImportError` and otherwise reaches
    Keras only through lazy loaders, which need the package's location, not the package; so tf.keras still
    imports Keras, on its first use, once this finder is removed."""

    def find_spec(self, name, path=None, target=None):
        if name != "keras":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None:
            spec.loader = self
        return spec

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        raise ImportError("Keras is loaded on tf.keras's first use, not with TensorFlow (mbde_jax.logs)")


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow (if installed) with its start-up banner filtered out of file descriptor 2, and
    without Keras unless something imported it already."""
    if "tensorflow" in sys.modules or _debugging():
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    keras_deferred = _KerasDeferred()
    if "keras" not in sys.modules:
        sys.meta_path.insert(0, keras_deferred)
    with filtered_stderr():
        try:
            import tensorflow  # noqa: F401  # pylint: disable=import-outside-toplevel,unused-import
        except ImportError:
            pass  # the extra is not installed: whoever needs it says so when it imports it
        finally:
            if keras_deferred in sys.meta_path:
                sys.meta_path.remove(keras_deferred)
