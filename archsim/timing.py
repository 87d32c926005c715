"""Cycle-level timing model (SimPy): tiles, converters, digital units and interconnect advance time
and count actions; nothing here computes a value. Time is in integer clock cycles of
``chip.clock_mhz``; a duration given in ns takes ``ceil(ns / clock_ns)`` cycles.

Hardware objects
----------------
Every latency comes from the part objects of :mod:`archsim.components` (the same objects the
energy accounting reads); the SimPy processes are generator methods of the hardware they model,
wired by :func:`setup`:

- **Tile** (a ``simpy.PriorityResource``, capacity 1) with its parts (arrays, DAC row drivers, ADC
  bank, affine unit, buffer). The arrays of a tile share its periphery, so a tile runs one array's
  MVMs at a time (arrays of one layer on one tile take turns; :func:`peak_figures` counts one MVM
  stream per tile). A **TileGroup** is the set of tiles holding one analog layer:
  ``TileGroup.integrate_and_convert`` runs the layer's rows on them, ``TileGroup.accumulate`` adds
  the row blocks' partial sums.
- **Interconnect**: a 2-D mesh of routers, tiles laid row-major on a near-square grid of
  ``ceil(sqrt(count))`` columns, the digital units on one router at the west edge (x = -1, y = 0);
  XY routing; every directed link is a ``simpy.PriorityResource``. A transfer of B bytes holds all
  links of its route at once for ``ceil(B / bytes_per_cycle)`` cycles (cut-through; links are
  acquired in one global order, so no deadlock) and arrives ``hops x hop_latency_cycles`` later
  (``Interconnect.send`` / ``transmit``); ``Interconnect.carry`` moves every produced row of an
  edge.
  ``kind: bus``: one shared link, one hop.
- **DigitalUnit**: ``digital.units`` FP32 systolic arrays with their SRAMs on the edge router, a
  single resource; a digital layer's folds are split among the units (``DigitalUnit.systolic``).
  Rows of different layers take turns on it (no weight-reload cost is charged for the switch).
- **VectorUnit**: the adders next to the data (``VectorUnit.elementwise``: add, pools, shortcut).

One MVM on a tile (:func:`mvm_stages`, per array block with ``r`` rows and ``c`` weight columns used)
---------------------------------------------------------------------------------------------------
- load_inputs: ``ceil(r x ceil(dac.bits/8) / buffer.bytes_per_cycle)``;
- integrate, per input step: PWM ``(2^(bits-1) - 1) x t_lsb_ns``, bit-serial ``array.read_time_ns``;
  steps = ``dac.phases`` (PWM) or ``dac.bits`` (bit-serial);
- convert, per input step: ``ceil(c / adc.per_tile) x conversion_ns``. Converted columns are the
  *weight* columns: with ``pair_layout: columns`` the G+ and G- bit lines of a weight are
  subtracted as currents before the converter (differential read), so one conversion per weight
  column, never per device column. The whole integrate+convert cycle repeats per step: HERMES'
  four-phase mode is 4x slower than one-phase (Le Gallo 2023), and a bit-serial tile converts every
  bit plane and shift-adds in digital (ISAAC). So ``adc.conversion`` = c x steps per MVM;
- normalize (affine): ``ceil(c / affine.lanes)``; write: ``ceil(c x ceil(adc.bits/8) / buffer
  .bytes_per_cycle)``.

Without double buffering nothing overlaps: an MVM takes ``latency = load + steps x (integrate +
convert) + affine + write`` and the next one starts after it. With ``tiles.double_buffered`` (input
latches, a sample-and-hold before the ADCs, output registers) every stage works on the next item as
soon as it has handed its last one on: the integration of step s+1 overlaps the conversion of step
s, ``latency = load + integrate + convert + (steps - 1) x max(integrate, convert) + affine + write``,
and back-to-back MVMs leave the tile every ``interval = max(load, steps x integrate, steps x
convert, affine, write)``. n back-to-back MVMs take ``latency + (n - 1) x interval`` (tests check
this against a per-MVM, per-step schedule).

Layers
------
Simulated per output ROW (one event chain per row). A matrix layer's row holds its tiles for
``n x interval`` cycles (n = MVMs of the row = output width) and its outputs are ready
``latency - interval`` cycles later: exactly the per-pixel pipeline above, and the next row can enter
the tile pipeline meanwhile. Row r of a layer starts when the input rows it needs have arrived: conv
and pool ``min(H_in - 1, r x stride - padding + kernel - 1)``; option-A shortcut ``2r``; add, BN,
ReLU row r; global pool, flatten and linear all rows. Row-block partial sums of a split layer are
sent (ADC codes, ``ceil(adc.bits/8)`` bytes) to the tile of row block 0 of their column block and
added there (``accumulator.add``, ``affine.lanes`` adds per cycle).

Copies and packing (:mod:`archsim.mapping`): the copies of a replicated layer work on the same
output row at once, copy c on its columns ``copy_cols[c]``; an array holding several packed copies
of a block drives their rows and converts their columns in one MVM (stages of
``mvm_stages(sum of their rows, sum of their columns)``), running the widest of their shares in
MVMs per row. The row holds the layer's tiles for the largest per-tile sum of (MVMs x interval);
each copy receives the input columns its output columns' windows read (neighbouring copies of a
conv both receive the columns between them); per-pixel actions (DAC rows, conversions, affine,
buffer bytes) do not depend on the copies, ``pcm_array.mvm`` counts array MVMs (a packed MVM
reads several blocks: the accounting charges ``read_utilization``). Layers whose blocks share an
array (``packing: layers``) take turns on its tile: a row of one waits while the other holds it,
even when both are ready (one MVM drives one layer's rows; two layers firing in the same MVM is
not modelled). A vector layer works where its first operand lives, each router on its share, so
that operand does not move.

Non-matrix layers: BatchNorm folds into the affine unit (analog) or the systolic output stage
(digital); ReLU and Flatten are fused into the producer's output write: all three cost nothing and
report their producer's times. Add, pools, global pool and the option-A shortcut run where their
first operand lives, on a vector unit of ``affine.lanes`` lanes without contention: a row costs
``ceil(ops / lanes)`` cycles, ops = output elements (add), output elements x kernel^2 (pools),
input elements (global pool), 0 for the shortcut (a strided selection with zero channels); each op
is an ``accumulator.add``. Each layer class says which it is (:mod:`archsim.layers`: ``timing``,
``vector_ops``, ``input_row_needed``, ``input_row_first``): Clip (ReLU6) and LeakyReLU fuse like
ReLU; Mul, Sigmoid, Tanh and HardSigmoid cost one op per output element, HardSwish two; Concat, Pad
and Slice are selections (0 ops) whose row r needs input row r, r - pad_top and start + r x step; a
grouped digital conv runs its groups as separate GEMMs (their folds shared by the units).

Data movement: activations are ``ceil(dac.bits/8)`` bytes between analog tiles and FP32 (4 bytes)
to or from the digital units (the network input comes from the digital side). Each produced row is
sent once to every router its consumer uses, split among producer/consumer blocks in proportion to
the producer's column share and the consumer's row share (``interconnect.byte_hop`` = bytes x hops).
Between digital layers data stays in the units' SRAM.

Digital layers: GEMM of M (output pixels) x K x N on R x C PEs, SCALE-Sim's analytical model
(Samajdar et al., "A Systematic Methodology for Characterizing Scalability of DNN Accelerators
using SCALE-Sim", ISPASS 2020, Sec. IV): spatial rows S_R, spatial cols S_C and temporal T are
OS: (M, N, K); WS: (K, N, M); IS: (K, M, N); folds = ceil(S_R/R) x ceil(S_C/C); each fold takes
``2R + C + T - 2`` cycles (WS: R cycles to load weights, then T + R + C - 2 to stream, fill and
drain); units split the folds: ``ceil(folds / units) x (2R + C + T - 2)``. SRAM traffic (FP32):
WS: M K ceil(N/C) + K N + M N ceil(K/R); OS: M K ceil(N/C) + K N ceil(M/R) + M N;
IS: M K + K N ceil(M/C) + M N ceil(K/R), bytes x 4; ``sram_cycles = ceil(bytes / (units x
bytes_per_cycle))``; the layer takes max(compute, sram) cycles (the excess is its stall) and its
total is spread over its output rows so row r's results exist after its share.

Inferences: all inputs wait at the digital side at cycle 0; every layer processes inference i+1
after inference i (same hardware), so N in flight give the steady-state interval. Shared resources
(tiles, digital cluster, links) serve the oldest inference first among those waiting (priority =
inference index; no pre-emption), so later inferences fill idle slots without delaying earlier
ones much.
Capacities (:func:`check_capacities`, before the run): every tile buffer must hold the input rows
its consumers keep (a k x k conv of stride s: k + s rows; where a residual add joins two paths, the
earlier operand's rows until the later one catches up: :func:`held_rows`), one output row per array
and one row of partial sums at row block 0's tile; the digital units' SRAM (all units together)
the FP32 weights of every digital layer, one input image, and its layers' rows. A buffer or SRAM
that cannot is an error naming the YAML path, what does not fit and by how much.

Power gating (``tiles.power_gating``): a tile idle for longer than its wake-up time is switched off
and pays ``tiles.wake_up_ns`` before its next row; the cycles it was off are reported per tile
(:mod:`archsim.accounting` charges its periphery's leakage accordingly; tiles without arrays are
off throughout).

Not modelled: back-pressure when a producer runs further ahead than the capacities above (the
steady state is set by the slowest layer, which no upstream stall can speed up), reprogramming for
time-multiplexed mappings.

Results: per layer (first inference) start/end cycle, busy cycles (its hardware held), stall cycles
(digital: SRAM stall; others: cycles inside [start, end] not busy, i.e. waiting for inputs, links
or the pipeline drain), actions; whole-run actions and busy cycles per kind (``tile`` summed over
tiles, ``digital_unit``, ``interconnect`` link-cycles, ``vector`` steps, ``accumulator`` partial-sum
adds); latency of the first inference; ``interval_cycles`` = (last completion - first completion) //
(inferences - 1), or the latency for one inference.
"""

from __future__ import annotations

import bisect
import contextlib
import math
import types
from dataclasses import dataclass, field
from typing import Callable, Mapping as TMapping

import simpy

from .components import (FP32_BYTES, Router, SystolicArray, TileParts, chip_parts, ns_to_cycles,
                         systolic_cycles, systolic_sram_bytes, tile_parts)
from .config import ChipConfig
from .errors import ConfigError
from .mapping import LayerMapping, Mapping, input_columns
from .network import INPUT, Layer, Network

__all__ = ["MvmStages", "mvm_stages", "systolic_cycles", "systolic_sram_bytes",
           "digital_layer_cycles", "peak_figures", "ns_to_cycles", "LayerTiming", "TimingResult",
           "Tile", "TileGroup", "DigitalUnit", "VectorUnit", "Interconnect", "setup",
           "simulate_timing"]


# ------------------------------------------------------------------------------------------
# Closed forms
# ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MvmStages:
    """Cycle counts of one MVM's stages on a tile (integrate and convert are per input step)."""
    load: int
    integrate: int
    convert: int
    affine: int
    write: int
    steps: int
    double_buffered: bool

    @property
    def latency(self) -> int:
        """One MVM alone. Double buffered, step s+1 integrates while step s converts."""
        if self.double_buffered:
            analog = (self.integrate + self.convert
                      + (self.steps - 1) * max(self.integrate, self.convert))
        else:
            analog = self.steps * (self.integrate + self.convert)
        return self.load + analog + self.affine + self.write

    @property
    def interval(self) -> int:
        if not self.double_buffered:
            return self.latency
        return max(self.load, self.steps * self.integrate, self.steps * self.convert,
                   self.affine, self.write)

    def cycles(self, n: int) -> int:
        """n back-to-back MVMs."""
        return self.latency + (n - 1) * self.interval if n > 0 else 0


def mvm_stages(chip: ChipConfig | TileParts, rows_used: int, weight_cols_used: int) -> MvmStages:
    """The stages of one MVM on an array block with ``rows_used`` rows and ``weight_cols_used``
    weight columns, from the latencies of the tile's parts."""
    parts = chip if isinstance(chip, TileParts) else tile_parts(chip)
    t = parts.buffer.chip.chip.tiles
    in_bytes = math.ceil(t.dac.bits / 8)
    out_bytes = math.ceil(t.adc.bits / 8)
    return MvmStages(
        load=parts.buffer.transfer_cycles(rows_used * in_bytes),
        integrate=parts.dac.step_cycles(), convert=parts.adc.convert_cycles(weight_cols_used),
        affine=parts.affine.cycles(weight_cols_used),
        write=parts.buffer.transfer_cycles(weight_cols_used * out_bytes),
        steps=parts.dac.steps, double_buffered=t.double_buffered)


def digital_layer_cycles(chip: ChipConfig, m: int, k: int, n: int,
                         parts: TMapping | None = None, groups: int = 1) -> tuple[int, int, int]:
    """(total cycles, stall cycles, SRAM bytes) of one digital GEMM on the digital cluster; a
    grouped conv is ``groups`` independent GEMMs of M x K/groups x N/groups whose folds the units
    share."""
    p = parts if parts is not None else chip_parts(chip)
    pes: SystolicArray = p["digital_mac"]
    compute = pes.gemm_cycles(m, k, n, groups)
    nbytes = pes.gemm_sram_bytes(m, k, n, groups)
    sram = p["sram"].transfer_cycles(nbytes)
    return max(compute, sram), max(0, sram - compute), nbytes


def peak_figures(chip: ChipConfig) -> dict:
    """The chip at full load. Analog: every tile running full-size MVMs (rows x weight columns
    MACs, 2 ops per MAC) back to back at the tile's MVM interval. Digital: every PE one MAC per
    cycle. ``peak_*`` is the analog figure when the chip has tiles, else the digital one."""
    c = chip.chip
    t = c.tiles
    clk = c.clock_ns
    d = c.digital
    digital_ops = 2 * d.units * d.systolic.rows * d.systolic.cols
    out = {"digital_peak_ops_per_cycle": float(digital_ops),
           "digital_peak_tops": digital_ops * c.clock_mhz * 1e6 / 1e12}
    if t.count > 0:
        st = mvm_stages(chip, t.array.rows, t.array.weight_cols)
        ops_per_cycle = 2 * t.array.rows * t.array.weight_cols * t.count / st.interval
        out.update({
            "mvm_latency_ns": st.latency * clk, "mvm_interval_ns": st.interval * clk,
            "mvm_latency_cycles": st.latency, "mvm_interval_cycles": st.interval,
            "peak_mvm_per_s": t.count / (st.interval * clk * 1e-9),
            "analog_peak_ops_per_cycle": ops_per_cycle,
            "analog_peak_tops": ops_per_cycle * c.clock_mhz * 1e6 / 1e12})
        out["peak_ops_per_cycle"] = ops_per_cycle
        out["peak_tops"] = out["analog_peak_tops"]
    else:
        out.update({"mvm_latency_ns": 0.0, "mvm_interval_ns": 0.0, "mvm_latency_cycles": 0,
                    "mvm_interval_cycles": 0, "peak_mvm_per_s": 0.0,
                    "analog_peak_ops_per_cycle": 0.0, "analog_peak_tops": 0.0,
                    "peak_ops_per_cycle": float(digital_ops),
                    "peak_tops": out["digital_peak_tops"]})
    return out


# ------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------

def _frozen(d: dict) -> TMapping[str, int]:
    return types.MappingProxyType(dict(sorted(d.items())))


@dataclass(frozen=True)
class LayerTiming:
    name: str
    kind: str
    placement: str                  # analog | digital | vector | fused
    start_cycle: int                # first inference
    end_cycle: int
    busy_cycles: int                # cycles its hardware was held (first inference)
    stall_cycles: int               # digital: SRAM stall; others: waiting inside [start, end]
    mvms: int                       # output pixels of a matrix layer, per inference
    actions: TMapping[str, int]     # "component.action" -> count, first inference
    tiles: tuple[int, ...] = ()     # tiles it runs on (analog)

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "placement": self.placement,
                "start_cycle": self.start_cycle, "end_cycle": self.end_cycle,
                "cycles": self.end_cycle - self.start_cycle, "busy_cycles": self.busy_cycles,
                "stall_cycles": self.stall_cycles, "mvms": self.mvms, "actions": dict(self.actions),
                "tiles": list(self.tiles)}


@dataclass(frozen=True)
class TimingResult:
    clock_mhz: float
    inferences: int
    layers: tuple[LayerTiming, ...]
    actions: TMapping[str, int]             # whole run
    busy_cycles: TMapping[str, int]         # per component kind, whole run
    total_cycles: int
    latency_cycles: int                     # first inference: input to last output
    latency_ns: float
    interval_cycles: int                    # steady-state cycles between inference completions:
    #   (finish of the last - finish of the first) // (inferences - 1); the latency when 1
    throughput_inferences_per_s: float
    tile_utilization: tuple[float, ...]     # busy / total_cycles per tile
    events: int                             # SimPy events processed
    tiles_used: tuple[int, ...] = ()        # tiles with mapped arrays
    window_cycles: int = 0                  # steady-state window: first to last completion
    #   (the whole first inference when 1)
    tile_gated_cycles: tuple[int, ...] = () # per tile, cycles of the window it was power-gated
    buffer_need_bytes: tuple[int, ...] = () # per tile, what its buffer must hold
    sram_need_bytes: int = 0                # what the digital units' SRAM must hold

    def layer(self, name: str) -> LayerTiming:
        for lt in self.layers:
            if lt.name == name:
                return lt
        raise KeyError(name)

    def to_dict(self) -> dict:
        return {"clock_mhz": self.clock_mhz, "inferences": self.inferences,
                "total_cycles": self.total_cycles, "latency_cycles": self.latency_cycles,
                "latency_ns": self.latency_ns, "interval_cycles": self.interval_cycles,
                "throughput_inferences_per_s": self.throughput_inferences_per_s,
                "events": self.events, "actions": dict(self.actions),
                "busy_cycles": dict(self.busy_cycles),
                "tile_utilization": [round(u, 6) for u in self.tile_utilization],
                "tiles_used": list(self.tiles_used), "window_cycles": self.window_cycles,
                "tile_gated_cycles": list(self.tile_gated_cycles),
                "buffer_need_bytes": list(self.buffer_need_bytes),
                "sram_need_bytes": self.sram_need_bytes,
                "layers": [lt.to_dict() for lt in self.layers]}


# ------------------------------------------------------------------------------------------
# Plan: the network as simulation nodes and edges
# ------------------------------------------------------------------------------------------

@dataclass
class _Node:
    layer: Layer | None                 # None for the network input
    name: str
    role: str                           # input | analog | digital | vector
    rows: int
    row_values: int                     # output values per row
    loc: list[tuple[int, float]]        # routers holding the output, with their share
    lm: LayerMapping | None = None
    inputs: list["_Edge"] = field(default_factory=list)
    actions: dict[str, int] = field(default_factory=dict)
    # analog
    tiles: tuple[int, ...] = ()
    hold: int = 0
    drain: int = 0
    psums: list[tuple[int, int, int]] = field(default_factory=list)   # (src, dst, bytes) per row
    accumulate: int = 0
    # digital / vector
    row_cycles: list[int] = field(default_factory=list)
    stall: int = 0
    ready: list = field(default_factory=list)   # per inference, per row: simpy.Event
    # results (first inference)
    start: int | None = None
    end: int = 0
    busy: int = 0

    def wait_inputs(self, i: int, r: int, got: list[int]):
        """Wait until the input rows that output row r of inference i needs have arrived."""
        for e, edge in enumerate(self.inputs):
            j = edge.need(r)
            arrivals = edge.arrivals[i]
            for jj in range(got[e] + 1, j + 1):
                if not arrivals[jj].processed:
                    yield arrivals[jj]
            got[e] = max(got[e], j)


@dataclass
class _Edge:
    src: _Node
    dst: _Node
    need: Callable[[int], int]          # consumer row -> last producer row it needs
    sends: list[tuple[int, int, int]]   # (src router, dst router, bytes) per producer row
    first: Callable[[int], int] = lambda r: r   # consumer row -> first producer row it needs
    need_free: Callable[[int], int] = lambda r: r   # need() not clamped at the producer's last row
    row_bytes: dict[int, int] = field(default_factory=dict)   # router -> bytes of a row there
    streams: bool = False               # the consumer folds each row in as it comes (running sum)
    arrivals: list[list[simpy.Event]] | None = None   # per inference, per producer row


def _rows_of(shape: tuple[int, ...]) -> tuple[int, int]:
    """(rows, values per row) of an activation shape."""
    if len(shape) == 3:
        return shape[0], shape[1] * shape[2]
    return 1, int(math.prod(shape))


# What the timing model asks of a layer (its class answers: archsim.layers):

def _is_fused(layer: Layer) -> bool:
    """Folded into its producer's output stage (BatchNorm into the affine / systolic output
    stage; ReLU, Clip, Flatten into the output write)."""
    return layer.timing == "fused"


def _vector_ops_per_row(layer: Layer, net: Network, out_shape, row_values: int) -> int:
    """Vector-unit operations for one output row of a non-matrix layer."""
    return layer.vector_ops(net.input_shapes_of(layer), out_shape, row_values)


def _need_fn(layer: Layer, in_index: int, declared_in: tuple[int, ...], src_rows: int,
             clamp: bool = True) -> Callable[[int], int]:
    """Consumer row r -> the last row of input ``in_index`` it needs (e.g. a 3x3 conv row r needs
    input row r*stride - pad + 2); ``clamp=False``: as if the producer had rows beyond its last,
    for the capacity analysis."""
    last = src_rows - 1
    if len(declared_in) != 3 or src_rows == 1 or layer.input_row_needed(0, in_index,
                                                                         declared_in) is None:
        return lambda r: last
    cap = last if clamp else math.inf
    return lambda r: min(cap, layer.input_row_needed(r, in_index, declared_in))


def _first_fn(layer: Layer, in_index: int, declared_in: tuple[int, ...], src_rows: int
              ) -> Callable[[int], int]:
    """Consumer row r -> the first row of input ``in_index`` it needs (rows before it can be
    freed)."""
    last = src_rows - 1
    if len(declared_in) != 3 or src_rows == 1 or layer.input_row_needed(0, in_index,
                                                                         declared_in) is None:
        return lambda r: 0
    return lambda r: min(last, max(0, layer.input_row_first(r, in_index, declared_in)))


def _streams_input(layer: Layer) -> bool:
    """The layer folds its input rows into a running result as they arrive (global pooling)."""
    return layer.streams_input


class _Plan:
    """The mapped network as simulation nodes (one per non-fused layer) and edges, with each
    node's per-row costs and per-inference action counts."""

    def __init__(self, mapping: Mapping, ic: "Interconnect", parts: TMapping):
        chip = mapping.chip
        net: Network = mapping.network
        t = chip.chip.tiles
        self.chip = chip
        self.net = net
        self.parts = parts
        self.tile = tile_parts(chip, parts)
        D = ic.digital_node
        self.vector = parts["accumulator"]
        analog_bytes = math.ceil(t.dac.bits / 8)
        psum_bytes = math.ceil(t.adc.bits / 8)
        by_name = {lm.name: lm for lm in mapping.layers}
        in_rows, in_vals = _rows_of(net.input_shape)
        self.input = _Node(None, INPUT, "input", in_rows, in_vals, [(D, 1.0)])
        self.nodes: list[_Node] = []
        self.alias: dict[str, _Node] = {INPUT: self.input}
        self.fused: dict[str, str] = {}
        self.edges: list[_Edge] = []

        def add_actions(node: _Node, key: str, count: int) -> None:
            if count:
                node.actions[key] = node.actions.get(key, 0) + int(count)

        for layer in net.layers:
            if _is_fused(layer):
                self.alias[layer.name] = self.alias[layer.inputs[0]]
                self.fused[layer.name] = self.alias[layer.inputs[0]].name
                continue
            out_shape = net.shape(layer.name)
            rows, row_values = _rows_of(out_shape)
            first = self.alias[layer.inputs[0]]
            if layer.is_matrix:
                lm = by_name[layer.name]
                m = lm.mvms
                if lm.analog:
                    node = self._analog_node(layer, lm, rows, row_values, psum_bytes)
                    # each pixel drives the rows and converts the columns of one copy's blocks;
                    # an array MVM (packed copies fire together) reads its blocks' devices
                    one = lm.blocks_of(0)
                    st_all = [mvm_stages(self.tile, a.rows_used, a.weight_cols_used) for a in one]
                    add_actions(node, "pcm_array.mvm", lm.array_mvms)
                    add_actions(node, "dac.drive", m * sum(a.rows_used for a in one))
                    add_actions(node, "adc.conversion", m * sum(
                        a.weight_cols_used * s.steps for a, s in zip(one, st_all)))
                    add_actions(node, "affine.op", m * lm.n)
                    add_actions(node, "accumulator.add", m * lm.n * (lm.row_blocks - 1))
                    add_actions(node, "tile_buffer.byte", m * sum(
                        a.rows_used * analog_bytes + a.weight_cols_used * psum_bytes
                        for a in one))
                    for s, d_, b in node.psums:
                        add_actions(node, "interconnect.byte_hop", rows * b * ic.hops(s, d_))
                else:
                    node = _Node(layer, layer.name, "digital", rows, row_values, [(D, 1.0)], lm)
                    total, stall, nbytes = digital_layer_cycles(chip, m, lm.k, lm.n, parts,
                                                                lm.groups)
                    node.row_cycles = [total * (r + 1) // rows - total * r // rows
                                       for r in range(rows)]
                    node.stall = stall
                    add_actions(node, "digital_mac.mac", lm.macs)
                    add_actions(node, "sram.byte", nbytes)
            else:
                node = _Node(layer, layer.name, "vector", rows, row_values, list(first.loc))
                ops = _vector_ops_per_row(layer, net, out_shape, row_values)
                node.row_cycles = [self.vector.cycles(ops)] * rows
                add_actions(node, "accumulator.add", ops * rows)
            # input edges
            for in_index, src_name in enumerate(layer.inputs):
                src = self.alias[src_name]
                declared = net.shape(src_name) if src_name != INPUT else tuple(net.input_shape)
                need = _need_fn(layer, in_index, declared, src.rows)
                if node.role == "analog":
                    share = _input_shares(layer, node.lm, declared)
                    dst_loc = [(a.tile, a.rows_used / node.lm.k * share[a.copy])
                               for a in node.lm.arrays]
                elif node.role == "digital":
                    dst_loc = [(D, 1.0)]
                else:
                    dst_loc = node.loc
                nbytes = FP32_BYTES if (D in [r for r, _ in src.loc] or
                                        D in [r for r, _ in dst_loc]) else analog_bytes
                sends = []
                row_bytes: dict[int, int] = {}
                # a vector layer works where its first operand lives, each router on its own
                # share (e.g. the output columns of a layer's copies): that operand stays put
                in_place = node.role == "vector" and in_index == 0 and len(src.loc) > 1
                pairs = ([((s_, fs), (s_, 1.0)) for s_, fs in src.loc] if in_place else
                         [(a, b) for a in src.loc for b in dst_loc])
                for (s, fs), (d_, gd) in pairs:
                    b = math.ceil(src.row_values * nbytes * fs * gd)
                    row_bytes[d_] = row_bytes.get(d_, 0) + b
                    if s != d_:
                        sends.append((s, d_, b))
                        add_actions(node, "interconnect.byte_hop", src.rows * b * ic.hops(s, d_))
                edge = _Edge(src, node, need, sends, _first_fn(layer, in_index, declared, src.rows),
                             _need_fn(layer, in_index, declared, src.rows, clamp=False),
                             row_bytes, _streams_input(layer))
                node.inputs.append(edge)
                self.edges.append(edge)
            self.nodes.append(node)
            self.alias[layer.name] = node

    def _analog_node(self, layer, lm, rows, row_values, psum_bytes) -> _Node:
        width = lm.width
        loc = [(a.tile, a.weight_cols_used / lm.n * (lm.share(a.copy) / width))
               for a in lm.arrays if a.row_block == 0]
        node = _Node(layer, layer.name, "analog", rows, row_values, loc, lm)
        node.tiles = tuple(sorted({a.tile for a in lm.arrays}))
        per_tile: dict[int, int] = {}           # arrays sharing a tile run one after another
        drains = []
        for blocks in lm.on_arrays().values():  # packed copies of a block fire together
            n = lm.mvms_per_row(blocks)
            st = mvm_stages(self.tile, sum(a.rows_used for a in blocks),
                            sum(a.weight_cols_used for a in blocks))
            tile = blocks[0].tile
            per_tile[tile] = per_tile.get(tile, 0) + n * st.interval
            drains.append(st.cycles(n) - n * st.interval)
        node.hold = max(per_tile.values())
        node.drain = max(drains)
        if lm.row_blocks > 1:
            home = {(a.copy, a.col_block): a.tile for a in lm.arrays if a.row_block == 0}
            node.psums = [(a.tile, home[(a.copy, a.col_block)],
                           lm.share(a.copy) * a.weight_cols_used * psum_bytes)
                          for a in lm.arrays if a.row_block > 0]
            widest = max(a.weight_cols_used for a in lm.arrays)
            node.accumulate = self.vector.cycles(
                max(lm.share(c) for c in range(lm.copies)) * widest * (lm.row_blocks - 1))
        return node


def _input_shares(layer: Layer, lm: LayerMapping, declared_in: tuple[int, ...]) -> list[float]:
    """Per copy, the share of each input row it receives: all of it with one copy; with several,
    the input columns its output columns read (a conv's windows overlap: neighbouring copies both
    receive the columns between their shares)."""
    if lm.copies == 1 or len(declared_in) != 3:
        return [1.0] * lm.copies
    in_width = declared_in[1]
    out = []
    for w0, w1 in lm.copy_cols:
        first, stop = input_columns(layer, w0, w1, in_width)
        out.append(max(stop - first, 0) / in_width)
    return out


# ------------------------------------------------------------------------------------------
# Capacities: what the schedule needs each tile buffer and the digital SRAM to hold
# ------------------------------------------------------------------------------------------

def held_rows(plan: _Plan) -> dict[int, int]:
    """Producer rows each edge keeps in its consumer's buffer at most (keyed by ``id(edge)``).

    A consumer keeps the rows its current output row needs (from ``first(r)``) while the rows for
    its next output row arrive (up to ``need(r + 1)``): a k x k conv of stride s keeps k + s rows.
    Where operands join (a residual add), an operand that is ready earlier waits for the other:
    its rows are kept from the current row up to the last one producible from the rows of the
    operands' nearest common ancestor that the other operand's path waits for (the shortcut of a
    ResNet block: 4 rows, 3 after an option-A shortcut). A consumer folding rows into a running
    result (global pooling) keeps 2 rows."""
    nodes = [plan.input, *plan.nodes]
    order = {id(n): i for i, n in enumerate(nodes)}
    anc: dict[int, set[int]] = {id(plan.input): {id(plan.input)}}
    for node in plan.nodes:
        anc[id(node)] = {id(node)}.union(*(anc[id(e.src)] for e in node.inputs))
    memo: dict[tuple[int, int, int], int] = {}

    def need_to(x: _Node, a: int, r: int) -> int:
        """Row r of x -> the last row of ancestor a it needs (max over the paths; rows past the
        ends extrapolated, so the image's last rows do not look all available at once)."""
        key = (id(x), a, r)
        if key not in memo:
            if id(x) == a:
                memo[key] = r
            else:
                memo[key] = max(need_to(e.src, a, e.need_free(r)) for e in x.inputs
                                if a in anc[id(e.src)])
        return memo[key]

    out = {}
    for node in plan.nodes:
        srcs = [e.src for e in node.inputs]
        common = set.intersection(*(anc[id(s)] for s in srcs))
        a = max(common, key=lambda k: order[k])
        for e in node.inputs:
            if e.streams:
                out[id(e)] = min(2, e.src.rows)
                continue
            need_u = [need_to(e.src, a, q) for q in range(e.src.rows)]
            held = 1
            for r in range(node.rows):
                r1 = min(r + 1, node.rows - 1)
                avail = bisect.bisect_right(need_u, need_to(node, a, r1)) - 1
                avail = min(max(avail, e.need(r1)), e.src.rows - 1)
                held = max(held, avail - e.first(r) + 1)
            out[id(e)] = min(held, e.src.rows)
    return out


def buffer_needs(plan: _Plan) -> dict[int, list[tuple[str, str, int]]]:
    """Router -> what its buffer must hold (kind, description, bytes): the input rows each consumer keeps
    (:func:`held_rows`), one output row per array (the row being written and sent), the partial
    sums of one row at row block 0's tile; at the digital units (router ``digital``) also the FP32
    weights of the digital layers and one input image."""
    chip = plan.chip.chip
    D = chip.tiles.count
    out_bytes = math.ceil(chip.tiles.adc.bits / 8)
    held = held_rows(plan)
    needs: dict[int, list[tuple[str, str, int]]] = {}

    def add(router: int, kind: str, what: str, nbytes: int) -> None:
        if nbytes > 0:
            needs.setdefault(router, []).append((kind, what, int(nbytes)))

    add(D, "input image", "input image (FP32)",
        plan.input.rows * plan.input.row_values * FP32_BYTES)
    for node in plan.nodes:
        for e in node.inputs:
            if e.src is plan.input and node.role == "digital":
                continue                     # read from the input image held above
            for router, b in e.row_bytes.items():
                add(router, "input rows", f"{held[id(e)]} rows of {e.src.name} for {node.name}",
                    held[id(e)] * b)
        if node.role == "analog":
            for a in node.lm.arrays:
                add(a.tile, "output rows", f"output row of {node.name}",
                    node.lm.share(a.copy) * a.weight_cols_used * out_bytes)
            for _s, home, b in node.psums:
                add(home, "partial sums", f"partial sums of {node.name}", b)
        elif node.role == "digital":
            add(D, "weights", f"weights of {node.name} (FP32)", node.lm.k * node.lm.n * FP32_BYTES)
            add(D, "output rows", f"output row of {node.name} (FP32)",
                node.row_values * FP32_BYTES)
    return needs


def check_capacities(plan: _Plan, parts: TMapping) -> dict[int, int]:
    """Bytes each buffer must hold (router -> bytes); raises ConfigError naming the YAML path when
    a tile buffer or the digital SRAM cannot hold what the schedule needs, and by how much."""
    chip = plan.chip
    D = chip.chip.tiles.count
    needs = buffer_needs(plan)
    totals = {router: sum(b for _, _, b in items) for router, items in needs.items()}
    worst = None
    for router, need in totals.items():
        if router == D:
            cap, path = parts["sram"].capacity_bytes, "chip.digital.sram.kib"
            where = f"the digital units' SRAM ({chip.chip.digital.units} x " \
                    f"{chip.chip.digital.sram.kib:g} KiB)"
        else:
            cap, path = parts["tile_buffer"].capacity_bytes, "chip.tiles.buffer.kib"
            where = f"tile {router}'s buffer ({chip.chip.tiles.buffer.kib:g} KiB)"
        short = need - cap
        if short > 0 and (worst is None or short > worst[0]):
            worst = (short, router, path, where, need)
    if worst is not None:
        short, router, path, where, need = worst
        groups: dict[str, list[tuple[str, int]]] = {}
        for kind, what, b in needs[router]:
            groups.setdefault(kind, []).append((what, b))
        parts_text = []
        for kind, items in sorted(groups.items(), key=lambda kv: -sum(b for _, b in kv[1])):
            top = max(items, key=lambda x: x[1])
            detail = top[0] if len(items) == 1 else f"{len(items)} items, largest {top[0]} " \
                                                     f"{_size(top[1])}"
            parts_text.append(f"{kind} {_size(sum(b for _, b in items))} ({detail})")
        raise ConfigError(chip.file, path,
                          f"{where} cannot hold what the schedule needs: {_size(need)}: "
                          f"{'; '.join(parts_text)}; short by {_size(short)}")
    return totals


def _size(nbytes: float) -> str:
    if nbytes >= 1024 * 1024:
        return f"{nbytes / 1024 / 1024:.3g} MiB"
    return f"{nbytes / 1024:.3g} KiB"


# ------------------------------------------------------------------------------------------
# Hardware objects and their processes
# ------------------------------------------------------------------------------------------

class Interconnect:
    """Mesh (or bus) of links, each a SimPy resource; latencies from the router part."""

    def __init__(self, env: simpy.Environment, chip: ChipConfig, router: Router | None = None):
        self.env = env
        self.router = router if router is not None else chip_parts(chip)["interconnect"]
        self.kind = chip.chip.interconnect.kind
        self.hop_latency = self.router.hop_latency_cycles
        n_tiles = chip.chip.tiles.count
        self.grid_cols = max(1, math.ceil(math.sqrt(n_tiles)))
        self.digital_node = n_tiles
        self.links: dict[tuple, simpy.Resource] = {}
        self.link_busy = 0
        self._routes: dict[tuple[int, int], tuple[tuple, ...]] = {}

    def coord(self, node: int) -> tuple[int, int]:
        if node == self.digital_node:
            return (-1, 0)
        return (node % self.grid_cols, node // self.grid_cols)

    def route(self, src: int, dst: int) -> tuple[tuple, ...]:
        """Links (sorted, the acquisition order) from router ``src`` to router ``dst``."""
        key = (src, dst)
        if key in self._routes:
            return self._routes[key]
        if src == dst:
            links: list[tuple] = []
        elif self.kind == "bus":
            links = [("bus",)]
        else:
            (x, y), (x2, y2) = self.coord(src), self.coord(dst)
            links = []
            while x != x2:
                nx = x + (1 if x2 > x else -1)
                links.append(((x, y), (nx, y)))
                x = nx
            while y != y2:
                ny = y + (1 if y2 > y else -1)
                links.append(((x, y), (x, ny)))
                y = ny
        self._routes[key] = tuple(sorted(links))
        return self._routes[key]

    def hops(self, src: int, dst: int) -> int:
        return len(self.route(src, dst))

    def _link(self, key: tuple) -> simpy.PriorityResource:
        res = self.links.get(key)
        if res is None:
            res = self.links[key] = simpy.PriorityResource(self.env, capacity=1)
        return res

    def send(self, src: int, dst: int, nbytes: int, priority: int = 0):
        """Hold the route for the serialization time; returns the hop latency still to add.
        Waiting senders are served lowest ``priority`` (inference index) first, then in order."""
        route = self.route(src, dst)
        if not route or nbytes <= 0:
            return 0
        held = []
        for key in route:
            res = self._link(key)
            req = res.request(priority=priority)
            yield req
            held.append((res, req))
        serial = self.router.serialization_cycles(nbytes)
        yield self.env.timeout(serial)
        for res, req in held:
            res.release(req)
        self.link_busy += serial * len(route)
        return self.hop_latency * len(route)

    def transmit(self, src: int, dst: int, nbytes: int, priority: int = 0):
        """A whole transfer: serialization (with contention) then the hop latency."""
        latency = yield from self.send(src, dst, nbytes, priority)
        if latency:
            yield self.env.timeout(latency)

    def carry(self, edge: _Edge, inferences: int, later: Callable):
        """Move every produced row of ``edge`` to the routers of its consumer."""
        for i in range(inferences):
            for j in range(edge.src.rows):
                ready = edge.src.ready[i][j]
                if not ready.processed:
                    yield ready
                latency = 0
                for s, d, b in edge.sends:
                    lat = yield from self.send(s, d, b, i)
                    latency = max(latency, lat)
                later(latency, edge.arrivals[i][j])


class Tile(simpy.PriorityResource):
    """One tile: its arrays, DAC row drivers, ADC bank, affine unit and buffer (``parts``), serving
    one array MVM row at a time (the arrays share the periphery)."""

    def __init__(self, env: simpy.Environment, index: int, coord: tuple[int, int],
                 parts: TileParts):
        super().__init__(env, capacity=1)
        self.index = index
        self.coord = coord
        self.parts = parts
        self.arrays: list = []                  # ArrayBlocks placed here
        self.busy_cycles = 0
        self.wake_cycles = parts.periphery.wake_up_cycles()   # None: no power gating
        self.last_release = 0
        self.gated: list[tuple[int, int]] = []  # [from, to) cycles its periphery was off

    def wake(self, now: int) -> int:
        """Cycles to power the tile up for work starting at ``now``: with power gating, a tile
        idle for longer than its wake-up time was switched off and wakes up first."""
        if self.wake_cycles is None or now - self.last_release <= self.wake_cycles:
            return 0
        self.gated.append((self.last_release + self.wake_cycles, now))
        return self.wake_cycles

    def gated_cycles(self, start: int, end: int, now: int) -> int:
        """Cycles of [start, end) the tile was gated (an idle tail up to ``now`` included)."""
        spans = list(self.gated)
        if self.wake_cycles is not None and now - self.last_release > self.wake_cycles:
            spans.append((self.last_release + self.wake_cycles, now))
        return sum(max(0, min(b, end) - max(a, start)) for a, b in spans)


class TileGroup:
    """The tiles holding one analog layer's arrays, driven together row by row."""

    def __init__(self, hw: "Hardware", node: _Node):
        self.hw = hw
        self.env = hw.env
        self.node = node
        self.tiles = [hw.tiles[t] for t in node.tiles]

    def integrate_and_convert(self):
        """Per output row, the tiles run the row's MVMs back to back (load, DAC integration, ADC
        conversion, affine, write pipelined as :class:`MvmStages` says)."""
        env, node, hw = self.env, self.node, self.hw
        for i in range(hw.n):
            got = [-1] * len(node.inputs)
            for r in range(node.rows):
                yield from node.wait_inputs(i, r, got)
                with contextlib.ExitStack() as held:
                    for res in self.tiles:
                        yield held.enter_context(res.request(priority=i))
                    if i == 0 and node.start is None:
                        node.start = int(env.now)
                    hold = node.hold + max(tile.wake(int(env.now)) for tile in self.tiles)
                    yield env.timeout(hold)
                for tile in self.tiles:
                    tile.busy_cycles += hold
                    tile.last_release = int(env.now)
                hw.busy["tile"] += hold * len(self.tiles)
                if i == 0:
                    node.busy += hold
                if node.psums:
                    env.process(self.accumulate(i, node.ready[i][r]))
                else:
                    hw.later(node.drain, node.ready[i][r])

    def accumulate(self, i: int, ready: simpy.Event):
        """Row-block partial sums: drain the pipeline, send to row block 0's tile, add there."""
        node, hw = self.node, self.hw
        if node.drain:
            yield self.env.timeout(node.drain)
        latency = 0
        for s, d, b in node.psums:
            lat = yield from hw.ic.send(s, d, b, i)
            latency = max(latency, lat)
        yield self.env.timeout(latency + node.accumulate)
        hw.busy["accumulator"] += node.accumulate
        ready.succeed()


class DigitalUnit(simpy.PriorityResource):
    """The FP32 systolic units with their SRAMs: one shared resource."""

    def __init__(self, hw: "Hardware"):
        super().__init__(hw.env, capacity=1)
        self.hw = hw

    def systolic(self, node: _Node):
        """A digital layer, row by row."""
        env, hw = self.hw.env, self.hw
        for i in range(hw.n):
            got = [-1] * len(node.inputs)
            for r in range(node.rows):
                yield from node.wait_inputs(i, r, got)
                with self.request(priority=i) as req:
                    yield req
                    if i == 0 and node.start is None:
                        node.start = int(env.now)
                    cycles = node.row_cycles[r]
                    yield env.timeout(cycles)
                hw.busy["digital_unit"] += cycles
                if i == 0:
                    node.busy += cycles
                node.ready[i][r].succeed()


class VectorUnit:
    """Add, pools, option-A shortcut: lanes next to where the data lives, no contention."""

    def __init__(self, hw: "Hardware"):
        self.hw = hw

    def elementwise(self, node: _Node):
        env, hw = self.hw.env, self.hw
        for i in range(hw.n):
            got = [-1] * len(node.inputs)
            for r in range(node.rows):
                yield from node.wait_inputs(i, r, got)
                if i == 0 and node.start is None:
                    node.start = int(env.now)
                cycles = node.row_cycles[r]
                if cycles:
                    yield env.timeout(cycles)
                hw.busy["vector"] += cycles
                if i == 0:
                    node.busy += cycles
                node.ready[i][r].succeed()


class Hardware:
    """The chip's hardware objects in one SimPy environment, and what they share (the inference
    count, busy counters, completion times)."""

    def __init__(self, mapping: Mapping, inferences: int):
        self.env = simpy.Environment()
        self.chip = mapping.chip
        self.n = inferences
        self.parts = chip_parts(self.chip)
        self.ic = Interconnect(self.env, self.chip, self.parts["interconnect"])
        parts = tile_parts(self.chip, self.parts)
        self.tiles = [Tile(self.env, t, self.ic.coord(t), parts)
                      for t in range(self.chip.chip.tiles.count)]
        for a in mapping.arrays:
            self.tiles[a.tile].arrays.append(a)
        self.digital = DigitalUnit(self)
        self.vector = VectorUnit(self)
        self.busy = {"tile": 0, "digital_unit": 0, "vector": 0, "accumulator": 0}
        self.finish = [0] * inferences

    def later(self, delay: int, event: simpy.Event) -> None:
        if delay <= 0:
            event.succeed()
        else:
            self.env.timeout(delay).callbacks.append(lambda _e: event.succeed())

    def finisher(self, node: _Node, i: int):
        def done(_event):
            now = int(self.env.now)
            if i == 0:
                node.end = now
            self.finish[i] = max(self.finish[i], now)
        return done


def setup(mapping: Mapping, inferences: int) -> tuple[Hardware, _Plan]:
    """Build the hardware, plan the network on it and start every process."""
    hw = Hardware(mapping, inferences)
    plan = _Plan(mapping, hw.ic, hw.parts)
    env = hw.env
    for node in [plan.input, *plan.nodes]:
        node.ready = [[env.event() for _ in range(node.rows)] for _ in range(inferences)]
        for i in range(inferences):
            node.ready[i][-1].callbacks.append(hw.finisher(node, i))
    for edge in plan.edges:
        if edge.sends:
            edge.arrivals = [[env.event() for _ in range(edge.src.rows)]
                             for _ in range(inferences)]
            env.process(hw.ic.carry(edge, inferences, hw.later))
        else:
            edge.arrivals = edge.src.ready
    for node in plan.nodes:
        if node.role == "analog":
            env.process(TileGroup(hw, node).integrate_and_convert())
        elif node.role == "digital":
            env.process(hw.digital.systolic(node))
        else:
            env.process(hw.vector.elementwise(node))
    for i in range(inferences):
        for ev in plan.input.ready[i]:
            ev.succeed()
    return hw, plan


def _run(env: simpy.Environment) -> int:
    events = 0
    step = env.step
    try:
        while True:
            step()
            events += 1
    except simpy.core.EmptySchedule:
        pass
    return events


def _result(hw: Hardware, plan: _Plan, events: int, needs: TMapping[int, int]) -> TimingResult:
    chip = hw.chip.chip
    n = hw.n
    total = int(hw.env.now)
    latency = hw.finish[0]
    interval = (hw.finish[-1] - hw.finish[0]) // (n - 1) if n > 1 else latency
    per_node = {node.name: node for node in plan.nodes}
    layers = []
    actions: dict[str, int] = {}
    for layer in plan.net.layers:
        if layer.name in plan.fused:
            src = plan.alias[layer.name]
            layers.append(LayerTiming(layer.name, layer.kind, "fused", src.start or 0, src.end,
                                      0, 0, 0, _frozen({})))
            continue
        node = per_node[layer.name]
        start = node.start or 0
        placement = node.lm.placement if node.lm is not None else "vector"
        stall = node.stall if node.role == "digital" else max(0, node.end - start - node.busy)
        layers.append(LayerTiming(layer.name, layer.kind, placement, start, node.end,
                                  node.busy, stall, node.lm.mvms if node.lm else 0,
                                  _frozen(node.actions), node.tiles))
        for k, v in node.actions.items():
            actions[k] = actions.get(k, 0) + v * n
    busy = dict(hw.busy)
    busy["interconnect"] = hw.ic.link_busy
    clock_hz = chip.clock_mhz * 1e6
    w0, w1 = (hw.finish[0], hw.finish[-1]) if n > 1 else (0, latency)
    return TimingResult(
        clock_mhz=chip.clock_mhz, inferences=n, layers=tuple(layers),
        actions=_frozen(actions), busy_cycles=_frozen(busy), total_cycles=total,
        latency_cycles=latency, latency_ns=latency * chip.clock_ns,
        interval_cycles=interval,
        throughput_inferences_per_s=clock_hz / interval if interval else 0.0,
        tile_utilization=tuple(t.busy_cycles / total if total else 0.0 for t in hw.tiles),
        events=events, tiles_used=tuple(t.index for t in hw.tiles if t.arrays),
        window_cycles=w1 - w0,
        tile_gated_cycles=tuple(t.gated_cycles(w0, w1, total) for t in hw.tiles),
        buffer_need_bytes=tuple(needs.get(t.index, 0) for t in hw.tiles),
        sram_need_bytes=needs.get(hw.ic.digital_node, 0))


def simulate_timing(mapping: Mapping, inferences: int = 1) -> TimingResult:
    """Simulate ``inferences`` inferences in flight through the mapped network (deterministic)."""
    if inferences < 1:
        raise ValueError(f"inferences must be >= 1, got {inferences}")
    hw, plan = setup(mapping, int(inferences))
    needs = check_capacities(plan, hw.parts)
    return _result(hw, plan, _run(hw.env), needs)
