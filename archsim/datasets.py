"""Datasets: the scikit-learn digits (embedded, no download) and CIFAR-10 from an ``.npz`` (as in
``shared/data``), the standard ``cifar-10-batches-py`` folder, or its ``.tar.gz``.

Images are kept as stored (uint8 for CIFAR-10) and normalized batch by batch, so a 50,000-image
training set costs 150 MB, not 600 MB of float32. Normalization is the workload's: pixels scaled to
[0, 1], then ``(x - mean) / std`` per channel.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import DataError

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0          # the fixed train/test split of the digits dataset


@dataclass(frozen=True)
class Dataset:
    name: str
    images: np.ndarray          # (N, H, W, C), uint8 (0..255) or float32 already in [0, 1]
    labels: np.ndarray          # (N,) int64
    mean: np.ndarray            # (C,) on the [0, 1] scale
    std: np.ndarray             # (C,)
    source: str

    def __len__(self) -> int:
        return len(self.labels)

    def normalized(self, index=slice(None)) -> np.ndarray:
        """Float32 network input for the selected images."""
        x = self.images[index]
        x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
        return (x - self.mean) / self.std

    def batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(self), batch_size):
            sl = slice(start, start + batch_size)
            yield self.normalized(sl), self.labels[sl]

    def subset(self, index) -> "Dataset":
        return Dataset(self.name, self.images[index], self.labels[index], self.mean, self.std,
                       self.source)


def _as_channel_array(values, channels: int, what: str, source: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float32).reshape(-1)
    if arr.size == 1:
        arr = np.repeat(arr, channels)
    if arr.size != channels:
        raise DataError(f"{source}: normalization {what} has {arr.size} values, the images have "
                        f"{channels} channels")
    return arr


def load_digits_split(split: str, mean=(0.0,), std=(1.0,)) -> Dataset:
    """scikit-learn's 8x8 digits (1797 images, 0..16 scaled to [0, 1]) with a fixed stratified
    80/20 train/test split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[..., None]
    labels = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=DIGITS_TEST_FRACTION, random_state=DIGITS_SPLIT_SEED,
        stratify=labels)
    x, y = (x_train, y_train) if split == "train" else (x_test, y_test)
    source = f"sklearn digits ({split} split)"
    return Dataset("digits", x, y, _as_channel_array(mean, 1, "mean", source),
                   _as_channel_array(std, 1, "std", source), source)


def load_cifar10(path: Path, split: str, mean, std) -> Dataset:
    """CIFAR-10 from an .npz (keys x: uint8 NHWC, y), a cifar-10-batches-py folder, or a .tar.gz."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such dataset file")
    if path.is_dir():
        x, y = _cifar_from_folder(path, split)
    elif path.name.endswith((".tar.gz", ".tgz")):
        x, y = _cifar_from_tar(path, split)
    else:
        x, y = _cifar_from_npz(path)
    if x.ndim != 4 or x.shape[1:] != (32, 32, 3) or len(x) != len(y):
        raise DataError(f"{path}: expected images of shape (N, 32, 32, 3) and N labels, got "
                        f"{x.shape} and {y.shape}")
    if y.size and (y.min() < 0 or y.max() > 9):
        raise DataError(f"{path}: labels must be 0..9, got {y.min()}..{y.max()}")
    source = str(path)
    return Dataset("cifar10", x, y.astype(np.int64), _as_channel_array(mean, 3, "mean", source),
                   _as_channel_array(std, 3, "std", source), source)


def _cifar_from_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            if "x" not in data or "y" not in data:
                raise DataError(f"{path}: expected arrays 'x' (uint8 NHWC) and 'y', found "
                                f"{', '.join(data.files) or 'none'}")
            x, y = data["x"], data["y"]
    except DataError:
        raise
    except Exception as exc:  # zipfile/ValueError on a corrupt archive
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None
    if x.dtype != np.uint8:
        raise DataError(f"{path}: 'x' must be uint8 pixels, got {x.dtype}")
    return x, np.asarray(y)


def _batch_names(split: str) -> list[str]:
    return ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]


def _decode_batch(raw: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        entry = pickle.loads(raw, encoding="bytes")
        data = np.asarray(entry[b"data"], dtype=np.uint8)
        labels = np.asarray(entry[b"labels"], dtype=np.int64)
    except Exception as exc:
        raise DataError(f"{name}: not a CIFAR-10 python batch ({exc})") from None
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _cifar_from_folder(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for name in _batch_names(split):
        f = folder / name
        if not f.exists():
            raise DataError(f"{folder}: missing {name} (expected the cifar-10-batches-py layout)")
        x, y = _decode_batch(f.read_bytes(), str(f))
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def _cifar_from_tar(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            xs, ys = [], []
            for name in _batch_names(split):
                if name not in members:
                    raise DataError(f"{path}: archive has no {name}")
                raw = tar.extractfile(members[name]).read()
                x, y = _decode_batch(raw, f"{path}:{name}")
                xs.append(x)
                ys.append(y)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .tar.gz ({exc})") from None
    return np.concatenate(xs), np.concatenate(ys)


def write_cifar_batch(images: np.ndarray, labels: np.ndarray) -> bytes:
    """A CIFAR-10 python batch as bytes (used by the tests to build the folder/tar layouts)."""
    data = np.asarray(images, np.uint8).transpose(0, 3, 1, 2).reshape(len(images), -1)
    buf = io.BytesIO()
    pickle.dump({b"data": data, b"labels": [int(v) for v in labels]}, buf)
    return buf.getvalue()
