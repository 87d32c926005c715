"""Mapping: which layer runs analog or digital, and how each analog weight matrix is split onto
crossbar arrays and tiles. One immutable :class:`Mapping` is read by both the functional and the
timing simulation, so the accuracy run and the cost run see the same placement.

- Placement: ``hybrid`` keeps the first and the last matrix layer (stem conv, classifier) in digital
  FP32 and puts every other conv/linear on PCM; ``all-analog`` / ``all-digital`` do what they say;
  ``mapping.overrides`` (layer name -> analog | digital) wins over the policy.
- Flattening: a conv kernel OIHW becomes K = Cin*kh*kw rows by N = Cout columns (Linear: K = in,
  N = out); one MVM per output pixel.
- Splitting: K into ceil(K / rows) near-equal row blocks (the first K mod blocks get one row more),
  N into ceil(N / weight columns per array) near-equal column blocks; each (row block, column block)
  is one array with its own scale, noise, GDC factor and ADCs. Row-block partial sums are added in
  digital.
- Grouped convs (depthwise included): the K x N matrix is block-diagonal, one K/G x N/G block per
  group. Whole groups are packed along the diagonal, as many per array as fit in both its rows and
  its weight columns (near-equal runs of consecutive groups); the devices off the diagonal blocks
  stay in the RESET state (0 conductance, never programmed) and count as unused. A group larger
  than an array is split like a dense matrix, within its own block. Either way each array is a
  rectangle of the full K x N matrix, its real rows and columns are what timing charges, and
  utilization = devices holding weights / devices of the arrays used.
- Allocation: arrays are given to tiles in layer order, ``tiles.arrays_per_tile`` per tile. When the
  network needs more arrays than the chip has, a MappingError says how many (or, with
  ``mapping.time_multiplex: true``, arrays are reused in programming rounds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .config import ChipConfig
from .errors import MappingError
from .network import Layer, MatrixView, Network


@dataclass(frozen=True)
class ArrayBlock:
    """One crossbar array holding a (row block, column block) of a layer's weight matrix."""
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
    arrays: tuple[ArrayBlock, ...]
    utilization: float              # devices used / devices of its arrays (0 for digital)
    macs: int                       # per inference
    mvms: int                       # per inference (output pixels)
    groups: int = 1                 # block-diagonal groups of the K x N matrix
    batchnorm: str | None = None    # the BatchNorm normalizing its output: AdaBS can refresh it

    @property
    def analog(self) -> bool:
        return self.placement == "analog"

    def row_bounds(self) -> list[tuple[int, int]]:
        return sorted({(a.row_start, a.row_stop) for a in self.arrays})

    def col_bounds(self) -> list[tuple[int, int]]:
        return sorted({(a.col_start, a.col_stop) for a in self.arrays})

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "placement": self.placement, "k": self.k,
                "n": self.n, "groups": self.groups, "row_blocks": self.row_blocks,
                "col_blocks": self.col_blocks, "arrays": len(self.arrays),
                "utilization": round(self.utilization, 6), "macs": self.macs,
                "tiles": sorted({a.tile for a in self.arrays}), "batchnorm": self.batchnorm}


@dataclass(frozen=True)
class Mapping:
    chip: ChipConfig
    network: Network
    layers: tuple[LayerMapping, ...]        # matrix layers, in network order
    arrays_available: int
    rounds: int                             # programming rounds (1 unless time-multiplexed)

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
        return [a for lm in self.layers for a in lm.arrays]

    @property
    def arrays_needed(self) -> int:
        return sum(len(lm.arrays) for lm in self.layers)

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
        devices = self.arrays_needed * self.chip.chip.tiles.array.rows * self.chip.chip.tiles.array.cols
        used = sum(lm.utilization * len(lm.arrays) for lm in analog) * (
            self.chip.chip.tiles.array.rows * self.chip.chip.tiles.array.cols)
        macs = sum(lm.macs for lm in self.layers)
        return {
            "layers": len(self.layers), "analog_layers": len(analog),
            "digital_layers": len(self.layers) - len(analog),
            "arrays": self.arrays_needed, "arrays_available": self.arrays_available,
            "tiles_used": self.tiles_used, "rounds": self.rounds,
            "utilization": round(used / devices, 6) if devices else 0.0,
            "macs": macs, "analog_macs": sum(lm.macs for lm in analog),
            "analog_mac_fraction": round(sum(lm.macs for lm in analog) / macs, 6) if macs else 0.0,
            "adabs_layers": len(self.adabs_layers),
        }

    def to_dict(self) -> dict:
        return {"policy": self.chip.mapping.policy,
                "overrides": dict(self.chip.mapping.overrides),
                "layers": [lm.to_dict() for lm in self.layers], "totals": self.totals()}


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


def map_network(chip: ChipConfig, network: Network) -> Mapping:
    """Place, flatten, split and allocate: the Mapping both simulations read."""
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
    planned: list[tuple[Layer, str, MatrixView, list]] = []
    needed = 0
    for layer in network.matrix_layers():
        view = network.matrix_view(layer)
        rects = array_rects(view, array.rows, weight_cols) if placement[layer.name] == "analog" \
            else []
        needed += len(rects)
        planned.append((layer, placement[layer.name], view, rects))
    if needed > available and (not chip.mapping.time_multiplex or available == 0):
        raise MappingError(f"{chip.origin}: network {network.name} needs {needed} arrays "
                           f"({array.rows}x{array.cols}) but the chip has {available} "
                           f"({tiles.count} tiles x {tiles.arrays_per_tile}); add tiles or set "
                           "mapping.time_multiplex: true")
    rounds = max(1, math.ceil(needed / available)) if available else 1
    layers = []
    index = 0
    for layer, place, view, rects in planned:
        blocks = []
        for rb, cb, r0, r1, c0, c1 in rects:
            slot_global = index % available
            blocks.append(ArrayBlock(index, layer.name, rb, cb, r0, r1, c0, c1,
                                     tile=slot_global // tiles.arrays_per_tile,
                                     slot=slot_global % tiles.arrays_per_tile,
                                     round=index // available))
            index += 1
        devices = len(blocks) * array.rows * array.cols
        utilization = (view.weights * array.cols_per_weight / devices) if devices else 0.0
        row_blocks = 1 + max((b.row_block for b in blocks), default=-1)
        col_blocks = 1 + max((b.col_block for b in blocks), default=-1)
        layers.append(LayerMapping(layer.name, layer.kind, place, view.k, view.n, row_blocks,
                                   col_blocks, tuple(blocks), utilization, network.macs(layer),
                                   view.mvms, view.groups, network.statistics_of(layer.name)))
    return Mapping(chip, network, tuple(layers), available, rounds)
