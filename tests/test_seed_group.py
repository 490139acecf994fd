"""Several seeds in one program (config.num_seeds, mbde_jax.seed_group): each seed equals its separate run, leaves
an ordinary run in its own workdir, and resumes."""

import json
import os
import pathlib
import shutil
import signal

import jax
import numpy as np
import pytest

from mbde_jax import benchmark, experiment, lifecycle, seed_group, sweep, trainer as trainer_lib, training
from mbde_jax.data import testing
from test_train import NUM_EXAMPLES, ROOT, STEPS_PER_EPOCH, _config

SEEDS = (3, 4)
RUN_FILES = ("config.json", "history.json", "results.json", "metrics.csv")


def _comparable(workdir: pathlib.Path, name: str):
    """A run file without what differs between sessions (timings, the host's provenance)."""
    if name == "metrics.csv":
        return (workdir / name).read_text()
    content = json.loads((workdir / name).read_text())
    if name == "results.json":
        for key in ("train_seconds", "train_seconds_this_session", "train_images_per_second", "provenance"):
            content.pop(key)
        content["final"].pop("provenance"), content["best"].pop("provenance")
    if name == "history.json":
        for entry in content:
            entry.pop("provenance")
    return content


def _stop_after_step(monkeypatch, step_to_stop: int) -> None:
    """The next group run sends itself SIGTERM right after train step `step_to_stop`."""
    original = seed_group.SeedGroup.train_step

    def step_then_signal(self, state, batches):
        state, metrics = original(self, state, batches)
        if int(self.step_of(state)) == step_to_stop:
            os.kill(os.getpid(), signal.SIGTERM)
        return state, metrics

    monkeypatch.setattr(seed_group.SeedGroup, "train_step", step_then_signal)


@pytest.mark.slow
def test_seeds_trained_together_equal_their_separate_runs_and_resume(tmp_path, monkeypatch):
    group_root = tmp_path / "group"
    with testing.mocked_dataset("cifar10", num_examples=NUM_EXAMPLES, metadata_dir=str(tmp_path / "meta")):
        separate = {seed: training.train_and_evaluate(_config(seed=seed), str(tmp_path / f"alone_{seed}"))
                    for seed in SEEDS}
        with monkeypatch.context() as patch:  # stopped mid-epoch by a signal, then resumed by the same call
            _stop_after_step(patch, 5)
            with pytest.raises(lifecycle.TrainingStopped, match="at step 5 of 16.*seed_\\*/checkpoints"):
                training.train_and_evaluate(_config(seed=SEEDS[0], num_seeds=2), str(group_root))
        together = training.train_and_evaluate(_config(seed=SEEDS[0], num_seeds=2), str(group_root))
    assert [results["seed"] for results in together] == list(SEEDS)
    for seed, results in zip(SEEDS, together):
        workdir, alone = group_root / f"seed_{seed}", tmp_path / f"alone_{seed}"
        # The loop execution (the CPU default) runs each seed through its separate run's compiled step: equal.
        for name in RUN_FILES:
            assert _comparable(workdir, name) == _comparable(alone, name), (seed, name)
        final, final_alone = results["final"]["metrics"], separate[seed]["final"]["metrics"]
        for name, value in final.items():
            if not isinstance(value, str):
                np.testing.assert_allclose(value, final_alone[name], rtol=1e-5, atol=1e-6, err_msg=name)
        states = [training.restore_latest(str(path))[1] for path in (workdir, alone)]
        for leaf, leaf_alone in zip(*(jax.tree.leaves(state) for state in states)):
            np.testing.assert_array_equal(np.asarray(leaf), np.asarray(leaf_alone))
        assert sorted(path.name for path in workdir.glob("events.out.tfevents.*"))  # its own TensorBoard

    # A group killed between two seeds' checkpoints: seed 4 lacks the last one. The group resumes from the
    # newest step both have, sets seed 3's newer checkpoint aside, and retrains to the same end.
    last = str(2 * STEPS_PER_EPOCH)
    shutil.rmtree(group_root / f"seed_{SEEDS[1]}" / "checkpoints" / last)
    for seed in SEEDS:
        (group_root / f"seed_{seed}" / "results.json").unlink()
    with testing.mocked_dataset("cifar10", num_examples=NUM_EXAMPLES, metadata_dir=str(tmp_path / "meta")):
        training.train_and_evaluate(_config(seed=SEEDS[0], num_seeds=2), str(group_root))
    aside = list((group_root / f"seed_{SEEDS[0]}" / "checkpoints_set_aside").iterdir())
    assert [path.name.split(".")[0] for path in aside] == [last]
    for seed in SEEDS:
        for name in RUN_FILES:
            assert _comparable(group_root / f"seed_{seed}", name) == _comparable(tmp_path / f"alone_{seed}", name)


def _assert_equal_but_for_rounding(actual: np.ndarray, desired: np.ndarray) -> None:
    """|actual - desired| <= 1% of |desired| (Frobenius norms, per leaf). Rounding alone moves single elements a
    lot: a unit whose pre-activation sits at a ReLU's kink takes the other side and its gradient differs outright;
    a wrong stacking (another seed's batch, key or state) moves the whole leaf, by about its own norm."""
    error = np.linalg.norm((actual - desired).ravel())
    assert error <= 1e-2 * np.linalg.norm(desired.ravel()) + 1e-7, (error, np.linalg.norm(desired.ravel()))


def test_vmapped_seeds_compute_what_their_separate_steps_compute(tmp_path):
    # The stacked program runs other kernels (batched convolutions), so it agrees to float32 rounding, not
    # bit for bit; over whole runs of the tiny test config rounding differences grow chaotically (a 3e-7
    # relative nudge of the initial parameters does the same), so each step is checked from equal states.
    with testing.mocked_dataset("cifar10", num_examples=NUM_EXAMPLES, metadata_dir=str(tmp_path / "meta")):
        experiments = [experiment.resolve(_config(seed=seed, method="okddip")) for seed in SEEDS]
        pipelines = [training.make_train_pipeline(e) for e in experiments]
        group = seed_group.SeedGroup(experiments, STEPS_PER_EPOCH, "vmap")
        trainers = [trainer_lib.Trainer(e, STEPS_PER_EPOCH) for e in experiments]
        stacked, separate = group.init(), [t.init_state() for t in trainers]
        for state, alone in zip(group.states(stacked), separate):
            for leaf, leaf_alone in zip(jax.tree.leaves(state), jax.tree.leaves(alone)):
                np.testing.assert_array_equal(np.asarray(leaf), np.asarray(leaf_alone))  # the same initial state
        # Each step starts both sides from the same states, so that the check is of one step's computation and
        # rounding differences never compound.
        batches = zip(*(pipeline.epoch_batches(0) for pipeline in pipelines))
        for _, seed_batches in zip(range(3), batches):
            stacked, per_seed = group.train_step(stacked, seed_batches)
            stepped = [t.train_step(state, batch) for t, state, batch in zip(trainers, separate, seed_batches)]
            for (metrics, index), (_, alone) in zip(per_seed, stepped):
                for name, value in alone.items():
                    # atol: a KD term near zero (a KL of nearly equal distributions) is a sum of terms of the
                    # size of the log-probabilities (~2), so float32 rounding leaves it ~1e-6 off in absolute
                    # terms, however small its value (1.1e-6 on 0.0041 was seen).
                    np.testing.assert_allclose(np.asarray(metrics[name])[index], value, rtol=1e-5, atol=1e-5,
                                               err_msg=name)
            for state, (alone, _) in zip(group.states(stacked), stepped):
                for leaf, leaf_alone in zip(jax.tree.leaves(state), jax.tree.leaves(alone)):
                    _assert_equal_but_for_rounding(np.asarray(leaf), np.asarray(leaf_alone))
            separate = group.states(stacked)
        assert int(group.step_of(stacked)) == 3
        eval_batches = list(training.EvalInput("cifar10", global_batch_size=16, mesh=experiments[0].mesh,
                                               download=False).batches())
        for metrics, t, alone in zip(group.evaluate(stacked, lambda: iter(eval_batches)), trainers, separate):
            alone_metrics = t.evaluate(alone, eval_batches)
            assert metrics.keys() == alone_metrics.keys()
            for name, value in metrics.items():
                if not isinstance(value, str):
                    np.testing.assert_allclose(value, alone_metrics[name], rtol=1e-5, atol=1e-4, err_msg=name)
        restacked = group.from_states(group.states(stacked))
        for leaf, leaf_again in zip(jax.tree.leaves(stacked), jax.tree.leaves(restacked)):
            np.testing.assert_array_equal(np.asarray(leaf), np.asarray(leaf_again))


def test_auto_runs_the_seeds_in_a_loop_on_cpu_and_vmapped_elsewhere():
    assert seed_group.resolve_seed_execution("auto", "cpu") == "loop"
    assert seed_group.resolve_seed_execution("auto", "gpu") == "vmap"
    assert seed_group.resolve_seed_execution("auto", "tpu") == "vmap"
    assert seed_group.resolve_seed_execution("vmap", "cpu") == "vmap"
    with pytest.raises(ValueError, match="config.seed_execution: unknown value 'pmap'"):
        seed_group.resolve_seed_execution("pmap")


def test_each_seed_config_is_its_separate_runs_config():
    configs = training.seed_configs(_config(seed=7, num_seeds=3))
    assert [(c.seed, c.num_seeds) for c in configs] == [(7, 1), (8, 1), (9, 1)]
    assert configs[1].to_dict() == _config(seed=8).to_dict()


def test_the_sweep_refuses_num_seeds_and_says_what_to_run(tmp_path):
    with pytest.raises(ValueError, match="--config.num_seeds=2: the sweep trains its --seeds one run after another"):
        sweep.plan(_config(num_seeds=2), ["mbde"], [0, 1], str(tmp_path))


@pytest.mark.parametrize("execution", ["loop", "vmap"])
def test_the_benchmark_times_every_seed_of_one_step(tmp_path, capsys, execution):
    result = benchmark.main(["train", "--config", str(ROOT / "configs" / "test.py"), "--steps", "2", "--warmup", "1",
                             "--config.num_seeds=2", f"--config.seed_execution={execution}",
                             "--json", str(tmp_path / "out.json")])
    assert result["num_seeds"] == 2 and result["seed_execution"] == execution
    assert result["batch_size"] == 2 * 8  # images per step: every seed's batch of 8
    assert result["images_per_s_per_seed"] == pytest.approx(result["images_per_s"] / 2, abs=0.01)
    assert f"2 seeds in one step ({execution}):" in capsys.readouterr().out
