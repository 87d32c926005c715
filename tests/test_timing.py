"""Timing model: closed-form cases computed by hand, HERMES peaks, ResNet-32 golden cycles."""

from __future__ import annotations

import simpy
import pytest

from archsim.config import load_chip
from archsim.errors import ConfigError
from archsim.mapping import map_network
from archsim.network import INPUT, Layer, Network, resnet_cifar
from archsim.timing import (Interconnect, MvmStages, mvm_stages, peak_figures, simulate_timing,
                            systolic_cycles, systolic_sram_bytes)


# The closed forms of this file are those of the one-copy mapping (replication is tested in
# test_replication.py): pcm_hybrid.yaml's replication: auto is turned off here.
ONE_COPY = {"mapping.replication": "none"}


def chip(**overrides):
    return load_chip("pcm_hybrid", overrides={"mapping.policy": "all-analog", **ONE_COPY,
                                              **overrides})


def one_conv(width=4, cin=64, cout=32):
    """One row of ``width`` pixels, a 1x1 conv: one layer, one array, ``width`` MVMs."""
    return Network("one", (1, width, cin),
                   (Layer("a", "conv2d", (INPUT,), out_channels=cout, kernel=1),), 10)


SINGLE = {"chip.tiles.count": 1, "chip.tiles.dac.t_lsb_ns": 2.0, "chip.tiles.adc.conversion_ns": 5.0,
          "chip.tiles.array.read_time_ns": 10.0, "chip.tiles.double_buffered": False}

# Input transfer of the single-tile cases (4 pixels): 4 pixels x 64 channels x 4 bytes (FP32 from the digital
# side) = 1024 B at 32 B/cycle = 32 cycles, plus 1 hop (digital edge router -> tile 0) x 1 cycle.
ARRIVE = 33


@pytest.mark.parametrize("extra, per_mvm, expected", [
    # PWM 8 bit, t_lsb 2 ns: 127 x 2 = 254 cycles; load ceil(64/64)=1, affine ceil(32/64)=1,
    # write 1; ADCs 32 for 32 columns (ratio 1): convert 5 -> 1+254+5+1+1 = 262 per MVM, 4 serial.
    ({"chip.tiles.adc.per_tile": 32}, 262, ARRIVE + 4 * 262),
    # ratio 8 (4 ADCs): convert ceil(32/4) x 5 = 40 -> 297 per MVM
    ({"chip.tiles.adc.per_tile": 4}, 297, ARRIVE + 4 * 297),
    # double buffered: 297 + 3 x max(1, 254, 40, 1, 1)
    ({"chip.tiles.adc.per_tile": 4, "chip.tiles.double_buffered": True}, 297, ARRIVE + 297 + 3 * 254),
    # two phases: integrate + convert repeat: 1 + 2 x (254 + 40) + 2 = 591
    ({"chip.tiles.adc.per_tile": 4, "chip.tiles.dac.phases": 2}, 591, ARRIVE + 4 * 591),
    # bit-serial, 8 bits x (10 ns read + convert 5): 1 + 8 x 15 + 2 = 123
    ({"chip.tiles.adc.per_tile": 32, "chip.tiles.dac.encoding": "bit-serial"}, 123, ARRIVE + 4 * 123),
    # bit-serial, ratio 8: 1 + 8 x (10 + 40) + 2 = 403
    ({"chip.tiles.adc.per_tile": 4, "chip.tiles.dac.encoding": "bit-serial"}, 403, ARRIVE + 4 * 403),
    # bit-serial, ratio 8, double buffered: bit s+1 integrates while bit s converts:
    # 1 + 10 + 40 + 7 x 40 + 2 = 333, then one MVM every max(1, 8 x 10, 8 x 40, 1, 1) = 320
    ({"chip.tiles.adc.per_tile": 4, "chip.tiles.dac.encoding": "bit-serial",
      "chip.tiles.double_buffered": True}, 333, ARRIVE + 333 + 3 * 320),
    # two phases, double buffered: 1 + 254 + 40 + 254 + 2 = 551, interval max(2 x 254, 2 x 40) = 508
    ({"chip.tiles.adc.per_tile": 4, "chip.tiles.dac.phases": 2, "chip.tiles.double_buffered": True},
     551, ARRIVE + 551 + 3 * 508),
])
def test_single_tile_single_layer(extra, per_mvm, expected):
    cfg = chip(**{**SINGLE, **extra})
    assert mvm_stages(cfg, 64, 32).latency == per_mvm
    res = simulate_timing(map_network(cfg, one_conv()))
    assert res.latency_cycles == expected
    assert res.total_cycles == expected
    a = res.layer("a")
    assert (a.start_cycle, a.end_cycle, a.mvms) == (ARRIVE, expected, 4)
    steps = 8 if extra.get("chip.tiles.dac.encoding") == "bit-serial" else \
        extra.get("chip.tiles.dac.phases", 1)
    assert dict(a.actions) == {
        "pcm_array.mvm": 4, "dac.drive": 4 * 64, "adc.conversion": 4 * 32 * steps,
        "affine.op": 4 * 32, "tile_buffer.byte": 4 * (64 + 32), "interconnect.byte_hop": 1024}


def reference_schedule(st: MvmStages, n: int) -> int:
    """n MVMs scheduled op by op (load; integrate, convert per step; affine; write), each op as
    early as its data and its unit allow. Double buffered: a unit takes its next item once it
    has handed the last one on (the array integrates again once the ADC has sampled its charge;
    an input latch is refilled once its vector's last integration is done); otherwise every MVM
    runs alone, op after op."""
    free = dict.fromkeys(("load", "array", "adc", "affine", "write"), 0)
    sampled = 0                    # start of the conversion of the array's last integration
    latch_free = [0, 0]            # two input latches (double buffered)
    end = 0
    for p in range(n):
        if not st.double_buffered:
            end += st.load + st.steps * (st.integrate + st.convert) + st.affine + st.write
            continue
        t = max(free["load"], latch_free[p % 2]) + st.load
        free["load"] = t
        for _ in range(st.steps):
            t_int = max(t if _ == 0 else 0, free["array"], sampled) + st.integrate
            free["array"] = t_int
            c0 = max(t_int, free["adc"])
            sampled = c0
            free["adc"] = c0 + st.convert
            t = free["adc"] if _ == st.steps - 1 else t
        latch_free[p % 2] = free["array"]
        a = max(free["adc"], free["affine"]) + st.affine
        free["affine"] = a
        end = free["write"] = max(a, free["write"]) + st.write
    return end


@pytest.mark.parametrize("db", [False, True])
@pytest.mark.parametrize("load, integrate, convert, steps, affine, write", [
    (1, 127, 1, 1, 1, 1), (3, 48, 77, 1, 1, 4), (1, 254, 40, 2, 1, 1), (1, 10, 40, 8, 1, 1),
    (1, 10, 5, 8, 1, 1), (1, 48, 77, 4, 1, 4), (200, 10, 5, 1, 2, 3), (2, 5, 5, 3, 50, 60)])
@pytest.mark.parametrize("n", [1, 2, 5, 32])
def test_row_time_equals_per_mvm_schedule(db, load, integrate, convert, steps, affine, write, n):
    st = MvmStages(load, integrate, convert, affine, write, steps, db)
    assert st.cycles(n) == reference_schedule(st, n)


def test_simulated_row_equals_per_mvm_schedule():
    # a 32-pixel row on one tile (as a ResNet-32 layer1 row), double buffered, 2 phases
    cfg = chip(**{**SINGLE, "chip.tiles.double_buffered": True, "chip.tiles.dac.phases": 2,
                  "chip.tiles.adc.per_tile": 4})
    a = simulate_timing(map_network(cfg, one_conv(width=32))).layer("a")
    assert a.end_cycle - a.start_cycle == reference_schedule(mvm_stages(cfg, 64, 32), 32)


PIPE = {"chip.tiles.count": 2, "chip.tiles.double_buffered": False,
        "chip.interconnect.bytes_per_cycle": 1024, "chip.interconnect.hop_latency_cycles": 1}


def two_convs():
    return Network("two", (4, 4, 8), (
        Layer("a", "conv2d", (INPUT,), out_channels=8, kernel=3, padding=1),
        Layer("b", "conv2d", ("a",), out_channels=8, kernel=3, padding=1)), 10)


def test_two_layer_pipeline_overlaps():
    # K = 72, N = 8 on 512x512 arrays: load ceil(72/64)=2, integrate 127, convert 1, affine 1,
    # write 1 -> 132 per MVM, 4 per row -> 528. Transfers take 1 cycle (<= 1024 B) + 1 hop.
    # Input rows sent at 0,1,2,3 -> arrive 2,3,4,5. a row r needs input rows <= r+1:
    # a rows: [3,531] [531,1059] [1059,1587] [1587,2115]; their rows arrive at tile 1 2 later:
    # 533, 1061, 1589, 2117. b row r needs a rows <= r+1: b rows start 1061, 1589, 2117, 2645.
    res = simulate_timing(map_network(chip(**PIPE), two_convs()))
    a, b = res.layer("a"), res.layer("b")
    assert (a.start_cycle, a.end_cycle, a.busy_cycles) == (3, 2115, 4 * 528)
    assert (b.start_cycle, b.end_cycle, b.busy_cycles) == (1061, 3173, 4 * 528)
    assert res.latency_cycles == 3173          # vs 2117 + 4 x 528 = 4229 without overlap
    assert res.tile_utilization == pytest.approx((2112 / 3173, 2112 / 3173))
    # a second inference in flight: b is the bottleneck, one inference per 4 x 528 cycles
    res2 = simulate_timing(map_network(chip(**PIPE), two_convs()), inferences=2)
    assert res2.latency_cycles == 3173
    assert res2.total_cycles == 5285
    assert res2.interval_cycles == 2112
    assert res2.throughput_inferences_per_s == pytest.approx(1e9 / 2112)
    assert res2.actions["pcm_array.mvm"] == 2 * 2 * 16


def test_residual_add_waits_for_both_operands():
    net = Network("res", (2, 4, 8), (
        Layer("a", "conv2d", (INPUT,), out_channels=8, kernel=3, padding=1),
        Layer("add", "add", ("a", INPUT))), 10)
    res = simulate_timing(map_network(chip(**PIPE), net))
    # input rows go to a (tile 0) and to the add (at a's output, tile 0) over the same link,
    # alternating: a's rows arrive at 2 and 4, the add's at 3 and 5. a: [4,532] [532,1060];
    # add row r = a row r + ceil(32 values / 64 lanes) = 1 cycle.
    assert (res.layer("a").start_cycle, res.layer("a").end_cycle) == (4, 1060)
    add = res.layer("add")
    assert (add.start_cycle, add.end_cycle, add.busy_cycles) == (532, 1061, 2)
    assert add.actions["accumulator.add"] == 2 * 32
    assert res.latency_cycles == 1061


def test_split_layer_adds_partial_sums():
    # K = 3*3*64 = 576 > 512 rows: two row blocks on tiles 0 and 1, partial sums added on tile 0
    net = Network("split", (1, 2, 64), (
        Layer("a", "conv2d", (INPUT,), out_channels=16, kernel=3, padding=1),), 10)
    res = simulate_timing(map_network(chip(**PIPE), net))
    a = res.layer("a")
    assert a.actions["accumulator.add"] == 2 * 16
    assert a.actions["pcm_array.mvm"] == 2 * 2
    # rows 288 each: load ceil(288/64)=5 + 127 + 1 + 1 + 1 = 135 per MVM, 2 per row = 270;
    # input 2x64x4 B split 1/2 per tile -> 256 B each, 1 cycle, sent one after the other: tile 0
    # [0,1] + 1 hop, tile 1 at (1,0) [1,2] + 2 hops -> the row is there at 4. Partial sums
    # 2 px x 16 B from tile 1 to tile 0: 1 cycle + 1 hop; then the add, ceil(32/64) = 1 cycle.
    assert (a.start_cycle, a.end_cycle) == (4, 4 + 270 + 2 + 1)


@pytest.mark.parametrize("dataflow, expected", [
    ("os", 2 * 5 * (2 * 8 + 4 + 40 - 2)),      # S_R=M=10 -> 2 folds, S_C=N=20 -> 5, T=K=40
    ("ws", 5 * 5 * (2 * 8 + 4 + 10 - 2)),      # S_R=K=40 -> 5, S_C=N=20 -> 5, T=M=10
    ("is", 5 * 3 * (2 * 8 + 4 + 20 - 2)),      # S_R=K=40 -> 5, S_C=M=10 -> 3, T=N=20
])
def test_systolic_cycles_per_dataflow(dataflow, expected):
    assert systolic_cycles(10, 40, 20, 8, 4, dataflow) == expected
    net = Network("gemm", (1, 10, 40), (Layer("g", "conv2d", (INPUT,), out_channels=20, kernel=1),), 10)
    cfg = load_chip("digital_fp32", overrides={
        "chip.digital.units": 1, "chip.digital.systolic": {"rows": 8, "cols": 4, "dataflow": dataflow},
        "chip.digital.sram.bytes_per_cycle": 1e6})
    res = simulate_timing(map_network(cfg, net))
    g = res.layer("g")
    assert (g.start_cycle, g.end_cycle, g.busy_cycles, g.stall_cycles) == (0, expected, expected, 0)
    assert g.actions["digital_mac.mac"] == 10 * 40 * 20
    assert res.latency_cycles == expected


def test_systolic_units_and_sram_stall():
    assert systolic_cycles(10, 40, 20, 8, 4, "ws", units=2) == 13 * 28     # ceil(25 / 2) folds
    # WS words: ifmap 400 x ceil(20/4) + weights 800 + ofmap 200 x ceil(40/8) = 3800 -> 15200 B
    assert systolic_sram_bytes(10, 40, 20, 8, 4, "ws") == 15200
    net = Network("gemm", (1, 10, 40), (Layer("g", "conv2d", (INPUT,), out_channels=20, kernel=1),), 10)
    cfg = load_chip("digital_fp32", overrides={
        "chip.digital.units": 1, "chip.digital.systolic": {"rows": 8, "cols": 4, "dataflow": "ws"},
        "chip.digital.sram.bytes_per_cycle": 4})
    g = simulate_timing(map_network(cfg, net)).layer("g")
    assert (g.end_cycle, g.busy_cycles, g.stall_cycles) == (3800, 3800, 3800 - 700)
    assert g.actions["sram.byte"] == 15200


def test_link_contention_doubles_transfer_time():
    cfg = chip(**{"chip.tiles.count": 4, "chip.interconnect.bytes_per_cycle": 32,
                  "chip.interconnect.hop_latency_cycles": 1})
    done = {}

    def run(senders):
        env = simpy.Environment()
        ic = Interconnect(env, cfg)
        d = ic.digital_node            # (-1, 0) -> tile 1 at (1, 0): 2 hops

        def go(tag):
            yield from ic.transmit(d, 1, 320)
            done[tag] = env.now
        for tag in senders:
            env.process(go(tag))
        env.run()
        return ic
    ic = run(["alone"])
    assert ic.hops(ic.digital_node, 1) == 2
    assert done["alone"] == 320 // 32 + 2
    run(["first", "second"])
    assert done["first"] == 10 + 2
    assert done["second"] == 2 * 10 + 2          # waits for the link: serialization doubles


@pytest.mark.parametrize("phases, published_tops, cycles", [(1, 63.1, 134), (4, 16.1, 509)])
def test_hermes_peak(phases, published_tops, cycles):
    peak = peak_figures(load_chip("hermes", overrides={"chip.tiles.dac.phases": phases}))
    # one-phase: load 4 + integrate 48 + convert 77 + affine 1 + write 4 = 134 cycles at 1 GHz;
    # four-phase: 4 + 4 x (48 + 77) + 5 = 509
    assert peak["mvm_latency_cycles"] == cycles
    assert peak["peak_ops_per_cycle"] == pytest.approx(2 * 256 * 256 * 64 / cycles)
    assert peak["peak_tops"] == pytest.approx(published_tops, rel=0.10)
    assert peak["peak_mvm_per_s"] == pytest.approx(64 / (cycles * 1e-9))


def test_digital_peak():
    peak = peak_figures(load_chip("digital_fp32"))
    assert peak["peak_ops_per_cycle"] == 2 * 4 * 32 * 32
    assert peak["peak_tops"] == pytest.approx(8.192)


# ResNet-32 golden numbers (cycles at 1 GHz). pcm_hybrid's steady state is the layer1 convs:
# 32 rows x 32 pixels x 127-cycle MVM interval (PWM 8 bit at 1 ns/LSB, double buffered).
# digital_fp32's is its one shared cluster, busy 47311 cycles per inference (the sum of its layers'
# systolic cycles). conv1 on pcm_hybrid: WS, 1 fold of 27x16 on 32x32, 64+32+1024-2 = 1118
# compute cycles, SRAM (1024*27 + 432 + 1024*16) * 4 B / 128 B = 1390 -> 272 stall.
GOLDEN = {
    "pcm_hybrid": {"latency": 262863, "latency8": 262920, "interval": 32 * 32 * 127,
                   "total8": 1173256, "conv1": (0, 1390, 1390, 272),
                   "layer3.4.conv2": (254422, 262583)},
    "digital_fp32": {"latency": 47383, "latency8": 47415, "interval": 47306, "total8": 378560,
                     "conv1": (0, 15633, 1118, 0), "digital_unit_busy8": 8 * 47311},
}


@pytest.mark.parametrize("config", ["pcm_hybrid", "digital_fp32"])
def test_resnet32_golden_and_deterministic(config):
    mapping = map_network(load_chip(config, overrides=ONE_COPY), resnet_cifar(32))
    one = simulate_timing(mapping)
    again = simulate_timing(mapping)
    assert one == again
    many = simulate_timing(mapping, inferences=8)
    gold = GOLDEN[config]
    assert one.latency_cycles == gold["latency"]
    # later inferences in flight barely delay the first (oldest-first arbitration)
    assert many.latency_cycles == gold["latency8"]
    assert (many.interval_cycles, many.total_cycles) == (gold["interval"], gold["total8"])
    c1 = one.layer("conv1")
    assert (c1.start_cycle, c1.end_cycle, c1.busy_cycles, c1.stall_cycles) == gold["conv1"]
    if "layer3.4.conv2" in gold:
        last = one.layer("layer3.4.conv2")
        assert (last.start_cycle, last.end_cycle) == gold["layer3.4.conv2"]
    assert many.actions["digital_mac.mac"] == 8 * one.actions["digital_mac.mac"]
    if "digital_unit_busy8" in gold:
        assert many.busy_cycles["digital_unit"] == gold["digital_unit_busy8"]
    assert len(one.layers) == len(mapping.network.layers)
    assert one.to_dict()["latency_cycles"] == gold["latency"]


def test_resnet32_action_counts_pcm_hybrid():
    mapping = map_network(load_chip("pcm_hybrid", overrides=ONE_COPY), resnet_cifar(32))
    res = simulate_timing(mapping)
    # arrays x output pixels: layer1 10 x 1024, layer2 10 x 256, layer3 64 + 9 x 2 x 64
    assert res.actions["pcm_array.mvm"] == 10 * 1024 + 10 * 256 + 64 + 9 * 2 * 64
    # digital: conv1 1024 x 27 x 16 + linear 64 x 10
    assert res.actions["digital_mac.mac"] == 1024 * 27 * 16 + 640
    assert res.actions["adc.conversion"] == sum(
        lm.mvms * sum(a.weight_cols_used for a in lm.arrays) for lm in mapping.analog_layers)
    assert res.actions["accumulator.add"] >= 9 * 64 * 64       # split layer3 partial sums


def test_arrays_sharing_a_tile_run_one_after_another():
    # the split layer above with both row blocks on one tile (2 arrays per tile): the tile's
    # periphery serves them in turn, 2 x 270 cycles; the partial sums need no transfer.
    net = Network("split", (1, 2, 64), (
        Layer("a", "conv2d", (INPUT,), out_channels=16, kernel=3, padding=1),), 10)
    cfg = chip(**{**PIPE, "chip.tiles.count": 1, "chip.tiles.arrays_per_tile": 2})
    a = simulate_timing(map_network(cfg, net)).layer("a")
    # input halves sent one after the other to tile 0: [0,1], [1,2] + 1 hop -> 3
    assert (a.start_cycle, a.end_cycle, a.busy_cycles) == (3, 3 + 2 * 270 + 1, 540)
    assert "interconnect.byte_hop" in a.actions and a.actions["interconnect.byte_hop"] == 2 * 256


# ---------------------------------------------------------------------------------------------
# Capacities bind: a buffer or SRAM too small for the schedule is an error, never a free lunch
# ---------------------------------------------------------------------------------------------

def test_buffer_need_of_one_conv_is_its_input_rows_and_output_row():
    # 1x1 conv on one 4-pixel row: the input row (4 px x 64 ch, FP32 from the digital side) =
    # 1024 B, and the output row being written (4 px x 32 columns x 1 B ADC codes) = 128 B
    res = simulate_timing(map_network(chip(**SINGLE), one_conv()))
    assert res.buffer_need_bytes == (1024 + 128,)
    with pytest.raises(ConfigError) as exc:
        simulate_timing(map_network(chip(**SINGLE, **{"chip.tiles.buffer.kib": 1.0}), one_conv()))
    err = exc.value
    assert err.yaml_path == "chip.tiles.buffer.kib"
    assert "tile 0" in str(err) and "1.12 KiB" in str(err) and "input rows 1 KiB" in str(err) and "short by 0.125 KiB" in str(err)
    assert "\n" not in str(err)


def test_held_rows_of_a_resnet_block():
    from archsim.timing import held_rows, setup
    _, plan = setup(map_network(load_chip("pcm_hybrid"), resnet_cifar(32)), 1)
    held = {(e.src.name, n.name): h for n in plan.nodes for e in n.inputs
            for h in [held_rows(plan)[id(e)]]}
    # a 3x3 conv keeps its 3 window rows + the next row arriving (stride 2: + 2 rows)
    assert held[("conv1", "layer1.0.conv1")] == 4
    assert held[("layer1.4.add", "layer2.0.conv1")] == 5
    # the residual add keeps the block input from row r until conv1 -> conv2 produce row r + 1
    # (they need input rows up to r + 3): 4 rows; the conv2 output it adds: 2 rows
    assert held[("conv1", "layer1.0.add")] == 4
    assert held[("layer1.0.conv2", "layer1.0.add")] == 2
    # option-A shortcut (stride 2): rows 2r .. 2r + 2, then 3 rows of its output at the add
    assert held[("layer1.4.add", "layer2.0.shortcut")] == 3
    assert held[("layer2.0.shortcut", "layer2.0.add")] == 3
    # global pooling folds rows in as they come
    assert held[("layer3.4.add", "avgpool")] == 2


@pytest.mark.parametrize("config, path, override", [
    ("pcm_hybrid", "chip.tiles.buffer.kib", 0.001),
    ("pcm_hybrid", "chip.digital.sram.kib", 4),
    ("digital_fp32", "chip.digital.sram.kib", 256),      # 4 units x 256 KiB < 1.9 MB of weights
])
def test_too_small_buffer_or_sram_is_an_error_not_a_free_lunch(config, path, override):
    net = resnet_cifar(32)
    ok = simulate_timing(map_network(load_chip(config), net))
    need = ok.sram_need_bytes if "sram" in path else max(ok.buffer_need_bytes)
    with pytest.raises(ConfigError) as exc:
        simulate_timing(map_network(load_chip(config, overrides={path: override}), net))
    assert exc.value.yaml_path == path
    size = f"{need / 2**20:.3g} MiB" if need >= 2**20 else f"{need / 1024:.3g} KiB"
    assert f"needs: {size}" in str(exc.value) and "short by" in str(exc.value)
    if config == "digital_fp32":
        assert "weights of" in str(exc.value)
