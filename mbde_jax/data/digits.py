"""Offline demo data: scikit-learn's bundled handwritten digits as a tfds dataset of 32x32x3 images.

The 1,797 8x8 grey images (UCI optical recognition of handwritten digits, test part) ship inside the
scikit-learn wheel, so `download_and_prepare` needs no network. They are real data, small enough to train on
a laptop CPU in minutes, and go through exactly the pipeline CIFAR does (same augmentation, same shapes).

Conversion, per image:
  * values 0..16 (counts of set pixels in 4x4 blocks of the 32x32 scan) -> uint8 0..255 by round(v * 255 / 16);
  * 8x8 -> 32x32 with bilinear interpolation (PIL). The originals are block averages of smooth pen strokes;
    bilinear gives smooth strokes back, where nearest neighbour would print a 4x4 grid of hard edges that the
    3x3 convolutions and the 4-pixel crop augmentation would lock on to. Bilinear is also deterministic and
    needs no extra dependency;
  * the grey channel replicated three times, so the CIFAR models run unchanged.

Split (fixed, stratified, no random number generator involved): within each class, in the order
sklearn.datasets.load_digits returns the images, every fifth image (1-based positions 5, 10, 15, ...) is test,
the rest train. That gives 1,442 train and 355 test images, 34-36 test images per class.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

IMAGE_SIZE = 32
NUM_CLASSES = 10
# Every TEST_EVERY-th image of a class is test.
TEST_EVERY = 5
# Largest value in sklearn's digits (a count of 16 set pixels in a 4x4 block).
_MAX_VALUE = 16


def digits_to_images(pixels: np.ndarray) -> np.ndarray:
    """Converts sklearn digits to the images the dataset stores.

    Args:
        pixels: [N, 8, 8] values in 0..16 (any numeric dtype).

    Returns:
        uint8 [N, 32, 32, 3], the three channels equal.
    """
    grey8 = np.rint(np.asarray(pixels, np.float64) * (255.0 / _MAX_VALUE)).astype(np.uint8)
    grey32 = np.stack([
            np.asarray(Image.fromarray(image).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR))
            for image in grey8])
    return np.repeat(grey32[..., None], 3, axis=-1)


def split_indices(labels: np.ndarray) -> dict[str, np.ndarray]:
    """The fixed stratified split: {'train': indices, 'test': indices}, each sorted ascending.

    Args:
        labels: int [N] class of every image, in load_digits order.
    """
    labels = np.asarray(labels)
    is_test = np.zeros(labels.shape, bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        # 1-based rank within the class divisible by TEST_EVERY -> test.
        is_test[members[TEST_EVERY - 1::TEST_EVERY]] = True
    return {"train": np.flatnonzero(~is_test), "test": np.flatnonzero(is_test)}


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's handwritten digits, resized to 32x32x3 (registered in tfds as 'sklearn_digits')."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Bilinear 8x8 -> 32x32, every fifth image of each class is test."}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
                description=__doc__,
                features=tfds.features.FeaturesDict({
                        "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3)),
                        "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
                        "id": tfds.features.Text(),
                }),
                supervised_keys=("image", "label"),
                homepage="https://scikit-learn.org/stable/modules/generated/sklearn.datasets.load_digits.html",
                citation=("@misc{uci_digits, author={Alpaydin, E. and Kaynak, C.}, title={Optical Recognition of "
                          "Handwritten Digits}, year={1998}, howpublished={UCI Machine Learning Repository}}"),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        del dl_manager  # The data is inside the scikit-learn package: nothing to download.
        from sklearn.datasets import load_digits  # Imported here: only preparing needs scikit-learn.

        digits = load_digits()
        images = digits_to_images(digits.images)
        labels = digits.target.astype(np.int64)
        return {split: self._generate_examples(images, labels, indices)
                for split, indices in split_indices(labels).items()}

    def _generate_examples(self, images: np.ndarray, labels: np.ndarray,
                           indices: np.ndarray) -> Iterator[tuple[str, dict]]:
        for index in indices:
            key = f"digit_{index:04d}"
            yield key, {"image": images[index], "label": labels[index], "id": key}
