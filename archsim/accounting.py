"""Energy and area accounting: the timing simulation's action counts x the per-action energies of
:mod:`archsim.components`, plus leakage power x time; component areas x counts.

Steady state (what the headline figures are):

- Dynamic energy per inference = sum over one inference's actions of (count x energy per action).
  One exception: a ``pcm_array.mvm`` is charged for the devices that hold weights only (x the
  layer's ``read_utilization``: the weight devices its pixels read per array MVM; with packed
  copies one MVM reads several blocks): undriven rows and unprogrammed columns carry no read
  current.
- Leakage energy per inference = leakage power of the chip x the steady-state interval between
  inference completions (the chip leaks all the time; with several inferences in flight one
  inference leaves every interval).
- Energy per inference = dynamic + leakage; power = energy per inference x throughput (= dynamic /
  interval + leakage power); TOPS = ops per inference x throughput; TOPS/W = ops per inference /
  energy per inference = TOPS / power. None of these depends on the number of inferences simulated
  once the pipeline is full.
- A single inference alone: its latency, and dynamic + leakage power x latency.
- The whole simulated run is reported too (``energy.run``): dynamic x N + leakage power x the
  simulated time.

Per layer: the layer's own actions (one inference) x energies (dynamic), and the leakage of the
hardware it holds over one interval (a tile's leakage split among the layers on it by their busy
cycles; the digital units' among the digital layers); what no layer holds (unused tiles) is
reported as not attributed.

Power gating (``chip.tiles.power_gating``): a tile without mapped arrays is off for the whole run,
and a mapped tile's periphery is off while it is idle for longer than the wake-up time (the timing
model charges the wake-up latency): their leakage is charged at ``gated_leakage_fraction`` for
those cycles. The figure without gating is reported beside it.

Area: copies x area each, per component for the chip, and per tile for the parts of a tile (array,
DAC row drivers, ADCs, affine unit, buffer: a HERMES "core").

Peak figures (:func:`peak_efficiency`): every tile doing back-to-back full-size MVMs (every row
driven, every weight column converted) at the interval of :func:`archsim.timing.peak_figures`, plus
the leakage of the whole chip (the digital units idle but leaking: HERMES' published peak is its
analog cores'); a chip without tiles is rated on its digital units instead (every PE busy every
cycle, the SRAM port busy every cycle).

Every figure carries its source (``CostResult.sources``): the YAML field with file:line and its
``# source:`` comment, or the default table entry and its scaling to the node.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field
from typing import Any, Mapping as TMapping

from .components import (Component, TILE_LEAKERS, TILE_PARTS, action_energy_pj, chip_components,
                         chip_parts, full_mvm_actions)
from .config import ChipConfig
from .timing import peak_figures

PJ_PER_MW_NS = 1.0          # 1 mW x 1 ns = 1 pJ
NOT_ATTRIBUTED = "(not attributed: unused tiles)"
DIGITAL_LEAKERS = ("digital_mac", "digital_unit", "sram")


@dataclass(frozen=True)
class CostResult:
    dynamic_energy_pj: TMapping[str, float]  # per component, one inference
    leakage_energy_pj: TMapping[str, float]  # per component, one steady-state interval
    leakage_power_mw: TMapping[str, float]   # per component (with power gating when enabled)
    layer_energy_pj: TMapping[str, float]    # per layer, one inference, dynamic only
    layer_leakage_pj: TMapping[str, float]   # per layer, leakage of its hardware over one interval
    area_um2: TMapping[str, float]           # per component, whole chip
    summary: TMapping[str, float]            # DESIGN.md section 8 summary keys (+ steady state)
    sources: TMapping[str, str]              # "component.action|area|leakage" -> source
    inferences: int = 1                      # simulated
    interval_ns: float = 0.0                 # steady-state interval the leakage is charged over
    latency_ns: float = 0.0
    run_time_ns: float = 0.0                 # the whole simulated run
    tile_area_um2: TMapping[str, float] = field(default_factory=dict)   # parts of one tile
    peak: TMapping[str, Any] = field(default_factory=dict)             # peak_efficiency()
    ungated_leakage_power_mw: float | None = None    # without power gating (when it is enabled)

    @property
    def energy_pj(self) -> dict[str, float]:
        """Per component, one inference in steady state (dynamic + leakage)."""
        return {k: self.dynamic_energy_pj[k] + self.leakage_energy_pj[k]
                for k in self.dynamic_energy_pj}

    @property
    def dynamic_pj(self) -> float:
        return float(sum(self.dynamic_energy_pj.values()))

    @property
    def leakage_pj(self) -> float:
        return float(sum(self.leakage_energy_pj.values()))

    @property
    def total_energy_pj(self) -> float:
        """Energy per inference in steady state."""
        return self.dynamic_pj + self.leakage_pj

    @property
    def total_area_um2(self) -> float:
        return float(sum(self.area_um2.values()))

    def to_dict(self) -> dict:
        leak_mw = float(sum(self.leakage_power_mw.values()))
        n = max(self.inferences, 1)
        per_component = {
            k: {"dynamic_pj": self.dynamic_energy_pj[k], "leakage_pj": self.leakage_energy_pj[k],
                "total_pj": self.dynamic_energy_pj[k] + self.leakage_energy_pj[k],
                "leakage_mw": self.leakage_power_mw[k]}
            for k in self.dynamic_energy_pj}
        return {
            "energy": {
                "per_inference_pj": self.total_energy_pj,
                "dynamic_per_inference_pj": self.dynamic_pj,
                "leakage_per_inference_pj": self.leakage_pj,
                "leakage_power_mw": leak_mw,
                "interval_ns": self.interval_ns,
                "latency_ns": self.latency_ns,
                "single_inference_pj": self.dynamic_pj + leak_mw * self.latency_ns,
                "note": "steady state: dynamic energy of one inference + leakage power x the "
                        "steady-state interval; a single inference alone: dynamic + leakage "
                        "power x its latency",
                "per_component": per_component,
                "per_component_pj_per_inference": {k: v["total_pj"]
                                                   for k, v in per_component.items()},
                "per_layer_pj": dict(self.layer_energy_pj),
                "per_layer_leakage_pj": dict(self.layer_leakage_pj),
                "per_layer_note": "dynamic energy of one inference, and the leakage of the hardware "
                                  "the layer holds over one steady-state interval",
                "run": {"inferences": self.inferences, "time_ns": self.run_time_ns,
                        "dynamic_pj": self.dynamic_pj * n,
                        "leakage_pj": leak_mw * self.run_time_ns,
                        "total_pj": self.dynamic_pj * n + leak_mw * self.run_time_ns},
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


def tile_leakage_mw(comps: TMapping[str, Component]) -> dict[str, float]:
    """Leakage power of the parts of one tile."""
    return {name: comps[name].per_tile * comps[name].leakage_mw.value
            for name in TILE_LEAKERS if comps[name].count}


def _layer_dynamic(comps, mapping, timing) -> dict[str, dict[str, float]]:
    """Per layer, per component: dynamic energy of one inference."""
    out = {}
    for lt in timing.layers:
        util = {"pcm_array.mvm": mapping.layer(lt.name).read_utilization} \
            if lt.actions.get("pcm_array.mvm") else {}
        out[lt.name] = _dynamic(comps, lt.actions, util)
    return out


def _leakage_mw(comps, timing, chip: ChipConfig) -> tuple[dict[str, float], list[float]]:
    """Leakage power per component and per tile. With ``chip.tiles.power_gating`` a tile without
    mapped arrays is off for the whole run and a mapped tile's periphery is off for the cycles
    the timing run gated it (share of the steady-state window); off means
    ``gated_leakage_fraction`` of the leakage."""
    t = chip.chip.tiles
    per_part = tile_leakage_mw(comps)
    one_tile = sum(per_part.values())
    out = {name: c.total_leakage_mw for name, c in comps.items()}
    tiles = [one_tile] * t.count
    if not t.power_gating or t.count == 0:
        return out, tiles
    window = max(int(timing.window_cycles), 1)
    used = set(timing.tiles_used)
    frac = t.gated_leakage_fraction
    for tile in range(t.count):
        if tile not in used:                          # never woken: every part off
            for name, mw in per_part.items():
                out[name] -= mw * (1 - frac)
            tiles[tile] = one_tile * frac
        else:                                         # periphery off while idle
            saved = per_part.get("tile_periphery", 0.0) * (1 - frac) * (
                timing.tile_gated_cycles[tile] / window)
            out["tile_periphery"] -= saved
            tiles[tile] = one_tile - saved
    return out, tiles


def _layer_leakage(timing, leak_mw: TMapping[str, float], tile_mw: list[float],
                   interval_ns: float) -> dict[str, float]:
    """Leakage over one interval of the hardware each layer holds: a tile's split among the layers
    on it by busy cycles, the digital units' among the digital layers; the rest not attributed."""
    holders: dict[int, dict[str, int]] = {}
    digital: dict[str, int] = {}
    for lt in timing.layers:
        if lt.placement == "analog":
            for tile in lt.tiles:
                holders.setdefault(tile, {})[lt.name] = lt.busy_cycles
        elif lt.placement == "digital":
            digital[lt.name] = lt.busy_cycles
    out = {lt.name: 0.0 for lt in timing.layers}
    attributed_mw = 0.0
    for tile, layers in holders.items():
        total = sum(layers.values()) or 1
        attributed_mw += tile_mw[tile]
        for name, busy in layers.items():
            out[name] += tile_mw[tile] * interval_ns * busy / total
    if digital:
        digital_mw = sum(leak_mw[n] for n in DIGITAL_LEAKERS if n in leak_mw)
        attributed_mw += digital_mw
        total = sum(digital.values()) or 1
        for name, busy in digital.items():
            out[name] += digital_mw * interval_ns * busy / total
    out[NOT_ATTRIBUTED] = max(sum(leak_mw.values()) - attributed_mw, 0.0) * interval_ns
    return out


def account(mapping, timing) -> CostResult:
    """Energy and area of one timing run of ``mapping`` (an :class:`archsim.mapping.Mapping`)."""
    chip: ChipConfig = mapping.chip
    comps = chip_components(chip)
    clock_ns = 1000.0 / float(timing.clock_mhz)
    interval_ns = int(timing.interval_cycles) * clock_ns
    latency_ns = float(timing.latency_ns)
    run_time_ns = int(timing.total_cycles) * clock_ns

    layer_dyn = _layer_dynamic(comps, mapping, timing)
    dynamic = {name: sum(d[name] for d in layer_dyn.values()) for name in comps}
    ungated = {name: c.total_leakage_mw for name, c in comps.items()}
    gating = chip.chip.tiles.power_gating and chip.chip.tiles.count > 0
    leak_mw, tile_mw = _leakage_mw(comps, timing, chip)
    leakage = {name: mw * interval_ns * PJ_PER_MW_NS for name, mw in leak_mw.items()}
    layers = {name: float(sum(d.values())) for name, d in layer_dyn.items()}
    layer_leak = _layer_leakage(timing, leak_mw, tile_mw, interval_ns)
    area = {name: c.total_area_um2 for name, c in comps.items()}

    macs = int(mapping.network.total_macs())
    ops = 2.0 * macs
    dyn_pj = sum(dynamic.values())
    leak_total_mw = sum(leak_mw.values())
    energy_pj = dyn_pj + leak_total_mw * interval_ns
    ips = 1e9 / interval_ns if interval_ns > 0 else 0.0
    power_w = energy_pj * 1e-12 * ips
    peak = peak_efficiency(chip, comps)
    summary = {
        "peak_tops": peak["peak_tops"],
        "peak_tops_per_w": peak["peak_tops_per_w"],
        "peak_tops_per_mm2": peak["peak_tops_per_mm2"],
        "tops": ops * ips / 1e12,
        "tops_per_w": ops / energy_pj if energy_pj > 0 else 0.0,
        "latency_ns": latency_ns,
        "inferences_per_s": ips,
        "energy_per_inference_uj": energy_pj * 1e-6,
        "power_w": power_w,
        "area_mm2": sum(area.values()) / 1e6,
        "dynamic_energy_per_inference_uj": dyn_pj * 1e-6,
        "leakage_energy_per_inference_uj": leak_total_mw * interval_ns * 1e-6,
        "leakage_power_w": leak_total_mw * 1e-3,
        "single_inference_energy_uj": (dyn_pj + leak_total_mw * latency_ns) * 1e-6,
    }
    ungated_mw = None
    if gating:
        ungated_mw = sum(ungated.values())
        e_ungated = dyn_pj + ungated_mw * interval_ns
        summary["energy_per_inference_ungated_uj"] = e_ungated * 1e-6
        summary["power_ungated_w"] = e_ungated * 1e-12 * ips
    sources = _sources(comps)
    if gating:
        wake = chip_parts(chip)["tile_periphery"].wake_up()
        sources["tile_periphery.wake_up_ns"] = f"{wake.value:g} ns: {wake.source}"
    return CostResult(
        dynamic_energy_pj=types.MappingProxyType(dynamic),
        leakage_energy_pj=types.MappingProxyType(leakage),
        leakage_power_mw=types.MappingProxyType(dict(leak_mw)),
        layer_energy_pj=types.MappingProxyType(layers),
        layer_leakage_pj=types.MappingProxyType(layer_leak),
        area_um2=types.MappingProxyType(area),
        summary=types.MappingProxyType(summary),
        sources=types.MappingProxyType(sources),
        inferences=max(int(timing.inferences), 1), interval_ns=interval_ns,
        latency_ns=latency_ns, run_time_ns=run_time_ns,
        tile_area_um2=types.MappingProxyType(tile_area_um2(comps)),
        peak=types.MappingProxyType(peak), ungated_leakage_power_mw=ungated_mw)


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
        tile_leak_w = sum(tile_leakage_mw(comps).values()) * 1e-3
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
