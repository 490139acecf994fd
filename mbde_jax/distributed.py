"""Joining a multi-process run (JAX's own multi-controller runtime) and agreeing across its processes.

A multi-process run is one program started once per process (a host, or a GPU/CPU slot of one): every
process runs the same command; `initialize` connects them through jax.distributed, after which jax.devices()
lists the devices of every process and one jit'd step spans them all. Nothing here is needed, or does
anything, in a single-process run.

How a process learns that it is part of a bigger run, first match wins:
  * --coordinator_address / --num_processes / --process_id (or the environment variables
    JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID): given explicitly, e.g. two processes on
    one machine;
  * --distributed, or an environment JAX detects by itself (SLURM with more than one task, Open MPI, a Cloud
    TPU pod slice with more than one worker): jax.distributed.initialize() fills in everything.

When one process dies, the others must not hang: the first collective that cannot complete fails (gloo on CPU
reports the closed connection at once; otherwise JAX's coordination service notices the missing heartbeats
after heartbeat_timeout_seconds and ends the process itself). `is_peer_failure` recognises such an error so
that the command-line tools can say in one line what happened (cli_errors.one_line_errors).
"""

from __future__ import annotations

import dataclasses
import os
import re

import numpy as np

# Exit status of a process whose peer stopped: EX_TEMPFAIL (sysexits.h), "try again": resuming is the remedy.
EXIT_PEER_LOST = 75
DEFAULT_HEARTBEAT_TIMEOUT_S = 100  # jax.distributed's own default

# Fragments of the errors a collective or the coordination service raises when a peer process is gone.
_PEER_FAILURE = re.compile(
    r"gloo|nccl|heartbeat|coordination service|connection reset|connection refused|socket closed|"
    r"broken pipe|unavailable:|deadline_exceeded|barrier|local topolog", re.IGNORECASE)


class DistributedConfigError(ValueError):
    """The multi-process launch settings are incomplete or inconsistent."""


@dataclasses.dataclass(frozen=True)
class LaunchSettings:
    """What the command line and the environment say about joining a multi-process run.

    Attributes:
      coordinator_address: 'host:port' of process 0's coordination service, or None.
      num_processes: processes in the run, or None (detected).
      process_id: this process's index in [0, num_processes), or None (detected).
      auto_detect: call jax.distributed.initialize() and let JAX read the cluster's environment.
      heartbeat_timeout_seconds: how long a silent process is waited for before every process is ended.
    """

    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    auto_detect: bool = False
    heartbeat_timeout_seconds: int = DEFAULT_HEARTBEAT_TIMEOUT_S

    @property
    def explicit(self) -> bool:
        return any(v is not None for v in (self.coordinator_address, self.num_processes, self.process_id))


def cluster_detected(environ: dict | None = None) -> bool:
    """Whether the environment describes a multi-process job that JAX can configure itself."""
    env = os.environ if environ is None else environ

    def count(name: str) -> int:
        try:
            return int(env.get(name, "1"))
        except ValueError:
            return 1

    return (count("SLURM_NTASKS") > 1 or count("OMPI_COMM_WORLD_SIZE") > 1
            or "," in env.get("TPU_WORKER_HOSTNAMES", ""))


def _env_int(environ: dict, name: str) -> int | None:
    value = environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise DistributedConfigError(f"environment variable {name}={value!r} is not a whole number.") from None


def settings_from(coordinator_address: str | None = None, num_processes: int | None = None,
                  process_id: int | None = None, auto_detect: bool = False,
                  heartbeat_timeout_seconds: int = DEFAULT_HEARTBEAT_TIMEOUT_S,
                  environ: dict | None = None) -> LaunchSettings:
    """LaunchSettings from flag values, each falling back to its JAX_* environment variable; checked."""
    env = os.environ if environ is None else environ
    settings = LaunchSettings(
        coordinator_address=coordinator_address or env.get("JAX_COORDINATOR_ADDRESS") or None,
        num_processes=num_processes if num_processes is not None else _env_int(env, "JAX_NUM_PROCESSES"),
        process_id=process_id if process_id is not None else _env_int(env, "JAX_PROCESS_ID"),
        auto_detect=auto_detect or cluster_detected(env),
        heartbeat_timeout_seconds=heartbeat_timeout_seconds)
    if settings.explicit and not settings.auto_detect:
        missing = [flag for flag, value in (("--coordinator_address", settings.coordinator_address),
                                            ("--num_processes", settings.num_processes),
                                            ("--process_id", settings.process_id)) if value is None]
        if missing:
            raise DistributedConfigError(
                f"a multi-process run needs --coordinator_address, --num_processes and --process_id together "
                f"(missing: {', '.join(missing)}); give all three on every process, or none (and --distributed "
                f"where JAX detects the cluster: SLURM, Open MPI, Cloud TPU pods).")
    if settings.num_processes is not None and settings.num_processes < 1:
        raise DistributedConfigError(f"--num_processes={settings.num_processes}: must be at least 1.")
    if settings.process_id is not None and settings.num_processes is not None and not (
            0 <= settings.process_id < settings.num_processes):
        raise DistributedConfigError(
            f"--process_id={settings.process_id} is outside [0, {settings.num_processes}) for "
            f"--num_processes={settings.num_processes}; number the processes 0 to {settings.num_processes - 1}.")
    if heartbeat_timeout_seconds < 1:
        raise DistributedConfigError(f"--heartbeat_timeout_seconds={heartbeat_timeout_seconds}: must be >= 1.")
    return settings


def define_flags(flag_values):
    """Defines the launch flags on `flag_values` (an absl FlagValues); returns a function that reads them as
    LaunchSettings."""
    from absl import flags

    address = flags.DEFINE_string(
        "coordinator_address", None, "host:port of process 0 in a multi-process run (default: environment "
        "variable JAX_COORDINATOR_ADDRESS). Give it, --num_processes and --process_id on every process.",
        flag_values=flag_values)
    count = flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run (default: "
                                 "JAX_NUM_PROCESSES).", flag_values=flag_values)
    index = flags.DEFINE_integer("process_id", None, "This process's index, 0 .. num_processes - 1 (default: "
                                 "JAX_PROCESS_ID).", flag_values=flag_values)
    auto = flags.DEFINE_bool("distributed", False, "Join a multi-process run JAX configures from the "
                             "environment (automatic on SLURM with several tasks, Open MPI, Cloud TPU pods).",
                             flag_values=flag_values)
    heartbeat = flags.DEFINE_integer(
        "heartbeat_timeout_seconds", DEFAULT_HEARTBEAT_TIMEOUT_S, "Multi-process runs: seconds without word "
        "from a process before every process of the run is ended.", flag_values=flag_values)

    def read() -> LaunchSettings:
        return settings_from(address.value, count.value, index.value, auto.value, heartbeat.value)

    return read


def initialize(settings: LaunchSettings) -> bool:
    """Joins the multi-process run `settings` describe (before anything starts JAX's backends).

    Returns whether jax.distributed was initialised; a single-process run (nothing given, nothing detected,
    or --num_processes=1) returns False and changes nothing.
    """
    if not (settings.explicit or settings.auto_detect) or settings.num_processes == 1:
        return False
    import jax

    jax.distributed.initialize(
        coordinator_address=settings.coordinator_address, num_processes=settings.num_processes,
        process_id=settings.process_id, heartbeat_timeout_seconds=settings.heartbeat_timeout_seconds)
    return True


def process_index() -> int:
    """This process's index in the run; 0 before (or without) JAX."""
    import sys

    jax = sys.modules.get("jax")
    return jax.process_index() if jax is not None and jax.distributed.is_initialized() else 0


def is_multi_process() -> bool:
    import jax

    return jax.process_count() > 1


def is_peer_failure(error: BaseException) -> bool:
    """Whether `error`, raised in a multi-process run, says that another process of the run is gone."""
    import sys

    jax = sys.modules.get("jax")  # an error before JAX was even imported is not a collective's
    if not isinstance(error, Exception) or jax is None or not jax.distributed.is_initialized():
        return False
    if type(error).__module__.startswith("mbde_jax"):  # ours say what they are
        return False
    try:
        multi_process = is_multi_process()
    except Exception:  # pylint: disable=broad-except  (the backend never came up: a peer never joined it)
        multi_process = True
    if not multi_process:
        return False
    return bool(_PEER_FAILURE.search(f"{type(error).__name__}: {error}"))


def describe_peer_failure(error: BaseException) -> str:
    """One line for a process whose peer is gone: who, what failed, and how to resume."""
    import jax

    cause = " ".join(str(error).split())[:240]
    try:
        who = f"process {jax.process_index()} of {jax.process_count()}"
    except Exception:  # pylint: disable=broad-except  (no backend: the processes never finished joining)
        who = "this process"
    return (f"{who} lost contact with the other processes of "
            f"this run ({cause}); another process stopped or crashed, see its log. Checkpoints written so far "
            f"are intact: start every process again with the same command to resume.")


def all_processes(flag: bool) -> bool:
    """True on every process when `flag` is True on every process (a collective: all must call it)."""
    if not is_multi_process():
        return flag
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.asarray(flag, np.int32))))


def gather_ints(value: int) -> list[int]:
    """`value` of every process, by process index (a collective: all must call it)."""
    if not is_multi_process():
        return [value]
    from jax.experimental import multihost_utils

    return [int(v) for v in np.asarray(multihost_utils.process_allgather(np.asarray(value, np.int32))).ravel()]


def barrier(name: str) -> None:
    """Waits until every process has reached the barrier `name`."""
    if is_multi_process():
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
