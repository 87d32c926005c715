"""The pipeline as a Python API: load a chip and a workload, map, simulate, account, report.

    config -> network -> mapping -> functional and timing simulation -> energy/area -> report

Example::

    from archsim import simulate
    result = simulate.run("configs/pcm_hybrid.yaml", "workloads/resnet32_cifar10.yaml", seeds=3)
    print(result.report()["summary"]["energy_per_inference_uj"])

A workload is a workload YAML (file or shipped name), an ONNX model file (``model.onnx``: no
dataset unless ``dataset=`` names one) or a :class:`~archsim.workloads.Workload`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping as TMapping, Sequence

import numpy as np

from .config import ChipConfig, load_chip
from .mapping import Mapping, map_network
from .workloads import Workload, load_workload


def load(chip: str | Path | ChipConfig | None = None, workload: str | Path | Workload | None = None,
         *, overrides: TMapping[str, Any] | None = None, policy: str | None = None,
         data_dir: str | Path | None = None, dataset: str | None = None
         ) -> tuple[ChipConfig, Workload]:
    """The chip (with ``--set`` overrides and ``--mapping`` policy applied) and the workload
    (``dataset``: digits, cifar10 or a workload YAML whose dataset replaces the workload's)."""
    chip_cfg = chip if isinstance(chip, ChipConfig) else load_chip(chip, overrides)
    if policy is not None:
        chip_cfg = chip_cfg.with_mapping(policy)
    wl = workload if isinstance(workload, Workload) else load_workload(workload, data_dir, dataset)
    return chip_cfg, wl


def load_mapping(chip=None, workload=None, **kwargs) -> Mapping:
    chip_cfg, wl = load(chip, workload, **kwargs)
    return map_network(chip_cfg, wl.network)


def mapping_table(mapping: Mapping) -> str:
    from .report import format_mapping
    return format_mapping(mapping)


@dataclass(frozen=True)
class RunResult:
    """Everything one run produced; each part is the immutable result of its stage."""
    mapping: Mapping
    workload: Workload
    accuracy: Any          # functional.AccuracyResult | None
    timing: Any            # timing.TimingResult
    cost: Any              # accounting.CostResult

    def report(self) -> dict:
        """The report dict (DESIGN.md section 8 keys)."""
        from .report import format_mapping
        chip = self.mapping.chip
        spec = self.workload.spec
        cost = self.cost.to_dict()
        mapping = self.mapping.to_dict()
        mapping["table"] = format_mapping(self.mapping)
        return {
            "chip": {"name": chip.chip.name, "file": chip.file, "hash": chip.content_hash(),
                     "technology_nm": chip.chip.technology_nm, "clock_mhz": chip.chip.clock_mhz,
                     "config": chip.to_dict()},
            "workload": {"name": spec.name, "file": self.workload.file, "network": spec.network,
                         "weights": spec.weights,
                         "dataset": spec.dataset.name if spec.dataset is not None else None,
                         "macs_per_inference": self.mapping.network.total_macs()},
            "mapping": mapping,
            "accuracy": self.accuracy.to_dict() if self.accuracy is not None else None,
            "timing": self.timing.to_dict(),
            "energy": cost["energy"],
            "area": cost["area"],
            "summary": cost["summary"],
        }


@dataclass(frozen=True)
class AccuracyInputs:
    """What an accuracy run reads: the weights, the test images (the evenly spaced subset) and the
    AdaBS calibration images (already drawn from the training split), all read-only. Loaded once;
    a sweep sends them to each of its workers once (:mod:`archsim.sweep`)."""
    params: dict
    test: Any                # datasets.Dataset
    calib: Any               # datasets.Dataset | None


def accuracy_inputs(workload: Workload, *, test_images: int | None = None,
                    calib_images: int = 1000, seed: int = 0, weights: str | Path | None = None,
                    calibration: bool = True) -> AccuracyInputs:
    """Load the weights and data an accuracy run needs (``calibration=False``: no training images,
    e.g. for an all-digital chip, which has nothing to calibrate)."""
    from . import functional
    params = workload.load_params(weights)
    test = workload.dataset("test")
    if test_images is not None and test_images < len(test):
        # evenly spaced, not the first N: test files may be sorted by class (shared CIFAR-10 is)
        test = test.subset(np.linspace(0, len(test), test_images, endpoint=False).astype(np.int64))
    calib = None
    if calibration and calib_images > 0:
        # drawn here, once; evaluate_accuracy's own draw of all of them is the identity
        calib = functional.calibration_subset(workload.dataset("train"), calib_images, seed)
    return AccuracyInputs(params, test, calib)


def accuracy_for(mappings: Sequence[Mapping], workload: Workload, *, times_s, seeds: int,
                 calib_images: int, test_images: int | None = None, seed: int = 0,
                 weights: str | Path | None = None, progress: bool = True,
                 inputs: AccuracyInputs | None = None):
    """Monte Carlo accuracy vs time for the given mappings (analog ones; digital-only mappings
    contribute the FP32 reference). ``inputs``: weights and data already loaded
    (:func:`accuracy_inputs` with the same options), else they are loaded here."""
    from . import functional
    analog = [m for m in mappings if m.analog_layers]
    if inputs is None:
        inputs = accuracy_inputs(workload, test_images=test_images, calib_images=calib_images,
                                 seed=seed, weights=weights, calibration=bool(analog))
    params, test = inputs.params, inputs.test
    if not analog:
        # an all-digital chip neither drifts nor is noisy: its accuracy is the FP32 one at all times
        fp32 = functional.fp32_accuracy(workload.network, params, test)
        return functional.AccuracyResult(fp32, tuple(times_s), 0, len(test), 0, ())
    return functional.evaluate_accuracy(analog, params, test, calib=inputs.calib,
                                        calib_images=calib_images, times_s=tuple(times_s),
                                        seeds=seeds, seed=seed, progress=progress)


def run(chip=None, workload=None, *, overrides=None, policy: str | None = None, data_dir=None,
        accuracy: bool = True, accuracy_policies: Sequence[str] | None = None,
        times_s: Sequence[float] | None = None, seeds: int = 3, calib_images: int = 1000,
        test_images: int | None = None, inferences: int = 4, seed: int = 0,
        weights: str | Path | None = None, progress: bool = True,
        inputs: AccuracyInputs | None = None, dataset: str | None = None) -> RunResult:
    """One chip x one workload, end to end. ``inputs``: the accuracy run's weights and data,
    already loaded (:func:`accuracy_inputs`); ``dataset``: the dataset of a bare .onnx workload."""
    from . import accounting, functional, timing
    chip_cfg, wl = load(chip, workload, overrides=overrides, policy=policy, data_dir=data_dir,
                        dataset=dataset)
    mapping = map_network(chip_cfg, wl.network)
    tim = timing.simulate_timing(mapping, inferences)     # first: a capacity error stops it early
    acc = None
    if accuracy:
        policies = list(accuracy_policies or [chip_cfg.mapping.policy])
        mappings = [mapping if p == chip_cfg.mapping.policy
                    else map_network(chip_cfg.with_mapping(p), wl.network) for p in policies]
        acc = accuracy_for(mappings, wl, times_s=times_s or functional.DEFAULT_TIMES_S,
                           seeds=seeds, calib_images=calib_images, test_images=test_images,
                           seed=seed, weights=weights, progress=progress, inputs=inputs)
    cost = accounting.account(mapping, tim)
    return RunResult(mapping, wl, acc, tim, cost)


@dataclass(frozen=True)
class CompareResult:
    """Two chips on one workload (:func:`compare`)."""
    a: RunResult
    b: RunResult

    def reports(self) -> tuple[dict, dict]:
        return self.a.report(), self.b.report()

    def table(self) -> str:
        """The side-by-side table with ratios (as ``archsim compare`` prints it)."""
        from .report import compare_table
        return compare_table(*self.reports())


def compare(chip_a, chip_b, workload=None, **kwargs) -> CompareResult:
    """Two chips on one workload, each run as :func:`run` runs it (same options)."""
    return CompareResult(run(chip_a, workload, **kwargs), run(chip_b, workload, **kwargs))
