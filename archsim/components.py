"""Hardware component models: one object per hardware part, answering per action its energy and its
latency (each with its source), plus its area and leakage power.

The timing simulation asks these objects for latencies (:mod:`archsim.timing`), the accounting for
energies (:mod:`archsim.accounting`): one model of each part for time and energy.

A figure comes from the chip YAML when the field is set there (the source is the file, line and the
``# source:`` comment of that line), else from the default table below, scaled from the node it was
published at to the chip's ``technology_nm``:

- energy scales as (node / ref_node) ** ENERGY_NODE_EXPONENT, fitted so that 45 nm -> 14 nm gives
  the factor 0.14 of DESIGN.md section 9 (Horowitz ISSCC 2014 scaled);
- area scales as (node / ref_node) ** 2.

Parts and their actions (what the timing simulation counts) and what one count means:

=====================  ===================================================================
``pcm_array.mvm``      one MVM on one array (energy here: every device conducting; the accounting
                       scales it by the mapped share of the array's devices)
``dac.drive``          one row driven for one MVM (all its PWM phases / bit-serial steps)
``adc.conversion``     one column converted once (an MVM converts each column once per PWM phase
                       or bit-serial step: weight columns x steps)
``affine.op``          one column output scaled and offset (per-column affine, BatchNorm)
``tile_buffer.byte``   one byte read or written in a tile buffer
``digital_mac.mac``    one FP32 multiply-accumulate in a digital unit
``sram.byte``          one byte read or written in a digital unit's SRAM
``interconnect.byte_hop``  one byte moved over one mesh hop
``accumulator.add``    one digital addition (row-block partial sums, residual adds, pooling), in a
                       tile or next to a digital unit
=====================  ===================================================================

``pcm_array.mvm`` and ``dac.drive`` are counted once per MVM whatever the number of PWM phases
(bit-serial steps): their energy carries the steps; ``adc.conversion`` is counted per step. The
analog path is thereby time-proportional, as measured on HERMES (the same ~6.5 W whether an MVM
takes one phase or four): the array energy is V_read^2 x G x the integration time (all phases),
the DAC energy is per row per step, the ADC energy per conversion (one column, one step), and
tile periphery leakage is power x time.

Latencies (what :mod:`archsim.timing` reads): the DAC's integration step (PWM: (2^(bits-1) - 1) x
t_lsb; bit-serial: one array read) and its number of steps, computed once in :class:`DacBank`; the
ADC bank's conversion time and sharing (``ceil(columns / ADCs)`` conversions in sequence); buffer,
SRAM and link bandwidths in bytes per cycle; the affine and vector lanes; the systolic array's
SCALE-Sim cycle counts; the interconnect's hop latency.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping

from .config import ChipConfig
from .errors import ConfigError

ENERGY_NODE_EXPONENT = math.log(0.14) / math.log(14 / 45)    # ~1.68
FP32_BYTES = 4

ACTIONS = ("pcm_array.mvm", "dac.drive", "adc.conversion", "affine.op", "tile_buffer.byte",
           "digital_mac.mac", "sram.byte", "interconnect.byte_hop", "accumulator.add")

# The parts of one tile (a HERMES "core"): what the per-tile area roll-up sums.
TILE_PARTS = ("pcm_array", "dac", "adc", "affine", "tile_buffer")
# Everything whose leakage belongs to a tile (power gating switches these off together).
TILE_LEAKERS = (*TILE_PARTS, "tile_periphery")


def ns_to_cycles(ns: float, clock_ns: float) -> int:
    """Whole cycles covering ``ns`` (a sub-cycle duration still takes one cycle)."""
    if ns <= 0:
        return 0
    return max(1, math.ceil(ns / clock_ns - 1e-9))


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
    "adc_leak_mw": Default(0.0, None, "other", "assumed 0 (converter power is per conversion)"),
    "wire_pj_per_bit_mm": Default(0.1, None, "energy", "interconnect ~0.1 pJ/bit/mm full swing"),
    "sram_area_um2_per_kib": Default(8192 * 0.08 * 1.5, 14, "area",
                                     "derived: 6T cell ~0.08 um2 at 14 nm x 1.5 for periphery"),
    "sram_leak_mw_per_kib": Default(0.01, None, "other",
                                    "estimate: ~10 uW per KiB of SRAM (no published figure used)"),
    "dac_pj_per_row": Default(0.05, 14, "energy",
                              "estimate: one PWM word-line driver pulse (no published figure used)"),
    "dac_area_um2_per_row": Default(5.0, 14, "area", "estimate: PWM row driver + input latch"),
    "mac_area_um2": Default(10000.0, 45, "area",
                            "estimate: FP32 fused multiply-add ~0.01 mm2 at 45 nm"),
    "affine_lane_area_um2": Default(10000.0, 45, "area",
                                    "estimate: one FP32-class multiply-add lane ~0.01 mm2 at 45 nm "
                                    "(within the HERMES core's per-column budget, see "
                                    "archsim/components.py AffineUnit)"),
    "router_area_um2": Default(5000.0, 14, "area", "estimate: 5-port mesh router at 14 nm"),
    "tile_leak_mw": Default(0.1, None, "other", "estimate: tile periphery leakage 0.1 mW"),
    "unit_leak_mw": Default(1.0, None, "other", "estimate: digital unit leakage 1 mW"),
}

WAKE_UP_SOURCE = ("default of chip.tiles.wake_up_ns: estimate, 100 ns; power-gated blocks wake in "
                  "tens of ns (fine-grained) to microseconds (whole cores), limited by the in-rush "
                  "current through the sleep transistors; no published figure for a PCM tile used")

# Horowitz ISSCC 2014, 45 nm: energy of one 64-bit SRAM (cache) read by capacity.
SRAM_64B_READ_PJ = {8: 10.0, 32: 20.0, 1024: 100.0}        # KiB -> pJ per 64-bit access

# ADC defaults fitted to B. Murmann, "ADC Performance Survey 1997-2025" (github.com/bmurmann/
# ADC-survey, rev. 2025-06-09, ISSCC + VLSI sheets, 738 designs) by benchmarks/fit_adc_survey.py:
# - energy: the Walden figure of merit at the survey's frontier for the sample rate, i.e. the mean
#   of log10 FOMW_hf of the 5 best designs in each decade of speed (1 MS/s .. 10 GS/s), fitted as
#   log10(FOMW / fJ) = a + b log10(fs / Hz); E = FOMW(fs) x 2^bits (ENOB taken = bits). The
#   frontier designs are in 5-65 nm (median 28 nm): at or below 28 nm the figure is used as is
#   (scaling it further would claim better than any measured converter), above it scaled up with
#   ENERGY_NODE_EXPONENT.
# - area: least squares of log10(area) on ENOB, log10 fs and log10 node over the 286 designs with a
#   reported area, SNDR <= 62 dB and fs >= 1 MS/s, the intercept at the 5th percentile of the
#   residuals (the smallest ~5% of designs for their resolution, speed and node).
# For an 8-bit ADC at 14 nm: 1 GS/s 2.14 pJ and 1640 um2; 13 MS/s (HERMES' 76.8 ns) 0.80 pJ and
# 220 um2. HERMES' silicon-calibrated 43.8 pJ per column conversion (configs/hermes.yaml) is 55x
# the frontier figure at its speed: it is what a whole core draws per column conversion (CCO,
# counter, column read-out, and whatever core periphery the model does not list separately), not a
# frontier stand-alone converter.
ADC_SURVEY = "Murmann ADC Performance Survey 1997-2025 (rev. 2025-06-09)"
ADC_FOMW_FIT = (-1.1115, 0.2260)               # log10(FOMW / fJ) = a + b log10(fs / Hz)
ADC_AREA_FIT = (-4.1739, 0.1646, 0.4605, 1.6818)   # log10(area / um2) = c0 + c1 bits
#                                                     + c2 log10(fs / Hz) + c3 log10(node / nm)
ADC_FRONTIER_NODE_NM = 28.0
ADC_MODEL_BITS = (4, 12)                       # Walden FOM regime (energy ~ 2^bits)
ADC_MODEL_RATE_HZ = (1e6, 1e11)                # the decades the frontier was fitted on

PCM_CELL_F2 = 50.0                             # 1T1R PCM cell, in F^2


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


def _adc_model_range(bits: int, rate_hz: float, yaml_path: str, file: str | None) -> None:
    lo, hi = ADC_MODEL_BITS
    if not lo <= bits <= hi or not ADC_MODEL_RATE_HZ[0] <= rate_hz <= ADC_MODEL_RATE_HZ[1]:
        raise ConfigError(file, yaml_path, f"no default for a {bits}-bit ADC at "
                                           f"{rate_hz / 1e6:.4g} MS/s (the survey fit covers "
                                           f"{lo}..{hi} bits at 1 MS/s..100 GS/s); set it")


def adc_frontier_fomw_fj(rate_hz: float) -> float:
    """Walden figure of merit (fJ per conversion step) at the survey frontier for ``rate_hz``."""
    a, b = ADC_FOMW_FIT
    return 10 ** (a + b * math.log10(rate_hz))


def adc_energy_model(bits: int, rate_hz: float, node_nm: float,
                     yaml_path: str = "chip.tiles.adc.energy_pj", file: str | None = None) -> Figure:
    """pJ per conversion: FOMW at the survey frontier for the sample rate x 2^bits, scaled up for
    nodes coarser than the frontier designs' (28 nm)."""
    _adc_model_range(bits, rate_hz, yaml_path, file)
    fomw = adc_frontier_fomw_fj(rate_hz)
    scale = max(1.0, (node_nm / ADC_FRONTIER_NODE_NM) ** ENERGY_NODE_EXPONENT)
    how = "" if scale == 1.0 else f", scaled {ADC_FRONTIER_NODE_NM:g}->{node_nm:g} nm x{scale:.3g}"
    a, b = ADC_FOMW_FIT
    return Figure(fomw * 2 ** bits * 1e-3 * scale,
                  f"default: {ADC_SURVEY}, Walden-FOM frontier at {rate_hz / 1e6:.4g} MS/s "
                  f"(10^({a:g} + {b:g} log10 fs) = {fomw:.3g} fJ/step, 5 best designs per decade "
                  f"of speed, benchmarks/fit_adc_survey.py) x 2^{bits}{how}")


def adc_area_model(bits: int, rate_hz: float, node_nm: float,
                   yaml_path: str = "chip.tiles.adc.area_um2", file: str | None = None) -> Figure:
    """um2 of one ADC: survey regression on bits, sample rate and node at its 5th percentile."""
    _adc_model_range(bits, rate_hz, yaml_path, file)
    c0, c1, c2, c3 = ADC_AREA_FIT
    value = 10 ** (c0 + c1 * bits + c2 * math.log10(rate_hz) + c3 * math.log10(node_nm))
    return Figure(value, f"default: {ADC_SURVEY}, area fit 10^({c0:g} + {c1:g} bits + {c2:g} "
                         f"log10 fs + {c3:g} log10 node) at {bits} b, {rate_hz / 1e6:.4g} MS/s, "
                         f"{node_nm:g} nm (5th percentile of 286 designs, "
                         "benchmarks/fit_adc_survey.py)")


def pcm_cell_area(node_nm: float, devices: int) -> Figure:
    f_um = node_nm * 1e-3
    cell = PCM_CELL_F2 * f_um ** 2
    return Figure(cell * devices,
                  f"default: estimate, 1T1R PCM cell of {PCM_CELL_F2:g} F^2 at F = {node_nm:g} nm "
                  f"({cell:.4g} um2; a MOSFET access device sized for the RESET current is larger "
                  f"than diode-selected ~4-6 F^2 cells; not a published figure for this process) "
                  f"x {devices} devices")


# --------------------------------------------------------------------------------------------
# Resolved figures: what the accounting and the report read
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Component:
    """One kind of hardware block with resolved figures: ``count`` copies on the chip, each with
    this area and leakage, and per action its energy and latency."""
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


@dataclass(frozen=True)
class Action:
    """The cost of one action of a part: its latency, and its energy (resolved on demand: a figure
    without a default raises ConfigError only when the energy is asked for, never for timing)."""
    latency_ns: Figure
    energy: Callable[[], Figure] = field(repr=False, compare=False)

    @property
    def energy_pj(self) -> Figure:
        return self.energy()


# --------------------------------------------------------------------------------------------
# The parts
# --------------------------------------------------------------------------------------------

class Part:
    """One kind of hardware part: ``count`` copies on the chip (``per_tile`` of them in each tile),
    one method per action returning an :class:`Action`, plus area and leakage power (each copy)."""
    name = "part"
    actions: tuple[str, ...] = ()

    def __init__(self, chip: ChipConfig, count: int, per_tile: int = 0):
        self.chip = chip
        self.node = chip.chip.technology_nm
        self.clock_ns = chip.chip.clock_ns
        self.count = count
        self.per_tile = per_tile

    def action(self, name: str) -> Action:
        return getattr(self, name)()

    def area_um2(self) -> Figure:
        raise NotImplementedError

    def leakage_mw(self) -> Figure:
        raise NotImplementedError

    def resolved(self) -> Component:
        """Every figure resolved (raises ConfigError, naming the YAML path, for one without a
        default)."""
        acts = {a: self.action(a) for a in self.actions}
        return Component(self.name, self.count, self.area_um2(), self.leakage_mw(),
                         {a: act.energy_pj for a, act in acts.items()},
                         {a: act.latency_ns for a, act in acts.items()}, per_tile=self.per_tile)

    # helpers
    def _yaml(self, yaml_path: str, value: float | None, default: Callable[[], Figure]) -> Figure:
        """The YAML figure when given, else the default (built only when needed)."""
        if value is None:
            return default()
        return Figure(float(value), self.chip.source_of(yaml_path) or f"{self.chip.file}: {yaml_path}")

    def _given(self, yaml_path: str, value: float) -> Figure:
        return Figure(float(value), self.chip.source_of(yaml_path) or f"default of {yaml_path}")

    def _clock(self, note: str) -> Figure:
        return Figure(self.clock_ns, note)

    def _fp32_mac(self) -> Figure:
        node = self.node
        return Figure(DEFAULTS["fp32_mult_pj"].at(node).value + DEFAULTS["fp32_add_pj"].at(node).value,
                      "default: FP32 mult 3.7 + add 0.9 pJ, " + HOROWITZ +
                      f", scaled 45->{node:g} nm x{(node / 45) ** ENERGY_NODE_EXPONENT:.3g}")


class DacBank(Part):
    """The PWM (or bit-serial) row drivers of a tile, one per array row. Owns the integration
    window: ``steps`` input steps (PWM phases, or input bits when bit-serial) of ``step_ns`` each."""
    name = "dac"
    actions = ("drive",)

    def __init__(self, chip: ChipConfig, count: int, per_tile: int):
        super().__init__(chip, count, per_tile)
        t = chip.chip.tiles
        self.cfg = t.dac
        self.pwm = t.dac.encoding == "pwm"
        self.steps = t.dac.phases if self.pwm else t.dac.bits
        if self.pwm:
            self.step = Figure((2 ** (t.dac.bits - 1) - 1) * t.dac.t_lsb_ns,
                               f"derived: PWM (2^({t.dac.bits}-1) - 1) x t_lsb "
                               f"{t.dac.t_lsb_ns:g} ns (chip.tiles.dac)")
        else:
            self.step = Figure(t.array.read_time_ns, "chip.tiles.array.read_time_ns "
                                                     "(one bit-serial read)")

    @property
    def step_label(self) -> str:
        return "phases" if self.pwm else "bit-serial steps"

    @property
    def integration_ns(self) -> float:
        """One MVM's whole input phase: steps x step."""
        return self.steps * self.step.value

    def step_cycles(self) -> int:
        """Cycles of one integration step."""
        return ns_to_cycles(self.step.value, self.clock_ns)

    def drive(self) -> Action:
        def energy() -> Figure:
            row = self._yaml("chip.tiles.dac.energy_pj_per_row", self.cfg.energy_pj_per_row,
                             lambda: DEFAULTS["dac_pj_per_row"].at(self.node))
            return Figure(row.value * self.steps, f"{row.source} x {self.steps} {self.step_label}")
        return Action(Figure(self.integration_ns, f"derived: {self.steps} x {self.step.source}"),
                      energy)

    def area_um2(self) -> Figure:
        return self._yaml("chip.tiles.dac.area_um2_per_row", self.cfg.area_um2_per_row,
                          lambda: DEFAULTS["dac_area_um2_per_row"].at(self.node))

    def leakage_mw(self) -> Figure:
        return Figure(0.0, "included in tile leakage")


class PcmArray(Part):
    """One crossbar array of PCM devices; an MVM conducts for the DAC's integration window."""
    name = "pcm_array"
    actions = ("mvm",)

    def __init__(self, chip: ChipConfig, count: int, per_tile: int, dac: DacBank):
        super().__init__(chip, count, per_tile)
        self.cfg = chip.chip.tiles.array
        self.dac = dac
        a = self.cfg
        self.devices = a.rows * a.cols * (a.devices_per_weight if a.pair_layout == "unit-cell" else 1)

    def mvm(self) -> Action:
        c = self.chip.chip
        t_int = self.dac.integration_ns

        def energy() -> Figure:
            # devices x V^2 x mean G (g_max/4) x mean pulse (half the PWM window): the array
            # conducts for the integration time, so its energy is proportional to it (phases too)
            if self.cfg.energy_fj_per_device_read is None:
                g_mean_s = c.device.g_max_us * 1e-6 / 4
                per_device_fj = c.device.read_voltage_v ** 2 * g_mean_s * (t_int / 2) * 1e-9 * 1e15
                read = Figure(per_device_fj,
                              f"derived: V_read^2 ({c.device.read_voltage_v:g} V) x g_max/4 "
                              f"({c.device.g_max_us:g}/4 uS) x half the {t_int:g} ns integration "
                              "window, per device")
            else:
                given = self._yaml("chip.tiles.array.energy_fj_per_device_read",
                                   self.cfg.energy_fj_per_device_read, lambda: Figure(0.0, ""))
                read = Figure(given.value * self.dac.steps,
                              f"{given.source} x {self.dac.steps} {self.dac.step_label}")
            return Figure(read.value * self.devices / 1000,
                          f"{self.devices} devices x {read.value:.4g} fJ ({read.source})")
        return Action(Figure(t_int, "derived: integration time (chip.tiles.dac)"), energy)

    def area_um2(self) -> Figure:
        return self._yaml("chip.tiles.array.area_um2", self.cfg.area_um2,
                          lambda: pcm_cell_area(self.node, self.devices))

    def leakage_mw(self) -> Figure:
        return Figure(0.0, "PCM devices do not leak")


class AdcBank(Part):
    """The ADCs of a tile (``per_tile`` of them), shared among the converted columns."""
    name = "adc"
    actions = ("conversion",)

    def __init__(self, chip: ChipConfig, count: int, per_tile: int):
        super().__init__(chip, count, per_tile)
        self.cfg = chip.chip.tiles.adc

    def conversion(self) -> Action:
        def energy() -> Figure:
            if self.cfg.energy_pj is not None:
                return self._given("chip.tiles.adc.energy_pj", self.cfg.energy_pj)
            if self.count == 0:
                return Figure(0.0, "no analog tiles (chip.tiles.count: 0)")
            return adc_energy_model(self.cfg.bits, self.sample_rate_hz, self.node,
                                    "chip.tiles.adc.energy_pj", self.chip.origin)
        return Action(self._given("chip.tiles.adc.conversion_ns", self.cfg.conversion_ns), energy)

    @property
    def sample_rate_hz(self) -> float:
        """Conversions per second of one ADC: 1 / conversion_ns."""
        return 1e9 / self.cfg.conversion_ns

    def convert_cycles(self, columns: int) -> int:
        """Cycles to convert ``columns`` columns once: ceil(columns / ADCs) conversions in turn."""
        return math.ceil(columns / self.per_tile) * ns_to_cycles(self.cfg.conversion_ns,
                                                                self.clock_ns)

    def area_um2(self) -> Figure:
        if self.cfg.area_um2 is None and self.count == 0:
            return Figure(0.0, "no analog tiles (chip.tiles.count: 0)")
        return self._yaml("chip.tiles.adc.area_um2", self.cfg.area_um2,
                          lambda: adc_area_model(self.cfg.bits, self.sample_rate_hz, self.node,
                                                 "chip.tiles.adc.area_um2", self.chip.origin))

    def leakage_mw(self) -> Figure:
        return DEFAULTS["adc_leak_mw"].at(self.node)


class AffineUnit(Part):
    """The per-column scale + offset (BatchNorm) lanes of a tile after its ADCs.

    Default area: one FP32-class multiply-add lane per ``lanes`` (~0.01 mm2 at 45 nm, an estimate,
    968 um2 at 14 nm). Check against a published per-column periphery, the HERMES core
    (Khaddam-Aljameh et al., JSSC 2022: 256 columns with CCO ADCs at a 4-um pitch and a local
    digital unit doing the affine scaling; 1.59 TOPS/mm2 at 1 GHz): at ~133 ns per 256 x 256 MVM
    (Le Gallo 2023) the core is ~0.62 mm2, ~2,400 um2 per 4-um column for the array column, its
    ADC, its affine lane and its share of drivers and buffer. configs/hermes.yaml's array column
    (~1,000 um2) + ADC (230 um2) + this lane (968 um2) fill that budget: the model reproduces the
    published core density within 3% (tests/test_accounting.py). No published per-lane area was
    found; the lane is an estimate consistent with that budget, not a measured figure."""
    name = "affine"
    actions = ("op",)

    def __init__(self, chip: ChipConfig, count: int, per_tile: int):
        super().__init__(chip, count, per_tile)
        self.cfg = chip.chip.tiles.affine
        self.lanes = self.cfg.lanes

    def op(self) -> Action:
        return Action(self._clock("one clock per lane operation"),
                      lambda: self._yaml("chip.tiles.affine.energy_pj_per_op",
                                         self.cfg.energy_pj_per_op, self._fp32_mac))

    def cycles(self, columns: int) -> int:
        return math.ceil(columns / self.lanes)

    def area_um2(self) -> Figure:
        return self._yaml("chip.tiles.affine.area_um2", self.cfg.area_um2,
                          lambda: DEFAULTS["affine_lane_area_um2"].at(self.node, self.lanes,
                                                                      f" x {self.lanes} lanes"))

    def leakage_mw(self) -> Figure:
        return Figure(0.0, "included in tile leakage")


class TileBuffer(Part):
    """A tile's SRAM buffer: input rows, partial sums, output rows."""
    name = "tile_buffer"
    actions = ("byte",)

    def __init__(self, chip: ChipConfig, count: int, per_tile: int):
        super().__init__(chip, count, per_tile)
        self.cfg = chip.chip.tiles.buffer
        self.capacity_bytes = self.cfg.kib * 1024

    def byte(self) -> Action:
        return Action(Figure(self.clock_ns / self.cfg.bytes_per_cycle,
                             "1 / chip.tiles.buffer.bytes_per_cycle"),
                      lambda: self._yaml("chip.tiles.buffer.energy_pj_per_byte",
                                         self.cfg.energy_pj_per_byte,
                                         lambda: sram_energy_default(self.cfg.kib).at(self.node)))

    def transfer_cycles(self, nbytes: int) -> int:
        """Cycles to read or write ``nbytes`` through the buffer port."""
        return math.ceil(nbytes / self.cfg.bytes_per_cycle)

    def area_um2(self) -> Figure:
        kib = self.cfg.kib
        return self._yaml("chip.tiles.buffer.area_um2", self.cfg.area_um2,
                          lambda: DEFAULTS["sram_area_um2_per_kib"].at(self.node, kib,
                                                                       f" x {kib:g} KiB"))

    def leakage_mw(self) -> Figure:
        kib = self.cfg.kib
        return DEFAULTS["sram_leak_mw_per_kib"].at(self.node, kib, f" x {kib:g} KiB")


class TilePeriphery(Part):
    """A tile's control, clocking and I/O: a leakage entry, and the tile's power switch."""
    name = "tile_periphery"
    actions = ()

    def wake_up(self) -> Figure:
        t = self.chip.chip.tiles
        return Figure(t.wake_up_ns, self.chip.source_of("chip.tiles.wake_up_ns")
                      or WAKE_UP_SOURCE)

    def wake_up_cycles(self) -> int | None:
        """Cycles to power a gated tile up; None without power gating."""
        t = self.chip.chip.tiles
        return ns_to_cycles(t.wake_up_ns, self.clock_ns) if t.power_gating else None

    def area_um2(self) -> Figure:
        return Figure(0.0, "none modelled: a tile's area is its listed parts; its control, clocking "
                           "and wiring are not modelled (HERMES' published core density is "
                           "reproduced within 3% without them)")

    def leakage_mw(self) -> Figure:
        t = self.chip.chip.tiles
        return self._yaml("chip.tiles.leakage_mw", t.leakage_mw,
                          lambda: DEFAULTS["tile_leak_mw"].at(self.node))


class VectorUnit(Part):
    """Digital adders next to the data (``affine.lanes`` lanes, in each tile and beside the
    digital units): row-block partial sums, residual adds, pooling."""
    name = "accumulator"
    actions = ("add",)

    def __init__(self, chip: ChipConfig, count: int):
        super().__init__(chip, count)
        self.lanes = chip.chip.tiles.affine.lanes

    def add(self) -> Action:
        return Action(self._clock("one clock per lane operation"),
                      lambda: DEFAULTS["fp32_add_pj"].at(self.node))

    def cycles(self, ops: int) -> int:
        return math.ceil(ops / self.lanes)

    def area_um2(self) -> Figure:
        return Figure(0.0, "none of its own: a tile's adds run on the affine unit's lanes (area in "
                           "affine), the digital side's on the systolic array's output adders "
                           "(area in digital_mac)")

    def leakage_mw(self) -> Figure:
        return Figure(0.0, "included in tile leakage")


class SystolicArray(Part):
    """The FP32 processing elements of the digital units (``units`` R x C systolic arrays)."""
    name = "digital_mac"
    actions = ("mac",)

    def __init__(self, chip: ChipConfig, count: int):
        super().__init__(chip, count)
        self.cfg = chip.chip.digital
        s = self.cfg.systolic
        self.rows, self.cols, self.dataflow, self.units = s.rows, s.cols, s.dataflow, self.cfg.units

    def mac(self) -> Action:
        return Action(self._clock("one MAC per PE per clock"),
                      lambda: self._yaml("chip.digital.mac_energy_pj", self.cfg.mac_energy_pj,
                                         self._fp32_mac))

    def gemm_cycles(self, m: int, k: int, n: int, groups: int = 1) -> int:
        """Compute cycles of (M x K) @ (K x N), or of ``groups`` independent GEMMs of
        M x K/groups x N/groups whose folds the units share (a grouped conv)."""
        return systolic_cycles(m, k // groups, n // groups, self.rows, self.cols, self.dataflow,
                               self.units, groups)

    def gemm_sram_bytes(self, m: int, k: int, n: int, groups: int = 1) -> int:
        return groups * systolic_sram_bytes(m, k // groups, n // groups, self.rows, self.cols,
                                            self.dataflow)

    def area_um2(self) -> Figure:
        return self._yaml("chip.digital.mac_area_um2", self.cfg.mac_area_um2,
                          lambda: DEFAULTS["mac_area_um2"].at(self.node))

    def leakage_mw(self) -> Figure:
        return Figure(0.0, "included in unit leakage")


class DigitalUnitControl(Part):
    """A digital unit's control and sequencing: a leakage entry only."""
    name = "digital_unit"
    actions = ()

    def area_um2(self) -> Figure:
        return Figure(0.0, "none modelled: a digital unit's area is its PEs (digital_mac) and its "
                           "SRAM; its control and sequencing are not modelled")

    def leakage_mw(self) -> Figure:
        d = self.chip.chip.digital
        return self._yaml("chip.digital.leakage_mw", d.leakage_mw,
                          lambda: DEFAULTS["unit_leak_mw"].at(self.node))


class DigitalSram(Part):
    """The SRAM of each digital unit: weights of the digital layers and their activations."""
    name = "sram"
    actions = ("byte",)

    def __init__(self, chip: ChipConfig, count: int):
        super().__init__(chip, count)
        self.cfg = chip.chip.digital.sram
        self.capacity_bytes = self.cfg.kib * 1024 * count        # all units together

    def byte(self) -> Action:
        return Action(Figure(self.clock_ns / self.cfg.bytes_per_cycle,
                             "1 / chip.digital.sram.bytes_per_cycle"),
                      lambda: self._yaml("chip.digital.sram.energy_pj_per_byte",
                                         self.cfg.energy_pj_per_byte,
                                         lambda: sram_energy_default(self.cfg.kib).at(self.node)))

    def transfer_cycles(self, nbytes: int) -> int:
        """Cycles to move ``nbytes`` through the ports of all units' SRAMs together."""
        return math.ceil(nbytes / (max(self.count, 1) * self.cfg.bytes_per_cycle))

    def area_um2(self) -> Figure:
        per_kib = self._yaml("chip.digital.sram.area_um2_per_kib", self.cfg.area_um2_per_kib,
                             lambda: DEFAULTS["sram_area_um2_per_kib"].at(self.node))
        return Figure(per_kib.value * self.cfg.kib, f"{self.cfg.kib:g} KiB x {per_kib.source}")

    def leakage_mw(self) -> Figure:
        kib = self.cfg.kib
        return DEFAULTS["sram_leak_mw_per_kib"].at(self.node, kib, f" x {kib:g} KiB")


class Router(Part):
    """One mesh router and its links per tile and per digital unit."""
    name = "interconnect"
    actions = ("byte_hop",)

    def __init__(self, chip: ChipConfig, count: int):
        super().__init__(chip, count)
        self.cfg = chip.chip.interconnect
        self.bytes_per_cycle = self.cfg.bytes_per_cycle
        self.hop_latency_cycles = self.cfg.hop_latency_cycles

    def byte_hop(self) -> Action:
        ic = self.cfg

        def energy() -> Figure:
            wire = DEFAULTS["wire_pj_per_bit_mm"]
            if ic.energy_pj_per_byte_hop is None and ic.hop_length_mm == 0:
                raise ConfigError(self.chip.origin, "chip.interconnect.energy_pj_per_byte_hop",
                                  "no default with chip.interconnect.hop_length_mm: 0 (the default "
                                  "is derived from the wire length per hop); set it")
            return self._yaml("chip.interconnect.energy_pj_per_byte_hop", ic.energy_pj_per_byte_hop,
                              lambda: Figure(wire.value * 8 * ic.hop_length_mm,
                                             f"derived: {wire.source} x 8 bit x "
                                             f"{ic.hop_length_mm:g} mm/hop"))
        return Action(Figure(self.clock_ns * ic.hop_latency_cycles,
                             "chip.interconnect.hop_latency_cycles"), energy)

    def serialization_cycles(self, nbytes: int) -> int:
        """Cycles a transfer of ``nbytes`` holds each link of its route."""
        return math.ceil(nbytes / self.bytes_per_cycle)

    def area_um2(self) -> Figure:
        return self._yaml("chip.interconnect.area_um2_per_router", self.cfg.area_um2_per_router,
                          lambda: DEFAULTS["router_area_um2"].at(self.node))

    def leakage_mw(self) -> Figure:
        return Figure(0.0, "assumed 0")


# --------------------------------------------------------------------------------------------
# Closed forms the systolic array answers with (SCALE-Sim analytical model)
# --------------------------------------------------------------------------------------------

def systolic_cycles(m: int, k: int, n: int, rows: int, cols: int, dataflow: str,
                    units: int = 1, groups: int = 1) -> int:
    """Compute cycles of an (M x K) @ (K x N) GEMM on ``units`` R x C arrays (SCALE-Sim analytical
    model, Samajdar et al. ISPASS 2020, Sec. IV): ceil(folds / units) x (2R + C + T - 2);
    ``groups`` independent GEMMs of that size share the units' folds."""
    s_r, s_c, t = {"os": (m, n, k), "ws": (k, n, m), "is": (k, m, n)}[dataflow]
    folds = groups * math.ceil(s_r / rows) * math.ceil(s_c / cols)
    return math.ceil(folds / max(units, 1)) * (2 * rows + cols + t - 2)


def systolic_sram_bytes(m: int, k: int, n: int, rows: int, cols: int, dataflow: str) -> int:
    """FP32 bytes read and written in SRAM by the GEMM (operands re-read once per fold that needs
    them, partial sums written once per reduction fold)."""
    ifmap, weights, ofmap = m * k, k * n, m * n
    if dataflow == "ws":
        words = ifmap * math.ceil(n / cols) + weights + ofmap * math.ceil(k / rows)
    elif dataflow == "os":
        words = ifmap * math.ceil(n / cols) + weights * math.ceil(m / rows) + ofmap
    else:
        words = ifmap + weights * math.ceil(m / cols) + ofmap * math.ceil(k / rows)
    return words * FP32_BYTES


# --------------------------------------------------------------------------------------------
# The chip's parts
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TileParts:
    """The parts of one tile, as the timing model reads them."""
    array: PcmArray
    dac: DacBank
    adc: AdcBank
    affine: AffineUnit
    buffer: TileBuffer
    periphery: TilePeriphery
    vector: VectorUnit


def chip_parts(chip: ChipConfig) -> dict[str, Part]:
    """Every part of the chip (figures resolved on demand; building never raises)."""
    c = chip.chip
    t = c.tiles
    d = c.digital
    n_tiles = t.count
    dac = DacBank(chip, n_tiles * t.array.rows, t.array.rows)
    parts: list[Part] = [
        PcmArray(chip, n_tiles * t.arrays_per_tile, t.arrays_per_tile, dac),
        dac,
        AdcBank(chip, n_tiles * t.adc.per_tile, t.adc.per_tile),
        AffineUnit(chip, n_tiles, 1),
        TileBuffer(chip, n_tiles, 1),
        TilePeriphery(chip, n_tiles, 1),
        VectorUnit(chip, n_tiles + d.units),
        SystolicArray(chip, d.units * d.systolic.rows * d.systolic.cols),
        DigitalUnitControl(chip, d.units),
        DigitalSram(chip, d.units),
        Router(chip, n_tiles + d.units),
    ]
    return {p.name: p for p in parts}


def tile_parts(chip: ChipConfig, parts: Mapping[str, Part] | None = None) -> TileParts:
    p = parts if parts is not None else chip_parts(chip)
    return TileParts(p["pcm_array"], p["dac"], p["adc"], p["affine"], p["tile_buffer"],
                     p["tile_periphery"], p["accumulator"])


def chip_components(chip: ChipConfig) -> dict[str, Component]:
    """Every component of the chip with resolved figures (YAML first, else scaled defaults).
    Raises ConfigError (naming the YAML path) for a figure that has no default."""
    return {name: part.resolved() for name, part in chip_parts(chip).items()}


def integration_time_ns(chip: ChipConfig) -> float:
    """Duration of one MVM's input phase: PWM phases x (2^(bits-1) - 1) x t_lsb, or bits x read."""
    return chip_parts(chip)["dac"].integration_ns


def passes(chip: ChipConfig) -> int:
    """Array read passes per MVM: the PWM phases, or one per input bit when bit-serial."""
    return chip_parts(chip)["dac"].steps


def devices_per_array(chip: ChipConfig) -> int:
    return chip_parts(chip)["pcm_array"].devices


def full_mvm_actions(chip: ChipConfig) -> dict[str, int]:
    """Action counts of one full-size MVM on one array (every row driven, every weight column
    converted once per step and scaled, inputs read from and outputs written to the tile buffer at
    the DAC/ADC width): what :func:`archsim.accounting.peak_efficiency` charges per MVM."""
    t = chip.chip.tiles
    cols = t.array.weight_cols
    return {"pcm_array.mvm": 1, "dac.drive": t.array.rows, "adc.conversion": cols * passes(chip),
            "affine.op": cols,
            "tile_buffer.byte": t.array.rows * math.ceil(t.dac.bits / 8)
            + cols * math.ceil(t.adc.bits / 8)}


def action_energy_pj(comps: Mapping[str, Component], action: str) -> Figure:
    """The energy of one ``component.action``; an unknown name raises ValueError (a bug in the
    counting side, not a user error)."""
    comp, _, act = action.partition(".")
    if comp not in comps or act not in comps[comp].energy_pj:
        known = ", ".join(f"{n}.{a}" for n, c in comps.items() for a in c.energy_pj)
        raise ValueError(f"unknown action {action!r} (known: {known})")
    return comps[comp].energy_pj[act]
