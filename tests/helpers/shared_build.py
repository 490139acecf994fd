"""What several test modules read, built once per test session.

Under pytest-xdist each worker has its own basetemp inside one directory of the session; a shared thing is built
there by the first worker that asks, under a file lock, and the others wait and reuse it.
"""

import fcntl
import os
import pathlib
import shutil
from typing import Callable


def session_dir(tmp_path_factory) -> pathlib.Path:
    """The temp directory of the whole session: the workers' common parent under xdist, else the basetemp."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def build_once(tmp_path_factory, name: str, build: Callable[[pathlib.Path], None]) -> pathlib.Path:
    """The directory `name` of the session, filled by `build(directory)` the first time any test asks for it.
    A build that failed (its test failed with it) leaves no mark, so the next test to ask builds it again."""
    shared = session_dir(tmp_path_factory)
    directory, built = shared / name, shared / f"{name}.built"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not built.exists():
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir()
            build(directory)
            built.touch()
    return directory
