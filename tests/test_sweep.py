"""The sweep on mocked CIFAR-10: one workdir per method x seed, finished runs skipped, stopped runs resumed from
their checkpoint, bad sweeps refused before anything trains.

The sweep built here (configs/test.py, methods mbde and one, seeds 0 and 1) is also what tests/test_report.py
reports on: `built_sweep` builds it once per test session, whichever module asks first.
"""

import contextlib
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from mbde_jax import config_utils, sweep, training
from mbde_jax.data import testing, train_input
from helpers import dropout_backbone, shared_build

ROOT = pathlib.Path(__file__).resolve().parents[1]
NUM_EXAMPLES = 64  # mocked examples per split: 8 steps of batch 8 per epoch
METHODS = ("mbde", "one")  # one with peer attention and a leader, one with a gate and no leader
SEEDS = (0, 1)
EPOCHS = 2


def _config():
    return config_utils.load_sibling(str(ROOT / "configs" / "test.py"), "test").get_config()


@contextlib.contextmanager
def _recording_training():
    """Yields (train_fn for run_sweep, {workdir: [[epoch, start_batch], ...]}) listing every epoch (part) that
    each run trained, as the input pipeline was asked for it."""
    trained: dict[str, list] = {}
    current = []
    original = train_input.TrainPipeline.epoch_batches

    def epoch_batches(self, epoch, start_batch=0):
        trained[current[-1]].append([epoch, start_batch])
        return original(self, epoch, start_batch)

    def train_fn(experiment, workdir):
        current.append(workdir)
        trained[workdir] = []
        return training.run_experiment(experiment, workdir)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_input.TrainPipeline, "epoch_batches", epoch_batches)
        yield train_fn, trained


def _sweep(root, metadata_dir, methods=METHODS, seeds=SEEDS):
    """Runs the sweep on mocked data; returns (planned runs with outcomes, what each run trained)."""
    with _recording_training() as (train_fn, trained), \
            testing.mocked_dataset("cifar10", num_examples=NUM_EXAMPLES, metadata_dir=str(metadata_dir)):
        runs = sweep.run_sweep(_config(), methods, seeds, str(root), train_fn=train_fn)
    return runs, trained


def built_sweep(tmp_path_factory) -> dict:
    """Builds the test sweep once per session (helpers.shared_build) and returns {'root', 'outcomes',
    'trained'}."""
    def build(directory):
        runs, trained = _sweep(directory / "root", directory / "meta")
        (directory / "built.json").write_text(json.dumps({
            "root": str(directory / "root"), "trained": trained,
            "outcomes": {run.workdir: run.outcome for run in runs}}))

    return json.loads((shared_build.build_once(tmp_path_factory, "test_sweep", build) / "built.json").read_text())


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    return built_sweep(tmp_path_factory)


@pytest.mark.slow
def test_every_method_and_seed_trains_in_its_own_workdir(swept):
    root = swept["root"]
    expected = [os.path.join(root, method, f"seed_{seed}") for method in METHODS for seed in SEEDS]
    assert list(swept["outcomes"]) == expected
    assert set(swept["outcomes"].values()) == {"trained"}
    for workdir in expected:
        assert swept["trained"][workdir] == [[epoch, 0] for epoch in range(EPOCHS)]  # from scratch
        results = json.loads(pathlib.Path(workdir, "results.json").read_text())
        method, seed = workdir.split(os.sep)[-2:]
        assert (results["method"], results["seed"], results["final"]["epoch"]) == (method, int(seed[5:]), EPOCHS)


def test_a_second_sweep_skips_the_finished_runs(swept, tmp_path):
    root = pathlib.Path(swept["root"])
    outputs = sorted(root.glob("*/seed_*/*.json"))
    before = {path: path.stat().st_mtime_ns for path in outputs}
    runs, trained = _sweep(root, tmp_path / "meta")
    assert [run.status for run in runs] == [sweep.STATUS_FINISHED] * len(METHODS) * len(SEEDS)
    assert {run.outcome for run in runs} == {"skipped"}
    assert trained == {}
    assert {path: path.stat().st_mtime_ns for path in outputs} == before


def test_a_stopped_run_resumes_from_its_checkpoint(swept, tmp_path):
    finished = pathlib.Path(swept["root"], "mbde", "seed_0")
    stopped = tmp_path / "root" / "mbde" / "seed_0"
    shutil.copytree(finished, stopped)
    # The state a run is left in when it is killed after evaluating epoch 2 but before its checkpoint: the
    # checkpoint of epoch 1 (step 8) is the latest and there is no results.json.
    shutil.rmtree(stopped / "checkpoints" / str(EPOCHS * NUM_EXAMPLES // 8))
    (stopped / "results.json").unlink()

    runs, trained = _sweep(tmp_path / "root", tmp_path / "meta", methods=["mbde"], seeds=[0])
    assert [(run.status, run.checkpoint_step, run.outcome) for run in runs] == [(sweep.STATUS_RESUME, 8, "resumed")]
    assert trained == {str(stopped): [[1, 0]]}  # only epoch 2 was trained again
    original = json.loads((finished / "results.json").read_text())
    resumed = json.loads((stopped / "results.json").read_text())
    assert resumed["final"] == original["final"]  # and it is the run that was stopped, not a new one


def test_an_unknown_method_fails_before_any_run(tmp_path):
    with pytest.raises(ValueError, match="valid methods are .*'mbde'.*'okddip'") as error:
        sweep.run_sweep(_config(), ["mbde", "nope"], [0], str(tmp_path / "root"))
    assert "nope" in str(error.value)
    assert not (tmp_path / "root").exists()


def test_a_sweep_over_runs_of_another_config_is_refused_from_the_command_line(swept):
    # --config.<field> reaches the sweep, and the finished runs made with learning_rate 0.1 are not reused.
    completed = subprocess.run(
        [sys.executable, "-m", "mbde_jax.sweep", f"--config={ROOT / 'configs' / 'test.py'}", "--methods=mbde",
         "--seeds=0,1", f"--workdir={swept['root']}", "--config.learning_rate=0.2", "--dry_run"],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert completed.returncode == 1, completed.stderr[-3000:]
    assert "different config" in completed.stderr
    assert "learning_rate: 0.1 there, 0.2 now" in completed.stderr
    assert os.path.join(swept["root"], "mbde", "seed_1") in completed.stderr


def test_the_dry_run_of_the_command_line_plans_without_training(swept):
    completed = subprocess.run(
        [sys.executable, "-m", "mbde_jax.sweep", f"--config={ROOT / 'configs' / 'test.py'}", "--methods=one,mbde",
         "--seeds=1,2", f"--workdir={swept['root']}", "--dry_run"], capture_output=True, text=True, timeout=300,
        cwd=ROOT)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "finished: will be skipped" in completed.stderr and "will start" in completed.stderr
    assert not pathlib.Path(swept["root"], "one", "seed_2").exists()


@pytest.mark.slow
def test_seeds_of_one_config_share_one_compiled_init_train_and_eval_step(tmp_path, monkeypatch):
    """A model with dropout, whose key comes from the seed: with the seed a constant, each seed compiled its own
    init and train step."""
    from mbde_jax import trainer

    monkeypatch.setattr(trainer, "_COMPILED_STEPS", type(trainer._COMPILED_STEPS)())  # nothing from other tests
    config = _config()
    config.num_epochs, config.lr_boundaries_epochs, config.rampup_epochs = 1, (), 1
    with dropout_backbone.registered() as arch, \
            testing.mocked_dataset("cifar10", num_examples=16, metadata_dir=str(tmp_path / "meta")):
        config.arch = arch
        runs = sweep.run_sweep(config, ["okddip"], [0, 1], str(tmp_path / "sweep"))
    first, second = runs
    assert [first.outcome, second.outcome] == ["trained", "trained"]
    for name in ("initial_draws", "create_train_state", "train_step", "eval_step"):
        assert first.compilations[name] == 1, first.compilations
        assert second.compilations[name] == 0, second.compilations
    assert "compiled nothing" in sweep.describe(second)
    assert "compiled create_train_state x1, eval_step x1, initial_draws x1, train_step x1" in sweep.describe(first)
    # the seeds still differ where they should: initial parameters, dropout, data order
    results = [json.loads((pathlib.Path(run.workdir) / "results.json").read_text()) for run in runs]
    assert results[0]["final"]["train"] != results[1]["final"]["train"]
