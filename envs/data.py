"""Image datasets in torchvision's on-disk layout, read without torchvision.

MNIST and Fashion-MNIST come as IDX files under ``<root>/<Folder>/raw/``, so an existing torchvision
download is reused as is. CIFAR-10 comes in its *binary* version or as the JPEG stand-in (``envs.cifar``):
fixed-size records or image folders, no pickle. The root is ``--data-dir``, else ``$COMMCHANNELS_DATA``,
else a per-user cache; missing files are fetched with hash checks (pooch) when online. The thesis split
for (Fashion-)MNIST: the first 50,000 training images train, the last 10,000 validate, the official
10,000 test. The thesis names no validation split for CIFAR-10: its last 5,000 training images (500 per
class) validate, the first 45,000 train (``DatasetSpec.val_fraction``), and the official 10,000 test.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from envs.cache import DataError, user_cache
from envs.cifar import read_cifar

__all__ = ["DATASETS", "DataError", "DatasetSpec", "Split", "Splits", "default_root", "load_splits", "read_idx",
           "user_cache"]

ENV_VAR = "COMMCHANNELS_DATA"

# IDX element types (the third magic byte) -> numpy dtype, big-endian as the format requires.
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass(frozen=True)
class DatasetSpec:
    folder: str
    base_url: str
    md5: dict[str, str]  # file name -> md5 of the gzipped file (or of the archive) as served
    shape: tuple[int, int, int] = (1, 28, 28)  # channels, height, width
    classes: int = 10
    val_fraction: float = 1 / 6  # of the training files' images, the last ones: validation


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        "MNIST",
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    "fashion-mnist": DatasetSpec(
        "FashionMNIST",
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    ),
    "cifar10": DatasetSpec(
        "cifar-10-batches-bin",
        "https://www.cs.toronto.edu/~kriz/",
        {"cifar-10-binary.tar.gz": "c32a1d4ab5d03f1284b67883e8d87530"},
        shape=(3, 32, 32),
        val_fraction=1 / 10,  # 5,000 of 50,000: as many as the network's curves read, 90% left to train on
    ),
}
@dataclass(frozen=True)
class Split:
    """Flattened images in [0, 1] (float32, ``[n, pixels]``) and integer labels (int64, ``[n]``)."""

    images: torch.Tensor
    labels: torch.Tensor


@dataclass(frozen=True)
class Splits:
    train: Split
    val: Split
    test: Split
    shape: tuple[int, ...] = ()  # (channels, height, width) of an image; () for feature vectors
    source: str = ""  # where the images came from when a dataset has several (``envs.cifar.SOURCES``)

    def named(self) -> dict[str, Split]:
        """``{"train": ..., "val": ..., "test": ...}``."""
        return {"train": self.train, "val": self.val, "test": self.test}

    def to(self, device: torch.device | str) -> Splits:
        """The same splits on ``device`` (a trainer keeps its data where it computes)."""
        moved = (Split(s.images.to(device), s.labels.to(device)) for s in (self.train, self.val, self.test))
        return Splits(*moved, shape=self.shape, source=self.source)


def default_root() -> Path:
    """``$COMMCHANNELS_DATA`` if set, else ``user_cache()``."""
    return Path(os.environ[ENV_VAR]) if os.environ.get(ENV_VAR) else user_cache()


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (gzipped or not) into an array, checking its header against its size."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path} is unreadable or truncated ({e}); delete it so it is fetched again") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number); delete it so it is fetched again")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated inside its header; delete it so it is fetched again")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(
            f"{path} holds {len(raw)} bytes but its header announces {expected} for shape {shape}; "
            "delete it so it is fetched again"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _read_idx_dataset(spec: DatasetSpec, root: Path, download: bool) -> tuple[np.ndarray, ...]:
    raw_dir = root / spec.folder / "raw"
    missing = [n for n in spec.md5 if _locate(raw_dir, n) is None]
    if missing:
        if not download:
            raise DataError(f"missing {', '.join(missing)} in {raw_dir}; set --data-dir / ${ENV_VAR}")
        raw_dir.mkdir(parents=True, exist_ok=True)
        _fetch(spec, raw_dir, missing)
    out = []
    for split in ("train", "t10k"):
        images, labels = (_locate(raw_dir, f"{split}-{k}-idx{d}-ubyte.gz") for k, d in (("images", 3), ("labels", 1)))
        x, y = read_idx(images), read_idx(labels)
        _check_idx_pair(spec, images, x, labels, y)
        out += [x, y]
    if out[0].shape[1:] != out[2].shape[1:]:
        raise DataError(f"{raw_dir} holds {_size(out[0])} training but {_size(out[2])} test images: "
                        "the two images files come from different datasets; replace the wrong one")
    return tuple(out)


def _check_idx_pair(spec: DatasetSpec, images: Path, x: np.ndarray, labels: Path, y: np.ndarray) -> None:
    """One split's images and labels files: shapes, counts and label range, naming the file at fault."""
    if x.ndim != 3 or 0 in x.shape[1:]:
        raise DataError(f"{images} holds an array of shape {x.shape}, not images [n, height, width]: replace it")
    if y.ndim != 1:
        raise DataError(f"{labels} holds an array of shape {y.shape}, not labels [n]: replace it")
    if not len(x):
        raise DataError(f"{images} holds no images: replace it")
    if len(x) != len(y):
        raise DataError(f"{images} holds {len(x)} images but {labels} {len(y)} labels: replace the one that is cut")
    if not 0 <= int(y.min()) <= int(y.max()) < spec.classes:
        raise DataError(f"{labels} must hold classes 0..{spec.classes - 1}, found {int(y.min())}..{int(y.max())}: "
                        "replace it")


def _size(x: np.ndarray) -> str:
    return "x".join(map(str, x.shape[1:]))


def _locate(raw_dir: Path, name: str) -> Path | None:
    for candidate in (raw_dir / name, raw_dir / name.removesuffix(".gz")):
        if candidate.exists():
            return candidate
    return None


def _fetch(spec: DatasetSpec, raw_dir: Path, missing: list[str]) -> None:
    """Download the missing files with md5 checks; any failure becomes one actionable DataError."""
    import pooch

    pooch.get_logger().setLevel("WARNING")  # its per-file chatter would bury a failure's one-line error
    try:
        for name in missing:
            pooch.retrieve(
                spec.base_url + name, known_hash=f"md5:{spec.md5[name]}", fname=name, path=raw_dir, progressbar=False
            )
    except Exception as e:  # network errors come in many types; all mean the same to the user
        raise DataError(
            f"missing {', '.join(missing)} in {raw_dir} and the download failed ({type(e).__name__}); "
            f"put the files there or point --data-dir / ${ENV_VAR} at a root holding {spec.folder}/"
        ) from e


def load_splits(name: str = "mnist", root: str | Path | None = None, download: bool = True) -> Splits:
    """Load ``name`` from ``root`` (see module doc) and cut it into the thesis' train/val/test split."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    spec = DATASETS[name]
    explicit = root is not None or bool(os.environ.get(ENV_VAR))  # a folder the user named is never created
    root = Path(root) if root is not None else default_root()
    if explicit and root.is_file():
        raise DataError(f"data dir {root} is a file; point --data-dir / ${ENV_VAR} at the folder that holds "
                        f"{spec.folder}/raw/")
    if explicit and not root.is_dir():
        raise DataError(
            f"data dir {root} does not exist; create it (files are downloaded into it) or point "
            f"--data-dir / ${ENV_VAR} at a root holding {spec.folder}/raw/"
        )
    source = ""
    if name == "cifar10":
        arrays, source = read_cifar(root, download, lambda names, to: _fetch(spec, to, names))
        train_x, train_y, test_x, test_y = arrays
    else:
        train_x, train_y, test_x, test_y = _read_idx_dataset(spec, root, download)
    shape = tuple(train_x.shape[1:]) if train_x.ndim == 4 else (1, *train_x.shape[1:])
    n_train = len(train_x) - int(len(train_x) * spec.val_fraction)  # scaled down for small files

    def split(x: np.ndarray, y: np.ndarray) -> Split:
        images = torch.from_numpy(x.reshape(len(x), -1).astype(np.float32) / 255.0)
        return Split(images, torch.from_numpy(y.astype(np.int64)))

    return Splits(
        train=split(train_x[:n_train], train_y[:n_train]),
        val=split(train_x[n_train:], train_y[n_train:]),
        test=split(test_x, test_y),
        shape=shape,
        source=source,
    )
