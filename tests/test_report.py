"""Report writers: formatting, atomic writes, CSV/JSON/Markdown content, CLI argument parsing."""

from __future__ import annotations

import csv
import io
import json

import pytest

from archsim import atomic
from archsim import report as rep
import argparse

from archsim.cli import parse_times


def fake_report() -> dict:
    return {
        "chip": {"name": "chip-a", "file": "a.yaml", "hash": "ab" * 32, "technology_nm": 14.0,
                 "clock_mhz": 1000.0},
        "workload": {"name": "wl", "file": "wl.yaml", "network": "net", "weights": "w.npz",
                     "dataset": "digits", "macs_per_inference": 1000},
        "mapping": {"policy": "hybrid", "table": "(table)", "totals": {},
                    "layers": [{"name": "conv1", "kind": "conv2d", "placement": "analog", "k": 9,
                                "n": 4, "row_blocks": 1, "col_blocks": 1, "arrays": 1,
                                "utilization": 0.5, "macs": 360}]},
        "accuracy": {"fp32": 0.9, "times_s": [25.0, 86400.0], "seeds": 2, "images": 10,
                     "calib_images": 5,
                     "series": [{"mapping": "hybrid", "compensation": "gdc", "mean": [0.88, 0.85],
                                 "std": [0.01, 0.02]}]},
        "timing": {"inferences": 2, "clock_mhz": 1000.0, "latency_cycles": 1234,
                   "latency_ns": 1234.0, "interval_cycles": 1000,
                   "throughput_inferences_per_s": 1e6,
                   "layers": [{"name": "conv1", "kind": "conv2d", "placement": "analog",
                               "start_cycle": 0, "end_cycle": 1234, "busy_cycles": 1000,
                               "stall_cycles": 3, "mvms": 10, "actions": {"adc.conversion": 40}}]},
        "energy": {"per_layer_pj": {"conv1": 5000.0},
                   "per_component_pj_per_inference": {"adc": 3000.0, "pcm_array": 2000.0},
                   "sources": {"adc.conversion": "default: Murmann"}},
        "area": {"per_component_um2": {"adc": 1e6, "pcm_array": 3e6}},
        "summary": {"latency_ns": 1234.0, "inferences_per_s": 1e6, "energy_per_inference_uj": 0.005,
                    "power_w": 5.0, "tops": 0.002, "tops_per_w": 0.4, "area_mm2": 4.0,
                    "peak_tops": 10.0, "peak_tops_per_w": 5.0, "peak_tops_per_mm2": 2.5},
    }


def test_format_time_s_uses_natural_units():
    assert [rep.format_time_s(t) for t in (25.0, 3600.0, 86400.0, 2592000.0, 31536000.0, 90.5)] \
        == ["25 s", "1 h", "1 d", "1 mo", "1 y", "90.5 s"]


def test_parse_times_units_and_errors():
    assert parse_times("25s,1h,1d,1mo,1y") == (25.0, 3600.0, 86400.0, 2592000.0, 31536000.0)
    # in time order, each once (accuracy vs time is plotted as a line)
    assert parse_times("100,2.5h, 1e3 s,30min,100s") == (100.0, 1000.0, 1800.0, 9000.0)
    for bad in ("1 week", "0s", "nan", "inf", "-5s", "1e999", "", "1h,"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected times after programming"):
            parse_times(bad)


def test_accuracy_table_cells_are_mean_pm_std_percent():
    table = rep.accuracy_table(fake_report()["accuracy"])
    assert "88.00 ± 1.00" in table and "85.00 ± 2.00" in table
    assert table.splitlines()[2].split()[:3] == ["fp32", "-", "90.00"]


def test_layers_csv_joins_mapping_timing_and_energy():
    rows = list(csv.DictReader(io.StringIO(rep.layers_csv(fake_report()))))
    assert len(rows) == 1
    assert rows[0]["name"] == "conv1" and rows[0]["end_cycle"] == "1234"
    assert rows[0]["k"] == "9" and float(rows[0]["dynamic_energy_pj"]) == 5000.0
    assert rows[0]["leakage_energy_pj"] == ""            # a report without the leakage split


def test_write_report_writes_all_files(tmp_path):
    written = rep.write_report(fake_report(), tmp_path / "out")
    names = {p.name for p in written}
    assert {"report.json", "report.md", "layers.csv", "components.csv"} <= names
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert set(data) >= {"chip", "workload", "mapping", "accuracy", "timing", "energy", "area",
                         "summary"}
    md = (tmp_path / "out" / "report.md").read_text()
    assert "# archsim report: wl on chip-a" in md and "| adc" in md
    assert not list((tmp_path / "out").glob(".*.tmp"))


def test_write_report_renders_before_writing(tmp_path, monkeypatch):
    """A failure while rendering leaves no file at all (nothing half-written)."""
    broken = fake_report()
    del broken["timing"]["layers"][0]["mvms"]
    with pytest.raises(KeyError):
        rep.write_report(broken, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_atomic_write_keeps_old_file_when_interrupted(tmp_path, monkeypatch):
    target = tmp_path / "report.json"
    target.write_text("old")

    def boom(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(atomic.os, "replace", boom)
    with pytest.raises(OSError):
        atomic.atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_plots_are_png_when_matplotlib_present():
    pytest.importorskip("matplotlib")
    plots = rep.render_plots(fake_report())
    assert set(plots) == {"accuracy_vs_time.png", "breakdown.png"}
    assert all(data.startswith(b"\x89PNG") for data in plots.values())
    # no accuracy series (the all-digital chip): no accuracy plot
    assert rep.accuracy_plot({"fp32": 0.9, "times_s": [25.0], "series": []}, "t") is None
    no_acc = fake_report()
    no_acc["accuracy"]["series"] = []
    assert set(rep.render_plots(no_acc)) == {"breakdown.png"}


def test_compare_table_ratios():
    a, b = fake_report(), fake_report()
    b["chip"]["name"] = "chip-b"
    b["summary"] = {**b["summary"], "energy_per_inference_uj": 0.02}
    table = rep.compare_table(a, b)
    line = next(l for l in table.splitlines() if l.startswith("energy per inference"))
    assert line.split()[-1] == "0.25"


def test_atomic_write_gives_the_usual_file_permissions(tmp_path):
    import os
    umask = os.umask(0)
    os.umask(umask)
    target = tmp_path / "report.md"
    atomic.atomic_write_text(target, "x")
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def steady_report() -> dict:
    """A report with the steady-state energy split (dynamic / leakage per component and layer)."""
    r = fake_report()
    r["energy"].update({
        "per_component": {
            "adc": {"dynamic_pj": 2500.0, "leakage_pj": 500.0, "total_pj": 3000.0, "leakage_mw": 0.5},
            "pcm_array": {"dynamic_pj": 2000.0, "leakage_pj": 0.0, "total_pj": 2000.0,
                          "leakage_mw": 0.0}},
        "per_layer_leakage_pj": {"conv1": 400.0, "(not attributed: unused tiles)": 100.0},
        "interval_ns": 1000.0, "latency_ns": 1234.0, "leakage_power_mw": 0.5,
        "single_inference_pj": 4500.0 + 0.5 * 1234.0})
    r["summary"].update({"dynamic_energy_per_inference_uj": 0.0045,
                         "leakage_energy_per_inference_uj": 0.0005, "leakage_power_w": 0.0005})
    return r


def test_every_energy_table_has_dynamic_and_leakage_columns():
    r = steady_report()
    comp = rep.component_table(r)
    header = comp.splitlines()[0]
    assert "dynamic uJ/inf" in header and "leakage uJ/inf" in header and "leakage mW" in header
    adc = next(l for l in comp.splitlines() if l.startswith("adc"))
    assert adc.split()[1:6] == ["0.0025", "0.0005", "0.003", "60.0%", "0.5"]
    total = next(l for l in comp.splitlines() if l.startswith("total"))
    assert total.split()[1:4] == ["0.0045", "0.0005", "0.005"]
    layers = rep.timing_table(r)
    assert "dynamic nJ" in layers and "leakage nJ" in layers
    assert "(not attributed: unused tiles)" in layers
    conv = next(l for l in layers.splitlines() if l.startswith("conv1"))
    assert conv.split()[-2:] == ["5", "0.4"]
    rows = list(csv.DictReader(io.StringIO(rep.components_csv(r))))
    assert rows[0] == {"component": "adc", "dynamic_pj": "2500.0", "leakage_pj": "500.0",
                       "total_pj": "3000.0", "leakage_mw": "0.5", "area_um2": "1000000.0"}
    csv_rows = list(csv.DictReader(io.StringIO(rep.layers_csv(r))))
    assert float(csv_rows[0]["leakage_energy_pj"]) == 400.0
    assert csv_rows[-1]["name"] == "(not attributed: unused tiles)"
    md = rep.markdown_report(r)
    assert "| dynamic uJ/inf" in md and "1 us interval" in md and "0.005117 uJ over 1.234 us" in md
    term = rep.terminal_report(r)
    assert "leakage power" in term and "energy of one inference alone" not in term  # not in summary


def test_compare_formats_both_chips_alike_and_shows_every_compensation():
    a, b = steady_report(), steady_report()
    b["chip"]["name"] = "chip-b"
    a["accuracy"]["series"] = [
        {"mapping": "hybrid", "compensation": c, "mean": [m, m - 0.1], "std": [0.01, 0.02]}
        for c, m in (("none", 0.8), ("gdc", 0.85), ("gdc+adabs", 0.87))]
    b["accuracy"]["series"] = []                       # all-digital: FP32 at every time
    table = rep.compare_table(a, b)
    for comp, cell in (("none", "80.00 ± 1.00"), ("gdc", "85.00 ± 1.00"),
                       ("gdc+adabs", "87.00 ± 1.00")):
        line = next(l for l in table.splitlines() if l.startswith(f"accuracy at 25 s, {comp} "))
        assert cell in line and "90.00 ± 0.00" in line
    line = next(l for l in table.splitlines() if l.startswith("accuracy at 1 d, gdc+adabs"))
    assert line.split()[-1] == f"{0.77 / 0.9:.3f}"
    assert any(l.startswith("of which leakage (uJ)") for l in table.splitlines())
    pytest.importorskip("matplotlib")
    plots = rep.compare_plots(a, b)
    assert set(plots) == {"compare_accuracy.png", "compare_energy.png", "compare_area.png"}
    assert all(p.startswith(b"\x89PNG") for p in plots.values())
    md = rep.compare_markdown(a, b, list(plots))
    assert "![compare_energy.png](compare_energy.png)" in md
