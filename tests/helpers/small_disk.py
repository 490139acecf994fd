"""A small filesystem that is (nearly) full, for the tests of what a run does when the disk fills up.

    with small_disk(tmp_path / "disk", free_bytes=60_000) as disk:
        ...  # disk is a 30 MB tmpfs with a filler file leaving free_bytes free; unmounted afterwards

Mounting needs root (CI runs as root). Where it cannot mount, the test is skipped, except under CI=true, where it
fails: a CI that silently skipped the full-disk tests would pass without testing them.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import subprocess
from typing import Iterator

import pytest


@contextlib.contextmanager
def small_disk(directory: pathlib.Path, free_bytes: int, size: str = "30m") -> Iterator[pathlib.Path]:
    directory.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        message = f"cannot mount a tmpfs on {directory}: {mounted.stderr.strip() or mounted.returncode}"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI must run the full-disk tests: run it as root)")
        pytest.skip(message)
    try:
        stat = os.statvfs(directory)
        with open(directory / "filler", "wb") as filler:
            os.posix_fallocate(filler.fileno(), 0, stat.f_bavail * stat.f_frsize - free_bytes)
        yield directory
    finally:
        if subprocess.run(["umount", str(directory)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(directory)], check=True)  # still busy: detach it now
