"""Hardware component models: per-action energy and latency, area and leakage of every component
of a chip, each figure with the place it came from.

A figure comes from the chip YAML when the field is set there (the source is the file, line and the
``# source:`` comment of that line), else from the default table below, scaled from the node it was
published at to the chip's ``technology_nm``:

- energy scales as (node / ref_node) ** ENERGY_NODE_EXPONENT, fitted so that 45 nm -> 14 nm gives
  the factor 0.14 of DESIGN.md section 9 (Horowitz ISSCC 2014 scaled);
- area scales as (node / ref_node) ** 2.

Actions (what the timing simulation counts, whole run) per component, and what one count means:

====================  =====================================================================
``pcm_array.mvm``     one MVM on one array (energy here: every device conducting; the accounting
                      scales it by the mapped share of the array's devices)
``dac.drive``         one row driven for one MVM (all its PWM phases / bit-serial steps)
``adc.conversion``    one column converted once (an MVM converts each column once per PWM phase
                      or bit-serial step: weight columns x steps)
``affine.op``         one column output scaled and offset (per-column affine, BatchNorm)
``tile_buffer.byte``  one byte read or written in a tile buffer
``digital_mac.mac``   one FP32 multiply-accumulate in a digital unit
``sram.byte``         one byte read or written in a digital unit's SRAM
``interconnect.byte_hop``  one byte moved over one mesh hop
``accumulator.add``   one digital addition (row-block partial sums, residual adds, pooling), in a
                      tile or next to a digital unit
====================  =====================================================================

``pcm_array.mvm`` and ``dac.drive`` are counted once per MVM whatever the number of PWM phases
(bit-serial steps): their energy carries the steps; ``adc.conversion`` is counted per step. The
analog path is thereby time-proportional, as measured on HERMES (the same ~6.5 W whether an MVM
takes one phase or four): the array energy is V_read^2 x G x the integration time (all phases),
the DAC energy is per row per step, the ADC energy per conversion (one column, one step), and
tile periphery leakage is power x simulated time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

from .config import ChipConfig
from .errors import ConfigError

ENERGY_NODE_EXPONENT = math.log(0.14) / math.log(14 / 45)    # ~1.68

ACTIONS = ("pcm_array.mvm", "dac.drive", "adc.conversion", "affine.op", "tile_buffer.byte",
           "digital_mac.mac", "sram.byte", "interconnect.byte_hop", "accumulator.add")

# The parts of one tile (a HERMES "core"): what the per-tile area roll-up sums.
TILE_PARTS = ("pcm_array", "dac", "adc", "affine", "tile_buffer")


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

# Horowitz ISSCC 2014, 45 nm: energy of one 64-bit SRAM (cache) read by capacity.
SRAM_64B_READ_PJ = {8: 10.0, 32: 20.0, 1024: 100.0}        # KiB -> pJ per 64-bit access
# Murmann ADC survey fit at 14 nm, <= 1 GS/s: pJ per conversion by resolution.
ADC_SURVEY_PJ = {6: 0.23, 8: 0.36, 10: 0.7}


def _loglog(points: Mapping[float, float], x: float) -> float:
    """Piecewise log-log interpolation through ``points`` (end segments extrapolated)."""
    xs = sorted(points)
    lo, hi = (xs[0], xs[1]) if x <= xs[1] else (xs[-2], xs[-1])
    for a, b in zip(xs, xs[1:]):
        if a <= x <= b:
            lo, hi = a, b
            break
    slope = math.log(points[hi] / points[lo]) / math.log(hi / lo)
    return points[lo] * (x / lo) ** slope


def sram_energy_default(kib: float) -> Default:
    """pJ per byte of an SRAM of ``kib`` KiB: Horowitz's 64-bit read energies 8 KB 10 pJ, 32 KB
    20 pJ, 1 MB 100 pJ (45 nm), interpolated log-log in capacity, / 8 bytes."""
    per_access = _loglog(SRAM_64B_READ_PJ, kib)
    return Default(per_access / 8, 45, "energy",
                   f"{HOROWITZ} 64-bit SRAM read 8 KB 10 / 32 KB 20 / 1 MB 100 pJ, log-log at "
                   f"{kib:g} KiB = {per_access:.3g} pJ / 8 bytes")


def adc_energy_default(bits: int, yaml_path: str = "chip.tiles.adc.energy_pj",
                       file: str | None = None) -> Default:
    """Murmann-survey points interpolated log-linearly in bits (6 b 0.23, 8 b 0.36, 10 b 0.7 pJ).
    The fit covers 6..10 bits only: outside it there is no default and the YAML must give one."""
    if not 6 <= bits <= 10:
        raise ConfigError(file, yaml_path, f"no default ADC energy for {bits}-bit converters (the "
                                           "Murmann-survey fit covers 6..10 bits); set it")
    lo = 6 if bits <= 8 else 8
    hi = lo + 2
    t = (bits - lo) / 2
    value = math.exp(math.log(ADC_SURVEY_PJ[lo]) * (1 - t) + math.log(ADC_SURVEY_PJ[hi]) * t)
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
    per_tile: int = 0                                    # copies in one tile (0: not a tile part)

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


def passes(chip: ChipConfig) -> int:
    """Array read passes per MVM: the PWM phases, or one per input bit when bit-serial."""
    dac = chip.chip.tiles.dac
    return dac.phases if dac.encoding == "pwm" else dac.bits


def devices_per_array(chip: ChipConfig) -> int:
    a = chip.chip.tiles.array
    return a.rows * a.cols * (a.devices_per_weight if a.pair_layout == "unit-cell" else 1)


def full_mvm_actions(chip: ChipConfig) -> dict[str, int]:
    """Action counts of one full-size MVM on one array (every row driven, every weight column
    converted once per step and scaled, inputs read from and outputs written to the tile buffer at the DAC/ADC
    width): what :func:`archsim.accounting.peak_efficiency` charges per MVM."""
    t = chip.chip.tiles
    cols = t.array.weight_cols
    return {"pcm_array.mvm": 1, "dac.drive": t.array.rows, "adc.conversion": cols * passes(chip),
            "affine.op": cols,
            "tile_buffer.byte": t.array.rows * math.ceil(t.dac.bits / 8)
            + cols * math.ceil(t.adc.bits / 8)}


def chip_components(chip: ChipConfig) -> dict[str, Component]:
    """Every component of the chip with resolved figures (YAML first, else scaled defaults).
    Raises ConfigError (naming the YAML path) for a figure that has no default."""
    c = chip.chip
    t = c.tiles
    node = c.technology_nm
    n_tiles = t.count
    n_arrays = t.count * t.arrays_per_tile
    p = "chip.tiles"
    k = passes(chip)
    per_pass = f" x {k} {'phases' if t.dac.encoding == 'pwm' else 'bit-serial steps'}"
    fp32_mac = Figure(DEFAULTS["fp32_mult_pj"].at(node).value + DEFAULTS["fp32_add_pj"].at(node).value,
                      "default: FP32 mult 3.7 + add 0.9 pJ, " + HOROWITZ +
                      f", scaled 45->{node:g} nm x{(node / 45) ** ENERGY_NODE_EXPONENT:.3g}")
    t_int = integration_time_ns(chip)

    # PCM array: devices x V^2 x mean G (g_max/4) x mean pulse (half the PWM window): the array
    # conducts for the integration time, so its energy is proportional to it (phases included).
    devices = devices_per_array(chip)
    if t.array.energy_fj_per_device_read is None:
        g_mean_s = c.device.g_max_us * 1e-6 / 4
        per_device_fj = c.device.read_voltage_v ** 2 * g_mean_s * (t_int / 2) * 1e-9 * 1e15
        device_read = Figure(per_device_fj,
                             f"derived: V_read^2 ({c.device.read_voltage_v:g} V) x g_max/4 "
                             f"({c.device.g_max_us:g}/4 uS) x half the {t_int:g} ns integration "
                             "window, per device")
    else:
        given = _pick(chip, f"{p}.array.energy_fj_per_device_read",
                      t.array.energy_fj_per_device_read, Figure(0.0, ""))
        device_read = Figure(given.value * k, f"{given.source}{per_pass}")
    array_area = _pick(chip, f"{p}.array.area_um2", t.array.area_um2,
                       DEFAULTS["pcm_cell_area_um2"].at(node, devices, f" x {devices} devices"))

    dac_row = _pick(chip, f"{p}.dac.energy_pj_per_row", t.dac.energy_pj_per_row,
                    DEFAULTS["dac_pj_per_row"].at(node))
    if t.adc.energy_pj is not None:
        adc_conv = _given(chip, f"{p}.adc.energy_pj", t.adc.energy_pj)
    elif n_tiles == 0:
        adc_conv = Figure(0.0, "no analog tiles (chip.tiles.count: 0)")
    else:
        adc_conv = adc_energy_default(t.adc.bits, f"{p}.adc.energy_pj", chip.file).at(node)
    buffer_byte = _pick(chip, f"{p}.buffer.energy_pj_per_byte", t.buffer.energy_pj_per_byte,
                        sram_energy_default(t.buffer.kib).at(node))
    comps = {
        "pcm_array": Component(
            "pcm_array", n_arrays, array_area, Figure(0.0, "PCM devices do not leak"),
            {"mvm": Figure(device_read.value * devices / 1000,
                           f"{devices} devices x {device_read.value:.4g} fJ ({device_read.source})")},
            {"mvm": Figure(t_int, "derived: integration time (chip.tiles.dac)")},
            per_tile=t.arrays_per_tile),
        "dac": Component(
            "dac", n_tiles * t.array.rows,
            _pick(chip, f"{p}.dac.area_um2_per_row", t.dac.area_um2_per_row,
                  DEFAULTS["dac_area_um2_per_row"].at(node)),
            Figure(0.0, "included in tile leakage"),
            {"drive": Figure(dac_row.value * k, f"{dac_row.source}{per_pass}")},
            {"drive": Figure(t_int, "derived: integration time")},
            per_tile=t.array.rows),
        "adc": Component(
            "adc", n_tiles * t.adc.per_tile,
            _pick(chip, f"{p}.adc.area_um2", t.adc.area_um2, DEFAULTS["adc_area_um2"].at(node)),
            DEFAULTS["adc_leak_mw"].at(node),
            {"conversion": adc_conv},
            {"conversion": _given(chip, f"{p}.adc.conversion_ns", t.adc.conversion_ns)},
            per_tile=t.adc.per_tile),
        "affine": Component(
            "affine", n_tiles,
            _pick(chip, f"{p}.affine.area_um2", t.affine.area_um2,
                  DEFAULTS["mac_area_um2"].at(node, t.affine.lanes, f" x {t.affine.lanes} lanes")),
            Figure(0.0, "included in tile leakage"),
            {"op": _pick(chip, f"{p}.affine.energy_pj_per_op", t.affine.energy_pj_per_op, fp32_mac)},
            {"op": Figure(c.clock_ns, "one clock per lane operation")},
            per_tile=1),
        "tile_buffer": Component(
            "tile_buffer", n_tiles,
            _pick(chip, f"{p}.buffer.area_um2", t.buffer.area_um2,
                  DEFAULTS["sram_area_um2_per_kib"].at(node, t.buffer.kib, f" x {t.buffer.kib:g} KiB")),
            DEFAULTS["sram_leak_mw_per_kib"].at(node, t.buffer.kib, f" x {t.buffer.kib:g} KiB"),
            {"byte": buffer_byte},
            {"byte": Figure(c.clock_ns / t.buffer.bytes_per_cycle, "1 / chip.tiles.buffer.bytes_per_cycle")},
            per_tile=1),
        "tile_periphery": Component(
            "tile_periphery", n_tiles, Figure(0.0, "counted in its parts"),
            _pick(chip, f"{p}.leakage_mw", t.leakage_mw, DEFAULTS["tile_leak_mw"].at(node)), {}, {},
            per_tile=1),
        "accumulator": Component(
            "accumulator", n_tiles + c.digital.units, Figure(0.0, "part of the affine unit"),
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
                       sram_energy_default(d.sram.kib).at(node))},
        {"byte": Figure(c.clock_ns / d.sram.bytes_per_cycle, "1 / chip.digital.sram.bytes_per_cycle")})
    ic = c.interconnect
    wire = DEFAULTS["wire_pj_per_bit_mm"]
    if ic.energy_pj_per_byte_hop is None and ic.hop_length_mm == 0:
        raise ConfigError(chip.file, "chip.interconnect.energy_pj_per_byte_hop",
                          "no default with chip.interconnect.hop_length_mm: 0 (the default is "
                          "derived from the wire length per hop); set it")
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


def action_energy_pj(comps: Mapping[str, Component], action: str) -> Figure:
    """The energy of one ``component.action``; an unknown name raises ValueError (a bug in the
    counting side, not a user error)."""
    comp, _, act = action.partition(".")
    if comp not in comps or act not in comps[comp].energy_pj:
        known = ", ".join(f"{n}.{a}" for n, c in comps.items() for a in c.energy_pj)
        raise ValueError(f"unknown action {action!r} (known: {known})")
    return comps[comp].energy_pj[act]
