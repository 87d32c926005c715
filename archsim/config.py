"""Chip description: YAML -> frozen, validated dataclasses.

A chip file has two top-level sections, ``chip:`` (the hardware) and ``mapping:`` (how a network is
placed on it), and may start with ``extends: other.yaml`` to override another file field by field.
Every physical field carries its unit in its name. Fields left out take the dataclass default; the
energy/area figures that default to ``None`` are filled in by :mod:`archsim.components` from its
default tables scaled to the technology node, and the report says which.

Validation is driven by the dataclasses themselves (types from the annotations, ranges and choices
from field metadata), so a field is declared exactly once. Every error names the file, the YAML path
(``chip.tiles.adc.bits``) and what was expected; an unknown key gets the closest valid name.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import hashlib
import json
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
         check=None):
    """A dataclass field with its validation rule: ``lo <= value <= hi`` (``lo < value`` when
    ``lo_open``), or one of ``choices``; or ``check(value)``, which returns the value to store or
    raises ``ValueError(message[, key inside the field])`` (a field of several shapes)."""
    meta = {"lo": lo, "hi": hi, "lo_open": lo_open, "choices": choices, "doc": doc}
    if check is not None:
        meta["check"] = check
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# --------------------------------------------------------------------------------------------
# The schema. Defaults are the embedded default chip (configs/pcm_hybrid.yaml states them again,
# each with its source).
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ArrayConfig:
    rows: int = spec(512, lo=1, doc="word lines (weight rows = inputs)")
    cols: int = spec(512, lo=1, doc="bit lines (device columns)")
    devices_per_weight: int = spec(2, lo=1, hi=8, doc="PCM devices per weight (2 = G+/G-)")
    pair_layout: str = spec("columns", choices=("columns", "unit-cell"),
                            doc="columns: the devices of a weight sit in separate columns, so an "
                                "array holds cols/devices_per_weight weight columns; unit-cell: "
                                "one column per weight (the cell holds all its devices)")
    read_time_ns: float = spec(10.0, lo=0, lo_open=True, doc="one array read (bit-serial input step)")
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
    bits: int = spec(8, lo=1, hi=16)
    encoding: str = spec("pwm", choices=("pwm", "bit-serial"))
    t_lsb_ns: float = spec(1.0, lo=0, lo_open=True, doc="PWM time per input LSB")
    phases: int = spec(1, lo=1, hi=16, doc="PWM phases per MVM (e.g. 4 on HERMES for accuracy)")
    energy_pj_per_row: float | None = spec(None, lo=0, doc="one row driven for one MVM phase "
                                            "(x phases, or x bits when bit-serial)")
    area_um2_per_row: float | None = spec(None, lo=0)


@dataclass(frozen=True)
class AdcConfig:
    bits: int = spec(8, lo=1, hi=16)
    per_tile: int = spec(512, lo=1, doc="ADCs per tile, shared among the active columns")
    conversion_ns: float = spec(1.0, lo=0, lo_open=True)
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
    lanes: int = spec(64, lo=1, doc="per-column scale+offset operations per cycle")
    energy_pj_per_op: float | None = spec(None, lo=0)
    area_um2: float | None = spec(None, lo=0)


@dataclass(frozen=True)
class BufferConfig:
    kib: float = spec(64.0, lo=0, lo_open=True)
    bytes_per_cycle: float = spec(64.0, lo=0, lo_open=True)
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
    count: int = spec(64, lo=0, doc="0 for an all-digital chip")
    arrays_per_tile: int = spec(1, lo=1)
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
    g_max_us: float = spec(25.0, lo=0, lo_open=True)
    read_voltage_v: float = spec(0.2, lo=0, lo_open=True)
    t0_s: float = spec(20.0, lo=0, lo_open=True, doc="drift reference time after programming")
    t_read_ns: float = spec(250.0, lo=0, lo_open=True, doc="read duration in the 1/f noise model")
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
    rows: int = spec(32, lo=1)
    cols: int = spec(32, lo=1)
    dataflow: str = spec("ws", choices=("os", "ws", "is"))


@dataclass(frozen=True)
class SramConfig:
    kib: float = spec(512.0, lo=0, lo_open=True)
    bytes_per_cycle: float = spec(128.0, lo=0, lo_open=True)
    energy_pj_per_byte: float | None = spec(None, lo=0)
    area_um2_per_kib: float | None = spec(None, lo=0)


@dataclass(frozen=True)
class DigitalConfig:
    units: int = spec(1, lo=0)
    systolic: SystolicConfig = spec(factory=SystolicConfig)
    mac_energy_pj: float | None = spec(None, lo=0, doc="one FP32 multiply-add")
    mac_area_um2: float | None = spec(None, lo=0)
    leakage_mw: float | None = spec(None, lo=0, doc="per unit")
    sram: SramConfig = spec(factory=SramConfig)


@dataclass(frozen=True)
class InterconnectConfig:
    kind: str = spec("mesh", choices=("mesh", "bus"))
    bytes_per_cycle: float = spec(32.0, lo=0, lo_open=True, doc="per link")
    hop_latency_cycles: int = spec(1, lo=0)
    hop_length_mm: float = spec(0.5, lo=0)
    energy_pj_per_byte_hop: float | None = spec(None, lo=0)
    area_um2_per_router: float | None = spec(None, lo=0)


@dataclass(frozen=True)
class Chip:
    name: str = spec("pcm-hybrid-512")
    technology_nm: float = spec(14.0, lo=1, hi=500)
    clock_mhz: float = spec(1000.0, lo=0, lo_open=True)
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
    chip: Chip = spec(factory=Chip)
    mapping: MappingConfig = spec(factory=MappingConfig)
    # Where each leaf value came from: yaml path -> "file:line (# source: ...)". Not part of equality.
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    file: str = field(default="<defaults>", compare=False)

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

def resolve_shipped(name_or_path: str | Path, package: str, folder: str, shipped: tuple[str, ...],
                    what: str) -> Path:
    """A path that exists, or the name of a file shipped in ``package`` (``pcm_hybrid``,
    ``hermes.yaml``, ``configs/hermes.yaml`` from any working directory)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    stem = path.name[:-5] if path.name.endswith(".yaml") else path.name
    if str(path.parent) in ("", ".", folder):
        candidate = resources.files(package).joinpath(stem + ".yaml")
        if candidate.is_file():
            return Path(str(candidate))
    raise ConfigError(str(name_or_path), "",
                      f"no such {what} (shipped {folder}: {', '.join(shipped)})")


def resolve_config_path(name_or_path: str | Path | None) -> Path:
    """A path, or the name of a shipped config."""
    return resolve_shipped(DEFAULT_CHIP if name_or_path is None else name_or_path,
                           "archsim.configs", "configs", SHIPPED_CONFIGS, "file")


def load_chip(name_or_path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
              ) -> ChipConfig:
    """Load, merge (``extends:``) and validate a chip YAML. ``overrides`` maps dotted YAML paths to
    values applied last (the CLI's ``--set chip.tiles.dac.phases=4``)."""
    path = resolve_config_path(name_or_path)
    data, sources = _load_merged(path, stack=())
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value, str(path))
        sources[dotted] = f"override {dotted}={value!r}"
    try:
        top = _build(ChipConfig, data, str(path), "", sources, skip=("sources", "file"))
    except ConfigError as exc:
        # a bad value inherited through extends: name the file its line number refers to
        where = sources.get(exc.yaml_path, "").split(" ", 1)[0].rpartition(":")[0]
        if where and where != exc.file:
            raise ConfigError(where, exc.yaml_path, exc.message, exc.line) from None
        raise
    return dataclasses.replace(top, sources=types.MappingProxyType(dict(sources)), file=str(path))


def parse_file(cls, path: str | Path, file_label: str | None = None):
    """Read one YAML file (no ``extends:``) into the dataclass ``cls``, with the same validation
    and error messages as a chip file. Used for workload files."""
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
    if not parent_path.exists():
        try:
            parent_path = resolve_config_path(parent)
        except ConfigError:
            raise ConfigError(str(path), "extends", f"no such file: {parent}") from None
    base, base_sources = _load_merged(parent_path, (*stack, real))
    _deep_merge(base, data)
    base_sources.update(sources)
    return base, base_sources


def _read_yaml(path: Path) -> tuple[dict, dict[str, str]]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read: {exc.strerror}") from None
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else {}
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(str(path), "", f"YAML syntax error: {problem}", line) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), "", f"expected a mapping at the top, got {type(data).__name__}")
    sources: dict[str, str] = {}
    lines = text.splitlines()
    if node is not None:
        _collect_sources(node, "", lines, str(path), sources)
    return data, sources


def _collect_sources(node, prefix: str, lines: list[str], file: str, out: dict[str, str]) -> None:
    """yaml path -> "file:line  source comment" for every scalar leaf."""
    if not isinstance(node, yaml.MappingNode):
        return
    for key_node, value_node in node.value:
        path = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
        if isinstance(value_node, yaml.MappingNode):
            _collect_sources(value_node, path, lines, file, out)
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
        if name not in data:
            continue
        path = f"{prefix}.{name}" if prefix else name
        values[name] = _convert(hints[name], f, data[name], file, path, sources)
    return cls(**values)


def _line(sources: Mapping[str, str], path: str) -> int | None:
    src = sources.get(path, "")
    try:
        return int(src.split(" ", 1)[0].rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return None


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
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(file, path, f"expected an integer, got {_describe(value)}", line)
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(file, path, f"expected a number, got {_describe(value)}", line)
        value = float(value)
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
        raise ConfigError(file, path, f"expected a value {relation} {lo:g}, got {value!r}", line)
    if hi is not None and value > hi:
        raise ConfigError(file, path, f"expected a value <= {hi:g}, got {value!r}", line)
    return value
