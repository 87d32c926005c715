"""Workloads: a workload YAML names a network (built in, or an ONNX model file), its weights file and
its dataset with the input normalization the weights expect. An ONNX model brings its weights (the
initializers), so ``weights:`` is optional for it; an ``.onnx`` file given where a workload is
expected is a workload of its own, without a dataset unless one is named (``--dataset``).

Data files are looked up, in order, as given (absolute or relative to the working directory), in
``--data DIR``, in ``$ARCHSIM_DATA``, in the per-user cache folder (``$XDG_CACHE_HOME/archsim`` or
``~/.cache/archsim``), and beside the workload file (shipped weights).
"""

from __future__ import annotations

import dataclasses
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import config as cfg
from .atomic import write_file
from .datasets import Dataset, check_dataset, load_cifar10, load_digits_split, read_npz
from .errors import ConfigError, DataError, WorkloadError
from .network import BUILTIN_NETWORKS, Network

SHIPPED_WORKLOADS = ("digits_cnn", "resnet32_cifar10", "resnet32_cifar10_noise")
DEFAULT_WORKLOAD = "digits_cnn"
# --dataset NAME: the dataset section (files, normalization) of the shipped workload using it
DATASET_WORKLOADS = {"digits": "digits_cnn", "cifar10": "resnet32_cifar10"}


@dataclass(frozen=True)
class DatasetSpec:
    name: str = cfg.spec("digits", choices=("digits", "cifar10"))
    test: str | None = cfg.spec(None, doc="test images file (cifar10)")
    train: str | None = cfg.spec(None, doc="training images file: calibration (AdaBS) and training")
    mean: tuple[float, ...] = cfg.spec((0.0,), doc="per channel, on pixels scaled to [0, 1]")
    std: tuple[float, ...] = cfg.spec((1.0,), lo=0, lo_open=True)


@dataclass(frozen=True)
class WorkloadSpec:
    name: str = cfg.spec("workload")
    network: str = cfg.spec("digits_cnn", doc="a built-in network "
                            f"({' | '.join(BUILTIN_NETWORKS)}) or an .onnx model file",
                            required=True)
    weights: str | None = cfg.spec(None, doc=".npz of float32 arrays with PyTorch names (an .onnx "
                                             "network brings its own)")
    dataset: DatasetSpec = cfg.spec(factory=DatasetSpec)


@dataclass(frozen=True)
class WorkloadFile:
    workload: WorkloadSpec = cfg.spec(factory=WorkloadSpec, required=True)


@dataclass(frozen=True)
class Workload:
    spec: WorkloadSpec              # spec.dataset is None for an .onnx file given alone
    network: Network
    file: str
    data_dir: str | None = field(default=None, compare=False)
    params: dict | None = field(default=None, compare=False, repr=False)   # an ONNX model's own

    @property
    def name(self) -> str:
        return self.spec.name

    def find(self, name: str) -> Path:
        return find_data_file(name, self.data_dir, Path(self.file).parent)

    def load_params(self, path: str | Path | None = None) -> dict[str, np.ndarray]:
        """The network's weights: from ``path`` (.npz, or an .onnx model's initializers), else the
        workload's weights file, else the ONNX model's initializers."""
        if path is None and self.spec.weights is not None:
            path = self.find(self.spec.weights)
        if path is not None and is_onnx(path):
            from .onnx_import import import_onnx
            return check_weight_values(self.network.check_params(import_onnx(path)[1], str(path)),
                                       str(path))
        if path is not None:
            return load_weights(self.network, Path(path))
        if self.params is not None:
            return check_weight_values(dict(self.params), self.file)
        raise WorkloadError(f"{self.file}: workload.weights: no weights file given")

    def dataset(self, split: str = "test") -> Dataset:
        """The test or training images, checked against the network (input shape, classes)."""
        ds = self.spec.dataset
        if ds is None:
            raise WorkloadError(f"{self.file}: accuracy needs a dataset: give --dataset "
                                f"{' | '.join(DATASET_WORKLOADS)} | WORKLOAD.yaml, or a workload "
                                f"YAML with network: {Path(self.file).name}, or --no-accuracy")
        if ds.name == "digits":
            data = load_digits_split(split, ds.mean, ds.std)
        else:
            name = ds.test if split == "test" else ds.train
            if name is None:
                raise ConfigError(self.file, f"workload.dataset.{split}", "no file given for the "
                                  f"{split} images")
            data = load_cifar10(self.find(name), split, ds.mean, ds.std)
        return check_dataset(data, self.network.input_shape, self.network.num_classes,
                             self.network.name)


def user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "archsim"


def find_data_file(name: str, data_dir: str | Path | None = None,
                   beside: Path | None = None) -> Path:
    """Resolve a data file name through the search order in the module docstring."""
    candidates = [Path(name)]
    if not Path(name).is_absolute():
        for folder in (data_dir, os.environ.get("ARCHSIM_DATA"), user_cache_dir(), beside):
            if folder:
                candidates.append(Path(folder) / name)
    for path in candidates:
        if cfg.path_exists(path):
            return path
    looked = ", ".join(str(p.parent) for p in candidates[1:]) or "(no folders)"
    raise DataError(f"{name}: data file not found (looked in the working directory and {looked}; "
                    "use --data DIR or set ARCHSIM_DATA)")


def load_weights(network: Network, path: Path) -> dict[str, np.ndarray]:
    """The network's parameters from an ``.npz``: names and shapes checked by the network, values
    here (numbers only, finite within float32's range, BatchNorm variances >= 0)."""
    raw = read_npz(path, "weights file")
    for name, value in raw.items():
        if value.dtype.kind not in "fiu":
            raise DataError(f"{path}: array {name!r} has dtype {value.dtype}, expected numbers")
    return check_weight_values(network.check_params(check_weight_values(raw, str(path)), str(path)),
                               str(path))


FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_weight_values(params: dict[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    """NaN or infinite values, values beyond float32's range (they would become infinite) and
    negative BatchNorm variances are a :class:`DataError` naming the parameter; they used to run
    at chance accuracy with warnings. Returns ``params``."""
    for name, value in params.items():
        if value.dtype.kind != "f" or not value.size:
            continue
        finite = np.isfinite(value)
        if not finite.all():
            bad = value.size - int(np.count_nonzero(finite))
            raise DataError(f"{source}: parameter {name!r} has {bad} NaN or infinite value"
                            f"{'s' if bad != 1 else ''}")
        largest = float(np.abs(value).max())
        if largest > FLOAT32_MAX:
            raise DataError(f"{source}: parameter {name!r} has values beyond the float32 range "
                            f"(|w| up to {largest:.3g})")
        if name.endswith("running_var") and value.min() < 0:
            raise DataError(f"{source}: parameter {name!r} is a variance but has negative values "
                            f"(min {float(value.min()):g})")
    return params


def save_weights(params: dict[str, np.ndarray], path: str | Path) -> None:
    """Write weights (.npz of float32 arrays) atomically."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v, np.float32) for k, v in params.items()})
    write_file(path, buf.getvalue(), "weights file")


def resolve_workload_path(name_or_path: str | Path | None) -> Path:
    return cfg.resolve_shipped(DEFAULT_WORKLOAD if name_or_path is None else name_or_path,
                               "archsim.workload_files", "workloads", SHIPPED_WORKLOADS,
                               "workload file")


def is_onnx(name: str | Path | None) -> bool:
    return name is not None and str(name).lower().endswith(".onnx")


def dataset_spec(name: str, data_dir: str | Path | None = None) -> DatasetSpec:
    """``--dataset NAME``: the dataset section of the shipped workload for ``digits`` or
    ``cifar10``, or of the given workload YAML (file or shipped name)."""
    target = DATASET_WORKLOADS.get(name, name)
    try:
        path = resolve_workload_path(target)
    except ConfigError:
        raise ConfigError("--dataset", "", f"{name!r}: expected {' | '.join(DATASET_WORKLOADS)} "
                          "or a workload YAML") from None
    return cfg.parse_file(WorkloadFile, path).workload.dataset


def load_workload(name_or_path: str | Path | None = None, data_dir: str | Path | None = None,
                  dataset: str | None = None) -> Workload:
    """A workload YAML (file or shipped name) or an ONNX model file; ``dataset`` replaces its
    dataset (see :func:`dataset_spec`)."""
    data_dir = None if data_dir is None else str(data_dir)
    override = None if dataset is None else dataset_spec(dataset, data_dir)
    if is_onnx(name_or_path):
        from .onnx_import import import_onnx
        path = find_data_file(str(name_or_path), data_dir)
        network, params = import_onnx(path)
        spec = WorkloadSpec(name=network.name, network=Path(path).name, weights=None,
                            dataset=override)
        return Workload(spec, network, str(path), data_dir, params)
    path = resolve_workload_path(name_or_path)
    spec = cfg.parse_file(WorkloadFile, path).workload
    if override is not None:
        spec = dataclasses.replace(spec, dataset=override)
    params = None
    if is_onnx(spec.network):
        from .onnx_import import import_onnx
        network, params = import_onnx(find_data_file(spec.network, data_dir, path.parent))
    elif spec.network in BUILTIN_NETWORKS:
        network = BUILTIN_NETWORKS[spec.network]()
    else:
        raise ConfigError(str(path), "workload.network", f"expected one of "
                          f"{' | '.join(BUILTIN_NETWORKS)} or an .onnx file, got {spec.network!r}")
    return Workload(spec, network, str(path), data_dir, params)
