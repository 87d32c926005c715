"""Cycle-level timing model (SimPy): tiles, converters, digital units and interconnect advance time
and count actions; nothing here computes a value. Time is in integer clock cycles of
``chip.clock_mhz``; a duration given in ns takes ``ceil(ns / clock_ns)`` cycles.

Hardware objects
----------------
- **Tile** (a ``simpy.PriorityResource``, capacity 1): its arrays, DAC row drivers, ADC bank, affine
  unit and buffer. The arrays of a tile share its periphery, so a tile runs one array's MVMs at a
  time (arrays of one layer on one tile take turns; :func:`peak_figures` counts one MVM stream
  per tile).
- **Interconnect**: a 2-D mesh of routers, tiles laid row-major on a near-square grid of
  ``ceil(sqrt(count))`` columns, the digital units on one router at the west edge (x = -1, y = 0);
  XY routing; every directed link is a ``simpy.PriorityResource``. A transfer of B bytes holds all links of
  its route at once for ``ceil(B / bytes_per_cycle)`` cycles (cut-through; links are acquired in one
  global order, so no deadlock) and arrives ``hops x hop_latency_cycles`` later. ``kind: bus``: one
  shared link, one hop.
- **Digital cluster**: ``digital.units`` FP32 systolic arrays with their SRAMs on the edge router, a
  single resource; a digital layer's folds are split among the units. Rows of different layers
  take turns on it (no weight-reload cost is charged for the switch).

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

Non-matrix layers: BatchNorm folds into the affine unit (analog) or the systolic output stage
(digital); ReLU and Flatten are fused into the producer's output write: all three cost nothing and
report their producer's times. Add, pools, global pool and the option-A shortcut run where their
first operand lives, on a vector unit of ``affine.lanes`` lanes without contention: a row costs
``ceil(ops / lanes)`` cycles, ops = output elements (add), output elements x kernel^2 (pools),
input elements (global pool), 0 for the shortcut (a strided selection with zero channels); each op
is an ``accumulator.add``. Each layer class says which it is (:mod:`archsim.layers`: ``timing``,
``vector_ops``, ``input_row_needed``): Clip (ReLU6) and LeakyReLU fuse like ReLU; Mul, Sigmoid,
Tanh and HardSigmoid cost one op per output element, HardSwish two; Concat, Pad and Slice are
selections (0 ops) whose row r needs input row r, r - pad_top and start + r x step; a grouped
digital conv runs its groups as separate GEMMs (their folds shared by the units).

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
Not modelled: buffer capacity back-pressure, reprogramming for time-multiplexed mappings.

Results: per layer (first inference) start/end cycle, busy cycles (its hardware held), stall cycles
(digital: SRAM stall; others: cycles inside [start, end] not busy, i.e. waiting for inputs, links
or the pipeline drain), actions; whole-run actions and busy cycles per kind (``tile`` summed over
tiles, ``digital_unit``, ``interconnect`` link-cycles, ``vector`` steps, ``accumulator`` partial-sum
adds); latency of the first inference; ``interval_cycles`` = (last completion - first completion) //
(inferences - 1), or the latency for one inference.
"""

from __future__ import annotations

import math
import types
from dataclasses import dataclass, field
from typing import Callable, Mapping as TMapping

import simpy

from .config import ChipConfig
from .mapping import LayerMapping, Mapping
from .network import INPUT, Layer, Network

FP32_BYTES = 4


def ns_to_cycles(ns: float, clock_ns: float) -> int:
    """Whole cycles covering ``ns`` (a sub-cycle duration still takes one cycle)."""
    if ns <= 0:
        return 0
    return max(1, math.ceil(ns / clock_ns - 1e-9))


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


def mvm_stages(chip: ChipConfig, rows_used: int, weight_cols_used: int) -> MvmStages:
    c = chip.chip
    t = c.tiles
    clk = c.clock_ns
    in_bytes = math.ceil(t.dac.bits / 8)
    out_bytes = math.ceil(t.adc.bits / 8)
    if t.dac.encoding == "pwm":
        steps = t.dac.phases
        integrate = ns_to_cycles((2 ** (t.dac.bits - 1) - 1) * t.dac.t_lsb_ns, clk)
    else:
        steps = t.dac.bits
        integrate = ns_to_cycles(t.array.read_time_ns, clk)
    convert = math.ceil(weight_cols_used / t.adc.per_tile) * ns_to_cycles(t.adc.conversion_ns, clk)
    return MvmStages(
        load=math.ceil(rows_used * in_bytes / t.buffer.bytes_per_cycle),
        integrate=integrate, convert=convert,
        affine=math.ceil(weight_cols_used / t.affine.lanes),
        write=math.ceil(weight_cols_used * out_bytes / t.buffer.bytes_per_cycle),
        steps=steps, double_buffered=t.double_buffered)


def systolic_cycles(m: int, k: int, n: int, rows: int, cols: int, dataflow: str,
                    units: int = 1) -> int:
    """Compute cycles of an (M x K) @ (K x N) GEMM on ``units`` R x C arrays (SCALE-Sim analytical
    model, ISPASS 2020): ceil(folds / units) x (2R + C + T - 2)."""
    s_r, s_c, t = {"os": (m, n, k), "ws": (k, n, m), "is": (k, m, n)}[dataflow]
    folds = math.ceil(s_r / rows) * math.ceil(s_c / cols)
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


def digital_layer_cycles(chip: ChipConfig, m: int, k: int, n: int, groups: int = 1
                         ) -> tuple[int, int, int]:
    """(total cycles, stall cycles, SRAM bytes) of one digital GEMM on the digital cluster; a
    grouped conv is ``groups`` independent GEMMs of M x K/groups x N/groups whose folds the units
    share."""
    d = chip.chip.digital
    s = d.systolic
    if groups == 1:
        compute = systolic_cycles(m, k, n, s.rows, s.cols, s.dataflow, d.units)
        nbytes = systolic_sram_bytes(m, k, n, s.rows, s.cols, s.dataflow)
    else:
        kg, ng = k // groups, n // groups
        s_r, s_c, t = {"os": (m, ng, kg), "ws": (kg, ng, m), "is": (kg, m, ng)}[s.dataflow]
        folds = groups * math.ceil(s_r / s.rows) * math.ceil(s_c / s.cols)
        compute = math.ceil(folds / max(d.units, 1)) * (2 * s.rows + s.cols + t - 2)
        nbytes = groups * systolic_sram_bytes(m, kg, ng, s.rows, s.cols, s.dataflow)
    sram = math.ceil(nbytes / (max(d.units, 1) * d.sram.bytes_per_cycle))
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

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "placement": self.placement,
                "start_cycle": self.start_cycle, "end_cycle": self.end_cycle,
                "cycles": self.end_cycle - self.start_cycle, "busy_cycles": self.busy_cycles,
                "stall_cycles": self.stall_cycles, "mvms": self.mvms, "actions": dict(self.actions)}


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
                "layers": [lt.to_dict() for lt in self.layers]}


# ------------------------------------------------------------------------------------------
# Hardware objects
# ------------------------------------------------------------------------------------------

class Tile(simpy.PriorityResource):
    """One tile: its arrays, DAC row drivers, ADC bank, affine unit and buffer, serving one array
    MVM row at a time (the arrays share the periphery)."""

    def __init__(self, env: simpy.Environment, index: int, coord: tuple[int, int]):
        super().__init__(env, capacity=1)
        self.index = index
        self.coord = coord
        self.arrays: list = []                  # ArrayBlocks placed here
        self.busy_cycles = 0


class Interconnect:
    """Mesh (or bus) of links, each a SimPy resource."""

    def __init__(self, env: simpy.Environment, chip: ChipConfig):
        ic = chip.chip.interconnect
        self.env = env
        self.kind = ic.kind
        self.bytes_per_cycle = ic.bytes_per_cycle
        self.hop_latency = ic.hop_latency_cycles
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
        serial = math.ceil(nbytes / self.bytes_per_cycle)
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


@dataclass
class _Edge:
    src: _Node
    dst: _Node
    need: Callable[[int], int]          # consumer row -> last producer row it needs
    sends: list[tuple[int, int, int]]   # (src router, dst router, bytes) per producer row
    arrivals: list[list[simpy.Event]] | None = None   # per inference, per producer row


def _rows_of(shape: tuple[int, ...]) -> tuple[int, int]:
    """(rows, values per row) of an activation shape."""
    if len(shape) == 3:
        return shape[0], shape[1] * shape[2]
    return 1, int(math.prod(shape))


def _need_fn(layer: Layer, in_index: int, declared_in: tuple[int, ...], src_rows: int
             ) -> Callable[[int], int]:
    """Consumer row -> the last producer row it needs (the layer says which, e.g. a 3x3 conv row r
    needs input row r*stride - pad + 2; None: all rows)."""
    last = src_rows - 1
    if len(declared_in) != 3 or src_rows == 1 or layer.input_row_needed(0, in_index,
                                                                         declared_in) is None:
        return lambda r: last
    return lambda r: min(last, layer.input_row_needed(r, in_index, declared_in))


class _Plan:
    def __init__(self, mapping: Mapping, ic: Interconnect):
        chip = mapping.chip
        net: Network = mapping.network
        t = chip.chip.tiles
        self.chip = chip
        self.net = net
        D = ic.digital_node
        self.lanes = t.affine.lanes
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
            if layer.timing == "fused":
                self.alias[layer.name] = self.alias[layer.inputs[0]]
                self.fused[layer.name] = self.alias[layer.inputs[0]].name
                continue
            out_shape = net.shape(layer.name)
            rows, row_values = _rows_of(out_shape)
            first = self.alias[layer.inputs[0]]
            if layer.is_matrix:
                lm = by_name[layer.name]
                m = lm.mvms
                width = out_shape[1] if len(out_shape) == 3 else 1
                if lm.analog:
                    node = self._analog_node(layer, lm, rows, row_values, width, psum_bytes, ic)
                    st_all = [mvm_stages(chip, a.rows_used, a.weight_cols_used) for a in lm.arrays]
                    add_actions(node, "pcm_array.mvm", m * len(lm.arrays))
                    add_actions(node, "dac.drive", m * sum(a.rows_used for a in lm.arrays))
                    add_actions(node, "adc.conversion", m * sum(
                        a.weight_cols_used * s.steps for a, s in zip(lm.arrays, st_all)))
                    add_actions(node, "affine.op", m * lm.n)
                    add_actions(node, "accumulator.add", m * lm.n * (lm.row_blocks - 1))
                    add_actions(node, "tile_buffer.byte", m * sum(
                        a.rows_used * analog_bytes + a.weight_cols_used * psum_bytes
                        for a in lm.arrays))
                    for s, d_, b in node.psums:
                        add_actions(node, "interconnect.byte_hop", rows * b * ic.hops(s, d_))
                else:
                    node = _Node(layer, layer.name, "digital", rows, row_values, [(D, 1.0)], lm)
                    total, stall, nbytes = digital_layer_cycles(chip, m, lm.k, lm.n, lm.groups)
                    node.row_cycles = [total * (r + 1) // rows - total * r // rows
                                       for r in range(rows)]
                    node.stall = stall
                    add_actions(node, "digital_mac.mac", lm.macs)
                    add_actions(node, "sram.byte", nbytes)
            else:
                node = _Node(layer, layer.name, "vector", rows, row_values, list(first.loc))
                ops = layer.vector_ops(net.input_shapes_of(layer), out_shape, row_values)
                node.row_cycles = [math.ceil(ops / self.lanes)] * rows
                add_actions(node, "accumulator.add", ops * rows)
            # input edges
            for in_index, src_name in enumerate(layer.inputs):
                src = self.alias[src_name]
                declared = net.shape(src_name) if src_name != INPUT else tuple(net.input_shape)
                need = _need_fn(layer, in_index, declared, src.rows)
                if node.role == "analog":
                    dst_loc = [(a.tile, a.rows_used / node.lm.k) for a in node.lm.arrays]
                elif node.role == "digital":
                    dst_loc = [(D, 1.0)]
                else:
                    dst_loc = node.loc
                nbytes = FP32_BYTES if (D in [r for r, _ in src.loc] or
                                        D in [r for r, _ in dst_loc]) else analog_bytes
                sends = []
                for s, fs in src.loc:
                    for d_, gd in dst_loc:
                        if s != d_:
                            b = math.ceil(src.row_values * nbytes * fs * gd)
                            sends.append((s, d_, b))
                            add_actions(node, "interconnect.byte_hop", src.rows * b * ic.hops(s, d_))
                edge = _Edge(src, node, need, sends)
                node.inputs.append(edge)
                self.edges.append(edge)
            self.nodes.append(node)
            self.alias[layer.name] = node

    def _analog_node(self, layer, lm, rows, row_values, width, psum_bytes, ic) -> _Node:
        chip = self.chip
        loc = [(a.tile, a.weight_cols_used / lm.n) for a in lm.arrays if a.row_block == 0]
        node = _Node(layer, layer.name, "analog", rows, row_values, loc, lm)
        node.tiles = tuple(sorted({a.tile for a in lm.arrays}))
        per_tile: dict[int, int] = {}           # arrays sharing a tile run one after another
        drains = []
        for a in lm.arrays:
            st = mvm_stages(chip, a.rows_used, a.weight_cols_used)
            per_tile[a.tile] = per_tile.get(a.tile, 0) + width * st.interval
            drains.append(st.cycles(width) - width * st.interval)
        node.hold = max(per_tile.values())
        node.drain = max(drains)
        if lm.row_blocks > 1:
            home = {a.col_block: a.tile for a in lm.arrays if a.row_block == 0}
            node.psums = [(a.tile, home[a.col_block], width * a.weight_cols_used * psum_bytes)
                          for a in lm.arrays if a.row_block > 0]
            widest = max(a.weight_cols_used for a in lm.arrays)
            node.accumulate = math.ceil(width * widest * (lm.row_blocks - 1) / self.lanes)
        return node


# ------------------------------------------------------------------------------------------
# Simulation
# ------------------------------------------------------------------------------------------

class _Sim:
    def __init__(self, mapping: Mapping, inferences: int):
        self.env = simpy.Environment()
        self.chip = mapping.chip
        self.n = inferences
        self.ic = Interconnect(self.env, self.chip)
        self.plan = _Plan(mapping, self.ic)
        n_tiles = self.chip.chip.tiles.count
        self.tiles = [Tile(self.env, t, self.ic.coord(t)) for t in range(n_tiles)]
        for a in mapping.arrays:
            self.tiles[a.tile].arrays.append(a)
        self.digital = simpy.PriorityResource(self.env, capacity=1)
        self.busy = {"tile": 0, "digital_unit": 0, "vector": 0, "accumulator": 0}
        self.finish = [0] * inferences
        env = self.env
        for node in [self.plan.input, *self.plan.nodes]:
            node.ready = [[env.event() for _ in range(node.rows)] for _ in range(inferences)]
            for i in range(inferences):
                node.ready[i][-1].callbacks.append(self._finisher(node, i))
        for edge in self.plan.edges:
            if edge.sends:
                edge.arrivals = [[env.event() for _ in range(edge.src.rows)]
                                 for _ in range(inferences)]
                env.process(self.transmit(edge))
            else:
                edge.arrivals = edge.src.ready
        for node in self.plan.nodes:
            proc = {"analog": self.integrate_and_convert, "digital": self.systolic,
                    "vector": self.normalize}[node.role]
            env.process(proc(node))
        for i in range(inferences):
            for ev in self.plan.input.ready[i]:
                ev.succeed()

    def _finisher(self, node: _Node, i: int):
        def done(_event):
            now = int(self.env.now)
            if i == 0:
                node.end = now
            self.finish[i] = max(self.finish[i], now)
        return done

    def _later(self, delay: int, event: simpy.Event) -> None:
        if delay <= 0:
            event.succeed()
        else:
            self.env.timeout(delay).callbacks.append(lambda _e: event.succeed())

    # ---- processes ---------------------------------------------------------------------
    def load_inputs(self, node: _Node, i: int, r: int, got: list[int]):
        """Wait until the input rows that output row r needs have arrived at this layer."""
        for e, edge in enumerate(node.inputs):
            j = edge.need(r)
            arrivals = edge.arrivals[i]
            for jj in range(got[e] + 1, j + 1):
                if not arrivals[jj].processed:
                    yield arrivals[jj]
            got[e] = max(got[e], j)

    def transmit(self, edge: _Edge):
        """Move every produced row to the routers of its consumer."""
        for i in range(self.n):
            for j in range(edge.src.rows):
                ready = edge.src.ready[i][j]
                if not ready.processed:
                    yield ready
                latency = 0
                for s, d, b in edge.sends:
                    lat = yield from self.ic.send(s, d, b, i)
                    latency = max(latency, lat)
                self._later(latency, edge.arrivals[i][j])

    def integrate_and_convert(self, node: _Node):
        """Analog layer: per output row, the tiles run the row's MVMs back to back (load, DAC
        integration, ADC conversion, affine, write pipelined as :class:`MvmStages` says)."""
        env = self.env
        tiles = [self.tiles[t] for t in node.tiles]
        for i in range(self.n):
            got = [-1] * len(node.inputs)
            for r in range(node.rows):
                yield from self.load_inputs(node, i, r, got)
                reqs = []
                for res in tiles:
                    req = res.request(priority=i)
                    yield req
                    reqs.append(req)
                if i == 0 and node.start is None:
                    node.start = int(env.now)
                yield env.timeout(node.hold)
                for res, req in zip(tiles, reqs):
                    res.release(req)
                for tile in tiles:
                    tile.busy_cycles += node.hold
                self.busy["tile"] += node.hold * len(tiles)
                if i == 0:
                    node.busy += node.hold
                if node.psums:
                    env.process(self.accumulate(node, i, node.ready[i][r]))
                else:
                    self._later(node.drain, node.ready[i][r])

    def accumulate(self, node: _Node, i: int, ready: simpy.Event):
        """Row-block partial sums: drain the pipeline, send to row block 0's tile, add there."""
        if node.drain:
            yield self.env.timeout(node.drain)
        latency = 0
        for s, d, b in node.psums:
            lat = yield from self.ic.send(s, d, b, i)
            latency = max(latency, lat)
        yield self.env.timeout(latency + node.accumulate)
        self.busy["accumulator"] += node.accumulate
        ready.succeed()

    def systolic(self, node: _Node):
        """Digital layer on the FP32 systolic cluster, row by row."""
        env = self.env
        for i in range(self.n):
            got = [-1] * len(node.inputs)
            for r in range(node.rows):
                yield from self.load_inputs(node, i, r, got)
                req = self.digital.request(priority=i)
                yield req
                if i == 0 and node.start is None:
                    node.start = int(env.now)
                cycles = node.row_cycles[r]
                yield env.timeout(cycles)
                self.digital.release(req)
                self.busy["digital_unit"] += cycles
                if i == 0:
                    node.busy += cycles
                node.ready[i][r].succeed()

    def normalize(self, node: _Node):
        """Add, pools, option-A shortcut: cheap vector steps next to where the data lives."""
        env = self.env
        for i in range(self.n):
            got = [-1] * len(node.inputs)
            for r in range(node.rows):
                yield from self.load_inputs(node, i, r, got)
                if i == 0 and node.start is None:
                    node.start = int(env.now)
                cycles = node.row_cycles[r]
                if cycles:
                    yield env.timeout(cycles)
                self.busy["vector"] += cycles
                if i == 0:
                    node.busy += cycles
                node.ready[i][r].succeed()

    # ---- run ---------------------------------------------------------------------------
    def run(self) -> TimingResult:
        env = self.env
        events = 0
        step = env.step
        try:
            while True:
                step()
                events += 1
        except simpy.core.EmptySchedule:
            pass
        return self._result(events)

    def _result(self, events: int) -> TimingResult:
        chip = self.chip.chip
        plan = self.plan
        total = int(self.env.now)
        latency = self.finish[0]
        if self.n > 1:
            interval = (self.finish[-1] - self.finish[0]) // (self.n - 1)
        else:
            interval = latency
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
                                      _frozen(node.actions)))
            for k, v in node.actions.items():
                actions[k] = actions.get(k, 0) + v * self.n
        busy = dict(self.busy)
        busy["interconnect"] = self.ic.link_busy
        clock_hz = chip.clock_mhz * 1e6
        return TimingResult(
            clock_mhz=chip.clock_mhz, inferences=self.n, layers=tuple(layers),
            actions=_frozen(actions), busy_cycles=_frozen(busy), total_cycles=total,
            latency_cycles=latency, latency_ns=latency * chip.clock_ns,
            interval_cycles=interval,
            throughput_inferences_per_s=clock_hz / interval if interval else 0.0,
            tile_utilization=tuple(t.busy_cycles / total if total else 0.0 for t in self.tiles),
            events=events)


def simulate_timing(mapping: Mapping, inferences: int = 1) -> TimingResult:
    """Simulate ``inferences`` inferences in flight through the mapped network (deterministic)."""
    if inferences < 1:
        raise ValueError(f"inferences must be >= 1, got {inferences}")
    return _Sim(mapping, int(inferences)).run()
