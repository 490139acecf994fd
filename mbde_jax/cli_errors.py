"""One line, not a traceback, for the errors a user causes and can fix, in every command-line tool.

The message names the field, file or path and what to do; MBDE_DEBUG=1 shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from typing import Iterator, Sequence


# The error types (besides ValueError and OSError) that are a user's to fix, by the module that defines them.
_USER_ERRORS = {"mbde_jax.checkpoint": ("CheckpointUnreadableError",), "mbde_jax.lifecycle": ("WorkdirLockedError",),
                "mbde_jax.train_metrics": ("NonFiniteLossError",), "mbde_jax.data.cinic10": ("ArchiveError",),
                "mbde_jax.data.preparation": ("DatasetUnavailableError",)}


def _user_error_types() -> tuple[type, ...]:
    # Only modules already imported: an error a module defines cannot have been raised unless it was imported,
    # and importing one here (mbde_jax.data.preparation imports TensorFlow) would print TensorFlow's start-up
    # banner before the one line, e.g. for the report's or the summary's errors.
    found = [getattr(sys.modules[module], name) for module, names in _USER_ERRORS.items() if module in sys.modules
             for name in names]
    return (ValueError, OSError, *found)


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


def flag_text(argv: Sequence[str], name: str) -> str | None:
    """The text given to --name in argv (as --name=value or --name value)."""
    for index, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        if arg == f"--{name}" and index + 1 < len(argv):
            return argv[index + 1]
    return None


def _config_file_error(error: BaseException, config_file: str) -> str:
    """What is wrong in the --config file, in one line: the error and the file's line that raised it."""
    if isinstance(error, SyntaxError):
        code = f": {error.text.strip()}" if error.text and error.text.strip() else ""
        return f"a syntax error at line {error.lineno}: {error.msg}{code}"
    frames = [frame for frame in traceback.extract_tb(error.__traceback__)
              if os.path.abspath(frame.filename) == os.path.abspath(config_file)]
    where = f" at line {frames[-1].lineno} ({frames[-1].line})" if frames and frames[-1].line else ""
    return f"{type(error).__name__}: {error}{where}"


def parse_flags_or_exit(tool: str, argv: list[str], flag_values) -> list[str]:
    """Parses the command line now, so that a misspelt `--config.<field>` is one line, not absl's traceback.

    ml_collections reports an unknown field as an AttributeError (with its suggestion) from inside the parser.
    Returns argv[0] and the positional arguments left after the flags. A required flag that is missing is
    one line too, and so are a --config file that does not exist and one that fails to load (a syntax error,
    a missing import: ml_collections lets those out of its parser as they are).
    """
    from absl import flags

    config_file = (flag_text(argv, "config") or "").split(":", 1)[0]
    if config_file and not os.path.isfile(config_file):
        raise SystemExit(f"{tool}: error: --config {config_file}: no such file (the configs are in configs/, e.g. "
                         f"configs/test.py); nothing was run.")
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
    except Exception as error:  # pylint: disable=broad-except  # raised by the config file's own code
        if os.environ.get("MBDE_DEBUG") or not config_file:
            raise
        raise SystemExit(f"{tool}: error: --config {config_file} cannot be loaded: "
                         f"{' '.join(_config_file_error(error, config_file).split())}. Fix the file; nothing was "
                         f"run (MBDE_DEBUG=1 shows the traceback).") from None


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
