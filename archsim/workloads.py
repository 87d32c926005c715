"""Workloads: a workload YAML names a network (built in), its weights file and its dataset with the
input normalization the weights expect.

Data files are looked up, in order, as given (absolute or relative to the working directory), in
``--data DIR``, in ``$ARCHSIM_DATA``, in the per-user cache folder (``$XDG_CACHE_HOME/archsim`` or
``~/.cache/archsim``), and beside the workload file (shipped weights).
"""

from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import config as cfg
from .atomic import atomic_write_bytes
from .datasets import Dataset, load_cifar10, load_digits_split
from .errors import ConfigError, DataError, WorkloadError
from .network import BUILTIN_NETWORKS, Network

SHIPPED_WORKLOADS = ("digits_cnn", "resnet32_cifar10")
DEFAULT_WORKLOAD = "digits_cnn"


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
    network: str = cfg.spec("digits_cnn", choices=tuple(BUILTIN_NETWORKS))
    weights: str | None = cfg.spec(None, doc=".npz of float32 arrays with PyTorch names")
    dataset: DatasetSpec = cfg.spec(factory=DatasetSpec)


@dataclass(frozen=True)
class WorkloadFile:
    workload: WorkloadSpec = cfg.spec(factory=WorkloadSpec)


@dataclass(frozen=True)
class Workload:
    spec: WorkloadSpec
    network: Network
    file: str
    data_dir: str | None = field(default=None, compare=False)

    @property
    def name(self) -> str:
        return self.spec.name

    def find(self, name: str) -> Path:
        return find_data_file(name, self.data_dir, Path(self.file).parent)

    def load_params(self, path: str | Path | None = None) -> dict[str, np.ndarray]:
        """The network's weights (from ``path``, else the workload's weights file)."""
        if path is None:
            if self.spec.weights is None:
                raise WorkloadError(f"{self.file}: workload.weights: no weights file given")
            path = self.find(self.spec.weights)
        return load_weights(self.network, Path(path))

    def dataset(self, split: str = "test") -> Dataset:
        ds = self.spec.dataset
        if ds.name == "digits":
            return load_digits_split(split, ds.mean, ds.std)
        name = ds.test if split == "test" else ds.train
        if name is None:
            raise ConfigError(self.file, f"workload.dataset.{split}", "no file given for the "
                              f"{split} images")
        return load_cifar10(self.find(name), split, ds.mean, ds.std)


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
        if path.exists():
            return path
    looked = ", ".join(str(p.parent) for p in candidates[1:]) or "(no folders)"
    raise DataError(f"{name}: data file not found (looked in the working directory and {looked}; "
                    "use --data DIR or set ARCHSIM_DATA)")


def load_weights(network: Network, path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            raw = {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise DataError(f"{path}: no such weights file") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npz weights file ({exc})") from None
    return network.check_params(raw, str(path))


def save_weights(params: dict[str, np.ndarray], path: str | Path) -> None:
    """Write weights (.npz of float32 arrays) atomically."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v, np.float32) for k, v in params.items()})
    atomic_write_bytes(path, buf.getvalue())


def resolve_workload_path(name_or_path: str | Path | None) -> Path:
    return cfg.resolve_shipped(DEFAULT_WORKLOAD if name_or_path is None else name_or_path,
                               "archsim.workload_files", "workloads", SHIPPED_WORKLOADS,
                               "workload file")


def load_workload(name_or_path: str | Path | None = None, data_dir: str | Path | None = None
                  ) -> Workload:
    path = resolve_workload_path(name_or_path)
    spec = cfg.parse_file(WorkloadFile, path).workload
    network = BUILTIN_NETWORKS[spec.network]()
    return Workload(spec, network, str(path), None if data_dir is None else str(data_dir))
