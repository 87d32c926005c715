"""Weight replication, packing and pipeline balancing (issue 15): the mapping, closed-form timing,
the functional model's copies, the report."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from archsim import functional as F
from archsim.cli import main
from archsim.config import load_chip
from archsim.errors import ConfigError, MappingError
from archsim.mapping import copy_columns, copy_key, map_network
from archsim.network import INPUT, Layer, Network, Workspace, digits_cnn, forward, init_params, \
    resnet_cifar
from archsim.report import format_mapping, replication_table, terminal_report
from archsim.rng import Streams
from archsim.timing import mvm_stages, simulate_timing

# Transfers of up to 1024 B take one cycle (one hop: one more), so inputs never set the pace
FAST = {"chip.interconnect.bytes_per_cycle": 1024, "chip.interconnect.hop_latency_cycles": 1}


def chip(**overrides):
    """The default chip, all layers analog, one copy each and no packing unless the test asks."""
    return load_chip("pcm_hybrid", overrides={"mapping.policy": "all-analog",
                                              "mapping.replication": "none",
                                              "mapping.packing": "none", **overrides})


def conv_net(rows=2, width=12, cin=16, cout=16, kernel=3):
    """One conv of ``rows`` output rows of ``width`` pixels (K = cin x kernel^2)."""
    return Network("one", (rows, width, cin),
                   (Layer("a", "conv2d", (INPUT,), out_channels=cout, kernel=kernel,
                          padding=kernel // 2),), 10)


# ------------------------------------------------------------------------------------------
# Mapping
# ------------------------------------------------------------------------------------------

def test_copies_take_contiguous_near_equal_shares_of_every_row():
    assert copy_columns(32, 6) == ((0, 6), (6, 12), (12, 17), (17, 22), (22, 27), (27, 32))
    assert copy_columns(4, 3) == ((0, 2), (2, 3), (3, 4))
    assert copy_columns(12, 1) == ((0, 12),)
    for width in range(1, 40):
        for copies in range(1, width + 1):
            cols = copy_columns(width, copies)
            assert cols[0][0] == 0 and cols[-1][1] == width
            assert all(a[1] == b[0] for a, b in zip(cols, cols[1:]))
            assert max(b - a for a, b in cols) == -(-width // copies)
            assert min(b - a for a, b in cols) >= 1


def test_copies_on_their_own_arrays_or_packed_along_one_diagonal():
    # K = 144, N = 16: three copies fit one 512-row array (3 x 144 = 432 rows, 3 x 16 columns)
    spread = map_network(chip(**{"mapping.replication": {"a": 3}}), conv_net()).layer("a")
    assert (spread.copies, spread.array_count, len(spread.arrays)) == (3, 3, 3)
    assert [(b.copy, b.index, b.tile, b.array_row) for b in spread.arrays] == \
        [(0, 0, 0, 0), (1, 1, 1, 0), (2, 2, 2, 0)]
    packed = map_network(chip(**{"mapping.replication": {"a": 3}, "mapping.packing": "copies"}),
                         conv_net()).layer("a")
    assert (packed.copies, packed.array_count, len(packed.arrays)) == (3, 1, 3)
    assert [(b.copy, b.index, b.array_row, b.array_col) for b in packed.arrays] == \
        [(0, 0, 0, 0), (1, 0, 144, 16), (2, 0, 288, 32)]
    assert packed.utilization == pytest.approx(3 * 144 * 16 * 2 / (512 * 512))
    assert spread.utilization == pytest.approx(144 * 16 * 2 / (512 * 512))
    # 2 rows x 12 pixels; each copy 4 pixels per row; packed: 4 array MVMs per row in all
    assert packed.copy_cols == ((0, 4), (4, 8), (8, 12))
    assert (spread.array_mvms, packed.array_mvms) == (24, 8)
    # energy: a packed MVM reads 3 blocks, so the devices read per inference are the same
    assert packed.read_utilization * packed.array_mvms == \
        pytest.approx(spread.read_utilization * spread.array_mvms)
    # every copy covers the weight matrix exactly once
    for lm in (spread, packed):
        for c in range(lm.copies):
            cover = np.zeros((lm.k, lm.n), int)
            for b in lm.blocks_of(c):
                cover[b.row_start:b.row_stop, b.col_start:b.col_stop] += 1
            assert (cover == 1).all()


def test_copies_per_array_are_limited_by_rows_or_by_weight_columns():
    # K = 16 x 1 x 1 = 16 rows, N = 64 weight columns of 256: columns allow 4 per array
    m = map_network(chip(**{"mapping.replication": {"a": 5}, "mapping.packing": "copies"}),
                    conv_net(width=8, cout=64, kernel=1))
    lm = m.layer("a")
    assert lm.array_count == 2 and m.arrays_needed == 2
    assert [len(b) for b in lm.on_arrays().values()] == [4, 1]
    # packing: none gives each copy its own array
    assert map_network(chip(**{"mapping.replication": {"a": 5}}),
                       conv_net(width=8, cout=64, kernel=1)).arrays_needed == 5


def test_auto_balances_resnet32_on_the_default_chip():
    m = map_network(load_chip("pcm_hybrid"), resnet_cifar(32))
    copies = {lm.name: (lm.copies, lm.array_count) for lm in m.analog_layers}
    # stage 1 (144x16, 32x32 pixels): 6 copies, 3 per array; stage 2: 2 copies (the 144x32
    # first conv packs both in one array); stage 3 (8x8 pixels) keeps one
    assert all(copies[f"layer1.{b}.conv{c}"] == (6, 2) for b in range(5) for c in (1, 2))
    assert copies["layer2.0.conv1"] == (2, 1)
    assert all(copies[f"layer2.{b}.conv2"] == (2, 2) for b in range(5))
    assert all(copies[f"layer3.{b}.conv2"] == (1, 2) for b in range(5))
    plan = m.plan
    assert (plan.mode, plan.packing, plan.arrays_one_copy, plan.arrays) == ("auto", "copies", 39, 58)
    # one copy: 32 rows x 32 MVMs x 127 cycles; balanced: 32 rows x ceil(32 / 6) = 6 MVMs
    assert (plan.interval_one_copy_cycles, plan.interval_cycles) == (32 * 32 * 127, 32 * 6 * 127)
    assert plan.bottleneck_one_copy == plan.bottleneck == "layer1.0.conv1"
    # 6 arrays left: a third array for 6 of the 10 stage-1 layers would not cut the interval
    assert "would need 1 more array(s) for 7 copies, 0 left" in plan.stop
    assert "the last 6 copies added did not lower the interval and were dropped" in plan.stop
    # the timing run agrees with the planner's closed form
    res = simulate_timing(m, 4)
    assert res.interval_cycles == 24_384
    # array MVMs per inference: stage 1 32 x (6 + 5), stage 2 16 x 8 (packed) and 9 x 16 x 16,
    # stage 3 64 + 9 x 2 x 64; a packed MVM reads several blocks: the same array energy
    assert res.actions["pcm_array.mvm"] == 4 * (10 * 32 * 11 + 16 * 8 + 9 * 16 * 16 + 64
                                                + 9 * 2 * 64)


def test_auto_on_the_one_copy_arrays_packs_copies_into_free_rows():
    # 39 tiles: no spare array, but a stage-1 array has rows for 2 more copies: 3 pixels per MVM
    m = map_network(load_chip("pcm_hybrid", overrides={"chip.tiles.count": 39}), resnet_cifar(32))
    assert m.arrays_needed == 39
    assert m.layer("layer1.0.conv1").copies == 3
    assert m.plan.interval_cycles == 32 * 11 * 127
    # without packing there is nothing to gain
    bare = map_network(load_chip("pcm_hybrid", overrides={"chip.tiles.count": 39,
                                                         "mapping.packing": "none"}),
                       resnet_cifar(32))
    assert bare.plan.interval_cycles == bare.plan.interval_one_copy_cycles == 32 * 32 * 127
    assert sum(lm.copies for lm in bare.analog_layers) == 30


def test_auto_stops_when_the_digital_units_set_the_interval():
    # the first (digital) conv on 16x16 pixels outweighs the analog 1x1 conv after it
    net = Network("dig", (16, 16, 64), (
        Layer("a", "conv2d", (INPUT,), out_channels=64, kernel=3, padding=1),
        Layer("b", "conv2d", ("a",), out_channels=16, kernel=1),
        Layer("gap", "globalavgpool", ("b",)),
        Layer("fc", "linear", ("gap",), out_channels=10)), 10)
    m = map_network(load_chip("pcm_hybrid"), net)
    assert [lm.name for lm in m.analog_layers] == ["b"]
    assert m.plan.stop.startswith("the digital units set the interval")
    assert m.plan.bottleneck == "the digital units"
    assert m.layer("b").copies > 1


def test_explicit_replication_errors_name_the_yaml_path(tmp_path):
    net = conv_net()
    with pytest.raises(MappingError, match=r"mapping\.replication\.b: network one has no matrix "
                                           r"layer 'b'"):
        map_network(chip(**{"mapping.replication": {"b": 2}}), net)
    with pytest.raises(MappingError, match="13 copies, but a has 12 output pixel"):
        map_network(chip(**{"mapping.replication": {"a": 13}}), net)
    with pytest.raises(MappingError, match="runs digital; copies are for analog layers"):
        map_network(chip(**{"mapping.replication": {"a": 2}, "mapping.policy": "all-digital"}),
                    net)
    # --set mistakes name the argument as typed; file mistakes the file and the YAML path
    with pytest.raises(ConfigError, match=r"^--set mapping\.replication=always: expected none \| "
                                          r"auto"):
        load_chip("pcm_hybrid", overrides={"mapping.replication": "always"})
    with pytest.raises(ConfigError, match=r"^--set mapping\.replication=.*: expected a number of "
                                          r"copies >= 1, got 0"):
        load_chip("pcm_hybrid", overrides={"mapping.replication": {"a": 0}})
    with pytest.raises(ConfigError, match=r"^--set mapping\.packing=all: expected one of none \| "
                                          r"copies"):
        load_chip("pcm_hybrid", overrides={"mapping.packing": "all"})
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: pcm_hybrid.yaml\nmapping:\n  replication: {a: 0}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:3: mapping\.replication\.a: expected a number "
                                          r"of copies"):
        load_chip(bad)


def test_a_network_larger_than_the_chip_says_arrays_and_tiles_with_and_without_copies(capsys):
    net = resnet_cifar(32)
    ask = {"mapping.replication": {"layer1.0.conv1": 4, "layer2.1.conv1": 3}}
    with pytest.raises(MappingError) as e:
        map_network(load_chip("pcm_hybrid", overrides={"chip.tiles.count": 40, **ask}), net)
    msg = str(e.value)
    # layer1.0.conv1: 4 copies, packed 3 + 1 -> one more array; layer2.1.conv1: 2 more arrays
    assert "needs 42 arrays (512x512) with mapping.replication, 39 without, but the chip has 40 " \
           "(40 tiles x 1); 42 tiles hold them (--set chip.tiles.count=42), 39 without" in msg
    assert map_network(load_chip("pcm_hybrid", overrides={"chip.tiles.count": 42, **ask}),
                       net).arrays_needed == 42
    # through the CLI: one line, exit 2; with the tiles it names, it runs
    rc = main(["map", "pcm_hybrid", "resnet32_cifar10", "--set", "chip.tiles.count=20"])
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert "needs 39 arrays (512x512) but the chip has 20 (20 tiles x 1); 39 tiles hold them " \
           "(--set chip.tiles.count=39" in err
    assert main(["map", "pcm_hybrid", "resnet32_cifar10", "--set", "chip.tiles.count=39",
                 "--set", "mapping.replication={layer2.0.conv1: 3}"]) == 0
    assert "layer2.0.conv1" in capsys.readouterr().out


def layer_chain():
    """a: 3x3 conv 16 -> 16 on 8x8 (64 MVMs, K = 144); b: 1x1 stride 2 (16 MVMs, K = 16);
    c: 1x1 (16 MVMs, K = 16): b and c together work less than a alone."""
    return Network("chain", (8, 8, 16), (
        Layer("a", "conv2d", (INPUT,), out_channels=16, kernel=3, padding=1),
        Layer("b", "conv2d", ("a",), out_channels=16, kernel=1, stride=2),
        Layer("c", "conv2d", ("b",), out_channels=16, kernel=1)), 10)


def test_layer_packing_shares_arrays_within_the_interval():
    m = map_network(chip(**{"mapping.packing": "layers"}), layer_chain())
    assert m.arrays_needed == 2 and m.plan.arrays_saved_by_layer_packing == 1
    b, c = m.layer("b"), m.layer("c")
    assert b.array_indices == c.array_indices == (1,)
    assert (c.arrays[0].array_row, c.arrays[0].array_col) == (16, 16)
    d = m.to_dict()
    by = {lm["name"]: lm for lm in d["layers"]}
    assert by["b"]["shares_arrays_with"] == ["c"] and by["b"]["blocks_per_array"] == 2
    assert d["totals"]["shared_arrays"] == 1
    assert "arrays shared between layers (they take turns): b with c; c with b" in \
        format_mapping(m)
    # on one tile all three share the array: the interval no longer bounds the packing
    one = map_network(chip(**{"mapping.packing": "layers", "chip.tiles.count": 1}), layer_chain())
    assert one.arrays_needed == 1
    assert [(a.layer, a.array_row) for a in one.arrays] == [("a", 0), ("b", 144), ("c", 160)]


# ------------------------------------------------------------------------------------------
# Timing: closed forms
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("copies", [1, 2, 3])
def test_copies_divide_a_layers_interval(copies):
    # a 1x1 conv (K = 64, N = 32) on 2 rows of 12 pixels, each copy on its own tile: a row takes
    # 12 / copies MVMs of the array's interval, the steady state one inference every 2 rows
    cfg = chip(**FAST, **{"mapping.replication": {"a": copies}})
    net = conv_net(rows=2, width=12, cin=64, cout=32, kernel=1)
    st = mvm_stages(cfg, 64, 32)
    assert st.interval == 127
    res = simulate_timing(map_network(cfg, net), inferences=3)
    assert res.interval_cycles == 2 * (12 // copies) * 127
    a = res.layer("a")
    assert a.busy_cycles == 2 * (12 // copies) * 127
    assert a.tiles == tuple(range(copies))
    # per-pixel actions do not depend on the copies; array MVMs are per copy
    assert a.actions["dac.drive"] == 24 * 64 and a.actions["adc.conversion"] == 24 * 32
    assert a.actions["pcm_array.mvm"] == 24


def test_three_packed_copies_compute_three_pixels_per_mvm():
    # K = 144, N = 16, three copies on one array: an MVM drives 432 rows and converts 48 columns
    # (load ceil(432/64) = 7, integrate 127, convert ceil(48/64) x 1, affine 1, write 1)
    cfg = chip(**FAST, **{"mapping.replication": {"a": 3}, "mapping.packing": "copies"})
    m = map_network(cfg, conv_net(rows=2, width=12))
    assert m.arrays_needed == 1
    st = mvm_stages(cfg, 432, 48)
    assert (st.load, st.integrate, st.convert, st.interval) == (7, 127, 1, 127)
    res = simulate_timing(m, inferences=3)
    a = res.layer("a")
    assert a.actions["pcm_array.mvm"] == 2 * 4             # 24 pixels, 3 per MVM
    assert a.actions["dac.drive"] == 24 * 144 and a.actions["adc.conversion"] == 24 * 16
    assert a.busy_cycles == 2 * 4 * 127
    assert res.interval_cycles == 2 * 4 * 127
    one = simulate_timing(map_network(chip(**FAST), conv_net(rows=2, width=12)), inferences=3)
    assert one.interval_cycles == 3 * res.interval_cycles


def test_a_packed_pair_of_layers_serializes_when_both_are_ready():
    # a and b (1x1, K = N = 16) both read the input row and share one array: b waits for a
    net = Network("pair", (1, 8, 16), (
        Layer("a", "conv2d", (INPUT,), out_channels=16, kernel=1),
        Layer("b", "conv2d", (INPUT,), out_channels=16, kernel=1),
        Layer("add", "add", ("a", "b"))), 10)
    cfg = chip(**FAST, **{"mapping.packing": "layers", "chip.tiles.count": 1})
    m = map_network(cfg, net)
    assert m.layer("a").array_indices == m.layer("b").array_indices == (0,)
    st = mvm_stages(cfg, 16, 16)
    assert (st.interval, st.cycles(8)) == (127, 131 + 7 * 127)
    res = simulate_timing(m)
    a, b = res.layer("a"), res.layer("b")
    # the input row (8 x 16 x 4 B) goes to tile 0 twice, one cycle each plus a hop: a's at 2,
    # b's at 3; a holds the tile for its 8 MVMs [2, 1018), b then [1018, 2034)
    assert (a.start_cycle, b.start_cycle) == (2, 2 + 8 * 127)
    assert b.end_cycle == 2 + 2 * 8 * 127 + (st.cycles(8) - 8 * 127)
    assert a.busy_cycles == b.busy_cycles == 8 * 127
    # on two arrays of their own (two tiles) they run side by side: b's input row is sent
    # [1, 2) and crosses 2 hops to tile 1
    apart = simulate_timing(map_network(chip(**FAST, **{"chip.tiles.count": 2}), net))
    assert (apart.layer("a").start_cycle, apart.layer("b").start_cycle) == (2, 4)


# ------------------------------------------------------------------------------------------
# Functional model: each copy is programmed and read on its own
# ------------------------------------------------------------------------------------------

def _params(net, seed=0):
    return init_params(net, np.random.default_rng(seed))


def _programmed(**overrides):
    net = conv_net(rows=4, width=6, cin=16, cout=8)
    cfg = chip(**{"mapping.replication": {"a": 2}, "chip.tiles.adc.output_noise": 0.0,
                  **overrides})
    mp = map_network(cfg, net)
    params = _params(net)
    pc = F.program_chip(mp, params, Streams(1))
    return net, params, mp, pc


def test_two_copies_differ_on_a_noisy_device_and_agree_on_an_ideal_one():
    x = np.random.default_rng(2).normal(size=(3, 4, 6, 16)).astype(np.float32)
    for model, same in (("pcm", False), ("ideal", True)):
        net, params, mp, pc = _programmed(**{"chip.device.model": model})
        assert set(pc.layers) == {"a", copy_key("a", 1)}
        read = pc.at(86400.0, Streams(3)).read(np.random.default_rng(4))
        cols = net.layer("a").matrix_input(x, Workspace())
        outs = [F.analog_matmul(read.layers[key], cols, pc.converters, gdc=True,
                                workspace=Workspace()) for key in ("a", copy_key("a", 1))]
        assert np.array_equal(outs[0], outs[1]) == same, model
        if not same:
            assert not np.array_equal(pc.layers["a"].g_prog_pos,
                                      pc.layers[copy_key("a", 1)].g_prog_pos)


def test_each_output_pixel_is_computed_on_its_copy():
    net, params, mp, pc = _programmed()
    lm = mp.layer("a")
    assert lm.copy_cols == ((0, 3), (3, 6))
    x = np.random.default_rng(2).normal(size=(3, 4, 6, 16)).astype(np.float32)
    read = pc.at(86400.0, Streams(3)).read(np.random.default_rng(4))
    # silence copy 1: the pixels of columns 3..5 read zero, those of columns 0..2 do not
    quiet = dataclasses.replace(read.layers[copy_key("a", 1)],
                                weights=np.zeros_like(read.layers["a"].weights))
    out = F.analog_forward(F.ChipRead(read.state, {**read.layers, copy_key("a", 1): quiet}), x)
    assert out.shape == (3, 4, 6, 8)
    assert (out[:, :, 3:] == 0).all() and (np.abs(out[:, :, :3]) > 0).mean() > 0.9
    # copy 0 of a replicated layer is programmed as the layer without copies
    one = F.program_chip(map_network(chip(**{"chip.tiles.adc.output_noise": 0.0}), net), params,
                         Streams(1))
    np.testing.assert_array_equal(one.layers["a"].g_prog_pos, pc.layers["a"].g_prog_pos)


def test_ideal_unlimited_replicated_chip_computes_fp32():
    net = digits_cnn()
    params = _params(net)
    mp = map_network(load_chip("pcm_hybrid", overrides={"mapping.policy": "all-analog",
                                                       "chip.device.model": "ideal"}), net)
    assert any(lm.copies > 1 for lm in mp.analog_layers)
    pc = F.program_chip(mp, params, Streams(0), precision=F.UNLIMITED)
    x = np.random.default_rng(1).normal(size=(16, 8, 8, 1)).astype(np.float32)
    np.testing.assert_allclose(F.analog_forward(pc.at(86400.0, Streams(2)).read(None), x),
                               forward(net, params, x), rtol=1e-4, atol=1e-4)


def test_gdc_is_per_array_packed_copies_share_one_factor():
    packed = _programmed(**{"mapping.packing": "copies"})[3]
    apart = _programmed()[3]
    for pc, shared in ((packed, True), (apart, False)):
        alphas = pc.at(86400.0, Streams(5)).alphas
        assert np.array_equal(alphas["a"], alphas[copy_key("a", 1)]) == shared
        assert np.all(alphas["a"] > 1)                      # drift lowered the readout


# ------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------

def test_mapping_table_and_run_report_show_copies_and_blocks_per_array():
    m = map_network(load_chip("pcm_hybrid"), resnet_cifar(32))
    text = format_mapping(m)
    row = next(line.split() for line in text.splitlines() if line.startswith("layer1.0.conv1 "))
    # layer kind placement KxN blocks arrays copies blocks/array utilization
    assert row[3:9] == ["144x16", "1x1", "2", "6", "3", "5.3%"]
    total = next(line for line in text.splitlines() if line.startswith("total"))
    assert "58 of 64" in total and " 90 " in total
    assert "replication: auto (pipeline balancing); packing: copies" in text
    report = {"mapping": m.to_dict()}
    table, lines = replication_table(report)
    assert "layer1.0.conv1 .. layer1.4.conv2 (10)" in table and "6 of 32" in table
    assert lines[-1].startswith("58 of 64 arrays on 58 tiles; 21 arrays hold several blocks")
    assert "Replication and packing:" in terminal_report({**report, "chip": {"name": "x"},
                                                          "workload": {"name": "y"}})


def test_accuracy_benchmark_compares_against_the_one_copy_spread():
    """benchmarks/replication_accuracy_resnet32.py: the replicated mean against the spread (std
    and min..max) of the one-copy chips, from hand-made results."""
    import importlib.util
    from conftest import REPO
    spec = importlib.util.spec_from_file_location(
        "replication_accuracy_resnet32", REPO / "benchmarks" / "replication_accuracy_resnet32.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    def acc(per_seed):
        mean = sum(per_seed) / len(per_seed)
        std = (sum((v - mean) ** 2 for v in per_seed) / len(per_seed)) ** 0.5
        return {"times_s": [86400.0], "series": [
            {"compensation": "gdc", "mean": [mean], "std": [std],
             "per_seed": [[v] for v in per_seed]}]}

    rows = script.verdicts({"none": {"accuracy": acc([0.70, 0.72, 0.74])},
                            "auto": {"accuracy": acc([0.725, 0.735, 0.745])}})
    (v,) = rows
    # none: 72% +- 1.63; auto 73.5%: +1.5 points, within the std and within 70..74
    assert v["difference"] == pytest.approx(0.015)
    assert v["none_std"] == pytest.approx(0.0163299, rel=1e-4)
    assert v["within_std"] and v["within_range"]
    (far,) = script.verdicts({"none": {"accuracy": acc([0.70, 0.72, 0.74])},
                              "auto": {"accuracy": acc([0.75, 0.76, 0.77])}})
    assert not far["within_std"] and not far["within_range"]
    assert script.parse_time("1d") == 86400.0 and script.parse_time("1mo") == 2592000.0
