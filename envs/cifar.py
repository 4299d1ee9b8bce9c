"""CIFAR-10 from its official binary release or from the JPEG stand-in, read without torchvision or pickle.

Where the data come from, first found first:

1. ``<root>/cifar-10-batches-bin/*.bin``: the official *binary* release unpacked (fixed-size records);
2. ``<root>/cifar-10-binary.tar.gz``: that release's archive, checked by its md5 and unpacked beside it;
3. ``<root>/CIFAR10-JPEG/cifar-10-jpeg.tar.gz``: all 60,000 images as JPEG (quality 75) in class folders, a
   lossy stand-in for machines that cannot download the release, checked by its sha256. It is decoded once
   with Pillow into a uint8 cache beside it (or in the per-user cache when that folder is read-only), keyed
   by the archive's hash and the Pillow version, and rebuilt when either changes;
4. a download of the official archive with its md5 (pooch), when online.

The official release wins when both are there; ``Splits.source`` says which was read, and the benchmarks
record it and say so under their tables when it is the stand-in.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from envs.cache import DataError, user_cache

BINARY_FOLDER = "cifar-10-batches-bin"
OFFICIAL = "cifar-10-binary.tar.gz"
OFFICIAL_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
JPEG_FOLDER, JPEG_ARCHIVE = "CIFAR10-JPEG", "cifar-10-jpeg.tar.gz"
JPEG_SHA256 = "87f695e7e1fd79ead0cb05a8f566a80f39553aee9060f3f2b6f7f977bd09d5e8"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST = "test_batch.bin"
RECORD = 1 + 3 * 32 * 32  # label byte, then the red, green and blue 32x32 planes
SOURCES = {"binary": "the official CIFAR-10 binary release",
           "jpeg": "the JPEG stand-in (quality 75; pixels differ from the official release)"}


def read_binary_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 binary batch: images ``[n, 3, 32, 32]`` (uint8) and labels ``[n]``."""
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise DataError(f"{path} is unreadable ({e}); delete it so it is fetched again") from e
    if raw.size == 0 or raw.size % RECORD:
        raise DataError(f"{path} holds {raw.size} bytes, not a whole number of {RECORD}-byte CIFAR-10 records; "
                        "delete it so it is fetched again")
    records = raw.reshape(-1, RECORD)
    labels = records[:, 0]
    if labels.max() > 9:
        raise DataError(f"{path} has a label {labels.max()} outside 0..9: not a CIFAR-10 binary batch")
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def file_hash(path: Path, kind: str) -> str:
    digest = hashlib.new(kind)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_cifar(root: Path, download: bool, fetch) -> tuple[tuple[np.ndarray, ...], str]:
    """``(train images, train labels, test images, test labels)`` and which source they came from (module doc).
    ``fetch(names, folder)`` downloads the official archive into ``folder``."""
    folder = root / BINARY_FOLDER
    if all((folder / n).exists() for n in (*TRAIN, TEST)):
        return _binary(folder), "binary"
    archive, jpeg = root / OFFICIAL, root / JPEG_FOLDER / JPEG_ARCHIVE
    if not archive.exists() and jpeg.exists():
        return read_jpeg(jpeg), "jpeg"
    if not archive.exists():
        missing = [n for n in (*TRAIN, TEST) if not (folder / n).exists()]
        if not download:
            raise DataError(f"missing {', '.join(missing)} in {folder} (and no {OFFICIAL} or {JPEG_FOLDER}/"
                            f"{JPEG_ARCHIVE} in {root}); set --data-dir / $COMMCHANNELS_DATA")
        fetch([OFFICIAL], root)
    elif file_hash(archive, "md5") != OFFICIAL_MD5:
        raise DataError(f"{archive} is not the official CIFAR-10 binary archive (md5 differs): it is damaged or "
                        "another file; delete it so it is fetched again")
    with _opened(archive) as tar:
        tar.extractall(root, filter="data")  # "data": no absolute paths, links or devices
    return _binary(folder), "binary"


def _binary(folder: Path) -> tuple[np.ndarray, ...]:
    missing = [n for n in (*TRAIN, TEST) if not (folder / n).exists()]
    if missing:
        raise DataError(f"missing {', '.join(missing)} in {folder}; set --data-dir / $COMMCHANNELS_DATA")
    train = [read_binary_batch(folder / n) for n in TRAIN]
    test_x, test_y = read_binary_batch(folder / TEST)
    return np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]), test_x, test_y


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[tarfile.TarFile]:
    """``tarfile.open``; a truncated, damaged or non-tar archive is one line naming it, also while reading it."""
    try:
        with tarfile.open(path) as tar:
            yield tar
    except DataError:
        raise
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DataError(f"{path} is truncated or not a tar.gz archive ({type(e).__name__}: {e}); replace it") from e


def read_jpeg(archive: Path) -> tuple[np.ndarray, ...]:
    """The stand-in's arrays, decoded once and cached (module doc)."""
    import PIL

    sha = file_hash(archive, "sha256")
    if sha != JPEG_SHA256:
        raise DataError(f"{archive} has sha256 {sha[:12]}..., not the CIFAR-10 JPEG stand-in's {JPEG_SHA256[:12]}...: "
                        "it is damaged or another file; replace it")
    key = {"sha256": sha, "decoder": f"Pillow {PIL.__version__}"}
    for cache in _caches(archive):
        if cache.exists():
            try:
                state = torch.load(cache, weights_only=True)
            except Exception:  # a cache cut short by a kill or of an older layout: decode again
                continue
            if state.get("key") == key:
                return tuple(state[k].numpy() for k in ("train_x", "train_y", "test_x", "test_y"))
    arrays = decode_jpeg(archive)
    state = {"key": key, **{k: torch.from_numpy(a) for k, a in zip(("train_x", "train_y", "test_x", "test_y"), arrays,
                                                                   strict=True)}}
    for cache in _caches(archive):
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
            torch.save(state, tmp)
            os.replace(tmp, cache)
            break
        except OSError:  # a read-only data folder: the per-user cache instead
            continue
    return arrays


def _caches(archive: Path) -> list[Path]:
    """Beside the archive, unless its folder is read-only (by its mode, which root's writes would ignore); then
    the per-user cache."""
    name = archive.name.removesuffix(".tar.gz") + ".uint8.pt"
    beside = [archive.with_name(name)] if os.stat(archive.parent).st_mode & 0o222 else []
    return [*beside, user_cache() / JPEG_FOLDER / name]


def decode_jpeg(archive: Path) -> tuple[np.ndarray, ...]:
    """Every ``{train,test}/<class>/NNNN.jpg`` as RGB uint8 ``[n, 3, 32, 32]``; images ordered by their number,
    then class (so the classes alternate and the last training images are balanced across them)."""
    from PIL import Image

    found: dict[str, list[tuple[int, int, np.ndarray]]] = {"train": [], "test": []}
    with _opened(archive) as tar:
        for member in tar:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) != 4 or parts[1] not in found or not parts[3].endswith(".jpg"):
                continue
            if parts[2] not in CLASSES:
                raise DataError(f"{archive} holds {member.name}: {parts[2]!r} is no CIFAR-10 class; replace it")
            data = tar.extractfile(member).read()
            try:
                image = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
            except OSError as e:
                raise DataError(f"{archive}: {member.name} is not a readable JPEG ({e}); replace the archive") from e
            if image.shape != (32, 32, 3):
                raise DataError(f"{archive}: {member.name} is {image.shape[1]}x{image.shape[0]}, not 32x32; replace it")
            found[parts[1]].append((int(Path(parts[3]).stem), CLASSES.index(parts[2]), image.transpose(2, 0, 1)))
    out = []
    for split in ("train", "test"):
        if not found[split]:
            raise DataError(f"{archive} holds no {split}/<class>/*.jpg images; replace it")
        items = sorted(found[split], key=lambda item: item[:2])
        out += [np.stack([i[2] for i in items]), np.array([i[1] for i in items], dtype=np.uint8)]
    return tuple(out)
