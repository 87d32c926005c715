"""Reports: terminal tables (tabulate) and Markdown/JSON/CSV files written atomically."""

from __future__ import annotations

from tabulate import tabulate

from .mapping import Mapping


def format_mapping(mapping: Mapping, tablefmt: str = "simple") -> str:
    """Layer -> placement, matrix size, split, arrays, utilization, MACs; with totals."""
    rows = []
    for lm in mapping.layers:
        rows.append([lm.name, lm.kind, lm.placement, f"{lm.k}x{lm.n}",
                     f"{lm.row_blocks}x{lm.col_blocks}" if lm.analog else "-",
                     len(lm.arrays) if lm.analog else "-",
                     f"{100 * lm.utilization:.1f}%" if lm.analog else "-", f"{lm.macs:,}"])
    t = mapping.totals()
    rows.append(["total", "", f"{t['analog_layers']} analog / {t['digital_layers']} digital", "",
                 "", f"{t['arrays']} of {t['arrays_available']}", f"{100 * t['utilization']:.1f}%",
                 f"{t['macs']:,}"])
    chip = mapping.chip.chip
    head = (f"{mapping.network.name} on {chip.name} ({mapping.chip.mapping.policy}): "
            f"{chip.tiles.array.rows}x{chip.tiles.array.cols} arrays, "
            f"{chip.tiles.array.weight_cols} weight columns each; "
            f"{100 * t['analog_mac_fraction']:.1f}% of MACs analog")
    table = tabulate(rows, headers=["layer", "kind", "placement", "K x N", "row x col blocks",
                                    "arrays", "utilization", "MACs"], tablefmt=tablefmt,
                     disable_numparse=True)
    return head + "\n" + table
