"""Who uses the cores: the one place that decides between BLAS threads, numba threads and our own
worker threads.

Inference (:mod:`archsim.network`, :mod:`archsim.functional`) uses BLAS's own thread pool for the
big GEMMs and numba's (``workqueue`` layer, set in :mod:`archsim.kernels`) for the patch and
converter kernels, one after the other.

Training runs differently (:func:`training_threads`): a convolution's patch matrix of a whole
batch (75 MB for one ResNet-32 stage-1 layer at batch 128) does not fit any cache, and handing
every layer's work back and forth between numba's and OpenBLAS's thread pools left the two
spin-waiting against each other on 2 cores (measured: one stage-1 conv, forward and backward,
214 ms that way against 71 ms chunked). So a training step splits the batch into chunks
small enough for a core's cache and :class:`Workers` runs the chunks on one thread per core,
each running single-threaded BLAS, numpy and the serial training kernels of
:mod:`archsim.kernels` on its chunk from start to end. Which chunks there are depends only on
the layer's shapes, never on the number of workers, and per-chunk partial sums are added in chunk
order: the numbers are the same bit for bit whatever the number of cores.

numpy's OpenBLAS chooses its GEMM kernels per CPU when it loads, and the choice changes both the
speed and the bits of a training run (``OPENBLAS_CORETYPE`` overrides it; it must be set before
numpy is imported). On this project's AMD EPYC machines it picks its AVX2 "Haswell" kernels
although the CPU has AVX-512: training there runs about 1.35x faster with
``OPENBLAS_CORETYPE=SkylakeX`` (benchmarks/bench_training.py prints the kernels in use).
"""

from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

# A chunk's scratch (its patch matrix) should stay in cache. Measured on the ResNet-32 training
# step (one worker, images per CPU-second, two passes each): 512 KiB 148/146, 1 MiB 149/152,
# 2 MiB 163/160, 4 MiB 151/150; two workers, ms per step: 1 MiB 450/426/473, 2 MiB 420/417/445,
# 4 MiB 439/432/435, 8 MiB 541/473/478 (fewer, larger chunks save Python overhead up to about
# there; benchmarks/bench_training.py --chunk-kib compares sizes).
CHUNK_BYTES = 2 << 20


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def chunks(count: int, bytes_per_item: int, target_bytes: int | None = None
           ) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` covering ``range(count)`` in pieces of about ``target_bytes``
    (at least one item each). Depends on the sizes only, so the split (and with it every sum over
    chunks) is the same on any number of cores."""
    target = CHUNK_BYTES if target_bytes is None else target_bytes
    per = max(1, int(target) // max(1, int(bytes_per_item)))
    return [(start, min(start + per, count)) for start in range(0, count, per)]


class Workers:
    """``n`` threads (the calling one included) that run the chunks of one layer:
    ``workers.run(fn, count)`` calls ``fn(chunk, worker)`` for every chunk index in
    ``range(count)``, each chunk exactly once, on whichever worker is free (so a core taken by
    another process slows the step down but does not stall it), and returns when all are done.
    ``worker`` (0 .. n-1) selects that thread's scratch buffers. ``fn`` must release the GIL for
    its heavy work (numpy's BLAS calls and the ``nogil`` numba kernels do)."""

    def __init__(self, n: int = 1):
        self.n = max(1, int(n))
        self._pool = ThreadPoolExecutor(self.n - 1, "archsim-train") if self.n > 1 else None

    def run(self, fn: Callable[[int, int], None], count: int) -> None:
        if self._pool is None or count <= 1:
            for i in range(count):
                fn(i, 0)
            return
        lock = threading.Lock()
        nxt = [0]

        def loop(worker: int) -> None:
            while True:
                with lock:
                    i = nxt[0]
                    nxt[0] += 1
                if i >= count:
                    return
                fn(i, worker)

        futures = [self._pool.submit(loop, w) for w in range(1, min(self.n, count))]
        try:
            loop(0)
        finally:
            errors = [f.exception() for f in futures]
        for exc in errors:
            if exc is not None:
                raise exc

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


SERIAL = Workers(1)
"""Run every chunk in the calling thread (the default of a training pass without workers)."""


@contextlib.contextmanager
def training_threads(n: int | None = None) -> Iterator[Workers]:
    """The threads of a training pass: ``n`` workers (default: :func:`available_cores`) with BLAS
    limited to one thread each for the duration (threadpoolctl). Inference outside the ``with``
    gets BLAS's own threads back."""
    n = available_cores() if n is None else max(1, int(n))
    from threadpoolctl import threadpool_limits
    workers = Workers(n)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            yield workers
    finally:
        workers.close()
