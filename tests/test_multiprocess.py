"""Two real processes on localhost (JAX's CPU backend, gloo collectives) against one process.

Each process runs tests/helpers/run_training.py, which joins the run through mbde_jax.distributed (the code
behind train.py's --coordinator_address/--num_processes/--process_id) and reports errors as train.py does.
"""

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from mbde_jax import compilation_cache, distributed, tensorboard_scalars, training
from test_train import NUM_EXAMPLES, ROOT, STEPS_PER_EPOCH
from test_train import STRAIGHT_RUN as _RUN  # log_every_steps is 2 (configs/test.py)
from test_train import straight_run  # noqa: F401 (a fixture)

HEARTBEAT_S = 10


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def _start(tmp_path, workdir: str, num_processes: int, devices_per_process: int,
           per_process: dict | None = None) -> list[subprocess.Popen]:
    """Starts one training run as `num_processes` processes; per_process[i] adds fields to process i's args."""
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}")
    processes = []
    for index in range(num_processes):
        args = dict(mode="train", metadata_dir=str(tmp_path / "meta"), num_examples=NUM_EXAMPLES, overrides=_RUN,
                    workdir=str(tmp_path / workdir), **(per_process or {}).get(index, {}))
        if num_processes > 1:
            args["distributed"] = dict(coordinator_address=f"localhost:{port}", num_processes=num_processes,
                                       process_id=index, heartbeat_timeout_seconds=HEARTBEAT_S)
        processes.append(subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "helpers" / "run_training.py"), json.dumps(args)], env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    return processes


def _finish(processes: list[subprocess.Popen], timeout_s: float = 400) -> list[tuple[int, str, float]]:
    """(exit status, stderr, time.monotonic() at its exit) of each process; kills every process that outlives
    `timeout_s`."""
    # Each process's output is collected by a thread: a full pipe would otherwise block it.
    collected: dict[int, str] = {}
    readers = [threading.Thread(target=lambda i=i, p=p: collected.__setitem__(i, p.stderr.read()), daemon=True)
               for i, p in enumerate(processes)]
    for reader in readers:
        reader.start()
    deadline, exited = time.monotonic() + timeout_s, {}
    try:
        while len(exited) < len(processes) and time.monotonic() < deadline:
            for index, process in enumerate(processes):
                if index not in exited and process.poll() is not None:
                    exited[index] = time.monotonic()
            time.sleep(0.2)
    finally:
        for process in processes:
            process.kill()
    for reader in readers:
        reader.join(timeout=30)
    assert len(exited) == len(processes), f"still running after {timeout_s} s: {collected}"
    return [(p.returncode, collected.get(i, ""), exited[i]) for i, p in enumerate(processes)]


def _metrics(workdir: pathlib.Path) -> list[dict]:
    return [{"metrics": entry["metrics"], "train": entry["train"]}
            for entry in json.loads((workdir / "history.json").read_text())]


def _assert_close(history_a: list[dict], history_b: list[dict], rtol: float) -> None:
    assert len(history_a) == len(history_b) == 2
    for entry_a, entry_b in zip(history_a, history_b):
        for part in ("metrics", "train"):
            assert entry_a[part].keys() == entry_b[part].keys()
            for name, value in entry_a[part].items():
                if isinstance(value, str):
                    assert value == entry_b[part][name]
                else:
                    np.testing.assert_allclose(value, entry_b[part][name], rtol=rtol, atol=1e-6, err_msg=name)


@pytest.mark.slow
def test_two_processes_equal_one_process_and_resume_exactly(tmp_path, straight_run):
    # 'single': one process with 2 devices (test_train.straight_run, the same config);
    # 'double': two processes with 1 device each (the same 2-device mesh); 'stopped': two processes stopped by a
    # SIGTERM that only process 1 receives, then resumed. 'stopped' starts once 'double' is done, so that its
    # process 0 finds its programs in the compilation cache; under a jax that deadlocks with the cache
    # (mbde_jax.compilation_cache.cache_deadlocks) each process compiles its own programs without it.
    single = straight_run / "straight"
    outcome = {"double": _finish(_start(tmp_path, "double", 2, 1))}
    outcome["stopped"] = _finish(_start(tmp_path, "stopped", 2, 1,
                                        {1: {"signal_after_step": 3, "signals": ["SIGTERM"]}}))
    outcome["resumed"] = _finish(_start(tmp_path, "stopped", 2, 1))
    for status, stderr, _ in outcome["double"]:
        assert status == 0, f"double: {stderr[-3000:]}"
        cache_off = "compilation cache off: a run of several processes on CPUs compiles in every process" in stderr
        assert cache_off == compilation_cache.cache_deadlocks({"cpu"}, 2, jax.__version_info__), stderr[-3000:]
    for index, (status, stderr, _) in enumerate(outcome["stopped"]):
        assert status == 143, stderr[-3000:]
        # Processes agree at log steps (every 2): the signal after step 3 stops both after step 4.
        assert stderr.strip().splitlines()[-1].startswith(
            "stopped by SIGTERM (received by process 1) at step 4 of 16"), (index, stderr[-3000:])
    for status, stderr, _ in outcome["resumed"]:
        assert status == 0, [process_stderr[-3000:] for _, process_stderr, _ in outcome["resumed"]]
        assert "resumed from step 4" in stderr

    workdirs = {"single": single, "double": tmp_path / "double", "stopped": tmp_path / "stopped"}
    history = {name: _metrics(workdir) for name, workdir in workdirs.items()}
    assert history["single"][-1]["metrics"]["num_examples"] == NUM_EXAMPLES  # each test example once
    assert history["double"][-1]["metrics"]["num_examples"] == NUM_EXAMPLES
    _assert_close(history["single"], history["double"], rtol=1e-5)
    assert history["stopped"] == history["double"]
    results = {name: json.loads((workdir / "results.json").read_text()) for name, workdir in workdirs.items()}
    assert results["double"]["steps"] == results["single"]["steps"] == 2 * STEPS_PER_EPOCH
    assert results["double"]["provenance"]["process_count"] == 2
    # Only process 0 writes files: one TensorBoard event file (and the layout), no temporary JSON left behind.
    events = sorted(path.name for path in (tmp_path / "double").glob("events.out.tfevents.*"))
    assert len(events) == 2 and events[0] == tensorboard_scalars.LAYOUT_FILE, events
    assert not list((tmp_path / "double").glob("*.tmp"))

    # The two-process checkpoints restore in this (single) process; they equal the single-process state.
    states = [training.restore_latest(str(workdir))[1] for workdir in workdirs.values()]
    for single, double, resumed in zip(*(jax.tree_util.tree_leaves(state) for state in states)):
        np.testing.assert_allclose(np.asarray(single), np.asarray(double), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(double), np.asarray(resumed))


@pytest.mark.slow
def test_a_killed_process_ends_the_other_with_one_line(tmp_path):
    killed = _start(tmp_path, "killed", 2, 1, {1: {"signal_after_step": 3, "signals": ["SIGKILL"]}})
    (status_0, stderr_0, exit_0), (status_1, _, exit_1) = _finish(killed)
    assert status_1 == -9
    # Either the next collective fails and our one line ends the process (exit 75, distributed.EXIT_PEER_LOST;
    # jax 0.12's gloo reports the closed connection at once), or, when the collective cannot tell (jax 0.10's
    # gloo waits), JAX's coordination service ends it after the heartbeat timeout with its own message.
    last_line = stderr_0.strip().splitlines()[-1] if stderr_0.strip() else ""
    ours = status_0 == 75 and last_line.startswith(
        "train.py: error: process 0 of 2 lost contact with the other processes of this run (")
    jax_own = status_0 == -signal.SIGABRT and (
        "Terminating process because the JAX distributed service detected fatal errors" in stderr_0)
    assert ours or jax_own, (status_0, stderr_0[-3000:])
    if ours:
        assert last_line.endswith("start every process again with the same command to resume.")
        assert "Traceback" not in stderr_0
    # Bounded by the heartbeat timeout, not left hanging.
    assert exit_0 - exit_1 < HEARTBEAT_S + 20


@pytest.mark.parametrize("kwargs, environ, message", [
    (dict(num_processes=2), {}, "(missing: --coordinator_address, --process_id)"),
    (dict(coordinator_address="h:1", num_processes=2, process_id=2), {}, "--process_id=2 is outside [0, 2)"),
    ({}, {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"},
     "JAX_NUM_PROCESSES='two' is not a whole number"),
    (dict(coordinator_address="h:1", num_processes=0, process_id=0), {}, "--num_processes=0: must be at least 1"),
])
def test_incomplete_or_inconsistent_launch_settings_are_refused(kwargs, environ, message):
    with pytest.raises(distributed.DistributedConfigError, match=re.escape(message)):
        distributed.settings_from(**kwargs, environ=environ)


def test_launch_settings_from_flags_environment_and_cluster():
    assert not distributed.settings_from(environ={}).explicit
    from_env = distributed.settings_from(environ={"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "4",
                                                  "JAX_PROCESS_ID": "3"})
    assert (from_env.coordinator_address, from_env.num_processes, from_env.process_id) == ("h:1", 4, 3)
    flag_wins = distributed.settings_from(process_id=1, environ={"JAX_COORDINATOR_ADDRESS": "h:1",
                                                                 "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"})
    assert flag_wins.process_id == 1
    # On SLURM JAX fills in the rest, so a partial setting is not an error there.
    slurm = distributed.settings_from(num_processes=2, environ={"SLURM_NTASKS": "2"})
    assert slurm.auto_detect and slurm.num_processes == 2
    assert not distributed.cluster_detected({"SLURM_NTASKS": "1", "TPU_WORKER_HOSTNAMES": "one-host"})
    assert distributed.cluster_detected({"TPU_WORKER_HOSTNAMES": "w0,w1"})
    # One process keeps the compilation cache.
    assert not compilation_cache.off_for_multi_process_cpu(jax.devices()) and jax.config.jax_enable_compilation_cache
    # One process needs no runtime: nothing is initialised.
    assert not distributed.initialize(distributed.settings_from(environ={}))
    assert not distributed.initialize(distributed.settings_from(coordinator_address="h:1", num_processes=1,
                                                                process_id=0, environ={}))


def test_a_single_process_error_is_never_taken_for_a_lost_peer():
    assert not distributed.is_peer_failure(ValueError("Gloo all-reduce failed: Connection reset by peer"))


def test_a_peer_that_never_joined_the_backend_is_a_lost_peer(monkeypatch):
    # A process that crashes before its first JAX call leaves the others waiting for its device topology; their
    # backend then never comes up, so even asking for the process count raises. That is still a lost peer.
    def no_backend():
        raise RuntimeError("Unable to initialize backend 'cpu'")

    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(jax, "process_count", no_backend)
    monkeypatch.setattr(jax, "process_index", no_backend)
    error = RuntimeError("INTERNAL: Getting local topologies failed: Error 1: GetKeyValue() timed out with key: "
                         "cpu:local_topology/cpu/1 and duration: 2m")
    assert distributed.is_peer_failure(error)
    assert distributed.describe_peer_failure(error).startswith(
        "this process lost contact with the other processes of this run (INTERNAL: Getting local topologies")
    assert not distributed.is_peer_failure(ValueError("a shape mismatch"))


def test_train_py_refuses_incomplete_launch_flags_in_one_line(tmp_path):
    completed = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs" / "test.py"),
         "--workdir", str(tmp_path / "run"), "--num_processes=2"], capture_output=True, text=True, timeout=300,
        env={k: v for k, v in os.environ.items() if not k.startswith(("JAX_COORDINATOR", "SLURM_"))})
    assert completed.returncode == 1
    assert completed.stderr.strip().splitlines()[-1].startswith(
        "train.py: error: a multi-process run needs --coordinator_address, --num_processes and --process_id "
        "together (missing: --coordinator_address, --process_id)")
    assert not (tmp_path / "run").exists()  # refused before anything was created
