"""``archsim map``: the mapping table and JSON, and user errors as one line on stderr, exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from archsim.cli import main

REPO = Path(__file__).resolve().parents[1]
PCM = str(REPO / "configs" / "pcm_hybrid.yaml")
RESNET = str(REPO / "workloads" / "resnet32_cifar10.yaml")


def run_main(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc, out, err):
    assert rc == 2
    assert out == ""
    assert err.startswith("archsim: error: ") and err.endswith("\n")
    assert err.count("\n") == 1
    assert "Traceback" not in err


def test_map_table(capsys):
    rc, out, err = run_main(capsys, "map", PCM, RESNET)
    assert rc == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].startswith("resnet32_cifar10 on pcm-hybrid-512 (hybrid): 512x512 arrays, "
                               "256 weight columns each")
    rows = {line.split()[0]: line.split() for line in lines[3:]}
    assert rows["conv1"][2] == "digital" and rows["linear"][2] == "digital"
    assert rows["layer3.2.conv1"][1:8] == ["conv2d", "analog", "576x64", "2x1", "2", "1", "1"]
    # the default chip replicates (replication: auto): stage 1 has 6 copies, 3 per array
    assert rows["layer1.0.conv1"][3:8] == ["144x16", "1x1", "2", "6", "3"]
    assert sum(1 for n, r in rows.items() if n != "total" and len(r) > 2 and r[2] == "analog") \
        == 30
    total = next(line for line in lines if line.startswith("total"))
    assert "30 analog / 2 digital" in total and "58 of 64" in total and "68,862,592" in total


def test_map_json(capsys):
    rc, out, err = run_main(capsys, "map", PCM, RESNET, "--json")
    assert rc == 0 and err == ""
    d = json.loads(out)
    assert len(d["layers"]) == 32
    for row in d["layers"]:
        assert {"name", "kind", "placement", "k", "n", "row_blocks", "col_blocks", "arrays",
                "utilization", "macs"} <= set(row)
    by_name = {row["name"]: row for row in d["layers"]}
    assert by_name["conv1"]["placement"] == "digital" and by_name["conv1"]["arrays"] == 0
    assert (by_name["layer1.0.conv1"]["copies"], by_name["layer1.0.conv1"]["arrays"],
            by_name["layer1.0.conv1"]["blocks_per_array"]) == (6, 2, 3)
    assert d["replication"]["mode"] == "auto" and d["replication"]["arrays_one_copy"] == 39
    assert by_name["linear"]["placement"] == "digital"
    stage3 = [r for r in d["layers"] if r["k"] == 576]
    assert len(stage3) == 9
    assert all((r["row_blocks"], r["col_blocks"], r["arrays"]) == (2, 1, 2) for r in stage3)
    assert by_name["layer3.0.conv2"]["utilization"] == 0.140625
    assert by_name["layer1.0.conv1"]["macs"] == 2_359_296
    assert sum(r["placement"] == "analog" for r in d["layers"]) == 30
    t = d["totals"]
    assert (t["arrays"], t["arrays_available"], t["analog_layers"], t["macs"], t["copies"]) == \
        (58, 64, 30, 68_862_592, 90)


def test_map_hermes_by_name(capsys):
    rc, out, _ = run_main(capsys, "map", "hermes", "resnet32_cifar10", "--json")
    assert rc == 0
    d = json.loads(out)
    assert d["totals"]["arrays"] == 58
    assert {r["row_blocks"] for r in d["layers"] if r["k"] == 576} == {3}


def test_map_policy_and_set(capsys):
    rc, out, _ = run_main(capsys, "map", PCM, RESNET, "--json", "--mapping", "all-digital")
    assert rc == 0 and json.loads(out)["totals"]["arrays"] == 0
    assert json.loads(out)["policy"] == "all-digital"
    rc, out, _ = run_main(capsys, "map", PCM, RESNET, "--json", "--mapping", "all-analog",
                          "--set", "mapping.replication=none")
    assert json.loads(out)["totals"]["arrays"] == 41
    rc, out, _ = run_main(capsys, "map", PCM, RESNET, "--json", "--set", "chip.tiles.count=8",
                          "--set", "mapping.time_multiplex=true")
    assert rc == 0 and json.loads(out)["totals"]["rounds"] == 5


def test_map_defaults(capsys):
    rc, out, _ = run_main(capsys, "map")
    assert rc == 0
    assert out.startswith("digits_cnn on pcm-hybrid-512 (hybrid)")
    assert "2 analog / 2 digital" in out


def test_too_few_arrays_is_one_line(capsys):
    rc, out, err = run_main(capsys, "map", PCM, RESNET, "--set", "chip.tiles.count=8")
    assert_one_line_error(rc, out, err)
    assert "needs 39 arrays" in err and "has 8" in err


def test_unknown_key_is_one_line(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: pcm_hybrid.yaml\nchip:\n  tiles:\n    adc:\n      bitz: 6\n")
    rc, out, err = run_main(capsys, "map", str(bad), RESNET)
    assert_one_line_error(rc, out, err)
    assert err == (f"archsim: error: {bad}:5: chip.tiles.adc.bitz: unknown key 'bitz'; "
                   "did you mean 'bits'?\n")


def test_bad_set_is_one_line(capsys):
    rc, out, err = run_main(capsys, "map", PCM, RESNET, "--set", "chip.tiles.adc.bits=99")
    assert_one_line_error(rc, out, err)
    assert "chip.tiles.adc.bits" in err and "expected a value <= 16, got 99" in err
    rc, out, err = run_main(capsys, "map", PCM, RESNET, "--set", "chip.tiles.count")
    assert_one_line_error(rc, out, err)
    assert "expected PATH=VALUE" in err


def test_unknown_override_layer_is_one_line(capsys, tmp_path):
    bad = tmp_path / "ov.yaml"
    bad.write_text("extends: pcm_hybrid.yaml\nmapping:\n  overrides: {layer9.0.conv1: digital}\n")
    rc, out, err = run_main(capsys, "map", str(bad), RESNET)
    assert_one_line_error(rc, out, err)
    assert "mapping.overrides.layer9.0.conv1" in err and "did you mean" in err


@pytest.mark.parametrize("text, needles", [
    ("chip:\n  tiles:\n    adc:\n      bits: eight\n",
     [":4: chip.tiles.adc.bits: expected an integer, got str 'eight'"]),
    ("chip:\n  clock_mhz: -5\n", [":2: chip.clock_mhz: expected a value > 0"]),
    ("chip:\n  tiles: {count: 3\n", ["YAML syntax error"]),
    ("extends: BAD.yaml\n", ["extends cycle: BAD.yaml -> BAD.yaml"]),
], ids=["type", "range", "syntax", "cycle"])
def test_subprocess_errors(tmp_path, text, needles):
    bad = tmp_path / "BAD.yaml"
    bad.write_text(text)
    proc = subprocess.run([sys.executable, "-m", "archsim", "map", str(bad), RESNET],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"archsim: error: {bad}")
    for needle in needles:
        assert needle in proc.stderr


def test_subprocess_missing_file(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "archsim", "map", str(tmp_path / "nope.yaml")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == (f"archsim: error: {tmp_path / 'nope.yaml'}: no such file (shipped "
                           "configs: pcm_hybrid, digital_fp32, hermes)\n")


def test_subprocess_map_succeeds():
    proc = subprocess.run([sys.executable, "-m", "archsim", "map", "configs/hermes.yaml",
                           "workloads/resnet32_cifar10.yaml", "--json"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["totals"]["arrays"] == 58
