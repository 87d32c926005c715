"""Who runs on the CPU cores: the one place that sets how many threads numba, BLAS and archsim's
own inference workers use, so that they never fight over the cores.

An inference pass (FP32 or analog, :func:`archsim.network.infer`) splits its batch into chunks of
images, fixed by the batch and the chunk size alone, and runs them on :func:`workers` threads at
once (the calling thread and a persistent pool): each chunk walks the whole network with serial
numba kernels and one-threaded BLAS calls, so its data stays in that core's cache and nothing
waits at a barrier between layers. While such a pass runs BLAS is held to one thread per caller
(:func:`inference_threads`); outside it (training, program set-up) BLAS and numba's own parallel
kernels use :func:`workers` threads each, one after the other. Results never depend on the
thread count: a chunk computes the same numbers on any thread.

The count is the CPUs this process may run on, or ``ARCHSIM_THREADS``, or :func:`set_workers`.

Training (:func:`training_threads`) runs the same way, one layer at a time: a convolution's patch
matrix of a whole batch (75 MB for one ResNet-32 stage-1 layer at batch 128) fits no cache, and
handing every layer's work back and forth between numba's and OpenBLAS's thread pools left the
two spin-waiting against each other on 2 cores (measured: one stage-1 conv, forward and backward,
214 ms that way against 71 ms chunked). So a training step splits each layer's batch into
:func:`chunks` small enough for a core's cache and :class:`Workers` runs them on the same threads,
each running single-threaded BLAS, numpy and the serial training kernels of
:mod:`archsim.kernels` on its chunk. Which chunks there are depends only on the layer's shapes,
never on the number of workers, and per-chunk partial sums are added in chunk order: the numbers
are the same bit for bit whatever the number of cores.

numpy's OpenBLAS chooses its GEMM kernels per CPU when it loads, and the choice changes both the
speed and the bits of a run (``OPENBLAS_CORETYPE`` overrides it; it must be set before numpy is
imported). On this project's AMD EPYC machines it picks its AVX2 "Haswell" kernels although the
CPU has AVX-512: training there runs about 1.35x faster and the inference GEMMs about 1.7x with
``OPENBLAS_CORETYPE=SkylakeX`` (benchmarks/bench_training.py and bench_functional.py print the
kernels in use).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterator

# A training chunk's scratch (its patch matrix) should stay in cache. Measured on the ResNet-32
# training step (one worker, images per CPU-second, two passes each): 512 KiB 148/146, 1 MiB
# 149/152, 2 MiB 163/160, 4 MiB 151/150; two workers, ms per step: 1 MiB 450/426/473, 2 MiB
# 420/417/445, 4 MiB 439/432/435, 8 MiB 541/473/478 (fewer, larger chunks save Python overhead up
# to about there; benchmarks/bench_training.py --chunk-kib compares sizes).
CHUNK_BYTES = 2 << 20
# the pool's thread limit: threads start when first needed, at most this many besides the caller
_POOL_MAX = 256

_lock = threading.Lock()
_workers: int | None = None
_pool: ThreadPoolExecutor | None = None
_controller = None
_modules_seen = 0
_local = threading.local()


def available_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:                     # not Linux
        return max(1, os.cpu_count() or 1)


available_cores = available_cpus


def workers() -> int:
    """Threads an inference pass uses (and numba's parallel kernels, and BLAS outside passes)."""
    global _workers
    if _workers is None:
        env = os.environ.get("ARCHSIM_THREADS", "").strip()
        set_workers(int(env) if env else None)
    return _workers


def set_workers(n: int | None) -> None:
    """Use ``n`` threads (None: every available CPU). Also sets numba's thread count."""
    global _workers
    n = available_cpus() if n is None else int(n)
    if n < 1:
        raise ValueError(f"thread count must be >= 1, got {n}")
    with _lock:
        _workers = n
    import numba
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


def _blas():
    """threadpoolctl's view of the loaded BLAS/OpenMP libraries, rebuilt when modules have been
    imported since (a library is loaded by an import, e.g. scipy's own OpenBLAS)."""
    global _controller, _modules_seen
    import sys
    if _controller is None or len(sys.modules) != _modules_seen:
        from threadpoolctl import ThreadpoolController
        _controller = ThreadpoolController()
        _modules_seen = len(sys.modules)
    return _controller


@contextmanager
def inference_threads():
    """BLAS on one thread per caller while the inference workers run (re-entrant)."""
    depth = getattr(_local, "depth", 0)
    if depth or _in_worker():
        _local.depth = depth + 1
        try:
            yield
        finally:
            _local.depth = depth
        return
    _local.depth = 1
    try:
        with _blas().limit(limits=1, user_api="blas"):
            yield
    finally:
        _local.depth = 0


def _in_worker() -> bool:
    return getattr(_local, "worker", False)


def run_chunks(task: Callable[[int, int], None], count: int, threads: int | None = None) -> None:
    """Run ``task(chunk, slot)`` for chunk = 0 .. count-1 on up to ``threads`` (default
    :func:`workers`) threads (slot: which of them, 0 = the caller: e.g. to pick that thread's
    scratch memory). Chunks are taken in order as threads free up, so a core taken by another
    process slows a pass down but does not stall it; the first exception is raised after all have
    stopped. ``task`` must release the GIL for its heavy work (numpy's BLAS calls and the
    ``nogil`` numba kernels do)."""
    n = min(workers() if threads is None else max(1, int(threads)), count)
    if n <= 1 or _in_worker():
        for i in range(count):
            task(i, 0)
        return
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=_POOL_MAX, thread_name_prefix="archsim")
        pool = _pool
    n = min(n, _POOL_MAX + 1)
    next_chunk = iter(range(count))
    take = threading.Lock()
    failed: list[BaseException] = []

    def loop(slot: int) -> None:
        _local.worker = True                 # a nested run_chunks runs serially
        try:
            while not failed:
                with take:
                    i = next(next_chunk, None)
                if i is None:
                    return
                task(i, slot)
        except BaseException as exc:         # noqa: BLE001 - re-raised in the caller
            failed.append(exc)
        finally:
            _local.worker = False

    futures = [pool.submit(loop, slot) for slot in range(1, n)]
    loop(0)
    for f in futures:
        f.result()
    if failed:
        raise failed[0]


def chunks(count: int, bytes_per_item: int, target_bytes: int | None = None
           ) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` covering ``range(count)`` in pieces of about ``target_bytes``
    (default :data:`CHUNK_BYTES`; at least one item each). Depends on the sizes only, so the split
    (and with it every sum over chunks) is the same on any number of cores."""
    target = CHUNK_BYTES if target_bytes is None else target_bytes
    per = max(1, int(target) // max(1, int(bytes_per_item)))
    return [(start, min(start + per, count)) for start in range(0, count, per)]


def element_chunks(values) -> list[slice]:
    """Slices of a 1-D array in pieces of about :data:`CHUNK_BYTES` (:func:`chunks`), for
    elementwise work on the workers."""
    return [slice(start, stop) for start, stop in chunks(values.size, values.itemsize)]


class Workers:
    """``n`` threads (the calling one included) that run the chunks of one training layer:
    ``workers.run(fn, count)`` calls ``fn(chunk, worker)`` for every chunk index in
    ``range(count)``, each exactly once (:func:`run_chunks` on at most ``n`` threads);
    ``worker`` (0 .. n-1) selects that thread's scratch buffers."""

    def __init__(self, n: int = 1):
        self.n = max(1, int(n))

    def run(self, fn: Callable[[int, int], None], count: int) -> None:
        run_chunks(fn, count, self.n)

    def close(self) -> None:
        """Nothing to release: the threads are the shared pool's."""


SERIAL = Workers(1)
"""Run every chunk in the calling thread (the default of a training pass without workers)."""


@contextmanager
def training_threads(n: int | None = None) -> Iterator[Workers]:
    """The threads of a training pass: ``n`` workers (default: :func:`workers`) with BLAS limited
    to one thread each for the duration (threadpoolctl). Inference outside the ``with`` gets
    BLAS's own threads back."""
    n = workers() if n is None else max(1, int(n))
    with inference_threads():
        yield Workers(n)
