"""The device-resident training pipeline (config.input_on_device) against the host pipeline, on tfds mock data
over the suite's 2 fake CPU devices: same batches bit for bit, same determinism, same training run."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from mbde_jax import config_utils, experiment, sharding, training
from mbde_jax.data import augmentation, testing, train_input
from test_input_pipeline import reference_augment

ROOT = pathlib.Path(__file__).resolve().parents[1]
NUM_EXAMPLES = 70  # not a multiple of the batch: the last partial batch is dropped on both sides
BATCH = 8


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    """(host TrainPipeline, DeviceTrainPipeline) of the same mocked CIFAR-100 split and seed."""
    with testing.mocked_dataset("cifar100", num_examples=NUM_EXAMPLES,
                                metadata_dir=str(tmp_path_factory.mktemp("device_input_metadata"))):
        mesh = sharding.make_data_mesh()
        yield (train_input.TrainPipeline("cifar100", global_batch_size=BATCH, seed=5, mesh=mesh),
               train_input.DeviceTrainPipeline("cifar100", global_batch_size=BATCH, seed=5, mesh=mesh))


def _arrays(batches) -> list[dict[str, np.ndarray]]:
    return [{name: np.asarray(value) for name, value in batch.items()} for batch in batches]


@pytest.mark.parametrize("epoch,start_batch", [(0, 0), (1, 0), (1, 3)])
def test_batches_equal_the_host_pipeline_bit_for_bit(pipelines, epoch, start_batch):
    host, device = pipelines
    expected = _arrays(host.epoch_batches(epoch, start_batch))
    got = _arrays(device.epoch_batches(epoch, start_batch))
    assert len(got) == len(expected) == host.steps_per_epoch - start_batch
    for a, b in zip(expected, got):
        assert set(a) == set(b) == {"image", "label"}
        assert a["image"].dtype == b["image"].dtype == np.float32
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])


def test_batches_are_sharded_like_the_host_pipeline(pipelines):
    host, device = pipelines
    a, b = next(iter(host.epoch_batches(0))), next(iter(device.epoch_batches(0)))
    for name in ("image", "label"):
        assert b[name].sharding.is_equivalent_to(a[name].sharding, b[name].ndim)


def test_batches_are_a_pure_function_of_seed_and_epoch(pipelines, tmp_path):
    _, device = pipelines
    first = _arrays(device.epoch_batches(2))
    np.testing.assert_array_equal(np.concatenate([b["image"] for b in first]),
                                  np.concatenate([b["image"] for b in _arrays(device.epoch_batches(2))]))
    other_epoch = _arrays(device.epoch_batches(3))
    assert not np.array_equal(first[0]["image"], other_epoch[0]["image"])
    with testing.mocked_dataset("cifar100", num_examples=NUM_EXAMPLES, metadata_dir=str(tmp_path)):
        reseeded = train_input.DeviceTrainPipeline("cifar100", global_batch_size=BATCH, seed=6,
                                                   mesh=sharding.make_data_mesh())
    assert not np.array_equal(first[0]["image"], _arrays(reseeded.epoch_batches(2))[0]["image"])


def test_resuming_at_batch_k_repeats_the_rest_of_the_epoch(pipelines):
    _, device = pipelines
    whole = _arrays(device.epoch_batches(4))
    resumed = _arrays(device.epoch_batches(4, start_batch=5))
    assert len(resumed) == len(whole) - 5
    for a, b in zip(whole[5:], resumed):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    with pytest.raises(ValueError, match="start_batch"):
        device.epoch_batches(0, start_batch=device.steps_per_epoch + 1)


def test_crops_are_windows_of_the_padded_image_and_flips_mirror_width(pipelines):
    _, device = pipelines
    plan = device.epoch_plan(1)
    table = augmentation.normalization_table("cifar100")
    batches = _arrays(device.epoch_batches(1))
    images = np.concatenate([b["image"] for b in batches])
    for position, image in enumerate(images):
        expected = reference_augment(device.images[plan.indices[position]], plan.offset_y[position],
                                     plan.offset_x[position], plan.flip[position])
        np.testing.assert_array_equal(image, table[expected, np.arange(3)])
    assert plan.flip[:len(images)].any() and not plan.flip[:len(images)].all()
    assert len(set(plan.offset_y[:len(images)])) > 1


def test_normalisation_table_rounds_as_the_host_pipeline():
    table = augmentation.normalization_table("cifar10")
    scale, shift = augmentation.normalization_constants("cifar10")
    pixels = np.arange(256, dtype=np.float32)[:, None]
    np.testing.assert_array_equal(table, (pixels * scale).astype(np.float32) + shift)
    assert table.dtype == np.float32 and table.shape == (256, 3)


def _config(**overrides):
    config = config_utils.load_sibling(str(ROOT / "configs" / "test.py"), "test").get_config()
    config.update_from_flattened_dict(overrides)
    return config


def test_config_chooses_the_pipeline(pipelines, tmp_path):
    with testing.mocked_dataset("cifar10", num_examples=16, metadata_dir=str(tmp_path)):
        chosen = {value: type(training.make_train_pipeline(experiment.resolve(_config(input_on_device=value))))
                  for value in (True, False, None)}
    assert chosen[True] is train_input.DeviceTrainPipeline
    assert chosen[False] is train_input.TrainPipeline
    assert chosen[None] is train_input.TrainPipeline  # auto: the host feeds a CPU backend


def test_training_on_device_input_repeats_the_host_run(tmp_path):
    """Same batches, same steps: one epoch gives the same losses and test metrics either way."""
    results = {}
    for on_device in (False, True):
        workdir = tmp_path / f"on_device_{on_device}"
        with testing.mocked_dataset("cifar10", num_examples=32, metadata_dir=str(tmp_path / "meta")):
            results[on_device] = training.train_and_evaluate(
                    _config(input_on_device=on_device, num_epochs=1, lr_boundaries_epochs=(), method="okddip"), str(workdir))
        results[on_device]["history"] = json.loads((workdir / "history.json").read_text())
    assert results[True]["history"] == results[False]["history"]
    assert results[True]["final"] == results[False]["final"]
