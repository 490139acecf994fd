"""Where every run of a sweep stands, whoever trains it (one process, N shells, a SLURM array job).

    mbde-sweep --config ... --methods a,b --seeds 0,1,2 --workdir ROOT --status

Each run is one of:
  done         results.json of the config's last epoch
  running      a live trainer holds the workdir (trainer.lock); its step from progress.json
  failed       the sweep recorded an error for it (sweep_failure.json: the error and the log that has the
               traceback) and nothing has retried it since
  stopped      a checkpoint and no trainer (a signal, a time limit, a killed task): the same sweep resumes it
  not started  nothing in its workdir yet
A run whose worker was a SLURM task also shows that task's state as scontrol reports it (e.g. a requeued task
is PENDING). Pure Python and SLURM's client: no JAX, so it answers at once on a login node.

The sweep writes two small files into a run's workdir (only its first process): sweep_worker.json when it
starts training the run (which share, host, PID, SLURM job, log file) and sweep_failure.json when the run
fails; starting the run again removes the failure.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import socket
import time
from typing import Sequence

from mbde_jax import lifecycle, slurm, workdir as run_files

WORKER_FILE = "sweep_worker.json"
FAILURE_FILE = "sweep_failure.json"

DONE, RUNNING, FAILED, STOPPED, NOT_STARTED = "done", "running", "failed", "stopped", "not started"
STATES = (DONE, RUNNING, FAILED, STOPPED, NOT_STARTED)


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


def _write(path: str, payload: dict) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)


def log_path() -> str | None:
    """The file this process's output goes to, when the launcher said so (the array job's script does)."""
    return os.environ.get(slurm.LOG_ENV) or None


def record_start(workdir: str, shard: str) -> None:
    """Notes who trains the run in `workdir` and clears an earlier failure (a retry)."""
    os.makedirs(workdir, exist_ok=True)
    _write(os.path.join(workdir, WORKER_FILE), {
        "shard": shard, "host": socket.gethostname(), "pid": os.getpid(), "started": _now(),
        "slurm_job": slurm.this_job(), "log": log_path()})
    try:
        os.remove(os.path.join(workdir, FAILURE_FILE))
    except FileNotFoundError:
        pass


def record_failure(workdir: str, error: str) -> None:
    """Notes that the run in `workdir` failed with `error` (one line); the traceback is in the log."""
    os.makedirs(workdir, exist_ok=True)
    _write(os.path.join(workdir, FAILURE_FILE), {
        "error": error, "failed": _now(), "host": socket.gethostname(), "log": log_path(),
        "slurm_job": slurm.this_job()})


def _read(workdir: str, name: str) -> dict:
    try:
        return run_files.read_if_present(workdir, name) or {}
    except run_files.UnreadableRunFile:
        return {}


def latest_checkpoint_step(workdir: str) -> int | None:
    """The newest complete checkpoint's step (orbax names a finished save by its step alone), read without
    orbax."""
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return None
    steps = [int(name) for name in os.listdir(directory)
             if name.isdigit() and os.path.isdir(os.path.join(directory, name))]
    return max(steps) if steps else None


def _trainer(workdir: str) -> dict | None:
    """The live trainer holding the workdir's lock ({host, pid, started}), or None.

    The lock file names its holder while it holds it (lifecycle.WorkdirLock empties it at a clean exit). A
    holder on this host is checked by its PID; one on another host is taken at its word.
    """
    try:
        with open(os.path.join(workdir, lifecycle.LOCK_FILE)) as f:
            holder = json.loads(f.read() or "{}")
    except (OSError, ValueError):
        return None
    if not holder.get("pid"):
        return None
    if holder.get("host") == socket.gethostname() and not lifecycle.pid_alive(int(holder["pid"])):
        return None
    return holder


@dataclasses.dataclass
class RunStatus:
    method: str
    seed: int
    workdir: str
    state: str
    detail: str = ""
    log: str | None = None
    slurm_job: str | None = None


def run_status(method: str, seed: int, workdir: str, num_epochs: int) -> RunStatus:
    """Where the run in `workdir` stands (see the module docstring); `num_epochs` is the sweep config's."""
    results, worker = _read(workdir, run_files.RESULTS_FILE), _read(workdir, WORKER_FILE)
    status = RunStatus(method, seed, workdir, NOT_STARTED, log=worker.get("log"), slurm_job=worker.get("slurm_job"))
    trainer = _trainer(workdir)
    checkpoint_step = latest_checkpoint_step(workdir)
    failure = _read(workdir, FAILURE_FILE)
    if results and results.get("final", {}).get("epoch") == num_epochs:
        status.state = DONE
        status.detail = f"{results.get('steps', '?')} steps"
    elif trainer:
        progress = _read(workdir, run_files.PROGRESS_FILE)
        step = progress.get("step", checkpoint_step if checkpoint_step is not None else 0)
        total = f" of {progress['total_steps']}" if "total_steps" in progress else ""
        status.state = RUNNING
        status.detail = f"step {step}{total} (PID {trainer.get('pid')} on {trainer.get('host')}" + (
            f", shard {worker['shard']}" if worker.get("shard") else "") + ")"
    elif failure:
        status.state = FAILED
        status.detail = failure.get("error", "?") + f" (at {failure.get('failed', '?')})"
        status.log = failure.get("log") or status.log
    elif checkpoint_step is not None:
        status.state = STOPPED
        status.detail = f"at step {checkpoint_step}; the same sweep resumes it"
    return status


def sweep_status(root: str, method_names: Sequence[str], seeds: Sequence[int], num_epochs: int,
                 run_workdir) -> list[RunStatus]:
    """Every run's status, method-major, with its SLURM task's state where it had one."""
    statuses = [run_status(method, seed, run_workdir(root, method, seed), num_epochs)
                for method in method_names for seed in seeds]
    jobs = sorted({s.slurm_job for s in statuses if s.slurm_job and s.state != DONE})
    states = slurm.job_states(jobs) if jobs else {}
    for status in statuses:
        if status.state != DONE and status.slurm_job in states:
            status.detail += f"; SLURM job {status.slurm_job} {states[status.slurm_job]}"
    return statuses


def format_status(statuses: Sequence[RunStatus]) -> str:
    """One line per run, then the counts."""
    lines = []
    for s in statuses:
        log = f"  log: {s.log}" if s.log and s.state in (FAILED, RUNNING, STOPPED) else ""
        lines.append(f"{s.method:<12} seed {s.seed:<4} {s.state:<12} {s.detail}{log}  [{s.workdir}]")
    counts = collections.Counter(s.state for s in statuses)
    lines.append(f"{len(statuses)} runs: " + ", ".join(f"{counts[state]} {state}" for state in STATES
                                                      if counts[state]))
    return "\n".join(lines)
