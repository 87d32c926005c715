"""Cycle-count regression: record the timing simulation's cycle counts in a golden JSON file and
say exactly what moved when a chip model changes.

A golden file holds per-layer start/end/busy/stall cycles, the total latency, the steady-state
interval and throughput, and every per-component action count, plus a content hash of the resolved
chip config and of the workload it was made from, so a mismatch can say "the config changed" apart
from "the cycles changed".

In your own test suite::

    from archsim.regress import check_cycles

    def test_my_chip_cycles():
        check_cycles("my_chip.yaml", "workloads/resnet32_cifar10.yaml",
                     "tests/golden/my_chip.json").assert_ok()
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DataError

FORMAT = "archsim-golden"
VERSION = 1
LAYER_QUANTITIES = ("start_cycle", "end_cycle", "busy_cycles", "stall_cycles")
TOTAL_QUANTITIES = ("latency_cycles", "total_cycles", "interval_cycles",
                    "throughput_inferences_per_s")


def workload_hash(workload) -> str:
    """sha256 of what the timing depends on: the network graph and the workload spec."""
    net = workload.network
    text = json.dumps({"network": [layer.describe() for layer in net.layers],
                       "input": list(net.input_shape), "name": workload.spec.name},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def snapshot(mapping, timing, workload) -> dict:
    """The golden record of one timing run."""
    chip = mapping.chip
    return {
        "format": FORMAT, "version": VERSION,
        "chip": {"name": chip.chip.name, "file": Path(chip.file).name, "hash": chip.content_hash()},
        "workload": {"name": workload.spec.name, "file": Path(workload.file).name,
                     "hash": workload_hash(workload)},
        "inferences": timing.inferences,
        "totals": {q: getattr(timing, q) for q in TOTAL_QUANTITIES},
        "layers": {lt.name: {q: getattr(lt, q) for q in LAYER_QUANTITIES} for lt in timing.layers},
        "actions": dict(sorted(timing.actions.items())),
    }


@dataclass(frozen=True)
class Change:
    scope: str          # layer name, "total" or "actions"
    quantity: str
    golden: Any
    now: Any

    @property
    def delta(self) -> float | None:
        if isinstance(self.golden, (int, float)) and isinstance(self.now, (int, float)):
            return self.now - self.golden
        return None

    @property
    def delta_pct(self) -> float | None:
        d = self.delta
        if d is None or not self.golden:
            return None
        return 100.0 * d / self.golden


@dataclass(frozen=True)
class Comparison:
    golden_file: str
    changes: tuple[Change, ...]
    notes: tuple[str, ...] = field(default=())
    tolerance: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.changes

    @property
    def moved_layers(self) -> list[str]:
        seen: list[str] = []
        for c in self.changes:
            if c.scope not in ("total", "actions") and c.scope not in seen:
                seen.append(c.scope)
        return seen

    def table(self) -> str:
        from tabulate import tabulate
        rows = []
        for c in self.changes:
            rows.append([c.scope, c.quantity, _fmt(c.golden), _fmt(c.now),
                         "" if c.delta is None else _fmt(c.delta, signed=True),
                         "" if c.delta_pct is None else f"{c.delta_pct:+.2f}%"])
        return tabulate(rows, headers=["layer", "quantity", "golden", "now", "delta", "delta %"],
                        disable_numparse=True)

    def summary(self) -> str:
        lines = list(self.notes)
        if self.ok:
            tol = "exact" if self.tolerance == 0 else f"within {100 * self.tolerance:g}%"
            lines.append(f"cycle counts match {self.golden_file} ({tol})")
        else:
            layers = self.moved_layers
            lines.append(f"{len(self.changes)} quantities moved against {self.golden_file}"
                         + (f"; layers: {', '.join(layers)}" if layers else ""))
            lines.append(self.table())
        return "\n".join(lines)

    def assert_ok(self) -> None:
        """For pytest: raise AssertionError with the table of what moved."""
        if not self.ok:
            raise AssertionError(self.summary())


def _fmt(value: Any, signed: bool = False) -> str:
    if value is None:
        return "(absent)"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:+.6g}" if signed else f"{value:.6g}"
    if isinstance(value, (int, float)):
        return f"{int(value):+,}" if signed else f"{int(value):,}"
    return str(value)


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _unique_keys(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value >= 0)


def load_golden(path: str | Path) -> dict:
    """Read and check a golden file against its format, every value included; any defect is a
    DataError naming the file and what is wrong (binary or non-UTF-8 content, invalid JSON, NaN,
    duplicate keys, missing keys, negative or fractional counts, an inferences count out of
    1..MAX_INFERENCES)."""
    from .config import path_exists, read_text
    from .errors import ConfigError
    from .simulate import MAX_INFERENCES
    if str(path) in ("", "."):
        raise DataError(f"{str(path)!r}: expected a golden file name")
    path = Path(path)
    if not path_exists(path) and not path.is_symlink():
        raise DataError(f"{path}: golden file not found (create it with --update)")
    if path.is_dir():
        raise DataError(f"{path}: a folder, expected a golden file")
    try:
        text = read_text(path, "golden file", limit_bytes=256 * 1024 * 1024)
    except ConfigError as exc:
        raise DataError(f"{exc}; the golden file is corrupt (or not a golden file)") from None
    try:
        data = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON at line {exc.lineno} column {exc.colno} "
                        f"({exc.msg}); the golden file is corrupt or truncated") from None
    except ValueError as exc:
        raise DataError(f"{path}: not valid golden JSON ({exc})") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply; not a golden file") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DataError(f"{path}: not an archsim golden file (expected \"format\": \"{FORMAT}\")")
    if data.get("version") != VERSION:
        raise DataError(f"{path}: golden format version {data.get('version')!r}, expected {VERSION}")
    for key, kind in (("chip", dict), ("workload", dict), ("totals", dict), ("layers", dict),
                      ("actions", dict)):
        if not isinstance(data.get(key), kind):
            raise DataError(f"{path}: key {key!r} missing or not a {kind.__name__}")
    n = data.get("inferences")
    if not _is_count(n) or not 1 <= n <= MAX_INFERENCES:
        raise DataError(f"{path}: inferences must be an integer 1..{MAX_INFERENCES}, got {n!r}")
    for q in TOTAL_QUANTITIES:
        if not _is_number(data["totals"].get(q)):
            raise DataError(f"{path}: totals.{q} missing or not a finite number >= 0")
    for name, rec in data["layers"].items():
        if not isinstance(rec, dict) or any(not _is_count(rec.get(q)) for q in LAYER_QUANTITIES):
            raise DataError(f"{path}: layers.{name} must hold integer counts >= 0 of "
                            + ", ".join(LAYER_QUANTITIES))
    for name, value in data["actions"].items():
        if not _is_count(value):
            raise DataError(f"{path}: actions.{name} must be an integer count >= 0, got {value!r}")
    return data


def check_tolerance(tolerance: Any) -> float:
    """A relative tolerance: a finite number in [0, 1) (0 = exact)."""
    from .errors import OptionError
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) \
            or not math.isfinite(tolerance) or not 0 <= tolerance < 1:
        raise OptionError("--tolerance", tolerance, "a relative tolerance in [0, 1), e.g. 0.01 "
                                                    "for 1% (0 = exact)")
    return float(tolerance)


def compare(golden: dict, now: dict, golden_file: str, tolerance: float = 0.0) -> Comparison:
    """Every quantity of ``now`` against ``golden``; relative ``tolerance`` (0 = exact)."""
    changes: list[Change] = []
    notes: list[str] = []

    def moved(a, b) -> bool:
        if a is None or b is None:
            return a is not b
        if tolerance == 0:
            return a != b
        return not math.isclose(a, b, rel_tol=tolerance, abs_tol=0)

    for part, label in (("chip", "chip config"), ("workload", "workload")):
        if golden[part].get("hash") != now[part]["hash"]:
            notes.append(f"note: the {label} differs from the one {golden_file} was made from "
                         f"({golden[part].get('file')} -> {now[part]['file']}, hash "
                         f"{str(golden[part].get('hash'))[:12]} -> {now[part]['hash'][:12]})")
    if golden["inferences"] != now["inferences"]:
        notes.append(f"note: golden ran {golden['inferences']} inferences, this run "
                     f"{now['inferences']}")
    for q in TOTAL_QUANTITIES:
        if moved(golden["totals"].get(q), now["totals"][q]):
            changes.append(Change("total", q, golden["totals"].get(q), now["totals"][q]))
    for name in list(now["layers"]) + [n for n in golden["layers"] if n not in now["layers"]]:
        g, n = golden["layers"].get(name), now["layers"].get(name)
        if g is None or n is None:
            changes.append(Change(name, "layer", "present" if g else None,
                                  "present" if n else None))
            continue
        for q in LAYER_QUANTITIES:
            if moved(g[q], n[q]):
                changes.append(Change(name, q, g[q], n[q]))
    for action in sorted(set(golden["actions"]) | set(now["actions"])):
        g, n = golden["actions"].get(action), now["actions"].get(action)
        if moved(g, n):
            changes.append(Change("actions", action, g, n))
    return Comparison(golden_file, tuple(changes), tuple(notes), tolerance)


def write_golden(path: str | Path, record: dict) -> None:
    """Atomic write: a temporary file beside the target, then a rename."""
    from .atomic import write_file
    write_file(Path(path), (json.dumps(record, indent=1, sort_keys=False) + "\n").encode(),
               "golden file")


def check_cycles(chip, workload, golden_file: str | Path, *, tolerance: float = 0.0,
                 update: bool = False, inferences: int | None = None, overrides=None,
                 policy: str | None = None) -> Comparison:
    """Run the timing simulation of ``chip`` x ``workload`` and compare with ``golden_file``.

    With ``update=True`` the golden file is (re)written and the returned comparison lists what
    changed against the old one (empty when there was none). ``inferences`` defaults to the golden
    file's count (or 2 for a new file)."""
    from .atomic import check_output_file
    from .config import path_exists
    from .errors import OptionError
    from .mapping import map_network
    from .simulate import MAX_INFERENCES, load
    from .timing import simulate_timing

    tolerance = check_tolerance(tolerance)
    if inferences is not None and (not _is_count(inferences)
                                   or not 1 <= inferences <= MAX_INFERENCES):
        raise OptionError("--inferences", inferences, f"an integer 1..{MAX_INFERENCES}")
    chip_cfg, wl = load(chip, workload, overrides=overrides, policy=policy)
    golden_file = Path(golden_file)
    if update:              # before the simulation: an unwritable golden file fails at once
        check_output_file(golden_file, "--update")
    old = None
    if path_exists(golden_file) or not update:
        try:
            old = load_golden(golden_file)
        except DataError:
            if not update:
                raise
    n = inferences or (old["inferences"] if old else 2)
    mapping = map_network(chip_cfg, wl.network)
    record = snapshot(mapping, simulate_timing(mapping, n), wl)
    if update:
        write_golden(golden_file, record)
        if old is None:
            return Comparison(str(golden_file), (), (f"wrote new golden file {golden_file}",))
        result = compare(old, record, str(golden_file), 0.0)
        return Comparison(str(golden_file), result.changes,
                          result.notes + (f"updated {golden_file}",), 0.0)
    return compare(old, record, str(golden_file), tolerance)
