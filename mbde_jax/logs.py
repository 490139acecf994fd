"""Console logging that shows this project's progress, not every library's internals."""

from __future__ import annotations

import logging as std_logging

from absl import logging

# Libraries whose INFO lines (one per checkpoint file, per tf.data reader, ...) drown the training log.
_QUIET_PATHS = ("/orbax/", "/tensorflow_datasets/", "/jax/_src/", "/etils/")


class _QuietLibraries(std_logging.Filter):
    def filter(self, record: std_logging.LogRecord) -> bool:
        if "/orbax/" in record.pathname and "read only" in record.getMessage().replace("read_only", "read only"):
            return False  # reading a checkpoint (evaluate, export, report) is read-only on purpose
        if record.levelno >= std_logging.WARNING:
            return True
        return not any(path in record.pathname for path in _QUIET_PATHS)


def quiet_library_info_logs() -> None:
    """Drops INFO/DEBUG records of orbax, tfds, jax internals and etils from absl's handler (idempotent)."""
    handler = logging.get_absl_handler()
    if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
        handler.addFilter(_QuietLibraries())
