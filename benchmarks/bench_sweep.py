"""Sweep scaling on Dask: the shipped ResNet-32 sweep (configs/sweeps/adc_bits_x_array.yaml, 16
points) timing, energy and area only, on a LocalCluster of 1 and then of 2 worker processes (one
thread each) in one run; prints the wall time of each and the speed-up.

Target: a speed-up close to the worker count (2 on 2 idle cores): one task per point, nothing
shared but the scheduler. Each cluster is started and its workers have imported archsim before
the clock starts; the sum of the points' own run times (measured in the tasks) is the serial
work, so wall - work / workers is what Dask and the table writing cost. The wall time ends when the
last row is on disk (the report plots after it take the same time for every worker count).

Run: python benchmarks/bench_sweep.py [--workers 1,2] [--inferences N]
(16 inferences in flight by default instead of the sweep file's 4: a ResNet-32 point then takes
about a second of SimPy time instead of 0.2 s.)
The machine's load average is printed before and after: a busy machine lowers the speed-up.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path


def warm_up() -> str:
    """Import what a point needs (run on every worker before timing)."""
    import archsim.simulate  # noqa: F401
    import archsim.timing  # noqa: F401
    import archsim.accounting  # noqa: F401
    return "ok"


def main() -> None:
    from dask.distributed import Client, LocalCluster

    from archsim import sweep

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", default="1,2", help="worker counts to time (default 1,2)")
    ap.add_argument("--sweep", default="adc_bits_x_array", help="sweep file or shipped name")
    ap.add_argument("--inferences", type=int, default=16,
                    help="inferences in flight per point (default 16: about a second per point, "
                         "so start-up noise does not dominate; 0: the sweep file's)")
    args = ap.parse_args()
    spec = sweep.load_sweep(args.sweep, accuracy=False)
    if args.inferences:
        spec = dataclasses.replace(spec, points=tuple(
            dataclasses.replace(p, options=dataclasses.replace(p.options,
                                                               inferences=args.inferences))
            for p in spec.points))
    counts = [int(n) for n in args.workers.split(",")]
    print(f"sweep {spec.name}: {len(spec.points)} points, timing + energy + area only; "
          f"{os.cpu_count()} cores; load average before: "
          + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    print(f"{'workers':>7s} {'start_s':>8s} {'wall_s':>8s} {'work_s':>8s} {'s/point':>8s} "
          f"{'overhead_s':>10s} {'speed-up':>8s}")
    walls = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in counts:
            t0 = time.perf_counter()
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                   dashboard_address=":0")
            client = Client(cluster)
            client.run(warm_up)
            start_s = time.perf_counter() - t0
            last_row = []
            try:
                t0 = time.perf_counter()
                outcome = sweep.run_sweep(spec, Path(tmp) / f"w{n}", client=client,
                                          progress=False, log=open(os.devnull, "w"),
                                          on_row=lambda row: last_row.append(time.perf_counter()))
                wall = last_row[-1] - t0            # to the last row on disk (not the plots)
            finally:
                client.close()
                cluster.close()
            assert not outcome.failed and len(outcome.computed) == len(spec.points)
            work = sum(r["seconds"] for r in outcome.rows)
            walls[n] = wall
            print(f"{n:7d} {start_s:8.2f} {wall:8.2f} {work:8.2f} {work / len(spec.points):8.3f} "
                  f"{wall - work / n:10.2f} {walls[counts[0]] / wall:8.2f}")
    print("load average after: " + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    if len(counts) > 1:
        a, b = counts[0], counts[-1]
        print(f"speed-up {a} -> {b} workers: {walls[a] / walls[b]:.2f} (ideal {b / a:g})")


if __name__ == "__main__":
    main()
