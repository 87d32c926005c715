"""Timing-simulation speed: wall time and simulated events per second for ResNet-32 with 1 and 8
inferences in flight, on the hybrid and the all-digital chip.

Target: at most 1 s of wall time per simulated inference, growing linearly with inferences.
Run: python benchmarks/bench_timing.py [--repeat N]
"""

from __future__ import annotations

import argparse
import time

from archsim.config import load_chip
from archsim.mapping import map_network
from archsim.network import resnet_cifar
from archsim.timing import simulate_timing


def measure(mapping, inferences: int, repeat: int):
    best = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        res = simulate_timing(mapping, inferences)
        wall = time.perf_counter() - t0
        best = wall if best is None else min(best, wall)
    return best, res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="runs per case; the best is reported")
    args = ap.parse_args()
    net = resnet_cifar(32)
    print(f"{'chip':14s} {'infer':>5s} {'wall_s':>8s} {'s/infer':>8s} {'events':>8s} "
          f"{'events/s':>10s} {'latency_cyc':>12s} {'interval_cyc':>12s} {'infer/s':>10s}")
    for config in ("pcm_hybrid", "digital_fp32"):
        mapping = map_network(load_chip(config), net)
        walls = {}
        for n in (1, 8):
            wall, res = measure(mapping, n, args.repeat)
            walls[n] = wall
            print(f"{config:14s} {n:5d} {wall:8.3f} {wall / n:8.3f} {res.events:8d} "
                  f"{res.events / wall:10.0f} {res.latency_cycles:12d} {res.interval_cycles:12d} "
                  f"{res.throughput_inferences_per_s:10.1f}")
        print(f"{config:14s} wall(8)/wall(1) = {walls[8] / walls[1]:.2f} (linear: 8); "
              f"worst s/inference = {max(walls[1], walls[8] / 8):.3f} (target <= 1.0)")


if __name__ == "__main__":
    main()
