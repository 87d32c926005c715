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
from .errors import OptionError
from .mapping import Mapping, map_network
from .workloads import Workload, load_workload

MAX_INFERENCES = 1024        # inferences in flight in the timing simulation (a sanity limit)


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
        # drawn here, once (evaluate_accuracy's own draw of all of them only reorders them)
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
    # --calib-images 0: no AdaBS (its series needs calibration images)
    compensations = functional.COMPENSATIONS if inputs.calib is not None else ("none", "gdc")
    return functional.evaluate_accuracy(analog, params, test, calib=inputs.calib,
                                        calib_images=calib_images, times_s=tuple(times_s),
                                        seeds=seeds, seed=seed, progress=progress,
                                        compensations=compensations)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_run_options(*, times_s=None, seeds: int = 3, calib_images: int = 1000,
                      test_images: int | None = None, inferences: int = 4, seed: int = 0) -> None:
    """The options of :func:`run` (the CLI's ``--times``, ``--seeds``, ...) are in range, checked
    before anything is loaded or simulated; an :class:`OptionError` names the option."""
    for t in times_s or ():
        if isinstance(t, bool) or not isinstance(t, (int, float, np.floating)) \
                or not np.isfinite(t) or t <= 0:
            raise OptionError("--times", t, "finite times after programming > 0, e.g. 25s,1h,1d")
    checks = (("--seeds", seeds, 1, None), ("--calib-images", calib_images, 0, None),
              ("--test-images", test_images, 1, None),
              ("--inferences", inferences, 1, MAX_INFERENCES), ("--seed", seed, 0, None))
    for option, value, lo, hi in checks:
        if value is None and option == "--test-images":
            continue
        if not _is_int(value) or value < lo or (hi is not None and value > hi):
            expected = f"an integer {lo}..{hi:,}" if hi else f"an integer >= {lo}"
            raise OptionError(option, value, expected)


def run(chip=None, workload=None, *, overrides=None, policy: str | None = None, data_dir=None,
        accuracy: bool = True, accuracy_policies: Sequence[str] | None = None,
        times_s: Sequence[float] | None = None, seeds: int = 3, calib_images: int = 1000,
        test_images: int | None = None, inferences: int = 4, seed: int = 0,
        weights: str | Path | None = None, progress: bool = True,
        inputs: AccuracyInputs | None = None, dataset: str | None = None) -> RunResult:
    """One chip x one workload, end to end. Every input (options, chip, workload, weights,
    datasets) is checked before the first simulation starts. ``inputs``: the accuracy run's
    weights and data, already loaded (:func:`accuracy_inputs`); ``dataset``: the dataset of a bare
    .onnx workload."""
    from . import accounting, functional, timing
    check_run_options(times_s=times_s, seeds=seeds, calib_images=calib_images,
                      test_images=test_images, inferences=inferences, seed=seed)
    chip_cfg, wl = load(chip, workload, overrides=overrides, policy=policy, data_dir=data_dir,
                        dataset=dataset)
    mapping = map_network(chip_cfg, wl.network)
    mappings = []
    if accuracy:
        policies = list(accuracy_policies or [chip_cfg.mapping.policy])
        mappings = [mapping if p == chip_cfg.mapping.policy
                    else map_network(chip_cfg.with_mapping(p), wl.network) for p in policies]
        if inputs is None:       # weights and datasets checked before any simulation starts
            inputs = accuracy_inputs(wl, test_images=test_images, calib_images=calib_images,
                                     seed=seed, weights=weights,
                                     calibration=any(m.analog_layers for m in mappings))
    tim = timing.simulate_timing(mapping, inferences)     # then timing: a capacity error is quick
    acc = None
    if accuracy:
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
