"""Chip YAML -> frozen validated dataclasses: shipped configs, extends, sources, units, errors."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import pytest
import yaml

from archsim import config as cfg
from archsim.config import ChipConfig, load_chip
from archsim.errors import ArchsimError, ConfigError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
WORKLOADS = REPO / "workloads"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def line_of(path: Path, needle: str) -> int:
    """1-based number of the first line of ``path`` containing ``needle``."""
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if needle in line:
            return i
    raise AssertionError(f"{needle!r} not in {path}")


# ------------------------------------------------------------------------------------------
# Shipped configs
# ------------------------------------------------------------------------------------------

def test_pcm_hybrid_loads_with_its_values():
    c = load_chip("pcm_hybrid")
    t = c.chip.tiles
    assert c.chip.name == "pcm-hybrid-512"
    assert c.chip.technology_nm == 14.0 and isinstance(c.chip.technology_nm, float)
    assert c.chip.clock_mhz == 1000.0 and c.chip.clock_ns == 1.0
    assert (t.count, t.arrays_per_tile, t.double_buffered) == (64, 1, True)
    assert (t.array.rows, t.array.cols, t.array.devices_per_weight) == (512, 512, 2)
    assert t.array.pair_layout == "columns"
    assert t.array.cols_per_weight == 2 and t.array.weight_cols == 256
    assert (t.dac.bits, t.dac.encoding, t.dac.t_lsb_ns, t.dac.phases) == (8, "pwm", 1.0, 1)
    assert (t.adc.bits, t.adc.per_tile, t.adc.output_bound) == (8, 64, 12.0)
    assert t.buffer.kib == 64.0 and t.buffer.bytes_per_cycle == 64.0
    assert (c.chip.device.g_max_us, c.chip.device.t0_s, c.chip.device.t_read_ns) == (25.0, 20.0, 250.0)
    d = c.chip.digital
    assert (d.units, d.systolic.rows, d.systolic.cols, d.systolic.dataflow) == (1, 32, 32, "ws")
    assert (d.sram.kib, d.sram.bytes_per_cycle) == (512.0, 128.0)
    assert c.chip.interconnect.hop_length_mm == 0.5
    assert c.mapping.policy == "hybrid" and dict(c.mapping.overrides) == {}
    assert c.mapping.time_multiplex is False
    assert Path(c.file).name == "pcm_hybrid.yaml"


def test_digital_fp32_extends_pcm_hybrid():
    base = load_chip("pcm_hybrid")
    c = load_chip("digital_fp32")
    assert c.chip.name == "digital-fp32"
    assert c.chip.tiles.count == 0
    assert c.chip.digital.units == 4
    # flow mapping overrides only the keys it names; the rest of the section is inherited
    assert (c.chip.digital.sram.kib, c.chip.digital.sram.bytes_per_cycle) == (2048.0, 256.0)
    assert c.chip.digital.sram.energy_pj_per_byte == base.chip.digital.sram.energy_pj_per_byte
    assert c.mapping.policy == "all-digital"
    # everything not overridden comes from the parent
    assert c.chip.tiles.array == base.chip.tiles.array
    assert c.chip.tiles.adc == base.chip.tiles.adc
    assert c.chip.device == base.chip.device
    assert c.chip.interconnect == base.chip.interconnect
    assert c.chip.clock_mhz == base.chip.clock_mhz == 1000.0


def test_hermes_loads_with_its_values():
    c = load_chip("hermes.yaml")
    t = c.chip.tiles
    assert c.chip.name == "ibm-hermes"
    assert (t.count, t.arrays_per_tile, t.double_buffered) == (64, 1, False)
    assert (t.array.rows, t.array.cols, t.array.devices_per_weight) == (256, 256, 4)
    assert t.array.pair_layout == "unit-cell"
    assert t.array.cols_per_weight == 1 and t.array.weight_cols == 256
    assert (t.dac.bits, t.dac.t_lsb_ns, t.dac.phases) == (8, 0.372, 1)
    assert (t.adc.bits, t.adc.per_tile, t.adc.conversion_ns) == (8, 256, 76.8)
    assert t.affine.lanes == 256
    # 127 LSB x 0.372 ns integration + 256 LSB x 0.3 ns conversion + 9 ns load/affine/write
    # (see archsim/timing.py) = the published 133 ns per MVM
    assert 127 * t.dac.t_lsb_ns + t.adc.conversion_ns + 9 == pytest.approx(133.0, abs=0.1)


@pytest.mark.parametrize("name", cfg.SHIPPED_CONFIGS)
def test_shipped_config_loads_by_name_path_and_yaml_name(name):
    by_name = load_chip(name)
    by_file = load_chip(f"{name}.yaml")
    by_path = load_chip(CONFIGS / f"{name}.yaml")
    by_rel = load_chip(f"configs/{name}.yaml")
    assert by_name == by_file == by_path == by_rel
    assert by_name.content_hash() == by_path.content_hash()
    assert isinstance(by_name, ChipConfig)


def test_default_chip_is_pcm_hybrid():
    assert cfg.DEFAULT_CHIP == "pcm_hybrid"
    assert load_chip() == load_chip("pcm_hybrid")
    # the dataclass defaults are the embedded default chip, restated in pcm_hybrid.yaml
    defaults = ChipConfig()
    shipped = load_chip("pcm_hybrid")
    assert defaults.chip.tiles.array == shipped.chip.tiles.array
    assert defaults.chip.device == shipped.chip.device
    assert defaults.chip.tiles.dac == shipped.chip.tiles.dac


def test_config_is_frozen():
    c = load_chip("pcm_hybrid")
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.chip.tiles.adc.bits = 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.chip = None
    with pytest.raises(TypeError):
        c.sources["x"] = "y"
    with pytest.raises(TypeError):
        c.mapping.overrides["conv1"] = "analog"
    with pytest.raises(TypeError):
        c.with_mapping(overrides={"conv1": "analog"}).mapping.overrides["conv1"] = "digital"


def _numeric(value) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    if isinstance(value, dict):
        return any(_numeric(v) for v in value.values())
    if isinstance(value, list):
        return any(_numeric(v) for v in value)
    return False


def _numeric_lines_without_source(path: Path) -> list[str]:
    bad = []
    for no, line in enumerate(path.read_text().splitlines(), start=1):
        code, _, comment = line.partition("#")
        if ":" not in code:
            continue
        value_text = code.split(":", 1)[1].strip()
        if not value_text:
            continue
        value = yaml.safe_load(value_text)   # a scalar, or a flow mapping / list on one line
        if _numeric(value) and not re.match(r"\s*source:\s*\S", comment):
            bad.append(f"{path.name}:{no}: {line.strip()}")
    return bad


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")) + sorted(WORKLOADS.glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_number_in_shipped_files_has_a_source(path):
    assert _numeric_lines_without_source(path) == []


def test_source_check_catches_missing_comments(tmp_path):
    p = write(tmp_path, "x.yaml", "chip:\n  clock_mhz: 100   # source: me\n"
              "  tiles:\n    count: 3\n    array: {rows: 4, cols: 4}  # just a note\n"
              "  name: fine   # no number\n")
    assert _numeric_lines_without_source(p) == ["x.yaml:4: count: 3",
                                                "x.yaml:5: array: {rows: 4, cols: 4}  # just a note"]


@pytest.mark.parametrize("name", cfg.SHIPPED_CONFIGS)
def test_every_numeric_leaf_has_a_source_comment(name):
    """The same rule through the loader: every numeric value of the merged config names a source."""
    c = load_chip(name)
    data = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    missing = [p for p, s in c.sources.items() if "(" not in s and p != "extends"
               and _numeric(_lookup(data, p, name))]
    assert missing == []


def _lookup(data, dotted, name):
    node = data
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return None   # inherited from the parent file: checked there
        node = node[key]
    return node


def test_source_of_names_file_line_and_comment():
    c = load_chip("pcm_hybrid")
    path = CONFIGS / "pcm_hybrid.yaml"
    src = c.source_of("chip.tiles.adc.bits")
    line = line_of(path, "(8-bit outputs)")
    assert src == f"{c.file}:{line} (Joshi 2020 (8-bit outputs))"
    assert c.source_of("chip.device.g_max_us").endswith("(Joshi 2020 (g_max = 25 uS))")
    # keys inside a flow mapping share their line's comment
    sys_line = line_of(path, "systolic:")
    for key in ("rows", "cols", "dataflow"):
        assert c.source_of(f"chip.digital.systolic.{key}") == \
            f"{c.file}:{sys_line} (derived: TPU-style weight-stationary array)"
    assert c.source_of("chip.no.such.field") is None


def test_source_of_follows_extends():
    c = load_chip("digital_fp32")
    own = CONFIGS / "digital_fp32.yaml"
    parent = CONFIGS / "pcm_hybrid.yaml"
    assert c.source_of("chip.tiles.count").startswith(f"{own}:{line_of(own, 'count: 0')} (derived")
    assert c.source_of("chip.digital.sram.kib").startswith(f"{own}:{line_of(own, 'sram:')} ")
    # inherited values keep the parent's file and line
    adc = c.source_of("chip.tiles.adc.bits")
    assert adc.startswith(f"{parent}:{line_of(parent, '(8-bit outputs)')} ")
    assert "(Joshi 2020 (8-bit outputs))" in adc


def test_overrides_apply_last_and_are_recorded():
    c = load_chip("pcm_hybrid", overrides={"chip.tiles.dac.phases": 4, "chip.tiles.count": 8,
                                          "mapping.policy": "all-analog"})
    assert c.chip.tiles.dac.phases == 4
    assert c.chip.tiles.count == 8
    assert c.mapping.policy == "all-analog"
    assert c.source_of("chip.tiles.dac.phases") == "override chip.tiles.dac.phases=4"
    assert c.content_hash() != load_chip("pcm_hybrid").content_hash()
    # an override that only restates the file's value leaves the resolved config (and hash) as is
    same = load_chip("pcm_hybrid", overrides={"chip.tiles.count": 64})
    assert same == load_chip("pcm_hybrid")
    assert same.content_hash() == load_chip("pcm_hybrid").content_hash()


def test_overrides_are_validated_like_the_file():
    with pytest.raises(ConfigError) as e:
        load_chip("pcm_hybrid", overrides={"chip.tiles.adc.bitz": 4})
    assert e.value.yaml_path == "chip.tiles.adc.bitz"
    assert "did you mean 'bits'?" in e.value.message
    with pytest.raises(ConfigError) as e:
        load_chip("pcm_hybrid", overrides={"chip.tiles.dac.phases": 0})
    assert e.value.yaml_path == "chip.tiles.dac.phases"
    assert "expected a value >= 1, got 0" in e.value.message
    with pytest.raises(ConfigError) as e:
        load_chip("pcm_hybrid", overrides={"chip.name.x": 1})
    assert e.value.yaml_path == "chip.name.x"


def test_with_mapping():
    c = load_chip("pcm_hybrid")
    d = c.with_mapping("all-digital", {"layer1.0.conv1": "analog"})
    assert d.mapping.policy == "all-digital"
    assert dict(d.mapping.overrides) == {"layer1.0.conv1": "analog"}
    assert d.chip == c.chip
    assert c.mapping.policy == "hybrid"     # the original is untouched
    with pytest.raises(ConfigError) as e:
        c.with_mapping("half-analog")
    assert e.value.yaml_path == "mapping.policy"
    assert "expected one of hybrid | all-digital | all-analog, got 'half-analog'" in str(e.value)


def test_to_dict_and_hash_ignore_file_names_and_comments(tmp_path):
    text = (CONFIGS / "hermes.yaml").read_text()
    stripped = "\n".join(line.split("#", 1)[0].rstrip() for line in text.splitlines())
    copy = write(tmp_path, "renamed.yaml", stripped)
    a, b = load_chip("hermes"), load_chip(copy)
    assert a == b and a.content_hash() == b.content_hash()
    assert len(a.content_hash()) == 64
    assert a.to_dict()["chip"]["tiles"]["array"]["rows"] == 256
    assert a.to_dict()["mapping"]["policy"] == "hybrid"
    assert b.source_of("chip.tiles.count") == f"{copy}:{line_of(copy, 'count: 64')}"


# ------------------------------------------------------------------------------------------
# Units in names
# ------------------------------------------------------------------------------------------

UNIT_TOKENS = {"ns", "s", "us", "mw", "w", "v", "pj", "fj", "nj", "um2", "mm2", "mm", "um", "nm",
               "mhz", "ghz", "kib", "bytes", "cycles", "bits"}


def _all_fields(cls, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from _all_fields(tp, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f, tp


def _is_float(tp) -> bool:
    return tp is float or (typing.get_origin(tp) in (typing.Union, __import__("types").UnionType)
                           and float in typing.get_args(tp))


def test_every_physical_field_has_a_unit_in_its_name():
    """Float fields are physical quantities: each must carry a unit token in its name, unless it is
    a dimensionless factor (``*_scale``, or documented as normalized / a fraction / a factor)."""
    offenders = []
    for path, f, tp in _all_fields(cfg.Chip, "chip."):
        if not _is_float(tp):
            continue
        tokens = set(f.name.split("_"))
        doc = f.metadata.get("doc", "").lower()
        dimensionless = f.name.endswith(("_scale", "_factor", "_fraction")) or any(
            w in doc for w in ("normalized", "dimensionless", "fraction", "factor", "ratio"))
        if not tokens & UNIT_TOKENS and not dimensionless:
            offenders.append(path)
    assert offenders == []
    # and the fields the issue names explicitly
    names = {p for p, _, _ in _all_fields(cfg.Chip, "chip.")}
    for expected in ("chip.clock_mhz", "chip.technology_nm", "chip.tiles.dac.t_lsb_ns",
                     "chip.tiles.adc.conversion_ns", "chip.device.g_max_us",
                     "chip.device.read_voltage_v", "chip.interconnect.hop_length_mm"):
        assert expected in names


# ------------------------------------------------------------------------------------------
# Errors: one ConfigError naming file, YAML path and what was expected
# ------------------------------------------------------------------------------------------

def load_error(path, **kw) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        load_chip(path, **kw)
    err = e.value
    assert isinstance(err, ArchsimError)
    assert "\n" not in str(err)
    return err


def test_unknown_key_suggests_closest(tmp_path):
    p = write(tmp_path, "bad.yaml", "chip:\n  tiles:\n    adc:\n      bitz: 8\n")
    err = load_error(p)
    assert err.file == str(p)
    assert err.yaml_path == "chip.tiles.adc.bitz"
    assert err.line == 4
    assert err.message == "unknown key 'bitz'; did you mean 'bits'?"
    assert str(err) == f"{p}:4: chip.tiles.adc.bitz: unknown key 'bitz'; did you mean 'bits'?"


def test_unknown_key_without_close_match_lists_valid_keys(tmp_path):
    p = write(tmp_path, "bad.yaml", "chip:\n  systolic: 3\n")
    err = load_error(p)
    assert err.yaml_path == "chip.systolic"
    assert "unknown key 'systolic'" in err.message
    for key in ("name", "technology_nm", "clock_mhz", "tiles", "digital"):
        assert key in err.message


def test_unknown_top_level_section(tmp_path):
    err = load_error(write(tmp_path, "bad.yaml", "chips:\n  name: x\n"))
    assert err.yaml_path == "chips" and "did you mean 'chip'?" in err.message


@pytest.mark.parametrize("yaml_text, path, expected", [
    ("chip:\n  tiles:\n    adc:\n      bits: eight\n", "chip.tiles.adc.bits",
     "expected an integer, got str 'eight'"),
    ("chip:\n  tiles:\n    adc:\n      bits: 8.5\n", "chip.tiles.adc.bits",
     "expected an integer, got float 8.5"),
    ("chip:\n  tiles:\n    count: true\n", "chip.tiles.count", "expected an integer, got bool True"),
    ("chip:\n  clock_mhz: fast\n", "chip.clock_mhz", "expected a number, got str 'fast'"),
    ("chip:\n  tiles:\n    double_buffered: 1\n", "chip.tiles.double_buffered",
     "expected true or false, got int 1"),
    ("chip:\n  name: 5\n", "chip.name", "expected a string, got int 5"),
    ("chip:\n  tiles: 5\n", "chip.tiles", "expected a mapping, got int 5"),
    ("mapping:\n  overrides: [conv1]\n", "mapping.overrides", "expected a mapping"),
], ids=["int-str", "int-float", "int-bool", "float-str", "bool-int", "str-int", "section", "dict"])
def test_wrong_type(tmp_path, yaml_text, path, expected):
    p = write(tmp_path, "bad.yaml", yaml_text)
    err = load_error(p)
    assert (err.file, err.yaml_path) == (str(p), path)
    assert expected in err.message
    assert err.line == yaml_text.count("\n")   # the offending line is the last one


@pytest.mark.parametrize("yaml_text, path, expected", [
    ("chip:\n  tiles:\n    adc:\n      bits: 1\n", "chip.tiles.adc.bits", "expected a value >= 2, got 1"),
    ("chip:\n  tiles:\n    adc:\n      bits: 17\n", "chip.tiles.adc.bits",
     "expected a value <= 16, got 17"),
    ("chip:\n  clock_mhz: 0\n", "chip.clock_mhz", "expected a value > 0, got 0.0"),
    ("chip:\n  tiles:\n    count: -1\n", "chip.tiles.count", "expected a value >= 0, got -1"),
    ("chip:\n  tiles:\n    dac:\n      encoding: pam\n", "chip.tiles.dac.encoding",
     "expected one of pwm | bit-serial, got 'pam'"),
    ("mapping:\n  policy: mostly-analog\n", "mapping.policy",
     "expected one of hybrid | all-digital | all-analog, got 'mostly-analog'"),
    ("mapping:\n  overrides:\n    conv1: analogue\n", "mapping.overrides.conv1",
     "expected analog | digital, got 'analogue'"),
], ids=["below", "above", "open-bound", "negative", "choice", "policy", "override-value"])
def test_value_out_of_range(tmp_path, yaml_text, path, expected):
    p = write(tmp_path, "bad.yaml", yaml_text)
    err = load_error(p)
    assert (err.file, err.yaml_path) == (str(p), path)
    assert expected in err.message
    assert str(err).startswith(f"{p}:{yaml_text.count(chr(10))}: {path}: ")


def test_missing_file(tmp_path):
    err = load_error(tmp_path / "nope.yaml")
    assert err.file == str(tmp_path / "nope.yaml")
    assert "no such file" in err.message
    for name in cfg.SHIPPED_CONFIGS:
        assert name in err.message


def test_unknown_shipped_name():
    err = load_error("pcm_hybird")
    assert err.file == "pcm_hybird" and "no such file" in err.message


def test_yaml_syntax_error(tmp_path):
    p = write(tmp_path, "bad.yaml", "chip:\n  name: x\n  tiles: {count: 3\n  clock_mhz: 5\n")
    err = load_error(p)
    assert err.file == str(p)
    assert err.message.startswith("YAML syntax error: ")
    assert err.line is not None and 3 <= err.line <= 5
    assert str(err).startswith(f"{p}:{err.line}: YAML syntax error")


def test_tab_indentation_is_a_syntax_error(tmp_path):
    err = load_error(write(tmp_path, "bad.yaml", "chip:\n\tname: x\n"))
    assert err.message.startswith("YAML syntax error") and err.line == 2


def test_top_level_must_be_a_mapping(tmp_path):
    err = load_error(write(tmp_path, "bad.yaml", "- 1\n- 2\n"))
    assert "expected a mapping at the top, got list" in err.message


def test_empty_file_is_an_error_unless_it_extends(tmp_path):
    """An empty file used to run the dataclass defaults under the shipped chip's name."""
    for text in ("# nothing\n", ""):
        err = load_error(write(tmp_path, "empty.yaml", text))
        assert err.message.startswith("empty chip file: expected a 'chip:' section")
    err = load_error(write(tmp_path, "bare.yaml", "chip:\n"))
    assert (err.yaml_path, err.message) == (
        "chip.name", "missing key 'name' (every chip file names its chip, or extends another "
                     "chip file)")
    err = load_error(write(tmp_path, "mapping_only.yaml", "mapping:\n  policy: hybrid\n"))
    assert err.yaml_path == "chip" and err.message.startswith("missing section 'chip'")
    assert load_chip(write(tmp_path, "child.yaml", "extends: pcm_hybrid\n")) == load_chip("pcm_hybrid")
    named = load_chip(write(tmp_path, "named.yaml", "chip:\n  name: mine\n"))
    assert named.chip == dataclasses.replace(ChipConfig().chip, name="mine")


def test_extends_merges_field_by_field(tmp_path):
    p = write(tmp_path, "child.yaml", "extends: pcm_hybrid.yaml\nchip:\n  tiles:\n    adc:\n"
              "      bits: 6   # source: test\n")
    base, c = load_chip("pcm_hybrid"), load_chip(p)
    assert c.chip.tiles.adc.bits == 6
    assert c.chip.tiles.adc.per_tile == base.chip.tiles.adc.per_tile == 64
    assert c.chip.tiles.dac == base.chip.tiles.dac
    assert c.source_of("chip.tiles.adc.bits") == f"{p}:5 (test)"
    assert str(CONFIGS / "pcm_hybrid.yaml") in c.source_of("chip.tiles.adc.per_tile")


def test_extends_chain_of_three(tmp_path):
    write(tmp_path, "a.yaml", "chip:\n  clock_mhz: 500\n  tiles:\n    count: 10\n")
    write(tmp_path, "b.yaml", "extends: a.yaml\nchip:\n  tiles:\n    count: 20\n")
    c = load_chip(write(tmp_path, "c.yaml", "extends: b.yaml\nchip:\n  name: c\n"))
    assert (c.chip.name, c.chip.clock_mhz, c.chip.tiles.count) == ("c", 500.0, 20)


def test_extends_cycle(tmp_path):
    write(tmp_path, "a.yaml", "extends: b.yaml\nchip:\n  name: a\n")
    write(tmp_path, "b.yaml", "extends: a.yaml\n")
    err = load_error(tmp_path / "a.yaml")
    assert err.yaml_path == "extends"
    assert err.file == str(tmp_path / "a.yaml")
    assert err.message == "extends cycle: a.yaml -> b.yaml -> a.yaml"


def test_extends_self(tmp_path):
    err = load_error(write(tmp_path, "self.yaml", "extends: self.yaml\n"))
    assert err.message == "extends cycle: self.yaml -> self.yaml"


def test_extends_missing_parent(tmp_path):
    p = write(tmp_path, "child.yaml", "extends: nowhere.yaml\n")
    err = load_error(p)
    assert (err.file, err.yaml_path) == (str(p), "extends")
    assert "no such file: nowhere.yaml" in err.message


def test_extends_not_a_string(tmp_path):
    err = load_error(write(tmp_path, "child.yaml", "extends: [a.yaml]\n"))
    assert err.yaml_path == "extends" and "expected a file name" in err.message


def test_error_in_parent_names_the_parent_file(tmp_path):
    parent = write(tmp_path, "parent.yaml", "chip:\n  tiles:\n    count: -3\n")
    err = load_error(write(tmp_path, "child.yaml", "extends: parent.yaml\nchip:\n  name: x\n"))
    # the bad value was written in parent.yaml, line 3: the error points there
    assert (err.file, err.line, err.yaml_path) == (str(parent), 3, "chip.tiles.count")
    assert "expected a value >= 0, got -3" in err.message


def test_config_error_str_format():
    assert str(ConfigError("f.yaml", "chip.x", "bad", 3)) == "f.yaml:3: chip.x: bad"
    assert str(ConfigError("f.yaml", "", "bad")) == "f.yaml: bad"
    assert str(ConfigError(None, "chip.x", "bad")) == "<config>: chip.x: bad"


def test_mapping_overrides_from_yaml(tmp_path):
    write(tmp_path, "base.yaml", "chip:\n  name: base\n"
          "mapping:\n  overrides: {conv1: analog, linear: analog}\n")
    p = write(tmp_path, "child.yaml", "extends: base.yaml\nmapping:\n  policy: all-digital\n"
              "  overrides:\n    layer1.0.conv1: analog\n")
    assert dict(load_chip(tmp_path / "base.yaml").mapping.overrides) == \
        {"conv1": "analog", "linear": "analog"}
    c = load_chip(p)
    assert c.mapping.policy == "all-digital"
    # a child's overrides replace the parent's as a whole (not merged key by key)
    assert dict(c.mapping.overrides) == {"layer1.0.conv1": "analog"}
    assert c.source_of("mapping.overrides.layer1.0.conv1") == f"{p}:5"


def test_empty_section_in_child_keeps_the_parent(tmp_path):
    p = write(tmp_path, "child.yaml", "extends: pcm_hybrid.yaml\nchip:\n  tiles:\n"
              "    # adc:\n    #   bits: 6\n")
    assert load_chip(p) == load_chip("pcm_hybrid")
    assert load_chip(p).chip.tiles.adc.per_tile == 64


def test_override_into_an_empty_section(tmp_path):
    p = write(tmp_path, "empty.yaml", "chip:\n  name: e\n  tiles:\n")
    c = load_chip(p, overrides={"chip.tiles.count": 3})
    assert c.chip.tiles.count == 3
    with pytest.raises(ConfigError) as e:
        load_chip(p, overrides={"chip.name.first": 3})
    assert e.value.yaml_path == "chip.name.first"
    assert str(e.value) == "--set chip.name.first=3: cannot set inside 'name', which is not a mapping"


def test_directory_instead_of_file(tmp_path):
    err = load_error(tmp_path)
    assert err.file == str(tmp_path) and err.message.startswith("cannot read")
