"""Monte Carlo chips in parallel processes against one process on threads (issue 14), the same
work measured in one run: ``--chips`` programmed chips of the hybrid ResNet-32 chip
(configs/pcm_hybrid.yaml), ``--images`` test images, accuracy at ``--times`` with GDC.

- threads: one process evaluates every chip (archsim.functional.evaluate_accuracy) on archsim's
  worker threads, one per core, each with one-threaded BLAS;
- processes: one process per core (spawned), each on one thread with one-threaded BLAS,
  evaluates its share of the chips (``first_chip``), and AccuracyResult.combine joins them.

Both start from a fresh process (loading the workload, weights and images counts in both; each
process of the second computes the FP32 accuracy again, as a real split would). Prints both
wall times, the speed-up of processes over threads, and whether the joined result equals the
threaded one bit for bit (a chip's draws depend on its index alone, and the numbers on no thread
count).

    python benchmarks/bench_chips.py [--chips 2] [--images 10000] [--times 25s,1d] [--blas as-set]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks import blas_kernels  # noqa: E402  (standard library only)

if __name__ == "__main__":
    blas_kernels.choose(sys.argv[1:])             # before numpy loads OpenBLAS

if (REPO.parent / "shared" / "data").is_dir():
    os.environ.setdefault("ARCHSIM_DATA", str(REPO.parent / "shared" / "data"))


def evaluate_chips(first_chip: int, chips: int, images: int, times_s: tuple, workers: int
                   ) -> dict:
    """In a fresh process (its import of this script put the repository on sys.path): the
    accuracy of chips first_chip .. first_chip + chips - 1 on ``workers`` threads, as a dict."""
    from archsim import threads
    from archsim.config import load_chip
    from archsim.functional import evaluate_accuracy
    from archsim.mapping import map_network
    from archsim.workloads import load_workload
    threads.set_workers(workers)
    wl = load_workload(REPO / "workloads" / "resnet32_cifar10.yaml")
    test = wl.dataset("test")
    test = test.subset(slice(0, min(images, len(test))))
    mapping = map_network(load_chip(REPO / "configs" / "pcm_hybrid.yaml"), wl.network)
    result = evaluate_accuracy([mapping], wl.load_params(), test, times_s=times_s, seeds=chips,
                               compensations=("gdc",), progress=False, first_chip=first_chip)
    return result.to_dict()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chips", type=int, default=2)
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--times", default="25s,1d")
    blas_kernels.add_arguments(ap)
    args = ap.parse_args(argv)

    from archsim import threads
    from archsim.cli import parse_times
    from archsim.functional import AccuracyResult
    cores = threads.available_cores()
    times_s = tuple(parse_times(args.times))
    context = multiprocessing.get_context("spawn")
    print(f"{args.chips} chips x {len(times_s)} times, {args.images} images, GDC, {cores} cores; "
          f"{blas_kernels.pins_text()}; load {os.getloadavg()[0]:.2f}", flush=True)

    start = time.perf_counter()
    with cf.ProcessPoolExecutor(1, mp_context=context) as pool:
        whole = pool.submit(evaluate_chips, 0, args.chips, args.images, times_s, cores).result()
    threaded_s = time.perf_counter() - start

    procs = max(1, min(cores, args.chips))
    share = [len(range(i, args.chips, procs)) for i in range(procs)]
    firsts = [sum(share[:i]) for i in range(procs)]
    os.environ["OPENBLAS_NUM_THREADS"] = "1"          # the spawned processes' BLAS
    start = time.perf_counter()
    with cf.ProcessPoolExecutor(procs, mp_context=context) as pool:
        futures = [pool.submit(evaluate_chips, f, n, args.images, times_s, 1)
                   for f, n in zip(firsts, share)]
        parts = [f.result() for f in futures]
    process_s = time.perf_counter() - start

    joined = AccuracyResult.combine([AccuracyResult.from_dict(p) for p in parts])
    same = joined.to_dict() == AccuracyResult.from_dict(whole).to_dict()
    print(f"threads   (1 process, {cores} threads): {threaded_s:7.1f} s")
    print(f"processes ({procs} processes, 1 thread each): {process_s:7.1f} s  "
          f"({threaded_s / process_s:.2f}x the threaded speed)")
    print(f"joined result equal to the threaded one bit for bit: {'yes' if same else 'NO'}; "
          f"GDC accuracy per chip and time: "
          f"{[[round(100 * a, 2) for a in row] for row in joined.series[0].per_seed]}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
