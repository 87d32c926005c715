"""Component figures: default tables and their node scaling, YAML figures with their sources,
time-proportional analog energies, and the figures that have no default."""

from __future__ import annotations

import math

import pytest

from archsim.components import (ENERGY_NODE_EXPONENT, action_energy_pj, adc_area_model,
                                adc_energy_model,
                                chip_components, full_mvm_actions, integration_time_ns,
                                sram_energy_default)
from archsim.config import load_chip
from archsim.errors import ConfigError


def test_energy_scaling_45_to_14_nm_is_0_14():
    assert (14 / 45) ** ENERGY_NODE_EXPONENT == pytest.approx(0.14, rel=1e-12)


def test_fp32_mac_default_is_horowitz_scaled_to_14nm():
    comps = chip_components(load_chip("pcm_hybrid"))
    mac = comps["digital_mac"].energy_pj["mac"]
    assert mac.value == pytest.approx((3.7 + 0.9) * 0.14, rel=1e-9)      # 0.644 pJ
    assert mac.source.startswith("default:") and "Horowitz" in mac.source


def test_sram_energy_by_capacity_follows_horowitz_points():
    # 64-bit reads at 45 nm: 8 KB 10 pJ, 32 KB 20 pJ, 1 MB 100 pJ -> per byte / 8
    assert sram_energy_default(8).value == pytest.approx(1.25)
    assert sram_energy_default(32).value == pytest.approx(2.5)
    assert sram_energy_default(1024).value == pytest.approx(12.5)
    slope = math.log(5) / math.log(32)
    assert sram_energy_default(64).value == pytest.approx(20 * 2 ** slope / 8)
    assert sram_energy_default(2048).value == pytest.approx(100 * 2 ** slope / 8)


def test_adc_default_is_the_survey_frontier_for_its_bits_and_sample_rate():
    # Walden FOM at the Murmann-survey frontier: log10(FOMW / fJ) = -1.1115 + 0.2260 log10 fs
    fomw_1g = 10 ** (-1.1115 + 0.2260 * 9)                   # 8.36 fJ/step at 1 GS/s
    assert adc_energy_model(8, 1e9, 14).value == pytest.approx(fomw_1g * 256 / 1000)    # 2.14 pJ
    assert adc_energy_model(6, 1e9, 14).value == pytest.approx(fomw_1g * 64 / 1000)
    assert adc_energy_model(8, 1e9, 14).value == pytest.approx(2.14, rel=0.01)
    # slower converters are more efficient: 8 bit at HERMES' 76.8 ns (13 MS/s): 0.80 pJ
    hermes_rate = 1e9 / 76.8
    assert adc_energy_model(8, hermes_rate, 14).value == pytest.approx(0.80, rel=0.01)
    # frontier designs are at 28 nm and finer: no credit below 28 nm, scaled up above it
    assert adc_energy_model(8, 1e9, 7).value == adc_energy_model(8, 1e9, 28).value
    assert adc_energy_model(8, 1e9, 45).value == pytest.approx(
        adc_energy_model(8, 1e9, 28).value * (45 / 28) ** ENERGY_NODE_EXPONENT)
    # area: 10^(-4.1739 + 0.1646 b + 0.4605 log10 fs + 1.6818 log10 node)
    assert adc_area_model(8, 1e9, 14).value == pytest.approx(
        10 ** (-4.1739 + 0.1646 * 8 + 0.4605 * 9 + 1.6818 * math.log10(14)))     # ~1640 um2
    assert adc_area_model(8, 1e9, 14).value == pytest.approx(1640, rel=0.01)
    # the shipped default chip: 8 bit, 1 ns conversions at 14 nm
    comps = chip_components(load_chip("pcm_hybrid"))
    assert comps["adc"].energy_pj["conversion"].value == pytest.approx(fomw_1g * 256 / 1000)
    assert "Murmann" in comps["adc"].energy_pj["conversion"].source
    assert comps["adc"].area_um2.value == pytest.approx(adc_area_model(8, 1e9, 14).value)
    # HERMES keeps its silicon-calibrated 43.8 pJ: 55x the frontier figure at its speed
    hermes = chip_components(load_chip("hermes"))["adc"].energy_pj["conversion"].value
    assert hermes == 43.8
    assert hermes / adc_energy_model(8, hermes_rate, 14).value == pytest.approx(55, rel=0.02)


def test_adc_has_no_default_outside_the_survey_fit():
    chip = load_chip("pcm_hybrid", overrides={"chip.tiles.adc.bits": 14})
    with pytest.raises(ConfigError) as exc:
        chip_components(chip)
    assert exc.value.yaml_path in ("chip.tiles.adc.energy_pj", "chip.tiles.adc.area_um2")
    assert "14-bit" in str(exc.value) and "pcm_hybrid.yaml" in str(exc.value)
    assert "\n" not in str(exc.value)
    fixed = load_chip("pcm_hybrid", overrides={"chip.tiles.adc.bits": 14,
                                               "chip.tiles.adc.energy_pj": 2.5,
                                               "chip.tiles.adc.area_um2": 3000.0})
    assert chip_components(fixed)["adc"].energy_pj["conversion"].value == 2.5
    slow = load_chip("pcm_hybrid", overrides={"chip.tiles.adc.conversion_ns": 5000.0})  # 200 kS/s
    with pytest.raises(ConfigError, match="0.2 MS/s"):
        chip_components(slow)


def test_pcm_cell_area_is_50_f_squared():
    comps = chip_components(load_chip("pcm_hybrid"))
    cell = 50 * 0.014 ** 2                                    # 0.0098 um2 at 14 nm
    assert comps["pcm_array"].area_um2.value == pytest.approx(512 * 512 * cell)
    assert "50 F^2" in comps["pcm_array"].area_um2.source and "0.0098 um2" in comps["pcm_array"].area_um2.source


def test_every_zero_area_part_says_why():
    for name in ("pcm_hybrid", "digital_fp32", "hermes"):
        for comp in chip_components(load_chip(name)).values():
            if comp.count and comp.area_um2.value == 0:
                assert comp.area_um2.source.startswith(("none", "no analog")), comp.name


def test_interconnect_energy_has_no_default_without_a_wire_length():
    chip = load_chip("pcm_hybrid", overrides={"chip.interconnect.hop_length_mm": 0})
    with pytest.raises(ConfigError) as exc:
        chip_components(chip)
    assert exc.value.yaml_path == "chip.interconnect.energy_pj_per_byte_hop"
    ok = load_chip("pcm_hybrid", overrides={"chip.interconnect.hop_length_mm": 0,
                                            "chip.interconnect.energy_pj_per_byte_hop": 0.3})
    assert chip_components(ok)["interconnect"].energy_pj["byte_hop"].value == 0.3
    # the default: 0.1 pJ/bit/mm x 8 bits x 0.5 mm
    hop = chip_components(load_chip("pcm_hybrid"))["interconnect"].energy_pj["byte_hop"]
    assert hop.value == pytest.approx(0.4)


def test_yaml_figures_name_file_line_and_comment():
    chip = load_chip("hermes")
    comps = chip_components(chip)
    adc = comps["adc"].energy_pj["conversion"]
    assert adc.value == 43.8
    assert "hermes.yaml:" in adc.source and "derived:" in adc.source
    line = int(adc.source.split("hermes.yaml:")[1].split(" ")[0])
    text = open(chip.file).read().splitlines()[line - 1]
    assert text.strip().startswith("energy_pj: 43.8")
    assert "hermes.yaml:" in comps["pcm_array"].area_um2.source
    assert comps["affine"].area_um2.source.startswith("default:")


def test_array_energy_is_device_physics_over_the_integration_window():
    chip = load_chip("pcm_hybrid")          # 512x512 devices, 0.2 V, 25 uS, 127 ns window
    assert integration_time_ns(chip) == pytest.approx(127.0)
    e = chip_components(chip)["pcm_array"].energy_pj["mvm"].value
    assert e == pytest.approx(512 * 512 * 0.2 ** 2 * 25e-6 / 4 * 63.5e-9 * 1e12)   # 4161.5 pJ


def test_analog_energy_per_mvm_is_time_proportional_in_phases():
    one = load_chip("hermes")
    four = load_chip("hermes", overrides={"chip.tiles.dac.phases": 4})

    def parts(chip):
        comps = chip_components(chip)
        return {a: n * action_energy_pj(comps, a).value for a, n in full_mvm_actions(chip).items()}

    p1, p4 = parts(one), parts(four)
    for action in ("pcm_array.mvm", "dac.drive", "adc.conversion"):
        assert p4[action] == pytest.approx(4 * p1[action])
    for action in ("affine.op", "tile_buffer.byte"):
        assert p4[action] == pytest.approx(p1[action])
    assert full_mvm_actions(four)["adc.conversion"] == 4 * 256


def test_counts_and_tile_parts():
    comps = chip_components(load_chip("hermes"))
    assert comps["adc"].count == 64 * 256 and comps["adc"].per_tile == 256
    assert comps["dac"].count == 64 * 256
    assert comps["pcm_array"].count == 64
    assert comps["accumulator"].count == 64 + 1
    digital = chip_components(load_chip("digital_fp32"))
    assert digital["adc"].count == 0 and digital["digital_mac"].count == 4 * 32 * 32
    assert digital["adc"].energy_pj["conversion"].value == 0.0


def test_unknown_action_is_a_bug():
    comps = chip_components(load_chip("pcm_hybrid"))
    with pytest.raises(ValueError, match="adc.convert"):
        action_energy_pj(comps, "adc.convert")


def test_timing_reads_the_latencies_the_energy_model_uses():
    from archsim.components import chip_parts
    from archsim.timing import mvm_stages
    for overrides in ({}, {"chip.tiles.dac.phases": 3, "chip.tiles.dac.t_lsb_ns": 2.5},
                      {"chip.tiles.dac.encoding": "bit-serial", "chip.tiles.array.read_time_ns": 7.0}):
        chip = load_chip("pcm_hybrid", overrides=overrides)
        parts = chip_parts(chip)
        dac = parts["dac"]
        comps = chip_components(chip)
        # one integration window, computed by the DAC bank: the array's MVM latency and energy
        # window, the DAC's drive latency, and the timing model's integrate stage all read it
        assert comps["pcm_array"].latency_ns["mvm"].value == dac.integration_ns
        assert comps["dac"].latency_ns["drive"].value == dac.integration_ns
        st = mvm_stages(chip, 100, 40)
        assert st.steps == dac.steps
        assert st.integrate == math.ceil(dac.integration_ns / dac.steps - 1e-9)    # 1 ns clock
        # conversion: ceil(40 columns / 64 ADCs) x the ADC's conversion latency
        assert st.convert == math.ceil(40 / 64) * comps["adc"].latency_ns["conversion"].value
        # load and write at the buffer's bytes per cycle (its per-byte latency)
        assert st.load == math.ceil(100 * comps["tile_buffer"].latency_ns["byte"].value)


def test_a_missing_energy_default_never_stops_the_timing_model():
    from archsim.network import digits_cnn
    from archsim.mapping import map_network
    from archsim.timing import simulate_timing
    chip = load_chip("pcm_hybrid", overrides={"chip.tiles.adc.bits": 14})
    assert simulate_timing(map_network(chip, digits_cnn())).latency_cycles > 0
