"""CIFAR-10 from the official binary release or the JPEG stand-in, on small synthetic archives of each kind."""

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest

from envs import cifar
from envs.data import DataError, load_splits
from tests.test_data import write_cifar


def jpeg_archive(path: Path, per_class: dict[str, int]) -> dict[str, np.ndarray]:
    """A stand-in archive with ``per_class[split]`` images of each class (flat colours, which JPEG keeps
    within a few levels); returns each split's colours in the order the loader must give them."""
    from PIL import Image

    rng = np.random.default_rng(0)
    colours = {s: rng.integers(0, 256, (n, 10, 3)) for s, n in per_class.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for split, n in per_class.items():
            for c, name in enumerate(cifar.CLASSES):
                for i in range(n):
                    buffer = io.BytesIO()
                    image = np.full((32, 32, 3), colours[split][i, c], dtype=np.uint8)
                    Image.fromarray(image).save(buffer, format="JPEG", quality=75)
                    info = tarfile.TarInfo(f"cifar-10-jpeg/{split}/{name}/{i:04d}.jpg")
                    info.size = buffer.tell()
                    buffer.seek(0)
                    tar.addfile(info, buffer)
    return {s: c.reshape(-1, 3) for s, c in colours.items()}  # number-major, then class


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    """A root holding only the JPEG stand-in (its hash made the known one), and a per-user cache of its own."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    archive = tmp_path / "root" / cifar.JPEG_FOLDER / cifar.JPEG_ARCHIVE
    colours = jpeg_archive(archive, {"train": 6, "test": 2})
    monkeypatch.setattr(cifar, "JPEG_SHA256", cifar.file_hash(archive, "sha256"))
    return tmp_path / "root", archive, colours


def test_the_stand_in_is_decoded_in_order_split_and_labelled(stand_in):
    root, _, colours = stand_in
    splits = load_splits("cifar10", root, download=False)
    assert splits.source == "jpeg" and splits.shape == (3, 32, 32)
    assert (len(splits.train.images), len(splits.val.images), len(splits.test.images)) == (54, 6, 20)
    assert splits.train.labels[:12].tolist() == [*range(10), 0, 1]  # classes alternate: number, then class
    assert splits.val.labels.tolist() == [4, 5, 6, 7, 8, 9]  # the last 10% of training images (image 5 of each class)
    mean_red = splits.test.images[:, : 32 * 32].mean(1).numpy() * 255
    np.testing.assert_allclose(mean_red, colours["test"][:, 0], atol=4)  # JPEG keeps a flat colour within a few levels


def test_the_stand_in_is_decoded_once_beside_it_and_again_when_stale(stand_in, monkeypatch):
    root, archive, _ = stand_in
    decode, calls = cifar.decode_jpeg, []
    monkeypatch.setattr(cifar, "decode_jpeg", lambda a: calls.append(a) or decode(a))
    first = load_splits("cifar10", root, download=False)
    again = load_splits("cifar10", root, download=False)
    assert calls == [archive] and archive.with_name("cifar-10-jpeg.uint8.pt").exists()
    assert (again.train.images == first.train.images).all()
    import PIL

    monkeypatch.setattr(PIL, "__version__", "0.0-other")  # another decoder: the cache is stale
    load_splits("cifar10", root, download=False)
    assert calls == [archive, archive]


def test_a_read_only_data_folder_caches_in_the_user_cache(stand_in, tmp_path):
    root, archive, _ = stand_in
    os.chmod(archive.parent, 0o555)
    try:
        load_splits("cifar10", root, download=False)
        assert not archive.with_name("cifar-10-jpeg.uint8.pt").exists()  # even for root, who could write there
    finally:
        os.chmod(archive.parent, 0o755)
    assert (tmp_path / "cache" / "commchannels" / cifar.JPEG_FOLDER / "cifar-10-jpeg.uint8.pt").exists()


def test_the_official_release_wins_over_the_stand_in(stand_in):
    root, _, _ = stand_in
    _, labels = write_cifar(root / cifar.BINARY_FOLDER)
    splits = load_splits("cifar10", root, download=False)
    assert splits.source == "binary" and splits.test.labels.tolist() == labels.tolist()


def test_a_tampered_or_truncated_stand_in_is_one_line(stand_in, monkeypatch):
    root, archive, _ = stand_in
    archive.write_bytes(archive.read_bytes()[:-100])
    with pytest.raises(DataError) as e:
        load_splits("cifar10", root, download=False)
    assert "not the CIFAR-10 JPEG stand-in's" in str(e.value) and "\n" not in str(e.value)
    monkeypatch.setattr(cifar, "JPEG_SHA256", cifar.file_hash(archive, "sha256"))  # cut, yet the hash it claims
    with pytest.raises(DataError, match=r"is truncated or not a tar.gz archive \(EOFError"):
        load_splits("cifar10", root, download=False)


def official_archive(root: Path) -> Path:
    source = root.parent / "source"
    write_cifar(source / cifar.BINARY_FOLDER)
    archive = root / cifar.OFFICIAL
    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source / cifar.BINARY_FOLDER, arcname=cifar.BINARY_FOLDER)
    return archive


def test_an_official_archive_on_disk_is_checked_and_unpacked(tmp_path, monkeypatch):
    archive = official_archive(tmp_path / "root")
    with pytest.raises(DataError, match="is not the official CIFAR-10 binary archive"):
        load_splits("cifar10", tmp_path / "root", download=False)
    monkeypatch.setattr(cifar, "OFFICIAL_MD5", cifar.file_hash(archive, "md5"))
    splits = load_splits("cifar10", tmp_path / "root", download=False)
    assert splits.source == "binary" and (tmp_path / "root" / cifar.BINARY_FOLDER / cifar.TEST).exists()


def test_nothing_there_offline_names_every_place_it_looked(tmp_path):
    with pytest.raises(DataError) as e:
        load_splits("cifar10", tmp_path, download=False)
    assert "cifar-10-binary.tar.gz" in str(e.value) and "CIFAR10-JPEG/cifar-10-jpeg.tar.gz" in str(e.value)


@pytest.mark.skipif(not os.environ.get("COMMCHANNELS_DATA"), reason="the shared stand-in needs COMMCHANNELS_DATA")
def test_the_shared_stand_in_has_all_of_cifar_10():
    splits = load_splits("cifar10")
    assert splits.source == "jpeg" and splits.shape == (3, 32, 32)
    assert (len(splits.train.images), len(splits.val.images), len(splits.test.images)) == (45_000, 5_000, 10_000)
    assert np.bincount(splits.val.labels.numpy()).tolist() == [500] * 10
    assert np.bincount(splits.test.labels.numpy()).tolist() == [1_000] * 10
