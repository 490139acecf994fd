"""The train and eval pipelines on tfds mock data, over the suite's 2 fake CPU devices."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from mbde_jax import sharding
from mbde_jax.data import augmentation, epoch_plan, eval_input, preparation, testing, train_input
from mbde_jax.data import info as dataset_info

NUM_EXAMPLES = 203  # Not a multiple of any batch size used here.
BATCH = 32


def reference_augment(image: np.ndarray, offset_y: int, offset_x: int, flip: bool) -> np.ndarray:
    """Pad 4 with zeros, take the 32x32 window at (offset_y, offset_x), mirror it if `flip` (numpy, [H, W, C])."""
    padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
    window = padded[offset_y:offset_y + image.shape[0], offset_x:offset_x + image.shape[1]]
    return window[:, ::-1] if flip else window


def reference_normalize(images: np.ndarray, dataset: str) -> np.ndarray:
    info = dataset_info.get_dataset_info(dataset)
    return (images / 255.0 - np.asarray(info.mean)) / np.asarray(info.std)


@pytest.fixture(scope="module")
def mesh():
    mesh = sharding.make_data_mesh()
    assert mesh.devices.size == 2, "tests/conftest.py should give the suite 2 CPU devices"
    return mesh


@pytest.fixture(scope="module", params=["cifar10", "cifar100"])
def mocked(request, tmp_path_factory):
    """(dataset name, pipeline) with NUM_EXAMPLES mock examples per split."""
    name = request.param
    with testing.mocked_dataset(name, num_examples=NUM_EXAMPLES,
                                metadata_dir=str(tmp_path_factory.mktemp(f"{name}_metadata"))):
        pipeline = train_input.TrainPipeline(name, global_batch_size=BATCH, seed=7,
                                             mesh=sharding.make_data_mesh())
        yield name, pipeline


def test_train_batches_shapes_values_and_sharding(mocked, mesh):
    name, pipeline = mocked
    info = dataset_info.get_dataset_info(name)
    assert pipeline.num_examples == NUM_EXAMPLES
    assert pipeline.steps_per_epoch == NUM_EXAMPLES // BATCH  # The partial last batch is dropped.
    batches = list(pipeline.epoch_batches(0))
    assert len(batches) == pipeline.steps_per_epoch
    batch = batches[0]
    assert set(batch) == {"image", "label"}
    assert batch["image"].shape == (BATCH, 32, 32, 3) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (BATCH,) and batch["label"].dtype == np.int32
    labels = np.concatenate([np.asarray(b["label"]) for b in batches])
    assert labels.min() >= 0 and labels.max() < info.num_classes
    # Normalised values lie between what black and white map to, and undo to whole pixel values.
    images = np.asarray(batch["image"], np.float64)
    low = (0.0 - np.asarray(info.mean)) / np.asarray(info.std)
    high = (1.0 - np.asarray(info.mean)) / np.asarray(info.std)
    assert np.all(images >= low - 1e-5) and np.all(images <= high + 1e-5)
    pixels = (images * np.asarray(info.std) + np.asarray(info.mean)) * 255.0
    np.testing.assert_allclose(pixels, np.rint(pixels), atol=2e-3)
    # Batch axis split over the 2 devices, half each, in order.
    for value in batch.values():
        assert value.sharding.is_equivalent_to(sharding.batch_sharding(mesh), value.ndim)
        shards = sorted(value.addressable_shards, key=lambda s: s.index[0].start)
        assert [s.index[0] for s in shards] == [slice(0, BATCH // 2), slice(BATCH // 2, BATCH)]
        assert {s.device for s in shards} == set(mesh.devices.flat)
        np.testing.assert_array_equal(np.asarray(shards[1].data), np.asarray(value)[BATCH // 2:])


def test_batches_are_the_planned_examples_augmented(mocked):
    name, pipeline = mocked
    plan = pipeline.epoch_plan(3)
    assert sorted(plan.indices.tolist()) == list(range(NUM_EXAMPLES))  # A permutation: each example once.
    for k, batch in enumerate(pipeline.epoch_batches(3)):
        positions = range(k * BATCH, (k + 1) * BATCH)
        expected = np.stack([reference_augment(pipeline.images[plan.indices[p]], plan.offset_y[p],
                                               plan.offset_x[p], plan.flip[p]) for p in positions])
        np.testing.assert_allclose(np.asarray(batch["image"]), reference_normalize(expected, name), atol=1e-5)
        np.testing.assert_array_equal(np.asarray(batch["label"]), pipeline.labels[plan.indices[list(positions)]])


def _as_numpy(batches) -> list[dict[str, np.ndarray]]:
    return [{key: np.asarray(value) for key, value in batch.items()} for batch in batches]


def test_epoch_is_a_pure_function_of_seed_and_epoch(mocked, mesh):
    name, pipeline = mocked
    again = train_input.TrainPipeline(name, global_batch_size=BATCH, seed=7, mesh=mesh)
    first, second = _as_numpy(pipeline.epoch_batches(2)), _as_numpy(again.epoch_batches(2))
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    # Another epoch, or another seed, gives another order.
    assert not np.array_equal(pipeline.epoch_plan(2).indices, pipeline.epoch_plan(3).indices)
    other_seed = train_input.TrainPipeline(name, global_batch_size=BATCH, seed=8, mesh=mesh)
    assert not np.array_equal(other_seed.epoch_plan(2).indices, pipeline.epoch_plan(2).indices)
    next_epoch = _as_numpy(pipeline.epoch_batches(3))
    assert not np.array_equal(first[0]["image"], next_epoch[0]["image"])


def test_resuming_at_a_batch_yields_the_uninterrupted_batches(mocked):
    _, pipeline = mocked
    uninterrupted = _as_numpy(pipeline.epoch_batches(5))
    stopped_after = 2
    resumed = _as_numpy(pipeline.epoch_batches(5, start_batch=stopped_after))
    assert len(resumed) == len(uninterrupted) - stopped_after
    for a, b in zip(uninterrupted[stopped_after:], resumed, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    assert list(pipeline.epoch_batches(5, start_batch=pipeline.steps_per_epoch)) == []
    steps = pipeline.steps_per_epoch
    assert pipeline.position(0) == (0, 0) and pipeline.position(5 * steps + 2) == (5, 2)
    with pytest.raises(ValueError, match="start_batch"):
        pipeline.epoch_batches(5, start_batch=pipeline.steps_per_epoch + 1)


def test_crop_is_a_window_of_the_padded_image_and_flip_mirrors_width():
    image = np.arange(32 * 32 * 3, dtype=np.int64).reshape(32, 32, 3) % 251 + 1  # No zeros: padding shows.
    image = image.astype(np.uint8)
    offsets = [(y, x) for y in range(9) for x in range(9)]
    for flip in (False, True):
        out = augmentation.augment_batch(
                np.repeat(image[None], len(offsets), axis=0),
                np.array([y for y, _ in offsets], np.int32), np.array([x for _, x in offsets], np.int32),
                np.full(len(offsets), flip)).numpy()
        for (y, x), crop in zip(offsets, out):
            np.testing.assert_array_equal(crop, reference_augment(image, y, x, flip))
    centre = augmentation.augment_batch(image[None], np.array([4], np.int32), np.array([4], np.int32),
                                        np.array([True])).numpy()[0]
    np.testing.assert_array_equal(centre, image[:, ::-1])  # No shift + flip = the mirror image.
    corner = augmentation.augment_batch(image[None], np.array([0], np.int32), np.array([0], np.int32),
                                        np.array([False])).numpy()[0]
    assert not corner[:4].any() and not corner[:, :4].any()  # Four rows and columns of zero padding.
    np.testing.assert_array_equal(corner[4:, 4:], image[:28, :28])


def test_epoch_plan_draws_every_offset_and_flips_half():
    plan = epoch_plan.make_epoch_plan(20_000, seed=0, epoch=0)
    for offsets in (plan.offset_y, plan.offset_x):
        counts = np.bincount(offsets, minlength=9)
        assert len(counts) == 9 and counts.min() > 20_000 / 9 * 0.9
    assert 0.48 < plan.flip.mean() < 0.52
    assert np.corrcoef(plan.offset_y, plan.offset_x)[0, 1] ** 2 < 1e-3  # Independent fields of the hash.


@pytest.mark.parametrize("batch", [32, 256])  # 203 = 6 * 32 + 11, and fewer examples than one batch.
def test_eval_counts_every_example_exactly_once(mesh, tmp_path, batch):
    with testing.mocked_dataset("cifar10", num_examples=NUM_EXAMPLES, metadata_dir=str(tmp_path)):
        evaluation = eval_input.EvalInput("cifar10", global_batch_size=batch, mesh=mesh)
        assert evaluation.num_examples == NUM_EXAMPLES
        batches = _as_numpy(evaluation.batches())
        source = tfds.as_numpy(tfds.builder("cifar10").as_dataset(split="test", batch_size=-1))
    assert len(batches) == -(-NUM_EXAMPLES // batch)
    assert all(b["image"].shape == (batch, 32, 32, 3) and b["mask"].shape == (batch,) for b in batches)
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.sum() == NUM_EXAMPLES and np.all(mask[:NUM_EXAMPLES] == 1) and np.all(mask[NUM_EXAMPLES:] == 0)
    images = np.concatenate([b["image"] for b in batches])[:NUM_EXAMPLES]
    np.testing.assert_allclose(images, reference_normalize(source["image"], "cifar10"), atol=1e-5)
    labels = np.concatenate([b["label"] for b in batches])
    np.testing.assert_array_equal(labels[:NUM_EXAMPLES], source["label"])
    assert not labels[NUM_EXAMPLES:].any()


def test_batch_size_must_divide_over_devices(mesh, tmp_path):
    with pytest.raises(ValueError, match=r"config.batch_size=33 .*2 devices.*32 or 34"):
        sharding.check_batch_divisible(33, mesh)
    with testing.mocked_dataset("cifar10", num_examples=20, metadata_dir=str(tmp_path)):
        with pytest.raises(ValueError, match="config.batch_size=33"):
            train_input.TrainPipeline("cifar10", global_batch_size=33, seed=0, mesh=mesh)
        with pytest.raises(ValueError, match="config.eval_batch_size=3"):
            eval_input.EvalInput("cifar10", global_batch_size=3, mesh=mesh)
        with pytest.raises(ValueError, match="larger than the 20 training examples"):
            train_input.TrainPipeline("cifar10", global_batch_size=64, seed=0, mesh=mesh)


@pytest.mark.parametrize("pipeline_cls", [train_input.TrainPipeline, train_input.DeviceTrainPipeline])
def test_train_examples_keeps_the_first_examples_of_the_split(mocked, mesh, pipeline_cls):
    name, whole = mocked
    first = pipeline_cls(name, global_batch_size=BATCH, seed=7, mesh=mesh, max_examples=100)
    assert first.num_examples == 100 and first.steps_per_epoch == 100 // BATCH == 3
    np.testing.assert_array_equal(first.images, whole.images[:100])
    np.testing.assert_array_equal(first.labels, whole.labels[:100])
    plan = first.epoch_plan(0)
    assert sorted(plan.indices) == list(range(100))  # an epoch orders the kept examples only
    batches = _as_numpy(first.epoch_batches(0))
    assert len(batches) == 3
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches]),
                                  whole.labels[plan.indices[:3 * BATCH]])
    with pytest.raises(ValueError, match=rf"config.train_examples=204 is more than the {NUM_EXAMPLES} training "
                                         rf"examples of {name} \(train\); give at most {NUM_EXAMPLES}, or 0"):
        pipeline_cls(name, global_batch_size=BATCH, seed=7, mesh=mesh, max_examples=NUM_EXAMPLES + 1)


def test_unknown_dataset_lists_the_valid_ones(mesh):
    with pytest.raises(ValueError, match=r"'mnist'.*\['cifar10', 'cifar100', 'cinic10', 'digits'\]"):
        train_input.TrainPipeline("mnist", global_batch_size=BATCH, seed=0, mesh=mesh)
    with pytest.raises(ValueError, match="valid datasets"):
        preparation.prepare("imagenet")


def test_mesh_and_shardings(mesh):
    assert mesh.axis_names == ("data",)
    assert sharding.replicated_sharding(mesh).is_fully_replicated
    assert not sharding.batch_sharding(mesh).is_fully_replicated


def test_processes_starting_together_on_one_metadata_dir_never_read_a_half_written_file(tmp_path):
    # The processes of a multi-process test run call mocked_dataset on one directory at the same moment; tfds
    # writes its metadata in place, so without whole-file replacement about one call in six read an empty
    # dataset_info.json here (JSONDecodeError).
    calls = ("import sys\nfrom mbde_jax.data import testing\n"
             "for _ in range(40):\n"
             f"    with testing.mocked_dataset('cifar10', num_examples=16, metadata_dir={str(tmp_path)!r}):\n"
             "        pass\n")
    processes = [subprocess.Popen([sys.executable, "-c", calls], stderr=subprocess.PIPE, text=True)
                 for _ in range(3)]
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-2000:]
    assert not [path for path in tmp_path.rglob(".metadata-*")]  # no staging directory left behind
