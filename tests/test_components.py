"""Component figures: default tables and their node scaling, YAML figures with their sources,
time-proportional analog energies, and the figures that have no default."""

from __future__ import annotations

import math

import pytest

from archsim.components import (ENERGY_NODE_EXPONENT, action_energy_pj, adc_energy_default,
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


def test_adc_default_is_the_survey_fit_and_has_no_default_outside_it():
    assert adc_energy_default(8).value == pytest.approx(0.36)
    assert adc_energy_default(10).value == pytest.approx(0.7)
    assert adc_energy_default(7).value == pytest.approx(math.sqrt(0.23 * 0.36))
    chip = load_chip("pcm_hybrid", overrides={"chip.tiles.adc.bits": 12})
    with pytest.raises(ConfigError) as exc:
        chip_components(chip)
    assert exc.value.yaml_path == "chip.tiles.adc.energy_pj"
    assert "12-bit" in str(exc.value) and "pcm_hybrid.yaml" in str(exc.value)
    assert "\n" not in str(exc.value)
    fixed = load_chip("pcm_hybrid", overrides={"chip.tiles.adc.bits": 12,
                                               "chip.tiles.adc.energy_pj": 2.5})
    assert chip_components(fixed)["adc"].energy_pj["conversion"].value == 2.5


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
    chip = load_chip("pcm_hybrid", overrides={"chip.tiles.adc.bits": 12})
    assert simulate_timing(map_network(chip, digits_cnn())).latency_cycles > 0
