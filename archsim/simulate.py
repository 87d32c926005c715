"""The pipeline as a Python API: load a chip and a workload, map, simulate, account, report.

    config -> network -> mapping -> functional and timing simulation -> energy/area -> report
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping as TMapping

from .config import ChipConfig, load_chip
from .mapping import Mapping, map_network
from .workloads import Workload, load_workload


def load(chip: str | Path | ChipConfig | None = None, workload: str | Path | Workload | None = None,
         *, overrides: TMapping[str, Any] | None = None, policy: str | None = None,
         data_dir: str | Path | None = None) -> tuple[ChipConfig, Workload]:
    """The chip (with ``--set`` overrides and ``--mapping`` policy applied) and the workload."""
    chip_cfg = chip if isinstance(chip, ChipConfig) else load_chip(chip, overrides)
    if policy is not None:
        chip_cfg = chip_cfg.with_mapping(policy)
    wl = workload if isinstance(workload, Workload) else load_workload(workload, data_dir)
    return chip_cfg, wl


def load_mapping(chip=None, workload=None, **kwargs) -> Mapping:
    chip_cfg, wl = load(chip, workload, **kwargs)
    return map_network(chip_cfg, wl.network)


def mapping_table(mapping: Mapping) -> str:
    from .report import format_mapping
    return format_mapping(mapping)
