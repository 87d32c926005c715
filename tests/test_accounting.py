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
                "area_mm2"}

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


def _fake(total_cycles=1000, inferences=1, util=0.5):
    chip = load_chip("pcm_hybrid", overrides=ONE_TILE)
    layers = {"a": SimpleNamespace(utilization=util), "d": SimpleNamespace(utilization=0.0)}
    mapping = SimpleNamespace(chip=chip, network=SimpleNamespace(total_macs=lambda: 1000),
                              layer=lambda name: layers[name])
    per_layer = (SimpleNamespace(name="a", actions=ANALOG_ACTIONS),
                 SimpleNamespace(name="d", actions=DIGITAL_ACTIONS))
    whole = {k: v * inferences for k, v in {**ANALOG_ACTIONS, **DIGITAL_ACTIONS}.items()}
    timing = SimpleNamespace(clock_mhz=1000.0, inferences=inferences, layers=per_layer,
                             actions=whole, total_cycles=total_cycles, latency_ns=800.0,
                             throughput_inferences_per_s=1e6)
    return mapping, timing


# hand sums (pJ): array 10 MVMs x 256 devices x 2 fJ x 0.5 of the devices mapped
HAND_DYNAMIC = {"pcm_array": 10 * 256 * 2e-3 * 0.5, "dac": 160 * 0.1, "adc": 80 * 0.5,
                "affine": 80 * 1.0, "tile_buffer": 400 * 0.25, "interconnect": 50 * 0.4,
                "accumulator": 20 * 0.9 * 0.14, "digital_mac": 1000 * 0.75, "sram": 300 * 2.0}
# leakage (mW): tile periphery 2, tile buffer 64 KiB x 0.01 (default), digital unit 3,
# SRAM 512 KiB x 0.01 (default); x 1000 ns -> pJ
HAND_LEAK_MW = {"tile_periphery": 2.0, "tile_buffer": 0.64, "digital_unit": 3.0, "sram": 5.12}
HAND_AREA = {"pcm_array": 1000.0, "dac": 16 * 2.0, "adc": 4 * 100.0, "affine": 500.0,
             "tile_buffer": 300.0, "digital_mac": 16 * 10.0, "sram": 512 * 1.0,
             "interconnect": 2 * 50.0}


def test_one_tile_energy_is_the_hand_sum_of_its_actions():
    cost = account(*_fake())
    for name, value in HAND_DYNAMIC.items():
        assert cost.dynamic_energy_pj[name] == pytest.approx(value, rel=1e-12), name
    assert sum(cost.dynamic_energy_pj.values()) == pytest.approx(1611.08, rel=1e-12)
    for name, mw in HAND_LEAK_MW.items():
        assert cost.leakage_energy_pj[name] == pytest.approx(mw * 1000.0), name
    assert sum(cost.leakage_energy_pj.values()) == pytest.approx(10760.0)
    assert cost.total_energy_pj == pytest.approx(1611.08 + 10760.0)
    assert cost.layer_energy_pj["d"] == pytest.approx(750.0 + 600.0)
    assert cost.layer_energy_pj["a"] == pytest.approx(1611.08 - 1350.0)
    s = cost.summary
    assert s["energy_per_inference_uj"] == pytest.approx(12371.08e-6)
    assert s["power_w"] == pytest.approx(12371.08e-3 / 1000)          # pJ / ns = mW
    assert s["tops_per_w"] == pytest.approx(2 * 1000 / 12371.08)
    assert s["tops"] == pytest.approx(2 * 1000 * 1e6 / 1e12)
    assert s["latency_ns"] == 800.0 and s["inferences_per_s"] == 1e6
    assert set(s) == SUMMARY_KEYS


def test_one_tile_area_is_the_hand_sum():
    cost = account(*_fake())
    for name, value in HAND_AREA.items():
        assert cost.area_um2[name] == pytest.approx(value), name
    assert cost.total_area_um2 == pytest.approx(3004.0)
    assert sum(cost.tile_area_um2.values()) == pytest.approx(1000 + 32 + 400 + 500 + 300)
    assert cost.summary["area_mm2"] == pytest.approx(3004.0e-6)


def test_leakage_scales_with_simulated_time_and_dynamic_with_inferences():
    short, long_ = account(*_fake(total_cycles=1000)), account(*_fake(total_cycles=3000))
    for name in short.leakage_energy_pj:
        assert long_.leakage_energy_pj[name] == pytest.approx(3 * short.leakage_energy_pj[name])
        assert long_.dynamic_energy_pj[name] == pytest.approx(short.dynamic_energy_pj[name])
    two = account(*_fake(total_cycles=1000, inferences=2))
    assert sum(two.dynamic_energy_pj.values()) == pytest.approx(2 * 1611.08)
    assert two.summary["energy_per_inference_uj"] == pytest.approx((1611.08 + 10760 / 2) * 1e-6)
    assert two.layer_energy_pj == short.layer_energy_pj             # per inference


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
    assert p["peak_tops"] == pytest.approx(63.1, rel=0.10)
    assert p["peak_tops_per_w"] == pytest.approx(9.76, rel=0.10)
    assert p["peak_power_w"] == pytest.approx(6.5, rel=0.10)
    assert p["mvm_energy_pj"] == pytest.approx(13.4e3, rel=0.10)       # 13.4 nJ per core MVM
    assert p["mvm_interval_ns"] == pytest.approx(133, rel=0.05)
    assert p["tile_tops_per_mm2"] == pytest.approx(1.59, rel=0.15)     # HERMES core density
    assert p["tile_tops_per_w"] == pytest.approx(10.5, rel=0.10)       # HERMES core efficiency


def test_hermes_four_phase_peak_with_the_same_component_energies():
    one = peak_efficiency(load_chip("hermes"))
    four = peak_efficiency(load_chip("hermes", overrides={"chip.tiles.dac.phases": 4}))
    assert four["peak_tops"] == pytest.approx(16.1, rel=0.10)
    assert four["peak_tops_per_w"] == pytest.approx(2.48, rel=0.10)
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
    assert e["total_pj"] == pytest.approx(sum(e["per_component_pj"].values()))
    assert e["total_pj"] == pytest.approx(e["dynamic_pj"] + e["leakage_pj"])
    # whole-run actions are the per-layer actions x inferences
    assert sum(cost.layer_energy_pj.values()) * timing.inferences == pytest.approx(e["dynamic_pj"])
    assert set(cost.layer_energy_pj) == {lt.name for lt in timing.layers}
    time_ns = timing.total_cycles * 1000.0 / timing.clock_mhz
    chip_leak_mw = sum(c.total_leakage_mw for c in chip_components(mapping.chip).values())
    assert e["leakage_pj"] == pytest.approx(chip_leak_mw * time_ns)
    assert cost.summary["power_w"] == pytest.approx(e["total_pj"] / time_ns * 1e-3)
    assert cost.summary["tops_per_w"] == pytest.approx(
        2 * mapping.network.total_macs() / e["per_inference_pj"])
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
