"""Energy and area accounting: closed-form one-tile runs, leakage x time, sources, the peak
figures of the shipped chips against HERMES' published numbers, and the real pipeline."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from archsim.accounting import CostResult, account, peak_efficiency
from archsim.components import chip_components
from archsim.config import load_chip
from archsim.mapping import map_network
from archsim.workloads import load_workload

SUMMARY_KEYS = {"peak_tops", "peak_tops_per_w", "peak_tops_per_mm2", "tops", "tops_per_w",
                "latency_ns", "inferences_per_s", "energy_per_inference_uj", "power_w",
                "area_mm2", "dynamic_energy_per_inference_uj", "leakage_energy_per_inference_uj",
                "leakage_power_w", "single_inference_energy_uj"}

# One tile with every figure given explicitly (one digital unit of 4x4 PEs beside it).
ONE_TILE = {
    "chip.tiles.count": 1, "chip.tiles.array.rows": 16, "chip.tiles.array.cols": 16,
    "chip.tiles.array.energy_fj_per_device_read": 2.0, "chip.tiles.array.area_um2": 1000.0,
    "chip.tiles.dac.energy_pj_per_row": 0.1, "chip.tiles.dac.area_um2_per_row": 2.0,
    "chip.tiles.adc.per_tile": 4, "chip.tiles.adc.energy_pj": 0.5, "chip.tiles.adc.area_um2": 100.0,
    "chip.tiles.affine.energy_pj_per_op": 1.0, "chip.tiles.affine.area_um2": 500.0,
    "chip.tiles.buffer.energy_pj_per_byte": 0.25, "chip.tiles.buffer.area_um2": 300.0,
    "chip.tiles.leakage_mw": 2.0,
    "chip.digital.systolic": {"rows": 4, "cols": 4, "dataflow": "ws"},
    "chip.digital.mac_energy_pj": 0.75, "chip.digital.mac_area_um2": 10.0,
    "chip.digital.leakage_mw": 3.0,
    "chip.digital.sram.energy_pj_per_byte": 2.0, "chip.digital.sram.area_um2_per_kib": 1.0,
    "chip.interconnect.energy_pj_per_byte_hop": 0.4, "chip.interconnect.area_um2_per_router": 50.0,
}
ANALOG_ACTIONS = {"pcm_array.mvm": 10, "dac.drive": 160, "adc.conversion": 80, "affine.op": 80,
                  "tile_buffer.byte": 400, "interconnect.byte_hop": 50, "accumulator.add": 20}
DIGITAL_ACTIONS = {"digital_mac.mac": 1000, "sram.byte": 300}


def _fake(interval_cycles=1000, inferences=1, util=0.5, total_cycles=None):
    chip = load_chip("pcm_hybrid", overrides=ONE_TILE)
    layers = {"a": SimpleNamespace(utilization=util, read_utilization=util),
              "d": SimpleNamespace(utilization=0.0, read_utilization=0.0)}
    mapping = SimpleNamespace(chip=chip, network=SimpleNamespace(total_macs=lambda: 1000),
                              layer=lambda name: layers[name])
    per_layer = (SimpleNamespace(name="a", actions=ANALOG_ACTIONS, placement="analog", tiles=(0,),
                                 busy_cycles=600),
                 SimpleNamespace(name="d", actions=DIGITAL_ACTIONS, placement="digital", tiles=(),
                                 busy_cycles=300))
    whole = {k: v * inferences for k, v in {**ANALOG_ACTIONS, **DIGITAL_ACTIONS}.items()}
    timing = SimpleNamespace(clock_mhz=1000.0, inferences=inferences, layers=per_layer,
                             actions=whole, interval_cycles=interval_cycles, latency_ns=800.0,
                             total_cycles=total_cycles or interval_cycles * inferences,
                             throughput_inferences_per_s=1e9 / interval_cycles)
    return mapping, timing


# hand sums (pJ): array 10 MVMs x 256 devices x 2 fJ x 0.5 of the devices mapped
HAND_DYNAMIC = {"pcm_array": 10 * 256 * 2e-3 * 0.5, "dac": 160 * 0.1, "adc": 80 * 0.5,
                "affine": 80 * 1.0, "tile_buffer": 400 * 0.25, "interconnect": 50 * 0.4,
                "accumulator": 20 * 0.9 * 0.14, "digital_mac": 1000 * 0.75, "sram": 300 * 2.0}
# leakage (mW): tile periphery 2, tile buffer 64 KiB x 0.01 (default), digital unit 3,
# SRAM 512 KiB x 0.01 (default); x the 1000 ns interval -> pJ per inference
HAND_LEAK_MW = {"tile_periphery": 2.0, "tile_buffer": 0.64, "digital_unit": 3.0, "sram": 5.12}
HAND_AREA = {"pcm_array": 1000.0, "dac": 16 * 2.0, "adc": 4 * 100.0, "affine": 500.0,
             "tile_buffer": 300.0, "digital_mac": 16 * 10.0, "sram": 512 * 1.0,
             "interconnect": 2 * 50.0}


def test_one_tile_energy_is_the_hand_sum_of_its_actions():
    cost = account(*_fake())
    for name, value in HAND_DYNAMIC.items():
        assert cost.dynamic_energy_pj[name] == pytest.approx(value, rel=1e-12), name
    assert cost.dynamic_pj == pytest.approx(1611.08, rel=1e-12)
    for name, mw in HAND_LEAK_MW.items():
        assert cost.leakage_power_mw[name] == pytest.approx(mw), name
        assert cost.leakage_energy_pj[name] == pytest.approx(mw * 1000.0), name
    assert cost.leakage_pj == pytest.approx(10760.0)
    assert cost.total_energy_pj == pytest.approx(1611.08 + 10760.0)
    assert cost.layer_energy_pj["d"] == pytest.approx(750.0 + 600.0)
    assert cost.layer_energy_pj["a"] == pytest.approx(1611.08 - 1350.0)
    # leakage of the hardware each layer holds: tile 0 (2.64 mW) -> a; digital unit + SRAM
    # (8.12 mW) -> d; nothing else leaks
    assert cost.layer_leakage_pj["a"] == pytest.approx(2.64 * 1000)
    assert cost.layer_leakage_pj["d"] == pytest.approx(8.12 * 1000)
    assert sum(cost.layer_leakage_pj.values()) == pytest.approx(cost.leakage_pj)
    s = cost.summary
    assert s["energy_per_inference_uj"] == pytest.approx(12371.08e-6)
    assert s["dynamic_energy_per_inference_uj"] == pytest.approx(1611.08e-6)
    assert s["leakage_energy_per_inference_uj"] == pytest.approx(10760e-6)
    assert s["leakage_power_w"] == pytest.approx(10.76e-3)
    assert s["power_w"] == pytest.approx(12371.08e-3 / 1000)          # pJ / ns = mW
    assert s["tops_per_w"] == pytest.approx(2 * 1000 / 12371.08)
    assert s["tops"] == pytest.approx(2 * 1000 * 1e6 / 1e12)
    assert s["latency_ns"] == 800.0 and s["inferences_per_s"] == 1e6
    # a single inference alone leaks over its latency, not the interval
    assert s["single_inference_energy_uj"] == pytest.approx((1611.08 + 10.76 * 800) * 1e-6)
    assert set(s) == SUMMARY_KEYS


def test_one_tile_area_is_the_hand_sum():
    cost = account(*_fake())
    for name, value in HAND_AREA.items():
        assert cost.area_um2[name] == pytest.approx(value), name
    assert cost.total_area_um2 == pytest.approx(3004.0)
    assert sum(cost.tile_area_um2.values()) == pytest.approx(1000 + 32 + 400 + 500 + 300)
    assert cost.summary["area_mm2"] == pytest.approx(3004.0e-6)


def test_leakage_is_charged_over_the_interval_and_nothing_depends_on_the_run_length():
    short, long_ = account(*_fake(interval_cycles=1000)), account(*_fake(interval_cycles=3000))
    for name in short.leakage_energy_pj:
        assert long_.leakage_energy_pj[name] == pytest.approx(3 * short.leakage_energy_pj[name])
        assert long_.dynamic_energy_pj[name] == pytest.approx(short.dynamic_energy_pj[name])
    # more inferences in the same steady state: the same figures per inference
    many = account(*_fake(interval_cycles=1000, inferences=8, total_cycles=9000))
    assert many.summary == short.summary
    assert many.layer_energy_pj == short.layer_energy_pj
    run = many.to_dict()["energy"]["run"]
    assert run["dynamic_pj"] == pytest.approx(8 * 1611.08)
    assert run["leakage_pj"] == pytest.approx(10.76 * 9000)


def test_every_figure_names_its_source_yaml_or_default():
    cost = account(*_fake())
    src = cost.sources
    for name in HAND_DYNAMIC:
        assert f"{name}.area_um2" in src and f"{name}.leakage_mw" in src
    assert "override chip.tiles.adc.energy_pj=0.5" in src["adc.conversion.energy_pj"]
    assert "override chip.digital.mac_energy_pj=0.75" in src["digital_mac.mac.energy_pj"]
    assert src["accumulator.add.energy_pj"].startswith("default:")
    assert "Horowitz" in src["accumulator.add.energy_pj"] and "x0.14" in src["accumulator.add.energy_pj"]
    assert src["tile_buffer.leakage_mw"].startswith("1 x 0.64 mW: default:")
    d = cost.to_dict()
    assert set(d) >= {"energy", "area", "summary", "sources"}
    assert d["energy"]["sources"] == d["sources"] == dict(src)
    # shipped YAML: file:line and the "# source:" comment
    hermes = account(*_with_chip(_fake(), load_chip("hermes")))
    assert "hermes.yaml:" in hermes.sources["adc.conversion.energy_pj"]
    assert "Le Gallo 2023" in hermes.sources["adc.conversion.energy_pj"]


def _with_chip(fake, chip):
    mapping, timing = fake
    return SimpleNamespace(chip=chip, network=mapping.network, layer=mapping.layer), timing


def test_actions_on_a_chip_without_that_component_fail_loudly():
    mapping, timing = _fake()
    chip = load_chip("digital_fp32")
    with pytest.raises(ValueError, match="pcm_array.mvm"):
        account(SimpleNamespace(chip=chip, network=mapping.network, layer=mapping.layer), timing)


# ---------------------------------------------------------------------------------------------
# Peak figures against the published HERMES numbers (Le Gallo 2023; core: JSSC 2022)
# ---------------------------------------------------------------------------------------------

def test_hermes_one_phase_peak_matches_published():
    p = peak_efficiency(load_chip("hermes"))
    assert p["peak_tops"] == pytest.approx(63.1, rel=0.05)
    assert p["peak_tops_per_w"] == pytest.approx(9.76, rel=0.05)
    assert p["peak_power_w"] == pytest.approx(6.5, rel=0.10)
    assert p["mvm_energy_pj"] == pytest.approx(13.4e3, rel=0.10)       # 13.4 nJ per core MVM
    assert p["mvm_interval_ns"] == pytest.approx(133, rel=0.05)
    assert p["tile_tops_per_mm2"] == pytest.approx(1.59, rel=0.03)     # HERMES core density
    assert p["tile_tops_per_w"] == pytest.approx(10.5, rel=0.10)       # HERMES core efficiency


def test_hermes_four_phase_peak_with_the_same_component_energies():
    one = peak_efficiency(load_chip("hermes"))
    four = peak_efficiency(load_chip("hermes", overrides={"chip.tiles.dac.phases": 4}))
    assert four["peak_tops"] == pytest.approx(16.1, rel=0.05)
    assert four["peak_tops_per_w"] == pytest.approx(2.48, rel=0.05)
    assert four["peak_power_w"] == pytest.approx(6.5, rel=0.10)
    # time-proportional energy: the power stays put while an MVM takes ~4x longer
    assert four["peak_power_w"] == pytest.approx(one["peak_power_w"], rel=0.05)
    assert four["mvm_energy_pj"] / one["mvm_energy_pj"] == pytest.approx(
        four["mvm_interval_ns"] / one["mvm_interval_ns"], rel=0.05)


def test_digital_peak_is_every_pe_busy():
    p = peak_efficiency(load_chip("digital_fp32"))
    assert p["mode"] == "digital"
    assert p["peak_tops"] == pytest.approx(2 * 4 * 32 * 32 * 1e9 / 1e12)      # 8.192
    mac = (3.7 + 0.9) * 0.14
    sram = 100 * 2 ** (math.log(5) / math.log(32)) / 8 * 0.14     # 2 MiB SRAM, pJ/byte
    dynamic_w = (4096 * mac + 4 * 256 * sram) * 1e9 * 1e-12
    assert p["dynamic_power_w"] == pytest.approx(dynamic_w, rel=1e-9)
    assert p["peak_tops_per_w"] == pytest.approx(8.192 / (dynamic_w + p["leakage_w"]))


# ---------------------------------------------------------------------------------------------
# The real pipeline
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits_run():
    from archsim.timing import simulate_timing
    chip = load_chip("pcm_hybrid")
    mapping = map_network(chip, load_workload("digits_cnn").network)
    timing = simulate_timing(mapping, 2)
    return mapping, timing, account(mapping, timing)


def test_pipeline_totals_are_consistent(digits_run):
    mapping, timing, cost = digits_run
    assert isinstance(cost, CostResult)
    d = cost.to_dict()
    e = d["energy"]
    per_comp = e["per_component"]
    assert e["per_inference_pj"] == pytest.approx(sum(v["total_pj"] for v in per_comp.values()))
    assert e["per_inference_pj"] == pytest.approx(e["dynamic_per_inference_pj"]
                                                  + e["leakage_per_inference_pj"])
    # the whole run's actions are one inference's x inferences
    assert sum(cost.layer_energy_pj.values()) == pytest.approx(e["dynamic_per_inference_pj"])
    assert e["run"]["dynamic_pj"] == pytest.approx(timing.inferences * e["dynamic_per_inference_pj"])
    assert set(cost.layer_energy_pj) == {lt.name for lt in timing.layers}
    interval_ns = timing.interval_cycles * 1000.0 / timing.clock_mhz
    chip_leak_mw = sum(c.total_leakage_mw for c in chip_components(mapping.chip).values())
    assert e["leakage_per_inference_pj"] == pytest.approx(chip_leak_mw * interval_ns)
    assert sum(cost.layer_leakage_pj.values()) == pytest.approx(e["leakage_per_inference_pj"])
    assert set(cost.summary) == SUMMARY_KEYS
    assert cost.summary["peak_tops"] == pytest.approx(peak_efficiency(mapping.chip)["peak_tops"])
    assert d["area"]["total_mm2"] == pytest.approx(cost.summary["area_mm2"])


def test_hybrid_beats_digital_on_energy_for_the_same_network():
    from archsim.timing import simulate_timing
    net = load_workload("digits_cnn").network
    out = {}
    for name in ("pcm_hybrid", "digital_fp32"):
        mapping = map_network(load_chip(name), net)
        out[name] = account(mapping, simulate_timing(mapping, 1)).summary
    assert out["pcm_hybrid"]["energy_per_inference_uj"] < out["digital_fp32"]["energy_per_inference_uj"]


# ---------------------------------------------------------------------------------------------
# Steady-state figures that agree, on every shipped config
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def resnet32_costs():
    from archsim.config import SHIPPED_CONFIGS
    from archsim.network import resnet_cifar
    from archsim.timing import simulate_timing
    net = resnet_cifar(32)
    out = {}
    for name in SHIPPED_CONFIGS:
        mapping = map_network(load_chip(name), net)
        out[name] = {n: account(mapping, simulate_timing(mapping, n)) for n in (1, 4, 16)}
    return out


@pytest.mark.parametrize("config", ["pcm_hybrid", "digital_fp32", "hermes"])
def test_power_energy_throughput_and_tops_per_w_agree(resnet32_costs, config):
    for n, cost in resnet32_costs[config].items():
        s = cost.summary
        e_j = s["energy_per_inference_uj"] * 1e-6
        assert s["power_w"] == pytest.approx(e_j * s["inferences_per_s"], rel=1e-12)
        assert s["tops_per_w"] == pytest.approx(s["tops"] / s["power_w"], rel=1e-12)
        assert s["tops"] == pytest.approx(2 * 68_862_592 * s["inferences_per_s"] / 1e12, rel=1e-12)
        assert s["energy_per_inference_uj"] == pytest.approx(
            s["dynamic_energy_per_inference_uj"] + s["leakage_energy_per_inference_uj"])
        # power = dynamic power + leakage power
        assert s["power_w"] == pytest.approx(s["dynamic_energy_per_inference_uj"] * 1e-6
                                             * s["inferences_per_s"] + s["leakage_power_w"])
        # a single inference alone: dynamic + leakage over its latency
        assert s["single_inference_energy_uj"] == pytest.approx(
            s["dynamic_energy_per_inference_uj"]
            + s["leakage_power_w"] * s["latency_ns"] * 1e-9 * 1e6)


@pytest.mark.parametrize("config", ["pcm_hybrid", "digital_fp32", "hermes"])
def test_energy_per_inference_does_not_depend_on_inferences_in_flight(resnet32_costs, config):
    costs = resnet32_costs[config]
    four, sixteen = costs[4].summary, costs[16].summary
    for key in ("energy_per_inference_uj", "power_w", "tops_per_w", "tops"):
        assert four[key] == pytest.approx(sixteen[key], rel=0.01), key
    # one inference alone is the single-inference figure (no pipelining)
    one = costs[1].summary
    assert one["energy_per_inference_uj"] == pytest.approx(one["single_inference_energy_uj"])
    assert four["single_inference_energy_uj"] == pytest.approx(one["single_inference_energy_uj"],
                                                               rel=0.01)


def test_power_gating_switches_unused_tiles_off_and_costs_wake_ups():
    from archsim.network import resnet_cifar
    from archsim.timing import simulate_timing
    net = resnet_cifar(32)
    one_copy = {"mapping.replication": "none"}          # 39 arrays, as counted below
    plain = map_network(load_chip("pcm_hybrid", overrides=one_copy), net)
    gated = map_network(load_chip("pcm_hybrid", overrides={"chip.tiles.power_gating": True,
                                                           **one_copy}), net)
    t_plain, t_gated = simulate_timing(plain, 4), simulate_timing(gated, 4)
    c_plain, c_gated = account(plain, t_plain), account(gated, t_gated)
    comps = chip_components(plain.chip)
    # 39 of the 64 tiles hold arrays; the 25 others leak 5% of their tile leakage
    assert len(t_gated.tiles_used) == 39
    one_tile_mw = comps["tile_buffer"].leakage_mw.value + comps["tile_periphery"].leakage_mw.value
    buffer_mw = c_gated.leakage_power_mw["tile_buffer"]
    assert buffer_mw == pytest.approx(comps["tile_buffer"].leakage_mw.value * (39 + 25 * 0.05))
    # mapped tiles: the periphery is off while idle for longer than the 100 ns wake-up
    periphery_mw = c_gated.leakage_power_mw["tile_periphery"]
    p = comps["tile_periphery"].leakage_mw.value
    off = sum(t_gated.tile_gated_cycles[t] for t in t_gated.tiles_used) / t_gated.window_cycles
    assert periphery_mw == pytest.approx(p * (39 + 25 * 0.05) - p * 0.95 * off)
    assert 0 < off < 39
    # waking up costs time: a row that found its tile asleep waits 100 cycles
    assert t_gated.latency_cycles > t_plain.latency_cycles
    assert t_gated.interval_cycles >= t_plain.interval_cycles
    assert "pcm_hybrid.yaml" in c_gated.sources["tile_periphery.wake_up_ns"]
    s = c_gated.summary
    assert s["energy_per_inference_uj"] < c_plain.summary["energy_per_inference_uj"]
    assert s["energy_per_inference_ungated_uj"] == pytest.approx(
        s["dynamic_energy_per_inference_uj"]
        + sum(c.total_leakage_mw for c in comps.values()) * t_gated.interval_cycles * 1e-6)
    assert sum(c_plain.leakage_power_mw.values()) - sum(c_gated.leakage_power_mw.values()) \
        >= 25 * one_tile_mw * 0.95 - 1e-9
