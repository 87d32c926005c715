"""Energy and area accounting: the timing simulation's action counts x the per-action energies of
:mod:`archsim.components`, plus leakage power x simulated time; component areas x counts.

- Dynamic energy of a component = sum over its actions of (count x energy per action). One
  exception: a ``pcm_array.mvm`` is charged for the devices that hold weights only (x the layer's
  mapping utilization): undriven rows and unprogrammed columns carry no read current.
- Leakage energy of a component = copies x leakage power x simulated time (``total_cycles`` of the
  timing run at the chip clock; mW x ns = pJ).
- Per layer: the layer's own actions (first inference) x energies, dynamic only. Leakage is not
  split among layers (layers overlap in time on a pipelined chip); it is reported separately,
  per component and per inference.
- Area: copies x area each, per component for the chip, and per tile for the parts of a tile
  (array, DAC row drivers, ADCs, affine unit, buffer: a HERMES "core").
- Peak figures (:func:`peak_efficiency`): every tile doing back-to-back full-size MVMs (every
  row driven, every weight column converted) at the interval of :func:`archsim.timing.peak_figures`,
  plus the leakage of the whole chip (the digital units idle but leaking: HERMES' published peak is
  its analog cores'); a chip without tiles is rated on its digital units instead (every PE busy
  every cycle, the SRAM port busy every cycle).
- Workload figures: ``tops`` = 2 x MACs per inference x inferences/s (steady state);
  ``tops_per_w`` = 2 x MACs per inference / energy per inference; ``power_w`` = energy of the run
  / simulated time.

Every figure carries its source (``CostResult.sources``): the YAML field with file:line and its
``# source:`` comment, or the default table entry and its scaling to the node.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field
from typing import Any, Mapping as TMapping

from .components import (Component, TILE_PARTS, action_energy_pj, chip_components,
                         full_mvm_actions)
from .config import ChipConfig
from .timing import peak_figures

PJ_PER_MW_NS = 1.0          # 1 mW x 1 ns = 1 pJ


@dataclass(frozen=True)
class CostResult:
    energy_pj: TMapping[str, float]          # per component, whole run (dynamic + leakage)
    dynamic_energy_pj: TMapping[str, float]  # per component, whole run
    leakage_energy_pj: TMapping[str, float]  # per component, whole run
    layer_energy_pj: TMapping[str, float]    # per layer, one inference, dynamic only
    area_um2: TMapping[str, float]           # per component, whole chip
    summary: TMapping[str, float]            # DESIGN.md section 8 summary keys
    sources: TMapping[str, str]              # "component.action|area|leakage" -> source
    inferences: int = 1
    time_ns: float = 0.0                     # simulated time the leakage is charged over
    tile_area_um2: TMapping[str, float] = field(default_factory=dict)   # parts of one tile
    peak: TMapping[str, Any] = field(default_factory=dict)             # peak_efficiency()

    @property
    def total_energy_pj(self) -> float:
        return float(sum(self.energy_pj.values()))

    @property
    def total_area_um2(self) -> float:
        return float(sum(self.area_um2.values()))

    def to_dict(self) -> dict:
        n = max(self.inferences, 1)
        total = self.total_energy_pj
        return {
            "energy": {
                "total_pj": total,
                "dynamic_pj": float(sum(self.dynamic_energy_pj.values())),
                "leakage_pj": float(sum(self.leakage_energy_pj.values())),
                "per_inference_pj": total / n,
                "inferences": self.inferences,
                "time_ns": self.time_ns,
                "per_component_pj": dict(self.energy_pj),
                "per_component_pj_per_inference": {k: v / n for k, v in self.energy_pj.items()},
                "dynamic_per_component_pj": dict(self.dynamic_energy_pj),
                "leakage_per_component_pj": dict(self.leakage_energy_pj),
                "per_layer_pj": dict(self.layer_energy_pj),
                "per_layer_note": "dynamic energy of one inference; leakage is reported per "
                                  "component only",
                "sources": dict(self.sources),
            },
            "area": {
                "total_um2": self.total_area_um2,
                "total_mm2": self.total_area_um2 / 1e6,
                "per_component_um2": dict(self.area_um2),
                "per_tile_um2": dict(self.tile_area_um2),
                "tile_um2": float(sum(self.tile_area_um2.values())),
            },
            "summary": dict(self.summary),
            "peak": dict(self.peak),
            "sources": dict(self.sources),
        }


def array_occupancy(mapping, timing) -> float:
    """Mean fraction of an array's devices that conduct in one counted ``pcm_array.mvm``: each
    analog layer's mapping utilization (devices holding weights / devices of its arrays: the
    undriven rows and unprogrammed columns carry no current), weighted by the layer's MVMs."""
    weighted = counted = 0
    for lt in timing.layers:
        count = lt.actions.get("pcm_array.mvm", 0)
        if count:
            weighted += count * mapping.layer(lt.name).utilization
            counted += count
    return weighted / counted if counted else 1.0


def _dynamic(comps: TMapping[str, Component], actions: TMapping[str, int],
             scale: TMapping[str, float]) -> dict[str, float]:
    out = {name: 0.0 for name in comps}
    for action, count in actions.items():
        if not count:
            continue
        comp = action.partition(".")[0]
        if comps.get(comp) is not None and comps[comp].count == 0:
            raise ValueError(f"{count} {action} actions counted on a chip with no {comp}")
        out[comp] += count * action_energy_pj(comps, action).value * scale.get(action, 1.0)
    return out


def _sources(comps: TMapping[str, Component]) -> dict[str, str]:
    out = {}
    for name, c in comps.items():
        for action, fig in c.energy_pj.items():
            out[f"{name}.{action}.energy_pj"] = fig.source
        out[f"{name}.area_um2"] = f"{c.count} x {c.area_um2.value:.6g} um2: {c.area_um2.source}"
        out[f"{name}.leakage_mw"] = f"{c.count} x {c.leakage_mw.value:.6g} mW: {c.leakage_mw.source}"
    return out


def tile_area_um2(comps: TMapping[str, Component]) -> dict[str, float]:
    """Area of the parts of one tile (array(s), DAC rows, ADCs, affine unit, buffer)."""
    return {name: comps[name].per_tile * comps[name].area_um2.value
            for name in TILE_PARTS if comps[name].count}


def account(mapping, timing) -> CostResult:
    """Energy and area of one timing run of ``mapping`` (an :class:`archsim.mapping.Mapping`)."""
    chip: ChipConfig = mapping.chip
    comps = chip_components(chip)
    clock_ns = 1000.0 / float(timing.clock_mhz)
    time_ns = int(timing.total_cycles) * clock_ns
    occupancy = array_occupancy(mapping, timing)
    dynamic = _dynamic(comps, timing.actions, {"pcm_array.mvm": occupancy})
    leakage = {name: c.total_leakage_mw * time_ns * PJ_PER_MW_NS for name, c in comps.items()}
    energy = {name: dynamic[name] + leakage[name] for name in comps}
    layers = {}
    for lt in timing.layers:
        util = {"pcm_array.mvm": mapping.layer(lt.name).utilization} \
            if lt.actions.get("pcm_array.mvm") else {}
        layers[lt.name] = float(sum(_dynamic(comps, lt.actions, util).values()))
    area = {name: c.total_area_um2 for name, c in comps.items()}

    n = max(int(timing.inferences), 1)
    total_pj = sum(energy.values())
    macs = int(mapping.network.total_macs())
    energy_per_inf_pj = total_pj / n
    power_w = total_pj / time_ns * 1e-3 if time_ns > 0 else 0.0        # pJ/ns = mW
    ips = float(timing.throughput_inferences_per_s)
    peak = peak_efficiency(chip, comps)
    summary = {
        "peak_tops": peak["peak_tops"],
        "peak_tops_per_w": peak["peak_tops_per_w"],
        "peak_tops_per_mm2": peak["peak_tops_per_mm2"],
        "tops": 2.0 * macs * ips / 1e12,
        "tops_per_w": 2.0 * macs / energy_per_inf_pj if energy_per_inf_pj > 0 else 0.0,
        "latency_ns": float(timing.latency_ns),
        "inferences_per_s": ips,
        "energy_per_inference_uj": energy_per_inf_pj * 1e-6,
        "power_w": power_w,
        "area_mm2": sum(area.values()) / 1e6,
    }
    return CostResult(
        energy_pj=types.MappingProxyType(energy),
        dynamic_energy_pj=types.MappingProxyType(dynamic),
        leakage_energy_pj=types.MappingProxyType(leakage),
        layer_energy_pj=types.MappingProxyType(layers),
        area_um2=types.MappingProxyType(area),
        summary=types.MappingProxyType(summary),
        sources=types.MappingProxyType(_sources(comps)),
        inferences=n, time_ns=time_ns,
        tile_area_um2=types.MappingProxyType(tile_area_um2(comps)),
        peak=types.MappingProxyType(peak))


def peak_mvm_rate(chip: ChipConfig) -> tuple[float, float]:
    """(interval between back-to-back full-size MVMs on a tile in ns, MVMs per second on the
    whole chip), from :func:`archsim.timing.peak_figures` (one MVM at a time per tile)."""
    figs = peak_figures(chip)
    return float(figs["mvm_interval_ns"]), float(figs["peak_mvm_per_s"])


def peak_efficiency(chip: ChipConfig, comps: TMapping[str, Component] | None = None
                    ) -> dict[str, Any]:
    """The chip at full load: every array doing full-size MVMs back to back (or, for a chip
    without tiles, every digital PE busy), plus the leakage of everything on the chip.

    Returns ``peak_tops``, ``peak_tops_per_w``, ``peak_tops_per_mm2``, ``peak_power_w`` and the
    parts they come from (``mvm_interval_ns``, ``mvm_energy_pj`` per array, ``leakage_w``,
    ``dynamic_power_w``, ``area_mm2``, ``tile_area_mm2``, ``tile_tops``, ``tile_tops_per_mm2``)."""
    comps = comps if comps is not None else chip_components(chip)
    c = chip.chip
    t = c.tiles
    arrays = t.count * t.arrays_per_tile
    area_um2 = sum(x.total_area_um2 for x in comps.values())
    leakage_w = sum(x.total_leakage_mw for x in comps.values()) * 1e-3
    out: dict[str, Any] = {}
    if arrays:
        interval_ns, mvm_per_s = peak_mvm_rate(chip)
        mvm_pj = sum(n * action_energy_pj(comps, a).value
                     for a, n in full_mvm_actions(chip).items())
        ops_per_mvm = 2 * t.array.rows * t.array.weight_cols
        ops_per_s = mvm_per_s * ops_per_mvm
        dynamic_w = mvm_per_s * mvm_pj * 1e-12
        tile_um2 = sum(tile_area_um2(comps).values())
        tile_tops = ops_per_s / t.count / 1e12
        tile_leak_w = sum(comps[n].leakage_mw.value * comps[n].per_tile
                          for n in (*TILE_PARTS, "tile_periphery")) * 1e-3
        tile_w = dynamic_w / t.count + tile_leak_w
        out.update(mode="analog", mvm_interval_ns=interval_ns, mvm_energy_pj=mvm_pj,
                   tile_area_mm2=tile_um2 / 1e6, tile_tops=tile_tops,
                   tile_power_w=tile_w, tile_tops_per_w=tile_tops / tile_w,
                   tile_tops_per_mm2=tile_tops / (tile_um2 / 1e6) if tile_um2 else 0.0)
    else:
        d = c.digital
        macs = d.units * d.systolic.rows * d.systolic.cols
        per_s = 1e6 * c.clock_mhz
        ops_per_s = 2 * macs * per_s
        dynamic_w = (macs * action_energy_pj(comps, "digital_mac.mac").value
                     + d.units * d.sram.bytes_per_cycle * action_energy_pj(comps, "sram.byte").value
                     ) * per_s * 1e-12
        out.update(mode="digital")
    power_w = dynamic_w + leakage_w
    tops = ops_per_s / 1e12
    out.update(peak_tops=tops, peak_power_w=power_w, dynamic_power_w=dynamic_w,
               leakage_w=leakage_w, peak_tops_per_w=tops / power_w if power_w else 0.0,
               area_mm2=area_um2 / 1e6,
               peak_tops_per_mm2=tops / (area_um2 / 1e6) if area_um2 else 0.0)
    return out
