"""The matrix products alone: how fast a pass could run if everything but its GEMMs took no time.

A ceiling for the speed benchmarks, measured in the same run as the engines they compare: the
GEMMs of every matrix layer with the shapes, row blocks, image chunks and threads that archsim's
passes use, on random float32 operands, through the same BLAS (numpy's OpenBLAS, one thread per
worker) - no patches, no DAC/ADC, no epilogues, no Python between layers. If this ceiling divided
by onnxruntime's images/s is below a target ratio, no change outside BLAS reaches the target.

- :func:`inference_images_per_s`: the fused inference pass (archsim.network.infer): chunks of
  about CHUNK_MACS images walk the network on the worker threads; each layer's (rows, K) @ (K, N)
  runs in blocks of ``patch_block_rows(K)`` rows (archsim.layers.matrix). The analog pass makes
  the same multiply-adds (split over the arrays' row blocks and a replicated layer's copies), but
  in archsim's own register tiles (archsim.kernels.block_products_into, not BLAS: about 130
  multiply-adds per ns on one Zen 5 core from cache), so for it this is a yardstick, not a bound.
- :func:`training_images_per_s`: one training step without anything but its products: for every
  matrix layer the forward product, and backward the input gradient and the weight gradient, each
  over the layer's image chunks (Conv2d._chunk_parts) on the training workers.

Grouped convolutions are counted as dense ones (a ceiling for ResNet-style networks; none here).
"""

from __future__ import annotations

import time

import numpy as np

from archsim import threads
from archsim.layers.matrix import Conv2d, patch_block_rows
from archsim.network import Network, chunk_bounds


class _Scratch:
    """One worker's operands: a reused input buffer (as the pass reuses its patch buffer, so it
    stays in cache), a reused output buffer, every layer's (K, N) weights, and for training a
    reused input-gradient buffer and every layer's weight gradient."""

    def __init__(self, rng: np.random.Generator, shapes, grads: bool = False):
        self.x = rng.standard_normal(max(r * k for r, k, _ in shapes), dtype=np.float32)
        self.y = rng.standard_normal(max(r * n for r, _, n in shapes), dtype=np.float32)
        self.w = [rng.standard_normal((k, n), dtype=np.float32) for _, k, n in shapes]
        self.dw = [np.empty((k, n), np.float32) for _, k, n in shapes] if grads else None
        self.dx = np.empty_like(self.x) if grads else None

    def operands(self, layer: int, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, K) input, (K, N) weights, (rows, N) output of layer ``layer``."""
        k, n = self.w[layer].shape
        return (self.x[:rows * k].reshape(rows, k), self.w[layer],
                self.y[:rows * n].reshape(rows, n))


def inference_gemms(net: Network, images: int) -> list[tuple[int, int, int]]:
    """(rows, K, N) of every matrix layer's product for ``images`` images, in network order."""
    return [(images * view.mvms, view.k, view.n)
            for view in (net.matrix_view(layer) for layer in net.matrix_layers())]


def inference_images_per_s(net: Network, images: int, batch: int, repeats: int = 2) -> float:
    """Images/s of the inference GEMMs alone over ``images`` images in batches of ``batch`` (best
    of ``repeats``), chunked, blocked and threaded as archsim.network.infer runs them."""
    rng = np.random.default_rng(0)
    bounds = chunk_bounds(net, batch)
    largest = max(b - a for a, b in bounds)
    shapes = [(min(rows, patch_block_rows(k)), k, n)
              for rows, k, n in inference_gemms(net, largest)]
    scratch = [_Scratch(rng, shapes) for _ in range(threads.workers())]

    def chunk(i: int, slot: int) -> None:
        size = bounds[i][1] - bounds[i][0]
        for layer, (rows, k, _) in enumerate(inference_gemms(net, size)):
            block = patch_block_rows(k)
            for r0 in range(0, rows, block):
                x, w, y = scratch[slot].operands(layer, min(block, rows - r0))
                np.matmul(x, w, out=y)

    def one_pass() -> float:
        start = time.perf_counter()
        with threads.inference_threads():
            for _ in range(0, images, batch):
                threads.run_chunks(chunk, len(bounds))
        return time.perf_counter() - start

    one_pass()                                                       # warm-up
    seconds = min(one_pass() for _ in range(max(1, repeats)))
    return -(-images // batch) * batch / seconds


def training_images_per_s(net: Network, images: int, batch: int, workers: int | None = None,
                          repeats: int = 2) -> float:
    """Images/s of a training step's GEMMs alone (forward, input gradient, weight gradient of
    every matrix layer) over ``images`` images in batches of ``batch`` (best of ``repeats``),
    each layer's products over its image chunks on the training workers."""
    rng = np.random.default_rng(0)
    plan, shapes = [], []
    for layer in net.matrix_layers():
        view = net.matrix_view(layer)
        if isinstance(layer, Conv2d) and layer.square is not None:
            parts = layer._chunk_parts((batch,) + tuple(net.input_shape_of(layer)),
                                       net.shape(layer.name)[:2], 4)
        else:
            parts = [(0, batch)]
        plan.append((view.mvms, parts))
        shapes.append((max(b - a for a, b in parts) * view.mvms, view.k, view.n))
    scratch = [_Scratch(rng, shapes, grads=True)
               for _ in range(threads.workers() if workers is None else workers)]

    def run_layers(pool, phase: str) -> None:
        order = range(len(plan)) if phase == "forward" else range(len(plan) - 1, -1, -1)
        for layer in order:
            mvms, parts = plan[layer]

            def task(i: int, worker: int, layer=layer, mvms=mvms, parts=parts) -> None:
                x, w, y = scratch[worker].operands(layer, (parts[i][1] - parts[i][0]) * mvms)
                if phase == "forward":
                    np.matmul(x, w, out=y)
                else:                        # the weight gradient, the input gradient
                    np.matmul(x.T, y, out=scratch[worker].dw[layer])
                    np.matmul(y, w.T, out=scratch[worker].dx[:x.size].reshape(x.shape))
            pool.run(task, len(parts))

    def one_pass() -> float:
        start = time.perf_counter()
        with threads.training_threads(workers) as pool:
            for _ in range(0, images, batch):
                run_layers(pool, "forward")
                run_layers(pool, "backward")
        return time.perf_counter() - start

    one_pass()                                                       # warm-up
    seconds = min(one_pass() for _ in range(max(1, repeats)))
    return -(-images // batch) * batch / seconds
