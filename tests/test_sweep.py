"""Design-space sweeps on a real Dask LocalCluster (2 worker processes, 1 thread each), on the
digits workload: same rows as single runs, a killed worker, an interrupted and resumed sweep, an
impossible point; plus validation, the table format and the Pareto front without a cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from archsim import sweep
from archsim.cli import main

# 12 points: 3 ADC resolutions x 2 policies x 2 zipped array sizes; accuracy on 40 images
DIGITS_12 = """\
sweep:
  name: digits12
  chip: pcm_hybrid
  workload: digits_cnn
  grid:
    chip.tiles.adc.bits: [6, 8, 10]
    mapping.policy: [hybrid, all-analog]
  zip:
    chip.tiles.array.rows: [128, 256]
    chip.tiles.array.cols: [128, 256]
  run: {times_s: [25, 86400], seeds: 1, test_images: 40, calib_images: 16}
"""


@pytest.fixture(scope="module")
def client():
    from dask.distributed import Client, LocalCluster
    cluster = LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                           dashboard_address=":0")
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()


def write(tmp_path: Path, text: str, name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def table(out: Path):
    columns, rows, torn = sweep.read_table(out / sweep.TABLE)
    assert not torn
    return columns, rows


def test_sweep_rows_equal_single_runs(client, tmp_path, monkeypatch):
    spec = write(tmp_path, DIGITS_12)
    out = tmp_path / "out"
    assert main(["sweep", str(spec), "--out", str(out), "--quiet",
                 "--scheduler", client.scheduler.address]) == 0
    columns, rows = table(out)
    assert columns[:5] == ["index", "chip.tiles.adc.bits", "mapping.policy",
                           "chip.tiles.array.rows", "chip.tiles.array.cols"]
    assert [r["index"] for r in rows] == list(range(12))
    assert [(r["chip.tiles.adc.bits"], r["mapping.policy"], r["chip.tiles.array.rows"])
            for r in rows[:3]] == [(6, "hybrid", 128), (6, "hybrid", 256), (6, "all-analog", 128)]
    assert len({r["key"] for r in rows}) == 12
    import archsim.report
    monkeypatch.setattr(archsim.report, "render_plots", lambda report: {})   # numbers only
    for r in rows:
        assert r["status"] == "ok"
        run_out = tmp_path / f"run{r['index']}"
        assert main(["run", "pcm_hybrid", "digits_cnn", "--quiet", "--out", str(run_out),
                     "--set", f"chip.tiles.adc.bits={r['chip.tiles.adc.bits']}",
                     "--set", f"chip.tiles.array.rows={r['chip.tiles.array.rows']}",
                     "--set", f"chip.tiles.array.cols={r['chip.tiles.array.cols']}",
                     "--mapping", r["mapping.policy"], "--times", "25s,1d", "--seeds", "1",
                     "--test-images", "40", "--calib-images", "16"]) == 0
        report = json.loads((run_out / "report.json").read_text())
        # every summary figure, bit for bit (the table stores floats as repr)
        for fig, value in report["summary"].items():
            assert r[fig] == value, (r["index"], fig)
        assert r["tops_per_mm2"] == report["summary"]["tops"] / report["summary"]["area_mm2"]
        acc = report["accuracy"]
        assert r["accuracy_fp32"] == acc["fp32"] and r["accuracy_images"] == 40
        for s in acc["series"]:
            for i, label in enumerate(("25s", "1d")):
                assert r[f"accuracy_{label}_{s['compensation']}"] == s["mean"][i]
                assert r[f"accuracy_{label}_{s['compensation']}_std"] == s["std"][i]
    # the report: a Pareto table, both plots
    assert {sweep.REPORT_MD, sweep.PLOT_ACCURACY, sweep.PLOT_EFFICIENCY} <= \
        {p.name for p in out.iterdir()}
    md = (out / sweep.REPORT_MD).read_text()
    assert "## Pareto-optimal points" in md and "12 points: 12 finished, 0 failed" in md


def test_killed_worker_still_gives_every_row_once(client, tmp_path):
    spec = sweep.load_sweep(write(tmp_path, DIGITS_12))
    killed = {}

    def kill_a_busy_worker(row):
        if killed:
            return
        busy = [addr for addr, keys in client.processing().items() if keys]
        assert busy, "no task in flight to kill"
        pid = client.run(os.getpid, workers=[busy[0]])[busy[0]]
        killed.update(address=busy[0], pid=pid, in_flight=len(client.processing()[busy[0]]))
        os.kill(pid, signal.SIGKILL)

    outcome = sweep.run_sweep(spec, tmp_path / "out", client=client, progress=False,
                              on_row=kill_a_busy_worker, log=open(os.devnull, "w"))
    assert killed["in_flight"] >= 1
    _, rows = table(tmp_path / "out")
    assert sorted(r["index"] for r in rows) == list(range(12))       # all, each once
    assert len({r["key"] for r in rows}) == 12
    assert all(r["status"] == "ok" for r in rows) and not outcome.failed
    client.wait_for_workers(2, timeout=60)          # the nanny restarted it, for the next tests
    assert killed["pid"] not in client.run(os.getpid).values()


def test_interrupted_sweep_resumes_only_the_missing_points(client, tmp_path):
    spec = sweep.load_sweep(write(tmp_path, DIGITS_12), accuracy=False)
    out = tmp_path / "out"
    devnull = open(os.devnull, "w")
    seen = []

    def interrupt_after_four(row):
        seen.append(row["index"])
        if len(seen) == 4:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(spec, out, client=client, progress=False, on_row=interrupt_after_four,
                        log=devnull)
    _, first = table(out)
    assert sorted(r["index"] for r in first) == sorted(seen)
    with pytest.raises(sweep.ConfigError, match="--resume"):
        sweep.run_sweep(spec, out, client=client, progress=False, log=devnull)

    outcome = sweep.run_sweep(spec, out, client=client, resume=True, progress=False, log=devnull)
    assert sorted(outcome.skipped) == sorted(seen)
    assert sorted(outcome.computed) == sorted(set(range(12)) - set(seen))
    _, rows = table(out)
    assert [r["index"] for r in rows] == list(range(12))
    assert all(r["status"] == "ok" for r in rows) and not outcome.failed
    before = {r["key"]: r for r in first}
    assert all(r == before[r["key"]] for r in rows if r["key"] in before)   # not recomputed

    # a crash in the middle of appending the last row: the torn line is cut, that point reruns
    text = (out / sweep.TABLE).read_text()
    last = text.rstrip("\n").rsplit("\n", 1)[1]
    (out / sweep.TABLE).write_text(text[:-len(last) - 1] + last[:len(last) // 2])
    _, _, torn = sweep.read_table(out / sweep.TABLE)
    assert torn
    outcome = sweep.run_sweep(spec, out, client=client, resume=True, progress=False, log=devnull)
    assert outcome.computed == [11] and len(outcome.skipped) == 11
    _, again = table(out)
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in again] == \
        [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_an_impossible_point_records_its_error_and_the_others_finish(client, tmp_path, capsys):
    spec = write(tmp_path, """\
sweep:
  name: impossible
  zip:
    chip.tiles.count: [64, 1, 64]         # digits_cnn needs 2 arrays: point 1 cannot be mapped
    chip.tiles.adc.bits: [6, 6, 8]
  run: {accuracy: false}
""")
    out = tmp_path / "out"
    assert main(["sweep", str(spec), "--out", str(out), "--quiet",
                 "--scheduler", client.scheduler.address]) == 1
    _, rows = table(out)
    assert [(r["chip.tiles.count"], r["status"]) for r in rows] == [
        (64, "ok"), (1, "error"), (64, "ok")]
    assert rows[1]["error"].startswith("MappingError: ")
    # the error names the tiles the network needs (issue 15)
    assert rows[1]["error"].endswith("pcm_hybrid.yaml: network digits_cnn needs 2 arrays "
                                     "(512x512) but the chip has 1 (1 tiles x 1); 2 tiles hold "
                                     "them (--set chip.tiles.count=2; replication: auto adds "
                                     "copies only with arrays to spare); add tiles or set "
                                     "mapping.time_multiplex: true")
    assert rows[1]["energy_per_inference_uj"] is None
    assert rows[0]["energy_per_inference_uj"] > 0 and rows[2]["energy_per_inference_uj"] > 0
    captured = capsys.readouterr()
    assert "Failed points (1):" in captured.out and "point 1 (chip.tiles.count=1" in captured.err
    assert "- point 1 (chip.tiles.count=1, chip.tiles.adc.bits=6): MappingError" in \
        (out / sweep.REPORT_MD).read_text()


def test_a_bug_in_a_task_is_retried_then_recorded_and_resume_reruns_it(client, tmp_path):
    """An exception that is not a user error: Dask retries the task, the row says
    internal-error, the exit status is 1, and --resume reruns that point only (one row per key)."""
    def install(bad_bits):                  # runs in each worker process: a bug for one point
        import archsim.simulate as simulate
        original = getattr(simulate.run, "original", simulate.run)

        def run(chip, *args, **kwargs):
            if chip.chip.tiles.adc.bits == bad_bits:
                run.failures += 1
                raise RuntimeError("boom")
            return original(chip, *args, **kwargs)
        run.original, run.failures = original, 0
        simulate.run = run if bad_bits is not None else original

    def failures():
        import archsim.simulate as simulate
        return getattr(simulate.run, "failures", 0)

    spec = write(tmp_path, "sweep:\n  grid: {chip.tiles.adc.bits: [6, 7, 8]}\n"
                           "  run: {accuracy: false}\n")
    out = tmp_path / "out"
    args = ["sweep", str(spec), "--out", str(out), "--quiet", "--scheduler",
            client.scheduler.address]
    client.run(install, 7)
    try:
        assert main(args) == 1
        assert sum(client.run(failures).values()) == 2          # the first try and one retry
    finally:
        client.run(install, None)
    _, rows = table(out)
    assert [r["status"] for r in rows] == ["ok", "internal-error", "ok"]
    assert rows[1]["error"] == "RuntimeError: boom"
    outcome = sweep.run_sweep(sweep.load_sweep(spec), out, client=client, resume=True,
                              progress=False, log=open(os.devnull, "w"))
    assert outcome.computed == [1] and sorted(outcome.skipped) == [0, 2]
    _, rows = table(out)
    assert [(r["index"], r["status"]) for r in rows] == [(0, "ok"), (1, "ok"), (2, "ok")]


def test_local_cluster_from_the_command_line(tmp_path):
    """No --scheduler: a LocalCluster of its own (worker processes spawned from `python -m`)."""
    spec = write(tmp_path, "sweep:\n  grid: {chip.tiles.adc.bits: [6, 8]}\n"
                           "  run: {accuracy: false}\n")
    proc = subprocess.run([sys.executable, "-m", "archsim", "sweep", str(spec), "--workers", "1",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "1 workers, 1 threads" in proc.stderr and "dashboard http" in proc.stderr
    assert "Pareto-optimal points" in proc.stdout
    _, rows = table(tmp_path / "out")
    assert [r["chip.tiles.adc.bits"] for r in rows] == [6, 8]


# ------------------------------------------------------------------------------------------
# Without a cluster
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("axes, where, what", [
    ("grid: {chip.tiles.adc.bits: [8, 20]}",
     "sweep.grid.chip.tiles.adc.bits[1]: point 1 (chip.tiles.adc.bits=20)",
     "chip.tiles.adc.bits: expected a value <= 16, got 20"),
    ("grid: {mapping.policy: [hybrid]}\n  zip: {chip.tiles.adc.bitz: [8]}",
     "sweep.zip.chip.tiles.adc.bitz[0]: point 0 (mapping.policy=hybrid, chip.tiles.adc.bitz=8)",
     "unknown key 'bitz'; did you mean 'bits'?"),
    ("grid: {chip.tiles.adc.bits: [6, 8], run.seeds: [2, 0]}",
     "sweep.grid.run.seeds[1]: point 1 (chip.tiles.adc.bits=6, run.seeds=0)",
     "sweep.run.seeds: expected a value >= 1, got 0"),
    ("zip: {chip.tiles.array.rows: [128, 256], chip.tiles.array.cols: [128]}",
     "sweep.zip: expected lists of one length", "lengths 2, 1"),
    ("grid: {chip.tiles.adc.bits: [8, 8]}", "sweep: points 0 and 1",
     "are the same configuration"),
    ("grid: {tiles.adc.bits: [8]}", "sweep.grid.tiles.adc.bits: expected an axis", "chip.PATH"),
])
def test_a_bad_point_is_one_error_before_anything_runs(tmp_path, capsys, axes, where, what):
    spec = write(tmp_path, f"sweep:\n  {axes}\n  run: {{accuracy: false}}\n")
    out = tmp_path / "out"
    assert main(["sweep", str(spec), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"archsim: error: {spec}: {where}")
    assert what in err
    assert not out.exists()


def test_shipped_example_loads_by_name():
    spec = sweep.load_sweep("adc_bits_x_array", accuracy=False)
    assert spec.axes == ("chip.tiles.adc.bits", "mapping.policy", "chip.tiles.array.rows",
                         "chip.tiles.array.cols")
    assert len(spec.points) == 16 and not spec.inputs
    assert spec.points[1].axes == (("chip.tiles.adc.bits", 6), ("mapping.policy", "hybrid"),
                                   ("chip.tiles.array.rows", 512), ("chip.tiles.array.cols", 512))
    assert spec.points[1].chip["chip"]["tiles"]["array"]["rows"] == 512
    assert spec.points[1].workload.name == "resnet32_cifar10"


def test_the_key_is_the_resolved_config_not_the_spelling(tmp_path):
    """500 and 500.0 for a float field are one point; accuracy options do not change a
    timing-only point; inferences in flight do."""
    a = sweep.load_sweep(write(tmp_path, "sweep:\n  grid: {chip.clock_mhz: [500]}\n"
                                         "  run: {accuracy: false}\n", "a.yaml"))
    b = sweep.load_sweep(write(tmp_path, "sweep:\n  grid: {chip.clock_mhz: [500.0]}\n"
                                         "  run: {accuracy: false, seeds: 7}\n", "b.yaml"))
    # timing and energy do not depend on the accuracy options: the same point
    assert a.points[0].key == b.points[0].key
    c = sweep.load_sweep(write(tmp_path, "sweep:\n  grid: {chip.clock_mhz: [500]}\n"
                                         "  run: {accuracy: false, inferences: 8}\n", "c.yaml"))
    assert c.points[0].key != a.points[0].key


def test_pareto_mask_by_hand():
    # (accuracy up, energy down): b beats a; c trades; d equals c (neither dominates); e has NaN
    values = np.array([[0.90, 2.0], [0.92, 1.5], [0.95, 3.0], [0.95, 3.0], [np.nan, 0.1]])
    assert sweep.pareto_mask(values, [True, False]).tolist() == [False, True, True, True, False]


HAND_TABLE = """\
index,chip.tiles.adc.bits,status,error,chip_name,workload_name,{figs},accuracy_images,accuracy_seeds,accuracy_fp32,{acc},seconds,key
0,6,ok,,c,w,{f0},100,2,0.9,{a0},1.0,k0
1,8,ok,,c,w,{f1},100,2,0.9,{a1},1.0,k1
2,10,ok,,c,w,{f2},100,2,0.9,{a2},1.0,k2
3,12,error,"MappingError: does not fit, really",c,w,{empty},,,,{aempty},0.1,k3
"""


def hand_table() -> str:
    figs = list(sweep.FIGURES)
    acc = [f"accuracy_1d_{c}{s}" for c in ("none", "gdc", "gdc+adabs") for s in ("", "_std")]

    def f(energy, latency, area, tops_w, tops_mm2):
        values = dict(energy_per_inference_uj=energy, latency_ns=latency, area_mm2=area,
                      tops_per_w=tops_w, tops_per_mm2=tops_mm2)
        return ",".join(str(values.get(k, 1.0)) for k in figs)

    def a(value):
        return ",".join(str(v) for v in (0.5, 0.0, 0.8, 0.0, value, 0.01))
    # point 1 beats point 0 everywhere; point 2 is more accurate but costs more: front {1, 2}
    return HAND_TABLE.format(figs=",".join(figs), acc=",".join(acc),
                             f0=f(2.0, 100.0, 10.0, 5.0, 0.5), a0=a(0.80),
                             f1=f(1.0, 90.0, 10.0, 6.0, 0.6), a1=a(0.85),
                             f2=f(3.0, 90.0, 10.0, 4.0, 0.4), a2=a(0.88),
                             empty="," * (len(figs) - 1), aempty="," * (len(acc) - 1))


def test_report_rerenders_from_the_table_alone(tmp_path, capsys):
    (tmp_path / sweep.TABLE).write_text(hand_table())
    assert main(["sweep", "--report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Pareto-optimal points (2 of 3 finished" in out
    front = [line.split()[0] for line in out.splitlines()[4:6]]
    assert front == ["1", "2"]                    # by energy: 1.0 then 3.0 uJ
    assert "85.00" in out and "88.00" in out and "80.00" not in out
    assert "Failed points (1):\n  point 3: MappingError: does not fit, really" in out
    assert {p.name for p in tmp_path.iterdir()} >= {sweep.REPORT_MD, sweep.PLOT_ACCURACY,
                                                    sweep.PLOT_EFFICIENCY}
    md = (tmp_path / sweep.REPORT_MD).read_text()
    assert "4 points: 3 finished, 1 failed" in md and "- point 3 (chip.tiles.adc.bits=12)" in md


def test_read_table_drops_a_torn_last_line(tmp_path):
    text = hand_table()
    (tmp_path / sweep.TABLE).write_text(text[:-20])
    columns, rows, torn = sweep.read_table(tmp_path / sweep.TABLE)
    assert torn and [r["index"] for r in rows] == [0, 1, 2]
    assert sweep.axes_of(columns) == ["chip.tiles.adc.bits"]
    assert rows[0]["accuracy_1d_gdc+adabs"] == 0.8 and rows[0]["chip.tiles.adc.bits"] == 6
