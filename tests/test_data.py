import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from envs import cifar, data
from envs.data import DataError, load_splits, read_idx
from tests.conftest import make_dataset, write_idx


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_round_trips(tmp_path, compress):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ("x.gz" if compress else "x")
    write_idx(path, array, compress)
    np.testing.assert_array_equal(read_idx(path), array)


def test_truncated_file_is_a_clear_error(tmp_path):
    path = tmp_path / "x"
    write_idx(path, np.zeros((5, 4, 4), np.uint8), compress=False)
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(DataError, match="header announces"):
        read_idx(path)


def test_corrupt_gzip_and_bad_magic_are_clear_errors(tmp_path):
    broken = tmp_path / "a.gz"
    with gzip.open(broken, "wb") as f:
        f.write(b"\0\0\x08\x01" + (10).to_bytes(4, "big") + bytes(10))
    broken.write_bytes(broken.read_bytes()[:-12])
    with pytest.raises(DataError, match="truncated"):
        read_idx(broken)
    junk = tmp_path / "b"
    junk.write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(DataError, match="magic"):
        read_idx(junk)


def test_thesis_split_on_synthetic_files(tmp_path):
    root = make_dataset(tmp_path, n_train=120, n_test=40, side=8)
    s = load_splits("mnist", root, download=False)
    assert (len(s.train.images), len(s.val.images), len(s.test.images)) == (100, 20, 40)
    assert s.train.images.shape[1] == 64 and s.train.images.dtype.is_floating_point
    assert 0.0 <= float(s.train.images.min()) and float(s.train.images.max()) <= 1.0
    # the validation split is the *last* part of the training file
    full = read_idx(root / "MNIST/raw/train-images-idx3-ubyte.gz")
    np.testing.assert_allclose(s.val.images[0].numpy() * 255, full[100].reshape(-1), atol=1e-3)


def test_uncompressed_files_are_found_too(tmp_path):
    root = make_dataset(tmp_path)
    for gz in (root / "MNIST/raw").glob("*.gz"):
        gz.with_suffix("").write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    assert len(load_splits("mnist", root, download=False).test.images) == 40


def test_missing_explicit_dir_names_the_dir(tmp_path):
    with pytest.raises(DataError, match="does not exist") as e:
        load_splits("mnist", tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(e.value)


def test_a_missing_dir_in_the_environment_variable_is_refused_and_not_created(tmp_path, monkeypatch):
    monkeypatch.setenv("COMMCHANNELS_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="does not exist"):
        load_splits("mnist")
    assert not (tmp_path / "nowhere").exists()


def test_a_file_as_data_dir_is_named(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match=r"data dir .*file is a file; point --data-dir"):
        load_splits("mnist", tmp_path / "file")


def test_labels_outside_the_classes_name_the_split_and_the_range(tmp_path):
    root = make_dataset(tmp_path / "data")
    labels = np.arange(120) % 10
    labels[7] = 200
    write_idx(root / "MNIST/raw/train-labels-idx1-ubyte.gz", labels.astype(np.uint8))
    with pytest.raises(DataError, match=r"MNIST/raw/train-labels-idx1-ubyte.gz must hold classes 0..9, found 0..200: "
                                        "replace it"):
        load_splits("mnist", root, download=False)


@pytest.mark.parametrize(
    ("name", "array", "message"),
    [
        ("t10k-labels-idx1-ubyte.gz", np.arange(39) % 10, "{images} holds 40 images but {labels} 39 labels"),
        ("train-images-idx3-ubyte.gz", np.zeros((120, 64)), "{images} holds an array of shape (120, 64), not images"),
        ("train-labels-idx1-ubyte.gz", np.zeros((120, 2)), "{labels} holds an array of shape (120, 2), not labels"),
        ("t10k-images-idx3-ubyte.gz", np.zeros((0, 8, 8)), "{images} holds no images: replace it"),
        ("t10k-images-idx3-ubyte.gz", np.zeros((40, 9, 9)), "MNIST/raw holds 8x8 training but 9x9 test images"),
    ],
)
def test_a_wrong_idx_file_is_named(tmp_path, name, array, message):
    root = make_dataset(tmp_path / "data")
    raw = root / "MNIST/raw"
    write_idx(raw / name, array.astype(np.uint8))
    split = name.split("-")[0]
    images, labels = (raw / f"{split}-{kind}-ubyte.gz" for kind in ("images-idx3", "labels-idx1"))
    expected = message.format(images=images, labels=labels)
    with pytest.raises(DataError) as e:
        load_splits("mnist", root, download=False)
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_failed_download_names_dir_files_and_env_var(tmp_path, monkeypatch):
    import pooch

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(pooch, "retrieve", offline)
    with pytest.raises(DataError) as e:
        load_splits("fashion-mnist", tmp_path)
    message = str(e.value)
    assert "\n" not in message
    assert "train-images-idx3-ubyte.gz" in message and str(tmp_path) in message and "COMMCHANNELS_DATA" in message


def test_root_comes_from_env_var(tmp_path, monkeypatch):
    make_dataset(tmp_path / "elsewhere")
    monkeypatch.setenv("COMMCHANNELS_DATA", str(tmp_path / "elsewhere"))
    assert data.default_root() == Path(tmp_path / "elsewhere")
    assert len(load_splits("mnist", download=False).train.images) == 100


@pytest.mark.skipif(not os.environ.get("COMMCHANNELS_DATA"), reason="real MNIST needs COMMCHANNELS_DATA")
def test_real_mnist_has_the_thesis_split():
    s = load_splits("mnist")
    assert s.train.images.shape == (50_000, 784)
    assert s.val.images.shape == (10_000, 784) and s.test.images.shape == (10_000, 784)
    assert s.train.labels.bincount().tolist() == [4932, 5678, 4968, 5101, 4859, 4506, 4951, 5175, 4842, 4988]
    assert s.test.labels.bincount().tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert float(s.train.images.min()) == 0.0 and float(s.train.images.max()) == 1.0


def write_cifar(folder: Path, per_batch: int = 12) -> np.ndarray:
    """Synthetic CIFAR-10 binary batches; returns the test images so a test can check the byte layout."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for name in (*cifar.TRAIN, cifar.TEST):
        labels = rng.integers(0, 10, per_batch, dtype=np.uint8)
        images = rng.integers(0, 256, (per_batch, 3, 32, 32), dtype=np.uint8)
        (folder / name).write_bytes(np.concatenate([labels[:, None], images.reshape(per_batch, -1)], 1).tobytes())
    return images, labels


def test_cifar10_binary_batches_load_with_planes_in_order(tmp_path):
    images, labels = write_cifar(tmp_path / "cifar-10-batches-bin")
    splits = load_splits("cifar10", tmp_path, download=False)
    assert splits.shape == (3, 32, 32) and len(splits.train.images) == 54 and len(splits.val.images) == 6
    assert splits.source == "binary"
    np.testing.assert_array_equal(splits.test.labels.numpy(), labels)
    red_of_first = splits.test.images[0, : 32 * 32].numpy()  # planes are red, green, blue
    np.testing.assert_allclose(red_of_first, images[0, 0].reshape(-1) / 255.0, atol=1e-6)


def test_cifar10_truncated_batch_and_missing_files_are_clear_errors(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    write_cifar(folder)
    (folder / cifar.TEST).write_bytes((folder / cifar.TEST).read_bytes()[:-5])
    with pytest.raises(DataError, match="3073-byte CIFAR-10 records"):
        load_splits("cifar10", tmp_path, download=False)
    (folder / "data_batch_3.bin").unlink()
    with pytest.raises(DataError, match=r"missing data_batch_3\.bin"):
        load_splits("cifar10", tmp_path, download=False)


def test_idx_datasets_report_their_image_shape(tmp_path):
    assert load_splits("mnist", make_dataset(tmp_path), download=False).shape == (1, 8, 8)


def test_cifar10_download_is_hash_checked_and_unpacked(tmp_path, monkeypatch):
    import tarfile

    import pooch

    source = tmp_path / "source"
    write_cifar(source / "cifar-10-batches-bin")
    archive = tmp_path / "served.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source / "cifar-10-batches-bin", arcname="cifar-10-batches-bin")
    asked = {}

    def serve(url, known_hash, fname, path, progressbar):
        asked.update(url=url, known_hash=known_hash)
        (Path(path) / fname).write_bytes(archive.read_bytes())

    monkeypatch.setattr(pooch, "retrieve", serve)
    root = tmp_path / "root"
    root.mkdir()
    splits = load_splits("cifar10", root)
    assert asked == {"url": "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
                     "known_hash": "md5:c32a1d4ab5d03f1284b67883e8d87530"}
    assert len(splits.test.images) == 12 and splits.test.images.shape[1] == 3 * 32 * 32
