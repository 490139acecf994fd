"""SLURM, the scheduler most of our users' clusters run: a sweep's share, its array job, and requeueing.

A sweep is spread over a cluster as ONE array job of N tasks (`mbde-sweep ... --submit slurm`): every task
runs the same sweep command, plans the whole sweep and trains the runs of its share (sweep.Shard, from
SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT). The job is written as a plain sbatch script rather than through
submitit: the sweep is a command line, not a Python function to pickle, and a script that `--dry_run` prints
is what a cluster's admins and users can read, keep and edit (module loads, accounts, QOS) without a new
dependency or a running Python process that waits for the job.

Preemption and time limits: the script asks SLURM for SIGUSR1 `signal_seconds` before the time limit
(`--signal=B:USR1@s`, delivered to the sweep itself: the script `exec`s it). Training treats SIGUSR1 like
SIGTERM (finish the step, checkpoint, stop) and then `requeue_after_stop` requeues this task, which resumes
from that checkpoint when SLURM starts it again (SLURM holds a requeued job for about two minutes first).
SIGTERM, what `scancel` and a preemption send, checkpoints and stops without requeueing: SLURM itself requeues
a preempted job of a partition with PreemptMode=REQUEUE (the script asks for `--requeue`).

Task i writes its log to <sweep root>/slurm/task_<i>.log (appended across requeues); the submitted script is
<sweep root>/slurm/sweep.sbatch and every submission is listed in <sweep root>/slurm/submissions.json.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from typing import Sequence

SLURM_DIR = "slurm"  # under the sweep root
SCRIPT_FILE = "sweep.sbatch"
SUBMISSIONS_FILE = "submissions.json"
REQUEUE_SIGNAL = signal.SIGUSR1
# Set by the array job's script: the file this task's output goes to (task_log_path), for the sweep's status.
LOG_ENV = "MBDE_SWEEP_LOG"


class SlurmError(RuntimeError):
    """sbatch or scontrol is missing or refused; the message says what SLURM said and what to do."""


@dataclasses.dataclass(frozen=True)
class Resources:
    """What each array task asks SLURM for; None leaves a field to the cluster's defaults.

    Attributes:
      tasks: array tasks (the sweep's runs are dealt round-robin over them).
      array_parallelism: at most this many tasks run at once (0: no limit), sbatch's --array=0-(N-1)%P.
      time: time limit per task, sbatch's --time (e.g. 1-00:00:00).
      signal_seconds: SIGUSR1 this long before the time limit (checkpoint and requeue).
      extra: further sbatch options, each as its command-line form (e.g. --account=abc, --qos=long).
      setup: shell lines run before the sweep (e.g. `module load cuda/12; source venv/bin/activate`).
    """

    tasks: int
    partition: str | None = None
    time: str | None = None
    gpus_per_task: int = 0
    cpus_per_task: int | None = None
    mem: str | None = None
    array_parallelism: int = 0
    signal_seconds: int = 300
    job_name: str = "mbde-sweep"
    extra: tuple[str, ...] = ()
    setup: str | None = None


def slurm_dir(root: str) -> str:
    return os.path.join(root, SLURM_DIR)


def task_log_path(root: str, task: int) -> str:
    """Where array task `task` of the sweep rooted at `root` writes its output (the README names it)."""
    return os.path.join(os.path.abspath(slurm_dir(root)), f"task_{task}.log")


def array_task(environ: dict | None = None) -> tuple[int, int] | None:
    """(index, count) of this process's array task counted from 0, or None outside an array job."""
    env = os.environ if environ is None else environ
    if "SLURM_ARRAY_TASK_ID" not in env or "SLURM_ARRAY_TASK_COUNT" not in env:
        return None
    try:
        task, first, count = (int(env.get(name, "0")) for name in (
            "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_COUNT"))
    except ValueError:
        raise SlurmError("SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_MIN and SLURM_ARRAY_TASK_COUNT must be whole "
                         "numbers; give the share explicitly with --shard i/N") from None
    if not 0 <= task - first < count:
        raise SlurmError(f"array task {task} is outside the array's {count} tasks from {first} (SLURM's "
                         f"--array must be a range like 0-{count - 1}); give the share with --shard i/N")
    return task - first, count


def this_job(environ: dict | None = None) -> str | None:
    """The SLURM job this process belongs to, as scontrol names it (<array job>_<task> for an array task)."""
    env = os.environ if environ is None else environ
    if "SLURM_ARRAY_JOB_ID" in env and "SLURM_ARRAY_TASK_ID" in env:
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID")


def _directive(option: str, value) -> str:
    return f"#SBATCH --{option}={value}"


def sbatch_script(sweep_argv: Sequence[str], root: str, resources: Resources, *, workdir: str | None = None,
                  python: str | None = None) -> str:
    """The array job's script: one task per share, each running `python -m mbde_jax.sweep <sweep_argv>`.

    Args:
      sweep_argv: the sweep's flags without the submission's own (--submit, --slurm_*, --dry_run, --shard).
      root: the sweep root (its slurm/ directory receives the task logs).
      workdir: the directory the tasks start in (default: this one), so relative paths mean the same.
      python: the interpreter (default: this one, so the tasks use the same environment).
    """
    if resources.tasks < 1:
        raise ValueError(f"--slurm_tasks={resources.tasks}: an array job needs at least one task")
    array = f"0-{resources.tasks - 1}" + (f"%{resources.array_parallelism}" if resources.array_parallelism else "")
    lines = ["#!/bin/bash",
             f"# The sweep under {os.path.abspath(root)} as a SLURM array job of {resources.tasks} task(s), written "
             f"by mbde-sweep --submit slurm.",
             "# Task i trains share i of the sweep's runs; rerunning a task resumes its runs. Resubmit this file "
             "with: sbatch <this file>",
             _directive("job-name", resources.job_name),
             _directive("array", array),
             _directive("output", task_log_path(root, "%a")),
             _directive("open-mode", "append"),
             _directive("chdir", os.path.abspath(workdir or os.getcwd())),
             _directive("ntasks", 1),
             "#SBATCH --requeue",
             _directive("signal", f"B:{REQUEUE_SIGNAL.name.removeprefix('SIG')}@{resources.signal_seconds}")]
    for option, value in (("partition", resources.partition), ("time", resources.time),
                          ("cpus-per-task", resources.cpus_per_task), ("mem", resources.mem)):
        if value not in (None, ""):
            lines.append(_directive(option, value))
    if resources.gpus_per_task:
        lines.append(_directive("gpus-per-task", resources.gpus_per_task))
    lines += [f"#SBATCH {option}" for option in resources.extra]
    if resources.setup:
        lines.append(resources.setup)
    lines.append('echo "mbde-sweep: SLURM job ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID} on $(hostname) at '
                 '$(date +%F\\ %T), requeued ${SLURM_RESTART_COUNT:-0} times"')
    log_prefix = task_log_path(root, 0).removesuffix("0.log")
    lines.append(f'export {LOG_ENV}={shlex.quote(log_prefix)}"${{SLURM_ARRAY_TASK_ID}}.log"')
    # exec: the sweep is the batch shell itself, so SLURM's B:USR1 reaches it.
    command = [python or sys.executable, "-m", "mbde_jax.sweep", *sweep_argv]
    lines.append("exec " + " ".join(shlex.quote(arg) for arg in command))
    return "\n".join(lines) + "\n"


def _run(command: Sequence[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    if shutil.which(command[0]) is None:
        raise SlurmError(f"{command[0]} is not on PATH: {what} needs SLURM's client commands (on a cluster "
                         f"login node; here, `bash .ci/slurm install && bash .ci/slurm start` runs a local one)")
    return subprocess.run(list(command), capture_output=True, text=True, timeout=120, **kwargs)


def submit(script: str, root: str) -> str:
    """Writes the script to <root>/slurm/sweep.sbatch, submits it with sbatch and returns the job id."""
    directory = slurm_dir(root)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, SCRIPT_FILE)
    with open(path, "w") as f:
        f.write(script)
    result = _run(["sbatch", "--parsable", path], "--submit slurm")
    if result.returncode != 0:
        said = " ".join(result.stderr.split()) or f"exit status {result.returncode}"
        raise SlurmError(f"sbatch refused {path}: {said}; fix the --slurm_* flags (or the file) and submit again")
    job_id = result.stdout.strip().split(";")[0]
    submissions_path = os.path.join(directory, SUBMISSIONS_FILE)
    submissions = []
    if os.path.exists(submissions_path):
        with open(submissions_path) as f:
            submissions = json.load(f)
    submissions.append({"job_id": job_id, "script": path, "submitted": time.strftime("%Y-%m-%d %H:%M:%S")})
    with open(submissions_path + ".tmp", "w") as f:
        json.dump(submissions, f, indent=2)
    os.replace(submissions_path + ".tmp", submissions_path)
    return job_id


def requeue_after_stop(signum: int, environ: dict | None = None) -> str | None:
    """After a run stopped with a checkpoint: requeues this SLURM job when the signal was SLURM's time-limit
    warning (SIGUSR1). Returns the line to print, or None when there is nothing to requeue.

    Only the job's first task (SLURM_PROCID 0) asks: in a multi-process run every process stops together.
    """
    env = os.environ if environ is None else environ
    job = this_job(env)
    if signum != REQUEUE_SIGNAL or job is None or env.get("SLURM_PROCID", "0") != "0":
        return None
    try:
        result = _run(["scontrol", "requeue", job], "requeueing")
    except (SlurmError, OSError, subprocess.TimeoutExpired) as error:
        return f"could not requeue SLURM job {job} ({error}); submit it again to resume from the checkpoint"
    if result.returncode != 0:
        said = " ".join(result.stderr.split()) or f"exit status {result.returncode}"
        return (f"could not requeue SLURM job {job} ({said}; was it submitted with --requeue?); submit it again "
                f"to resume from the checkpoint")
    return f"requeued SLURM job {job}: it resumes from this checkpoint when SLURM starts it again"


def job_states(job_ids: Sequence[str]) -> dict[str, str]:
    """{job id: state (e.g. RUNNING, PENDING, FAILED)} for the jobs scontrol still knows; {} without SLURM."""
    states = {}
    for job_id in job_ids:
        try:
            result = _run(["scontrol", "-o", "show", "job", job_id], "the sweep's status")
        except (SlurmError, OSError, subprocess.TimeoutExpired):
            return {}
        fields = dict(item.split("=", 1) for item in result.stdout.split() if "=" in item)
        if result.returncode == 0 and "JobState" in fields:
            reason = fields.get("Reason", "None")
            states[job_id] = fields["JobState"] + (f" ({reason})" if reason not in ("None", "(null)") else "")
    return states
