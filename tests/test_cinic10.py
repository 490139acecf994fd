"""CINIC-10 through the real builder and pipeline, from a tiny archive in the release's layout."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import pathlib
import shutil
import socket
import tarfile

import numpy as np
import pytest
from PIL import Image

from mbde_jax import sharding
from mbde_jax.data import eval_input, preparation, train_input
from mbde_jax.data import cinic10

PER_CLASS = 2  # PNGs per class folder and split; the release has 9,000.


def _png(image: np.ndarray, mode: str) -> bytes:
    buffer = io.BytesIO()
    picture = Image.fromarray(image)
    picture = picture.convert(mode) if mode != "RGB" else picture
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def _build_archive(path: str, *, folders=("train", "valid", "test"), classes=cinic10.CLASS_NAMES) -> dict:
    """Writes a CINIC-10.tar.gz in the release layout; returns {member path: (rgb image, class index)}.

    Like the release: train/, valid/, test/ at the top, class folders inside, CIFAR- and ImageNet-style file
    names, a stray file at the top level, and among the PNGs some greyscale and some palette images.
    """
    rng = np.random.default_rng(0)
    contents = {}
    with tarfile.open(path, "w:gz") as archive:
        readme = b"CINIC-10 test archive\n"
        info = tarfile.TarInfo("imagenet-contributors.csv")
        info.size = len(readme)
        archive.addfile(info, io.BytesIO(readme))
        for folder in folders:
            for label, name in enumerate(classes):
                for i in range(PER_CLASS):
                    mode = ("RGB", "L", "P")[(label + i) % 3]
                    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                    data = _png(image, mode)
                    rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
                    member = f"{folder}/{name}/" + (f"cifar10-{folder}-{i}.png" if i % 2 else f"n0{label}_{i}.png")
                    info = tarfile.TarInfo(member)
                    info.size = len(data)
                    archive.addfile(info, io.BytesIO(data))
                    contents[member] = (rgb, label)
    return contents


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/CINIC-10.tar.gz"


def _spec_for(path: str) -> cinic10.ArchiveSpec:
    """The expectations of the archive at `path`, with a download address where nothing answers."""
    data = pathlib.Path(path).read_bytes()
    return dataclasses.replace(cinic10.ARCHIVE, url=_closed_port_url(), num_bytes=len(data),
                               sha256=hashlib.sha256(data).hexdigest(), md5=hashlib.md5(data).hexdigest(),
                               images_per_class=PER_CLASS)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """(data_dir, manual_dir, archive contents) with the fake archive prepared through the real builder."""
    root = tmp_path_factory.mktemp("cinic10")
    manual_dir = root / "manual"
    manual_dir.mkdir()
    archive = str(manual_dir / "CINIC-10.tar.gz")
    contents = _build_archive(archive)
    with pytest.MonkeyPatch.context() as patch:
        # Nothing can be downloaded (see _spec_for): the builder must use the manual directory's archive.
        patch.setattr(cinic10, "ARCHIVE", _spec_for(archive))
        builder = preparation.prepare("cinic10", data_dir=str(root / "data"), manual_dir=str(manual_dir))
    assert {name: split.num_examples for name, split in builder.info.splits.items()} == {
            "train": 10 * PER_CLASS, "validation": 10 * PER_CLASS, "test": 10 * PER_CLASS}
    return str(root / "data"), str(manual_dir), contents


def _expected(contents: dict, folder: str) -> dict[bytes, int]:
    return {rgb.tobytes(): label for member, (rgb, label) in contents.items() if member.startswith(folder + "/")}


@pytest.mark.parametrize("train_splits, folders", [("train", ("train",)), ("train+validation", ("train", "valid"))])
def test_train_pipeline_reads_the_archive_images_with_their_class(prepared, train_splits, folders):
    data_dir, _, contents = prepared
    mesh = sharding.make_data_mesh()
    pipeline = train_input.TrainPipeline("cinic10", global_batch_size=4, seed=0, mesh=mesh, data_dir=data_dir,
                                         train_splits=train_splits)
    expected = {}
    for folder in folders:
        expected.update(_expected(contents, folder))
    assert pipeline.num_examples == len(expected) == 10 * PER_CLASS * len(folders)
    assert pipeline.steps_per_epoch == len(expected) // 4
    # Every image of the chosen split folders, once, RGB (greyscale and palette PNGs converted), with its class.
    got = {image.tobytes(): int(label) for image, label in zip(pipeline.images, pipeline.labels)}
    assert got == expected
    batch = next(pipeline.epoch_batches(0))
    assert batch["image"].shape == (4, 32, 32, 3) and batch["image"].dtype == np.float32
    assert np.asarray(batch["label"]).max() < 10


def test_eval_splits_count_every_image(prepared):
    data_dir, _, contents = prepared
    mesh = sharding.make_data_mesh()
    for split, folder in (("test", "test"), ("validation", "valid")):
        batches = list(eval_input.EvalInput("cinic10", split=split, global_batch_size=6, mesh=mesh,
                                            data_dir=data_dir).batches())
        assert len(batches) == 4  # 20 images in batches of 6: the last has 2 real ones.
        assert sum(float(np.asarray(b["mask"]).sum()) for b in batches) == 10 * PER_CLASS
        labels = np.concatenate([np.asarray(b["label"])[np.asarray(b["mask"]) > 0] for b in batches])
        assert sorted(labels.tolist()) == sorted(_expected(contents, folder).values())


def test_train_splits_other_than_train_or_train_plus_validation_are_refused(prepared):
    data_dir, _, _ = prepared
    with pytest.raises(ValueError, match=r"cinic10_train_splits='test'.*'train', 'train\+validation'"):
        train_input.TrainPipeline("cinic10", global_batch_size=4, seed=0, mesh=sharding.make_data_mesh(),
                                  data_dir=data_dir, train_splits="test")


@pytest.fixture
def good_archive(tmp_path, monkeypatch):
    path = str(tmp_path / "manual" / "CINIC-10.tar.gz")
    os.makedirs(os.path.dirname(path))
    _build_archive(path)
    monkeypatch.setattr(cinic10, "ARCHIVE", _spec_for(path))
    return path


def test_good_archive_passes_verification(good_archive):
    cinic10.verify_archive(good_archive)


def test_truncated_archive_is_refused(good_archive, tmp_path):
    data = pathlib.Path(good_archive).read_bytes()
    pathlib.Path(good_archive).write_bytes(data[:len(data) // 2])
    with pytest.raises(cinic10.ArchiveError, match=r"is truncated: it has [\d,]+ bytes, the release has"):
        cinic10.verify_archive(good_archive)
    # The same refusal comes out of preparation, and nothing is prepared.
    with pytest.raises(cinic10.ArchiveError, match="truncated"):
        preparation.prepare("cinic10", data_dir=str(tmp_path / "data"), manual_dir=os.path.dirname(good_archive))
    assert not os.path.exists(tmp_path / "data" / "cinic10" / "1.0.0" / "dataset_info.json")


def test_corrupted_archive_is_refused_by_checksum(good_archive, tmp_path):
    data = bytearray(pathlib.Path(good_archive).read_bytes())
    data[len(data) // 2] ^= 0xFF  # Same size, one byte changed.
    pathlib.Path(good_archive).write_bytes(bytes(data))
    with pytest.raises(cinic10.ArchiveError, match="wrong sha256 checksum .*corrupted or is not the official"):
        preparation.prepare("cinic10", data_dir=str(tmp_path / "data"), manual_dir=os.path.dirname(good_archive))


def test_archive_matching_its_checksums_but_cut_short_inside_is_refused(tmp_path, monkeypatch):
    # A checksum list made from a broken file (as a test can) still cannot pass a tarball that ends early.
    path = str(tmp_path / "CINIC-10.tar.gz")
    _build_archive(path)
    data = pathlib.Path(path).read_bytes()
    pathlib.Path(path).write_bytes(data[:-200])
    monkeypatch.setattr(cinic10, "ARCHIVE", _spec_for(path))
    with pytest.raises(cinic10.ArchiveError, match="cannot be read to the end .*truncated or corrupted"):
        cinic10.verify_archive(path)


def test_archive_with_a_missing_class_folder_is_refused(tmp_path, monkeypatch):
    path = str(tmp_path / "CINIC-10.tar.gz")
    _build_archive(path, classes=cinic10.CLASS_NAMES[:-1])
    monkeypatch.setattr(cinic10, "ARCHIVE", _spec_for(path))
    with pytest.raises(cinic10.ArchiveError, match="layout.*test/truck: 0 images"):
        cinic10.verify_archive(path)


def test_real_release_expectations():
    # The values the real archive is checked against (sources in mbde_jax/data/cinic10.py).
    assert cinic10.ARCHIVE.num_bytes == 687_544_992
    assert cinic10.ARCHIVE.images_per_class * len(cinic10.CLASS_NAMES) * len(cinic10.SPLIT_FOLDERS) == 270_000
    assert cinic10.ARCHIVE.url.startswith("https://datashare.ed.ac.uk/") and cinic10.ARCHIVE.md5 and cinic10.ARCHIVE.sha256


def test_member_paths_are_read_with_or_without_a_leading_folder():
    locate = cinic10._image_location  # pylint: disable=protected-access
    assert locate("train/cat/n02121808_1.png") == ("train", "cat")
    assert locate("./valid/dog/cifar10-train-7.png") == ("valid", "dog")
    assert locate("CINIC-10/test/ship/n1_2.png") == ("test", "ship")
    assert locate("imagenet-contributors.csv") is None and locate("train/cat/notes.txt") is None
    assert locate("train/x.png") is None and locate("extra/cat/x.png") is None


def test_a_truncated_eval_file_names_the_files(prepared, tmp_path):
    data_dir, _, _ = prepared
    copy = tmp_path / "data"
    shutil.copytree(data_dir, copy)
    (record,) = copy.rglob("cinic10-test.tfrecord*")
    record.write_bytes(record.read_bytes()[: record.stat().st_size // 2])
    with pytest.raises(preparation.DatasetUnavailableError,
                       match=rf"cinic10 split test in {copy}/\S+ cannot be read \(DataLossError: .*files: "
                             rf"{record.name}.*delete .* and prepare it again"):
        eval_input.EvalInput("cinic10", split="test", global_batch_size=6, mesh=sharding.make_data_mesh(),
                             data_dir=str(copy))
