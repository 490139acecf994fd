"""The training loop end to end on mocked CIFAR-10: every method, exact resume, device-count invariance,
the optimizer and schedules, evaluate/export, and the guards."""

import json
import logging
import os
import pathlib
import platform
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from mbde_jax import (checkpoint, config_utils, config_validation, experiment, losses, methods, optim, provenance,
                      sharding, trainer as trainer_lib, training)
from mbde_jax.data import eval_input, testing
from mbde_jax.models import initializers
from mbde_jax.evaluate import evaluate_workdir, format_metrics
from mbde_jax.export import export_deployed, load_deployed
from helpers import dropout_backbone, run_training, shared_build

ROOT = pathlib.Path(__file__).resolve().parents[1]
NUM_EXAMPLES = 64  # mocked examples per split: 8 steps of batch 8 per epoch
STEPS_PER_EPOCH = NUM_EXAMPLES // 8


def _config(**overrides) -> ml_collections.ConfigDict:
    config = config_utils.load_sibling(str(ROOT / "configs" / "test.py"), "test").get_config()
    config.update_from_flattened_dict(overrides)
    return config


def _train(tmp_path, workdir_name="run", **overrides) -> tuple[str, dict]:
    workdir = str(tmp_path / workdir_name)
    with testing.mocked_dataset("cifar10", num_examples=NUM_EXAMPLES, metadata_dir=str(tmp_path / "meta")):
        results = training.train_and_evaluate(_config(**overrides), workdir)
    return workdir, results


def _run_subprocess(args: dict, xla_devices: int) -> str:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={xla_devices}")
    completed = subprocess.run([sys.executable, str(ROOT / "tests" / "helpers" / "run_training.py"),
                                json.dumps(args)], env=env, capture_output=True, text=True, timeout=600)
    return completed


def train_in_process(workdir, metadata_dir, overrides: dict, caplog=None) -> dict:
    """What _run_subprocess(dict(mode="train", ...), xla_devices=2) trains, here: this process has the suite's two
    devices. For the runs that need no process of their own (no kill, no signal), saving a process start. Returns
    the results; `caplog`, if given, then holds the INFO lines ("resumed from step N")."""
    if caplog is not None:
        caplog.set_level(logging.INFO, logger="absl")
    with testing.mocked_dataset("cifar10", num_examples=NUM_EXAMPLES, metadata_dir=str(metadata_dir)):
        return training.train_and_evaluate(_config(**overrides), str(workdir))


STRAIGHT_RUN = {"method": "mbde", "checkpoint_every_minutes": 0}  # checkpoints at the epoch ends only


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory) -> pathlib.Path:
    """The folder of an uninterrupted run of STRAIGHT_RUN with two devices ('straight'), and its mocked data's
    metadata ('meta'): what the resume tests here and in test_fault_tolerance and the two-process test of
    test_multiprocess compare against, trained once for the session (in the worker that asks first)."""
    def build(directory):
        train_in_process(directory / "straight", directory / "meta", STRAIGHT_RUN)

    return shared_build.build_once(tmp_path_factory, "straight_run", build)


@pytest.mark.parametrize("method", list(methods.METHODS))
def test_two_epochs_of_every_method(tmp_path, method):
    workdir, results = _train(tmp_path, method=method)
    history = json.loads(pathlib.Path(workdir, "history.json").read_text())
    assert [entry["epoch"] for entry in history] == [1, 2]
    first, second = (entry["train"]["loss"] for entry in history)
    assert np.isfinite(first) and np.isfinite(second)
    assert second < first, f"{method}: mean train loss went from {first} to {second}"

    on_disk = json.loads(pathlib.Path(workdir, "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    final = results["final"]["metrics"]
    assert results["final"]["epoch"] == 2 and results["steps"] == 2 * STEPS_PER_EPOCH
    assert final["num_examples"] == NUM_EXAMPLES
    m = 1 if method == "vanilla" else 3
    has_leader = methods.METHODS[method].has_leader
    branch_names = ([f"peer_{i}" for i in range(m - 1)] + ["leader"]) if has_leader else \
        [f"branch_{i}" for i in range(m)]
    for head in branch_names + ["peer_ensemble", "peer_mean", "deployed"]:
        assert 0.0 <= final[f"top1/{head}"] <= final[f"top5/{head}"] <= 100.0
    assert final["deployed_head"] == ("leader" if has_leader else "branch_0")
    assert final["top1/deployed"] == final[f"top1/{final['deployed_head']}"]
    assert ("attention" in final) == has_leader
    assert ("gate" in final) == (method == "one")
    if has_leader:
        np.testing.assert_allclose(np.sum(final["attention"], axis=-1), 1.0, rtol=1e-5)
    assert "note" in results["best"] and results["best"]["metrics"]["top1/deployed"] >= final["top1/deployed"]
    assert json.loads(pathlib.Path(workdir, "config.json").read_text())["method"] == method


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("finished")
    workdir, results = _train(tmp_path, method="okddip")
    return tmp_path, workdir, results


def test_evaluate_reproduces_the_final_metrics(finished_run):
    tmp_path, workdir, results = finished_run
    with testing.mocked_dataset("cifar10", num_examples=NUM_EXAMPLES, metadata_dir=str(tmp_path / "meta")):
        metrics = evaluate_workdir(workdir)
    for key, value in results["final"]["metrics"].items():
        if isinstance(value, float):
            assert metrics[key] == pytest.approx(value, abs=1e-6), key
    # The provenance of the run it read (the checkpoint's last history entry) and of this evaluation.
    assert metrics["provenance"]["run"] == results["provenance"]
    assert metrics["provenance"]["evaluation"]["versions"] == results["provenance"]["versions"]
    text = format_metrics(metrics)
    assert text.splitlines()[0] == f"run made with: {provenance.format_provenance(results['provenance'])}"
    assert text.splitlines()[1].startswith(f"evaluated with: python {platform.python_version()}, jax ")


def test_evaluate_names_the_provenance_of_a_run_of_one_epoch(tmp_path):
    """Its only checkpoint was written before its only evaluation, so the history comes from history.json."""
    workdir, results = _train(tmp_path, num_epochs=1, lr_boundaries_epochs=(), rampup_epochs=1)
    with testing.mocked_dataset("cifar10", num_examples=NUM_EXAMPLES, metadata_dir=str(tmp_path / "meta")):
        metrics = evaluate_workdir(workdir)
    assert metrics["provenance"]["run"] == results["provenance"] is not None


def test_exported_leader_reproduces_the_leader_accuracy(finished_run, tmp_path):
    data_tmp, workdir, results = finished_run
    spec = export_deployed(workdir, str(tmp_path / "export"))
    assert spec["deployed_head"] == "leader"
    model = load_deployed(str(tmp_path / "export"))
    params = model.variables["params"]
    assert set(params) == {"trunk", "branches"}  # no attention, no FFM, no gate
    assert jax.tree_util.tree_leaves(params["branches"])[0].shape[0] == 1  # the leader alone
    mesh = sharding.make_data_mesh()
    correct = total = 0
    with testing.mocked_dataset("cifar10", num_examples=NUM_EXAMPLES, metadata_dir=str(data_tmp / "meta")):
        for batch in eval_input.EvalInput("cifar10", global_batch_size=8, mesh=mesh, download=False).batches():
            logits = np.asarray(model.predict(np.asarray(batch["image"])))
            mask = np.asarray(batch["mask"])
            correct += np.sum((logits.argmax(-1) == np.asarray(batch["label"])) * mask)
            total += mask.sum()
    assert total == NUM_EXAMPLES
    assert 100.0 * correct / total == pytest.approx(results["final"]["metrics"]["top1/leader"], abs=1e-6)


@pytest.mark.slow
def test_resume_after_a_kill_is_bit_identical(tmp_path, straight_run, caplog):
    # Against the uninterrupted run, which checkpointed at the epoch ends only: how often a run checkpoints
    # changes none of its numbers.
    common = dict(mode="train", metadata_dir=str(tmp_path / "meta"), num_examples=NUM_EXAMPLES,
                  overrides=dict(STRAIGHT_RUN, checkpoint_every_steps=3))
    workdirs = {"straight": straight_run / "straight", "resumed": tmp_path / "resumed"}
    killed = _run_subprocess(dict(common, workdir=str(tmp_path / "resumed"), kill_after_checkpoint_step=12),
                             xla_devices=2)
    assert killed.returncode == -9, killed.stderr[-3000:]  # SIGKILL, mid-epoch 2 (8 steps per epoch)
    assert not (tmp_path / "resumed" / "results.json").exists()
    train_in_process(tmp_path / "resumed", tmp_path / "meta", common["overrides"], caplog)
    assert "resumed from step 12" in caplog.text

    final = {}
    for name, workdir in workdirs.items():
        results = json.loads(pathlib.Path(workdir, "results.json").read_text())
        _, state, _ = training.restore_latest(str(workdir))
        final[name] = (results, state, json.loads(pathlib.Path(workdir, "history.json").read_text()))
    (results_a, state_a, history_a), (results_b, state_b, history_b) = final["straight"], final["resumed"]
    assert results_a["final"] == results_b["final"] and results_a["best"] == results_b["best"]
    assert history_a == history_b
    csv_a = pathlib.Path(workdirs["straight"], "metrics.csv").read_text()
    assert pathlib.Path(tmp_path, "resumed", "metrics.csv").read_text() == csv_a
    assert [line.split(",")[0] for line in csv_a.splitlines()] == ["epoch", "1", "2"]

    # Killed after epoch 1 was evaluated (its metrics.csv row written) but before any later checkpoint: the
    # resumed run restores step 8, whose history lacks that evaluation, and evaluates epoch 1 again. The row
    # must not appear twice.
    twice = _run_subprocess(dict(common, workdir=str(tmp_path / "evaluated_twice"), signal_after_step=9,
                                 signals=["SIGKILL"]), xla_devices=2)
    assert twice.returncode == -9, twice.stderr[-3000:]
    csv_killed = pathlib.Path(tmp_path, "evaluated_twice", "metrics.csv").read_text()
    assert csv_killed == "\n".join(csv_a.splitlines()[:2]) + "\n"
    caplog.clear()
    train_in_process(tmp_path / "evaluated_twice", tmp_path / "meta", common["overrides"], caplog)
    assert "resumed from step 8" in caplog.text
    assert pathlib.Path(tmp_path, "evaluated_twice", "metrics.csv").read_text() == csv_a
    leaves_a, leaves_b = jax.tree_util.tree_leaves(state_a), jax.tree_util.tree_leaves(state_b)
    assert len(leaves_a) == len(leaves_b) > 0
    for a, b in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_loss_trajectory_does_not_depend_on_the_device_count(tmp_path):
    args = dict(mode="losses", metadata_dir=str(tmp_path / "meta"), num_examples=NUM_EXAMPLES, steps=6,
                overrides={"method": "mbde"})
    # One device in a process of its own; two in this one (the suite's two devices).
    completed = _run_subprocess(args, xla_devices=1)
    assert completed.returncode == 0, completed.stderr[-3000:]
    line = next(l for l in completed.stdout.splitlines() if l.startswith("LOSSES "))
    payload = json.loads(line[len("LOSSES "):])
    assert payload["devices"] == 1
    trajectories = {1: payload["losses"]}
    assert jax.device_count() == 2
    with testing.mocked_dataset("cifar10", num_examples=NUM_EXAMPLES, metadata_dir=str(tmp_path / "meta")):
        trajectories[2] = run_training.loss_trajectory(_config(**args["overrides"]), steps=args["steps"])
    assert len(trajectories[1]) == 6
    # float32 all-reduces sum in a different order on 2 devices. The first loss is computed before any update
    # and agrees to a few float32 ulps; later steps amplify the reordering (lr 0.1 on a tiny batch: jax 0.12
    # reaches 1.3e-5 relative by step 6), which stays far below what per-device batch-norm statistics or a
    # per-device loss mean would cause (percent-level from the first step).
    np.testing.assert_allclose(trajectories[1][0], trajectories[2][0], rtol=1e-6, atol=0)
    np.testing.assert_allclose(trajectories[1], trajectories[2], rtol=1e-4, atol=0)


def test_optimizer_matches_a_pytorch_style_nesterov_update():
    config = _config(learning_rate=0.1, momentum=0.9, weight_decay=5e-4)
    tx = experiment.resolve(config).optimizer
    rng = np.random.default_rng(0)
    p = rng.normal(size=(5, 3)).astype(np.float32)
    grads = [rng.normal(size=(5, 3)).astype(np.float32) for _ in range(3)]
    params = {"w": jnp.asarray(p)}
    state = tx.init(params)
    buf = np.zeros_like(p)
    lr, mu, wd = np.float32(0.1), np.float32(0.9), np.float32(5e-4)
    for g in grads:  # PyTorch SGD(momentum, nesterov, weight_decay), in float32 as PyTorch computes it
        d = g + wd * p
        buf = mu * buf + d
        p = p - lr * (d + mu * buf)
        directions, state = tx.update({"w": jnp.asarray(g)}, state, params)
        params = optax.apply_updates(params, optim.apply_learning_rate(directions, jnp.float32(0.1)))
        np.testing.assert_allclose(np.asarray(params["w"]), p, rtol=0, atol=1e-7)


def test_learning_rate_schedule_epochs():
    config = _config(learning_rate=0.1, lr_boundaries_epochs=(150, 225), lr_decay_factor=0.1, num_epochs=300)
    lr_of_epoch = lambda epoch: float(experiment.resolve(config).learning_rate(epoch))  # 0-based  # noqa: E731
    np.testing.assert_allclose([lr_of_epoch(0), lr_of_epoch(147), lr_of_epoch(148)], 0.1, rtol=1e-6)
    np.testing.assert_allclose([lr_of_epoch(149), lr_of_epoch(223)], 0.01, rtol=1e-6)
    np.testing.assert_allclose([lr_of_epoch(224), lr_of_epoch(299)], 0.001, rtol=1e-6)


def test_rampup_weight_epochs():
    np.testing.assert_allclose(losses.rampup_weight(0, 80), np.exp(-5.0), rtol=1e-6)
    np.testing.assert_allclose(losses.rampup_weight(40, 80), np.exp(-5.0 * 0.25), rtol=1e-6)
    np.testing.assert_allclose([losses.rampup_weight(80, 80), losses.rampup_weight(299, 80)], 1.0)


def test_schema_matches_default_config():
    config = config_utils.load_sibling(str(ROOT / "configs" / "default.py"), "default").get_config()
    assert set(config) == set(config_validation.FIELDS)
    config_validation.validate(config)


@pytest.mark.parametrize("overrides, message", [
    ({"num_epochs": 0}, r"config\.num_epochs=0: must be > 0"),
    ({"learning_rate": -0.1}, r"config\.learning_rate=-0\.1: must be > 0"),
    ({"momentum": 1.5}, r"config\.momentum=1\.5: must be in \[0, 1\)"),
    ({"lr_boundaries_epochs": (225, 150)}, r"config\.lr_boundaries_epochs.*strictly increasing"),
    ({"dataset": "mnist"}, r"config\.dataset='mnist': must be one of \['cifar10', 'cifar100', 'cinic10', 'digits'\]"),
    ({"method": "mbde", "num_branches": 2}, r"config\.num_branches: method 'mbde' needs at least 2 peers"),
    ({"learning_rate": float("inf")}, r"config\.learning_rate=inf: must be a finite number"),
    ({"temperature": float("nan")}, r"config\.temperature=nan: must be a finite number"),
    ({"kd_weight": float("inf")}, r"config\.kd_weight=inf: must be a finite number"),
    ({"num_epochs": 2, "lr_boundaries_epochs": (1, 3)},
     r"config\.lr_boundaries_epochs=\(1, 3\): epoch\(s\) \[3\] lie past config\.num_epochs=2"),
    ({"lr_boundaries_epochs": (0,)}, r"config\.lr_boundaries_epochs.*>= 1"),
    ({"train_examples": -1}, r"config\.train_examples=-1: must be >= 0"),
])
def test_bad_values_name_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        config_validation.validate(_config(**overrides))


def test_unknown_field_and_wrong_type_in_a_config_file():
    config = _config()
    config.unlock()
    config.learning_rat = 0.1
    with pytest.raises(ValueError, match=r"config\.learning_rat: no such field"):
        config_validation.validate(config)
    config = ml_collections.ConfigDict(dict(_config().to_dict(), num_epochs="300"))  # a file written by hand
    with pytest.raises(ValueError, match=r"config\.num_epochs: expected int, got str '300'"):
        config_validation.validate(config)


def test_command_line_typo_is_refused_before_training(tmp_path):
    completed = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs" / "test.py"),
         "--workdir", str(tmp_path / "w"), "--config.num_epoch=3"], capture_output=True, text=True, timeout=120)
    assert completed.returncode != 0
    assert completed.returncode == 1 and "Traceback" not in completed.stderr
    assert completed.stderr.strip().splitlines()[-1] == (
        'train.py: error: in the command line: no config field \'num_epoch\' Did you mean "num_epochs" instead of '
        '"num_epoch"? (every field is in configs/default.py)')
    assert not (tmp_path / "w").exists()


def test_batch_that_does_not_divide_over_devices_is_refused(tmp_path):
    assert jax.device_count() == 2
    with pytest.raises(ValueError, match=r"config\.batch_size=7 is not a positive multiple of the device count"):
        _train(tmp_path, batch_size=7)


def test_different_config_on_resume_is_refused_unless_allowed(finished_run):
    tmp_path, workdir, _ = finished_run
    with testing.mocked_dataset("cifar10", num_examples=NUM_EXAMPLES, metadata_dir=str(tmp_path / "meta")):
        with pytest.raises(ValueError, match=r"different config \(fields: kd_weight, temperature\).*"
                                             r"--allow_config_change"):
            training.train_and_evaluate(_config(method="okddip", temperature=4.0, kd_weight=2.0), workdir)


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    workdir, _ = _train(tmp_path, method="individual", num_epochs=1, lr_boundaries_epochs=())
    good = checkpoint.Checkpointer(workdir, read_only=True)
    assert good.latest_step() == STEPS_PER_EPOCH
    good.close()
    config = _config(method="individual", num_epochs=2, learning_rate=1e30)
    with testing.mocked_dataset("cifar10", num_examples=NUM_EXAMPLES, metadata_dir=str(tmp_path / "meta")):
        with pytest.raises(training.NonFiniteLossError,
                           match=rf"at step \d+ \(1-based\).*last good checkpoint \(step {STEPS_PER_EPOCH}\)"):
            training.train_and_evaluate(config, workdir, allow_config_change=True)
    after = checkpoint.Checkpointer(workdir, read_only=True)
    assert after.latest_step() == STEPS_PER_EPOCH
    after.close()


@pytest.mark.slow
def test_the_seed_as_an_argument_gives_what_the_seed_as_a_constant_gave(tmp_path):
    """The compiled init and train step take the seed as an argument; their results equal the same functions
    compiled with the seed folded in as a Python constant (what every earlier run was made with)."""
    with dropout_backbone.registered() as arch:  # dropout: the train step draws from the seed's key
        for seed in (0, 7):
            _assert_seed_as_argument_equals_seed_as_constant(_config(arch=arch, seed=seed), seed)


def _assert_seed_as_argument_equals_seed_as_constant(config, seed):
    resolved = experiment.resolve(config)
    trainer = training.Trainer(resolved, steps_per_epoch=STEPS_PER_EPOCH)
    model, optimizer, shape = resolved.model, resolved.optimizer, resolved.dataset.image_shape
    replicated = sharding.replicated_sharding(resolved.mesh)
    batched = sharding.batch_sharding(resolved.mesh)
    description = trainer_lib.describe_variables(model, shape)
    # The draws with the seed as a constant, assembled on the host as the Trainer assembles them (XLA may
    # fuse the scaling into the draw's program and round the products differently: models.initializers).
    constant_draws = jax.jit(lambda: trainer_lib.initial_draws(description[1], seed))()
    variables = initializers.assemble(*description, {k: np.asarray(v) for k, v in constant_draws.items()})
    constant_init = jax.jit(lambda v: trainer_lib.create_train_state(v["params"], v.get("batch_stats", {}),
                                                                    tx=optimizer), out_shardings=replicated)
    state, reference = trainer.init_state(), constant_init(variables)
    for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(reference)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    rng = np.random.default_rng(seed)
    batch = {"image": jnp.asarray(rng.normal(size=(8, *shape)), jnp.float32),
             "label": jnp.asarray(rng.integers(0, 10, size=8), jnp.int32)}
    constant_step = jax.jit(lambda s, b: training.train_step(s, b, seed, experiment=resolved,
                                                             steps_per_epoch=STEPS_PER_EPOCH),
                            in_shardings=(replicated, batched), out_shardings=(replicated, replicated))
    expected_state, expected_metrics = constant_step(reference, batch)
    new_state, metrics = trainer.train_step(state, batch)
    assert float(metrics["loss"]) == float(expected_metrics["loss"])
    for a, b in zip(jax.tree_util.tree_leaves(new_state), jax.tree_util.tree_leaves(expected_state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
