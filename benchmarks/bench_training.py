"""Training speed against a real engine, in one run on the same images: onnxruntime's FP32
inference throughput on the shared ResNet-32 ONNX export (2 intra-op threads, 1 inter-op, NCHW),
archsim's FP32 inference throughput, and archsim's training throughput (one epoch of `train`:
noise injection eta 0.038, clipping 2.5 sigma, crop+flip augmentation, SGD with momentum), with
the ratio training / onnxruntime. Target: >= 0.15.

    python benchmarks/bench_training.py [--images 2048] [--batch-size 128] [--rounds 3]
                                        [--workers N] [--chunk-kib 1024[,256,4096]]

The images are the first ``--images`` of ``cifar10_train_subset.npz``. The machine is shared, so
the three engines are measured in turn, ``--rounds`` times, and each round gives its own ratio;
the median round is the result, and the load average is printed beside it. Each round also runs
onnxruntime with one thread and training with one worker and counts images per CPU-second of
the process: a single-threaded run's CPU time hardly depends on what else runs, so that ratio is
the estimate for a quiet machine (onnxruntime's two threads spin-wait on each other and lose
most of their speed when another process takes a core: 2,700 images/s alone, 600-900 beside
other work, on this 2-core machine). ``--chunk-kib`` lists chunk sizes
(archsim.threads.CHUNK_BYTES) to compare within the same rounds. Also prints one training step
split into forward and backward, and the training step's matrix products alone
(benchmarks/gemm_bound.py: every layer's forward, input-gradient and weight-gradient GEMMs on the
same chunks and threads, nothing else): the ceiling no change outside BLAS passes. numpy's
OpenBLAS picks its GEMM kernels per CPU (printed) unless OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE
pin them; the benchmark runs without both (``--blas native``, the default; ``--blas as-set``
keeps them: benchmarks/blas_kernels.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
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

from archsim import threads  # noqa: E402
from archsim.datasets import load_cifar10  # noqa: E402
from archsim.network import Workspace, forward  # noqa: E402
from archsim.training import (TrainConfig, backward, forward_train, noisy_weights,  # noqa: E402
                              softmax_cross_entropy, train)
from archsim.workloads import find_data_file, load_workload  # noqa: E402
from benchmarks import gemm_bound  # noqa: E402

TARGET = 0.15


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.2f} (1 min) {five:.2f} (5 min) on {threads.available_cores()} cores"


def blas() -> str:
    from threadpoolctl import threadpool_info
    libs = [f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture')} kernels)"
            for i in threadpool_info() if i.get("user_api") == "blas"]
    return ", ".join(libs) or "unknown"


def ort_session(path: Path, threads: int = 2):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def images_per_s(fn, batches, cpu: bool = False) -> float:
    """Images per second of wall time (``cpu``: per second of this process's CPU time, which other
    processes on the machine barely change for a single-threaded run)."""
    clock = time.process_time if cpu else time.perf_counter
    start = clock()
    n = 0
    for x in batches:
        fn(x)
        n += len(x)
    return n / (clock() - start)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("ARCHSIM_DATA", "../shared/data"))
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=None,
                    help="training worker threads (default: one per available core)")
    ap.add_argument("--chunk-kib", default=str(threads.CHUNK_BYTES // 1024),
                    help="comma-separated chunk sizes in KiB to compare (default: the shipped one)")
    blas_kernels.add_arguments(ap)
    args = ap.parse_args(argv)

    wl = load_workload("resnet32_cifar10", args.data)
    params = wl.load_params()
    net = wl.network
    ds = wl.spec.dataset
    data = load_cifar10(find_data_file("cifar10_train_subset.npz", args.data), "train", ds.mean,
                        ds.std).subset(slice(0, args.images))
    b = args.batch_size
    nhwc = [data.normalized(slice(i, i + b)) for i in range(0, len(data), b)]
    nchw = [np.ascontiguousarray(x.transpose(0, 3, 1, 2)) for x in nhwc]
    model = find_data_file("resnet32_cifar10_akamaster.onnx", args.data)
    session = ort_session(model, 2)
    session1 = ort_session(model, 1)
    ws = Workspace()
    chunk_sizes = [int(v) for v in args.chunk_kib.split(",")]
    config = TrainConfig(epochs=1, lr=0.01, batch_size=b, noise_eta=0.038, clip_alpha=2.5,
                         augment=True, seed=0)

    def run_ort(x):
        session.run(None, {"input": x})

    def run_ort1(x):
        session1.run(None, {"input": x})

    def run_archsim(x):
        forward(net, params, x, workspace=ws)

    def run_train(chunk_kib: int, workers: int | None, cpu: bool = False) -> float:
        threads.CHUNK_BYTES = chunk_kib * 1024
        start = time.process_time()
        _, history = train(net, params, data, config, progress=False, workers=workers)
        if cpu:
            return history[0].images / (time.process_time() - start)
        return history[0].images_per_s

    # warm-up: kernel compilation / cache loading, BLAS and onnxruntime thread start
    run_ort(nchw[0])
    run_ort1(nchw[0])
    run_archsim(nhwc[0])
    train(net, params, data.subset(slice(0, 2 * b)), config, progress=False, workers=args.workers)

    print(f"ResNet-32, {len(data)} images, batch {b}, {args.rounds} rounds; BLAS: {blas()} "
          f"({blas_kernels.pins_text()}); before: {load()}")
    rows = []
    for r in range(args.rounds):
        ort_ips = images_per_s(run_ort, nchw)
        ort1_ips = images_per_s(run_ort1, nchw, cpu=True)
        fp32_ips = images_per_s(run_archsim, nhwc)
        turn = r % len(chunk_sizes)             # rotate the order: load drifts within a round
        train_ips = {c: run_train(c, args.workers)
                     for c in chunk_sizes[turn:] + chunk_sizes[:turn]}
        train_ips = {c: train_ips[c] for c in chunk_sizes}
        train1_ips = run_train(chunk_sizes[0], 1, cpu=True)
        rows.append((ort_ips, fp32_ips, train_ips, ort1_ips, train1_ips))
        cells = "  ".join(f"training[{c} KiB] {v:6.1f} ({v / ort_ips:.3f}x)"
                          for c, v in train_ips.items())
        print(f"round {r + 1}: onnxruntime {ort_ips:6.1f}  archsim FP32 {fp32_ips:6.1f}  {cells}  "
              f"| one thread, per CPU-second: onnxruntime {ort1_ips:6.1f}  training "
              f"{train1_ips:6.1f} ({train1_ips / ort1_ips:.3f}x); {load()}", flush=True)

    def median(values):
        return statistics.median(values)

    ort_med = median([row[0] for row in rows])
    fp32_med = median([row[1] for row in rows])
    print(f"\nmedian over rounds (images/s): onnxruntime FP32 inference {ort_med:.1f}, "
          f"archsim FP32 inference {fp32_med:.1f} ({fp32_med / ort_med:.3f}x)")
    single = [row[4] / row[3] for row in rows]
    print(f"one thread each, images per CPU-second (what other processes change least; "
          f"onnxruntime's two threads spin-wait for each other when a core is taken): "
          f"onnxruntime {median([row[3] for row in rows]):.1f}, training "
          f"{median([row[4] for row in rows]):.1f}, ratio {median(single):.3f} "
          f"(rounds: {', '.join(f'{v:.3f}' for v in single)})")
    train_med = {c: median([row[2][c] for row in rows]) for c in chunk_sizes}
    for c in chunk_sizes:
        ratios = [row[2][c] / row[0] for row in rows]
        ratio = median(ratios)
        print(f"archsim training (noise on, chunks of {c} KiB): {train_med[c]:.1f} images/s, "
              f"ratio training / onnxruntime {ratio:.3f} (rounds: "
              f"{', '.join(f'{v:.3f}' for v in ratios)}) -> target >= {TARGET}: "
              f"{'met' if ratio >= TARGET else 'NOT met'}; one 50,000-image epoch: "
              f"{50000 / train_med[c] / 60:.1f} min at this speed")
    threads.CHUNK_BYTES = chunk_sizes[0] * 1024
    ceiling = gemm_bound.training_images_per_s(net, len(data), b, args.workers)
    print(f"a training step's matrix products alone (benchmarks/gemm_bound.py: forward, input "
          f"and weight gradients on the same chunks and threads; {load()}): {ceiling:.1f} "
          f"images/s = {ceiling / ort_med:.3f}x onnxruntime; training runs at "
          f"{100 * train_med[chunk_sizes[0]] / ceiling:.0f}% of it")

    # one step split into forward and backward (after the rounds, same threads as train)
    rng = np.random.default_rng(0)
    x, y = nhwc[0], data.labels[:len(nhwc[0])]
    with threads.training_threads(args.workers) as workers:
        for _ in range(3):
            t0 = time.perf_counter()
            noisy = noisy_weights(net, params, 0.038, rng)
            logits, tape = forward_train(net, params, x, weights=noisy, workspace=ws,
                                         workers=workers)
            t1 = time.perf_counter()
            backward(net, tape, softmax_cross_entropy(logits, y)[1], workspace=ws,
                     workers=workers)
            t2 = time.perf_counter()
    print(f"one step of {len(x)} images ({workers.n} workers): forward {t1 - t0:.3f} s, "
          f"backward {t2 - t1:.3f} s; after: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
