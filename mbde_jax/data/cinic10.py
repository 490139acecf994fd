"""CINIC-10 as a tfds dataset, built from the official release archive.

CINIC-10 (Darlow et al. 2018, "CINIC-10 is not ImageNet or CIFAR-10", doi:10.7488/ds/2448) is not in the tfds
catalog. The release is one gzip tarball, CINIC-10.tar.gz, on the University of Edinburgh DataShare. Inside,
at the top level, are train/, valid/ and test/, each holding ten class folders (airplane ... truck) of 32x32
PNGs, 9,000 per class and split, 270,000 in all (a few extra files at the top level are ignored).

The builder takes the archive from the tfds manual directory (default <data_dir>/downloads/manual) when it is
there, and downloads it otherwise. Either way it refuses an archive that does not match the published size,
checksums and layout, before generating anything, with a message that says which check failed. The expected
values live in the module-level ARCHIVE, which tests replace to run the real checks on a tiny fake archive.

Splits: train, validation (the archive's valid/), test; 90,000 images each. Greyscale and palette PNGs (a few
of the ImageNet-derived images) are converted to RGB, so every image is uint8 [32, 32, 3].
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import posixpath
import tarfile
import zlib
from collections import Counter
from collections.abc import Iterator

import tensorflow_datasets as tfds
from PIL import Image

CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# tfds split name -> folder in the archive.
SPLIT_FOLDERS = {"train": "train", "validation": "valid", "test": "test"}
IMAGE_SIZE = 32


@dataclasses.dataclass(frozen=True)
class ArchiveSpec:
    """What a valid release archive looks like.

    Attributes:
        filename: the name the archive must have in the manual directory.
        url: where it is downloaded from.
        num_bytes: exact size of the archive in bytes.
        sha256: hex SHA-256 of the archive, or None to skip that check.
        md5: hex MD5 of the archive, or None to skip that check.
        images_per_class: PNGs in each class folder of each split.
    """

    filename: str
    url: str
    num_bytes: int
    sha256: str | None
    md5: str | None
    images_per_class: int


# Sources (none is the dataset authors' own statement; DataShare publishes no checksum file):
#   md5 6ee4d0c9...: in many independent dataset loaders (torchvision-style CINIC10 classes), and described in one
#       of them as DataShare's ETag for the file;
#   num_bytes 687,544,992: one dataset installer that checks it together with that md5;
#   sha256 31b095ac...: two torchvision-style loaders (possibly one author's), one of which refuses the archive
#       unless it matches.
# No source gives all three together, so they were not checked against one another here.
ARCHIVE = ArchiveSpec(
        filename="CINIC-10.tar.gz",
        url="https://datashare.ed.ac.uk/bitstream/handle/10283/3192/CINIC-10.tar.gz",
        num_bytes=687_544_992,
        sha256="31b095acf6d75e25a9e028bae82a07a0f94ff6b00671be2802d34ac4efa81a9e",
        md5="6ee4d0c996905fe93221de577967a372",
        images_per_class=9_000,
)

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download CINIC-10.tar.gz (687,544,992 bytes) from the University of Edinburgh DataShare,
  https://datashare.ed.ac.uk/bitstream/handle/10283/3192/CINIC-10.tar.gz
(dataset page: https://doi.org/10.7488/ds/2448), and put it, unextracted and under that name, in the manual
directory (default: <data_dir>/downloads/manual/CINIC-10.tar.gz). Then run
  python -m mbde_jax.data prepare cinic10 --data_dir <data_dir> [--manual_dir <dir holding the archive>]
"""


class ArchiveError(ValueError):
    """The CINIC-10 archive is truncated, corrupted, or not the official release."""


def _image_location(member_path: str) -> tuple[str, str] | None:
    """Returns (split folder, class name) of an image inside the archive, or None for any other file.

    Accepts 'train/cat/x.png', './train/cat/x.png' and one wrapping folder ('CINIC-10/train/cat/x.png'), so a
    re-packed archive with the same content is read the same way.
    """
    parts = [part for part in posixpath.normpath(member_path).split("/") if part not in ("", ".")]
    if not parts or not parts[-1].lower().endswith(".png") or len(parts) not in (3, 4):
        return None
    split_folder, class_name = parts[-3], parts[-2]
    if split_folder not in SPLIT_FOLDERS.values():
        return None
    return split_folder, class_name


def _file_digests(path: str) -> dict[str, str]:
    """Returns {'sha256': hex, 'md5': hex} of a file, read once in 1 MiB blocks."""
    sha256, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            sha256.update(block)
            md5.update(block)
    return {"sha256": sha256.hexdigest(), "md5": md5.hexdigest()}


def _count_images(path: str) -> Counter:
    """Counts the PNGs of every (split folder, class) in the archive, reading it as a stream."""
    counts: Counter = Counter()
    with tarfile.open(path, mode="r|gz") as archive:
        for member in archive:
            if member.isfile() and (location := _image_location(member.name)) is not None:
                counts[location] += 1
    return counts


def verify_archive(path: str, spec: ArchiveSpec | None = None) -> None:
    """Raises ArchiveError unless the archive at `path` has the expected size, checksums and layout.

    Checks, cheapest first: the byte size (a partial download is reported as truncated), then SHA-256 and MD5,
    then that the tarball can be read to the end and holds exactly `spec.images_per_class` PNGs in every class
    folder of train/, valid/ and test/ and no other class folders.

    Args:
        path: the archive.
        spec: what to expect; default the module-level ARCHIVE (read at call time, so tests can replace it).
    """
    spec = spec or ARCHIVE
    size = os.path.getsize(path)
    fix = (f"Delete it and download it again from {spec.url}, or place a good copy named {spec.filename} in the "
           "manual directory.")
    if size < spec.num_bytes:
        raise ArchiveError(f"CINIC-10 archive {path} is truncated: it has {size:,} bytes, the release has "
                           f"{spec.num_bytes:,}. {fix}")
    if size > spec.num_bytes:
        raise ArchiveError(f"CINIC-10 archive {path} has {size:,} bytes, more than the release's {spec.num_bytes:,}; "
                           f"it is not the official CINIC-10.tar.gz. {fix}")
    digests = _file_digests(path)
    for algorithm, expected in (("sha256", spec.sha256), ("md5", spec.md5)):
        if expected is not None and digests[algorithm] != expected.lower():
            raise ArchiveError(f"CINIC-10 archive {path} has the wrong {algorithm} checksum {digests[algorithm]} "
                               f"(expected {expected}): the file is corrupted or is not the official release. {fix}")
    try:
        counts = _count_images(path)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise ArchiveError(f"CINIC-10 archive {path} cannot be read to the end as a gzip tarball ({e}): it is "
                           f"truncated or corrupted. {fix}") from e
    expected_keys = {(folder, name) for folder in SPLIT_FOLDERS.values() for name in CLASS_NAMES}
    wrong = [f"{folder}/{name}: {counts.get((folder, name), 0)} images"
             for folder, name in sorted(expected_keys | set(counts))
             if counts.get((folder, name), 0) != (spec.images_per_class if (folder, name) in expected_keys else 0)]
    if wrong:
        raise ArchiveError(f"CINIC-10 archive {path} does not have the release's layout (train/, valid/, test/, each "
                           f"with the folders {', '.join(CLASS_NAMES)} of {spec.images_per_class:,} PNGs): "
                           f"{'; '.join(wrong[:6])}{' ...' if len(wrong) > 6 else ''}. {fix}")


def _as_rgb_png(data: bytes, member_path: str) -> bytes | Image.Image:
    """Returns the PNG bytes unchanged when already 32x32 RGB, else the image converted to RGB.

    Decoding every image here also means a damaged PNG fails the preparation, not a training run.
    """
    image = Image.open(io.BytesIO(data))
    image.load()
    if image.size != (IMAGE_SIZE, IMAGE_SIZE):
        raise ArchiveError(f"CINIC-10 image {member_path} is {image.size[0]}x{image.size[1]}, not 32x32.")
    return data if image.mode == "RGB" else image.convert("RGB")


class Cinic10(tfds.core.GeneratorBasedBuilder):
    """CINIC-10 from the official archive (registered in tfds as 'cinic10')."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "From CINIC-10.tar.gz; splits train, validation (valid/), test."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
                description=__doc__,
                features=tfds.features.FeaturesDict({
                        "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3)),
                        "label": tfds.features.ClassLabel(names=CLASS_NAMES),
                        "id": tfds.features.Text(),
                }),
                supervised_keys=("image", "label"),
                homepage="https://github.com/BayesWatch/cinic-10",
                citation=("@article{darlow2018cinic, title={CINIC-10 is not ImageNet or CIFAR-10}, author={Darlow, "
                          "Luke N. and Crowley, Elliot J. and Antoniou, Antreas and Storkey, Amos J.}, "
                          "journal={arXiv preprint arXiv:1810.03505}, year={2018}}"),
        )

    def _archive_path(self, dl_manager: tfds.download.DownloadManager) -> str:
        """The manual directory's copy of the archive if there is one, else a download."""
        try:
            manual_dir = dl_manager.manual_dir
        except AssertionError:  # tfds's way of saying the manual directory is missing or empty.
            manual_dir = None
        if manual_dir is not None and (manual_dir / ARCHIVE.filename).exists():
            return os.fspath(manual_dir / ARCHIVE.filename)
        return os.fspath(dl_manager.download(ARCHIVE.url))

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        archive = self._archive_path(dl_manager)
        verify_archive(archive)
        return {split: self._generate_examples(dl_manager, archive, folder)
                for split, folder in SPLIT_FOLDERS.items()}

    def _generate_examples(self, dl_manager: tfds.download.DownloadManager, archive: str,
                           split_folder: str) -> Iterator[tuple[str, dict]]:
        # One streaming pass over the tarball per split: slower than extracting once, but it writes none of the
        # 270,000 small files to disk.
        resource = tfds.download.Resource(path=archive, extract_method=tfds.download.ExtractMethod.TAR_GZ_STREAM)
        for member_path, fobj in dl_manager.iter_archive(resource):
            location = _image_location(member_path)
            if location is None or location[0] != split_folder:
                continue
            key = "/".join(location + (posixpath.basename(member_path),))
            yield key, {"image": _as_rgb_png(fobj.read(), member_path), "label": location[1], "id": key}
