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
    """Layer -> placement, matrix size, split, arrays, utilization, MACs; with totals."""
    return _mapping_table(mapping.to_dict(), mapping.network.name, mapping.chip.chip,
                          tablefmt=tablefmt)


def _mapping_table(m: dict, network_name: str, chip, tablefmt: str = "simple") -> str:
    rows = []
    for lm in m["layers"]:
        analog = lm["placement"] == "analog"
        rows.append([lm["name"], lm["kind"], lm["placement"], f"{lm['k']}x{lm['n']}",
                     f"{lm['row_blocks']}x{lm['col_blocks']}" if analog else "-",
                     lm["arrays"] if analog else "-",
                     f"{100 * lm['utilization']:.1f}%" if analog else "-", f"{lm['macs']:,}"])
    t = m["totals"]
    rows.append(["total", "", f"{t['analog_layers']} analog / {t['digital_layers']} digital", "",
                 "", f"{t['arrays']} of {t['arrays_available']}", f"{100 * t['utilization']:.1f}%",
                 f"{t['macs']:,}"])
    head = (f"{network_name} on {chip.name} ({m['policy']}): "
            f"{chip.tiles.array.rows}x{chip.tiles.array.cols} arrays, "
            f"{chip.tiles.array.weight_cols} weight columns each; "
            f"{100 * t['analog_mac_fraction']:.1f}% of MACs analog")
    table = tabulate(rows, headers=["layer", "kind", "placement", "K x N", "row x col blocks",
                                    "arrays", "utilization", "MACs"], tablefmt=tablefmt,
                     disable_numparse=True)
    return head + "\n" + table


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


def timing_table(report: dict, tablefmt: str = "simple") -> str:
    timing = report["timing"]
    layer_energy = report.get("energy", {}).get("per_layer_pj", {})
    rows = []
    for lt in timing["layers"]:
        rows.append([lt["name"], lt["placement"], f"{lt['start_cycle']:,}", f"{lt['end_cycle']:,}",
                     f"{lt['busy_cycles']:,}", f"{lt['stall_cycles']:,}", f"{lt['mvms']:,}",
                     f"{layer_energy.get(lt['name'], 0.0) / 1e3:.4g}"])
    return tabulate(rows, headers=["layer", "placement", "start cycle", "end cycle", "busy",
                                   "stall", "MVMs", "energy nJ"], tablefmt=tablefmt,
                    disable_numparse=True)


def component_table(report: dict, tablefmt: str = "simple") -> str:
    energy = report["energy"]
    area = report["area"]
    per_inf = energy.get("per_component_pj_per_inference", energy.get("per_component_pj", {}))
    total_e = sum(per_inf.values()) or 1.0
    total_a = sum(area["per_component_um2"].values()) or 1.0
    names = sorted(set(per_inf) | set(area["per_component_um2"]),
                   key=lambda n: -per_inf.get(n, 0.0))
    rows = []
    for name in names:
        e = per_inf.get(name, 0.0)
        a = area["per_component_um2"].get(name, 0.0)
        rows.append([name, f"{e / 1e6:.4g}", f"{100 * e / total_e:.1f}%", f"{a / 1e6:.4g}",
                     f"{100 * a / total_a:.1f}%"])
    rows.append(["total", f"{total_e / 1e6:.4g}", "100%", f"{total_a / 1e6:.4g}", "100%"])
    return tabulate(rows, headers=["component", "energy uJ/inference", "share", "area mm2",
                                   "share"], tablefmt=tablefmt, disable_numparse=True)


SUMMARY_ROWS = (
    ("latency_ns", "latency per inference", lambda v: _si(v * 1e-9, "s")),
    ("inferences_per_s", "throughput", lambda v: f"{v:,.1f} inf/s"),
    ("energy_per_inference_uj", "energy per inference", lambda v: f"{v:.4g} uJ"),
    ("power_w", "average power", lambda v: f"{v:.4g} W"),
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
            parts.append(ACCURACY_LEGEND)
    if report.get("timing"):
        t = report["timing"]
        parts += ["", f"Timing ({plural(t['inferences'], 'inference')} in flight, clock "
                      f"{t['clock_mhz']:g} MHz): latency {t['latency_cycles']:,} cycles "
                      f"= {_si(t['latency_ns'] * 1e-9, 's')}, steady-state interval "
                      f"{t['interval_cycles']:,} cycles, {t['throughput_inferences_per_s']:,.1f} "
                      "inferences/s", timing_table(report), TIMING_LEGEND]
    if report.get("energy"):
        parts += ["", "Energy and area per component:", component_table(report)]
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
               + ("mean ± std over chips in %." if _spread(acc) else "in %.") + "", "",
               accuracy_table(acc, "github"), "", ACCURACY_LEGEND + ".", ""]
        md += [f"![accuracy vs time]({p})" for p in plots if "accuracy" in p] + [""]
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
        md += [f"![breakdown]({p})" for p in plots if "breakdown" in p] + [""]
        md += ["## Sources of figures", "", sources_table(report, "github"), ""]
    return "\n".join(md)


def layers_csv(report: dict) -> str:
    buf = io.StringIO()
    mapping = {lm["name"]: lm for lm in report["mapping"]["layers"]}
    layer_energy = report.get("energy", {}).get("per_layer_pj", {})
    fields = ["name", "kind", "placement", "k", "n", "row_blocks", "col_blocks", "arrays",
              "utilization", "macs", "start_cycle", "end_cycle", "busy_cycles", "stall_cycles",
              "mvms", "energy_pj"]
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for lt in (report.get("timing") or {}).get("layers", []):
        row = {**mapping.get(lt["name"], {}), **lt}
        row["energy_pj"] = layer_energy.get(lt["name"], "")
        writer.writerow(row)
    if not report.get("timing"):
        for lm in report["mapping"]["layers"]:
            writer.writerow(lm)
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
    ax.set_xscale("log")
    ax.set_xticks(times, [format_time_s(t) for t in times])
    ax.set_xlabel("time after programming")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _png(fig, plt)


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
        energy = report["energy"].get("per_component_pj_per_inference",
                                      report["energy"].get("per_component_pj", {}))
        area = report["area"]["per_component_um2"]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.8))
        for ax, data, unit, scale in ((ax1, energy, "energy per inference (uJ)", 1e-6),
                                      (ax2, area, "area (mm2)", 1e-6)):
            items = sorted(((k, v * scale) for k, v in data.items() if v > 0), key=lambda kv: kv[1])
            ax.barh([k for k, _ in items], [v for _, v in items])
            ax.set_xlabel(unit)
        fig.suptitle(f"{report['chip']['name']}: breakdown")
        fig.tight_layout()
        out["breakdown.png"] = _png(fig, plt)
    return out


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
             "layers.csv": layers_csv(report).encode(), **plots}
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
    ("energy_per_inference_uj", "energy per inference (uJ)"), ("power_w", "power (W)"),
    ("area_mm2", "area (mm2)"), ("tops_per_w", "TOPS/W (workload)"),
    ("tops", "TOPS (workload)"), ("peak_tops_per_w", "peak TOPS/W"),
    ("peak_tops_per_mm2", "peak TOPS/mm2"),
)


def best_series(acc: dict) -> dict | None:
    """The most compensated series of a run (gdc+adabs over gdc over none)."""
    order = {"gdc+adabs": 0, "gdc": 1, "none": 2}
    series = sorted(acc.get("series", []), key=lambda s: order.get(s["compensation"], 9))
    return series[0] if series else None


def compare_table(a: dict, b: dict, tablefmt: str = "simple") -> str:
    name_a, name_b = a["chip"]["name"], b["chip"]["name"]
    rows = []
    for acc_key in ("accuracy",):
        acc_a, acc_b = a.get(acc_key), b.get(acc_key)
        if acc_a and acc_b:
            rows.append(["accuracy FP32 (%)", _pct(acc_a["fp32"]), _pct(acc_b["fp32"]),
                         f"{acc_a['fp32'] / acc_b['fp32']:.3f}" if acc_b["fp32"] else "-"])
            sa, sb = best_series(acc_a), best_series(acc_b)
            for i, t in enumerate(acc_a["times_s"]):
                va = sa["mean"][i] if sa else acc_a["fp32"]
                vb = sb["mean"][i] if sb and i < len(sb["mean"]) else acc_b["fp32"]
                label = f"accuracy at {format_time_s(t)} (%)"
                rows.append([label, f"{_pct(va)} ({sa['compensation'] if sa else 'fp32'})",
                             f"{_pct(vb)} ({sb['compensation'] if sb else 'fp32'})",
                             f"{va / vb:.3f}" if vb else "-"])
    for key, label in COMPARE_ROWS:
        va, vb = a["summary"].get(key), b["summary"].get(key)
        if va is None or vb is None:
            continue
        rows.append([label, f"{va:.4g}", f"{vb:.4g}", f"{va / vb:.3g}" if vb else "-"])
    return tabulate(rows, headers=["figure", name_a, name_b, "A / B"], tablefmt=tablefmt,
                    disable_numparse=True)


def compare_markdown(a: dict, b: dict) -> str:
    return "\n".join([
        f"# archsim compare: {a['chip']['name']} (A) vs {b['chip']['name']} (B)", "",
        f"Workload `{a['workload']['name']}`; A = `{a['chip']['file']}` ({a['mapping']['policy']}), "
        f"B = `{b['chip']['file']}` ({b['mapping']['policy']}). Ratios are A / B.", "",
        compare_table(a, b, "github"), "",
        "## A: " + a["chip"]["name"], "", markdown_report(a).split("\n", 1)[1], "",
        "## B: " + b["chip"]["name"], "", markdown_report(b).split("\n", 1)[1], ""])


def write_compare(a: dict, b: dict, out_dir: str | Path) -> list[Path]:
    files = {"compare.md": compare_markdown(a, b).encode(),
             "compare.json": (json.dumps({"a": a, "b": b}, indent=1, default=_json_default)
                              + "\n").encode()}
    for tag, rep in (("a", a), ("b", b)):
        files[f"{tag}_layers.csv"] = layers_csv(rep).encode()
        for name, data in render_plots(rep).items():
            files[f"{tag}_{name}"] = data
    return write_files(Path(out_dir), files)
