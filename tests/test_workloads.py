"""Workloads: workload YAML, weights files, the data look-up order, and the FP32 reference accuracy
of the pretrained ResNet-32 on the shared CIFAR-10 files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from archsim.datasets import load_cifar10
from archsim.errors import ConfigError, DataError, WorkloadError
from archsim.network import forward, init_params, predict, resnet_cifar
from archsim.workloads import (find_data_file, load_weights, load_workload, save_weights,
                               user_cache_dir)

from conftest import shared_file

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = "resnet32_cifar10_akamaster.npz"


# ------------------------------------------------------------------------------------------
# Workload files
# ------------------------------------------------------------------------------------------

def test_resnet32_workload():
    wl = load_workload("resnet32_cifar10")
    assert wl.name == "resnet32_cifar10"
    assert wl.network.name == "resnet32_cifar10"
    assert wl.network.total_macs() == 68_862_592
    assert wl.spec.weights == "resnet32_cifar10_akamaster.npz"
    ds = wl.spec.dataset
    assert (ds.name, ds.test, ds.train) == ("cifar10", "cifar10_test.npz", "cifar10_train_jpeg.npz")
    assert ds.mean == (0.485, 0.456, 0.406) and ds.std == (0.229, 0.224, 0.225)
    assert Path(wl.file).name == "resnet32_cifar10.yaml"
    assert load_workload("workloads/resnet32_cifar10.yaml").spec == wl.spec
    assert load_workload(REPO / "workloads" / "resnet32_cifar10.yaml").spec == wl.spec


def test_default_workload_is_digits_cnn():
    wl = load_workload()
    assert wl.name == "digits_cnn" and wl.network.input_shape == (8, 8, 1)
    assert wl.spec.dataset.name == "digits"
    assert (wl.spec.dataset.mean, wl.spec.dataset.std) == ((0.3,), (0.4,))


def test_unknown_workload():
    with pytest.raises(ConfigError) as e:
        load_workload("resnet33")
    assert e.value.file == "resnet33" and "no such workload file" in e.value.message
    assert "resnet32_cifar10" in e.value.message


def test_workload_yaml_errors(tmp_path):
    p = tmp_path / "w.yaml"
    p.write_text("workload:\n  netwrok: digits_cnn\n")
    with pytest.raises(ConfigError) as e:
        load_workload(p)
    assert (e.value.file, e.value.yaml_path, e.value.line) == (str(p), "workload.netwrok", 2)
    assert "did you mean 'network'?" in e.value.message
    p.write_text("workload:\n  network: vgg16\n")
    with pytest.raises(ConfigError) as e:
        load_workload(p)
    assert e.value.yaml_path == "workload.network" and "got 'vgg16'" in e.value.message
    p.write_text("workload:\n  dataset:\n    std: [0.2, 0]\n")
    with pytest.raises(ConfigError) as e:
        load_workload(p)
    assert e.value.yaml_path == "workload.dataset.std[1]"
    assert "expected a value > 0" in e.value.message


def test_missing_dataset_file_name(tmp_path):
    p = tmp_path / "w.yaml"
    p.write_text("workload:\n  network: resnet32_cifar10\n  dataset:\n    name: cifar10\n")
    with pytest.raises(ConfigError) as e:
        load_workload(p).dataset("train")
    assert e.value.yaml_path == "workload.dataset.train"
    with pytest.raises(WorkloadError, match="no weights file given"):
        load_workload(p).load_params()


# ------------------------------------------------------------------------------------------
# Weights files
# ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def net_and_params():
    net = resnet_cifar(20)
    return net, init_params(net, np.random.default_rng(0))


def test_weights_round_trip(tmp_path, net_and_params):
    net, params = net_and_params
    path = tmp_path / "sub" / "w.npz"
    save_weights(params, path)
    assert [p.name for p in path.parent.iterdir()] == ["w.npz"]    # no temporary file left
    loaded = load_weights(net, path)
    assert loaded.keys() == params.keys()
    assert all(np.array_equal(loaded[k], params[k]) for k in params)


def test_weights_missing_parameter(tmp_path, net_and_params):
    net, params = net_and_params
    path = tmp_path / "w.npz"
    np.savez(path, **{k: v for k, v in params.items() if k != "layer3.2.conv2.weight"})
    with pytest.raises(WorkloadError) as e:
        load_weights(net, path)
    msg = str(e.value)
    assert str(path) in msg and "'layer3.2.conv2.weight'" in msg and "(64, 64, 3, 3)" in msg


def test_weights_wrong_shape(tmp_path, net_and_params):
    net, params = net_and_params
    path = tmp_path / "w.npz"
    np.savez(path, **dict(params, **{"layer1.0.bn1.weight": np.ones(32, np.float32)}))
    with pytest.raises(WorkloadError) as e:
        load_weights(net, path)
    msg = str(e.value)
    assert str(path) in msg and "'layer1.0.bn1.weight'" in msg
    assert "(32,)" in msg and "(16,)" in msg


def test_weights_missing_or_corrupt_file(tmp_path, net_and_params):
    net, params = net_and_params
    with pytest.raises(DataError, match="no such weights file"):
        load_weights(net, tmp_path / "absent.npz")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a zip archive at all" * 10)
    with pytest.raises(DataError, match="not a readable .npz"):
        load_weights(net, garbage)
    good = tmp_path / "good.npz"
    save_weights(params, good)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DataError) as e:
        load_weights(net, truncated)
    assert str(truncated) in str(e.value)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, **dict(params, extra=np.array([{"a": 1}], dtype=object)))
    with pytest.raises(DataError):
        load_weights(net, pickled)      # object arrays need pickle, which is never allowed


def test_workload_load_params_through_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("ARCHSIM_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    wl = load_workload("resnet32_cifar10", data_dir=tmp_path / "data")
    with pytest.raises(DataError) as e:
        wl.load_params()
    assert "resnet32_cifar10_akamaster.npz" in str(e.value) and "--data" in str(e.value)
    params = init_params(wl.network, np.random.default_rng(1))
    save_weights(params, tmp_path / "data" / "resnet32_cifar10_akamaster.npz")
    loaded = wl.load_params()
    assert np.array_equal(loaded["linear.weight"], params["linear.weight"])


# ------------------------------------------------------------------------------------------
# Data look-up order: --data DIR, $ARCHSIM_DATA, the per-user cache
# ------------------------------------------------------------------------------------------

@pytest.fixture
def three_folders(tmp_path, monkeypatch):
    folders = {k: tmp_path / k for k in ("data", "env", "xdg")}
    cache = folders["xdg"] / "archsim"
    for f in (folders["data"], folders["env"], cache):
        f.mkdir(parents=True)
        (f / "x.npz").write_text(f.name)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setenv("ARCHSIM_DATA", str(folders["env"]))
    monkeypatch.setenv("XDG_CACHE_HOME", str(folders["xdg"]))
    return folders["data"], folders["env"], cache


def test_user_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert user_cache_dir() == tmp_path / "archsim"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert user_cache_dir() == tmp_path / "home" / ".cache" / "archsim"


def test_lookup_order(three_folders, monkeypatch):
    data, env, cache = three_folders
    assert find_data_file("x.npz", data) == data / "x.npz"
    assert find_data_file("x.npz", str(data)) == data / "x.npz"
    assert find_data_file("x.npz") == env / "x.npz"             # no --data: $ARCHSIM_DATA
    (data / "x.npz").unlink()
    assert find_data_file("x.npz", data) == env / "x.npz"       # not in --data: $ARCHSIM_DATA
    (env / "x.npz").unlink()
    assert find_data_file("x.npz", data) == cache / "x.npz"     # then the per-user cache
    monkeypatch.delenv("ARCHSIM_DATA")
    assert find_data_file("x.npz") == cache / "x.npz"
    (cache / "x.npz").unlink()
    with pytest.raises(DataError) as e:
        find_data_file("x.npz", data)
    msg = str(e.value)
    assert msg.startswith("x.npz: data file not found")
    assert str(data) in msg and str(cache) in msg and "ARCHSIM_DATA" in msg


def test_lookup_working_directory_and_absolute_paths(three_folders, tmp_path):
    data, env, _ = three_folders
    Path("x.npz").write_text("cwd")                  # a name that exists as given wins
    assert find_data_file("x.npz", data) == Path("x.npz")
    assert find_data_file(str(env / "x.npz"), data) == env / "x.npz"
    with pytest.raises(DataError):
        find_data_file(str(tmp_path / "nowhere" / "x.npz"), data)


def test_lookup_beside_the_workload_last(three_folders):
    data, env, cache = three_folders
    beside = data.parent / "beside"
    beside.mkdir()
    (beside / "y.npz").write_text("beside")
    (env / "y.npz").write_text("env")
    assert find_data_file("y.npz", data, beside) == env / "y.npz"
    (env / "y.npz").unlink()
    assert find_data_file("y.npz", data, beside) == beside / "y.npz"


# ------------------------------------------------------------------------------------------
# The pretrained ResNet-32 on the shared data
# ------------------------------------------------------------------------------------------

@pytest.mark.shared_data
def test_shared_weights_match_the_network():
    path = shared_file(WEIGHTS)
    net = resnet_cifar(32)
    with np.load(path) as raw:
        assert set(raw.files) == set(net.param_shapes())
    params = load_weights(net, path)
    assert sum(v.size for k, v in params.items()
               if not k.endswith(("running_mean", "running_var"))) == 464_154


@pytest.mark.shared_data
def test_resnet32_lossless_training_images_are_all_right():
    """The first 256 lossless training images: 100% (README: 4000/4000)."""
    subset = shared_file("cifar10_train_subset.npz")
    wl = load_workload("resnet32_cifar10", data_dir=shared_file(WEIGHTS).parent)
    params = wl.load_params()
    spec = wl.spec.dataset
    ds = load_cifar10(subset, "train", spec.mean, spec.std)
    assert len(ds) == 4000
    assert ds.labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    pred = predict(wl.network, params, ds.normalized(slice(0, 256)), batch_size=128)
    assert int((pred == ds.labels[:256]).sum()) == 256
    # and the normalization matters: raw [0, 1] pixels do clearly worse
    raw = ds.images[:100].astype(np.float32) / 255.0
    assert (np.argmax(forward(wl.network, params, raw), 1) == ds.labels[:100]).sum() < 95


@pytest.mark.slow
@pytest.mark.shared_data
@pytest.mark.parametrize("workload, expected", [("resnet32_cifar10", 8256),
                                                ("resnet32_cifar10_noise", 8928)])
def test_resnet32_fp32_accuracy_on_jpeg_test_set(workload, expected):
    """The FP32 references: exactly 8256 of 10000 for the akamaster weights (82.56%, README
    section 4), 8928 (89.28%, the last epoch of reports/noise_finetune_resnet32.md) for the
    noise-trained ones. Takes 1-2 minutes each."""
    shared_file("cifar10_test.npz")
    wl = load_workload(workload, data_dir=shared_file(WEIGHTS).parent)
    params = wl.load_params()
    ds = wl.dataset("test")
    assert len(ds) == 10_000
    correct = sum(int((predict(wl.network, params, x, batch_size=500) == y).sum())
                  for x, y in ds.batches(2000))
    assert correct == expected


def test_noise_trained_resnet32_workload(monkeypatch, tmp_path):
    """Shipped by name, the akamaster license in its comment, weights looked up beside it (the
    last place of the look-up order, so an empty $ARCHSIM_DATA does not hide them)."""
    wl = load_workload("resnet32_cifar10_noise")
    base = load_workload("resnet32_cifar10")
    assert (wl.name, wl.spec.network, wl.spec.weights) == (
        "resnet32_cifar10_noise", "resnet32_cifar10", "resnet32_cifar10_noise.npz")
    assert wl.spec.dataset == base.spec.dataset
    text = Path(wl.file).read_text()
    assert "Copyright (c) 2018, Yerlan Idelbayev" in text and "DISCLAIMED" in text
    shipped = Path(wl.file).parent / wl.spec.weights
    if not shipped.exists():
        pytest.skip("workloads/resnet32_cifar10_noise.npz is made by "
                    "benchmarks/noise_finetune_resnet32.py --ship")
    monkeypatch.setenv("ARCHSIM_DATA", str(tmp_path))
    assert wl.find(wl.spec.weights) == shipped
    params = wl.load_params()
    assert params["layer3.4.conv2.weight"].shape == (64, 64, 3, 3)
