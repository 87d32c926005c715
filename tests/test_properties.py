"""Property-based tests (hypothesis): for generated chip and workload YAML documents, ``--set``
arguments, golden files and weights archives, the loaders return a result or raise the project's
own error class (ArchsimError) - never another exception. Where a generated chip loads, mapping
and the timing simulation must also either work or fail with an ArchsimError.

Deterministic (``derandomize``) so CI never flakes; each test runs in a few seconds. To explore
further: ``ARCHSIM_HYPOTHESIS_EXAMPLES=5000 python -m pytest tests/test_properties.py`` (random
examples, 40x as many)."""

from __future__ import annotations

import atexit
import dataclasses
import io
import json
import math
import os
import shutil
import tempfile
import typing
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from archsim import config as cfg  # noqa: E402
from archsim.errors import ArchsimError  # noqa: E402
from archsim.regress import compare, load_golden  # noqa: E402
from archsim.workloads import WorkloadFile, load_weights, load_workload  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden" / "pcm_hybrid__digits_cnn.json"
EXAMPLES = int(os.environ.get("ARCHSIM_HYPOTHESIS_EXAMPLES", "0")) or None
FAST = settings(max_examples=EXAMPLES or 120, deadline=None, derandomize=EXAMPLES is None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
SIMULATING = settings(FAST, max_examples=max(40, (EXAMPLES or 0) // 10))

_SCRATCH = Path(tempfile.mkdtemp(prefix="archsim-properties-"))
atexit.register(shutil.rmtree, _SCRATCH, ignore_errors=True)


def scratch(name: str, data: bytes) -> Path:
    path = _SCRATCH / name
    path.write_bytes(data)
    return path


# ------------------------------------------------------------------------------------------
# Documents shaped like the schema (so generation reaches deep fields), with junk mixed in
# ------------------------------------------------------------------------------------------

junk = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20),
                 st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6),
                 st.lists(st.integers(-3, 3), max_size=3),
                 st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))


def _numbers(f) -> st.SearchStrategy:
    lo, hi = f.metadata.get("lo"), f.metadata.get("hi")
    edges = [v for v in (lo, hi) if v is not None]
    near = [st.sampled_from(edges + [e + d for e in edges for d in (-1, 1)])] if edges else []
    return st.one_of(*near, st.integers(-5, 5000), st.floats(-1e6, 1e6),
                     st.sampled_from([0, 1, 2, 0.5, 1e9, 1e-300, -1]))


def field_value(tp, f) -> st.SearchStrategy:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return st.one_of(schema_doc(tp), junk)
    if args and type(None) in args:
        return st.one_of(st.none(), field_value(next(a for a in args if a is not type(None)), f))
    if f.metadata.get("choices"):
        choice = st.sampled_from(list(f.metadata["choices"]))
        if origin in (typing.Mapping, dict) or tp is typing.Mapping or "Mapping" in str(tp):
            return st.one_of(st.dictionaries(st.sampled_from(["conv1", "conv2", "linear", "x"]),
                                             st.one_of(choice, junk), max_size=3), junk)
        return st.one_of(choice, junk)
    if origin is tuple:
        return st.one_of(st.lists(st.one_of(_numbers(f), junk), max_size=4), junk)
    if tp in (int, float):
        return st.one_of(_numbers(f), junk)
    if tp is bool:
        return st.one_of(st.booleans(), junk)
    return junk


def schema_doc(cls) -> st.SearchStrategy:
    hints = typing.get_type_hints(cls)
    optional = {f.name: field_value(hints[f.name], f) for f in dataclasses.fields(cls)
                if f.name not in ("sources", "file", "overrides")}
    return st.fixed_dictionaries({}, optional=optional)


chip_docs = st.one_of(schema_doc(cfg.ChipConfig),
                      st.builds(lambda d, parent: {"extends": parent, **d},
                                schema_doc(cfg.ChipConfig),
                                st.sampled_from(["pcm_hybrid", "hermes.yaml", "nowhere.yaml", 3])))


def _dump(doc) -> bytes:
    return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False).encode()


@FAST
@given(chip_docs)
def test_generated_chip_documents_load_or_raise_archsim_errors(doc):
    path = scratch("chip.yaml", _dump(doc))
    try:
        chip = cfg.load_chip(path)
    except ArchsimError:
        return
    # a chip that loads maps a network, or says why not
    from archsim.mapping import map_network
    from archsim.network import BUILTIN_NETWORKS
    try:
        map_network(chip, BUILTIN_NETWORKS["digits_cnn"]())
    except ArchsimError:
        pass


@SIMULATING
@given(st.fixed_dictionaries({}, optional={
    "chip.tiles.count": st.integers(0, 200), "chip.tiles.arrays_per_tile": st.integers(1, 8),
    "chip.tiles.array.rows": st.sampled_from([1, 2, 8, 64, 4096]),
    "chip.tiles.array.cols": st.sampled_from([1, 2, 3, 8, 64, 4096]),
    "chip.tiles.array.devices_per_weight": st.integers(1, 8),
    "chip.tiles.array.pair_layout": st.sampled_from(["columns", "unit-cell"]),
    "chip.tiles.adc.per_tile": st.integers(1, 600), "chip.tiles.dac.phases": st.integers(1, 16),
    "chip.tiles.dac.encoding": st.sampled_from(["pwm", "bit-serial"]),
    "chip.tiles.double_buffered": st.booleans(), "chip.digital.units": st.integers(0, 4),
    "chip.digital.systolic.rows": st.integers(1, 64),
    "chip.digital.systolic.dataflow": st.sampled_from(["os", "ws", "is"]),
    "chip.interconnect.kind": st.sampled_from(["mesh", "bus"]),
    "chip.interconnect.hop_latency_cycles": st.integers(0, 10),
    "chip.clock_mhz": st.floats(1e-3, 1e5), "chip.tiles.buffer.bytes_per_cycle": st.floats(1e-3, 1e3),
    "mapping.policy": st.sampled_from(["hybrid", "all-digital", "all-analog"]),
    "mapping.time_multiplex": st.booleans(),
    "chip.tiles.dac.bits": st.integers(2, 16), "chip.tiles.adc.bits": st.integers(2, 16),
    "chip.tiles.adc.output_bound": st.floats(1e-3, 1e3), "chip.tiles.adc.output_noise": st.floats(0, 10),
    "chip.device.model": st.sampled_from(["pcm", "ideal"]),
    "chip.device.g_max_us": st.floats(1e-3, 1e4),
    "chip.device.programming_noise_scale": st.floats(0, 100),
    "chip.device.drift_scale": st.floats(0, 100),
    "chip.device.weight_scaling": st.sampled_from(["per-array", "per-column"]),
    "chip.tiles.calibration.gdc_input": st.sampled_from(["one-hot", "all-ones"])}),
    st.booleans())
def test_valid_chips_simulate_or_raise_archsim_errors(overrides, accuracy):
    """Valid but odd chips through mapping, timing, accounting and (on a few images) the
    accuracy simulation."""
    from archsim import simulate
    try:
        result = simulate.run("pcm_hybrid", "digits_cnn", overrides=overrides, accuracy=accuracy,
                              inferences=2, progress=False, seeds=1, times_s=(86400.0,),
                              test_images=5, calib_images=5)
    except ArchsimError:
        return
    report = result.report()
    assert report["timing"]["latency_cycles"] > 0


@FAST
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode),
                 st.lists(st.sampled_from(["chip:", "  name: x", "  tiles:", "    count: 1e2",
                                           "    count: 3", "  - 1", "extends: hermes", "&a {",
                                           "*a", "!!float x", "!!timestamp 7", "? [a]", ": b",
                                           "  clock_mhz: .nan", "\t", "\xb5", "<<: *a"]),
                          max_size=8).map(lambda lines: "\n".join(lines).encode("utf-8"))))
def test_raw_bytes_as_chip_files(data):
    try:
        cfg.load_chip(scratch("raw.yaml", data))
    except ArchsimError:
        pass


@FAST
@given(schema_doc(WorkloadFile))
def test_generated_workload_documents(doc):
    path = scratch("workload.yaml", _dump(doc))
    try:
        wl = load_workload(path)
        wl.dataset("test")
    except ArchsimError:
        pass


# ------------------------------------------------------------------------------------------
# --set arguments
# ------------------------------------------------------------------------------------------

def _paths(cls, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in ("sources", "file", "overrides"):
            continue
        path = f"{prefix}{f.name}"
        yield path
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _paths(hints[f.name], path + ".")


SCHEMA_PATHS = sorted(_paths(cfg.ChipConfig))
set_values = st.one_of(st.text(max_size=12), st.sampled_from(
    ["4", "0", "-1", "1e9", "2.5e1", "1e-300", ".nan", ".inf", "true", "yes", "~", "[1, 2]",
     "{a: 1}", "{count: 3", "'x'", "010", "0x1F", "1_000", "!!float x", "&a 1", "*b", ""]))
set_args = st.one_of(
    st.text(max_size=40),
    st.builds(lambda p, extra, v: f"{p}{extra}={v}", st.sampled_from(SCHEMA_PATHS),
              st.sampled_from(["", "", "", ".x", "..", ".0", " "]), set_values))


@FAST
@given(st.lists(set_args, min_size=1, max_size=3))
def test_generated_set_arguments(args):
    try:
        overrides = cfg.SetArguments.parse(args)
        cfg.load_chip("pcm_hybrid", overrides)
    except ArchsimError as exc:
        if any(a.split("=", 1)[0].strip() in str(exc) for a in args if "=" in a) or \
                str(exc).startswith("--set "):
            return
        raise AssertionError(f"a --set error that names neither --set nor the path: {exc}")


# ------------------------------------------------------------------------------------------
# Golden files
# ------------------------------------------------------------------------------------------

_GOLDEN = json.loads(GOLDEN.read_text())
json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**20),
                                     st.floats(allow_nan=False, allow_infinity=False),
                                     st.text(max_size=5)),
                           lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5),
                                                                              c, max_size=3),
                           max_leaves=8)


def _mutate(data, path: list, value):
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return data


def _golden_paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _golden_paths(v, prefix + (k,))


GOLDEN_PATHS = [p for p in _golden_paths(_GOLDEN) if p]


@FAST
@given(st.one_of(st.binary(max_size=400),
                 st.builds(lambda p, v: json.dumps(_mutate(json.loads(GOLDEN.read_text()),
                                                           list(p), v)).encode(),
                           st.sampled_from(GOLDEN_PATHS), json_values),
                 st.builds(lambda n: GOLDEN.read_bytes()[:n], st.integers(0, 4000))))
def test_golden_files_from_random_bytes_and_mutations(data):
    path = scratch("golden.json", data)
    try:
        golden = load_golden(path)
    except ArchsimError:
        return
    # a golden file that passes the checks compares without crashing
    result = compare(golden, _GOLDEN, str(path), 0.01)
    result.summary()


# ------------------------------------------------------------------------------------------
# Weights archives
# ------------------------------------------------------------------------------------------

def _network():
    from archsim.network import BUILTIN_NETWORKS
    return BUILTIN_NETWORKS["digits_cnn"]()


NETWORK = _network()
PARAM_SHAPES = NETWORK.param_shapes()


def _zip(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members:
            zf.writestr(name, data)
    return buf.getvalue()


def _npz(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


array_values = st.one_of(
    hnp.arrays(st.sampled_from([np.float32, np.float64, np.int8, np.uint8, np.bool_,
                                np.complex64, np.float16]),
               hnp.array_shapes(min_dims=0, max_dims=4, max_side=4)),
    st.builds(lambda shape, v: np.full(shape, v, np.float64),
              st.sampled_from(list(PARAM_SHAPES.values())),
              st.sampled_from([0.0, np.nan, np.inf, -1.0, 1e39, 1e300])))
weight_names = st.one_of(st.sampled_from(sorted(PARAM_SHAPES)), st.text(max_size=6))


@FAST
@given(st.one_of(
    st.binary(max_size=300),
    st.lists(st.tuples(st.text(min_size=1, max_size=8), st.binary(max_size=80)), max_size=3,
             unique_by=lambda member: member[0]).map(_zip),
    st.dictionaries(weight_names, array_values, max_size=4).map(_npz),
    st.builds(lambda base, changes: _npz({**base, **changes}),
              st.just({k: np.zeros(s, np.float32) for k, s in PARAM_SHAPES.items()}),
              st.dictionaries(st.sampled_from(sorted(PARAM_SHAPES)), array_values, max_size=2))))
def test_weights_archives_from_random_bytes(data):
    try:
        params = load_weights(NETWORK, scratch("w.npz", data))
    except ArchsimError:
        return
    assert all(np.isfinite(v).all() and v.dtype == np.float32 for v in params.values())
    assert all(not k.endswith("running_var") or (v >= 0).all() for k, v in params.items())
    assert math.isfinite(sum(float(v.sum()) for v in params.values()))
