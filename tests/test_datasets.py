"""archsim.datasets: digits, CIFAR-10 from .npz / python-batch folder / .tar.gz, and DataErrors."""

import tarfile

import numpy as np
import pytest

from archsim.datasets import load_cifar10, load_digits_split, write_cifar_batch
from archsim.errors import DataError

from conftest import shared_file

MEAN, STD = (0.5, 0.25, 0.125), (0.5, 0.5, 0.25)


def fake_cifar(n, seed):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
            rng.integers(0, 10, n).astype(np.int64))


def write_folder(folder, train_sizes=(3, 2, 2, 2, 1), test_size=4):
    folder.mkdir(parents=True, exist_ok=True)
    parts = []
    for i, n in enumerate(train_sizes, start=1):
        x, y = fake_cifar(n, i)
        (folder / f"data_batch_{i}").write_bytes(write_cifar_batch(x, y))
        parts.append((x, y))
    xt, yt = fake_cifar(test_size, 99)
    (folder / "test_batch").write_bytes(write_cifar_batch(xt, yt))
    return parts, (xt, yt)


def test_digits_split_is_fixed_and_normalized():
    train, test = load_digits_split("train"), load_digits_split("test", (0.3,), (0.4,))
    assert len(train) + len(test) == 1797 and len(test) == 360
    assert test.images.shape[1:] == (8, 8, 1) and test.images.max() <= 1.0
    np.testing.assert_allclose(test.normalized(slice(0, 5)), (test.images[:5] - 0.3) / 0.4, rtol=1e-6)
    np.testing.assert_array_equal(load_digits_split("test").labels, test.labels)
    assert np.bincount(test.labels).min() >= 35                     # stratified


def test_cifar_npz(tmp_path):
    x, y = fake_cifar(6, 0)
    path = tmp_path / "c.npz"
    np.savez(path, x=x, y=y)
    ds = load_cifar10(path, "test", MEAN, STD)
    np.testing.assert_array_equal(ds.images, x)
    np.testing.assert_array_equal(ds.labels, y)
    ref = (x[:2].astype(np.float32) / 255 - np.float32(MEAN)) / np.float32(STD)
    np.testing.assert_allclose(ds.normalized(slice(0, 2)), ref, rtol=1e-6)
    batches = list(ds.batches(4))
    assert [len(b[1]) for b in batches] == [4, 2] and batches[0][0].dtype == np.float32
    sub = ds.subset([1, 3])
    np.testing.assert_array_equal(sub.labels, y[[1, 3]])


def test_cifar_python_batch_folder(tmp_path):
    parts, (xt, yt) = write_folder(tmp_path / "cifar-10-batches-py")
    train = load_cifar10(tmp_path / "cifar-10-batches-py", "train", MEAN, STD)
    np.testing.assert_array_equal(train.images, np.concatenate([p[0] for p in parts]))
    np.testing.assert_array_equal(train.labels, np.concatenate([p[1] for p in parts]))
    test = load_cifar10(tmp_path / "cifar-10-batches-py", "test", MEAN, STD)
    np.testing.assert_array_equal(test.images, xt)
    np.testing.assert_array_equal(test.labels, yt)


def test_cifar_tar_gz(tmp_path):
    parts, (xt, yt) = write_folder(tmp_path / "cifar-10-batches-py")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    test = load_cifar10(archive, "test", MEAN, STD)
    np.testing.assert_array_equal(test.images, xt)
    np.testing.assert_array_equal(test.labels, yt)
    train = load_cifar10(archive, "train", MEAN, STD)
    assert len(train) == 10
    np.testing.assert_array_equal(train.images[:3], parts[0][0])


def test_missing_files(tmp_path):
    with pytest.raises(DataError, match="no such dataset file"):
        load_cifar10(tmp_path / "nope.npz", "test", MEAN, STD)
    folder = tmp_path / "partial"
    write_folder(folder)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="missing data_batch_3"):
        load_cifar10(folder, "train", MEAN, STD)
    archive = tmp_path / "only_test.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder / "test_batch", arcname="test_batch")
    with pytest.raises(DataError, match="archive has no data_batch_1"):
        load_cifar10(archive, "train", MEAN, STD)


def test_corrupt_files(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"this is not a zip archive")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_cifar10(bad, "test", MEAN, STD)
    bad_tar = tmp_path / "bad.tar.gz"
    bad_tar.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DataError, match="not a readable .tar.gz"):
        load_cifar10(bad_tar, "test", MEAN, STD)
    folder = tmp_path / "f"
    write_folder(folder)
    (folder / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="not a CIFAR-10 python batch"):
        load_cifar10(folder, "test", MEAN, STD)


def test_wrong_keys_and_contents(tmp_path):
    x, y = fake_cifar(4, 1)
    path = tmp_path / "keys.npz"
    np.savez(path, images=x, labels=y)
    with pytest.raises(DataError, match="expected arrays 'x'"):
        load_cifar10(path, "test", MEAN, STD)
    np.savez(path, x=x.astype(np.float32), y=y)
    with pytest.raises(DataError, match="uint8"):
        load_cifar10(path, "test", MEAN, STD)
    np.savez(path, x=x[:, :16], y=y)
    with pytest.raises(DataError, match=r"\(N, 32, 32, 3\)"):
        load_cifar10(path, "test", MEAN, STD)
    np.savez(path, x=x, y=y + 10)
    with pytest.raises(DataError, match="labels must be 0..9"):
        load_cifar10(path, "test", MEAN, STD)
    np.savez(path, x=x, y=y)
    with pytest.raises(DataError, match="normalization mean has 2 values"):
        load_cifar10(path, "test", (0.1, 0.2), STD)


@pytest.mark.shared_data
def test_shared_cifar_test_file():
    ds = load_cifar10(shared_file("cifar10_test.npz"), "test", MEAN, STD)
    assert len(ds) == 10000 and np.bincount(ds.labels).tolist() == [1000] * 10
