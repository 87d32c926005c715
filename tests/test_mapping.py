"""Mapping: placement policies and overrides, near-equal splits, array and tile allocation,
capacity errors and time multiplexing."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from archsim.config import load_chip
from archsim.errors import MappingError
from archsim.mapping import map_network, placement_of, split_sizes
from archsim.network import digits_cnn, resnet_cifar

STAGE3_576 = [f"layer3.{b}.conv{c}" for b in range(5) for c in (1, 2)
              if (b, c) != (0, 1)]           # every stage-3 conv with 64 input channels


@pytest.fixture(scope="module")
def resnet32():
    return resnet_cifar(32)


# This file tests the one-copy mapping (replication: test_replication.py); pcm_hybrid.yaml's
# replication: auto is turned off.
ONE_COPY = {"mapping.replication": "none"}


@pytest.fixture(scope="module")
def pcm():
    return load_chip("pcm_hybrid", overrides=ONE_COPY)


# ------------------------------------------------------------------------------------------
# split_sizes
# ------------------------------------------------------------------------------------------

def test_split_sizes_known_cases():
    assert split_sizes(576, 512) == [(0, 288), (288, 576)]
    assert split_sizes(512, 512) == [(0, 512)]
    assert split_sizes(513, 512) == [(0, 257), (257, 513)]
    assert split_sizes(288, 256) == [(0, 144), (144, 288)]
    assert split_sizes(576, 256) == [(0, 192), (192, 384), (384, 576)]
    assert split_sizes(10, 4) == [(0, 4), (4, 7), (7, 10)]       # the first K mod blocks get one more
    assert split_sizes(1, 512) == [(0, 1)]


@pytest.mark.parametrize("total, capacity", list(itertools.product(
    [1, 2, 7, 27, 64, 100, 255, 256, 257, 511, 1000, 4609], [1, 3, 16, 256, 512])))
def test_split_sizes_properties(total, capacity):
    blocks = split_sizes(total, capacity)
    assert len(blocks) == math.ceil(total / capacity)
    assert blocks[0][0] == 0 and blocks[-1][1] == total
    assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))        # contiguous
    sizes = [b - a for a, b in blocks]
    assert max(sizes) <= capacity and max(sizes) - min(sizes) <= 1     # near-equal
    assert sizes == sorted(sizes, reverse=True)                          # larger blocks first
    assert all(isinstance(v, int) for blk in blocks for v in blk)


# ------------------------------------------------------------------------------------------
# ResNet-32 on the default chip
# ------------------------------------------------------------------------------------------

def test_resnet32_on_pcm_hybrid(resnet32, pcm):
    m = map_network(pcm, resnet32)
    assert [lm.name for lm in m.layers] == [l.name for l in resnet32.matrix_layers()]
    assert len(m.layers) == 32
    assert [lm.name for lm in m.digital_layers] == ["conv1", "linear"]
    assert len(m.analog_layers) == 30
    assert m.arrays_needed == 39 and m.arrays_available == 64 and m.rounds == 1
    for lm in m.digital_layers:
        assert (lm.row_blocks, lm.col_blocks, lm.arrays, lm.utilization) == (0, 0, (), 0.0)
    for name in STAGE3_576:
        lm = m.layer(name)
        assert (lm.k, lm.n, lm.row_blocks, lm.col_blocks, len(lm.arrays)) == (576, 64, 2, 1, 2)
        assert lm.row_bounds() == [(0, 288), (288, 576)]
        assert lm.col_bounds() == [(0, 64)]
        assert lm.utilization == pytest.approx(576 * 64 * 2 / (2 * 512 * 512))   # 14.0625%
    lm = m.layer("layer2.3.conv1")
    assert (lm.k, lm.n, len(lm.arrays), lm.row_bounds()) == (288, 32, 1, [(0, 288)])
    assert lm.utilization == pytest.approx(288 * 32 * 2 / (512 * 512))
    assert m.layer("layer3.0.conv1").row_blocks == 1
    assert m.layer("layer1.0.conv1").macs == 2_359_296 and m.layer("layer1.0.conv1").mvms == 1024
    assert m.placement("conv1") == "digital" and m.placement("layer1.0.conv1") == "analog"
    with pytest.raises(KeyError):
        m.layer("bn1")


def test_arrays_are_allocated_in_layer_order(resnet32, pcm):
    m = map_network(pcm, resnet32)
    arrays = m.arrays
    assert [a.index for a in arrays] == list(range(39))
    assert [a.tile for a in arrays] == list(range(39))            # one array per tile
    assert {a.slot for a in arrays} == {0} and {a.round for a in arrays} == {0}
    assert m.tiles_used == 39
    first = m.layer("layer1.0.conv1").arrays[0]
    assert (first.index, first.row_start, first.row_stop, first.col_start, first.col_stop) == \
        (0, 0, 144, 0, 16)
    assert (first.rows_used, first.weight_cols_used) == (144, 16)
    a, b = m.layer("layer3.1.conv1").arrays
    assert (a.row_block, b.row_block, a.col_block, b.col_block) == (0, 1, 0, 0)
    assert b.index == a.index + 1 and (a.rows_used, b.rows_used) == (288, 288)


def test_blocks_tile_each_weight_matrix_exactly_once(resnet32):
    for chip in ("pcm_hybrid", "hermes"):
        m = map_network(load_chip(chip, overrides=ONE_COPY), resnet32)
        for lm in m.analog_layers:
            cover = np.zeros((lm.k, lm.n), int)
            for a in lm.arrays:
                cover[a.row_start:a.row_stop, a.col_start:a.col_stop] += 1
                assert a.layer == lm.name
            assert (cover == 1).all(), (chip, lm.name)
            assert len(lm.arrays) == lm.row_blocks * lm.col_blocks


def test_totals(resnet32, pcm):
    t = map_network(pcm, resnet32).totals()
    assert t["layers"] == 32 and t["analog_layers"] == 30 and t["digital_layers"] == 2
    assert (t["arrays"], t["arrays_available"], t["tiles_used"], t["rounds"]) == (39, 64, 39, 1)
    assert t["macs"] == 68_862_592
    assert t["analog_macs"] == 68_862_592 - 442_368 - 640
    assert t["analog_mac_fraction"] == pytest.approx(68_419_584 / 68_862_592, abs=1e-6)
    # devices holding weights / devices of the 39 arrays (2 devices per weight)
    weights = sum(lm.k * lm.n for lm in map_network(pcm, resnet32).analog_layers)
    assert t["utilization"] == pytest.approx(2 * weights / (39 * 512 * 512), abs=1e-6)


def test_to_dict_is_json(resnet32, pcm):
    d = json.loads(json.dumps(map_network(pcm, resnet32).to_dict()))
    assert d["policy"] == "hybrid" and d["overrides"] == {}
    assert len(d["layers"]) == 32
    row = d["layers"][-2]
    assert {"name", "kind", "placement", "k", "n", "row_blocks", "col_blocks", "arrays",
            "utilization", "macs"} <= set(row)
    assert (row["name"], row["k"], row["row_blocks"], row["arrays"]) == ("layer3.4.conv2", 576, 2, 2)
    assert d["totals"]["arrays"] == 39


# ------------------------------------------------------------------------------------------
# HERMES: 256x256 unit cells, one weight per column
# ------------------------------------------------------------------------------------------

def test_resnet32_on_hermes(resnet32):
    m = map_network(load_chip("hermes"), resnet32)
    assert m.arrays_needed == 58 and m.arrays_available == 64
    # 10 stage-1 convs x 1 + (1 + 9 x 2) stage-2 + (2 + 9 x 3) stage-3
    assert sum(len(m.layer(f"layer1.{b}.conv{c}").arrays) for b in range(5) for c in (1, 2)) == 10
    assert len(m.layer("layer2.0.conv1").arrays) == 1
    assert m.layer("layer2.1.conv1").row_bounds() == [(0, 144), (144, 288)]
    assert m.layer("layer3.0.conv1").row_blocks == 2
    for name in STAGE3_576:
        lm = m.layer(name)
        assert lm.row_bounds() == [(0, 192), (192, 384), (384, 576)] and lm.col_blocks == 1
        # unit-cell layout: one column per weight
        assert lm.utilization == pytest.approx(576 * 64 / (3 * 256 * 256))


# ------------------------------------------------------------------------------------------
# Policies and overrides
# ------------------------------------------------------------------------------------------

def test_all_digital_policy(resnet32, pcm):
    m = map_network(pcm.with_mapping("all-digital"), resnet32)
    assert m.analog_layers == [] and m.arrays_needed == 0 and m.tiles_used == 0
    assert m.totals()["analog_mac_fraction"] == 0.0 and m.totals()["utilization"] == 0.0


def test_all_analog_policy(resnet32, pcm):
    m = map_network(pcm.with_mapping("all-analog"), resnet32)
    assert m.digital_layers == []
    assert m.arrays_needed == 41          # + stem 27x16 and FC 64x10, one array each
    assert m.layer("conv1").row_bounds() == [(0, 27)]
    assert m.layer("linear").col_bounds() == [(0, 10)]
    assert m.arrays[0].layer == "conv1" and m.arrays[-1].layer == "linear"


def test_digital_fp32_chip(resnet32):
    m = map_network(load_chip("digital_fp32"), resnet32)
    assert m.arrays_needed == 0 and m.arrays_available == 0 and len(m.digital_layers) == 32
    assert m.plan.lines() == ["replication: no analog layers on this mapping, nothing to "
                              "replicate"]


def test_overrides_win_over_policy(resnet32, pcm):
    chip = pcm.with_mapping(overrides={"layer1.0.conv1": "digital", "linear": "analog"})
    m = map_network(chip, resnet32)
    assert m.placement("layer1.0.conv1") == "digital" and m.placement("linear") == "analog"
    assert m.placement("conv1") == "digital"
    assert m.arrays_needed == 39          # one array moved from layer1.0.conv1 to linear
    assert m.arrays[0].layer == "layer1.0.conv2" and m.arrays[-1].layer == "linear"
    assert m.to_dict()["overrides"] == {"layer1.0.conv1": "digital", "linear": "analog"}
    pl = placement_of(pcm.with_mapping("all-digital", {"layer3.0.conv2": "analog"}), resnet32)
    assert [n for n, p in pl.items() if p == "analog"] == ["layer3.0.conv2"]


def test_overrides_from_a_yaml_file(tmp_path, resnet32):
    p = tmp_path / "chip.yaml"
    p.write_text("extends: pcm_hybrid.yaml\nmapping:\n  replication: none\n  overrides:\n"
                 "    conv1: analog\n")
    m = map_network(load_chip(p), resnet32)
    assert m.placement("conv1") == "analog" and m.arrays_needed == 40


def test_unknown_override_name_suggests(resnet32, pcm):
    chip = pcm.with_mapping(overrides={"layer1.0.conv3": "digital"})
    with pytest.raises(MappingError) as e:
        map_network(chip, resnet32)
    msg = str(e.value)
    assert "mapping.overrides.layer1.0.conv3" in msg and pcm.file in msg
    assert "has no matrix layer 'layer1.0.conv3'" in msg
    assert "did you mean 'layer1.0.conv" in msg
    with pytest.raises(MappingError, match="no matrix layer 'bn1'"):
        map_network(pcm.with_mapping(overrides={"bn1": "digital"}), resnet32)


def test_digits_cnn_hybrid():
    m = map_network(load_chip("pcm_hybrid", overrides=ONE_COPY), digits_cnn())
    assert [(lm.name, lm.placement) for lm in m.layers] == [
        ("conv1", "digital"), ("conv2", "analog"), ("conv3", "analog"), ("linear", "digital")]
    assert m.arrays_needed == 2


# ------------------------------------------------------------------------------------------
# Capacity
# ------------------------------------------------------------------------------------------

def test_too_few_arrays(resnet32):
    chip = load_chip("pcm_hybrid", overrides={"chip.tiles.count": 8, **ONE_COPY})
    with pytest.raises(MappingError) as e:
        map_network(chip, resnet32)
    msg = str(e.value)
    assert "needs 39 arrays (512x512) but the chip has 8 (8 tiles x 1)" in msg
    assert chip.file in msg and "time_multiplex" in msg


def test_exactly_enough_arrays(resnet32):
    m = map_network(load_chip("pcm_hybrid", overrides={"chip.tiles.count": 39, **ONE_COPY}),
                    resnet32)
    assert m.rounds == 1 and m.tiles_used == 39


def test_time_multiplex_assigns_rounds(resnet32):
    chip = load_chip("pcm_hybrid", overrides={"chip.tiles.count": 8, **ONE_COPY,
                                             "mapping.time_multiplex": True})
    m = map_network(chip, resnet32)
    assert m.rounds == 5 and m.arrays_needed == 39 and m.arrays_available == 8
    assert [a.round for a in m.arrays] == [i // 8 for i in range(39)]
    assert [a.tile for a in m.arrays] == [i % 8 for i in range(39)]
    assert len({(a.round, a.tile) for a in m.arrays}) == 39           # no slot used twice
    assert m.tiles_used == 8 and m.totals()["rounds"] == 5


def test_several_arrays_per_tile(resnet32):
    chip = load_chip("pcm_hybrid", overrides={"chip.tiles.count": 20, **ONE_COPY,
                                             "chip.tiles.arrays_per_tile": 2})
    m = map_network(chip, resnet32)
    assert m.arrays_available == 40
    assert [(a.tile, a.slot) for a in m.arrays] == [(i // 2, i % 2) for i in range(39)]
    assert m.tiles_used == 20


def test_no_tiles_with_analog_layers(resnet32):
    for tm in (False, True):
        chip = load_chip("digital_fp32", overrides={"mapping.policy": "hybrid",
                                                   "mapping.time_multiplex": tm})
        with pytest.raises(MappingError, match="needs 39 arrays .* has 0"):
            map_network(chip, resnet32)


def test_no_digital_units_for_digital_layers(resnet32):
    chip = load_chip("pcm_hybrid", overrides={"chip.digital.units": 0, **ONE_COPY})
    with pytest.raises(MappingError, match="chip.digital.units is 0 but layer conv1"):
        map_network(chip, resnet32)
    assert map_network(chip.with_mapping("all-analog"), resnet32).arrays_needed == 41


def test_array_too_narrow_for_a_weight(resnet32):
    chip = load_chip("pcm_hybrid", overrides={"chip.tiles.array.cols": 1})
    with pytest.raises(MappingError, match="1 columns cannot hold a weight of 2 devices"):
        map_network(chip, resnet32)


def test_mapping_is_immutable(resnet32, pcm):
    m = map_network(pcm, resnet32)
    with pytest.raises(AttributeError):
        m.rounds = 2
    with pytest.raises(AttributeError):
        m.layers[1].arrays[0].tile = 5
    assert isinstance(m.layers, tuple) and isinstance(m.layers[1].arrays, tuple)
