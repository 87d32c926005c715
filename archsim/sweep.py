"""Design-space sweeps on Dask (DESIGN.md section 10, "Distributed sweeps").

A sweep file names a base chip and workload, the axes (any YAML path of the chip, ``mapping.*``,
run options ``run.*``, or the base ``chip`` / ``workload`` file itself), how they combine
(``grid``: every combination; ``zip``: element by element; both: the grid crossed with the zipped
group) and the run options of every point::

    sweep:
      name: adc_bits_x_array
      chip: pcm_hybrid
      workload: resnet32_cifar10
      grid:
        chip.tiles.adc.bits: [6, 7, 8, 9]
        mapping.policy: [hybrid, all-analog]
      zip:
        chip.tiles.array.rows: [256, 512]
        chip.tiles.array.cols: [256, 512]
      run: {times_s: [25, 86400], seeds: 2, test_images: 500, calib_images: 200}
      keep: {reports: false}

:func:`load_sweep` resolves and validates every point before anything runs (the chip through
:func:`archsim.config.load_chip` with the point's values as overrides, so the messages are the
ones of ``--set``); a bad value is one :class:`~archsim.errors.ConfigError` naming the sweep file,
the YAML path of the value in it, the point and the chip's YAML path.

:func:`run_sweep` runs one Dask task per point (:func:`run_point`: a pure function of the resolved
chip config, the workload, the run options and the read-only accuracy inputs, which are scattered
to every worker once). Results go to ``OUT/results.csv``, which is both the table and the log:
its header is written first, then each finished point is appended as one whole line (one
``write`` on an ``O_APPEND`` descriptor, then ``fsync``) as soon as it finishes. A crash can at
worst leave an unterminated last line, which every reader ignores and ``--resume`` cuts off.
Rows are keyed by the sha256 of the point's resolved chip config, workload, run options and the
content of its weights and images, so a resume skips what is done and never writes a point twice.
Why one CSV and not a JSON-lines log plus a derived table: the columns of a sweep are known before
it runs (axes, figures, accuracy per time and compensation), error messages are made one line, and
one file cannot fall out of step with another.

The report (:func:`write_report`) is rendered from the table alone: the Pareto-optimal points as
a table, and two plots (accuracy at 1 day vs energy per inference; TOPS/W vs TOPS/mm2), each point
labelled by its axis values.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import itertools
import json
import os
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import yaml
from tabulate import tabulate

from . import config as cfg
from .atomic import atomic_write_text
from .errors import ArchsimError, ConfigError, DataError
from .functional import COMPENSATIONS, DEFAULT_TIMES_S
from .progress import Progress
from .report import format_time_s, report_json
from .workloads import Workload, load_workload

SHIPPED_SWEEPS = ("adc_bits_x_array",)
TABLE = "results.csv"
REPORT_MD = "sweep.md"
PLOT_ACCURACY = "accuracy_vs_energy.png"
PLOT_EFFICIENCY = "tops_per_w_vs_tops_per_mm2.png"
POINTS_DIR = "points"

OK, ERROR, INTERNAL_ERROR = "ok", "error", "internal-error"
DONE = (OK, ERROR)                 # what --resume keeps; an internal error may be transient

# summary figures (DESIGN.md section 8) per point; tops_per_mm2 is the workload's TOPS / area
FIGURES = ("energy_per_inference_uj", "latency_ns", "inferences_per_s", "tops", "tops_per_w",
           "tops_per_mm2", "area_mm2", "power_w", "peak_tops", "peak_tops_per_w",
           "peak_tops_per_mm2", "dynamic_energy_per_inference_uj",
           "leakage_energy_per_inference_uj", "leakage_power_w", "single_inference_energy_uj",
           "energy_per_inference_ungated_uj", "power_ungated_w")
COLUMNS_BEFORE_FIGURES = ("status", "error", "chip_name", "workload_name")
ACCURACY_INFO = ("accuracy_images", "accuracy_seeds", "accuracy_fp32")
COLUMNS_LAST = ("seconds", "key")
DAY_S = 86400.0


# ------------------------------------------------------------------------------------------
# The sweep file
# ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunOptions:
    """Run options of one point (the ``run:`` section, or a ``run.*`` axis)."""
    accuracy: bool = cfg.spec(True, doc="functional simulation (accuracy vs time); false: timing "
                                        "and energy only")
    times_s: tuple[float, ...] = cfg.spec(DEFAULT_TIMES_S, lo=0, lo_open=True,
                                          doc="times after programming")
    seeds: int = cfg.spec(3, lo=1, doc="programmed chips")
    test_images: int | None = cfg.spec(None, lo=1, doc="evenly spaced test images (all: null)")
    calib_images: int = cfg.spec(1000, lo=1, doc="AdaBS calibration images")
    inferences: int = cfg.spec(4, lo=1, doc="inferences in flight in the timing simulation")
    seed: int = cfg.spec(0, doc="base seed")

    def key_data(self) -> dict:
        """What the result depends on (timing and energy do not depend on the accuracy options)."""
        if not self.accuracy:
            return {"accuracy": False, "inferences": self.inferences}
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Keep:
    """What to keep besides the table row of each point."""
    reports: bool = cfg.spec(False, doc="each point's full report.json (DESIGN.md section 8) in "
                                        "OUT/points/")


@dataclass(frozen=True)
class Point:
    """One resolved point. ``chip`` is the resolved chip config as plain data (what the key hashes
    and what a worker rebuilds the config from)."""
    index: int
    axes: tuple[tuple[str, Any], ...]          # (axis, value) in column order
    chip: dict
    chip_file: str
    workload: Workload
    options: RunOptions
    inputs_id: int | None                      # into Sweep.inputs; None: no accuracy
    key: str

    def label(self) -> str:
        return ", ".join(f"{a}={v}" for a, v in self.axes)


@dataclass(frozen=True)
class Sweep:
    name: str
    file: str
    axes: tuple[str, ...]
    points: tuple[Point, ...]
    keep: Keep
    inputs: tuple                              # simulate.AccuracyInputs, by Point.inputs_id

    def columns(self) -> list[str]:
        times = sorted({t for p in self.points if p.options.accuracy for t in p.options.times_s})
        accuracy = list(ACCURACY_INFO) if times else []
        for t in times:
            for comp in COMPENSATIONS:
                accuracy += [accuracy_column(t, comp), accuracy_column(t, comp) + "_std"]
        return ["index", *self.axes, *COLUMNS_BEFORE_FIGURES, *FIGURES, *accuracy, *COLUMNS_LAST]


def accuracy_column(time_s: float, compensation: str) -> str:
    return f"accuracy_{format_time_s(time_s).replace(' ', '')}_{compensation}"


def resolve_sweep_path(name_or_path: str | Path) -> Path:
    """A path, or the name of a shipped sweep (``adc_bits_x_array``)."""
    return cfg.resolve_shipped(name_or_path, "archsim.configs.sweeps", "configs/sweeps",
                               SHIPPED_SWEEPS, "sweep file")


SWEEP_KEYS = ("name", "chip", "workload", "grid", "zip", "run", "keep")


def load_sweep(name_or_path: str | Path, *, data_dir: str | Path | None = None,
               accuracy: bool | None = None) -> Sweep:
    """Read a sweep file and resolve and validate every point (nothing runs). ``accuracy=False``
    makes every point timing-and-energy only (the CLI's ``--no-accuracy``)."""
    path = resolve_sweep_path(name_or_path)
    file = str(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(file, "", f"cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(file, "", f"YAML syntax error: {getattr(exc, 'problem', exc)}",
                          mark.line + 1 if mark is not None else None) from None
    if not isinstance(data, dict) or set(data) != {"sweep"} or not isinstance(data["sweep"], dict):
        raise ConfigError(file, "", "expected one top-level mapping 'sweep:'")
    s = data["sweep"]
    for key in s:
        if key not in SWEEP_KEYS:
            raise ConfigError(file, f"sweep.{key}", f"unknown key {key!r}; expected one of "
                                                     f"{', '.join(SWEEP_KEYS)}")
    name = _string(s, "name", path.stem, file)
    base_chip = _string(s, "chip", cfg.DEFAULT_CHIP, file)
    base_workload = _string(s, "workload", "digits_cnn", file)
    grid = _axes(s, "grid", file)
    zipped = _axes(s, "zip", file)
    lengths = {len(v) for v in zipped.values()}
    if len(lengths) > 1:
        got = ", ".join(str(len(v)) for v in zipped.values())
        raise ConfigError(file, "sweep.zip", "expected lists of one length (zipped element by "
                          f"element), got lengths {got}")
    both = set(grid) & set(zipped)
    if both:
        raise ConfigError(file, f"sweep.zip.{sorted(both)[0]}", "axis is also in sweep.grid")
    run_base = s.get("run") or {}
    if not isinstance(run_base, dict):
        raise ConfigError(file, "sweep.run", "expected a mapping of run options")
    cfg.from_data(RunOptions, run_base, file, "sweep.run")
    keep = cfg.from_data(Keep, s.get("keep") or {}, file, "sweep.keep")
    # the base files on their own: their errors are nobody's point
    here = path.parent
    cfg.load_chip(_beside(here, base_chip))

    axes = tuple(grid) + tuple(zipped)
    workloads: dict[str, Workload] = {}
    inputs: dict[tuple, tuple[int, Any, str]] = {}     # options -> (id, AccuracyInputs, sha256)

    def accuracy_inputs_of(wl: Workload, options: RunOptions, calibration: bool):
        from .simulate import accuracy_inputs
        ikey = (wl.file, options.test_images, options.calib_images, options.seed, calibration)
        if ikey not in inputs:
            loaded = accuracy_inputs(wl, test_images=options.test_images,
                                     calib_images=options.calib_images, seed=options.seed,
                                     calibration=calibration)
            inputs[ikey] = (len(inputs), loaded, inputs_digest(loaded))
        return inputs[ikey][0], inputs[ikey][2]

    points: list[Point] = []
    seen: dict[str, int] = {}
    for index, combo in enumerate(_combinations(grid, zipped)):
        values = {axis: value for axis, value, _ in combo}
        where = {axis: spot for axis, _, spot in combo}
        label = ", ".join(f"{a}={v}" for a, v in values.items())
        overrides = {a: v for a, v in values.items() if a.startswith(("chip.", "mapping."))}
        run_data = {**run_base, **{a[4:]: v for a, v in values.items() if a.startswith("run.")}}
        try:
            chip_cfg = cfg.load_chip(_beside(here, values.get("chip", base_chip)), overrides)
            options = cfg.from_data(RunOptions, run_data, file, "sweep.run")
        except ConfigError as exc:
            raise _point_error(exc, file, index, label, where) from None
        if accuracy is False:
            options = dataclasses.replace(options, accuracy=False)
        workload_name = values.get("workload", base_workload)
        try:
            if workload_name not in workloads:
                workloads[workload_name] = load_workload(_beside(here, workload_name), data_dir)
            wl = workloads[workload_name]
            inputs_id, digest = accuracy_inputs_of(
                wl, options, chip_cfg.mapping.policy != "all-digital") \
                if options.accuracy else (None, None)
        except ArchsimError as exc:         # the workload file or its data files
            raise ConfigError(file, where.get("workload", "sweep.workload"),
                              f"point {index} ({label}): {exc}") from None
        key = point_key(chip_cfg, wl, options, digest)
        if key in seen:
            raise ConfigError(file, "sweep", f"points {seen[key]} and {index} ({label}) are the "
                              "same configuration (a value listed twice?)")
        seen[key] = index
        points.append(Point(index, tuple(values.items()), chip_cfg.to_dict(), chip_cfg.file, wl,
                            options, inputs_id, key))
    loaded = tuple(v[1] for v in sorted(inputs.values(), key=lambda v: v[0]))
    return Sweep(name, file, axes, tuple(points), keep, loaded)


def _string(s: dict, key: str, default: str, file: str) -> str:
    value = s.get(key, default)
    if not isinstance(value, str):
        raise ConfigError(file, f"sweep.{key}", f"expected a name or file, got {value!r}")
    return value


def _axes(s: dict, section: str, file: str) -> dict[str, list]:
    axes = s.get(section) or {}
    if not isinstance(axes, dict):
        raise ConfigError(file, f"sweep.{section}", "expected a mapping of axis -> list of values")
    for axis, values in axes.items():
        where = f"sweep.{section}.{axis}"
        if axis not in ("chip", "workload") and \
                not str(axis).startswith(("chip.", "mapping.", "run.")):
            raise ConfigError(file, where, "expected an axis chip.PATH, mapping.PATH, run.OPTION, "
                                           "chip (the base chip file) or workload")
        if not isinstance(values, list) or not values:
            raise ConfigError(file, where, f"expected a non-empty list of values, got {values!r}")
    return axes


def _combinations(grid: dict[str, list], zipped: dict[str, list]):
    """Points as tuples of (axis, value, YAML path of the value in the sweep file): the grid's
    cartesian product (first axis slowest), crossed with the zipped group (fastest)."""
    grid_axes = [[(a, v, f"sweep.grid.{a}[{j}]") for j, v in enumerate(vs)]
                 for a, vs in grid.items()]
    n = len(next(iter(zipped.values()))) if zipped else 1
    zip_rows = [tuple((a, vs[j], f"sweep.zip.{a}[{j}]") for a, vs in zipped.items())
                for j in range(n)]
    return [tuple(itertools.chain(g, z)) for *g, z in itertools.product(*grid_axes, zip_rows)]


def _beside(folder: Path, name: str) -> str:
    """A chip or workload named in a sweep file: relative to the sweep file when it is there,
    else as given (a path, or a shipped name)."""
    candidate = folder / name
    return str(candidate) if candidate.is_file() else name


def _point_error(exc: ConfigError, file: str, index: int, label: str, where: dict) -> ConfigError:
    """One error naming the sweep file, the YAML path of the offending value in it, the point and
    the chip's (or run option's) YAML path."""
    path = (exc.yaml_path or "").removeprefix("sweep.")     # run options sit under sweep.run

    def caused_by(axis: str) -> bool:
        return path == axis or path.startswith((axis + ".", axis + "[")) or \
            (bool(path) and axis.startswith(path + "."))
    spot = next((s for a, s in where.items() if a not in ("chip", "workload") and caused_by(a)),
                where.get("chip", "sweep.chip"))
    # an error one of the point's values caused is named by its YAML path (the loader calls these
    # values --set arguments; here they are the sweep's axes); others keep their file and line
    inner = f"{exc.yaml_path}: {exc.message}" if exc.file is None and exc.yaml_path else str(exc)
    return ConfigError(file, spot, f"point {index} ({label}): {inner}")


def inputs_digest(inputs) -> str:
    """sha256 of the weights and images an accuracy run reads (their content, not file names)."""
    h = hashlib.sha256()

    def add(arr):
        arr = np.ascontiguousarray(arr)
        h.update(f"{arr.dtype.str}{arr.shape}".encode())
        h.update(arr.tobytes())
    for name in sorted(inputs.params):
        h.update(name.encode())
        add(inputs.params[name])
    for ds in (inputs.test, inputs.calib):
        if ds is None:
            h.update(b"none")
            continue
        for arr in (ds.images, ds.labels, ds.mean, ds.std):
            add(arr)
    return h.hexdigest()


def point_key(chip_cfg, workload: Workload, options: RunOptions, inputs_digest: str | None) -> str:
    """sha256 of everything a point's result depends on: the resolved chip config, the workload
    (network, files named), the run options and the content of the accuracy inputs."""
    payload = {"chip": chip_cfg.to_dict(), "workload": dataclasses.asdict(workload.spec),
               "options": options.key_data(), "inputs": inputs_digest}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


# ------------------------------------------------------------------------------------------
# The task (runs on a Dask worker)
# ------------------------------------------------------------------------------------------

# numba's workqueue threading layer (kernels.py) must not be entered by two threads of one
# process at once: accuracy runs of one worker process take turns
_FUNCTIONAL_LOCK = threading.Lock()


def run_point(chip: dict, chip_file: str, workload: Workload, options: RunOptions, inputs,
              full_report: bool = False) -> dict:
    """One point, end to end: a pure function of (resolved chip config, workload, run options,
    accuracy inputs) -> its results. A user error (e.g. the network does not fit the chip) is a
    result too; anything else raises (Dask retries it, then the row says internal-error).

    One task uses one core: Dask runs one task per worker thread and its nanny sets the BLAS
    threads to 1; numba's are set to 1 here."""
    from . import simulate
    start = time.perf_counter()
    chip_cfg = dataclasses.replace(cfg.from_data(cfg.ChipConfig, chip, chip_file), file=chip_file)
    kwargs = dict(accuracy=options.accuracy, times_s=options.times_s, seeds=options.seeds,
                  calib_images=options.calib_images, test_images=options.test_images,
                  inferences=options.inferences, seed=options.seed, progress=False, inputs=inputs)
    try:
        if options.accuracy:
            import numba
            with _FUNCTIONAL_LOCK:
                numba.set_num_threads(1)
                result = simulate.run(chip_cfg, workload, **kwargs)
        else:
            result = simulate.run(chip_cfg, workload, **kwargs)
    except ArchsimError as exc:
        return {"status": ERROR, "error": f"{type(exc).__name__}: {exc}",
                "seconds": time.perf_counter() - start}
    report = result.report()
    return {"status": OK, "chip_name": report["chip"]["name"],
            "workload_name": report["workload"]["name"], "summary": report["summary"],
            "accuracy": report["accuracy"], "seconds": time.perf_counter() - start,
            "report": report if full_report else None}


def result_row(point: Point, result: dict) -> dict:
    """The table row of a point from :func:`run_point`'s result."""
    row = {"index": point.index, **dict(point.axes), "status": result["status"],
           "error": _one_line(result.get("error") or ""), "chip_name": result.get("chip_name"),
           "workload_name": result.get("workload_name") or point.workload.name,
           "seconds": result.get("seconds"), "key": point.key}
    summary = result.get("summary")
    if summary:
        for fig in FIGURES:
            row[fig] = summary.get(fig)
        row["tops_per_mm2"] = summary["tops"] / summary["area_mm2"] if summary["area_mm2"] else None
    acc = result.get("accuracy")
    if acc:
        row.update(accuracy_images=acc["images"], accuracy_seeds=acc["seeds"],
                   accuracy_fp32=acc["fp32"])
        series = acc["series"]
        for i, t in enumerate(acc["times_s"]):
            for comp in COMPENSATIONS:
                s = next((s for s in series if s["compensation"] == comp), None)
                if s is not None:
                    row[accuracy_column(t, comp)] = s["mean"][i]
                    row[accuracy_column(t, comp) + "_std"] = s["std"][i]
                elif not series:
                    # an all-digital chip neither drifts nor is noisy: FP32 at every time
                    row[accuracy_column(t, comp)] = acc["fp32"]
                    row[accuracy_column(t, comp) + "_std"] = 0.0
    return row


def _one_line(text: str) -> str:
    return " | ".join(line.strip() for line in str(text).splitlines() if line.strip())


# ------------------------------------------------------------------------------------------
# The table: header first, then one whole line per finished point
# ------------------------------------------------------------------------------------------

def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value)          # floats as repr: they read back bit for bit


def _parse_cell(column: str, text: str):
    if text == "":
        return None
    if column in ("status", "error", "chip_name", "workload_name", "key"):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def _csv_line(columns: Sequence[str], row: dict) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([_cell(row.get(c)) for c in columns])
    return buf.getvalue()


def table_text(columns: Sequence[str], rows: Sequence[dict]) -> str:
    return "".join([_csv_line(columns, {c: c for c in columns})]
                   + [_csv_line(columns, r) for r in rows])


def append_row(path: Path, columns: Sequence[str], row: dict) -> None:
    """Append one row as one whole line and make it durable before returning."""
    data = _csv_line(columns, row).encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
    finally:
        os.close(fd)


def read_table(path: str | Path) -> tuple[list[str], list[dict], bool]:
    """(columns, rows, torn): an unterminated last line (a crash mid-append) is left out and
    reported as ``torn``; for a key written twice, the last row counts."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DataError(f"{path}: no sweep results table here") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the sweep results table ({exc})") from None
    torn = bool(text) and not text.endswith("\n")
    if torn:
        text = text[:text.rfind("\n") + 1]
    lines = list(csv.reader(io.StringIO(text)))
    if not lines or lines[0][:1] != ["index"] or "key" not in lines[0]:
        raise DataError(f"{path}: not a sweep results table (expected a header starting 'index' "
                        "with a 'key' column)")
    columns = lines[0]
    rows: dict[str, dict] = {}
    for n, cells in enumerate(lines[1:], start=2):
        if len(cells) != len(columns):
            raise DataError(f"{path}:{n}: expected {len(columns)} cells, got {len(cells)}")
        row = {c: _parse_cell(c, v) for c, v in zip(columns, cells)}
        rows.pop(row["key"], None)
        rows[row["key"]] = row
    return columns, list(rows.values()), torn


def axes_of(columns: Sequence[str]) -> list[str]:
    """The axis columns: between ``index`` and ``status``."""
    return list(columns[1:columns.index("status")])


# ------------------------------------------------------------------------------------------
# Running on Dask
# ------------------------------------------------------------------------------------------

@dataclass
class SweepOutcome:
    table: Path
    columns: list[str]
    rows: list[dict]              # every row of the table, after the run
    computed: list[int]           # indices of the points run this time
    skipped: list[int]            # indices already in the table (--resume)
    failed: list[dict]            # rows of this sweep's points with an error
    files: list[Path]             # report files written


def open_client(scheduler: str | None = None, workers: int | None = None):
    """A Dask client: to the scheduler at ``scheduler`` (``tcp://HOST:PORT``, or a scheduler
    file), else to a new LocalCluster of ``workers`` processes (default: one per core) with one
    thread each. Returns (client, cluster or None)."""
    from dask.distributed import Client, LocalCluster
    if scheduler:
        try:
            if "://" not in scheduler and Path(scheduler).is_file():
                return Client(scheduler_file=scheduler, timeout=10), None
            return Client(scheduler, timeout=10), None
        except (OSError, TimeoutError, ValueError) as exc:
            raise ConfigError("--scheduler", scheduler,
                              f"cannot connect to a Dask scheduler ({exc})") from None
    # the worker processes are started with Ctrl-C ignored (they inherit it): an interrupt reaches
    # only this process, which cancels the tasks and closes the cluster, without a traceback
    # from every worker
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:                  # not the main thread: leave signals alone
        previous = None
    try:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    return Client(cluster), cluster


def describe_client(client) -> str:
    info = client.scheduler_info()
    workers = info.get("workers", {})
    threads = sum(w.get("nthreads", 0) for w in workers.values())
    link = client.dashboard_link
    try:
        import bokeh  # noqa: F401
        dash = f"dashboard {link}"
    except ImportError:
        dash = (f"dashboard {link} needs bokeh (pip install bokeh); task and worker pages: "
                f"{link.rsplit('/', 1)[0]}/info/main/workers.html")
    return (f"dask scheduler {info.get('address', '?')}: {len(workers)} workers, {threads} "
            f"threads; {dash}")


def run_sweep(sweep: Sweep, out_dir: str | Path, *, client=None, scheduler: str | None = None,
              workers: int | None = None, resume: bool = False, retries: int = 1,
              progress: bool = True, log=None,
              on_row: Callable[[dict], None] | None = None) -> SweepOutcome:
    """Run the points of ``sweep`` not yet in ``OUT/results.csv`` on Dask (``client``, else
    :func:`open_client`), append each row as it finishes, then write the report. Without
    ``resume`` the folder must not hold a table yet. ``on_row`` is called with each row once it
    is durable (e.g. to watch a sweep from a notebook)."""
    log = log or sys.stderr
    out = Path(out_dir)
    table = out / TABLE
    columns = sweep.columns()
    rows: list[dict] = []
    if table.exists():
        if not resume:
            raise ConfigError("--out", str(out), f"{TABLE} is already there (a sweep ran in this "
                              "folder): pass --resume to continue it, or choose another --out")
        old_columns, rows, torn = read_table(table)
        if old_columns != columns:
            raise DataError(f"{table}: its columns are not this sweep's (other axes or times): "
                            "resume only the sweep that made it, or choose another --out")
        kept = [r for r in rows if r["status"] in DONE]
        if torn or len(kept) != len(rows):
            # cut a torn last line; drop internal errors, which run again (one row per key)
            atomic_write_text(table, table_text(columns, kept))
        rows = kept
    else:
        atomic_write_text(table, table_text(columns, []))
    done = {r["key"] for r in rows}
    todo = [p for p in sweep.points if p.key not in done]
    skipped = [p.index for p in sweep.points if p.key in done]
    print(f"sweep {sweep.name}: {len(sweep.points)} points, {len(todo)} to run"
          + (f", {len(skipped)} already in {table}" if skipped else "") + f"; table {table}",
          file=log)
    computed: list[int] = []
    if todo:
        computed = _run_on_dask(sweep, todo, table, columns, rows, client=client,
                                scheduler=scheduler, workers=workers, retries=retries,
                                progress=progress, log=log, on_row=on_row)
    # the finished table in the sweep's point order (one atomic rewrite), then the report
    order = {p.key: p.index for p in sweep.points}
    rows.sort(key=lambda r: (r["key"] not in order, order.get(r["key"], r["index"] or 0)))
    for r in rows:
        r["index"] = order.get(r["key"], r["index"])
    atomic_write_text(table, table_text(columns, rows))
    files = write_report(out)
    mine = set(order)
    failed = [r for r in rows if r["key"] in mine and r["status"] != OK]
    return SweepOutcome(table, columns, rows, computed, skipped, failed, files)


def _run_on_dask(sweep: Sweep, todo: list[Point], table: Path, columns: list[str],
                 rows: list[dict], *, client, scheduler, workers, retries, progress, log,
                 on_row) -> list[int]:
    from dask.distributed import as_completed
    own_cluster = None
    if client is None:
        client, own_cluster = open_client(scheduler, workers)
        own_client = client
    else:
        own_client = None
    futures: dict[str, Any] = {}            # key -> future, until its row is written
    computed: list[int] = []
    try:
        print(describe_client(client), file=log)
        # read-only inputs go to every worker once, not with every task; task keys are fresh
        # for every run (a key cancelled by an interrupted run may still be on its way out)
        needed = sorted({p.inputs_id for p in todo if p.inputs_id is not None})
        scattered = {i: client.scatter(sweep.inputs[i], broadcast=True, hash=False)
                     for i in needed}
        by_key = {}
        for p in todo:
            fut = client.submit(run_point, p.chip, p.chip_file, p.workload, p.options,
                                scattered.get(p.inputs_id), sweep.keep.reports,
                                key=f"archsim-point-{p.index}-{uuid.uuid4().hex[:12]}",
                                retries=retries)
            by_key[fut.key] = p
            futures[fut.key] = fut
        failed = 0
        with Progress(len(todo), "sweep", enabled=progress) as bar:
            for fut in as_completed(list(futures.values())):
                p = by_key[fut.key]
                if fut.status == "finished":
                    result = fut.result()
                else:       # raised twice (retries), or its worker died too often (KilledWorker)
                    try:
                        exc = fut.exception()
                    except Exception as err:        # cancelled or lost
                        exc = err
                    result = {"status": INTERNAL_ERROR, "error": f"{type(exc).__name__}: {exc}"}
                row = result_row(p, result)
                append_row(table, columns, row)
                rows.append(row)
                computed.append(p.index)
                del futures[fut.key]
                if result.get("report") is not None:
                    atomic_write_text(table.parent / POINTS_DIR / f"{p.key[:16]}.json",
                                      report_json(result["report"]))
                if row["status"] != OK:
                    failed += 1
                    print(f"point {p.index} ({p.label()}): {row['status']}: {row['error']}",
                          file=log)
                bar.advance(1, f"{failed} failed, {len(todo) - len(computed)} remaining")
                if on_row is not None:
                    on_row(row)
    except KeyboardInterrupt:
        print(f"interrupted: {len(rows)} rows in {table}; run again with --resume to compute "
              "the rest", file=log)
        raise
    finally:
        if futures:
            client.cancel(list(futures.values()))
        if own_client is not None:
            own_client.close()
        if own_cluster is not None:
            own_cluster.close()
    return computed


# ------------------------------------------------------------------------------------------
# Pareto front and the report (from the table alone)
# ------------------------------------------------------------------------------------------

def pareto_mask(values: np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    """Rows of ``values`` (n, k) that no other row dominates (at least as good in every column,
    better in one). Rows with a NaN are never on the front."""
    v = np.asarray(values, dtype=float) * np.where(maximize, -1.0, 1.0)    # all minimized
    valid = ~np.isnan(v).any(axis=1)
    a = v[:, None, :]
    b = v[None, :, :]
    dominated = ((b <= a).all(axis=2) & (b < a).any(axis=2) & valid[None, :]).any(axis=1)
    return valid & ~dominated


def accuracy_objective(columns: Sequence[str], rows: Sequence[dict]) -> str | None:
    """The accuracy column the report ranks by: at 1 day if the sweep has it (else its last
    time), with the strongest compensation that has values (GDC + AdaBS, GDC, none)."""
    names = [c for c in columns if c.startswith("accuracy_") and not c.endswith("_std")
             and c not in ACCURACY_INFO]
    if not names:
        return None
    day = accuracy_column(DAY_S, "none").rsplit("_", 1)[0]
    stems = list(dict.fromkeys(c.rsplit("_", 1)[0] for c in names))
    stem = day if day in stems else stems[-1]
    for comp in reversed(COMPENSATIONS):
        col = f"{stem}_{comp}"
        if col in names and any(r.get(col) is not None for r in rows):
            return col
    return None


def _short_axes(axes: Sequence[str]) -> list[str]:
    """Axis names for labels: the last YAML key, or the last two where that is ambiguous."""
    last = [a.rsplit(".", 1)[-1] for a in axes]
    return [a.split(".", a.count(".") - 1)[-1] if last.count(l) > 1 and "." in a else l
            for a, l in zip(axes, last)]


def _objectives(columns, rows):
    acc = accuracy_objective(columns, rows)
    objectives = ([(acc, True)] if acc else []) + [("energy_per_inference_uj", False),
                                                   ("latency_ns", False), ("area_mm2", False)]
    return acc, objectives


def _values(rows, cols) -> np.ndarray:
    return np.array([[np.nan if r.get(c) is None else float(r[c]) for c in cols] for r in rows],
                    dtype=float).reshape(len(rows), len(cols))


def pareto_rows(columns: Sequence[str], rows: Sequence[dict]) -> list[dict]:
    """The finished points that no other finished point beats in accuracy (if computed), energy
    per inference, latency and area at once, by energy."""
    ok = [r for r in rows if r["status"] == OK]
    _, objectives = _objectives(columns, ok)
    mask = pareto_mask(_values(ok, [c for c, _ in objectives]), [m for _, m in objectives]) \
        if ok else np.zeros(0, bool)
    front = [r for r, m in zip(ok, mask) if m]
    return sorted(front, key=lambda r: r["energy_per_inference_uj"])


def _table_rows(columns, rows, acc_col):
    axes = axes_of(columns)
    out = []
    for r in rows:
        line = [r["index"]] + [r.get(a) for a in axes]
        if acc_col:
            line.append("-" if r.get(acc_col) is None else f"{100 * r[acc_col]:.2f}")
        line += [_fmt(r.get("energy_per_inference_uj")), _fmt(r.get("latency_ns"), 1e-3),
                 _fmt(r.get("inferences_per_s")), _fmt(r.get("tops_per_w")),
                 _fmt(r.get("tops_per_mm2")), _fmt(r.get("area_mm2"))]
        out.append(line)
    head = ["point"] + _short_axes(axes) + ([_acc_label(acc_col) + " %"] if acc_col else []) + [
        "energy uJ/inf", "latency us", "inf/s", "TOPS/W", "TOPS/mm2", "area mm2"]
    return head, out


def _fmt(value, scale: float = 1.0) -> str:
    return "-" if value is None else f"{value * scale:.4g}"


def _acc_label(col: str) -> str:
    _, when, comp = col.split("_", 2)
    return f"acc {when} {comp}"


def pareto_table(columns: Sequence[str], rows: Sequence[dict], tablefmt: str = "simple") -> str:
    acc_col, objectives = _objectives(columns, [r for r in rows if r["status"] == OK])
    front = pareto_rows(columns, rows)
    head, body = _table_rows(columns, front, acc_col)
    what = ", ".join(("higher " if m else "lower ") + _objective_name(c) for c, m in objectives)
    title = (f"Pareto-optimal points ({len(front)} of {sum(r['status'] == OK for r in rows)} "
             f"finished; none is beaten in all of: {what}):")
    return title + "\n\n" + tabulate(body, headers=head, tablefmt=tablefmt, disable_numparse=True)


def _objective_name(col: str) -> str:
    return {"energy_per_inference_uj": "energy per inference", "latency_ns": "latency",
            "area_mm2": "area"}.get(col) or _acc_label(col).replace("acc ", "accuracy at ")


def _labels(columns, rows) -> list[str]:
    axes = axes_of(columns)
    return ["/".join(str(r.get(a)) for a in axes) for r in rows]


def render_report(columns: Sequence[str], rows: Sequence[dict], title: str) -> dict[str, bytes]:
    """The report files of a sweep table: ``sweep.md`` and the two plots (without matplotlib,
    the Markdown alone)."""
    from .report import front_plot
    ok = [r for r in rows if r["status"] == OK]
    acc_col, _ = _objectives(columns, ok)
    legend = "labels: " + " / ".join(_short_axes(axes_of(columns)))
    files: dict[str, bytes] = {}
    with_acc = [r for r in ok if acc_col and r.get(acc_col) is not None]
    if with_acc:
        xy = _values(with_acc, ["energy_per_inference_uj", acc_col])
        png = front_plot(xy[:, 0], 100 * xy[:, 1], _labels(columns, with_acc),
                         pareto_mask(xy, [False, True]), xlabel="energy per inference (uJ)",
                         ylabel=f"test accuracy at {_acc_label(acc_col)[4:]} (%)",
                         title=f"{title}: accuracy vs energy per inference", legend_title=legend)
        if png is not None:
            files[PLOT_ACCURACY] = png
    if ok:
        xy = _values(ok, ["tops_per_mm2", "tops_per_w"])
        png = front_plot(xy[:, 0], xy[:, 1], _labels(columns, ok), pareto_mask(xy, [True, True]),
                         xlabel="TOPS/mm2 (workload as run)", ylabel="TOPS/W (workload as run)",
                         title=f"{title}: energy vs area efficiency", legend_title=legend)
        if png is not None:
            files[PLOT_EFFICIENCY] = png
    files[REPORT_MD] = sweep_markdown(columns, rows, title, list(files)).encode()
    return files


def sweep_markdown(columns: Sequence[str], rows: Sequence[dict], title: str,
                   plots: Sequence[str] = ()) -> str:
    ok = [r for r in rows if r["status"] == OK]
    acc_col, _ = _objectives(columns, ok)
    front = {r["key"] for r in pareto_rows(columns, rows)}
    failed = [r for r in rows if r["status"] != OK]
    md = [f"# Design-space sweep: {title}", "",
          f"{len(rows)} points: {len(ok)} finished, {len(failed)} failed. The table is "
          f"[{TABLE}]({TABLE}) (one row per point; every figure, accuracy per time and "
          "compensation).", ""]
    if acc_col:
        acc_rows = [r for r in ok if r.get("accuracy_images") is not None]
        if acc_rows:
            images = sorted({r["accuracy_images"] for r in acc_rows})
            seeds = sorted({r["accuracy_seeds"] for r in acc_rows})
            md += [f"Accuracy per point: test images {', '.join(map(str, images))}; programmed "
                   f"chips (seeds) {', '.join(map(str, seeds))}; all-digital points have their "
                   "FP32 accuracy at every time.", ""]
    md += ["## Pareto-optimal points", "", pareto_table(columns, rows, "github"), ""]
    md += [f"![{p}]({p})" for p in plots] + [""]
    head, body = _table_rows(columns, ok, acc_col)
    for line, r in zip(body, ok):
        line.append("yes" if r["key"] in front else "")
    md += ["## All finished points", "",
           tabulate(body, headers=head + ["Pareto"], tablefmt="github", disable_numparse=True), ""]
    if failed:
        md += ["## Failed points", ""]
        axes = axes_of(columns)
        md += [f"- point {r['index']} ({', '.join(f'{a}={r.get(a)}' for a in axes)}): "
               f"{r['error']}" for r in failed] + [""]
    return "\n".join(md)


def write_report(out_dir: str | Path) -> list[Path]:
    """Render the report of ``OUT/results.csv`` and write it beside the table (the only function
    that writes report files). Each file is replaced atomically; the folder is not an output set
    that archsim swaps as a whole, since it holds the table that a sweep appends to and resumes
    from, and every file here is re-rendered from that table alone (``--report``)."""
    from .atomic import write_file
    out = Path(out_dir)
    columns, rows, _ = read_table(out / TABLE)
    return [write_file(out / name, data, "sweep report")
            for name, data in render_report(columns, rows, out.resolve().name).items()]


def terminal_summary(out_dir: str | Path) -> str:
    columns, rows, _ = read_table(Path(out_dir) / TABLE)
    lines = [pareto_table(columns, rows)]
    failed = [r for r in rows if r["status"] != OK]
    if failed:
        lines += ["", f"Failed points ({len(failed)}):"]
        lines += [f"  point {r['index']}: {r['error']}" for r in failed]
    return "\n".join(lines)
