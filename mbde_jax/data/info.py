"""Static facts about every dataset the project trains on.

Pure Python on purpose: the model summary and config checks need the number of classes and the image
shape without importing TensorFlow.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the model and the input pipeline need to know about one dataset.

    Attributes:
        name: the name used in configs (`config.dataset`).
        tfds_name: the tfds builder that provides it.
        num_classes: number of labels.
        image_shape: (height, width, channels) of one image as the model sees it.
        mean: per-channel mean of the training images, in [0, 1] units.
        std: per-channel standard deviation of the training images, in [0, 1] units.
        train_split: tfds split used for training by default.
        eval_split: tfds split used for the reported test numbers.
    """

    name: str
    tfds_name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    train_split: str = "train"
    eval_split: str = "test"


DATASETS: dict[str, DatasetInfo] = {
        "cifar10": DatasetInfo(
                name="cifar10", tfds_name="cifar10", num_classes=10, image_shape=(32, 32, 3),
                mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616)),
        "cifar100": DatasetInfo(
                name="cifar100", tfds_name="cifar100", num_classes=100, image_shape=(32, 32, 3),
                mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762)),
        "cinic10": DatasetInfo(
                name="cinic10", tfds_name="cinic10", num_classes=10, image_shape=(32, 32, 3),
                mean=(0.47889522, 0.47227842, 0.43047404), std=(0.24205776, 0.23828046, 0.25874835)),
        # scikit-learn's bundled handwritten digits, resized to 32x32x3: real data that needs no network.
        # Mean/std measured on the resized training split (1,442 images, see mbde_jax/data/digits.py);
        # the three channels are copies of one grey channel, hence equal.
        "digits": DatasetInfo(
                name="digits", tfds_name="sklearn_digits", num_classes=10, image_shape=(32, 32, 3),
                mean=(0.30540887, 0.30540887, 0.30540887), std=(0.32367197, 0.32367197, 0.32367197)),
}


def get_dataset_info(name: str) -> DatasetInfo:
    """Returns the facts for `name`, or raises a ValueError listing the valid names."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(
                f"config.dataset: unknown dataset {name!r}; valid datasets are {sorted(DATASETS)}."
        ) from None
