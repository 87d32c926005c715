"""Hardware component models: per-action energy and latency, area and leakage of every component
of a chip, each figure with the place it came from.

A figure comes from the chip YAML when the field is set there (the source is the file, line and the
``# source:`` comment of that line), else from the default table below, scaled from the node it was
published at to the chip's ``technology_nm``:

- energy scales as (node / ref_node) ** ENERGY_NODE_EXPONENT, fitted so that 45 nm -> 14 nm gives
  the factor 0.14 of DESIGN.md section 9 (Horowitz ISSCC 2014 scaled);
- area scales as (node / ref_node) ** 2.

Actions (what the timing simulation counts) per component:
``pcm_array.mvm``, ``dac.drive`` (one row for one MVM), ``adc.conversion``, ``affine.op`` (one
column output), ``tile_buffer.byte``, ``digital_mac.mac``, ``sram.byte``, ``interconnect.byte_hop``,
``accumulator.add`` (row-block partial sums, digital).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

from .config import ChipConfig

ENERGY_NODE_EXPONENT = math.log(0.14) / math.log(14 / 45)    # ~1.68


@dataclass(frozen=True)
class Figure:
    value: float
    source: str

    def __float__(self) -> float:
        return float(self.value)


@dataclass(frozen=True)
class Default:
    value: float
    ref_nm: float | None          # None: not scaled with the node
    kind: str                     # energy | area | other
    source: str

    def at(self, node_nm: float, factor: float = 1.0, note: str = "") -> Figure:
        if self.ref_nm is None or self.ref_nm == node_nm:
            scale, how = 1.0, ""
        elif self.kind == "energy":
            scale = (node_nm / self.ref_nm) ** ENERGY_NODE_EXPONENT
            how = f", scaled {self.ref_nm:g}->{node_nm:g} nm x{scale:.3g}"
        else:
            scale = (node_nm / self.ref_nm) ** 2
            how = f", area scaled {self.ref_nm:g}->{node_nm:g} nm x{scale:.3g}"
        return Figure(self.value * factor * scale,
                      f"default: {self.source}{note}{how}")


HOROWITZ = "Horowitz ISSCC 2014 (45 nm)"
DEFAULTS: dict[str, Default] = {
    "fp32_mult_pj": Default(3.7, 45, "energy", f"FP32 multiply 3.7 pJ, {HOROWITZ}"),
    "fp32_add_pj": Default(0.9, 45, "energy", f"FP32 add 0.9 pJ, {HOROWITZ}"),
    "int32_add_pj": Default(0.1, 45, "energy", f"int32 add 0.1 pJ, {HOROWITZ}"),
    "sram_pj_per_byte": Default(10.0 / 8, 45, "energy",
                                f"8 KB SRAM 64-bit read ~10 pJ = 1.25 pJ/byte, {HOROWITZ}"),
    "adc_8b_pj": Default(0.36, 14, "energy", "Murmann ADC survey fit, 14 nm, <=1 GS/s: "
                                             "6 b 0.23, 8 b 0.36, 10 b 0.7 pJ"),
    "adc_area_um2": Default(1200.0, 32, "area", "ISAAC (ISCA 2016) 8-bit 1.28 GS/s ADC, "
                                                "1200 um2 at 32 nm"),
    "adc_leak_mw": Default(0.0, None, "other", "assumed 0 (converter power is per conversion)"),
    "wire_pj_per_bit_mm": Default(0.1, None, "energy", "interconnect ~0.1 pJ/bit/mm full swing"),
    "sram_area_um2_per_kib": Default(8192 * 0.08 * 1.5, 14, "area",
                                     "derived: 6T cell ~0.08 um2 at 14 nm x 1.5 for periphery"),
    "sram_leak_mw_per_kib": Default(0.01, None, "other",
                                    "estimate: ~10 uW per KiB of SRAM (no published figure used)"),
    "pcm_cell_area_um2": Default(0.05, 14, "area",
                                 "estimate: ~50F^2-class PCM cell with access transistor at 14 nm"),
    "dac_pj_per_row": Default(0.05, 14, "energy",
                              "estimate: one PWM word-line driver pulse (no published figure used)"),
    "dac_area_um2_per_row": Default(5.0, 14, "area", "estimate: PWM row driver + input latch"),
    "mac_area_um2": Default(10000.0, 45, "area",
                            "estimate: FP32 fused multiply-add ~0.01 mm2 at 45 nm"),
    "router_area_um2": Default(5000.0, 14, "area", "estimate: 5-port mesh router at 14 nm"),
    "tile_leak_mw": Default(0.1, None, "other", "estimate: tile periphery leakage 0.1 mW"),
    "unit_leak_mw": Default(1.0, None, "other", "estimate: digital unit leakage 1 mW"),
}


def adc_energy_default(bits: int) -> Default:
    """Murmann-survey points interpolated log-linearly in bits (6 b 0.23, 8 b 0.36, 10 b 0.7 pJ)."""
    points = {6: 0.23, 8: 0.36, 10: 0.7}
    lo = 6 if bits <= 8 else 8
    hi = lo + 2
    t = (bits - lo) / 2
    value = math.exp(math.log(points[lo]) * (1 - t) + math.log(points[hi]) * t)
    return Default(value, 14, "energy", f"Murmann ADC survey fit at 14 nm, {bits}-bit "
                                        "(interpolated from 6 b 0.23 / 8 b 0.36 / 10 b 0.7 pJ)")


@dataclass(frozen=True)
class Component:
    """One kind of hardware block: ``count`` copies on the chip, each with this area and leakage."""
    name: str
    count: int
    area_um2: Figure                                     # each
    leakage_mw: Figure                                   # each
    energy_pj: Mapping[str, Figure] = field(default_factory=dict)   # per action
    latency_ns: Mapping[str, Figure] = field(default_factory=dict)  # per action

    @property
    def total_area_um2(self) -> float:
        return self.count * self.area_um2.value

    @property
    def total_leakage_mw(self) -> float:
        return self.count * self.leakage_mw.value


def _pick(chip: ChipConfig, yaml_path: str, value: float | None, default: Figure) -> Figure:
    if value is None:
        return default
    return Figure(float(value), chip.source_of(yaml_path) or f"{chip.file}: {yaml_path}")


def _given(chip: ChipConfig, yaml_path: str, value: float) -> Figure:
    return Figure(float(value), chip.source_of(yaml_path) or f"default of {yaml_path}")


def integration_time_ns(chip: ChipConfig) -> float:
    """Duration of one MVM's input phase: PWM phases x (2^(bits-1) - 1) x t_lsb, or bits x read."""
    t = chip.chip.tiles
    if t.dac.encoding == "pwm":
        return t.dac.phases * (2 ** (t.dac.bits - 1) - 1) * t.dac.t_lsb_ns
    return t.dac.bits * t.array.read_time_ns


def chip_components(chip: ChipConfig) -> dict[str, Component]:
    """Every component of the chip with resolved figures (YAML first, else scaled defaults)."""
    c = chip.chip
    t = c.tiles
    node = c.technology_nm
    n_tiles = t.count
    n_arrays = t.count * t.arrays_per_tile
    p = "chip.tiles"
    fp32_mac = Figure(DEFAULTS["fp32_mult_pj"].at(node).value + DEFAULTS["fp32_add_pj"].at(node).value,
                      "default: FP32 mult 3.7 + add 0.9 pJ, " + HOROWITZ +
                      f", scaled 45->{node:g} nm x{(node / 45) ** ENERGY_NODE_EXPONENT:.3g}")
    sram_byte = DEFAULTS["sram_pj_per_byte"].at(node)
    t_int = integration_time_ns(chip)

    # PCM array: devices x V^2 x G_mean x mean pulse time (half of the PWM window on average)
    devices = t.array.rows * t.array.cols * (t.array.devices_per_weight
                                             if t.array.pair_layout == "unit-cell" else 1)
    g_mean_s = c.device.g_max_us * 1e-6 / 4
    per_device_fj = c.device.read_voltage_v ** 2 * g_mean_s * (t_int / 2) * 1e-9 * 1e15
    device_read = _pick(chip, f"{p}.array.energy_fj_per_device_read", t.array.energy_fj_per_device_read,
                        Figure(per_device_fj, "derived: V_read^2 x g_max/4 x half the integration "
                                              "window per device"))
    array_area = _pick(chip, f"{p}.array.area_um2", t.array.area_um2,
                       DEFAULTS["pcm_cell_area_um2"].at(node, devices, f" x {devices} devices"))
    comps = {
        "pcm_array": Component(
            "pcm_array", n_arrays, array_area, Figure(0.0, "PCM devices do not leak"),
            {"mvm": Figure(device_read.value * devices / 1000,
                           f"{devices} devices x {device_read.value:.4g} fJ ({device_read.source})")},
            {"mvm": Figure(t_int, "derived: integration time (chip.tiles.dac)")}),
        "dac": Component(
            "dac", n_tiles * t.array.rows,
            _pick(chip, f"{p}.dac.area_um2_per_row", t.dac.area_um2_per_row,
                  DEFAULTS["dac_area_um2_per_row"].at(node)),
            Figure(0.0, "included in tile leakage"),
            {"drive": _pick(chip, f"{p}.dac.energy_pj_per_row", t.dac.energy_pj_per_row,
                            DEFAULTS["dac_pj_per_row"].at(node))},
            {"drive": Figure(t_int, "derived: integration time")}),
        "adc": Component(
            "adc", n_tiles * t.adc.per_tile,
            _pick(chip, f"{p}.adc.area_um2", t.adc.area_um2, DEFAULTS["adc_area_um2"].at(node)),
            DEFAULTS["adc_leak_mw"].at(node),
            {"conversion": _pick(chip, f"{p}.adc.energy_pj", t.adc.energy_pj,
                                 adc_energy_default(t.adc.bits).at(node))},
            {"conversion": _given(chip, f"{p}.adc.conversion_ns", t.adc.conversion_ns)}),
        "affine": Component(
            "affine", n_tiles,
            _pick(chip, f"{p}.affine.area_um2", t.affine.area_um2,
                  DEFAULTS["mac_area_um2"].at(node, t.affine.lanes, f" x {t.affine.lanes} lanes")),
            Figure(0.0, "included in tile leakage"),
            {"op": _pick(chip, f"{p}.affine.energy_pj_per_op", t.affine.energy_pj_per_op, fp32_mac)},
            {"op": Figure(c.clock_ns, "one clock per lane operation")}),
        "tile_buffer": Component(
            "tile_buffer", n_tiles,
            _pick(chip, f"{p}.buffer.area_um2", t.buffer.area_um2,
                  DEFAULTS["sram_area_um2_per_kib"].at(node, t.buffer.kib, f" x {t.buffer.kib:g} KiB")),
            DEFAULTS["sram_leak_mw_per_kib"].at(node, t.buffer.kib, f" x {t.buffer.kib:g} KiB"),
            {"byte": _pick(chip, f"{p}.buffer.energy_pj_per_byte", t.buffer.energy_pj_per_byte,
                           sram_byte)},
            {"byte": Figure(c.clock_ns / t.buffer.bytes_per_cycle, "1 / chip.tiles.buffer.bytes_per_cycle")}),
        "tile_periphery": Component(
            "tile_periphery", n_tiles, Figure(0.0, "counted in its parts"),
            _pick(chip, f"{p}.leakage_mw", t.leakage_mw, DEFAULTS["tile_leak_mw"].at(node)), {}, {}),
        "accumulator": Component(
            "accumulator", n_tiles, Figure(0.0, "part of the affine unit"),
            Figure(0.0, "included in tile leakage"),
            {"add": Figure(DEFAULTS["fp32_add_pj"].at(node).value,
                           DEFAULTS["fp32_add_pj"].at(node).source)},
            {"add": Figure(c.clock_ns, "one clock per lane operation")}),
    }
    d = c.digital
    macs = d.units * d.systolic.rows * d.systolic.cols
    comps["digital_mac"] = Component(
        "digital_mac", macs,
        _pick(chip, "chip.digital.mac_area_um2", d.mac_area_um2, DEFAULTS["mac_area_um2"].at(node)),
        Figure(0.0, "included in unit leakage"),
        {"mac": _pick(chip, "chip.digital.mac_energy_pj", d.mac_energy_pj, fp32_mac)},
        {"mac": Figure(c.clock_ns, "one MAC per PE per clock")})
    comps["digital_unit"] = Component(
        "digital_unit", d.units, Figure(0.0, "counted in its parts"),
        _pick(chip, "chip.digital.leakage_mw", d.leakage_mw, DEFAULTS["unit_leak_mw"].at(node)), {}, {})
    sram_per_kib = _pick(chip, "chip.digital.sram.area_um2_per_kib", d.sram.area_um2_per_kib,
                         DEFAULTS["sram_area_um2_per_kib"].at(node))
    comps["sram"] = Component(
        "sram", d.units,
        Figure(sram_per_kib.value * d.sram.kib, f"{d.sram.kib:g} KiB x {sram_per_kib.source}"),
        DEFAULTS["sram_leak_mw_per_kib"].at(node, d.sram.kib, f" x {d.sram.kib:g} KiB"),
        {"byte": _pick(chip, "chip.digital.sram.energy_pj_per_byte", d.sram.energy_pj_per_byte,
                       sram_byte)},
        {"byte": Figure(c.clock_ns / d.sram.bytes_per_cycle, "1 / chip.digital.sram.bytes_per_cycle")})
    ic = c.interconnect
    wire = DEFAULTS["wire_pj_per_bit_mm"]
    comps["interconnect"] = Component(
        "interconnect", n_tiles + d.units,
        _pick(chip, "chip.interconnect.area_um2_per_router", ic.area_um2_per_router,
              DEFAULTS["router_area_um2"].at(node)),
        Figure(0.0, "assumed 0"),
        {"byte_hop": _pick(chip, "chip.interconnect.energy_pj_per_byte_hop", ic.energy_pj_per_byte_hop,
                           Figure(wire.value * 8 * ic.hop_length_mm,
                                  f"derived: {wire.source} x 8 bit x {ic.hop_length_mm:g} mm/hop"))},
        {"byte_hop": Figure(c.clock_ns * ic.hop_latency_cycles, "chip.interconnect.hop_latency_cycles")})
    return comps
