"""The offline demo data: scikit-learn's digits as the tfds dataset sklearn_digits, through the real pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits

from mbde_jax import sharding
from mbde_jax.data import preparation, train_input
from mbde_jax.data import digits
from mbde_jax.data import info as dataset_info


@pytest.fixture(scope="module")
def builder(tmp_path_factory):
    # No download URL exists for digits: preparing must not touch the network at all.
    return preparation.prepare("digits", data_dir=str(tmp_path_factory.mktemp("tfds")), download=False)


@pytest.fixture(scope="module")
def splits(builder):
    return {name: tfds.as_numpy(builder.as_dataset(split=name, batch_size=-1)) for name in ("train", "test")}


def test_builder_is_registered_under_the_info_name(builder):
    assert builder.name == dataset_info.get_dataset_info("digits").tfds_name == "sklearn_digits"


def test_both_splits_have_32x32x3_images_of_every_class(splits):
    assert len(splits["train"]["label"]) == 1442 and len(splits["test"]["label"]) == 355
    for split in splits.values():
        assert split["image"].shape[1:] == (32, 32, 3) and split["image"].dtype == np.uint8
        assert set(split["label"].tolist()) == set(range(10))
        np.testing.assert_array_equal(split["image"][..., 0], split["image"][..., 2])  # Grey in three channels.
        assert split["image"].max() == 255 and split["image"].min() == 0
    # Train and test are disjoint and together are the whole of load_digits.
    train_ids, test_ids = set(splits["train"]["id"].tolist()), set(splits["test"]["id"].tolist())
    assert not train_ids & test_ids and len(train_ids | test_ids) == 1797


def test_split_is_fixed_and_stratified():
    labels = load_digits().target
    first, second = digits.split_indices(labels), digits.split_indices(labels)
    np.testing.assert_array_equal(first["test"], second["test"])
    test_share = np.bincount(labels[first["test"]], minlength=10) / np.bincount(labels, minlength=10)
    assert np.all((test_share > 0.19) & (test_share < 0.21))
    # Every fifth image of each class, counting from the fifth.
    ones = np.flatnonzero(labels == 1)
    np.testing.assert_array_equal(np.intersect1d(ones, first["test"]), ones[4::5])


def test_conversion_scales_resizes_bilinearly_and_replicates():
    pixels = np.zeros((2, 8, 8))
    pixels[0] = 16  # Full ink everywhere -> white everywhere.
    pixels[1, :, 4:] = 8  # A vertical edge at half ink.
    images = digits.digits_to_images(pixels)
    assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8
    assert np.all(images[0] == 255)
    row = images[1, 16, :, 0].astype(int)
    assert np.all(row[:14] == 0) and np.all(row[-14:] == 128)  # round(8 * 255 / 16) = 128, far from the edge.
    ramp = row[14:18]
    assert np.all(np.diff(ramp) > 0) and 0 < ramp[0] and ramp[-1] < 128  # Bilinear: a ramp, not a step.


def test_info_normalisation_constants_are_those_of_the_train_split(splits):
    info = dataset_info.get_dataset_info("digits")
    images = splits["train"]["image"].astype(np.float64) / 255.0
    np.testing.assert_allclose(info.mean, images.mean(axis=(0, 1, 2)), atol=1e-7)
    np.testing.assert_allclose(info.std, images.std(axis=(0, 1, 2)), atol=1e-7)


def test_train_pipeline_on_digits_is_normalised(builder):
    mesh = sharding.make_data_mesh()
    pipeline = train_input.TrainPipeline("digits", global_batch_size=128, seed=0, mesh=mesh,
                                         data_dir=builder.data_dir_root, download=False)
    assert pipeline.num_examples == 1442 and pipeline.steps_per_epoch == 11
    images = np.concatenate([np.asarray(b["image"]) for b in pipeline.epoch_batches(0)])
    # Padding adds zeros, so the mean drops a little below 0 and the spread stays near 1.
    assert -0.3 < images.mean() < 0.05 and 0.8 < images.std() < 1.1
