"""Grouped and depthwise convs on arrays (packing, utilization, RESET devices, the analog product,
timing) and a MobileNet-style ONNX network end to end: trained here by archsim's own trainer on
the digits, then `archsim run` on the hybrid chip (accuracy vs time, timing, energy, area)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import archsim
from archsim import functional as F
from archsim.cli import main
from archsim.config import load_chip
from archsim.datasets import load_digits_split
from archsim.mapping import map_network
from archsim.network import INPUT, Layer, Network, forward, init_params
from archsim.timing import digital_layer_cycles, simulate_timing, systolic_cycles
from archsim.training import TrainConfig, evaluate_fp32, train
from archsim.workloads import save_weights
from onnx_models import mobilenet, save


def chip(policy="all-analog", **overrides):
    """The default chip with one copy per layer (the grouped-conv mapping is what is tested)."""
    return load_chip("pcm_hybrid", {"mapping.policy": policy, "mapping.replication": "none",
                                    **overrides})


def depthwise_net(channels=144, hw=4):
    return Network("dw", (hw, hw, channels), (
        Layer("dw", "conv2d", (INPUT,), out_channels=channels, kernel=3, padding=1,
              groups=channels),), 10)


def grouped_big_net():
    """2 groups of 64 -> 300 channels, 3x3: each group (576 x 300) is larger than one array."""
    return Network("g", (3, 3, 128), (
        Layer("g", "conv2d", (INPUT,), out_channels=600, kernel=3, padding=1, groups=2),), 10)


# ------------------------------------------------------------------------------------------
# Mapping
# ------------------------------------------------------------------------------------------

def test_depthwise_groups_are_packed_along_the_diagonal():
    lm = map_network(chip(), depthwise_net()).layer("dw")
    # 9 x 1 per group; min(512 // 9, 256 // 1) = 56 groups fit an array; 144 -> 3 runs of 48
    assert (lm.k, lm.n, lm.groups, lm.row_blocks, lm.col_blocks) == (1296, 144, 144, 1, 3)
    assert [(a.row_start, a.row_stop, a.col_start, a.col_stop) for a in lm.arrays] == [
        (0, 432, 0, 48), (432, 864, 48, 96), (864, 1296, 96, 144)]
    # devices holding weights / devices of the arrays used (2 devices per weight)
    assert lm.utilization == pytest.approx(1296 * 2 / (3 * 512 * 512))
    assert lm.macs == 9 * 144 * 16 and lm.mvms == 16


def test_groups_larger_than_an_array_are_split_within_their_block():
    lm = map_network(chip(), grouped_big_net()).layer("g")
    assert (lm.k, lm.n, lm.groups) == (1152, 600, 2)
    assert (lm.row_blocks, lm.col_blocks, len(lm.arrays)) == (2, 4, 8)
    cover = np.zeros((1152, 600), int)
    for a in lm.arrays:
        g = a.row_start // 576
        assert a.row_stop <= 576 * (g + 1) and 300 * g <= a.col_start < a.col_stop <= 300 * (g + 1)
        cover[a.row_start:a.row_stop, a.col_start:a.col_stop] += 1
    mask = np.kron(np.eye(2, dtype=bool), np.ones((576, 300), bool))
    assert (cover[mask] == 1).all() and not cover[~mask].any()
    assert lm.utilization == pytest.approx(2 * 576 * 300 * 2 / (8 * 512 * 512))


# ------------------------------------------------------------------------------------------
# Functional: the analog product of grouped layers
# ------------------------------------------------------------------------------------------

def general_conv_net():
    """Rectangular kernel, two strides, asymmetric pads, dilation, groups: the numpy patch path."""
    return Network("gen", (7, 6, 4), (
        Layer("c", "conv2d", (INPUT,), out_channels=6, kernel=(3, 2), stride=(2, 1),
              padding=(1, 0, 2, 1), dilation=(1, 2), groups=2, bias=True),), 10)


@pytest.mark.parametrize("make", [depthwise_net, grouped_big_net, general_conv_net],
                         ids=["depthwise", "split", "general"])
def test_grouped_ideal_unlimited_equals_fp32(make):
    net = make()
    params = init_params(net, np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((2,) + net.input_shape).astype(np.float32)
    mp = map_network(chip(**{"chip.device.model": "ideal"}), net)
    pc = F.program_chip(mp, params, np.random.default_rng(0), precision=F.UNLIMITED)
    out = F.analog_forward(pc.at(25.0, np.random.default_rng(0)).read(None), x)
    np.testing.assert_allclose(out, forward(net, params, x), rtol=1e-5, atol=1e-5)


def test_unused_devices_stay_reset_and_used_ones_are_noisy():
    net = depthwise_net(channels=8, hw=3)
    params = init_params(net, np.random.default_rng(0))
    mp = map_network(chip(), net)
    pl = F.program_chip(mp, params, np.random.default_rng(0)).layers["dw"]
    mask = net.layer("dw").weight_mask(72)
    for g in (pl.g_prog_pos, pl.g_prog_neg):
        assert not g[:, ~mask].any()                 # RESET: exactly 0, no programming noise
    ideal = F.program_chip(map_network(chip(**{"chip.device.model": "ideal"}), net), params,
                           np.random.default_rng(0)).layers["dw"]
    noise = (pl.g_prog_pos - pl.g_prog_neg)[0] - (ideal.g_prog_pos - ideal.g_prog_neg)[0]
    assert np.count_nonzero(noise[mask]) == mask.sum()          # every weight got its noise
    assert 0.1 < noise[mask].std() < 2.0                          # uS: the PCM sigma, about 0.3-1
    state = F.program_chip(mp, params, np.random.default_rng(0)).at(86400.0,
                                                                     np.random.default_rng(1))
    read = state.read(np.random.default_rng(2))
    assert not read.layers["dw"].wn[~mask].any()     # and stay 0 through drift and read noise


# ------------------------------------------------------------------------------------------
# Timing: each array's real rows and columns
# ------------------------------------------------------------------------------------------

def test_analog_depthwise_charges_each_arrays_rows_and_columns():
    mp = map_network(chip(), depthwise_net())
    lt = simulate_timing(mp).layer("dw")
    m = 16                                                # output pixels
    steps = mp.chip.chip.tiles.dac.phases
    assert lt.actions["pcm_array.mvm"] == 3 * m
    assert lt.actions["dac.drive"] == 1296 * m            # 3 x 432 rows driven
    assert lt.actions["adc.conversion"] == 144 * m * steps
    assert "accumulator.add" not in lt.actions            # whole groups: no partial sums


def test_digital_grouped_conv_runs_its_groups_as_separate_gemms():
    cfg = chip("all-digital")
    s = cfg.chip.digital.systolic
    # 4 groups of (m=4) x 9 x 1 on a 32 x 32 weight-stationary array: one fold each
    total, _, nbytes = digital_layer_cycles(cfg, 4, 36, 4, groups=4)
    assert total == 4 * (2 * s.rows + s.cols + 4 - 2)
    # the block-diagonal matrix as one dense GEMM would take 2 folds (K = 36 > 32 rows)
    assert systolic_cycles(4, 36, 4, s.rows, s.cols, s.dataflow) == 2 * (2 * s.rows + s.cols + 2)
    net = depthwise_net(channels=4, hw=2)
    lt = simulate_timing(map_network(cfg, net)).layer("dw")
    assert lt.actions["digital_mac.mac"] == 9 * 4 * 4     # the real MACs
    assert lt.busy_cycles == total


# ------------------------------------------------------------------------------------------
# MobileNet end to end
# ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The MobileNet as ONNX, its weights trained by archsim (all layer kinds' backward, the
    depthwise convs included), and a workload YAML naming both."""
    folder = tmp_path_factory.mktemp("mobilenet")
    path = save(mobilenet(), folder / "mobilenet.onnx")
    net, params = archsim.import_onnx(path)
    train_set = load_digits_split("train", (0.3,), (0.4,))
    trained, history = train(net, params, train_set, TrainConfig(
        epochs=6, lr=0.05, batch_size=32, noise_eta=0.02, seed=0), progress=False)
    save_weights(trained, folder / "mobilenet_digits.npz")
    (folder / "mobilenet.yaml").write_text(
        "workload:\n  name: mobilenet_digits\n  network: mobilenet.onnx\n"
        "  weights: mobilenet_digits.npz\n"
        "  dataset: {name: digits, mean: [0.3], std: [0.4]}\n")
    return folder, net, trained, history


def test_mobilenet_trains_on_the_digits(trained):
    _, net, params, history = trained
    assert history[-1].loss < history[0].loss
    assert evaluate_fp32(net, params, load_digits_split("test", (0.3,), (0.4,))) > 0.85


def test_mobilenet_mapping_on_the_hybrid_chip(trained):
    folder, net, _, _ = trained
    mp = archsim.load_mapping("pcm_hybrid", str(folder / "mobilenet.yaml"),
                              overrides={"mapping.replication": "none"})
    assert [lm.name for lm in mp.digital_layers] == ["stem", "classifier"]
    dw = mp.layer("b1_dw")
    assert (dw.k, dw.n, dw.groups, len(dw.arrays)) == (144, 16, 16, 1)
    assert (dw.arrays[0].rows_used, dw.arrays[0].weight_cols_used) == (144, 16)
    assert dw.utilization == pytest.approx(9 * 16 * 2 / (512 * 512))
    assert dw.batchnorm == "b1_dw_bn"
    assert mp.totals()["adabs_layers"] == len(mp.analog_layers) == 7


def test_mobilenet_ideal_chip_keeps_fp32_accuracy(trained):
    _, net, params, _ = trained
    test = load_digits_split("test", (0.3,), (0.4,))
    mp = map_network(chip("hybrid", **{"chip.device.model": "ideal"}), net)
    res = F.evaluate_accuracy([mp], params, test, times_s=(25.0,), seeds=1,
                              compensations=("none",), progress=False, precision=F.UNLIMITED)
    assert res.series[0].mean == (res.fp32,)


def test_mobilenet_archsim_run_end_to_end(trained, tmp_path, capsys):
    folder, net, params, _ = trained
    out = tmp_path / "out"
    rc = main(["run", "pcm_hybrid", str(folder / "mobilenet.yaml"), "--seeds", "1", "--times",
               "25s,1d", "--test-images", "120", "--calib-images", "100", "--inferences", "2",
               "--quiet", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "b1_dw" in text
    report = json.loads((out / "report.json").read_text())
    acc = report["accuracy"]
    assert acc["fp32"] > 0.85 and acc["images"] == 120 and acc["times_s"] == [25.0, 86400.0]
    assert [s["compensation"] for s in acc["series"]] == ["none", "gdc", "gdc+adabs"]
    none, gdc, adabs = (s["mean"] for s in acc["series"])
    # drift without compensation costs most of the accuracy after a day; GDC recovers part of
    # it, AdaBS (statistics re-estimated for all 7 analog layers) more. (Measured: 9 / 21 / 54%
    # at 1 day, AdaBS 65% at 25 s: the depthwise layers' outputs sum 9 products, so the default
    # ADC output noise of 0.06 weighs on them; with output noise 0, GDC keeps 78% at 1 day.)
    assert none[1] < gdc[1] <= adabs[1] and adabs[0] > 0.55 and adabs[1] > 0.4
    assert report["timing"]["latency_cycles"] > 0
    assert report["summary"]["energy_per_inference_uj"] > 0 and report["summary"]["area_mm2"] > 0
    layers = {row["name"]: row for row in report["timing"]["layers"]}
    assert layers["b1_dw"]["placement"] == "analog" and layers["b1_add"]["placement"] == "vector"
    assert layers["stem_relu6"]["placement"] == "fused"
    assert (out / "layers.csv").read_text().count("b2_dw") >= 1


def test_overrides_use_onnx_node_names_and_digital_grouped_layers_compute(trained):
    """mapping.overrides names layers as Netron shows them; a depthwise conv placed digital
    multiplies its diagonal blocks only, with the same result as FP32."""
    _, net, params, _ = trained
    cfg = load_chip("pcm_hybrid", {"mapping.overrides": {"b1_dw": "digital"},
                                   "chip.device.model": "ideal"})
    mp = map_network(cfg, net)
    assert mp.placement("b1_dw") == "digital" and mp.placement("b2_dw") == "analog"
    x = load_digits_split("test", (0.3,), (0.4,)).normalized(slice(0, 16))
    pc = F.program_chip(mp, params, np.random.default_rng(0), precision=F.UNLIMITED)
    np.testing.assert_allclose(F.analog_forward(pc.at(25.0, np.random.default_rng(0)).read(None), x),
                               forward(net, params, x), rtol=1e-4, atol=1e-4)
