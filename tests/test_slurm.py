"""The sweep and train.py under a real SLURM (the single-node cluster `.ci/slurm start` runs; CI starts it).

No mocked sbatch: the commands are the README's SLURM recipes (python3 is this interpreter, paths are the
test's), on the bundled digits with a tiny config. What is shown:
  * a 2 methods x 2 seeds sweep submitted as an array job (parallelism 2) trains every run exactly once and
    gives the sequential sweep's results and report; one task of it, signalled with SLURM's time-limit warning
    (SIGUSR1) mid-run, checkpoints, is requeued and resumes to the uninterrupted run's numbers, bit for bit;
    --status says running, stopped (requeued) and done along the way;
  * a task whose run fails for good shows in --status as failed with its log, and the other run is intact;
  * `srun -n 2 train.py` equals the 1-process run; scancel of the sbatch script stops both processes with a
    checkpoint, and submitting it again resumes to the uninterrupted 2-process run's numbers.
Outside CI, without a running SLURM, these tests skip with the line that says how to start one; in CI (CI=true)
a missing SLURM fails them.
"""

import fcntl
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
START_HINT = "start a local SLURM with: bash .ci/slurm install && bash .ci/slurm start (as root)"
# The tiny run every sweep test trains: configs/test.py on the first 360 digits, one epoch of 45 steps of batch 8.
DIGITS_ARGS = ["--config", str(ROOT / "configs" / "test.py"), "--config.dataset=digits", "--config.num_epochs=1",
               "--config.lr_boundaries_epochs=()", "--config.rampup_epochs=1"]
CONFIG_ARGS = [*DIGITS_ARGS, "--config.train_examples=360"]
# Two processes over gloo take a collective per step: the same examples in 11 steps of batch 32.
SRUN_CONFIG_ARGS = [*CONFIG_ARGS, "--config.batch_size=32", "--config.eval_batch_size=64"]
METHODS, SEEDS = "mbde,dml", "0,1"
JOB_TIMEOUT_S = 900  # generous: in the suite the jobs share the 2 cores with the other test worker


@pytest.fixture
def cluster(tmp_path_factory):
    """Skips (outside CI) or fails (in CI) unless a SLURM controller answers; then holds the cluster for the
    test. Under pytest-xdist the SLURM tests of both workers take turns (a file lock in the session's shared
    temp directory), so that no job waits in the queue behind another test's jobs."""
    answered = shutil.which("sinfo") and subprocess.run(
        ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30).stdout.strip()
    if not answered:
        message = f"no SLURM controller answers here; {START_HINT}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    with open(shared / "test_slurm.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The environment of every command: digits prepared once in a data directory of the module's own (so
    that tasks starting together never build it at once), the test suite's compilation cache, and JAX left to
    split the host's CPU into devices as a user's run does."""
    data_dir = tmp_path_factory.mktemp("slurm_data")
    environ = {name: value for name, value in os.environ.items() if name != "XLA_FLAGS"}
    # The tasks find this interpreter's python3 and mbde-train first, as in an activated environment.
    environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), environ.get("PATH", "")])
    subprocess.run([sys.executable, "-m", "mbde_jax.data", "prepare", "digits", "--data_dir", str(data_dir)],
                   check=True, capture_output=True, env=environ, timeout=300)
    environ["TFDS_DATA_DIR"] = str(data_dir)
    return environ


def _run(args, env, cwd=ROOT, check=True, timeout=JOB_TIMEOUT_S) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env, cwd=cwd,
                            timeout=timeout)
    if check:
        assert result.returncode == 0, f"{args}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _sweep_args(root, *extra, methods=METHODS, seeds=SEEDS):
    return [sys.executable, "-m", "mbde_jax.sweep", *CONFIG_ARGS, "--methods", methods, "--seeds", seeds,
            "--workdir", root, *extra]


def _job_id(output: str) -> str:
    found = re.search(r"(?:array job|Submitted batch job) (\d+)", output)
    assert found, output
    return found.group(1)


def _job_field(job: str, field: str) -> str:
    shown = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True).stdout
    return dict(item.split("=", 1) for item in shown.split() if "=" in item).get(field, "")


def _wait_until(condition, timeout_s=JOB_TIMEOUT_S, what="the condition", poll_s=0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def _wait_for_job(job: str) -> None:
    """Until no task of the job is pending or running (squeue every 0.5 s: sbatch --wait lags by tens of s)."""
    _wait_until(lambda: not subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True
                                           ).stdout.strip(), what=f"SLURM job {job}")


def _pending(pid: int, signum: int) -> bool:
    """Whether `signum` waits, undelivered, for process `pid` (a stopped process keeps it pending)."""
    fields = dict(line.split(":\t", 1) for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines()
                  if ":\t" in line)
    return bool((int(fields["SigPnd"], 16) | int(fields["ShdPnd"], 16)) & (1 << (signum - 1)))


def _signal_stopped_batch(job: str, pid: int, signal_name: str, log, env) -> None:
    """`scancel --signal --batch` to the task whose (SIGSTOPped) process is `pid`; once the signal is pending
    there, the process continues and the test waits for its log to show the signal arrived. The run is held
    between its first step and the signal, so the signal lands mid-run however long SLURM takes to deliver it.
    scancel of a running array task can retry for minutes ("Job can not be altered now, try again later") after
    delivering the signal, and deliver it again: it runs in the background and is stopped once it has."""
    sender = subprocess.Popen(["scancel", f"--signal={signal_name}", "--batch", job], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_until(lambda: _pending(pid, getattr(signal, f"SIG{signal_name}")), timeout_s=60,
                    what=f"SIG{signal_name} to reach {job}", poll_s=0.05)
    finally:
        sender.kill()
        sender.wait()
        os.kill(pid, signal.SIGCONT)
    _wait_until(lambda: f"SIG{signal_name} received" in _text(log), timeout_s=60,
                what=f"{job} to log SIG{signal_name}")


def _hold_after_first_step(logs_and_workdirs) -> list[int]:
    """SIGSTOPs each task's training process as soon as its log shows the first step done (polled every 50 ms,
    so that each run is held early among its 45 steps); their PIDs, in the order given."""
    held = {}

    def hold_each_ready():
        for index, (log, workdir) in enumerate(logs_and_workdirs):
            if index not in held and "first step done" in _text(log):
                held[index] = json.loads((workdir / "sweep_worker.json").read_text())["pid"]
                os.kill(held[index], signal.SIGSTOP)
        return len(held) == len(logs_and_workdirs)

    try:
        _wait_until(hold_each_ready, what="the first step of every held task", poll_s=0.05)
    except BaseException:
        for pid in held.values():
            os.kill(pid, signal.SIGCONT)
        raise
    return [held[index] for index in range(len(logs_and_workdirs))]


def _training_processes(workdir) -> list[int]:
    """PIDs of the mbde-train processes (not the batch script or srun) training into `workdir`."""
    pids = []
    for cmdline in pathlib.Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:  # ended meanwhile
            continue
        if len(args) > 1 and args[1].endswith(b"/mbde-train") and str(workdir).encode() in args:
            pids.append(int(cmdline.parent.name))
    return pids


def _signalled_or_running(pid: int, signum: int) -> bool:
    """Whether held process `pid` has `signum` pending, or runs again (SLURM continues a job's stopped processes
    when it signals them), or has ended."""
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "T" or _pending(pid, signum)
    except (OSError, IndexError):
        return True


def _continue(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


def _text(path) -> str:
    return pathlib.Path(path).read_text() if pathlib.Path(path).exists() else ""


def _history(workdir) -> list:
    return json.loads((pathlib.Path(workdir) / "history.json").read_text())


def _without_provenance(entry: dict) -> dict:
    return {key: value for key, value in entry.items() if key != "provenance"}


def _comparable_results(workdir) -> dict:
    """results.json without what differs between equal runs: timings and provenance."""
    results = json.loads((pathlib.Path(workdir) / "results.json").read_text())
    results = {key: value for key, value in results.items()
               if key != "provenance" and not key.startswith("train_seconds") and key != "train_images_per_second"}
    return dict(results, final=_without_provenance(results["final"]), best=_without_provenance(results["best"]))


def _comparable_history(workdir) -> list:
    return [_without_provenance(entry) for entry in _history(workdir)]


def _report(root, out, env) -> dict:
    _run([sys.executable, "-m", "mbde_jax.report", root, "--out", out], env)
    return {name: (pathlib.Path(out) / name).read_text().replace(str(root), "<root>")
            for name in ("results.csv", "results.md")}


def test_an_array_sweep_equals_the_sequential_one_and_a_signalled_task_resumes_exactly(cluster, env, tmp_path):
    # The reference: the same sweep trained one run after another in one process.
    sequential_sweep = tmp_path / "sequential"
    _run(_sweep_args(sequential_sweep), env)
    root = tmp_path / "array"
    status_args = _sweep_args(root, "--status")
    assert _run(status_args, env).stdout.strip().splitlines()[-1] == "4 runs: 4 not started"

    submitted = _run(_sweep_args(root, "--submit", "slurm", "--slurm_array_parallelism", "2"), env)
    job = _job_id(submitted.stdout)
    script = (root / "slurm" / "sweep.sbatch").read_text()
    assert "#SBATCH --array=0-3%2" in script and "#SBATCH --signal=B:USR1@300" in script
    exec_line = script.strip().splitlines()[-1]
    assert exec_line.startswith(f"exec {sys.executable} -m mbde_jax.sweep --config ")
    assert "--submit" not in exec_line and "--slurm_array_parallelism" not in exec_line

    # Task 0 (mbde seed 0) gets SLURM's time-limit warning once it trains; task 1 (mbde seed 1) runs meanwhile.
    # Both are held (SIGSTOP) after their first step: task 0 until the signal is pending, task 1 until its status
    # is taken (on a loaded machine a command's start-up can outlast the rest of a run's 45 steps).
    log_0, log_1 = root / "slurm" / "task_0.log", root / "slurm" / "task_1.log"
    task_0, task_1 = _hold_after_first_step([(log_0, root / "mbde" / "seed_0"), (log_1, root / "mbde" / "seed_1")])
    try:
        _signal_stopped_batch(f"{job}_0", task_0, "USR1", log_0, env)
        running = _run(status_args, env).stdout
    finally:
        os.kill(task_1, signal.SIGCONT)
    assert re.search(r"mbde +seed 1 +running +step \d+ of 45 .*shard 1/4.*RUNNING.*log: " + re.escape(str(log_1)),
                     running), running
    _wait_until(lambda: _job_field(f"{job}_0", "Restarts") == "1" and
                _job_field(f"{job}_0", "JobState") == "PENDING", what="task 0 to be requeued")
    stopped = _run(status_args, env).stdout
    assert re.search(r"mbde +seed 0 +stopped +at step \d+; the same sweep resumes it; SLURM job \S+ PENDING",
                     stopped), stopped
    # SLURM holds a requeued job for two minutes; the test lets it go now.
    _run(["scontrol", "update", f"jobid={job}_0", "StartTime=now"], env)
    _wait_for_job(job)

    for task in range(4):
        assert _job_field(f"{job}_{task}", "JobState") == "COMPLETED", (task, _text(root / "slurm" / f"task_{task}.log"))
    logs = {task: _text(root / "slurm" / f"task_{task}.log") for task in range(4)}
    stop_line = re.search(r"stopped by SIGUSR1 at step (\d+) of 45 .*checkpoint saved", logs[0])
    assert stop_line, logs[0]
    assert f"requeued SLURM job {job}_0: it resumes from this checkpoint" in logs[0]
    assert f"resumed from step {stop_line.group(1)}" in logs[0]
    # Every run finished exactly once, in the task its share gives it (method-major order, round robin).
    owners = {("mbde", 0): 0, ("mbde", 1): 1, ("dml", 0): 2, ("dml", 1): 3}
    for (method, seed), task in owners.items():
        finished = [t for t, text in logs.items() if re.search(rf"{method} +seed {seed} +(trained|resumed) ", text)]
        assert finished == [task], (method, seed, finished)
        workdir = f"{method}/seed_{seed}"
        assert json.loads((root / workdir / "sweep_worker.json").read_text())["shard"] == f"{task}/4"
        assert _comparable_history(root / workdir) == _comparable_history(sequential_sweep / workdir), workdir
        assert _comparable_results(root / workdir) == _comparable_results(sequential_sweep / workdir), workdir
    assert _run(status_args, env).stdout.strip().splitlines()[-1] == "4 runs: 4 done"
    assert _report(root, tmp_path / "report_array", env) == _report(sequential_sweep, tmp_path / "report_seq", env)


def test_a_task_that_fails_for_good_shows_in_the_status_with_its_log(cluster, env, tmp_path):
    root = tmp_path / "failing"
    # Seed 1's workdir cannot hold checkpoints: a file stands where its checkpoints/ directory goes.
    (root / "mbde" / "seed_1").mkdir(parents=True)
    (root / "mbde" / "seed_1" / "checkpoints").write_text("not a directory")
    submitted = _run(_sweep_args(root, "--submit", "slurm", methods="mbde"), env)
    job = _job_id(submitted.stdout)
    _wait_for_job(job)
    assert _job_field(f"{job}_0", "JobState") == "COMPLETED"
    assert _job_field(f"{job}_1", "JobState") == "FAILED"
    status = _run(_sweep_args(root, "--status", methods="mbde"), env).stdout
    log_1 = root / "slurm" / "task_1.log"
    assert re.search(r"mbde +seed 0 +done +45 steps", status), status
    failed = re.search(r"mbde +seed 1 +failed +(.*)  log: (\S+)", status)
    assert failed and failed.group(2) == str(log_1), status
    assert "checkpoints" in failed.group(1), status
    assert "Traceback" in _text(log_1) and "1 run(s) failed" in _text(log_1)
    assert status.strip().splitlines()[-1] == "2 runs: 1 done, 1 failed"
    assert json.loads((root / "mbde" / "seed_0" / "results.json").read_text())["final"]["epoch"] == 1


def test_srun_two_processes_equal_one_and_a_cancelled_batch_job_resumes(cluster, env, tmp_path):
    train = [sys.executable, "train.py", *SRUN_CONFIG_ARGS]
    _run([*train, "--workdir", tmp_path / "one_process"], env)
    # Two processes of one device each: the one process's two-device mesh, over gloo.
    _run(["srun", "-n", "2", *train, "--config.cpu_devices=1", "--workdir", tmp_path / "srun"], env)
    one, two = _history(tmp_path / "one_process"), _history(tmp_path / "srun")
    assert len(one) == len(two) == 1
    for part in ("metrics", "train"):
        assert one[0][part].keys() == two[0][part].keys()
        for name, value in one[0][part].items():
            if isinstance(value, str):
                assert two[0][part][name] == value, name
            else:
                np.testing.assert_allclose(two[0][part][name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    assert json.loads((tmp_path / "srun" / "results.json").read_text())["provenance"]["process_count"] == 2

    # The README's batch script: scancel stops both processes with a checkpoint; submitting again resumes.
    batch = ["sbatch", "--ntasks=2", f"--output={tmp_path / 'batch.log'}", "slurm/train.sbatch", *SRUN_CONFIG_ARGS,
             "--config.cpu_devices=1", "--workdir", tmp_path / "batch"]
    # Both processes are held (SIGSTOP) once the first has logged its first step (the other then waits for it in the
    # next collective), so that scancel's SIGTERM lands mid-run however long SLURM takes to deliver it.
    job = _job_id(_run(batch, env).stdout)
    _wait_until(lambda: "first step done" in _text(tmp_path / "batch.log"), what="the first step", poll_s=0.05)
    held = _training_processes(tmp_path / "batch")
    for pid in held:
        os.kill(pid, signal.SIGSTOP)
    try:
        assert len(held) == 2, held
        _wait_until(lambda: _text(tmp_path / "batch.log").count("first step done") == 2, what="both first steps")
        _run(["scancel", job], env)
        _wait_until(lambda: all(_signalled_or_running(pid, signal.SIGTERM) for pid in held), timeout_s=60,
                    what="SIGTERM to reach both processes", poll_s=0.05)
    finally:
        for pid in held:
            _continue(pid)
    _wait_for_job(job)
    log = _text(tmp_path / "batch.log")
    stops = re.findall(r"stopped by SIGTERM \(received by process [01, ]+\) at step (\d+) of 11", log)
    assert len(stops) == 2 and stops[0] == stops[1], log[-4000:]
    assert (tmp_path / "batch" / "checkpoints" / stops[0]).is_dir()
    job = _job_id(_run(batch, env).stdout)
    _wait_for_job(job)
    assert _job_field(job, "JobState") == "COMPLETED", _text(tmp_path / "batch.log")[-4000:]
    assert _text(tmp_path / "batch.log").count(f"resumed from step {stops[0]}") == 2
    assert _comparable_history(tmp_path / "batch") == _comparable_history(tmp_path / "srun")


# What needs no cluster: the shares, the environment they come from, the tasks' command line, the script.

@pytest.mark.parametrize("count", [1, 2, 3, 4, 7])
def test_every_run_of_a_plan_belongs_to_exactly_one_share(count):
    from mbde_jax import sweep

    owners = [[index for index in range(count) if sweep.Shard(index, count).owns(position)] for position in range(10)]
    assert owners == [[position % count] for position in range(10)]


@pytest.mark.parametrize("text", ["2/2", "-1/3", "a/2", "1", "1/0", ""])
def test_a_bad_shard_is_refused_naming_the_flag(text):
    from mbde_jax import sweep

    with pytest.raises(ValueError, match="--shard"):
        sweep.parse_shard(text)


def test_the_share_comes_from_the_flag_then_the_array_task():
    from mbde_jax import slurm, sweep

    array = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "4", "SLURM_ARRAY_TASK_COUNT": "3",
             "SLURM_ARRAY_JOB_ID": "77"}
    assert sweep.resolve_shard(None, array) == sweep.Shard(1, 3)
    assert sweep.resolve_shard("0/2", array) == sweep.Shard(0, 2)
    assert sweep.resolve_shard(None, {"SLURM_JOB_ID": "9"}) == sweep.Shard(0, 1)
    assert slurm.this_job(array) == "77_5" and slurm.this_job({"SLURM_JOB_ID": "9"}) == "9"
    with pytest.raises(slurm.SlurmError, match="--shard"):
        slurm.array_task(dict(array, SLURM_ARRAY_TASK_ID="9"))


def test_the_tasks_run_the_sweep_without_the_submission_flags():
    from absl import flags

    from mbde_jax import sweep_flags

    fv = flags.FlagValues()
    flags.DEFINE_bool("dry_run", False, "", flag_values=fv)
    flags.DEFINE_bool("status", False, "", flag_values=fv)
    flags.DEFINE_string("shard", None, "", flag_values=fv)
    flags.DEFINE_enum("submit", None, ["slurm"], "", flag_values=fv)
    flags.DEFINE_string("workdir", None, "", flag_values=fv)
    flags.DEFINE_integer("slurm_array_parallelism", 0, "", flag_values=fv)
    flags.DEFINE_string("slurm_time", None, "", flag_values=fv)
    args = ["--config", "c.py:a,b", "--config.seed=3", "--submit", "slurm", "--slurm_time=1:00:00",
            "--slurm_array_parallelism", "2", "--nodry_run", "--dry_run", "--shard=0/2", "--workdir", "w"]
    assert sweep_flags.task_argv(args, fv) == ["--config", "c.py:a,b", "--config.seed=3", "--workdir", "w"]


def test_the_array_script_asks_for_the_resources_the_signal_and_a_log_per_task(tmp_path):
    from mbde_jax import slurm

    resources = slurm.Resources(tasks=6, partition="gpu", time="1-00:00:00", gpus_per_task=1, cpus_per_task=8,
                                mem="32G", array_parallelism=3, signal_seconds=120, extra=("--account=lab",),
                                setup="module load cuda/12.4")
    script = slurm.sbatch_script(["--config", "configs/paper.py:cifar100,resnet32", "--workdir", "w 1"],
                                 str(tmp_path / "root"), resources, workdir="/home/me", python="/venv/bin/python3")
    lines = script.splitlines()
    for expected in ("#SBATCH --array=0-5%3", f"#SBATCH --output={tmp_path}/root/slurm/task_%a.log",
                     "#SBATCH --open-mode=append", "#SBATCH --chdir=/home/me", "#SBATCH --requeue",
                     "#SBATCH --signal=B:USR1@120", "#SBATCH --partition=gpu", "#SBATCH --time=1-00:00:00",
                     "#SBATCH --gpus-per-task=1", "#SBATCH --cpus-per-task=8", "#SBATCH --mem=32G",
                     "#SBATCH --account=lab", "module load cuda/12.4"):
        assert expected in lines, expected
    assert lines[-1] == ("exec /venv/bin/python3 -m mbde_jax.sweep --config configs/paper.py:cifar100,resnet32 "
                         "--workdir 'w 1'")
    assert lines[-2] == f'export MBDE_SWEEP_LOG={tmp_path}/root/slurm/task_"${{SLURM_ARRAY_TASK_ID}}.log"'
    # The directives come before the first command, or sbatch ignores them.
    first_command = next(i for i, line in enumerate(lines) if line and not line.startswith("#"))
    assert all(i < first_command for i, line in enumerate(lines) if line.startswith("#SBATCH"))


def test_only_the_time_limit_warning_of_a_slurm_job_requeues():
    from mbde_jax import slurm

    job = {"SLURM_JOB_ID": "9", "SLURM_PROCID": "0"}
    assert slurm.requeue_after_stop(signal.SIGTERM, job) is None
    assert slurm.requeue_after_stop(signal.SIGUSR1, {}) is None
    assert slurm.requeue_after_stop(signal.SIGUSR1, dict(job, SLURM_PROCID="1")) is None
