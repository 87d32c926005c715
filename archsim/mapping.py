"""Mapping: which layer runs analog or digital, how each analog weight matrix is split onto crossbar
arrays, how many copies of it the chip holds, which blocks share an array, and which tile holds
each array. One immutable :class:`Mapping` is read by both the functional and the timing
simulation, so the accuracy run and the cost run see the same placement.

- Placement: ``hybrid`` keeps the first and the last matrix layer (stem conv, classifier) in digital
  FP32 and puts every other conv/linear on PCM; ``all-analog`` / ``all-digital`` do what they say;
  ``mapping.overrides`` (layer name -> analog | digital) wins over the policy.
- Flattening: a conv kernel OIHW becomes K = Cin*kh*kw rows by N = Cout columns (Linear: K = in,
  N = out); one MVM per output pixel.
- Splitting: K into ceil(K / rows) near-equal row blocks (the first K mod blocks get one row more),
  N into ceil(N / weight columns per array) near-equal column blocks; each (row block, column block)
  is one weight block with its own scale, noise and ADCs. Row-block partial sums are added in
  digital.
- Grouped convs (depthwise included): the K x N matrix is block-diagonal, one K/G x N/G block per
  group. Whole groups are packed along the diagonal, as many per array as fit in both its rows and
  its weight columns (near-equal runs of consecutive groups); the devices off the diagonal blocks
  stay in the RESET state (0 conductance, never programmed) and count as unused. A group larger
  than an array is split like a dense matrix, within its own block. Either way each weight block is
  a rectangle of the full K x N matrix, and its real rows and columns are what timing charges.
- Replication (``mapping.replication``): an analog layer may have several copies of its weights,
  each programmed on arrays of its own. Copy c computes the output pixels of a contiguous share of
  every output row, columns ``copy_cols[c] = [w0, w1)`` (near-equal shares, the first ``W mod C``
  one column wider), so C copies finish a row of W pixels in ceil(W / C) MVMs while they run in
  parallel. ``none``: one copy; ``{layer: copies}``: as given (at most one copy per output column);
  ``auto``: balance the pipeline (:func:`plan_auto`): starting from one copy each, the layer whose
  MVM work sets the estimated steady-state interval gets the fewest extra copies that shorten its
  rows, until no array is left for it, it has a copy per output column, or the digital units set the
  interval; the copies that did not lower the interval in the end are dropped again. The estimate
  uses the timing model's closed forms (:class:`archsim.timing.MvmStages` per array, the systolic
  cycles of the digital layers) and assumes a layer's arrays on different tiles (true with one array
  per tile; with several, replicated arrays are spread over the tiles first).
- Packing (``mapping.packing``): blocks share one array when their rows and columns are disjoint
  (block-diagonal). ``copies``: the copies of a layer, as many per array as fit
  (min(rows // block rows, weight columns // block columns)): one MVM then drives the patches of that
  many pixels on disjoint rows and converts all their columns (a 144 x 16 block fits 3 times in 512
  rows: 3 pixels per MVM). ``layers``: in addition, an array with free rows and columns takes the
  blocks of another layer (first fit, in layer order) as long as the work of the layers sharing it
  stays within the estimated interval (or, when the network does not fit the chip otherwise,
  without that limit). Layers sharing an array take turns on it (the timing model serializes their
  rows on the tile). Utilization = devices holding weights / devices of the arrays used.
- Allocation: arrays are given to tiles in layer order (a layer's copies one after another),
  ``tiles.arrays_per_tile`` per tile; with several arrays per tile and replication or layer packing
  on, tile by tile first (slot 0 of every tile, then slot 1, ...) so copies run on different tiles.
  When the network needs more arrays than the chip has, a MappingError says how many arrays and
  tiles it needs with and without replication (or, with ``mapping.time_multiplex: true``, arrays are
  reused in programming rounds).
"""

from __future__ import annotations

import difflib
import math
import types
from dataclasses import dataclass, field
from typing import Mapping as TMapping

import numpy as np

from .config import ChipConfig
from .errors import MappingError
from .network import Layer, MatrixView, Network


def copy_key(layer: str, copy: int) -> str:
    """The name of copy ``copy`` of a layer's programmed weights (copy 0: the layer's own name)."""
    return layer if copy == 0 else f"{layer}#copy{copy}"


def copy_columns(width: int, copies: int) -> tuple[tuple[int, int], ...]:
    """[w0, w1) of the output columns each of ``copies`` copies computes in every output row:
    near-equal contiguous shares, the first ``width mod copies`` one column wider."""
    sizes = [width // copies + (1 if c < width % copies else 0) for c in range(copies)]
    edges = np.cumsum([0] + sizes)
    return tuple((int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]))


def input_columns(layer: Layer, w0: int, w1: int, in_width: int) -> tuple[int, int]:
    """[first, stop) of the input columns that output columns [w0, w1) of ``layer`` read (a conv's
    windows, clipped to the input; other layers read the same columns)."""
    kernel = getattr(layer, "kernel_shape", None)
    if kernel is None:
        return w0, min(w1, in_width)
    first = w0 * layer.strides[1] - layer.pads[1]
    last = (w1 - 1) * layer.strides[1] - layer.pads[1] + layer.dilations[1] * (kernel[1] - 1)
    return max(0, first), min(in_width, last + 1)


@dataclass(frozen=True)
class ArrayBlock:
    """One weight block on a crossbar array: a (row block, column block) rectangle of one copy of a
    layer's weight matrix. Blocks packed into one array share its ``index`` and sit on disjoint
    word lines and weight columns of it, from (``array_row``, ``array_col``)."""
    index: int                      # array id across the chip (in allocation order)
    layer: str
    row_block: int
    col_block: int
    row_start: int                  # [row_start, row_stop) of the layer's K rows
    row_stop: int
    col_start: int                  # [col_start, col_stop) of the layer's N weight columns
    col_stop: int
    tile: int
    slot: int                       # array slot inside the tile
    round: int = 0                  # programming round (time-multiplexed mapping only)
    copy: int = 0                   # which copy of the layer's weights
    array_row: int = 0              # first word line of the block in its array
    array_col: int = 0              # first weight column of the block in its array

    @property
    def rows_used(self) -> int:
        return self.row_stop - self.row_start

    @property
    def weight_cols_used(self) -> int:
        return self.col_stop - self.col_start


@dataclass(frozen=True)
class LayerMapping:
    name: str
    kind: str
    placement: str                  # analog | digital
    k: int
    n: int
    row_blocks: int                 # 0 for digital layers
    col_blocks: int
    arrays: tuple[ArrayBlock, ...]  # its weight blocks, every copy (copy 0 first)
    utilization: float              # its weight devices / devices of the arrays it uses
    macs: int                       # per inference
    mvms: int                       # per inference (output pixels)
    groups: int = 1                 # block-diagonal groups of the K x N matrix
    batchnorm: str | None = None    # the BatchNorm normalizing its output: AdaBS can refresh it
    copies: int = 1                 # copies of its weights (replication)
    width: int = 1                  # output pixels per output row
    copy_cols: tuple[tuple[int, int], ...] = ((0, 1),)   # [w0, w1) each copy computes per row
    array_mvms: int = 0             # MVMs its arrays run per inference (packed copies: 1 per group)
    read_utilization: float = 0.0   # devices read per array MVM / devices of an array (energy)

    @property
    def analog(self) -> bool:
        return self.placement == "analog"

    @property
    def out_rows(self) -> int:
        return self.mvms // self.width if self.width else 0

    @property
    def weights(self) -> int:
        """Weights of one copy (the diagonal blocks of a grouped conv)."""
        return (self.k // self.groups) * (self.n // self.groups) * self.groups

    def blocks_of(self, copy: int) -> tuple[ArrayBlock, ...]:
        return tuple(a for a in self.arrays if a.copy == copy)

    @property
    def array_indices(self) -> tuple[int, ...]:
        """The arrays its blocks are on."""
        return tuple(sorted({a.index for a in self.arrays}))

    @property
    def array_count(self) -> int:
        return len({a.index for a in self.arrays})

    def row_bounds(self) -> list[tuple[int, int]]:
        return sorted({(a.row_start, a.row_stop) for a in self.arrays})

    def col_bounds(self) -> list[tuple[int, int]]:
        return sorted({(a.col_start, a.col_stop) for a in self.arrays})

    def share(self, copy: int) -> int:
        """Output columns of every row that ``copy`` computes."""
        w0, w1 = self.copy_cols[copy]
        return w1 - w0

    def on_arrays(self) -> dict[int, tuple[ArrayBlock, ...]]:
        """Array index -> this layer's blocks on it (packed copies of one block)."""
        out: dict[int, list[ArrayBlock]] = {}
        for a in self.arrays:
            out.setdefault(a.index, []).append(a)
        return {i: tuple(b) for i, b in out.items()}

    def mvms_per_row(self, blocks: tuple[ArrayBlock, ...]) -> int:
        """MVMs an array holding ``blocks`` (of this layer) runs per output row: its packed copies
        fire together, so the widest share among them."""
        return max(self.share(a.copy) for a in blocks)

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "placement": self.placement, "k": self.k,
                "n": self.n, "groups": self.groups, "row_blocks": self.row_blocks,
                "col_blocks": self.col_blocks, "copies": self.copies,
                "arrays": self.array_count, "blocks": len(self.arrays),
                "utilization": round(self.utilization, 6), "macs": self.macs,
                "array_mvms": self.array_mvms, "copy_cols": [list(c) for c in self.copy_cols],
                "tiles": sorted({a.tile for a in self.arrays}), "batchnorm": self.batchnorm}


@dataclass(frozen=True)
class ReplicationPlan:
    """What ``mapping.replication`` and ``mapping.packing`` made of the chip, and why (auto). The
    intervals are the closed-form estimate the planner balances (the timing run gives the real
    one)."""
    mode: str                           # none | auto | explicit
    packing: str                        # none | copies | layers
    copies: TMapping[str, int]          # analog layer -> copies
    arrays_one_copy: int                # arrays with one copy of every layer
    arrays: int                         # as mapped
    arrays_available: int
    interval_one_copy_cycles: int       # estimated steady-state interval, one copy each
    interval_cycles: int                # estimated, as mapped
    bottleneck_one_copy: str
    bottleneck: str
    stop: str = ""                      # why auto stopped adding copies
    arrays_saved_by_layer_packing: int = 0

    def lines(self) -> list[str]:
        if not self.copies:
            return ["replication: no analog layers on this mapping, nothing to replicate"]
        mode = {"none": "none (one copy per layer)", "auto": "auto (pipeline balancing)",
                "explicit": "as configured"}[self.mode]
        out = [f"replication: {mode}; packing: {self.packing}; "
               f"{sum(self.copies.values())} copies of {len(self.copies)} analog layers on "
               f"{self.arrays} of {self.arrays_available} arrays ({self.arrays_one_copy} with one "
               "copy each)"]
        if self.interval_one_copy_cycles:
            out.append(f"estimated steady-state interval: {self.interval_one_copy_cycles:,} cycles "
                       f"with one copy each (set by {self.bottleneck_one_copy}) -> "
                       f"{self.interval_cycles:,} as mapped (set by {self.bottleneck})")
        if self.stop:
            out.append(f"auto stopped: {self.stop}")
        if self.arrays_saved_by_layer_packing:
            out.append(f"layer packing: arrays shared between layers save "
                       f"{self.arrays_saved_by_layer_packing} arrays")
        return out

    def to_dict(self) -> dict:
        return {"mode": self.mode, "packing": self.packing, "copies": dict(self.copies),
                "arrays_one_copy": self.arrays_one_copy, "arrays": self.arrays,
                "arrays_available": self.arrays_available,
                "estimated_interval_one_copy_cycles": self.interval_one_copy_cycles,
                "estimated_interval_cycles": self.interval_cycles,
                "bottleneck_one_copy": self.bottleneck_one_copy, "bottleneck": self.bottleneck,
                "stop": self.stop,
                "arrays_saved_by_layer_packing": self.arrays_saved_by_layer_packing,
                "lines": self.lines()}


@dataclass(frozen=True)
class Mapping:
    chip: ChipConfig
    network: Network
    layers: tuple[LayerMapping, ...]        # matrix layers, in network order
    arrays_available: int
    rounds: int                             # programming rounds (1 unless time-multiplexed)
    plan: ReplicationPlan | None = None     # replication and packing, and why

    def layer(self, name: str) -> LayerMapping:
        for lm in self.layers:
            if lm.name == name:
                return lm
        raise KeyError(name)

    def placement(self, name: str) -> str:
        return self.layer(name).placement

    @property
    def analog_layers(self) -> list[LayerMapping]:
        return [lm for lm in self.layers if lm.analog]

    @property
    def digital_layers(self) -> list[LayerMapping]:
        return [lm for lm in self.layers if not lm.analog]

    @property
    def arrays(self) -> list[ArrayBlock]:
        """Every weight block (several share an array when packed)."""
        return [a for lm in self.layers for a in lm.arrays]

    def array_blocks(self) -> dict[int, list[ArrayBlock]]:
        """Array index -> the blocks on it."""
        out: dict[int, list[ArrayBlock]] = {}
        for a in self.arrays:
            out.setdefault(a.index, []).append(a)
        return out

    @property
    def arrays_needed(self) -> int:
        return len({a.index for a in self.arrays})

    @property
    def tiles_used(self) -> int:
        return len({a.tile for a in self.arrays})

    @property
    def adabs_layers(self) -> list[LayerMapping]:
        """Analog layers whose outputs a BatchNorm normalizes: AdaBS can re-estimate their
        statistics after drift (a BatchNorm folded into a conv bias leaves none)."""
        return [lm for lm in self.analog_layers if lm.batchnorm is not None]

    def totals(self) -> dict:
        analog = self.analog_layers
        array = self.chip.chip.tiles.array
        devices = self.arrays_needed * array.rows * array.cols
        used = sum(lm.weights * lm.copies for lm in analog) * array.cols_per_weight
        macs = sum(lm.macs for lm in self.layers)
        blocks = self.array_blocks()
        return {
            "layers": len(self.layers), "analog_layers": len(analog),
            "digital_layers": len(self.layers) - len(analog),
            "arrays": self.arrays_needed, "arrays_available": self.arrays_available,
            "tiles_used": self.tiles_used, "rounds": self.rounds,
            "utilization": round(used / devices, 6) if devices else 0.0,
            "copies": sum(lm.copies for lm in analog), "blocks": len(self.arrays),
            "packed_arrays": sum(1 for b in blocks.values() if len(b) > 1),
            "shared_arrays": sum(1 for b in blocks.values() if len({a.layer for a in b}) > 1),
            "macs": macs, "analog_macs": sum(lm.macs for lm in analog),
            "analog_mac_fraction": round(sum(lm.macs for lm in analog) / macs, 6) if macs else 0.0,
            "adabs_layers": len(self.adabs_layers),
        }

    def to_dict(self) -> dict:
        blocks = self.array_blocks()
        layers = []
        for lm in self.layers:
            d = lm.to_dict()
            on = [blocks[i] for i in lm.array_indices]
            d["blocks_per_array"] = round(sum(len(b) for b in on) / len(on), 3) if on else 0
            d["shares_arrays_with"] = sorted({a.layer for b in on for a in b} - {lm.name})
            layers.append(d)
        return {"policy": self.chip.mapping.policy,
                "overrides": dict(self.chip.mapping.overrides),
                "replication": self.plan.to_dict() if self.plan is not None else None,
                "layers": layers, "totals": self.totals()}


def split_sizes(total: int, capacity: int) -> list[tuple[int, int]]:
    """Near-equal [start, stop) blocks of at most ``capacity`` covering ``total``."""
    blocks = math.ceil(total / capacity)
    edges = np.cumsum([0] + [total // blocks + (1 if i < total % blocks else 0)
                             for i in range(blocks)])
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def array_rects(view: MatrixView, rows: int, weight_cols: int
                ) -> list[tuple[int, int, int, int, int, int]]:
    """(row block, column block, r0, r1, c0, c1) of every array of a K x N matrix, in allocation
    order. Dense: the grid of near-equal row and column blocks. Grouped: runs of whole groups
    along the diagonal, or each group split on its own when it does not fit one array; the column
    block is the index of the distinct column range, the row block counts the arrays stacked on it."""
    if view.groups == 1:
        row_splits, col_splits = split_sizes(view.k, rows), split_sizes(view.n, weight_cols)
        return [(rb, cb, r0, r1, c0, c1) for rb, (r0, r1) in enumerate(row_splits)
                for cb, (c0, c1) in enumerate(col_splits)]
    kg, ng = view.k_group, view.n_group
    out = []
    if kg <= rows and ng <= weight_cols:
        per_array = min(rows // kg, weight_cols // ng)
        for cb, (g0, g1) in enumerate(split_sizes(view.groups, per_array)):
            out.append((0, cb, g0 * kg, g1 * kg, g0 * ng, g1 * ng))
        return out
    row_splits, col_splits = split_sizes(kg, rows), split_sizes(ng, weight_cols)
    for g in range(view.groups):
        for rb, (r0, r1) in enumerate(row_splits):
            for cb, (c0, c1) in enumerate(col_splits):
                out.append((rb, g * len(col_splits) + cb, g * kg + r0, g * kg + r1,
                            g * ng + c0, g * ng + c1))
    return out


def placement_of(chip: ChipConfig, network: Network) -> dict[str, str]:
    """analog | digital for every matrix layer, by policy then overrides."""
    matrix = network.matrix_layers()
    names = [layer.name for layer in matrix]
    unknown = [n for n in chip.mapping.overrides if n not in names]
    if unknown:
        import difflib
        close = difflib.get_close_matches(unknown[0], names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise MappingError(f"{chip.origin}: mapping.overrides.{unknown[0]}: network "
                           f"{network.name} has no matrix layer {unknown[0]!r}{hint}")
    policy = chip.mapping.policy
    out = {}
    for i, name in enumerate(names):
        if policy == "all-digital":
            out[name] = "digital"
        elif policy == "all-analog":
            out[name] = "analog"
        else:
            out[name] = "digital" if i in (0, len(names) - 1) else "analog"
        out[name] = chip.mapping.overrides.get(name, out[name])
    return out


# ------------------------------------------------------------------------------------------
# Replication and packing
# ------------------------------------------------------------------------------------------

@dataclass
class _Planned:
    """One matrix layer on its way to a LayerMapping."""
    layer: Layer
    placement: str
    view: MatrixView
    rects: list                     # (row block, col block, r0, r1, c0, c1) of one copy
    rows_out: int                   # output rows
    width: int                      # output pixels per row
    pack: int = 1                   # copies per array (packing: copies)

    @property
    def analog(self) -> bool:
        return self.placement == "analog"


@dataclass
class _Array:
    """A physical array being filled: blocks (planned layer index, copy, rect position, array row,
    array column), the rows and weight columns taken, and its estimated work per inference."""
    blocks: list
    rows: int
    cols: int
    work: int
    layers: set = field(default_factory=set)


class _Estimate:
    """Closed-form cycles the planner balances: per analog layer, output rows x MVMs per row x the
    MVM interval of its (packed) arrays (:class:`archsim.timing.MvmStages`); the digital units' total
    systolic cycles as a floor."""

    def __init__(self, chip: ChipConfig, planned: list[_Planned]):
        # the timing model's closed forms (timing reads Mappings, so it is imported here)
        from .components import chip_parts, tile_parts
        from .timing import digital_layer_cycles, mvm_stages
        self._mvm_stages = mvm_stages
        self.planned = planned
        parts = chip_parts(chip)
        self.tile = tile_parts(chip, parts) if any(p.analog for p in planned) else None
        self.digital_cycles = sum(
            digital_layer_cycles(chip, p.view.mvms, p.view.k, p.view.n, parts, p.view.groups)[0]
            for p in planned if not p.analog)
        self._interval: dict[tuple[int, int], int] = {}

    def mvm_interval(self, rows: int, cols: int) -> int:
        key = (rows, cols)
        if key not in self._interval:
            self._interval[key] = self._mvm_stages(self.tile, rows, cols).interval
        return self._interval[key]

    def layer_cycles(self, i: int, copies: int) -> int:
        p = self.planned[i]
        q = min(copies, p.pack)
        interval = max(self.mvm_interval(q * (r1 - r0), q * (c1 - c0))
                       for _rb, _cb, r0, r1, c0, c1 in p.rects)
        return p.rows_out * math.ceil(p.width / copies) * interval

    def interval(self, copies: dict[int, int]) -> tuple[int, str]:
        """(estimated steady-state interval, what sets it)."""
        best, who = self.digital_cycles, "the digital units"
        for i, c in copies.items():
            t = self.layer_cycles(i, c)
            if t > best:
                best, who = t, self.planned[i].layer.name
        return best, who


def _copies_per_array(rects: list, rows: int, weight_cols: int) -> int:
    r = max(r1 - r0 for _rb, _cb, r0, r1, _c0, _c1 in rects)
    c = max(c1 - c0 for _rb, _cb, _r0, _r1, c0, c1 in rects)
    return max(1, min(rows // r, weight_cols // c))


def _arrays_for(p: _Planned, copies: int) -> int:
    return math.ceil(copies / p.pack) * len(p.rects)


def _requested_copies(chip: ChipConfig, network: Network, planned: list[_Planned]
                      ) -> dict[int, int]:
    """Analog layer index -> copies asked for by ``mapping.replication`` (1 for none and auto)."""
    rep = chip.mapping.replication
    copies = {i: 1 for i, p in enumerate(planned) if p.analog}
    if isinstance(rep, str):
        return copies
    index = {p.layer.name: i for i, p in enumerate(planned)}
    for name, n in rep.items():
        where = f"{chip.origin}: mapping.replication.{name}"
        if name not in index:
            close = difflib.get_close_matches(name, list(index), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise MappingError(f"{where}: network {network.name} has no matrix layer "
                               f"{name!r}{hint}")
        p = planned[index[name]]
        if not p.analog:
            raise MappingError(f"{where}: layer {name} runs digital; copies are for analog layers")
        if n > p.width:
            raise MappingError(f"{where}: {n} copies, but {name} has {p.width} output pixel(s) per "
                               f"row (at most one copy per output column)")
        copies[index[name]] = n
    return copies


def plan_auto(est: _Estimate, copies: dict[int, int], available: int
              ) -> tuple[dict[int, int], str]:
    """Pipeline balancing: give the layer that sets the estimated interval the fewest extra copies
    that shorten its rows (ceil(W / copies) MVMs per row), while arrays are left; then keep the
    copies of the step that reached the lowest interval first. Returns (copies, why it stopped)."""
    planned = est.planned
    copies = dict(copies)
    used = sum(_arrays_for(planned[i], c) for i, c in copies.items())
    history = [(est.interval(copies)[0], dict(copies))]
    while True:
        interval, who = est.interval(copies)
        if who == "the digital units":
            stop = f"the digital units set the interval ({interval:,} cycles)"
            break
        i = next(j for j, c in copies.items() if est.layer_cycles(j, c) == interval)
        p, c = planned[i], copies[i]
        per_row = math.ceil(p.width / c)
        if per_row == 1:
            stop = f"{p.layer.name} has a copy per output column"
            break
        more = math.ceil(p.width / (per_row - 1))
        extra = _arrays_for(p, more) - _arrays_for(p, c)
        if used + extra > available:
            stop = (f"{p.layer.name} ({interval:,} cycles) would need {extra} more array(s) for "
                    f"{more} copies, {available - used} left")
            break
        copies[i] = more
        used += extra
        history.append((est.interval(copies)[0], dict(copies)))
    best = min(range(len(history)), key=lambda k: (history[k][0], k))
    if best < len(history) - 1:
        dropped = sum(history[-1][1].values()) - sum(history[best][1].values())
        stop += (f"; the last {dropped} copies added did not lower the interval and were "
                 "dropped")
    return history[best][1], stop


def _build_arrays(planned: list[_Planned], copies: dict[int, int], est: _Estimate | None
                  ) -> list[_Array]:
    """Each analog layer's arrays in layer order: per group of ``pack`` copies, one array per
    rect, the group's copies of that rect stacked along its diagonal."""
    out = []
    for i, p in enumerate(planned):
        if not p.analog:
            continue
        n = copies.get(i, 1)
        shares = [w1 - w0 for w0, w1 in copy_columns(p.width, n)]
        for g0 in range(0, n, p.pack):
            group = range(g0, min(n, g0 + p.pack))
            for pos, (_rb, _cb, r0, r1, c0, c1) in enumerate(p.rects):
                blocks, rows, cols = [], 0, 0
                for c in group:
                    blocks.append((i, c, pos, rows, cols))
                    rows += r1 - r0
                    cols += c1 - c0
                work = 0
                if est is not None:
                    work = p.rows_out * max(shares[c] for c in group) * est.mvm_interval(rows, cols)
                out.append(_Array(blocks, rows, cols, work, {i}))
    return out


def _pack_layers(arrays: list[_Array], rows: int, weight_cols: int, bound: float
                 ) -> list[_Array]:
    """First fit in layer order: an array's blocks move onto an earlier array of other layers
    when they fit on its free rows and columns and the shared array's work stays within
    ``bound``."""
    out: list[_Array] = []
    for a in arrays:
        for host in out:
            if (host.layers.isdisjoint(a.layers) and host.rows + a.rows <= rows
                    and host.cols + a.cols <= weight_cols and host.work + a.work <= bound):
                host.blocks += [(i, c, pos, ar + host.rows, ac + host.cols)
                                for i, c, pos, ar, ac in a.blocks]
                host.rows += a.rows
                host.cols += a.cols
                host.work += a.work
                host.layers |= a.layers
                break
        else:
            out.append(_Array(list(a.blocks), a.rows, a.cols, a.work, set(a.layers)))
    return out


def _place(chip: ChipConfig, planned: list[_Planned], copies: dict[int, int], bound: int,
           est: _Estimate) -> list[_Array]:
    tiles = chip.chip.tiles
    arrays = _build_arrays(planned, copies, est)
    if chip.mapping.packing == "layers":
        rows, weight_cols = tiles.array.rows, tiles.array.weight_cols
        packed = _pack_layers(arrays, rows, weight_cols, bound)
        if len(packed) > tiles.count * tiles.arrays_per_tile:
            packed = _pack_layers(arrays, rows, weight_cols, math.inf)
        arrays = packed
    return arrays


def map_network(chip: ChipConfig, network: Network) -> Mapping:
    """Place, flatten, split, replicate, pack and allocate: the Mapping both simulations read."""
    tiles = chip.chip.tiles
    array = tiles.array
    weight_cols = array.weight_cols
    if weight_cols < 1:
        raise MappingError(f"{chip.origin}: chip.tiles.array: {array.cols} columns cannot hold a "
                           f"weight of {array.devices_per_weight} devices")
    placement = placement_of(chip, network)
    if chip.chip.digital.units == 0 and "digital" in placement.values():
        first = next(n for n, p in placement.items() if p == "digital")
        raise MappingError(f"{chip.origin}: chip.digital.units is 0 but layer {first} is placed "
                           "digital by the mapping policy")
    available = tiles.count * tiles.arrays_per_tile
    packing = chip.mapping.packing
    planned: list[_Planned] = []
    for layer in network.matrix_layers():
        view = network.matrix_view(layer)
        analog = placement[layer.name] == "analog"
        rects = array_rects(view, array.rows, weight_cols) if analog else []
        shape = network.shape(layer.name)
        rows_out, width = (shape[0], shape[1]) if len(shape) == 3 else (1, 1)
        pack = _copies_per_array(rects, array.rows, weight_cols) \
            if analog and packing != "none" else 1
        planned.append(_Planned(layer, placement[layer.name], view, rects, rows_out, width, pack))

    est = _Estimate(chip, planned)
    one = {i: 1 for i, p in enumerate(planned) if p.analog}
    interval_one, who_one = est.interval(one)
    base = _place(chip, planned, one, interval_one, est)
    copies = _requested_copies(chip, network, planned)
    mode = chip.mapping.replication if isinstance(chip.mapping.replication, str) else "explicit"
    stop = ""
    if mode == "auto" and len(base) <= available:
        copies, stop = plan_auto(est, one, available)
    interval, who = est.interval(copies)
    placed = base if copies == one else _place(chip, planned, copies, interval, est)
    needed = len(placed)
    if needed > available and (not chip.mapping.time_multiplex or available == 0):
        per = tiles.arrays_per_tile
        head = (f"{chip.origin}: network {network.name} needs {needed} arrays ({array.rows}x"
                f"{array.cols})")
        has = f"but the chip has {available} ({tiles.count} tiles x {per})"
        if needed != len(base):
            raise MappingError(
                f"{head} with mapping.replication, {len(base)} without, {has}; "
                f"{math.ceil(needed / per)} tiles hold them (--set chip.tiles.count="
                f"{math.ceil(needed / per)}), {math.ceil(len(base) / per)} without replication; "
                "add tiles, ask for fewer copies or set mapping.time_multiplex: true")
        raise MappingError(
            f"{head} {has}; {math.ceil(needed / per)} tiles hold them (--set chip.tiles.count="
            f"{math.ceil(needed / per)}; replication: auto adds copies only with arrays to "
            "spare); add tiles or set mapping.time_multiplex: true")
    rounds = max(1, math.ceil(needed / available)) if available else 1
    per_tile = tiles.arrays_per_tile
    spread = per_tile > 1 and rounds == 1 and (any(c > 1 for c in copies.values())
                                               or packing == "layers")
    blocks_of: dict[int, list[tuple]] = {}
    for index, arr in enumerate(placed):
        if spread:
            tile, slot = index % tiles.count, index // tiles.count
        else:
            slot_global = index % available
            tile, slot = slot_global // per_tile, slot_global % per_tile
        for i, c, pos, ar, ac in arr.blocks:
            blocks_of.setdefault(i, []).append((c, pos, index, tile, slot, index // available,
                                                ar, ac))
    devices_per_array = array.rows * array.cols
    layers = []
    for i, p in enumerate(planned):
        layer, view = p.layer, p.view
        n = copies.get(i, 1)
        cols = copy_columns(p.width, n)
        blocks = []
        for c, pos, index, tile, slot, rnd, ar, ac in sorted(blocks_of.get(i, [])):
            rb, cb, r0, r1, c0, c1 = p.rects[pos]
            blocks.append(ArrayBlock(index, layer.name, rb, cb, r0, r1, c0, c1, tile=tile,
                                     slot=slot, round=rnd, copy=c, array_row=ar, array_col=ac))
        on: dict[int, list[int]] = {}
        for b in blocks:
            on.setdefault(b.index, []).append(cols[b.copy][1] - cols[b.copy][0])
        devices = len(on) * devices_per_array
        weight_devices = view.weights * array.cols_per_weight
        utilization = (weight_devices * n / devices) if devices else 0.0
        array_mvms = p.rows_out * sum(max(s) for s in on.values())
        read_utilization = (view.mvms * weight_devices / (array_mvms * devices_per_array)
                            if array_mvms else 0.0)
        row_blocks = 1 + max((b.row_block for b in blocks), default=-1)
        col_blocks = 1 + max((b.col_block for b in blocks), default=-1)
        layers.append(LayerMapping(layer.name, layer.kind, p.placement, view.k, view.n, row_blocks,
                                   col_blocks, tuple(blocks), utilization, network.macs(layer),
                                   view.mvms, view.groups, network.statistics_of(layer.name),
                                   n, p.width, cols, array_mvms, read_utilization))
    plan = ReplicationPlan(
        mode, packing, types.MappingProxyType({planned[i].layer.name: c
                                               for i, c in copies.items()}),
        len(base), needed, available, interval_one, interval, who_one, who, stop,
        len(_build_arrays(planned, copies, None)) - needed if packing == "layers" else 0)
    return Mapping(chip, network, tuple(layers), available, rounds, plan)
