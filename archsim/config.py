"""Chip description: YAML -> frozen, validated dataclasses.

A chip file has two top-level sections, ``chip:`` (the hardware) and ``mapping:`` (how a network is
placed on it), and may start with ``extends: other.yaml`` to override another file field by field.
Every physical field carries its unit in its name. Fields left out take the dataclass default; the
energy/area figures that default to ``None`` are filled in by :mod:`archsim.components` from its
default tables scaled to the technology node, and the report says which.

Validation is driven by the dataclasses themselves (types from the annotations; ranges, physical
sanity limits, choices and required keys from field metadata), so a field is declared exactly once.
Every error names the file, the YAML path (``chip.tiles.adc.bits``) and what was expected; an unknown
key gets the closest valid name. Numbers must be finite. Files are read as UTF-8 with the YAML 1.2
core schema (``1e9`` and ``2.5e1`` are numbers, ``010`` is ten, ``yes`` is a string) and duplicate
keys are errors; see :func:`read_yaml`.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import yaml

from .errors import ConfigError

SHIPPED_CONFIGS = ("pcm_hybrid", "digital_fp32", "hermes")
DEFAULT_CHIP = "pcm_hybrid"


def spec(default: Any = dataclasses.MISSING, *, lo: float | None = None, hi: float | None = None,
         lo_open: bool = False, choices: tuple[str, ...] | None = None, doc: str = "", factory=None,
         why: str = "", required: bool | str = False, check=None):
    """A dataclass field with its validation rule: ``lo <= value <= hi`` (``lo < value`` when
    ``lo_open``), or one of ``choices``; or ``check(value)``, which returns the value to store or
    raises ``ValueError(message[, key inside the field])`` (a field of several shapes). ``why`` says
    where ``hi`` comes from (a physical sanity limit; the error message quotes it). ``required``
    (True, or the reason as text): a file must give the key (the default only serves the Python
    API)."""
    meta = {"lo": lo, "hi": hi, "lo_open": lo_open, "choices": choices, "doc": doc, "why": why,
            "required": required}
    if check is not None:
        meta["check"] = check
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# Physical sanity limits shared by several fields (the error message quotes them).
_SIDE = "largest crossbar side (IR drop and sneak paths)"
_SLOW = "a millisecond per step"
_WIDE = "1 MiB per cycle"

# --------------------------------------------------------------------------------------------
# The schema. Defaults are the embedded default chip (configs/pcm_hybrid.yaml states them again,
# each with its source).
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ArrayConfig:
    rows: int = spec(512, lo=1, hi=4096, why=_SIDE, doc="word lines (weight rows = inputs)")
    cols: int = spec(512, lo=1, hi=4096, why=_SIDE, doc="bit lines (device columns)")
    devices_per_weight: int = spec(2, lo=1, hi=8, doc="PCM devices per weight (2 = G+/G-)")
    pair_layout: str = spec("columns", choices=("columns", "unit-cell"),
                            doc="columns: the devices of a weight sit in separate columns, so an "
                                "array holds cols/devices_per_weight weight columns; unit-cell: "
                                "one column per weight (the cell holds all its devices)")
    read_time_ns: float = spec(10.0, lo=0, lo_open=True, hi=1e6, why=_SLOW,
                               doc="one array read (bit-serial input step)")
    energy_fj_per_device_read: float | None = spec(
        None, lo=0, doc="energy per device per read pass (per PWM phase / bit-serial step); "
                        "default: V_read^2 x g_max/4 x half the integration window")
    area_um2: float | None = spec(None, lo=0, doc="area of one array (devices + access)")

    @property
    def cols_per_weight(self) -> int:
        """Array columns one weight occupies."""
        return 1 if self.pair_layout == "unit-cell" else self.devices_per_weight

    @property
    def weight_cols(self) -> int:
        """Weight columns one array holds."""
        return self.cols // self.cols_per_weight


@dataclass(frozen=True)
class DacConfig:
    bits: int = spec(8, lo=2, hi=16, doc="signed: 2^(bits-1) - 1 levels per side, so at least 2")
    encoding: str = spec("pwm", choices=("pwm", "bit-serial"))
    t_lsb_ns: float = spec(1.0, lo=0, lo_open=True, hi=1e6, why=_SLOW, doc="PWM time per input LSB")
    phases: int = spec(1, lo=1, hi=16, doc="PWM phases per MVM (e.g. 4 on HERMES for accuracy)")
    energy_pj_per_row: float | None = spec(None, lo=0, doc="one row driven for one MVM phase "
                                            "(x phases, or x bits when bit-serial)")
    area_um2_per_row: float | None = spec(None, lo=0)


@dataclass(frozen=True)
class AdcConfig:
    bits: int = spec(8, lo=2, hi=16, doc="signed: 2^(bits-1) - 1 levels per side, so at least 2")
    per_tile: int = spec(512, lo=1, hi=65536, why="16 arrays of 4,096 columns",
                         doc="ADCs per tile, shared among the active columns")
    conversion_ns: float = spec(1.0, lo=0, lo_open=True, hi=1e6, why=_SLOW)
    energy_pj: float | None = spec(None, lo=0, doc="one conversion (one column, one PWM phase "
                                    "or bit-serial step)")
    area_um2: float | None = spec(None, lo=0, doc="one ADC")
    output_bound: float = spec(12.0, lo=0, lo_open=True,
                               doc="clip bound in normalized units (inputs and weights in [-1, 1]) "
                                   "with range: fixed")
    output_noise: float = spec(0.06, lo=0, doc="std of the additive Gaussian noise of each "
                                               "conversion, normalized units (aihwkit "
                                               "IOParameters.out_noise default)")
    range: str = spec("fixed", choices=("fixed", "calibrated"),
                      doc="fixed: every layer converts over +-output_bound; calibrated: each "
                          "layer's bound is set at programming time from calibration images, "
                          "at the range_percentile of its outputs (an ADC range that follows "
                          "the signal, as a programmable affine periphery allows)")
    range_percentile: float = spec(99.99, lo=50, hi=100,
                                   doc="with range: calibrated, the percentile (dimensionless) of |output| that "
                                       "sets a layer's bound")


@dataclass(frozen=True)
class AffineConfig:
    lanes: int = spec(64, lo=1, hi=65536, why="one per column of 16 arrays of 4,096 columns",
                      doc="per-column scale+offset operations per cycle")
    energy_pj_per_op: float | None = spec(None, lo=0)
    area_um2: float | None = spec(None, lo=0)


@dataclass(frozen=True)
class BufferConfig:
    kib: float = spec(64.0, lo=0, lo_open=True, hi=1048576, why="1 GiB")
    bytes_per_cycle: float = spec(64.0, lo=0, lo_open=True, hi=1048576, why=_WIDE)
    energy_pj_per_byte: float | None = spec(None, lo=0)
    area_um2: float | None = spec(None, lo=0)


@dataclass(frozen=True)
class CalibrationConfig:
    gdc_input: str = spec("one-hot", choices=("one-hot", "all-ones"),
                          doc="GDC calibration input: one-hot rows (aihwkit) or all ones (paper)")
    gdc_readout: str = spec("real", choices=("real", "ideal"),
                            doc="real: the GDC calibration inputs are read like inference (DAC, "
                                "a read of the noisy array, ADC with its noise); ideal: exact "
                                "conductances, no converters (for comparison only)")
    range_images: int = spec(256, lo=1, doc="calibration images that set the ADC ranges "
                                            "(adc.range: calibrated)")


@dataclass(frozen=True)
class TileConfig:
    count: int = spec(64, lo=0, hi=100_000, why="a wafer of 1 mm2 tiles; the timing model has one "
                       "process per tile", doc="0 for an all-digital chip")
    arrays_per_tile: int = spec(1, lo=1, hi=1024, why="ISAAC has 96 per tile")
    double_buffered: bool = spec(True, doc="input load / integrate / convert / write overlap")
    leakage_mw: float | None = spec(None, lo=0, doc="per tile, periphery leakage")
    power_gating: bool = spec(False, doc="switch idle tiles off: tiles without mapped arrays for "
                                         "the whole run, a mapped tile's periphery while it idles "
                                         "longer than wake_up_ns (it then pays wake_up_ns)")
    wake_up_ns: float = spec(100.0, lo=0, doc="time to power a gated tile back up")
    gated_leakage_fraction: float = spec(0.05, lo=0, hi=1, doc="leakage left in a gated tile")
    array: ArrayConfig = spec(factory=ArrayConfig)
    dac: DacConfig = spec(factory=DacConfig)
    adc: AdcConfig = spec(factory=AdcConfig)
    affine: AffineConfig = spec(factory=AffineConfig)
    buffer: BufferConfig = spec(factory=BufferConfig)
    calibration: CalibrationConfig = spec(factory=CalibrationConfig)


@dataclass(frozen=True)
class DeviceConfig:
    model: str = spec("pcm", choices=("pcm", "ideal"), doc="ideal: no noise, no drift")
    g_max_us: float = spec(25.0, lo=0, lo_open=True, hi=10_000, why="a 10 kOhm device")
    read_voltage_v: float = spec(0.2, lo=0, lo_open=True, hi=10, why="PCM reads stay far below "
                                  "the ~1 V switching threshold")
    t0_s: float = spec(20.0, lo=0, lo_open=True, hi=3.2e9, why="a century",
                        doc="drift reference time after programming")
    t_read_ns: float = spec(250.0, lo=0, lo_open=True, hi=1e9, why="one second",
                             doc="read duration in the 1/f noise model")
    programming_noise_scale: float = spec(1.0, lo=0)
    read_noise_scale: float = spec(1.0, lo=0)
    drift_scale: float = spec(1.0, lo=0, doc="multiplies the drift exponents")
    read_noise: str = spec("per-read", choices=("per-read", "frozen"),
                           doc="per-read: every read of the chip (GDC readout, each calibration "
                               "and test batch) draws fresh 1/f read noise; frozen: one draw per "
                               "(chip, time) shared by all reads (aihwkit's drift_weights "
                               "convention)")
    weight_scaling: str = spec("per-array", choices=("per-array", "per-column"))


@dataclass(frozen=True)
class SystolicConfig:
    rows: int = spec(32, lo=1, hi=4096, why="16 TPU v1 arrays side by side")
    cols: int = spec(32, lo=1, hi=4096, why="16 TPU v1 arrays side by side")
    dataflow: str = spec("ws", choices=("os", "ws", "is"))


@dataclass(frozen=True)
class SramConfig:
    kib: float = spec(512.0, lo=0, lo_open=True, hi=1048576, why="1 GiB")
    bytes_per_cycle: float = spec(128.0, lo=0, lo_open=True, hi=1048576, why=_WIDE)
    energy_pj_per_byte: float | None = spec(None, lo=0)
    area_um2_per_kib: float | None = spec(None, lo=0)


@dataclass(frozen=True)
class DigitalConfig:
    units: int = spec(1, lo=0, hi=100_000, why="as many as tiles")
    systolic: SystolicConfig = spec(factory=SystolicConfig)
    mac_energy_pj: float | None = spec(None, lo=0, doc="one FP32 multiply-add")
    mac_area_um2: float | None = spec(None, lo=0)
    leakage_mw: float | None = spec(None, lo=0, doc="per unit")
    sram: SramConfig = spec(factory=SramConfig)


@dataclass(frozen=True)
class InterconnectConfig:
    kind: str = spec("mesh", choices=("mesh", "bus"))
    bytes_per_cycle: float = spec(32.0, lo=0, lo_open=True, hi=1048576, why=_WIDE, doc="per link")
    hop_latency_cycles: int = spec(1, lo=0, hi=1_000_000, why=_SLOW)
    hop_length_mm: float = spec(0.5, lo=0, hi=300, why="a 300 mm wafer")
    energy_pj_per_byte_hop: float | None = spec(None, lo=0)
    area_um2_per_router: float | None = spec(None, lo=0)


@dataclass(frozen=True)
class Chip:
    name: str = spec("pcm-hybrid-512", required="every chip file names its chip, or extends "
                                                 "another chip file")
    technology_nm: float = spec(14.0, lo=1, hi=500)
    clock_mhz: float = spec(1000.0, lo=0, lo_open=True, hi=100_000, why="100 GHz")
    tiles: TileConfig = spec(factory=TileConfig)
    device: DeviceConfig = spec(factory=DeviceConfig)
    digital: DigitalConfig = spec(factory=DigitalConfig)
    interconnect: InterconnectConfig = spec(factory=InterconnectConfig)

    @property
    def clock_ns(self) -> float:
        return 1000.0 / self.clock_mhz


def _replication(value: Any) -> Any:
    """``mapping.replication``: none | auto | {layer: copies}."""
    if isinstance(value, str) and value in ("none", "auto"):
        return value
    if isinstance(value, dict):
        out = {}
        for key, copies in value.items():
            if isinstance(copies, bool) or not isinstance(copies, int) or copies < 1:
                raise ValueError(f"expected a number of copies >= 1, got {copies!r}", str(key))
            out[str(key)] = copies
        return types.MappingProxyType(out)
    raise ValueError(f"expected none | auto | a mapping layer -> copies, got {_describe(value)}")


@dataclass(frozen=True)
class MappingConfig:
    policy: str = spec("hybrid", choices=("hybrid", "all-digital", "all-analog"))
    overrides: Mapping[str, str] = spec(factory=lambda: types.MappingProxyType({}),
                                        choices=("analog", "digital"),
                                        doc="layer name -> analog | digital (wins over the policy)")
    time_multiplex: bool = spec(False, doc="reprogram arrays when the network does not fit")
    replication: str | Mapping[str, int] = spec(
        "none", check=_replication,
        doc="copies of an analog layer's weights on other arrays, its output pixels spread over "
            "them: none | auto (balance the pipeline with the arrays left) | {layer: copies}")
    packing: str = spec("none", choices=("none", "copies", "layers"),
                        doc="blocks sharing one array (block-diagonal: disjoint rows and columns): "
                            "none; copies (a layer's copies, several output pixels per MVM); "
                            "layers (also blocks of different layers, which take turns)")


@dataclass(frozen=True)
class ChipConfig:
    chip: Chip = spec(factory=Chip, required="a chip file describes a chip, or extends "
                                              "another chip file")
    mapping: MappingConfig = spec(factory=MappingConfig)
    # Where each leaf value came from: yaml path -> "file:line (# source: ...)". Not part of equality.
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    file: str = field(default="<defaults>", compare=False)
    # the --set PATH=VALUE arguments applied on top of the file, as typed
    overrides: tuple[str, ...] = field(default=(), compare=False)

    @property
    def origin(self) -> str:
        """Where the chip came from, for messages: the file, and the --set arguments on top."""
        return self.file + "".join(f" with --set {o}" for o in self.overrides)

    def with_mapping(self, policy: str | None = None, overrides: Mapping[str, str] | None = None
                     ) -> "ChipConfig":
        """The same chip with another mapping policy (the CLI's ``--mapping``)."""
        mapping = self.mapping
        if policy is not None:
            _check_choice(MappingConfig, "policy", policy, self.file, "mapping.policy")
            mapping = dataclasses.replace(mapping, policy=policy)
        if overrides is not None:
            mapping = dataclasses.replace(mapping, overrides=types.MappingProxyType(dict(overrides)))
        return dataclasses.replace(self, mapping=mapping)

    def to_dict(self) -> dict:
        """The resolved configuration as plain data (what the report and the golden hash see)."""
        return {"chip": _plain(self.chip), "mapping": _plain(self.mapping)}

    def content_hash(self) -> str:
        """sha256 of the resolved configuration, independent of file names and comments."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def source_of(self, yaml_path: str) -> str | None:
        return self.sources.get(yaml_path)


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

def path_exists(path: str | Path) -> bool:
    """``Path.exists`` that says False, instead of raising, for names the OS rejects (too long,
    a NUL byte)."""
    try:
        return Path(path).exists()
    except (OSError, ValueError):
        return False


def resolve_shipped(name_or_path: str | Path, package: str, folder: str, shipped: tuple[str, ...],
                    what: str) -> Path:
    """A path that exists, or the name of a file shipped in ``package`` (``pcm_hybrid``,
    ``hermes.yaml``, ``configs/hermes.yaml`` from any working directory)."""
    path = Path(name_or_path)
    if path_exists(path):
        return path
    stem = path.name[:-5] if path.name.endswith(".yaml") else path.name
    if str(path.parent) in ("", ".", folder):
        candidate = resources.files(package).joinpath(stem + ".yaml")
        try:
            if candidate.is_file():
                return Path(str(candidate))
        except (OSError, ValueError):
            pass
    raise ConfigError(str(name_or_path), "",
                      f"no such {what} (shipped {folder}: {', '.join(shipped)})")


def resolve_config_path(name_or_path: str | Path | None) -> Path:
    """A path, or the name of a shipped config."""
    return resolve_shipped(DEFAULT_CHIP if name_or_path is None else name_or_path,
                           "archsim.configs", "configs", SHIPPED_CONFIGS, "file")


def load_chip(name_or_path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
              ) -> ChipConfig:
    """Load, merge (``extends:``) and validate a chip YAML. ``overrides`` maps dotted YAML paths to
    values applied last (the CLI's ``--set chip.tiles.dac.phases=4``); an error an override
    causes names ``--set PATH=VALUE``, not the file."""
    path = resolve_config_path(name_or_path)
    data, sources = _load_merged(path, stack=())
    if not data:
        raise ConfigError(str(path), "", "empty chip file: expected a 'chip:' section (or "
                                         "'extends: other.yaml' to start from another chip)")
    text = getattr(overrides, "text", None)
    overrides = dict(overrides or {})
    for dotted, value in overrides.items():
        try:
            _set_dotted(data, dotted, value, str(path))
        except ConfigError as exc:
            raise _override_error(exc, dotted, value, text) from None
        sources[dotted] = f"override {dotted}={value!r}"
    try:
        top = _build(ChipConfig, data, str(path), "", sources, skip=("sources", "file", "overrides"))
    except ConfigError as exc:
        for dotted, value in overrides.items():
            if _within(exc.yaml_path, dotted) or _within(dotted, exc.yaml_path):
                raise _override_error(exc, dotted, value, text) from None
        # a bad value inherited through extends: name the file its line number refers to
        where = sources.get(exc.yaml_path, "").split(" ", 1)[0].rpartition(":")[0]
        if where and where != exc.file:
            raise ConfigError(where, exc.yaml_path, exc.message, exc.line) from None
        raise
    return dataclasses.replace(top, sources=types.MappingProxyType(dict(sources)), file=str(path),
                               overrides=tuple(format_override(d, v, text)
                                               for d, v in overrides.items()))


def _within(path: str, prefix: str) -> bool:
    """``path`` is ``prefix`` or lies inside it (``a.b.c`` and ``a.b[2]`` lie inside ``a.b``)."""
    return path == prefix or path.startswith((prefix + ".", prefix + "["))


class SetArguments(dict):
    """Overrides parsed from ``--set PATH=VALUE`` arguments (dotted path -> value) that remember
    each argument as typed, so an error quotes the user's text (``1e9``, not ``1000000000.0``)."""

    def __init__(self, items=(), text: Mapping[str, str] | None = None):
        super().__init__(items)
        self.text = dict(text or {})

    @classmethod
    def parse(cls, items) -> "SetArguments":
        out = cls()
        for item in items or ():
            key, value = parse_override(item)
            out[key] = value
            out.text[key] = item
        return out


def format_override(dotted: str, value: Any, text: Mapping[str, str] | None = None) -> str:
    """``PATH=VALUE`` as the user typed it after ``--set`` (or as they would have)."""
    if text and dotted in text:
        return text[dotted]
    if isinstance(value, str):
        return f"{dotted}={value}"
    try:
        return f"{dotted}={json.dumps(value)}"
    except (TypeError, ValueError):
        return f"{dotted}={value!r}"


def _override_error(exc: ConfigError, dotted: str, value: Any,
                    text: Mapping[str, str] | None = None) -> ConfigError:
    return ConfigError(None, exc.yaml_path, exc.message,
                       where=f"--set {format_override(dotted, value, text)}")


def parse_override(item: str) -> tuple[str, Any]:
    """One ``--set PATH=VALUE`` argument: the dotted path and the value read as YAML (the same
    reader as the files: ``1e9`` is a number). Errors name ``--set`` and the argument."""
    where = f"--set {item}"
    if "=" not in item:
        raise ConfigError(None, "", "expected PATH=VALUE, e.g. chip.tiles.dac.phases=4", where=where)
    key, text = item.split("=", 1)
    key = key.strip()
    if not key or any(not part or part != part.strip() for part in key.split(".")):
        raise ConfigError(None, key, "expected a dotted path such as chip.tiles.dac.phases",
                          where=where)
    try:
        value = _load_yaml_text(text) if text.strip() else None
    except _YamlProblem as exc:
        raise ConfigError(None, key, f"cannot read the value: {exc.problem}", where=where) from None
    return key, value


def parse_file(cls, path: str | Path, file_label: str | None = None):
    """Read one YAML file (no ``extends:``) into the dataclass ``cls``, with the same validation
    and error messages as a chip file (types, ranges, required keys). Used for workload files."""
    data, sources = _read_yaml(Path(path))
    return _build(cls, data, file_label or str(path), "", sources)


def from_data(cls, data: Any, file: str, yaml_path: str = ""):
    """Plain data (a parsed YAML section, or a :meth:`ChipConfig.to_dict`) into the dataclass
    ``cls``, with the same validation and error messages as a file; ``yaml_path`` is where the
    data sits in ``file``. Used for the ``run:`` section of a sweep file and to rebuild a resolved
    chip config on a sweep worker."""
    return _build(cls, data, file, yaml_path, {})


def _load_merged(path: Path, stack: tuple[Path, ...]) -> tuple[dict, dict[str, str]]:
    real = path.resolve()
    if real in stack:
        chain = " -> ".join(p.name for p in (*stack, real))
        raise ConfigError(str(path), "extends", f"extends cycle: {chain}")
    data, sources = _read_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data, sources
    if not isinstance(parent, str):
        raise ConfigError(str(path), "extends", f"expected a file name, got {parent!r}")
    parent_path = (path.parent / parent)
    if not path_exists(parent_path):
        try:
            parent_path = resolve_config_path(parent)
        except ConfigError:
            raise ConfigError(str(path), "extends", f"no such file: {parent}") from None
    base, base_sources = _load_merged(parent_path, (*stack, real))
    _deep_merge(base, data)
    base_sources.update(sources)
    return base, base_sources


# --------------------------------------------------------------------------------------------
# Reading YAML: UTF-8 text, the YAML 1.2 core schema, no duplicate keys
# --------------------------------------------------------------------------------------------

MAX_TEXT_BYTES = 16 * 1024 * 1024     # a chip, workload or sweep file is a few kB


def read_text(path: str | Path, what: str = "file", limit_bytes: int = MAX_TEXT_BYTES) -> str:
    """The UTF-8 text of ``path`` (a leading BOM dropped), or a :class:`ConfigError` naming the
    file: missing or unreadable, larger than ``limit_bytes`` (``/dev/zero`` included), or not
    UTF-8 (with the byte offset and line of the first bad byte)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(limit_bytes + 1)
    except FileNotFoundError:
        raise ConfigError(str(path), "", f"no such {what}") from None
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read: {exc.strerror or exc}") from None
    if len(raw) > limit_bytes:
        raise ConfigError(str(path), "", f"larger than {limit_bytes // (1024 * 1024)} MiB: "
                                         f"not a {what}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(str(path), "", f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset "
                                         f"{exc.start}, line {line}); save it as UTF-8", line) from None
    return text[1:] if text.startswith("\ufeff") else text


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader with the YAML 1.2 core schema's implicit types: ``1e9``, ``2.5e1``, ``1e-300``
    and ``.5`` are floats, ``010`` is ten (not octal eight), ``1:30`` and ``yes`` are strings,
    dates stay strings."""


_Yaml12Loader.yaml_implicit_resolvers = {}      # not SafeLoader's lists (they would be shared)
for _tag, _regexp, _first in (
        ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
        ("tag:yaml.org,2002:int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
        ("tag:yaml.org,2002:float", r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
                                    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$", "-+0123456789."),
        ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
        ("tag:yaml.org,2002:merge", r"^(?:<<)$", "<")):
    _Yaml12Loader.add_implicit_resolver(_tag, re.compile(_regexp), list(_first))


def _construct_int(loader: yaml.SafeLoader, node) -> int:
    text = str(loader.construct_scalar(node)).replace("_", "")
    sign, body = (-1, text[1:]) if text.startswith("-") else (1, text.lstrip("+"))
    try:
        if body[:2] in ("0x", "0X"):
            return sign * int(body[2:], 16)
        if body[:2] in ("0o", "0O"):
            return sign * int(body[2:], 8)
        return sign * int(body)
    except ValueError:
        raise yaml.constructor.ConstructorError(None, None, f"cannot read {text!r} as an integer",
                                                node.start_mark) from None


def _construct_float(loader: yaml.SafeLoader, node) -> float:
    text = str(loader.construct_scalar(node))
    try:
        return loader.construct_yaml_float(node)
    except (ValueError, TypeError):
        raise yaml.constructor.ConstructorError(None, None, f"cannot read {text!r} as a number",
                                                node.start_mark) from None


_Yaml12Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_Yaml12Loader.add_constructor("tag:yaml.org,2002:float", _construct_float)


class _YamlProblem(Exception):
    """PyYAML could not read the text: ``problem`` (one line) at ``line`` (1-based or None)."""

    def __init__(self, problem: str, line: int | None, yaml_path: str = ""):
        super().__init__(problem)
        self.problem, self.line, self.yaml_path = problem, line, yaml_path


def _compose(text: str):
    loader = None
    try:
        loader = _Yaml12Loader(text)        # its reader already rejects control characters
        node = loader.get_single_node()
        _check_duplicate_keys(node)
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise _YamlProblem(f"YAML syntax error: {problem}", line) from None
    except RecursionError:
        raise _YamlProblem("YAML nested too deeply", None) from None
    except (ValueError, TypeError, AttributeError, OverflowError) as exc:
        # PyYAML's own constructors on odd explicit tags (``!!timestamp x``)
        raise _YamlProblem(f"cannot read a YAML value ({exc})", None) from None
    finally:
        if loader is not None:
            loader.dispose()
    return node, data


def _load_yaml_text(text: str) -> Any:
    try:
        return _compose(text)[1]
    except _YamlProblem as exc:
        if exc.yaml_path:
            raise _YamlProblem(f"{exc.yaml_path}: {exc.problem}", exc.line) from None
        raise


def _check_duplicate_keys(node, prefix: str = "", seen: set | None = None) -> None:
    """A key given twice in one mapping is an error (PyYAML would keep the last silently)."""
    seen = set() if seen is None else seen
    if node is None or id(node) in seen:       # an alias: checked where its anchor is
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            path = f"{prefix}.{key}" if prefix else str(key)
            if key is not None and key_node.tag != "tag:yaml.org,2002:merge":
                if key in first:
                    raise _YamlProblem(f"duplicate key {key!r} (first given on line {first[key]})",
                                       key_node.start_mark.line + 1, path)
                first[key] = key_node.start_mark.line + 1
            _check_duplicate_keys(value_node, path, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_duplicate_keys(item, f"{prefix}[{i}]", seen)


def read_yaml(path: str | Path, what: str = "file") -> tuple[Any, dict[str, str]]:
    """Any YAML file (chip, workload, sweep): its data and the ``yaml path -> "file:line (source)"``
    of each scalar leaf. Errors are :class:`ConfigError` naming the file, line and YAML path: not
    UTF-8 (with the byte offset), syntax, duplicate keys, values PyYAML cannot read."""
    path = Path(path)
    text = read_text(path, what)
    try:
        node, data = _compose(text)
    except _YamlProblem as exc:
        raise ConfigError(str(path), exc.yaml_path, exc.problem, exc.line) from None
    sources: dict[str, str] = {}
    if node is not None:
        _collect_sources(node, "", text.splitlines(), str(path), sources, set())
    return data, sources


def _read_yaml(path: Path) -> tuple[dict, dict[str, str]]:
    data, sources = read_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), "", f"expected a mapping at the top, got {type(data).__name__}")
    return data, sources


def _collect_sources(node, prefix: str, lines: list[str], file: str, out: dict[str, str],
                     seen: set) -> None:
    """yaml path -> "file:line  source comment" for every scalar leaf."""
    if not isinstance(node, yaml.MappingNode) or id(node) in seen:
        return
    seen.add(id(node))
    for key_node, value_node in node.value:
        path = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
        if isinstance(value_node, yaml.MappingNode):
            _collect_sources(value_node, path, lines, file, out, seen)
            continue
        line_no = key_node.start_mark.line
        text = lines[line_no] if line_no < len(lines) else ""
        comment = ""
        if "# source:" in text:
            comment = text.split("# source:", 1)[1].strip()
        out[path] = f"{file}:{line_no + 1}" + (f" ({comment})" if comment else "")


def _deep_merge(base: dict, over: dict) -> None:
    for key, value in over.items():
        if value is None and isinstance(base.get(key), dict):
            continue    # an empty section (children commented out) keeps the parent's
        if isinstance(value, dict) and isinstance(base.get(key), dict) and key != "overrides":
            _deep_merge(base[key], value)
        else:
            base[key] = value


def _set_dotted(data: dict, dotted: str, value: Any, file: str) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        if node.get(key) is None:      # absent, or an empty section (``chip:``)
            node[key] = {}
        child = node[key]
        if not isinstance(child, dict):
            raise ConfigError(file, dotted, f"cannot set inside {key!r}, which is not a mapping")
        node = child
    node[keys[-1]] = value


def _check_choice(cls, name: str, value: Any, file: str, path: str) -> None:
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise ConfigError(file, path, f"expected one of {' | '.join(choices)}, got {value!r}")


def _build(cls, data: Any, file: str, prefix: str, sources: dict[str, str], skip=()):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(file, prefix, f"expected a mapping, got {_describe(data)}",
                          _line(sources, prefix))
    fields_by_name = {f.name: f for f in dataclasses.fields(cls) if f.name not in skip}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields_by_name:
            path = f"{prefix}.{key}" if prefix else str(key)
            close = difflib.get_close_matches(str(key), list(fields_by_name), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else \
                f"; expected one of {', '.join(fields_by_name)}"
            raise ConfigError(file, path, f"unknown key {key!r}{hint}", _line(sources, path))
    values = {}
    for name, f in fields_by_name.items():
        if name in data:
            path = f"{prefix}.{name}" if prefix else name
            values[name] = _convert(hints[name], f, data[name], file, path, sources)
    for name, f in fields_by_name.items():
        # checked after the values given, so a bad value is reported before a missing key
        if f.metadata.get("required") and data.get(name) is None:
            path = f"{prefix}.{name}" if prefix else name
            what = "section" if dataclasses.is_dataclass(hints[name]) else "key"
            reason = f.metadata["required"] if isinstance(f.metadata["required"], str) else "required"
            raise ConfigError(file, path, f"missing {what} {name!r} ({reason})",
                              _line(sources, prefix))
    return cls(**values)


def _line(sources: Mapping[str, str], path: str) -> int | None:
    src = sources.get(path, "")
    try:
        return int(src.split(" ", 1)[0].rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return None


def _number(x: float) -> str:
    """4096 -> '4,096'; 1e6 -> '1,000,000'; 0.5 -> '0.5'."""
    return f"{int(x):,}" if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}" if not isinstance(value, dict) else "a mapping"


def _convert(tp, f, value: Any, file: str, path: str, sources: dict[str, str]) -> Any:
    line = _line(sources, path)
    check = f.metadata.get("check")
    if check is not None:
        try:
            return check(value)
        except ValueError as exc:
            where = f"{path}.{exc.args[1]}" if len(exc.args) > 1 else path
            raise ConfigError(file, where, str(exc.args[0]), _line(sources, where) or line) from None
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, file, path, sources)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        tp = next(a for a in args if a is not type(None))
        return _convert(tp, f, value, file, path, sources)
    if origin in (Mapping, dict, collections.abc.Mapping) or tp is Mapping:
        if not isinstance(value, dict):
            raise ConfigError(file, path, f"expected a mapping, got {_describe(value)}", line)
        choices = f.metadata.get("choices")
        for k, v in value.items():
            if choices and v not in choices:
                raise ConfigError(file, f"{path}.{k}", f"expected {' | '.join(choices)}, got {v!r}",
                                  _line(sources, f"{path}.{k}"))
        return types.MappingProxyType({str(k): str(v) for k, v in value.items()})
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(file, path, f"expected a list, got {_describe(value)}", line)
        return tuple(_convert(args[0], f, v, file, f"{path}[{i}]", sources)
                     for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(file, path, f"expected true or false, got {_describe(value)}", line)
        return value
    if tp is int:
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)          # 1e3 is an integer
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(file, path, f"expected an integer, got {_describe(value)}", line)
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(file, path, f"expected a number, got {_describe(value)}", line)
        try:
            value = float(value)
        except OverflowError:
            value = math.inf
        if not math.isfinite(value):
            raise ConfigError(file, path, f"expected a finite number, got {value!r}", line)
    elif tp is str:
        if not isinstance(value, str):
            raise ConfigError(file, path, f"expected a string, got {_describe(value)}", line)
    meta = f.metadata
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(file, path, f"expected one of {' | '.join(meta['choices'])}, "
                                      f"got {value!r}", line)
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and (value < lo or (meta.get("lo_open") and value == lo)):
        relation = ">" if meta.get("lo_open") else ">="
        raise ConfigError(file, path, f"expected a value {relation} {_number(lo)}, got {value!r}",
                          line)
    if hi is not None and value > hi:
        why = f" (sanity limit: {meta['why']})" if meta.get("why") else ""
        raise ConfigError(file, path, f"expected a value <= {_number(hi)}{why}, got {value!r}", line)
    return value
