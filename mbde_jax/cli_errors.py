"""One line, not a traceback, for the errors a user causes and can fix, in every command-line tool.

The message names the field, file or path and what to do; MBDE_DEBUG=1 shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from typing import Iterator


def _user_error_types() -> tuple[type, ...]:
    # Imported when an error happens, not before: `--help` must not load TensorFlow or JAX.
    from mbde_jax import checkpoint, lifecycle, train_metrics
    from mbde_jax.data import cinic10, preparation

    return (ValueError, OSError, preparation.DatasetUnavailableError, lifecycle.WorkdirLockedError,
            checkpoint.CheckpointUnreadableError, train_metrics.NonFiniteLossError, cinic10.ArchiveError)


def describe(error: BaseException) -> str:
    """The error as one line; an OSError names its path and says that what was saved is intact."""
    if isinstance(error, OSError) and error.strerror:
        where = f" ({error.filename})" if error.filename else ""
        return (f"{error.strerror}{where}. What was saved before is intact; fix the path, its permissions or "
                f"the free space, then run the same command again.")
    return " ".join(str(error).split()) or type(error).__name__


def _exit_if_peer_failure(tool: str, error: Exception) -> None:
    """In a multi-process run whose peer is gone: one line, then exit without JAX's shutdown.

    A normal exit runs jax.distributed's shutdown, which waits at a barrier the dead process never reaches and
    then aborts with a page of C++ log; os._exit skips it (the files this process wrote are closed already).
    """
    from mbde_jax import distributed

    if not distributed.is_peer_failure(error):
        return
    if os.environ.get("MBDE_DEBUG"):
        traceback.print_exc()
    print(f"{tool}: error: {distributed.describe_peer_failure(error)}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(distributed.EXIT_PEER_LOST)


# ml_collections' --config parser puts this, then the whole traceback, before an error raised by get_config.
_CONFIG_FILE_ERROR = "Error whilst parsing config file:"


def _without_config_traceback(text: str) -> str:
    """Keeps only the error itself (the traceback's last line) of an error raised by a config's get_config,
    e.g. configs/paper.py's message naming the valid datasets and architectures."""
    head, found, trace = text.partition(_CONFIG_FILE_ERROR)
    lines = [line.strip() for line in trace.splitlines() if line.strip()]
    if not found or not lines:
        return text
    return head + lines[-1].removeprefix("ValueError: ")


def parse_flags_or_exit(tool: str, argv: list[str], flag_values) -> list[str]:
    """Parses the command line now, so that a misspelt `--config.<field>` is one line, not absl's traceback.

    ml_collections reports an unknown field as an AttributeError (with its suggestion) from inside the parser.
    Returns argv[0] and the positional arguments left after the flags. A required flag that is missing is
    one line too.
    """
    from absl import flags

    try:
        return flag_values(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as error:
        if os.environ.get("MBDE_DEBUG"):
            raise
        cause = error.args[0] if error.args else error
        while isinstance(cause, KeyError) and cause.args:  # str(KeyError) quotes and escapes its message
            cause = cause.args[0]
        text = _without_config_traceback(str(cause))
        if isinstance(error, AttributeError):  # ml_collections: an unknown --config.<field>
            text = f"no config field {text} (every field is in configs/default.py)"
        raise SystemExit(f"{tool}: error: in the command line: {' '.join(text.split())}") from None


@contextlib.contextmanager
def one_line_errors(tool: str) -> Iterator[None]:
    """Turns a user error raised inside the block into `SystemExit('<tool>: error: <one line>')`."""
    try:
        yield
    except Exception as error:
        _exit_if_peer_failure(tool, error)
        if os.environ.get("MBDE_DEBUG") or not isinstance(error, _user_error_types()):
            raise
        raise SystemExit(f"{tool}: error: {describe(error)} (MBDE_DEBUG=1 shows the traceback)") from None
