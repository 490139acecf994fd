"""A hostile user's faults: signals, damaged checkpoints, two trainers, failing evaluation, bad values, changed
configs. Each run is configs/test.py on mocked CIFAR-10 (8 steps per epoch)."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from mbde_jax import checkpoint, config_validation, lifecycle, training
from mbde_jax import workdir as run_files
from mbde_jax.data import testing
from test_train import NUM_EXAMPLES, ROOT, STEPS_PER_EPOCH, _config, _run_subprocess, _train, train_in_process
from test_train import STRAIGHT_RUN as _SIGNAL_RUN
from test_train import straight_run  # noqa: F401 (a fixture)


def _leaves_equal(workdir_a: str, workdir_b: str) -> None:
    _, state_a, _ = training.restore_latest(workdir_a)
    _, state_b, _ = training.restore_latest(workdir_b)
    leaves_a, leaves_b = jax.tree_util.tree_leaves(state_a), jax.tree_util.tree_leaves(state_b)
    assert len(leaves_a) == len(leaves_b) > 0
    for a, b in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _read(workdir, name):
    return json.loads(pathlib.Path(workdir, name).read_text())


@pytest.mark.slow
@pytest.mark.parametrize("signal_name, exit_code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_checkpoints_and_the_resumed_run_is_bit_identical(straight_run, tmp_path, signal_name, exit_code,
                                                                   caplog):
    common = dict(mode="train", metadata_dir=str(straight_run / "meta"), num_examples=NUM_EXAMPLES,
                  overrides=_SIGNAL_RUN)
    stopped = _run_subprocess(dict(common, workdir=str(tmp_path / "stopped"), signal_after_step=11,
                                   signals=[signal_name]), xla_devices=2)
    assert stopped.returncode == exit_code, stopped.stderr[-3000:]
    last_line = stopped.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"stopped by {signal_name} at step 11 of 16 (epoch 2, batch 3 of 8); checkpoint "
                                f"saved in {tmp_path / 'stopped' / 'checkpoints'}")
    assert "Traceback" not in stopped.stderr and "KeyboardInterrupt" not in stopped.stderr
    train_in_process(tmp_path / "stopped", straight_run / "meta", _SIGNAL_RUN, caplog)
    assert "resumed from step 11" in caplog.text
    straight = straight_run / "straight"
    assert _read(straight, "history.json") == _read(tmp_path / "stopped", "history.json")
    assert _read(straight, "results.json")["final"] == _read(tmp_path / "stopped", "results.json")["final"]
    _leaves_equal(str(straight), str(tmp_path / "stopped"))


@pytest.mark.slow
def test_a_second_signal_during_the_checkpoint_stops_at_once_in_one_line(tmp_path):
    args = dict(mode="train", metadata_dir=str(tmp_path / "meta"), num_examples=NUM_EXAMPLES,
                workdir=str(tmp_path / "run"), overrides={"checkpoint_every_minutes": 0},
                signal_after_step=11, signals=["SIGTERM"], signals_during_save=["SIGTERM"])
    completed = _run_subprocess(args, xla_devices=2)
    assert completed.returncode == -15, completed.stderr[-3000:]
    assert "Traceback" not in completed.stderr
    assert completed.stderr.strip().splitlines()[-1] == (
        f"stopped at once by a second SIGTERM, before the checkpoint this run was stopping for was complete; the "
        f"next run resumes from step 8 of 16, the latest complete checkpoint in {tmp_path / 'run' / 'checkpoints'}: "
        f"run the same command again.")
    # No checkpoint of step 11: only the end of epoch 1 (step 8) was saved, and it reads.
    assert sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit()) == [8]
    assert int(training.restore_latest(str(tmp_path / "run"))[1].step) == 8


def test_time_based_checkpoints(tmp_path):
    # A tiny interval: every log step (log_every_steps=2) is due; the epoch policy adds the epoch ends.
    workdir, _ = _train(tmp_path, checkpoint_every_minutes=1e-9, keep_checkpoints=100)
    steps = sorted(int(p.name) for p in pathlib.Path(workdir, "checkpoints").iterdir() if p.name.isdigit())
    assert steps == list(range(2, 2 * STEPS_PER_EPOCH + 1, 2))
    workdir, _ = _train(tmp_path, "off", checkpoint_every_minutes=0, keep_checkpoints=100)
    steps = sorted(int(p.name) for p in pathlib.Path(workdir, "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]


@pytest.fixture(scope="module")
def two_epoch_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("two_epochs")
    workdir, results = _train(tmp_path, checkpoint_every_minutes=0)
    return tmp_path, workdir, results


def _unfinished_copy(workdir: str, tmp_path: pathlib.Path) -> pathlib.Path:
    """A copy of a finished run without its results.json, as a run stopped after its last checkpoint: a rerun
    restores it (a rerun of a finished run reads no checkpoint)."""
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    (copy / "results.json").unlink()
    return copy


def _damage_truncated_arrays(step_dir: pathlib.Path) -> None:
    for path in (step_dir / "state").rglob("d/*"):
        path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 3)])


def _damage_deleted_manifest(step_dir: pathlib.Path) -> None:
    for path in (step_dir / "state").rglob("manifest.ocdbt"):
        path.unlink()


def _damage_garbage_metadata(step_dir: pathlib.Path) -> None:
    (step_dir / "meta" / "metadata").write_text("{garbage")


def _damage_missing_item(step_dir: pathlib.Path) -> None:
    shutil.rmtree(step_dir / "state")


@pytest.mark.parametrize("damage", [_damage_truncated_arrays, _damage_deleted_manifest, _damage_garbage_metadata,
                                    _damage_missing_item])
def test_an_unreadable_checkpoint_is_set_aside_and_the_previous_one_used(two_epoch_run, tmp_path, damage, caplog,
                                                                         capfd):
    data_tmp, workdir, results = two_epoch_run
    copy = _unfinished_copy(workdir, tmp_path)
    damage(copy / "checkpoints" / str(2 * STEPS_PER_EPOCH))
    (copy / "checkpoints" / "24.orbax-checkpoint-tmp-1234").mkdir()  # a save that never completed
    capfd.readouterr()
    with testing.mocked_dataset("cifar10", num_examples=NUM_EXAMPLES, metadata_dir=str(data_tmp / "meta")):
        again = training.train_and_evaluate(_config(checkpoint_every_minutes=0), str(copy))
    # tensorstore's threads write to file descriptor 2: none of its reads outlived orbax's event loop
    written = capfd.readouterr().err
    assert "Event loop is closed" not in written and "Traceback" not in written, written[-3000:]
    assert f"checkpoint step {2 * STEPS_PER_EPOCH} cannot be read" in caplog.text
    assert not list((copy / "checkpoints").glob("*.orbax-checkpoint-tmp*"))
    (moved,) = (copy / "checkpoints_unreadable").iterdir()
    assert moved.name.startswith(f"{2 * STEPS_PER_EPOCH}.")
    # Resumed from step 8 and retrained epoch 2: the same numbers as the uninterrupted run.
    assert again["final"] == json.loads(json.dumps(results["final"]))
    _leaves_equal(workdir, str(copy))


def test_a_checkpoint_of_another_state_layout_is_refused_and_left_in_place(two_epoch_run, tmp_path, monkeypatch):
    data_tmp, workdir, _ = two_epoch_run
    copy = _unfinished_copy(workdir, tmp_path)
    before = sorted(path.name for path in (copy / "checkpoints").iterdir())
    monkeypatch.setattr(checkpoint, "STATE_LAYOUT", checkpoint.STATE_LAYOUT + 1)  # as a later version would read
    message = (rf"{copy / 'checkpoints'} holds checkpoints of state layout {checkpoint.STATE_LAYOUT - 1}; this "
               rf"mbde_jax reads layout {checkpoint.STATE_LAYOUT} ")
    with testing.mocked_dataset("cifar10", num_examples=NUM_EXAMPLES, metadata_dir=str(data_tmp / "meta")):
        with pytest.raises(checkpoint.CheckpointLayoutError, match=message):
            training.train_and_evaluate(_config(checkpoint_every_minutes=0), str(copy))
        with pytest.raises(checkpoint.CheckpointLayoutError, match=message):
            training.restore_latest(str(copy))
    assert sorted(path.name for path in (copy / "checkpoints").iterdir()) == before
    assert not (copy / "checkpoints_unreadable").exists()


def test_no_readable_checkpoint_is_one_clear_error(two_epoch_run, tmp_path):
    data_tmp, workdir, _ = two_epoch_run
    copy = _unfinished_copy(workdir, tmp_path)
    for step in (STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH):
        _damage_garbage_metadata(copy / "checkpoints" / str(step))
    with pytest.raises(checkpoint.CheckpointUnreadableError,
                       match=rf"no checkpoint in {copy / 'checkpoints'} can be read \(steps 16, 8 were moved"):
        with testing.mocked_dataset("cifar10", num_examples=NUM_EXAMPLES,
                                    metadata_dir=str(data_tmp / "meta")):
            training.train_and_evaluate(_config(checkpoint_every_minutes=0), str(copy))
    assert len(list((copy / "checkpoints_unreadable").iterdir())) == 2  # moved, not deleted


def test_a_second_trainer_is_refused_and_a_dead_holder_taken_over(tmp_path, caplog):
    workdir = tmp_path / "run"
    workdir.mkdir()
    with lifecycle.WorkdirLock(str(workdir)):
        with pytest.raises(lifecycle.WorkdirLockedError, match=rf"is in use by another trainer \(PID {os.getpid()} "):
            _train(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (workdir / lifecycle.LOCK_FILE).write_text(json.dumps({"host": os.uname().nodename, "pid": dead.pid}))
    with lifecycle.WorkdirLock(str(workdir)):
        pass
    assert f"left by PID {dead.pid}" in caplog.text and "no longer running" in caplog.text


def test_a_failing_evaluation_loses_no_training(tmp_path, monkeypatch):
    calls = []
    original = training.Trainer.evaluate

    def evaluate_fails_on_epoch_2(self, state, batches):
        calls.append(int(state.step))
        if len(calls) == 2:
            raise RuntimeError("the eval data broke")
        return original(self, state, batches)

    monkeypatch.setattr(training.Trainer, "evaluate", evaluate_fails_on_epoch_2)
    with pytest.raises(RuntimeError, match="the eval data broke"):
        _train(tmp_path, checkpoint_every_minutes=0)
    workdir = tmp_path / "run"
    assert checkpoint.Checkpointer(str(workdir), read_only=True).latest_step() == 2 * STEPS_PER_EPOCH
    monkeypatch.setattr(training.Trainer, "evaluate", original)
    _, results = _train(tmp_path, checkpoint_every_minutes=0)  # evaluates the missing epoch, trains nothing
    assert [entry["epoch"] for entry in _read(workdir, "history.json")] == [1, 2]
    _, straight = _train(tmp_path, "straight", checkpoint_every_minutes=0)
    assert results["final"] == straight["final"]


def test_config_history_and_accumulated_train_seconds(two_epoch_run, tmp_path):
    data_tmp, workdir, results = two_epoch_run
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    reader = checkpoint.Checkpointer(str(copy), read_only=True)
    seconds_at_checkpoint = reader.restore_meta()["train_seconds"]  # what the earlier session had trained
    reader.close()
    with testing.mocked_dataset("cifar10", num_examples=NUM_EXAMPLES, metadata_dir=str(data_tmp / "meta")):
        with pytest.raises(config_validation.ConfigError, match="pass --allow_config_change"):
            training.train_and_evaluate(_config(checkpoint_every_minutes=0, num_epochs=3), str(copy))
        longer = training.train_and_evaluate(_config(checkpoint_every_minutes=0, num_epochs=3), str(copy),
                                          allow_config_change=True)
        with pytest.raises(config_validation.ConfigError, match=r"other shapes \(num_branches 3 -> 4\)"):
            training.train_and_evaluate(_config(checkpoint_every_minutes=0, num_epochs=3, num_branches=4), str(copy),
                                     allow_config_change=True)
    (change,) = _read(copy, run_files.CONFIG_HISTORY_FILE)
    assert change["replaced_at_step"] == 2 * STEPS_PER_EPOCH and change["changed_fields"] == ["num_epochs"]
    assert change["config"]["num_epochs"] == 2 and _read(copy, "config.json")["num_epochs"] == 3
    assert 0 < seconds_at_checkpoint <= results["train_seconds"]
    assert longer["train_seconds"] == pytest.approx(seconds_at_checkpoint + longer["train_seconds_this_session"],
                                                    abs=0.15)


def test_unusable_workdirs_are_one_line(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    with pytest.raises(config_validation.ConfigError, match=rf"--workdir {a_file}: cannot be used"):
        training.train_and_evaluate(_config(), str(a_file))


def test_an_empty_methods_list_is_refused(tmp_path):
    completed = subprocess.run([sys.executable, "-m", "mbde_jax.sweep", "--config", str(ROOT / "configs" / "test.py"),
                                "--methods=", "--workdir", str(tmp_path / "sweep"), "--dry_run"],
                               capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert completed.returncode == 1
    assert completed.stderr.strip().splitlines()[-1] == (
        "mbde_jax.sweep: error: the sweep needs at least one method (--methods) and one seed (--seeds) (MBDE_DEBUG=1 "
        "shows the traceback)")


_SWEEP = """
import json, sys
from mbde_jax import config_utils, sweep
from mbde_jax.data import testing
args = json.loads(sys.argv[1])
config = config_utils.load_sibling(args["config"], "test").get_config()
config.update_from_flattened_dict(args["overrides"])
with testing.mocked_dataset("cifar10", num_examples=args["num_examples"], metadata_dir=args["meta"]):
    runs = sweep.run_sweep(config, ["mbde"], [0], args["root"])
print("OUTCOMES " + json.dumps([run.outcome for run in runs]))
"""


@pytest.mark.slow
def test_a_resumed_sweep_run_keeps_the_device_split(tmp_path, straight_run):
    # No XLA_FLAGS: the CPU is split by config.cpu_devices, as for a user, which only works before JAX starts.
    # The uninterrupted reference is the straight run (the same run on the suite's two devices).
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    overrides = {"cpu_devices": 2, "checkpoint_every_minutes": 0}
    args = dict(config=str(ROOT / "configs" / "test.py"), overrides=overrides, num_examples=NUM_EXAMPLES,
                meta=str(tmp_path / "meta"))

    def sweep(root):
        done = subprocess.run([sys.executable, "-c", _SWEEP, json.dumps(dict(args, root=str(root)))], env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    stopped_workdir = tmp_path / "stopped" / "mbde" / "seed_0"
    stopped = subprocess.run([sys.executable, str(ROOT / "tests" / "helpers" / "run_training.py"), json.dumps(dict(
        mode="train", workdir=str(stopped_workdir), metadata_dir=str(tmp_path / "meta"), num_examples=NUM_EXAMPLES,
        overrides=dict(overrides, method="mbde", seed=0), signal_after_step=11))],
        env=env, capture_output=True, text=True, timeout=600)
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert 'OUTCOMES ["resumed"]' in sweep(tmp_path / "stopped")
    straight, resumed = _read(straight_run / "straight", "results.json"), _read(stopped_workdir, "results.json")
    assert straight["provenance"]["device_count"] == resumed["provenance"]["device_count"] == 2
    assert straight["final"] == resumed["final"]


@pytest.mark.parametrize("command, first_words", [
    (["-m", "mbde_jax.evaluate", "--workdir", "{missing}"], "mbde_jax.evaluate: error: {missing}/config.json does not exist"),
    (["-m", "mbde_jax.export", "--workdir", "{missing}", "--out", "{tmp}/out"],
     "mbde_jax.export: error: {missing}/config.json does not exist"),
    (["-m", "mbde_jax.report", "{tmp}"], "mbde_jax.report: error: no run (a directory with config.json) under"),
    (["train.py", "--config", "configs/test.py", "--workdir", "{file}"], "train.py: error: --workdir {file}: cannot be used"),
    # An override parsed once (a second parse would define the --config.<field> flags twice), then refused.
    (["train.py", "--config", "configs/test.py", "--workdir", "{tmp}/w", "--config.learning_rate=inf"],
     "train.py: error: config.learning_rate=inf: must be a finite number."),
    (["-m", "mbde_jax.sweep", "--config", "configs/test.py", "--workdir", "{tmp}/s", "--config.num_epochs=1"],
     "mbde_jax.sweep: error: config.lr_boundaries_epochs=(2,): epoch(s) [2] lie past config.num_epochs=1"),
])
def test_cli_user_errors_are_one_line(tmp_path, command, first_words):
    names = {"missing": str(tmp_path / "missing"), "tmp": str(tmp_path), "file": str(tmp_path / "a_file")}
    (tmp_path / "a_file").write_text("")
    argv = [part.format(**names) for part in command]
    env = {k: v for k, v in os.environ.items() if k != "MBDE_DEBUG"}
    done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(first_words.format(**names)), done.stderr[-2000:]
    debug = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=300, cwd=ROOT,
                           env=dict(env, MBDE_DEBUG="1"))
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_a_failed_save_removes_its_partial_checkpoint(two_epoch_run, tmp_path, monkeypatch):
    _, workdir, _ = two_epoch_run
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    checkpointer = checkpoint.Checkpointer(str(copy))
    _, state, meta = training.restore_latest(str(copy))

    def disk_full(step, args, force):
        (copy / "checkpoints" / f"{step}.orbax-checkpoint-tmp-99").mkdir()  # what orbax had written so far
        raise ValueError("OUT_OF_RANGE: Error writing file: No space left on device [os_error=ENOSPC]")

    monkeypatch.setattr(checkpointer._manager, "save", disk_full)
    with pytest.raises(checkpoint.CheckpointSaveError,
                       match=r"checkpoint step 24 could not be written in .* \(no space left on the device\); the "
                             r"partial save was removed and the next run resumes from step 16, the latest checkpoint, "
                             r"which is intact"):
        checkpointer.save(24, state, meta)
    assert not list((copy / "checkpoints").glob("*.orbax-checkpoint-tmp*"))
    assert checkpointer.latest_step() == 2 * STEPS_PER_EPOCH
    checkpointer.close()


def test_a_replicated_state_is_saved_without_compiling_and_restores_equal(tmp_path):
    # orbax's default would slice every replicated array over the replicas, compiling a program per array shape
    # at each process's first save; shapes no other test uses, so that no program is cached in this process.
    from jax.sharding import NamedSharding, PartitionSpec

    from mbde_jax import sharding, startup

    mesh = sharding.make_data_mesh()
    assert mesh.devices.size == 2  # tests/conftest.py's two CPU devices: every array has two replicas
    replicated = NamedSharding(mesh, PartitionSpec())
    state = {f"kernel_{i}": jax.device_put(np.arange(6 * (i + 37), dtype=np.float32).reshape(6, i + 37), replicated)
             for i in range(5)}
    state["step"] = jax.device_put(np.int32(7), replicated)
    compiled = []
    saver = checkpoint.Checkpointer(str(tmp_path))
    with startup.compilations(lambda name, _: compiled.append(name), lambda: None):
        saver.save(7, state, {"config": {}})
    saver.close()
    assert compiled == []
    reader = checkpoint.Checkpointer(str(tmp_path), read_only=True)
    restored, meta = reader.restore(checkpoint.abstract_like(state))
    reader.close()
    assert meta["config"] == {} and restored.keys() == state.keys()
    for name, array in state.items():
        assert restored[name].sharding == replicated, name
        np.testing.assert_array_equal(np.asarray(restored[name]), np.asarray(array), err_msg=name)
