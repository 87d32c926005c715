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
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable

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


def workers() -> int:
    """Threads an inference pass uses (and numba's parallel kernels, and BLAS outside passes)."""
    global _workers
    if _workers is None:
        env = os.environ.get("ARCHSIM_THREADS", "").strip()
        set_workers(int(env) if env else None)
    return _workers


def set_workers(n: int | None) -> None:
    """Use ``n`` threads (None: every available CPU). Also sets numba's thread count."""
    global _workers, _pool
    n = available_cpus() if n is None else int(n)
    if n < 1:
        raise ValueError(f"thread count must be >= 1, got {n}")
    with _lock:
        if _pool is not None and n != _workers:
            _pool.shutdown(wait=True)
            _pool = None
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


def run_chunks(task: Callable[[int, int], None], count: int) -> None:
    """Run ``task(chunk, slot)`` for chunk = 0 .. count-1 on up to :func:`workers` threads (slot:
    which of them, 0 = the caller: e.g. to pick that thread's scratch memory). Chunks are taken in
    order as threads free up; the first exception is raised after all have stopped."""
    n = min(workers(), count)
    if n <= 1 or _in_worker():
        for i in range(count):
            task(i, 0)
        return
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=_workers - 1, thread_name_prefix="archsim")
        pool = _pool
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
