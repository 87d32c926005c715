"""Datasets: the scikit-learn digits (embedded, no download) and CIFAR-10 from an ``.npz`` (as in
``shared/data``), the standard ``cifar-10-batches-py`` folder, or its ``.tar.gz``.

Images are kept as stored (uint8 for CIFAR-10) and normalized batch by batch, so a 50,000-image
training set costs 150 MB, not 600 MB of float32. Normalization is the workload's: pixels scaled to
[0, 1], then ``(x - mean) / std`` per channel.
"""

from __future__ import annotations

import dataclasses
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

    def with_images(self, images: np.ndarray) -> "Dataset":
        """The same labels and normalization over other images (e.g. augmented ones)."""
        return dataclasses.replace(self, images=images)

    def subset(self, index) -> "Dataset":
        return Dataset(self.name, self.images[index], self.labels[index], self.mean, self.std,
                       self.source)


CROP_PADDING = 4             # CIFAR augmentation: random 32x32 crop of the 4-pixel zero-padded image


def augment_cifar(images: np.ndarray, rng: np.random.Generator,
                  padding: int = CROP_PADDING) -> np.ndarray:
    """Random crop of the zero-padded images and random horizontal flip, per image (NHWC, any
    dtype; padding is black, as torchvision pads the raw image before normalizing)."""
    n, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    oy = rng.integers(0, 2 * padding + 1, n)
    ox = rng.integers(0, 2 * padding + 1, n)
    flip = rng.random(n) < 0.5
    rows = oy[:, None] + np.arange(h)
    cols_fwd = np.arange(w)
    cols = ox[:, None] + np.where(flip[:, None], cols_fwd[::-1], cols_fwd)
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def read_npz(path: str | Path, what: str = "file") -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` archive, read eagerly, without pickle. Anything else (a missing
    file, random bytes, a single ``.npy`` array, a truncated or corrupt archive, pickled objects)
    is a :class:`DataError` naming the file and what is wrong."""
    path = Path(path)
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise DataError(f"{path}: a folder, expected a .npz {what}") from None
    except ValueError as exc:
        if "pickle" in str(exc):     # numpy's fallback for anything that is neither zip nor .npy
            raise DataError(f"{path}: not a readable .npz {what} (no zip header)") from None
        raise DataError(f"{path}: not a readable .npz {what} ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - whatever numpy/zipfile raise on foreign bytes
        raise DataError(f"{path}: not a readable .npz {what} ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: a single .npy array, expected a .npz archive of named arrays")
    try:
        with data:
            arrays = {name: data[name] for name in data.files}
    except ValueError as exc:
        if "pickle" in str(exc):
            raise DataError(f"{path}: holds pickled Python objects, which archsim never loads "
                            "(expected plain numeric arrays)") from None
        raise DataError(f"{path}: corrupt .npz {what} ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - BadZipFile, zlib.error, EOFError, CRC errors...
        raise DataError(f"{path}: corrupt .npz {what} ({type(exc).__name__}: {exc})") from None
    for name, value in arrays.items():
        if not isinstance(value, np.ndarray):      # a zip member that is not a .npy file
            raise DataError(f"{path}: member {name!r} is not a numpy array; not a .npz {what}")
    return arrays


def class_labels(labels, source: str) -> np.ndarray:
    """Labels as int64 class indices: a 1-D array of integers (integral floats accepted); one-hot
    or fractional labels are a :class:`DataError` (they used to be silently truncated)."""
    y = np.asarray(labels)
    if y.ndim != 1:
        hint = " (one-hot labels? store their argmax)" if y.ndim == 2 else ""
        raise DataError(f"{source}: labels must be a 1-D array of class indices, got shape "
                        f"{y.shape}{hint}")
    if y.dtype.kind in "iu":
        return y.astype(np.int64)
    if y.dtype.kind == "f":
        bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"{source}: labels must be integer class indices, got {y[i].item()!r} at "
                            f"index {i}")
        return y.astype(np.int64)
    raise DataError(f"{source}: labels must be integer class indices, got dtype {y.dtype}")


def check_dataset(ds: "Dataset", input_shape, num_classes: int, network: str) -> "Dataset":
    """A dataset fits a network: at least one image, images of the network's input shape (H, W, C)
    with finite pixels, labels in 0 .. num_classes - 1. Returns ``ds``."""
    if len(ds) == 0:
        raise DataError(f"{ds.source}: no images")
    shape = tuple(ds.images.shape[1:])
    if shape != tuple(input_shape):
        raise DataError(f"{ds.source}: images of shape {shape} (H, W, C), network {network} "
                        f"expects {tuple(input_shape)}")
    if ds.images.dtype.kind == "f" and not np.isfinite(ds.images).all():
        raise DataError(f"{ds.source}: images hold NaN or infinite pixels")
    lo, hi = int(ds.labels.min()), int(ds.labels.max())
    if lo < 0 or hi >= num_classes:
        raise DataError(f"{ds.source}: labels {lo}..{hi}, network {network} has {num_classes} "
                        f"classes (0..{num_classes - 1})")
    return ds


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
    try:
        present = path.exists()
    except (OSError, ValueError):
        present = False
    if not present:
        raise DataError(f"{path}: no such dataset file")
    if path.is_dir():
        x, y = _cifar_from_folder(path, split)
    elif path.name.endswith((".tar.gz", ".tgz")):
        x, y = _cifar_from_tar(path, split)
    else:
        x, y = _cifar_from_npz(path)
    y = class_labels(y, str(path))
    if x.ndim != 4 or x.shape[1:] != (32, 32, 3) or len(x) != len(y):
        raise DataError(f"{path}: expected images of shape (N, 32, 32, 3) and N labels, got "
                        f"{x.shape} and {y.shape}")
    if y.size and (y.min() < 0 or y.max() > 9):
        raise DataError(f"{path}: labels must be 0..9, got {y.min()}..{y.max()}")
    source = str(path)
    return Dataset("cifar10", x, y, _as_channel_array(mean, 3, "mean", source),
                   _as_channel_array(std, 3, "std", source), source)


def _cifar_from_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    data = read_npz(path, "dataset file")
    if "x" not in data or "y" not in data:
        raise DataError(f"{path}: expected arrays 'x' (uint8 NHWC) and 'y', found "
                        f"{', '.join(data) or 'none'}")
    x, y = data["x"], data["y"]
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
