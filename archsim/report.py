"""Reports: terminal tables (tabulate), and ``report.json`` / ``report.md`` / ``layers.csv`` / PNG
plots written as one output set, all or nothing (:func:`archsim.atomic.write_output_set`: rendered
first, written into a temporary folder beside ``--out`` and swapped in; a failed run leaves the
previous set as it was, and no file of an earlier run survives beside a new one).

Everything here reads the plain dict of :func:`archsim.simulate.RunResult.to_dict` (DESIGN.md
section 8 keys: chip, workload, mapping, accuracy, timing, energy, area, summary), so a report can
also be rebuilt from a saved ``report.json``.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Sequence

from tabulate import tabulate

from .atomic import write_output_set
from .mapping import Mapping
from .progress import format_time_s, plural

# one line each under the terminal tables (the words a reader meets there)
ACCURACY_LEGEND = ("none: no compensation; gdc: global drift compensation (each array's outputs "
                   "rescaled by a calibration read); adabs: BatchNorm statistics re-estimated on "
                   "the AdaBS calibration images")
TIMING_LEGEND = ("busy: cycles the layer's hardware is held (first inference); stall: cycles "
                 "inside [start, end] spent waiting for inputs, links or SRAM")

# ------------------------------------------------------------------------------------------
# Atomic file writing
# ------------------------------------------------------------------------------------------


def write_files(out_dir: Path, files: dict[str, bytes]) -> list[Path]:
    """Write a set of report files (all rendered before this is called) as the whole content of
    ``out_dir``, all or nothing (:func:`archsim.atomic.write_output_set`)."""
    return write_output_set(Path(out_dir), files)


# ------------------------------------------------------------------------------------------
# Formatting helpers
# ------------------------------------------------------------------------------------------

def _si(value: float, unit: str) -> str:
    for prefix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3), ("", 1.0),
                          ("m", 1e-3), ("u", 1e-6), ("n", 1e-9), ("p", 1e-12)):
        if abs(value) >= scale:
            return f"{value / scale:.4g} {prefix}{unit}"
    return f"{value:.4g} {unit}"


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


# ------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------

def format_mapping(mapping: Mapping, tablefmt: str = "simple") -> str:
    """Layer -> placement, matrix size, split, arrays, copies, blocks per array, utilization, MACs;
    with totals, then what replication and packing did."""
    return _mapping_table(mapping.to_dict(), mapping.network.name, mapping.chip.chip,
                          tablefmt=tablefmt)


def _mapping_table(m: dict, network_name: str, chip, tablefmt: str = "simple") -> str:
    rows = []
    for lm in m["layers"]:
        analog = lm["placement"] == "analog"
        groups = lm.get("groups", 1)
        size = (f"{lm['k']}x{lm['n']}" if groups == 1
                else f"{groups}x({lm['k'] // groups}x{lm['n'] // groups})")
        rows.append([lm["name"], lm["kind"], lm["placement"], size,
                     f"{lm['row_blocks']}x{lm['col_blocks']}" if analog else "-",
                     lm["arrays"] if analog else "-",
                     lm.get("copies", 1) if analog else "-",
                     f"{lm.get('blocks_per_array', 1):g}" if analog else "-",
                     f"{100 * lm['utilization']:.1f}%" if analog else "-", f"{lm['macs']:,}",
                     ("yes" if lm.get("batchnorm") else "no") if analog else "-"])
    t = m["totals"]
    blocks_per_array = f"{t['blocks'] / t['arrays']:.2g}" if t.get("blocks") and t["arrays"] else ""
    rows.append(["total", "", f"{t['analog_layers']} analog / {t['digital_layers']} digital", "",
                 "", f"{t['arrays']} of {t['arrays_available']}", t.get("copies", ""),
                 blocks_per_array, f"{100 * t['utilization']:.1f}%",
                 f"{t['macs']:,}", f"{t.get('adabs_layers', 0)} of {t['analog_layers']}"])
    head = (f"{network_name} on {chip.name} ({m['policy']}): "
            f"{chip.tiles.array.rows}x{chip.tiles.array.cols} arrays, "
            f"{chip.tiles.array.weight_cols} weight columns each; "
            f"{100 * t['analog_mac_fraction']:.1f}% of MACs analog")
    if t.get("adabs_layers", 0) < t["analog_layers"]:
        head += (f"; AdaBS can re-estimate BatchNorm statistics for {t.get('adabs_layers', 0)} "
                 f"of {t['analog_layers']} analog layers (the others have no BatchNorm, e.g. "
                 "folded into a conv bias)")
    table = tabulate(rows, headers=["layer", "kind", "placement", "K x N", "row x col blocks",
                                    "arrays", "copies", "blocks/array", "utilization", "MACs",
                                    "AdaBS"], tablefmt=tablefmt, disable_numparse=True)
    foot = list((m.get("replication") or {}).get("lines", []))
    shared = [lm for lm in m["layers"] if lm.get("shares_arrays_with")]
    if shared:
        foot.append("arrays shared between layers (they take turns): " + "; ".join(
            f"{lm['name']} with {', '.join(lm['shares_arrays_with'])}" for lm in shared))
    return head + "\n" + table + ("\n" + "\n".join(foot) if foot else "")


def replication_table(report: dict, tablefmt: str = "simple") -> tuple[str, list[str]] | None:
    """What replication and packing made of the analog layers, consecutive layers alike in one
    row: copies, arrays, blocks per array, MVMs per output row (of its output pixels per row) and
    utilization; with the planner's lines (mode, estimated interval before/after, why it
    stopped) and the array totals. None for a mapping without analog layers."""
    m = report["mapping"]
    groups: list[list] = []
    for lm in m.get("layers", ()):
        if lm["placement"] != "analog":
            continue
        cols = lm.get("copy_cols") or [[0, 1]]
        width = cols[-1][1]
        per_row = max(w1 - w0 for w0, w1 in cols)
        cells = [f"{lm['k']}x{lm['n']}", str(lm.get("copies", 1)), str(lm["arrays"]),
                 f"{lm.get('blocks_per_array', 1):g}", f"{per_row} of {width}",
                 f"{100 * lm['utilization']:.1f}%"]
        if groups and groups[-1][1] == cells:
            groups[-1][0].append(lm["name"])
        else:
            groups.append([[lm["name"]], cells])
    if not groups:
        return None
    rows = [[names[0] if len(names) == 1 else f"{names[0]} .. {names[-1]} ({len(names)})", *cells]
            for names, cells in groups]
    table = tabulate(rows, headers=["analog layers", "K x N", "copies", "arrays (each)",
                                    "blocks/array", "MVMs per output row", "utilization"],
                     tablefmt=tablefmt, disable_numparse=True)
    lines = list((m.get("replication") or {}).get("lines", []))
    t = m.get("totals", {})
    if "arrays" in t:
        lines.append(f"{t['arrays']} of {t['arrays_available']} arrays on {t['tiles_used']} tiles; "
                     f"{t.get('packed_arrays', 0)} arrays hold several blocks "
                     f"({t.get('shared_arrays', 0)} of them blocks of several layers); "
                     f"utilization {100 * t['utilization']:.1f}%")
    return table, lines


def _spread(acc: dict) -> bool:
    """A standard deviation means something only over two or more programmed chips."""
    return acc.get("seeds", 2) > 1


def accuracy_table(acc: dict, tablefmt: str = "simple") -> str:
    """Rows: FP32, then each mapping x compensation; columns: times; cells mean +- std in %
    (the mean alone from a single programmed chip)."""
    times = [format_time_s(t) for t in acc["times_s"]]
    rows = [["fp32", "-"] + [_pct(acc["fp32"])] * len(times)]
    for s in acc["series"]:
        rows.append([s["mapping"], s["compensation"]]
                    + [f"{_pct(m)} ± {_pct(sd)}" if _spread(acc) else _pct(m)
                       for m, sd in zip(s["mean"], s["std"])])
    return tabulate(rows, headers=["mapping", "compensation"] + times, tablefmt=tablefmt,
                    disable_numparse=True)


NOT_ATTRIBUTED = "(not attributed: unused tiles)"


READ_NOISE_TEXT = {"per-read": "per-read (every read of the chip draws fresh 1/f noise)",
                   "frozen": "frozen (one draw per chip and time, shared by all reads: aihwkit)"}
GDC_READOUT_TEXT = {"real": "real (calibration inputs through DAC, a noisy read and the ADC)",
                    "ideal": "ideal (exact conductances, no converters)"}


def read_model_line(acc: dict) -> str:
    """How the run read the chip (absent keys: reports written before these options existed)."""
    noise = acc.get("read_noise", "frozen")
    readout = acc.get("gdc_readout", "ideal")
    return (f"Read noise {READ_NOISE_TEXT.get(noise, noise)}; GDC readout "
            f"{GDC_READOUT_TEXT.get(readout, readout)}; ADC range {acc.get('adc_range', 'fixed')}.")


def adc_table(acc: dict, tablefmt: str = "simple") -> str | None:
    """Per analog layer: the share of the test passes' conversions that clipped at the ADC bound
    and that read zero, at the first and the last time after programming."""
    stats = acc.get("adc_stats") or []
    if not stats:
        return None
    times = sorted({s["t_s"] for s in stats})
    picked = [times[0]] + ([times[-1]] if len(times) > 1 else [])
    by = {(s["mapping"], s["t_s"]): {r["layer"]: r for r in s["layers"]} for s in stats}
    rows = []
    for mapping in dict.fromkeys(s["mapping"] for s in stats):
        layers = by.get((mapping, picked[0]), {})
        for name in layers:
            row = [mapping, name]
            for t in picked:
                r = by.get((mapping, t), {}).get(name)
                if r is None or not r["conversions"]:
                    row += ["-", "-"]
                else:
                    row += [f"{100 * r['clipped'] / r['conversions']:.3f}",
                            f"{100 * r['zero'] / r['conversions']:.2f}"]
            rows.append(row)
    headers = ["mapping", "layer"]
    for t in picked:
        headers += [f"clip % {format_time_s(t)}", f"zero % {format_time_s(t)}"]
    return tabulate(rows, headers=headers, tablefmt=tablefmt, disable_numparse=True)


def timing_table(report: dict, tablefmt: str = "simple") -> str:
    """Per layer: cycles (first inference), and energy per inference: dynamic (its actions) and
    leakage (of the hardware it holds over one steady-state interval)."""
    timing = report["timing"]
    energy = report.get("energy", {})
    dynamic = energy.get("per_layer_pj", {})
    leakage = energy.get("per_layer_leakage_pj", {})
    rows = []
    for lt in timing["layers"]:
        rows.append([lt["name"], lt["placement"], f"{lt['start_cycle']:,}", f"{lt['end_cycle']:,}",
                     f"{lt['busy_cycles']:,}", f"{lt['stall_cycles']:,}", f"{lt['mvms']:,}",
                     f"{dynamic.get(lt['name'], 0.0) / 1e3:.4g}",
                     _opt(leakage.get(lt["name"]), 1e-3)])
    if leakage.get(NOT_ATTRIBUTED):
        rows.append([NOT_ATTRIBUTED, "", "", "", "", "", "", "0",
                     _opt(leakage[NOT_ATTRIBUTED], 1e-3)])
    return tabulate(rows, headers=["layer", "placement", "start cycle", "end cycle", "busy",
                                   "stall", "MVMs", "dynamic nJ", "leakage nJ"],
                    tablefmt=tablefmt, disable_numparse=True)


def _opt(value, scale: float) -> str:
    return "-" if value is None else f"{value * scale:.4g}"


def component_rows(report: dict) -> list[dict]:
    """Per component, one inference in steady state: dynamic, leakage and total energy (pJ),
    leakage power (mW) and area (um2); from a report of any version (older ones have totals only)."""
    energy = report.get("energy", {})
    area = report.get("area", {}).get("per_component_um2", {})
    per = energy.get("per_component")
    if per is None:
        totals = energy.get("per_component_pj_per_inference", energy.get("per_component_pj", {}))
        per = {k: {"total_pj": v} for k, v in totals.items()}
    rows = []
    for name in sorted(set(per) | set(area), key=lambda n: -per.get(n, {}).get("total_pj", 0.0)):
        e = per.get(name, {})
        rows.append({"component": name, "dynamic_pj": e.get("dynamic_pj"),
                     "leakage_pj": e.get("leakage_pj"), "total_pj": e.get("total_pj", 0.0),
                     "leakage_mw": e.get("leakage_mw"), "area_um2": area.get(name, 0.0)})
    return rows


def component_table(report: dict, tablefmt: str = "simple") -> str:
    rows = component_rows(report)
    total_e = sum(r["total_pj"] for r in rows) or 1.0
    total_a = sum(r["area_um2"] for r in rows) or 1.0

    def col_sum(key):
        vals = [r[key] for r in rows if r[key] is not None]
        return sum(vals) if vals else None
    out = []
    for r in rows:
        out.append([r["component"], _opt(r["dynamic_pj"], 1e-6), _opt(r["leakage_pj"], 1e-6),
                    f"{r['total_pj'] / 1e6:.4g}", f"{100 * r['total_pj'] / total_e:.1f}%",
                    _opt(r["leakage_mw"], 1.0), f"{r['area_um2'] / 1e6:.4g}",
                    f"{100 * r['area_um2'] / total_a:.1f}%"])
    out.append(["total", _opt(col_sum("dynamic_pj"), 1e-6), _opt(col_sum("leakage_pj"), 1e-6),
                f"{total_e / 1e6:.4g}", "100%", _opt(col_sum("leakage_mw"), 1.0),
                f"{total_a / 1e6:.4g}", "100%"])
    return tabulate(out, headers=["component", "dynamic uJ/inf", "leakage uJ/inf", "total uJ/inf",
                                  "share", "leakage mW", "area mm2", "share"],
                    tablefmt=tablefmt, disable_numparse=True)


def energy_note(report: dict) -> str:
    """How the per-inference energy is made, with the interval and leakage power of this run."""
    e = report.get("energy", {})
    if "interval_ns" not in e:
        return ""
    note = (f"Energy per inference in steady state = dynamic (one inference's actions x energy per "
            f"action) + leakage ({e['leakage_power_mw']:.4g} mW x the "
            f"{_si(e['interval_ns'] * 1e-9, 's')} interval between inferences); "
            f"one inference alone: {e['single_inference_pj'] / 1e6:.4g} uJ over "
            f"{_si(e['latency_ns'] * 1e-9, 's')}.")
    s = report.get("summary", {})
    if "energy_per_inference_ungated_uj" in s:
        note += (f" Idle tiles power-gated: {s['energy_per_inference_uj']:.4g} uJ and "
                 f"{s['power_w']:.4g} W, against {s['energy_per_inference_ungated_uj']:.4g} uJ and "
                 f"{s['power_ungated_w']:.4g} W without gating.")
    return note


def capacity_note(report: dict) -> str:
    """Largest tile-buffer need and the SRAM need against their capacities."""
    t = report.get("timing", {})
    cfg = report.get("chip", {}).get("config", {}).get("chip")
    needs = t.get("buffer_need_bytes")
    if not needs or cfg is None:
        return ""
    worst = max(range(len(needs)), key=lambda i: needs[i])
    d = cfg["digital"]
    util = t.get("tile_utilization") or []
    used = t.get("tiles_used", [])
    busy = (f" {len(used)} of {len(util)} tiles hold arrays; busy {100 * sum(util) / len(util):.1f}%"
            f" of the run on average, {100 * max(util):.1f}% at most." if util else "")
    return (f"Capacities: the fullest tile buffer (tile {worst}) must hold "
            f"{needs[worst] / 1024:.3g} of {cfg['tiles']['buffer']['kib']:g} KiB; the digital SRAM "
            f"{t.get('sram_need_bytes', 0) / 1024:.4g} of {d['units'] * d['sram']['kib']:g} KiB."
            + busy)


SUMMARY_ROWS = (
    ("latency_ns", "latency per inference", lambda v: _si(v * 1e-9, "s")),
    ("inferences_per_s", "throughput", lambda v: f"{v:,.1f} inf/s"),
    ("energy_per_inference_uj", "energy per inference", lambda v: f"{v:.4g} uJ"),
    ("dynamic_energy_per_inference_uj", "  of which dynamic", lambda v: f"{v:.4g} uJ"),
    ("leakage_energy_per_inference_uj", "  of which leakage", lambda v: f"{v:.4g} uJ"),
    ("energy_per_inference_ungated_uj", "  without power gating", lambda v: f"{v:.4g} uJ"),
    ("power_w", "power", lambda v: f"{v:.4g} W"),
    ("leakage_power_w", "  leakage power", lambda v: f"{v:.4g} W"),
    ("power_ungated_w", "  without power gating", lambda v: f"{v:.4g} W"),
    ("single_inference_energy_uj", "energy of one inference alone", lambda v: f"{v:.4g} uJ"),
    ("tops", "TOPS (workload)", lambda v: f"{v:.4g}"),
    ("tops_per_w", "TOPS/W (workload)", lambda v: f"{v:.4g}"),
    ("area_mm2", "area", lambda v: f"{v:.4g} mm2"),
    ("peak_tops", "peak TOPS", lambda v: f"{v:.4g}"),
    ("peak_tops_per_w", "peak TOPS/W", lambda v: f"{v:.4g}"),
    ("peak_tops_per_mm2", "peak TOPS/mm2", lambda v: f"{v:.4g}"),
)


def summary_table(summary: dict, tablefmt: str = "simple") -> str:
    rows = [[label, fmt(summary[key])] for key, label, fmt in SUMMARY_ROWS if key in summary]
    return tabulate(rows, headers=["figure", "value"], tablefmt=tablefmt, disable_numparse=True)


def sources_table(report: dict, tablefmt: str = "simple") -> str:
    sources = report.get("energy", {}).get("sources") or report.get("sources") or {}
    rows = [[k, v] for k, v in sorted(sources.items())]
    return tabulate(rows, headers=["figure", "source"], tablefmt=tablefmt, disable_numparse=True)


# ------------------------------------------------------------------------------------------
# Whole reports
# ------------------------------------------------------------------------------------------

def terminal_report(report: dict) -> str:
    parts = [f"== {report['workload']['name']} on {report['chip']['name']} "
             f"({report['mapping']['policy']}) =="]
    if report.get("accuracy"):
        acc = report["accuracy"]
        unit = "mean ± std over chips, %" if _spread(acc) else "%"
        parts += ["", f"Accuracy vs time after programming ({plural(acc['images'], 'test image')}"
                      f", {plural(acc['seeds'], 'programmed chip')}, "
                      f"{plural(acc['calib_images'], 'AdaBS calibration image')}), {unit}:",
                  accuracy_table(acc)]
        if acc.get("series"):
            parts += [ACCURACY_LEGEND, read_model_line(acc)]
    rep_table = replication_table(report) if report.get("mapping") else None
    if rep_table:
        parts += ["", "Replication and packing:", rep_table[0], *rep_table[1]]
    if report.get("timing"):
        t = report["timing"]
        parts += ["", f"Timing ({plural(t['inferences'], 'inference')} in flight, clock "
                      f"{t['clock_mhz']:g} MHz): latency {t['latency_cycles']:,} cycles "
                      f"= {_si(t['latency_ns'] * 1e-9, 's')}, steady-state interval "
                      f"{t['interval_cycles']:,} cycles, {t['throughput_inferences_per_s']:,.1f} "
                      "inferences/s", timing_table(report), TIMING_LEGEND]
    if report.get("energy"):
        parts += ["", "Energy per inference and area per component:", component_table(report)]
        parts += [x for x in (energy_note(report), capacity_note(report)) if x]
    if report.get("summary"):
        parts += ["", "Summary:", summary_table(report["summary"])]
    return "\n".join(parts)


def markdown_report(report: dict, plots: Sequence[str] = ()) -> str:
    chip = report["chip"]
    wl = report["workload"]
    md = [f"# archsim report: {wl['name']} on {chip['name']}", "",
          f"- chip: `{chip['name']}` from `{chip['file']}` (config hash `{chip['hash'][:12]}`), "
          f"{chip['technology_nm']:g} nm, {chip['clock_mhz']:g} MHz",
          f"- workload: `{wl['name']}` (network `{wl['network']}`, weights `{wl.get('weights')}`, "
          f"dataset `{wl['dataset']}`)",
          f"- mapping policy: `{report['mapping']['policy']}`", ""]
    if report.get("summary"):
        md += ["## Summary", "", summary_table(report["summary"], "github"), ""]
    if report.get("accuracy"):
        acc = report["accuracy"]
        md += ["## Accuracy vs time after programming", "",
               f"{plural(acc['images'], 'test image')}, "
               f"{plural(acc['seeds'], 'programmed chip')} (seeds), "
               f"{plural(acc['calib_images'], 'AdaBS calibration image')}; "
               + ("mean ± std over chips in %. " if _spread(acc) else "in %. ")
               + (read_model_line(acc) if acc.get("series") else ""), "",
               accuracy_table(acc, "github"), "", ACCURACY_LEGEND + ".", ""]
        md += [f"![accuracy vs time]({p})" for p in plots if "accuracy" in p] + [""]
        adc = adc_table(acc, "github")
        if adc:
            md += ["### ADC conversions", "",
                   "Share of the test passes' conversions per analog layer that clipped at the "
                   "ADC bound and that read zero:", "", adc, ""]
    rep_table = replication_table(report, "github")
    if rep_table:
        md += ["## Replication and packing", "", rep_table[0], ""] + [f"- {x}" for x in rep_table[1]]
        md += [""]
    md += ["## Mapping", "", "```", report["mapping"].get("table", ""), "```", ""]
    if report.get("timing"):
        t = report["timing"]
        md += ["## Timing", "",
               f"{plural(t['inferences'], 'inference')} in flight; latency {t['latency_cycles']:,} cycles "
               f"({_si(t['latency_ns'] * 1e-9, 's')}); steady-state interval "
               f"{t['interval_cycles']:,} cycles; {t['throughput_inferences_per_s']:,.1f} "
               "inferences/s.", "", timing_table(report, "github"), "", TIMING_LEGEND + ".", ""]
    if report.get("energy"):
        md += ["## Energy and area", "", component_table(report, "github"), ""]
        md += [x for x in (energy_note(report), capacity_note(report)) if x] + [""]
        md += [f"![breakdown]({p})" for p in plots if "breakdown" in p] + [""]
        md += ["## Sources of figures", "", sources_table(report, "github"), ""]
    return "\n".join(md)


def layers_csv(report: dict) -> str:
    buf = io.StringIO()
    mapping = {lm["name"]: lm for lm in report["mapping"]["layers"]}
    energy = report.get("energy", {})
    dynamic = energy.get("per_layer_pj", {})
    leakage = energy.get("per_layer_leakage_pj", {})
    fields = ["name", "kind", "placement", "k", "n", "row_blocks", "col_blocks", "arrays",
              "utilization", "macs", "start_cycle", "end_cycle", "busy_cycles", "stall_cycles",
              "mvms", "dynamic_energy_pj", "leakage_energy_pj"]
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for lt in (report.get("timing") or {}).get("layers", []):
        row = {**mapping.get(lt["name"], {}), **lt}
        row["dynamic_energy_pj"] = dynamic.get(lt["name"], "")
        row["leakage_energy_pj"] = leakage.get(lt["name"], "")
        writer.writerow(row)
    if leakage.get(NOT_ATTRIBUTED):
        writer.writerow({"name": NOT_ATTRIBUTED, "leakage_energy_pj": leakage[NOT_ATTRIBUTED]})
    if not report.get("timing"):
        for lm in report["mapping"]["layers"]:
            writer.writerow(lm)
    return buf.getvalue()


def components_csv(report: dict) -> str:
    """Per component: energy per inference (dynamic, leakage, total; pJ), leakage power (mW),
    area (um2)."""
    buf = io.StringIO()
    fields = ["component", "dynamic_pj", "leakage_pj", "total_pj", "leakage_mw", "area_um2"]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in component_rows(report):
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buf.getvalue()


def _pyplot():
    """matplotlib's pyplot on the Agg backend, or None without the optional ``plot`` extra."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def accuracy_plot(acc: dict, title: str) -> bytes | None:
    """Accuracy vs time after programming (log time axis), one line per (mapping, compensation)
    with a mean ± std band and the FP32 reference dashed; None without matplotlib."""
    plt = _pyplot()
    if plt is None or not acc.get("series"):
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    times = acc["times_s"]
    for s in acc["series"]:
        mean = [100 * m for m in s["mean"]]
        std = [100 * v for v in s["std"]]
        line, = ax.plot(times, mean, marker="o", label=f"{s['mapping']}, {s['compensation']}")
        ax.fill_between(times, [m - v for m, v in zip(mean, std)],
                        [m + v for m, v in zip(mean, std)], alpha=0.2, color=line.get_color())
    ax.axhline(100 * acc["fp32"], color="black", linestyle="--", label="FP32")
    accuracy_time_axes(ax, times, title)
    return _png(fig, plt)


def accuracy_time_axes(ax, times, title: str, ylabel: str = "test accuracy (%)") -> None:
    """The axes of every accuracy-vs-time plot: log time with the times as ticks ("25 s",
    "1 d", ...), labels, title, a small legend and a light grid."""
    ax.set_xscale("log")
    ax.set_xticks(times, [format_time_s(t) for t in times])
    ax.set_xlabel("time after programming")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def render_plots(report: dict) -> dict[str, bytes]:
    """PNG plots (accuracy vs time with mean ± std bands; energy and area breakdowns), or nothing
    when matplotlib is not installed (the optional ``plot`` extra)."""
    plt = _pyplot()
    if plt is None:
        return {}
    out: dict[str, bytes] = {}
    acc = report.get("accuracy")
    if acc:
        png = accuracy_plot(acc, f"{report['workload']['name']} on {report['chip']['name']}")
        if png is not None:
            out["accuracy_vs_time.png"] = png
    if report.get("energy"):
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
        _energy_bars(ax1, [report])
        _area_bars(ax2, [report])
        fig.suptitle(f"{report['chip']['name']}: breakdown")
        fig.tight_layout()
        out["breakdown.png"] = _png(fig, plt)
    return out


def _bar_layout(reports: Sequence[dict], value) -> tuple[list[str], float]:
    """Components with a non-zero value in any report, smallest first; bar height."""
    names = {r["component"] for rep in reports for r in component_rows(rep) if value(r) > 0}
    order = sorted(names, key=lambda n: max(
        (value(r) for rep in reports for r in component_rows(rep) if r["component"] == n),
        default=0.0))
    return order, 0.8 / len(reports)


def _energy_bars(ax, reports: Sequence[dict]) -> None:
    """Energy per inference per component: dynamic and leakage stacked, one bar per chip."""
    names, h = _bar_layout(reports, lambda r: r["total_pj"])
    for i, rep in enumerate(reports):
        rows = {r["component"]: r for r in component_rows(rep)}
        y = [k + (i - (len(reports) - 1) / 2) * h for k in range(len(names))]
        dyn = [(rows[n]["dynamic_pj"] if rows.get(n) and rows[n]["dynamic_pj"] is not None
                else rows.get(n, {}).get("total_pj", 0.0)) * 1e-6 for n in names]
        leak = [((rows[n]["leakage_pj"] or 0.0) if rows.get(n) else 0.0) * 1e-6 for n in names]
        tag = rep["chip"]["name"] if len(reports) > 1 else ""
        bars = ax.barh(y, dyn, height=h, label=f"{tag} dynamic".strip())
        ax.barh(y, leak, left=dyn, height=h, color=bars.patches[0].get_facecolor() if bars.patches
                else None, alpha=0.45, hatch="//", label=f"{tag} leakage".strip())
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("energy per inference (uJ)")
    ax.legend(fontsize=7)
    ax.grid(axis="x", alpha=0.3)


def _area_bars(ax, reports: Sequence[dict]) -> None:
    names, h = _bar_layout(reports, lambda r: r["area_um2"])
    for i, rep in enumerate(reports):
        rows = {r["component"]: r for r in component_rows(rep)}
        y = [k + (i - (len(reports) - 1) / 2) * h for k in range(len(names))]
        ax.barh(y, [rows.get(n, {}).get("area_um2", 0.0) * 1e-6 for n in names], height=h,
                label=rep["chip"]["name"] if len(reports) > 1 else None)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("area (mm2)")
    if len(reports) > 1:
        ax.legend(fontsize=7)
    ax.grid(axis="x", alpha=0.3)


def _png(fig, plt) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def write_report(report: dict, out_dir: str | Path) -> list[Path]:
    """report.json, report.md, layers.csv and the plots, rendered first and then written."""
    plots = render_plots(report)
    files = {"report.json": (json.dumps(report, indent=1, default=_json_default) + "\n").encode(),
             "report.md": markdown_report(report, list(plots)).encode(),
             "layers.csv": layers_csv(report).encode(),
             "components.csv": components_csv(report).encode(), **plots}
    return write_files(Path(out_dir), files)


def _json_default(obj: Any):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


# ------------------------------------------------------------------------------------------
# Comparison of two runs
# ------------------------------------------------------------------------------------------

COMPARE_ROWS = (
    ("latency_ns", "latency (ns)"), ("inferences_per_s", "throughput (inf/s)"),
    ("energy_per_inference_uj", "energy per inference (uJ)"),
    ("dynamic_energy_per_inference_uj", "of which dynamic (uJ)"),
    ("leakage_energy_per_inference_uj", "of which leakage (uJ)"),
    ("single_inference_energy_uj", "energy of one inference alone (uJ)"),
    ("power_w", "power (W)"), ("leakage_power_w", "leakage power (W)"),
    ("area_mm2", "area (mm2)"), ("tops_per_w", "TOPS/W (workload)"),
    ("tops", "TOPS (workload)"), ("peak_tops", "peak TOPS"), ("peak_tops_per_w", "peak TOPS/W"),
    ("peak_tops_per_mm2", "peak TOPS/mm2"),
)
COMPENSATIONS = ("none", "gdc", "gdc+adabs")


def _num(v: float) -> str:
    return f"{v:.4g}"


def accuracy_cells(acc: dict, compensation: str) -> list[str]:
    """Mean ± std (%) per time for one compensation; a chip without analog layers (no series)
    neither drifts nor is noisy: its FP32 accuracy at every time, ± 0."""
    series = [s for s in acc.get("series", []) if s["compensation"] == compensation]
    if not acc.get("series"):
        return [f"{_pct(acc['fp32'])} ± {_pct(0.0)}"] * len(acc["times_s"])
    if not series:
        return ["-"] * len(acc["times_s"])
    s = series[0]
    return [f"{_pct(m)} ± {_pct(sd)}" for m, sd in zip(s["mean"], s["std"])]


def _acc_mean(acc: dict, compensation: str, i: int) -> float | None:
    if not acc.get("series"):
        return acc["fp32"]
    for s in acc["series"]:
        if s["compensation"] == compensation:
            return s["mean"][i]
    return None


def compare_table(a: dict, b: dict, tablefmt: str = "simple") -> str:
    """Both chips formatted alike: FP32 accuracy, then accuracy at each time for each
    compensation (mean ± std, %), then the cost figures; ratios A / B."""
    name_a, name_b = a["chip"]["name"], b["chip"]["name"]
    rows = []
    acc_a, acc_b = a.get("accuracy"), b.get("accuracy")
    if acc_a and acc_b:
        rows.append(["accuracy FP32 (%)", _pct(acc_a["fp32"]), _pct(acc_b["fp32"]),
                     f"{acc_a['fp32'] / acc_b['fp32']:.3f}" if acc_b["fp32"] else "-"])
        comps = [c for c in COMPENSATIONS
                 if any(s["compensation"] == c for s in acc_a.get("series", []) +
                        acc_b.get("series", []))]
        for comp in comps:
            cells_a, cells_b = accuracy_cells(acc_a, comp), accuracy_cells(acc_b, comp)
            for i, t in enumerate(acc_a["times_s"]):
                va, vb = _acc_mean(acc_a, comp, i), _acc_mean(acc_b, comp, i) \
                    if i < len(acc_b["times_s"]) else None
                rows.append([f"accuracy at {format_time_s(t)}, {comp} (%)", cells_a[i],
                             cells_b[i] if i < len(cells_b) else "-",
                             f"{va / vb:.3f}" if va is not None and vb else "-"])
    ta, tb = (r.get("mapping", {}).get("totals", {}) for r in (a, b))
    if "arrays" in ta and "arrays" in tb:
        rows.append(["arrays / tiles used (weight copies)",
                     f"{ta['arrays']} / {ta['tiles_used']} ({ta.get('copies', 0)})",
                     f"{tb['arrays']} / {tb['tiles_used']} ({tb.get('copies', 0)})", "-"])
    for key, label in COMPARE_ROWS:
        va, vb = a["summary"].get(key), b["summary"].get(key)
        if va is None or vb is None:
            continue
        rows.append([label, _num(va), _num(vb), f"{va / vb:.3g}" if vb else "-"])
    return tabulate(rows, headers=["figure", name_a, name_b, "A / B"], tablefmt=tablefmt,
                    disable_numparse=True)


def compare_plots(a: dict, b: dict) -> dict[str, bytes]:
    """The two chips side by side, one plot per figure on shared axes: accuracy vs time, energy
    per inference per component (dynamic and leakage), area per component."""
    plt = _pyplot()
    if plt is None:
        return {}
    out = {}
    acc_a, acc_b = a.get("accuracy"), b.get("accuracy")
    if acc_a and acc_b:
        fig, ax = plt.subplots(figsize=(7, 4.4))
        times = acc_a["times_s"]
        for rep, acc, style in ((a, acc_a, "-"), (b, acc_b, "--")):
            name = rep["chip"]["name"]
            series = acc.get("series") or [{"compensation": "FP32 (no drift)",
                                            "mean": [acc["fp32"]] * len(times),
                                            "std": [0.0] * len(times)}]
            for s in series:
                mean = [100 * m for m in s["mean"]]
                std = [100 * v for v in s["std"]]
                line, = ax.plot(times[:len(mean)], mean, style, marker="o",
                                label=f"{name}: {s['compensation']}")
                ax.fill_between(times[:len(mean)], [m - v for m, v in zip(mean, std)],
                                [m + v for m, v in zip(mean, std)], alpha=0.15,
                                color=line.get_color())
        ax.axhline(100 * acc_a["fp32"], color="black", linestyle=":", label="FP32")
        accuracy_time_axes(ax, times, f"{a['workload']['name']}: {a['chip']['name']} vs "
                                      f"{b['chip']['name']}")
        out["compare_accuracy.png"] = _png(fig, plt)
    if a.get("energy") and b.get("energy"):
        fig, ax = plt.subplots(figsize=(8, 4.8))
        _energy_bars(ax, [a, b])
        ax.set_title(f"{a['workload']['name']}: energy per inference (steady state)")
        out["compare_energy.png"] = _png(fig, plt)
        fig, ax = plt.subplots(figsize=(8, 4.8))
        _area_bars(ax, [a, b])
        ax.set_title("area per component")
        out["compare_area.png"] = _png(fig, plt)
    return out


def compare_markdown(a: dict, b: dict, plots: Sequence[str] = ()) -> str:
    md = [f"# archsim compare: {a['chip']['name']} (A) vs {b['chip']['name']} (B)", "",
          f"Workload `{a['workload']['name']}`; A = `{a['chip']['file']}` "
          f"({a['mapping']['policy']}), B = `{b['chip']['file']}` ({b['mapping']['policy']}). "
          "Ratios are A / B. Accuracy: mean ± std over programmed chips, per compensation (a chip "
          "without analog layers keeps its FP32 accuracy). Energy per inference in steady state "
          "(dynamic + leakage power x the interval between inferences).", "",
          compare_table(a, b, "github"), ""]
    md += [f"![{p}]({p})" for p in plots] + [""]
    md += ["## A: " + a["chip"]["name"], "", markdown_report(a).split("\n", 1)[1], "",
           "## B: " + b["chip"]["name"], "", markdown_report(b).split("\n", 1)[1], ""]
    return "\n".join(md)


def write_compare(a: dict, b: dict, out_dir: str | Path) -> list[Path]:
    plots = compare_plots(a, b)
    files = {"compare.md": compare_markdown(a, b, list(plots)).encode(),
             "compare.json": (json.dumps({"a": a, "b": b}, indent=1, default=_json_default)
                              + "\n").encode(), **plots}
    for tag, rep in (("a", a), ("b", b)):
        files[f"{tag}_layers.csv"] = layers_csv(rep).encode()
        files[f"{tag}_components.csv"] = components_csv(rep).encode()
    return write_files(Path(out_dir), files)


# ------------------------------------------------------------------------------------------
# Design-space sweeps (the figures; archsim.sweep decides what goes in them)
# ------------------------------------------------------------------------------------------

def report_json(report: dict) -> str:
    """A report dict as JSON text (numpy scalars and arrays as plain numbers and lists)."""
    return json.dumps(report, indent=1, default=_json_default) + "\n"


def front_plot(x: Sequence[float], y: Sequence[float], labels: Sequence[str],
               front: Sequence[bool], *, xlabel: str, ylabel: str, title: str,
               legend_title: str = "") -> bytes | None:
    """A scatter of design points, each labelled, with the Pareto-optimal ones joined in red;
    a log x axis when x spans more than 20x. None without matplotlib."""
    plt = _pyplot()
    if plt is None:
        return None
    import numpy as np
    x, y, front = np.asarray(x, float), np.asarray(y, float), np.asarray(front, bool)
    fig, ax = plt.subplots(figsize=(7.6, 5.2))
    ax.scatter(x[~front], y[~front], s=22, color="tab:blue", alpha=0.7, label="design point")
    order = np.argsort(x[front], kind="stable")
    ax.plot(x[front][order], y[front][order], "-o", color="tab:red", ms=6,
            label="Pareto front (these two figures)")
    log_x = bool(len(x)) and x.min() > 0 and x.max() / x.min() > 20
    if log_x:
        ax.set_xscale("log")
    for xi, yi, text, dy in zip(x, y, labels, _label_offsets(np.log10(x) if log_x else x, y,
                                                             labels)):
        ax.annotate(text, (xi, yi), xytext=(4, 3 + dy), textcoords="offset points", fontsize=6,
                    arrowprops=dict(arrowstyle="-", lw=0.4, color="grey") if dy else None)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, title=legend_title or None, title_fontsize=7)
    ax.grid(alpha=0.3)
    return _png(fig, plt)


def _label_offsets(x, y, labels, *, width_pt: float = 390.0, height_pt: float = 270.0,
                   char_pt: float = 3.6, line_pt: float = 7.5, gap_pt: float = 6.0) -> list[float]:
    """Vertical offsets (points) that keep point labels from overlapping: each label, from the
    top, takes the nearest free line slot above or below its point (plot about width_pt x
    height_pt; labels char_pt wide per character, line_pt tall)."""
    import numpy as np
    x, y = np.asarray(x, float), np.asarray(y, float)
    span = lambda v: (v.max() - v.min()) or 1.0
    px = (x - x.min()) / span(x) * width_pt
    py = (y - y.min()) / span(y) * height_pt
    placed: list[tuple[float, float, float]] = []          # (left, right, bottom) of a label
    offsets = [0.0] * len(labels)
    for i in sorted(range(len(labels)), key=lambda k: (-py[k], px[k])):
        left, right = px[i], px[i] + char_pt * len(labels[i]) + gap_pt
        for step in (0, -1, 1, -2, 2, -3, 3, -4, 4, -5, 5, -6, 6):
            bottom = py[i] + step * line_pt
            if all(right <= l or left >= r or abs(bottom - b) >= line_pt for l, r, b in placed):
                break
        placed.append((left, right, bottom))
        offsets[i] = bottom - py[i]
    return offsets
