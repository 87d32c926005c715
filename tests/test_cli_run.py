"""End to end through the CLI: run, compare, errors (one line, exit 2, nothing half-written)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from archsim.cli import main

REPORT_KEYS = {"chip", "workload", "mapping", "accuracy", "timing", "energy", "area", "summary"}
SUMMARY_KEYS = {"peak_tops", "peak_tops_per_w", "peak_tops_per_mm2", "tops", "tops_per_w",
                "latency_ns", "inferences_per_s", "energy_per_inference_uj", "power_w", "area_mm2"}


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    code = main(["run", "--quiet", "--seeds", "2", "--times", "25s,1d,1y", "--out", str(out)])
    assert code == 0
    return out, json.loads((out / "report.json").read_text())


def test_run_writes_the_report_files(default_run):
    out, report = default_run
    assert {"report.json", "report.md", "layers.csv"} <= {p.name for p in out.iterdir()}
    assert set(report) == REPORT_KEYS
    assert set(report["summary"]) >= SUMMARY_KEYS


def test_run_report_accuracy_layout(default_run):
    _, report = default_run
    acc = report["accuracy"]
    assert acc["times_s"] == [25.0, 86400.0, 31536000.0]
    assert acc["seeds"] == 2
    assert 0.9 < acc["fp32"] <= 1.0
    assert {(s["mapping"], s["compensation"]) for s in acc["series"]} == {
        ("hybrid", "none"), ("hybrid", "gdc"), ("hybrid", "gdc+adabs")}
    for s in acc["series"]:
        assert len(s["mean"]) == len(s["std"]) == 3
    by = {s["compensation"]: s["mean"] for s in acc["series"]}
    # drift without compensation loses accuracy over a year; GDC recovers most of the drop
    assert by["none"][2] < by["gdc"][2] - 0.2
    assert (by["gdc"][2] - by["none"][2]) / (acc["fp32"] - by["none"][2]) > 0.8


def test_run_report_timing_and_energy_are_consistent(default_run):
    _, report = default_run
    timing, summary = report["timing"], report["summary"]
    assert summary["latency_ns"] == pytest.approx(timing["latency_ns"])
    assert summary["inferences_per_s"] == pytest.approx(timing["throughput_inferences_per_s"])
    assert summary["power_w"] == pytest.approx(
        summary["energy_per_inference_uj"] * 1e-6 * summary["inferences_per_s"], rel=1e-12)
    layer_names = [l["name"] for l in timing["layers"]]
    assert layer_names[0] == "conv1" and layer_names[-1] == "linear"


def test_run_is_reproducible_bit_for_bit(default_run, tmp_path):
    _, first = default_run
    assert main(["run", "--quiet", "--seeds", "2", "--times", "25s,1d,1y", "--out",
                 str(tmp_path)]) == 0
    second = json.loads((tmp_path / "report.json").read_text())
    assert second["accuracy"] == first["accuracy"]
    assert second["timing"] == first["timing"]


def test_compare_prints_ratios(tmp_path, capsys):
    assert main(["compare", "pcm_hybrid", "digital_fp32", "--quiet", "--seeds", "1", "--times",
                 "25s,1y", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "A / B" in out and "energy per inference" in out
    assert (tmp_path / "compare.md").exists() and (tmp_path / "compare.json").exists()
    both = json.loads((tmp_path / "compare.json").read_text())
    digital = both["b"]["accuracy"]
    # the all-digital chip has no analog series: its accuracy is FP32 at every time
    assert digital["series"] == [] and digital["fp32"] == both["a"]["accuracy"]["fp32"]
    assert "accuracy at 1 y" in out


@pytest.mark.parametrize("args,needle", [
    (["run", "no_such_chip.yaml"], "no_such_chip.yaml"),
    (["run", "pcm_hybrid", "no_such_workload.yaml"], "no_such_workload.yaml"),
    (["run", "--set", "chip.tiles.adc.bits=99", "--no-accuracy"], "chip.tiles.adc.bits"),
    (["run", "--set", "chip.tiles.count=1", "--no-accuracy"], "needs 2 arrays"),
    (["run", "--times", "soon"], "--times"),
    (["run", "--set", "chip.tiles.buffer.kib=0.001"], "chip.tiles.buffer.kib"),
    (["run", "--set", "chip.digital.sram.kib=1"], "chip.digital.sram.kib"),
])
def test_run_errors_are_one_line_exit_2(args, needle, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(args + ["--quiet", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err
    assert not out.exists()


def test_missing_weights_file_is_one_line_through_the_real_command(tmp_path):
    workload = tmp_path / "wl.yaml"
    workload.write_text("workload:\n  name: w\n  network: digits_cnn\n  weights: nowhere.npz\n")
    proc = subprocess.run([sys.executable, "-m", "archsim", "run", "pcm_hybrid", str(workload),
                           "--quiet", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, env={"ARCHSIM_DATA": str(tmp_path),
                                                               "PATH": "/usr/bin:/bin",
                                                               "HOME": str(tmp_path)})
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "nowhere.npz" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_test_images_are_evenly_spaced_not_the_first_n(monkeypatch):
    """Test files may be class-sorted (the shared CIFAR-10 file is): a subset must span them."""
    from archsim import functional, simulate
    seen = {}

    def fake_evaluate(mappings, params, test, **kwargs):
        seen["labels"] = test.labels
        return None
    monkeypatch.setattr(functional, "evaluate_accuracy", fake_evaluate)
    wl = simulate.load_workload("digits_cnn")
    full = wl.dataset("test")
    mapping = simulate.load_mapping("pcm_hybrid", wl)
    simulate.accuracy_for([mapping], wl, times_s=(25.0,), seeds=1, calib_images=0, test_images=90)
    assert len(seen["labels"]) == 90
    assert list(seen["labels"][:3]) == [full.labels[0], full.labels[4], full.labels[8]]


def test_train_writes_loadable_weights(tmp_path, capsys):
    out = tmp_path / "w.npz"
    assert main(["train", "digits_cnn", "--epochs", "1", "--max-images", "256", "--quiet",
                 "--out", str(out)]) == 0
    assert "FP32 test accuracy" in capsys.readouterr().out
    from archsim.workloads import load_workload
    params = load_workload("digits_cnn").load_params(out)
    assert params["conv1.weight"].shape == (16, 1, 3, 3)
    assert not list(tmp_path.glob(".*.tmp"))


def test_train_checkpoint_and_resume_through_the_cli(tmp_path, capsys):
    """2 epochs in one run == 1 epoch, stop, --resume, 1 more (bit for bit); resuming with other
    options is one line and exit 2."""
    import numpy as np
    common = ["train", "digits_cnn", "--epochs", "2", "--max-images", "192", "--quiet"]
    assert main(common + ["--out", str(tmp_path / "whole.npz")]) == 0
    ck = str(tmp_path / "ck")
    assert main(common + ["--checkpoint", ck, "--stop-after", "1",
                          "--out", str(tmp_path / "split.npz")]) == 0
    assert f"--resume {ck}" in capsys.readouterr().out
    assert not (tmp_path / "split.npz").exists()
    code = main(common + ["--lr", "0.1", "--resume", ck, "--out", str(tmp_path / "split.npz")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "lr 0.1 (checkpoint: 0.05)" in err
    assert main(common + ["--resume", ck, "--out", str(tmp_path / "split.npz")]) == 0
    with np.load(tmp_path / "whole.npz") as a, np.load(tmp_path / "split.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k])


def test_train_with_a_bad_init_file_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    code = main(["train", "digits_cnn", "--init", str(bad), "--quiet", "--out",
                 str(tmp_path / "w.npz")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "bad.npz" in err
    assert not (tmp_path / "w.npz").exists()
