"""Speed of the functional simulation: the FP32 forward pass vs. the full analog evaluation
(programming noise, drift, read noise, DAC/ADC, GDC) of ResNet-32 on the CIFAR-10 test images.

    python benchmarks/bench_functional.py [--images 10000] [--batch-size 128]

Prints both times, their ratio (target: analog <= 1.5x FP32) and the peak resident memory
(target < 4 GB). Needs ../shared/data (or $ARCHSIM_DATA).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
if (REPO.parent / "shared" / "data").is_dir():
    os.environ.setdefault("ARCHSIM_DATA", str(REPO.parent / "shared" / "data"))

from archsim import functional as F  # noqa: E402
from archsim.config import load_chip  # noqa: E402
from archsim.mapping import map_network  # noqa: E402
from archsim.network import Workspace, forward  # noqa: E402
from archsim.workloads import load_workload  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0     # kB on Linux


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chip", default=str(REPO / "configs" / "pcm_hybrid.yaml"))
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--time-s", type=float, default=86400.0)
    args = ap.parse_args(argv)

    wl = load_workload(REPO / "workloads" / "resnet32_cifar10.yaml")
    params = wl.load_params()
    test = wl.dataset("test")
    test = test.subset(slice(0, min(args.images, len(test))))
    mapping = map_network(load_chip(args.chip), wl.network)

    # warm-up (numba compilation, BLAS threads) on one batch, not timed
    warm = test.normalized(slice(0, args.batch_size))
    forward(wl.network, params, warm)
    streams0 = F.chip_streams(0, "hybrid", 0)
    chip0 = F.program_chip(mapping, params, streams0)
    ts0 = streams0.child("time", 0)
    F.analog_forward(chip0.at(args.time_s, ts0).read(ts0("read")), warm,
                     noise_rng=ts0("adc-noise"))

    def timed_pass(logits) -> tuple[float, float]:
        start = time.perf_counter()
        correct = 0
        for xb, yb in test.batches(args.batch_size):
            correct += int(np.count_nonzero(np.argmax(logits(xb), axis=1) == yb))
        return time.perf_counter() - start, correct / len(test)

    ws = Workspace()
    fp32_s, fp32_acc = timed_pass(lambda xb: forward(wl.network, params, xb, workspace=ws))

    start = time.perf_counter()
    streams = F.chip_streams(0, "hybrid", 1)
    chip = F.program_chip(mapping, params, streams)
    ts = streams.child("time", 0)
    state = chip.at(args.time_s, ts)
    setup_s = time.perf_counter() - start
    ws = Workspace()
    read_rng, noise_rng = ts("read", "test", "gdc"), ts("adc-noise", "test", "gdc")
    pass_s, analog_acc = timed_pass(lambda xb: F.analog_forward(state.read(read_rng), xb, gdc=True,
                                                                workspace=ws, noise_rng=noise_rng))
    analog_s = setup_s + pass_s

    print(f"ResNet-32, {len(test)} images, batch {args.batch_size}, chip {args.chip}, "
          f"t = {args.time_s:g} s")
    print(f"FP32 forward:      {fp32_s:8.2f} s  accuracy {100 * fp32_acc:.2f}%")
    print(f"analog evaluation: {analog_s:8.2f} s  (programming + drift + GDC readout "
          f"{setup_s:.2f} s, pass with a read per batch {pass_s:.2f} s)  accuracy {100 * analog_acc:.2f}% with GDC")
    print(f"ratio analog / FP32: {analog_s / fp32_s:.2f}  (target <= 1.5)")
    print(f"peak memory (ru_maxrss): {peak_rss_mb():.0f} MB  (target < 4096 MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
