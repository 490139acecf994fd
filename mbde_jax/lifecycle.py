"""What keeps a run safe around the training loop: one trainer per workdir, a graceful stop on SIGTERM/SIGINT,
and the record of every config a workdir was trained with.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import socket
import sys
import threading
import time
from typing import Callable

from absl import logging

LOCK_FILE = "trainer.lock"


class WorkdirLockedError(RuntimeError):
    """Another live trainer holds the workdir."""


class TrainingStopped(Exception):
    """A SIGTERM, SIGINT or SIGUSR1 stopped the run after a checkpoint; exit_code is 128 + the signal number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WorkdirLock:
    """An exclusive lock on <workdir>/trainer.lock for as long as the `with` block runs.

    flock(2) is released by the kernel when the holder dies, however it dies; the file keeps the last holder's
    host and PID so that a second trainer can name who is running, and a lock left by a dead process is
    taken over with a notice.
    """

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK_FILE)
        self._file = None

    def __enter__(self) -> "WorkdirLock":
        self._file = open(self.path, "a+")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            holder = self._holder()
            self._file.close()
            raise WorkdirLockedError(
                f"{os.path.dirname(self.path)} is in use by another trainer (PID {holder.get('pid', '?')} on "
                f"host {holder.get('host', '?')}, since {holder.get('started', '?')}); wait for it to finish or "
                f"stop it, or use another --workdir.") from None
        previous = self._holder()
        if previous.get("pid") and not (previous.get("host") == socket.gethostname()
                                        and pid_alive(int(previous["pid"]))):
            logging.warning("taking over the lock of %s left by PID %s on host %s, which is no longer running",
                            os.path.dirname(self.path), previous.get("pid"), previous.get("host"))
        self._file.seek(0)
        self._file.truncate()
        json.dump({"host": socket.gethostname(), "pid": os.getpid(),
                   "started": time.strftime("%Y-%m-%d %H:%M:%S")}, self._file)
        self._file.flush()
        return self

    def _holder(self) -> dict:
        try:
            with open(self.path) as f:
                return json.loads(f.read() or "{}")
        except (OSError, ValueError):
            return {}

    def __exit__(self, *exc) -> None:
        self._file.seek(0)
        self._file.truncate()  # a clean exit leaves no holder to report
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()


class GracefulStop:
    """Turns the first SIGTERM, SIGINT or SIGUSR1 into a request the loop polls (`requested`); a second SIGTERM or
    SIGINT stops at once. SIGUSR1 is what a SLURM job asks for before its time limit (mbde_jax.slurm requeues it
    afterwards); a repeated one is ignored.

    Handlers are installed only in the main thread (Python allows no other), and the previous ones come back
    when the `with` block ends.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)

    def __init__(self):
        self.signum: int | None = None
        self._previous = {}
        # Set by the training loop once it runs: where the next run resumes, for the second signal's line.
        self.resumes_from: Callable[[], str] | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGUSR1:
            return  # a scheduler's warning, which SLURM's scancel may deliver twice: never an interrupt
        if self.signum is not None:  # the second signal: the default action, now
            # One line first: the first signal's line promised a checkpoint, which this one leaves incomplete.
            where = (self.resumes_from() if self.resumes_from
                     else "the next run resumes from its latest complete checkpoint")
            print(f"stopped at once by a second {signal.Signals(signum).name}, before the checkpoint this run was "
                  f"stopping for was complete; {where}.", file=sys.stderr, flush=True)
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        logging.warning("%s received: stopping after this step with a checkpoint (send it again to stop at "
                        "once, without one)", signal.Signals(signum).name)

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
