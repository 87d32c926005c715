"""Cycle-count regression: golden files of the shipped configs x workloads, what-moved reports,
corrupt golden files, --update."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from archsim.cli import main
from archsim.errors import DataError
from archsim.regress import check_cycles, load_golden

GOLDEN = Path(__file__).resolve().parent / "golden"
SHIPPED = [(chip, wl) for chip in ("pcm_hybrid", "digital_fp32", "hermes")
           for wl in ("digits_cnn", "resnet32_cifar10")]


@pytest.mark.parametrize("chip,workload", SHIPPED)
def test_shipped_golden_cycle_counts(chip, workload):
    check_cycles(chip, workload, GOLDEN / f"{chip}__{workload}.json").assert_ok()


@pytest.fixture
def golden_copy(tmp_path):
    path = tmp_path / "golden.json"
    path.write_text((GOLDEN / "pcm_hybrid__digits_cnn.json").read_text())
    return path


def test_adc_change_fails_and_names_the_moved_layers(golden_copy, capsys):
    code = main(["regress", "pcm_hybrid", "digits_cnn", "--golden", str(golden_copy),
                 "--set", "chip.tiles.adc.conversion_ns=4.0"])
    out = capsys.readouterr().out
    assert code == 1
    assert "chip config differs" in out
    result = check_cycles("pcm_hybrid", "digits_cnn", golden_copy,
                          overrides={"chip.tiles.adc.conversion_ns": 4.0})
    # the analog layers moved; the digital stem (first layer, starts at 0) did not change its start
    assert {"conv2", "conv3"} <= set(result.moved_layers)
    for change in result.changes:
        if change.scope == "conv1":
            assert change.quantity != "start_cycle"
    assert any(c.scope == "total" and c.quantity == "latency_cycles" for c in result.changes)
    # reverting passes again
    assert main(["regress", "pcm_hybrid", "digits_cnn", "--golden", str(golden_copy)]) == 0


def test_update_then_regress_passes(golden_copy, capsys):
    args = ["regress", "pcm_hybrid", "digits_cnn", "--golden", str(golden_copy), "--set",
            "chip.tiles.adc.conversion_ns=4.0"]
    assert main(args + ["--update"]) == 0
    out = capsys.readouterr().out
    assert "latency_cycles" in out and "updated" in out
    assert main(args) == 0
    assert load_golden(golden_copy)["totals"]["latency_cycles"] > 0


def test_tolerance_accepts_small_moves(golden_copy):
    golden = json.loads(golden_copy.read_text())
    golden["totals"]["latency_cycles"] = int(golden["totals"]["latency_cycles"] * 1.005)
    golden_copy.write_text(json.dumps(golden))
    assert not check_cycles("pcm_hybrid", "digits_cnn", golden_copy).ok
    assert check_cycles("pcm_hybrid", "digits_cnn", golden_copy, tolerance=0.01).ok


@pytest.mark.parametrize("damage", ["truncate", "not-json", "wrong-format", "missing-layers",
                                    "string-cycles"])
def test_broken_golden_file_exits_2(golden_copy, capsys, damage):
    text = golden_copy.read_text()
    data = json.loads(text)
    if damage == "truncate":
        golden_copy.write_text(text[: len(text) // 2])
    elif damage == "not-json":
        golden_copy.write_text("cycles: 12\n")
    elif damage == "wrong-format":
        data["format"] = "something-else"
        golden_copy.write_text(json.dumps(data))
    elif damage == "missing-layers":
        del data["layers"]
        golden_copy.write_text(json.dumps(data))
    else:
        first = next(iter(data["layers"]))
        data["layers"][first]["end_cycle"] = "12"
        golden_copy.write_text(json.dumps(data))
    code = main(["regress", "pcm_hybrid", "digits_cnn", "--golden", str(golden_copy)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and str(golden_copy) in err and "Traceback" not in err


def test_missing_golden_file_is_an_error_not_a_pass(tmp_path):
    with pytest.raises(DataError, match="not found"):
        check_cycles("pcm_hybrid", "digits_cnn", tmp_path / "none.json")


def test_update_creates_a_new_golden_file(tmp_path):
    path = tmp_path / "new.json"
    result = check_cycles("pcm_hybrid", "digits_cnn", path, update=True)
    assert result.ok and path.exists()
    assert check_cycles("pcm_hybrid", "digits_cnn", path).ok
