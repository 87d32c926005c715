"""Speed of the functional simulation against a real inference engine, in one run on the same
CIFAR-10 test images (issue 14):

- onnxruntime on the shared ResNet-32 ONNX export (../shared/data/resnet32_cifar10_akamaster.onnx,
  NCHW input, 2 intra-op threads, 1 inter-op thread): the anchor;
- archsim's FP32 pass (archsim.network.forward);
- archsim's full analog evaluation at 1 day on the hybrid chip: programming, drift, the GDC
  readout, then for every batch a fresh read of the whole chip (read noise), DAC, the arrays, ADC
  with its default output noise, GDC factors and the digital periphery (what one test pass of
  archsim.functional.evaluate_accuracy does, F.BATCHES_IN_FLIGHT batches at a time).

    python benchmarks/bench_functional.py [--images 10000] [--rounds 10]

The images are split into rounds; each round runs the three engines one after the other on the
same images (rotating which goes first), so a change in the machine's load hits all three alike.
Prints images/s of each, archsim / onnxruntime for both passes (targets: FP32 >= 0.5, analog >=
0.35), the peak resident memory (target < 2 GB), the threads and BLAS kernels used and the load
average, and the CPU seconds each engine used (a quiet machine's wall time is about CPU / cores
for archsim, whose threads never spin; onnxruntime's threads spin while they wait).
``--batch-sizes`` first times a few batch sizes per engine (on --probe-images images) and reports
them; each engine then runs at its fastest one, except the analog evaluation, which runs at the
accuracy driver's default (its batch is the set of images that share one read of the chip, so it
is part of the model, not a speed knob). onnxruntime is a test/benchmark extra, never a runtime
dependency. Needs ../shared/data (or $ARCHSIM_DATA).

BLAS kernels: onnxruntime brings its own AVX-512 GEMMs; archsim's FP32 GEMMs (and the analog
pass's digital layers) are numpy's OpenBLAS - the analog layers' products are archsim's own
register tiles (archsim.kernels.block_products_into), whatever BLAS there is - whose kernels
follow OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE where they are set (this project's
machines set Haswell and 512 for older OpenBLAS builds: AVX2 kernels, half the vector width of
their AVX-512 CPUs). By default (``--blas native``) the benchmark restarts without both, numpy's
OpenBLAS choosing its kernels as it does on a machine without them; ``--blas as-set`` keeps the
environment's (see benchmarks/blas_kernels.py).
The benchmark also times the matrix products alone (benchmarks/gemm_bound.py: the same GEMMs,
blocks, chunks and threads, nothing else) and prints what that ceiling allows: no change outside
BLAS takes the FP32 pass beyond it (the analog pass's own tiles can).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks import blas_kernels  # noqa: E402  (standard library only)

if __name__ == "__main__":
    blas_kernels.choose(sys.argv[1:])             # before numpy loads OpenBLAS

import numpy as np  # noqa: E402

if (REPO.parent / "shared" / "data").is_dir():
    os.environ.setdefault("ARCHSIM_DATA", str(REPO.parent / "shared" / "data"))

from archsim import functional as F  # noqa: E402
from archsim import threads  # noqa: E402
from archsim.config import load_chip  # noqa: E402
from archsim.mapping import map_network  # noqa: E402
from archsim.network import Workspace, forward  # noqa: E402
from archsim.workloads import load_workload  # noqa: E402
from benchmarks import gemm_bound  # noqa: E402

ONNX_FILE = "resnet32_cifar10_akamaster.onnx"
TARGETS = {"fp32": 0.5, "analog": 0.35}
TIME_S = 86400.0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0     # kB on Linux


def load_text() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def cpu_has_avx512() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return " avx512f" in f.read()
    except OSError:
        return False


def blas_text() -> str:
    from threadpoolctl import threadpool_info
    return ", ".join(f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture')} "
                     f"kernels, {i.get('num_threads')} threads)"
                     for i in threadpool_info() if i.get("user_api") == "blas")


class Engines:
    """The three engines as 'run this batch, give its logits', sharing the test images."""

    def __init__(self, args):
        import onnxruntime as ort
        data = Path(os.environ.get("ARCHSIM_DATA", REPO.parent / "shared" / "data"))
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.ort_threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(data / ONNX_FILE), options,
                                            providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        wl = load_workload(REPO / "workloads" / "resnet32_cifar10.yaml")
        self.net, self.params = wl.network, wl.load_params()
        self.mapping = map_network(load_chip(args.chip), self.net)
        self.ws = {"fp32": Workspace(), "analog": Workspace()}
        self.state = None
        self.read_rng = self.noise_rng = None

    def program(self, chip_index: int) -> float:
        """Program a chip and take it to 1 day (timed: part of the analog evaluation)."""
        start = time.perf_counter()
        streams = F.chip_streams(0, "hybrid", chip_index)
        chip = F.program_chip(self.mapping, self.params, streams)
        ts = streams.child("time", 0)
        self.state = chip.at(TIME_S, ts)
        self.read_rng, self.noise_rng = ts("read", "test", "gdc"), ts("adc-noise", "test", "gdc")
        return time.perf_counter() - start

    def ort(self, x_nchw: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x_nchw})[0]

    def fp32(self, x: np.ndarray) -> np.ndarray:
        return forward(self.net, self.params, x, workspace=self.ws["fp32"])

    def analog(self, x: np.ndarray, batch: int) -> np.ndarray:
        """Up to F.BATCHES_IN_FLIGHT batches of ``batch`` images (one read each) in one go, as a
        test pass of the accuracy driver runs them (archsim.functional.test_pass)."""
        xs = [x[i:i + batch] for i in range(0, len(x), batch)]
        reads = [self.state.read(self.read_rng) for _ in xs]
        return np.concatenate(F.analog_forward_batches(reads, xs, gdc=True,
                                                       workspace=self.ws["analog"],
                                                       noise_rng=self.noise_rng))


def engine_call(eng: Engines, name: str, batch: int):
    """(images per call, call(x) -> logits) of an engine at a batch size: the analog evaluation
    takes F.BATCHES_IN_FLIGHT batches per call, the others one."""
    if name == "analog":
        return batch * F.BATCHES_IN_FLIGHT, lambda x: eng.analog(x, batch)
    return batch, getattr(eng, name)


def timed(fn, x: np.ndarray, batch: int) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    preds = [np.argmax(fn(x[i:i + batch]), axis=1) for i in range(0, len(x), batch)]
    return time.perf_counter() - start, np.concatenate(preds)


def timed_cpu(fn, x: np.ndarray, batch: int) -> tuple[float, float, np.ndarray]:
    """(wall seconds, CPU seconds of this process, predictions)."""
    cpu = time.process_time()
    wall, preds = timed(fn, x, batch)
    return wall, time.process_time() - cpu, preds


def probe_batch_sizes(eng: Engines, x: np.ndarray, xc: np.ndarray, sizes, probe: int) -> dict:
    """Images/s of each engine at each batch size on the first ``probe`` images (best of 2)."""
    out = {}
    for name in ("ort", "fp32", "analog"):
        data = xc if name == "ort" else x
        rates = {}
        for b in sizes:
            per_call, fn = engine_call(eng, name, b)
            best = min(timed(fn, data[:probe], per_call)[0] for _ in range(2))
            rates[b] = probe / best
        out[name] = rates
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chip", default=str(REPO / "configs" / "pcm_hybrid.yaml"))
    ap.add_argument("--images", type=int, default=10000,
                    help="test images (evenly spaced over the class-sorted test file)")
    ap.add_argument("--rounds", type=int, default=10,
                    help="the images are timed in this many interleaved rounds")
    ap.add_argument("--ort-threads", type=int, default=2)
    ap.add_argument("--batch-sizes", default="64,128,256,512",
                    help="batch sizes to probe first ('' to skip)")
    ap.add_argument("--probe-images", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=None,
                    help="batch size of the ORT and FP32 passes (default: the fastest probed)")
    ap.add_argument("--analog-batch-size", type=int, default=F.DEFAULT_BATCH_SIZE,
                    help="images per read of the chip (default: the accuracy driver's)")
    blas_kernels.add_arguments(ap)
    args = ap.parse_args(argv)

    print(f"start: {load_text()}; archsim on {threads.workers()} threads; BLAS: {blas_text()} "
          f"({blas_kernels.pins_text()})", flush=True)
    if cpu_has_avx512() and any(k in blas_text() for k in ("Haswell", "Zen")):
        print("note: this CPU has AVX-512 (onnxruntime uses it) but OpenBLAS runs its AVX2 "
              "kernels, as the environment pins them (--blas as-set); --blas native compares like "
              "with like")
    eng = Engines(args)
    test = load_workload(REPO / "workloads" / "resnet32_cifar10.yaml").dataset("test")
    n = min(args.images, len(test))
    index = np.arange(0, len(test), len(test) / n).astype(np.int64)[:n]
    x = test.normalized(index)
    labels = test.labels[index]
    xc = np.ascontiguousarray(x.transpose(0, 3, 1, 2))          # NCHW for onnxruntime

    # warm-up, not timed: numba compilation (or its cache), BLAS and ORT start-up
    eng.program(0)
    warm = slice(0, min(64, n))
    eng.ort(xc[warm]), eng.fp32(x[warm]), eng.analog(x[warm], args.analog_batch_size)

    batch = {"ort": args.batch_size, "fp32": args.batch_size, "analog": args.analog_batch_size}
    sizes = [int(s) for s in args.batch_sizes.split(",") if s.strip()]
    if sizes:
        probe = min(args.probe_images, n)
        rates = probe_batch_sizes(eng, x, xc, sizes, probe)
        print(f"\nbatch sizes (images/s on {probe} images, best of 2; {load_text()}):")
        print("  batch      " + "".join(f"{b:>9d}" for b in sizes))
        for name, label in (("ort", "onnxruntime"), ("fp32", "FP32"), ("analog", "analog")):
            print(f"  {label:<11}" + "".join(f"{rates[name][b]:9.0f}" for b in sizes))
        for name in ("ort", "fp32"):
            if batch[name] is None:
                batch[name] = max(rates[name], key=rates[name].get)
    for name in ("ort", "fp32"):
        if batch[name] is None:
            batch[name] = 128

    seconds = {"ort": 0.0, "fp32": 0.0, "analog": 0.0}
    cpu_s = dict(seconds)
    preds = {name: [] for name in seconds}
    cpu0 = time.process_time()
    seconds["analog"] += eng.program(1)           # the evaluated chip: programming + drift + GDC
    cpu_s["analog"] += time.process_time() - cpu0
    setup_s = seconds["analog"]
    rounds = max(1, min(args.rounds, n))
    edges = np.linspace(0, n, rounds + 1).astype(int)
    order = ["ort", "fp32", "analog"]
    for r in range(rounds):
        part = slice(edges[r], edges[r + 1])
        for name in order[r % 3:] + order[:r % 3]:
            per_call, fn = engine_call(eng, name, batch[name])
            dt, cpu, p = timed_cpu(fn, xc[part] if name == "ort" else x[part], per_call)
            seconds[name] += dt
            cpu_s[name] += cpu
            preds[name].append(p)
    preds = {k: np.concatenate(v) for k, v in preds.items()}
    rate = {k: n / v for k, v in seconds.items()}

    print(f"\nResNet-32 / CIFAR-10, {n} test images in {rounds} interleaved rounds; "
          f"end: {load_text()}")
    print(f"{'engine':<44}{'batch':>6}{'seconds':>10}{'images/s':>10}{'CPU s':>8}"
          f"{'accuracy':>10}")
    rows = (("ort", f"onnxruntime ({args.ort_threads} intra-op threads)"),
            ("fp32", "archsim FP32"),
            ("analog", f"archsim analog at 1 day (setup {setup_s:.2f} s incl.)"))
    for name, label in rows:
        acc = np.mean(preds[name] == labels)
        print(f"{label:<44}{batch[name]:>6}{seconds[name]:10.2f}{rate[name]:10.0f}"
              f"{cpu_s[name]:8.1f}{100 * acc:9.2f}%")
    agree = np.mean(preds["fp32"] == preds["ort"])
    print(f"FP32 predictions equal to onnxruntime's: {100 * agree:.2f}%")
    ok = True
    for name in ("fp32", "analog"):
        ratio = rate[name] / rate["ort"]
        ok &= ratio >= TARGETS[name]
        print(f"ratio archsim {name} / onnxruntime: {ratio:.3f}  (target >= {TARGETS[name]})")
    print(f"ratio analog / FP32: {rate['fp32'] / rate['analog']:.2f} (time)")
    by_batch = {b: gemm_bound.inference_images_per_s(eng.net, n, b)      # once per batch size
                for b in {batch["fp32"], batch["analog"]}}
    ceiling = {name: by_batch[batch[name]] for name in ("fp32", "analog")}
    print(f"matrix products alone (benchmarks/gemm_bound.py, same BLAS, blocks, chunks and "
          f"threads; {load_text()}): {ceiling['fp32']:.0f} images/s at batch {batch['fp32']} = "
          f"{ceiling['fp32'] / rate['ort']:.3f}x onnxruntime, {ceiling['analog']:.0f} at batch "
          f"{batch['analog']}; the FP32 pass runs at "
          f"{100 * rate['fp32'] / ceiling['fp32']:.0f}% of it, the analog evaluation at "
          f"{100 * rate['analog'] / ceiling['analog']:.0f}%")
    print(f"accuracy_resnet32.py --seeds 5 at this analog rate: 75 test passes of 10,000 images "
          f"take {75 * 10000 / rate['analog'] / 60:.1f} min (AdaBS, 25 x 1,000 images with "
          f"batch statistics, adds a few percent)")
    peak = peak_rss_mb()
    ok &= peak < 2048
    print(f"peak memory (ru_maxrss, whole process): {peak:.0f} MB  (target < 2048 MB)")
    print(f"archsim threads: {threads.workers()}; BLAS: {blas_text()}")
    print("targets met" if ok else "targets NOT met")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
