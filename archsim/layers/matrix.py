"""Weight-matrix kinds: Conv2d (groups, dilation, any kernel, strides and pads) and Linear."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Mapping

import numpy as np

from .base import (Epilogue, Layer, LayerError, MatrixView, ParamSpec, Pass, SquareView, Workspace,
                   _pads4, _pair)
from .ops import PatchLayout, col2im_general, im2col, im2col_general, patch_layout

# patch rows per GEMM of the inference fast path: about this many bytes of patches, written into
# one reused buffer and read back by the GEMM while they are still in the (L3) cache. Measured
# (ResNet-32, one thread): 0.5 / 1 / 2 / 4 / 8 MB -> 731 / 796 / 829 / 823 / 839 FP32 images/s;
# small blocks pay the per-call work more often.
PATCH_BLOCK_BYTES = 8 * 1024 * 1024


def patch_block_rows(k: int) -> int:
    return max(64, PATCH_BLOCK_BYTES // (4 * max(k, 1)))


def run_blocks(task, count: int) -> None:
    """``task(block, slot)`` for each block of patch rows: on the worker threads when this pass
    runs as one chunk (e.g. a small batch, or batch statistics), else on this chunk's thread."""
    from ..threads import run_chunks
    run_chunks(task, count)


def output_stage(out: np.ndarray, epilogue: Epilogue | None, residual: np.ndarray | None,
                 bias: np.ndarray | None, run: Pass) -> np.ndarray:
    """The fused output stage on a (P, N) float32 product, in place: bias, then the epilogue
    (BatchNorm affine, residual, clamp), one kernel pass."""
    from ..kernels import epilogue_into
    scale = offset = clamp = None
    if epilogue is not None:
        if epilogue.batchnorm is not None:
            scale, offset = run.batchnorm_affine(epilogue.batchnorm)
        clamp = epilogue.clamp
    if bias is None and scale is None and residual is None and clamp is None:
        return out
    return epilogue_into(out, out, bias=bias, scale=scale, offset=offset, residual=residual,
                         clamp=clamp)


@dataclass(frozen=True)
class MatrixLayer(Layer):
    """Conv and Linear: the layers that become weight matrices on arrays."""
    out_channels: int = 0
    bias: bool = False

    is_matrix: ClassVar[bool] = True
    timing: ClassVar[str] = "matrix"
    groups: ClassVar[int] = 1
    input_is_copy: ClassVar[bool] = False    # matrix_input returns a fresh or scratch array

    @property
    def square(self) -> tuple[int, int, int] | None:
        """(kernel, stride, padding) of a conv the numba patch kernels handle; None otherwise."""
        return None

    def matrix_view(self, in_shape, out_shape) -> MatrixView:
        raise NotImplementedError

    def macs(self, in_shapes, out_shape) -> int:
        view = self.matrix_view(in_shapes[0], out_shape)
        return view.weights * view.mvms

    def weight(self, params: Mapping[str, np.ndarray]) -> np.ndarray:
        return params[self.param("weight")]

    def weight_matrix(self, params: Mapping[str, np.ndarray]) -> np.ndarray:
        """The (K, N) matrix that goes onto arrays (block-diagonal for grouped convs)."""
        w = self.weight(params)
        return np.ascontiguousarray(w.reshape(w.shape[0], -1).T)

    def weight_mask(self, k: int) -> np.ndarray | None:
        """(K, N) True where a device holds a weight; None: everywhere (no groups)."""
        return None

    def matrix_input(self, a: np.ndarray, workspace: Workspace | None = None) -> np.ndarray:
        """The 2-D input: one row per MVM."""
        return a.reshape(a.shape[0], -1)

    def matmul(self, cols: np.ndarray, params: Mapping[str, np.ndarray]) -> np.ndarray:
        """FP32 (P, K) @ (K, N)."""
        return cols @ self.weight_matrix(params)

    def multiply(self, cols: np.ndarray, matrix: np.ndarray) -> np.ndarray:
        """(P, K) @ the layer's (K, N) ``matrix`` (as :meth:`weight_matrix` gives it)."""
        return cols @ matrix

    def matrix_output(self, out: np.ndarray, a: np.ndarray) -> np.ndarray:
        return out

    def forward(self, xs, run: Pass) -> np.ndarray:
        a = xs[0]
        if run.tape is not None:
            return self._forward_train(a, run)
        if run.matmul is None and run.matrix_input is None:
            return self.forward_fused(a, None, None, run)
        cols = (run.matrix_input or (lambda layer, x, ws: layer.matrix_input(x, ws)))(
            self, a, run.workspace)
        out = run.matmul(self, cols) if run.matmul is not None else self.matmul(cols, run.params)
        if self.bias:
            out = out + run.params[self.param("bias")]
        return self.matrix_output(out, a)

    def forward_fused(self, a: np.ndarray, epilogue: Epilogue | None,
                      residual: np.ndarray | None, run: Pass) -> np.ndarray:
        """Inference with the FP32 weights of ``run.params``: the product and its fused output
        stage (``epilogue``, with the residual operand ``residual``)."""
        cols = self.matrix_input(a, run.workspace)
        out = self.matmul(cols, run.params)
        if self.bias:
            out = out + run.params[self.param("bias")]
        out = self.matrix_output(out, a)
        return out if epilogue is None else epilogue.apply(out, residual, run)

    def bias_f32(self, run: Pass) -> np.ndarray | None:
        if not self.bias:
            return None
        return run.cached(("bias", self.name),
                          lambda: np.asarray(run.params[self.param("bias")], np.float32))

    def _train_weight(self, run: Pass) -> np.ndarray:
        """(O, K/groups) weights of a training pass (noisy ones when given)."""
        w = (run.weights or {}).get(self.param("weight"), run.params[self.param("weight")])
        return np.asarray(w, run.dtype).reshape(w.shape[0], -1)

    def _forward_train(self, a: np.ndarray, run: Pass) -> np.ndarray:
        raise NotImplementedError


def grouped_weights(w: np.ndarray, groups: int, taps: int) -> np.ndarray:
    """The diagonal blocks of a grouped (K, N) weight matrix whose rows are tap-major (tap, then
    channel) as (taps, C/G, N/G, G) float32: entry [t, c, j, g] multiplies channel c of group g at
    tap t into output j of group g."""
    k, n = w.shape
    cg, ng = k // taps // groups, n // groups
    blocks = w.reshape(taps, groups, cg, groups, ng)
    idx = np.arange(groups)
    diag = blocks[:, idx, :, idx, :]                                    # (G, taps, cg, ng)
    return np.ascontiguousarray(diag.transpose(1, 2, 3, 0), np.float32)


def _grouped(cols: np.ndarray, w2: np.ndarray, groups: int) -> np.ndarray:
    """(P, K) patches times the grouped weights w2 (O, K/G): (P, O), one GEMM per group."""
    p = cols.shape[0]
    kg = cols.shape[1] // groups
    ng = w2.shape[0] // groups
    xg = cols.reshape(p, groups, kg).transpose(1, 0, 2)                 # (G, P, Kg)
    out = np.matmul(xg, w2.reshape(groups, ng, kg).transpose(0, 2, 1))  # (G, P, Ng)
    return out.transpose(1, 0, 2).reshape(p, groups * ng)


@dataclass(frozen=True)
class Conv2d(SquareView, MatrixLayer):
    """2-D convolution: OIHW weights ``(out, in/groups, kh, kw)``, optional bias; any kernel,
    strides, (top, left, bottom, right) pads, dilations and groups (depthwise: groups = in)."""
    kernel_shape: tuple[int, int] = (1, 1)
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilations: tuple[int, int] = (1, 1)
    groups: int = 1

    kind: ClassVar[str] = "conv2d"
    onnx_ops: ClassVar[tuple[str, ...]] = ("Conv",)
    input_is_copy: ClassVar[bool] = True
    aliases: ClassVar[dict[str, str]] = {"kernel": "kernel_shape", "stride": "strides",
                                         "padding": "pads", "dilation": "dilations"}

    @classmethod
    def normalize(cls, attrs):
        out = dict(attrs)
        for key, fn in (("kernel_shape", _pair), ("strides", _pair), ("dilations", _pair)):
            if key in out:
                out[key] = fn(out[key], key)
        if "pads" in out:
            out["pads"] = _pads4(out["pads"])
        return out

    def check(self):
        if self.out_channels < 1 or self.groups < 1:
            return "out_channels and groups must be positive"
        if min(self.kernel_shape + self.strides + self.dilations) < 1 or min(self.pads) < 0:
            return "kernel, strides and dilations must be positive, pads not negative"
        if self.out_channels % self.groups:
            return f"{self.out_channels} output channels do not divide into {self.groups} groups"
        return None

    @property
    def square(self) -> tuple[int, int, int] | None:
        """(kernel, stride, padding) when the numba im2col kernels apply (square kernel, one stride,
        one padding on all sides, no dilation), else None."""
        if (isinstance(self.kernel, int) and isinstance(self.stride, int)
                and isinstance(self.padding, int) and self.dilations == (1, 1)):
            return self.kernel, self.stride, self.padding
        return None

    def out_hw(self, h: int, w: int) -> tuple[int, int]:
        (kh, kw), (sh, sw), (pt, pl, pb, pr), (dh, dw) = (self.kernel_shape, self.strides,
                                                          self.pads, self.dilations)
        return ((h + pt + pb - dh * (kh - 1) - 1) // sh + 1,
                (w + pl + pr - dw * (kw - 1) - 1) // sw + 1)

    def infer(self, in_shapes):
        x = in_shapes[0]
        self._need_spatial(x)
        h, w, c = x
        if c % self.groups:
            raise LayerError(f"{c} input channels do not divide into {self.groups} groups")
        ho, wo = self.out_hw(h, w)
        if ho < 1 or wo < 1:
            raise LayerError(f"kernel {self.kernel} does not fit input {tuple(x)}")
        return ho, wo, self.out_channels

    def param_specs(self, in_shapes):
        c = in_shapes[0][2]
        specs = [ParamSpec("weight", (self.out_channels, c // self.groups) + self.kernel_shape,
                           True, "he")]
        if self.bias:
            specs.append(ParamSpec("bias", (self.out_channels,)))
        return specs

    def matrix_view(self, in_shape, out_shape) -> MatrixView:
        kh, kw = self.kernel_shape
        return MatrixView(in_shape[2] * kh * kw, self.out_channels, self.groups,
                          out_shape[0] * out_shape[1])

    def weight_matrix(self, params):
        w = self.weight(params)
        if self.groups == 1:
            return np.ascontiguousarray(w.reshape(w.shape[0], -1).T)
        g = self.groups
        ng, kg = w.shape[0] // g, int(np.prod(w.shape[1:]))
        full = np.zeros((g, kg, g, ng), w.dtype)
        idx = np.arange(g)
        full[idx, :, idx, :] = w.reshape(g, ng, kg).transpose(0, 2, 1)
        return full.reshape(g * kg, g * ng)

    def weight_mask(self, k: int) -> np.ndarray | None:
        """(K, N) block-diagonal mask of the devices holding weights (None without groups)."""
        if self.groups == 1:
            return None
        g = self.groups
        return np.kron(np.eye(g, dtype=bool), np.ones((k // g, self.out_channels // g), bool))

    def matrix_input(self, a, workspace=None):
        sq = self.square
        if sq is not None and a.dtype == np.float32:
            return im2col(a, *sq, workspace)
        ho, wo = self.out_hw(a.shape[1], a.shape[2])
        return im2col_general(a, self.kernel_shape, self.strides, self.pads, self.dilations, ho, wo)

    def matmul(self, cols, params):
        if self.groups == 1:
            return cols @ self.weight_matrix(params)
        w = self.weight(params)
        return _grouped(cols, w.reshape(w.shape[0], -1), self.groups)

    def multiply(self, cols, matrix):
        if self.groups == 1:
            return cols @ matrix
        g = self.groups
        kg, ng = matrix.shape[0] // g, matrix.shape[1] // g
        idx = np.arange(g)
        blocks = matrix.reshape(g, kg, g, ng)[idx, :, idx, :]            # (G, Kg, Ng)
        return _grouped(cols, blocks.transpose(0, 2, 1).reshape(g * ng, kg), g)

    def matrix_output(self, out, a):
        ho, wo = self.out_hw(a.shape[1], a.shape[2])
        return out.reshape(a.shape[0], ho, wo, self.out_channels)

    # ---- the inference fast path: patches in the run layout, straight into cache-sized GEMMs ----
    def patch_layout(self, in_channels: int, row_bounds=None) -> PatchLayout:
        """Where the fast kernels put each patch value (tap by tap, each tap's channels
        contiguous; ``row_bounds``: the natural-order row blocks kept contiguous)."""
        return patch_layout(in_channels, self.kernel_shape[0] * self.kernel_shape[1],
                            None if row_bounds is None else
                            tuple((int(a), int(b)) for a, b in row_bounds),
                            self.kernel_shape[1] if self.dilations[1] == 1 else 1)

    def geometry(self, in_shape) -> np.ndarray:
        from ..kernels import conv_geometry
        ho, wo = self.out_hw(in_shape[0], in_shape[1])
        return conv_geometry(self.kernel_shape, self.strides, self.pads, self.dilations, ho, wo)

    def layout_weights(self, w: np.ndarray, layout: PatchLayout) -> np.ndarray:
        """A (K, N) weight matrix (natural order) with its rows in ``layout``'s order (one block):
        (K, N) for a dense conv; for a grouped one its diagonal blocks as
        :func:`archsim.kernels.grouped_products_into` takes them, (taps, C/G, N/G, G)."""
        if self.groups == 1:
            return np.ascontiguousarray(w[layout.order])
        return grouped_weights(w[layout.order], self.groups, layout.taps)

    def forward_fused(self, a, epilogue, residual, run):
        from ..kernels import grouped_products_into, patches_into
        n, h, w, c = a.shape
        ho, wo = self.out_hw(h, w)
        a = np.ascontiguousarray(a, np.float32)
        layout = run.cached(("layout", self.name), lambda: self.patch_layout(c))
        weights = run.cached(("weights", self.name), lambda: self.layout_weights(
            self.weight_matrix(run.params).astype(np.float32, copy=False), layout))
        geom = run.cached(("geometry", self.name), lambda: self.geometry((h, w, c)))
        rows, k, nout = n * ho * wo, layout.order.size, self.out_channels
        out = np.empty((rows, nout), np.float32)
        res = None if residual is None else np.ascontiguousarray(residual).reshape(rows, nout)
        bias = self.bias_f32(run)
        block = patch_block_rows(k)

        def rows_block(i: int, slot: int) -> None:
            r0, r1 = i * block, min(rows, (i + 1) * block)
            cols = run.workspace.worker(slot).get("patches", (min(block, rows), k))
            patches_into(a, geom, r0, r1, layout.runs, cols)
            o = out[r0:r1]
            if self.groups == 1:
                np.matmul(cols[:r1 - r0], weights, out=o)
            else:
                grouped_products_into(cols[:r1 - r0], 0, weights, o)
            output_stage(o, epilogue, None if res is None else res[r0:r1], bias, run)

        run_blocks(rows_block, -(-rows // block))
        return out.reshape(n, ho, wo, nout)

    def _train_cols(self, a: np.ndarray, ho: int, wo: int, workspace: Workspace) -> np.ndarray:
        sq = self.square
        if sq is not None and a.dtype == np.float32:
            from ..kernels import im2col_into
            k, s, p = sq
            shape = (a.shape[0] * ho * wo, a.shape[3] * k * k)
            return im2col_into(a, k, s, p, ho, wo, workspace.get("cols/" + self.name, shape))
        return np.ascontiguousarray(im2col_general(a, self.kernel_shape, self.strides, self.pads,
                                                   self.dilations, ho, wo))

    def _chunked(self, dtype) -> bool:
        """Whether the training pass runs in chunks on the (i, j, c) patch kernels (a square,
        ungrouped conv) rather than on whole-batch (c, i, j) patches."""
        return self.groups == 1 and self.square is not None and \
            np.dtype(dtype) in (np.float32, np.float64)

    def _forward_train(self, a, run):
        if self._chunked(run.dtype):
            return self._forward_train_chunked(a, run)
        ho, wo = self.out_hw(a.shape[1], a.shape[2])
        w2 = self._train_weight(run)                                     # (O, K/G)
        cols = self._train_cols(a, ho, wo, run.workspace)
        if self.groups == 1:
            buf = run.workspace.get("out/" + self.name, (cols.shape[0], self.out_channels),
                                    run.dtype)          # reused: no page faults per batch
            out = np.matmul(cols, w2.T, out=buf)
        else:
            out = _grouped(cols, w2, self.groups)
        out = out.reshape(a.shape[0], ho, wo, self.out_channels)
        if self.bias:
            out = out + run.param(self, "bias")
        run.tape.saved[self.name] = (cols, w2, a.shape)
        return out

    # ---- training in chunks of the batch (archsim.threads) --------------------------------
    # Neither pass keeps a whole batch's patch matrix: each chunk of images builds its patches in
    # its worker's scratch (sized for a core's cache) and multiplies, and the backward pass builds
    # patches again rather than reading 75 MB per layer back from memory. Weights are used in
    # OHWI order, the (i, j, c) order of ops.patches_hwc_into. The input gradient of a stride-1
    # conv is itself a convolution (of the output gradient, padded by kernel-1-padding, with the
    # kernel flipped and in/out swapped): patches of g times the flipped weights, written straight
    # into dx - no scatter-add - and the same patches of g give the weight gradient (their
    # transpose times x, flipped), so that backward pass builds one patch matrix, not two.
    # Strided convs and the input layer's conv use patches of x (and scatter-add the input
    # gradient, kernels.col2im_hwc_into). Weight gradients are summed over chunks in chunk order.

    def _chunk_parts(self, a_shape, g_hw, itemsize):
        k = self.square[0]
        n, h, w, c = a_shape
        per_image = max(g_hw[0] * g_hw[1] * k * k * c, h * w * k * k * self.out_channels)
        from ..threads import chunks
        return chunks(n, per_image * itemsize)

    def _forward_train_chunked(self, a, run):
        from .ops import patches_hwc_into
        k, s, p = self.square
        n, h, w, c = a.shape
        ho, wo = self.out_hw(h, w)
        dtype = np.dtype(run.dtype)
        a = np.ascontiguousarray(a, dtype)
        w_ohwi = self._train_weight_ohwi(run)                           # (O, K), (i, j, c)
        kdim, m = w_ohwi.shape[1], ho * wo
        parts = self._chunk_parts(a.shape, (ho, wo), dtype.itemsize)
        out = run.workspace.get("out/" + self.name, (n * m, self.out_channels), dtype)
        ws = run.workspace

        def one(i, worker):
            b0, b1 = parts[i]
            cols = ws.get(f"train-cols/{worker}", ((b1 - b0) * m, kdim), dtype)
            pad = ws.get(f"train-pad/{worker}", (b1 - b0, h + 2 * p, w + 2 * p, c), dtype)
            patches_hwc_into(a[b0:b1], k, s, p, pad, cols)
            np.matmul(cols, w_ohwi.T, out=out[b0 * m:b1 * m])

        run.run_chunks(one, len(parts))
        y = out.reshape(n, ho, wo, self.out_channels)
        if self.bias:
            y = y + run.param(self, "bias")
        run.tape.saved[self.name] = ("chunked", a, w_ohwi, parts)
        return y

    def _train_weight_ohwi(self, run: Pass) -> np.ndarray:
        """(O, kh*kw*C) weights of a training pass (noisy ones when given) in OHWI order."""
        w = (run.weights or {}).get(self.param("weight"), run.params[self.param("weight")])
        w = np.asarray(w, run.dtype)
        return np.ascontiguousarray(w.transpose(0, 2, 3, 1)).reshape(w.shape[0], -1)

    def _backward_chunked(self, g, saved, need, run):
        from ..kernels import col2im_hwc_into, relu_grad_into
        from .ops import patches_hwc_into
        _, a, w_ohwi, parts = saved
        k, s, p = self.square
        n, h, w, c = a.shape
        dtype = a.dtype
        ho, wo = g.shape[1], g.shape[2]
        m, kdim, o = ho * wo, w_ohwi.shape[1], self.out_channels
        g4 = np.ascontiguousarray(g, dtype).reshape(n, ho, wo, o)
        g2 = g4.reshape(n * m, o)
        ws = run.workspace
        dx = ws.get("dx/" + self.name, a.shape, dtype) if need[0] else None
        # stride 1 with an input gradient: one patch matrix, of g, serves both gradients
        as_conv = dx is not None and s == 1 and p <= k - 1
        if as_conv:
            q = k - 1 - p
            w_flip = np.ascontiguousarray(w_ohwi.reshape(o, k, k, c)[:, ::-1, ::-1, :]
                                          .transpose(1, 2, 0, 3)).reshape(k * k * o, c)
            wparts = ws.get("train-wgrad-flip/" + self.name, (len(parts), k * k * o, c), dtype)
            a2 = a.reshape(n * h * w, c)
            dx2 = dx.reshape(n * h * w, c)
        else:
            wparts = ws.get("train-wgrad/" + self.name, (len(parts), kdim, o), dtype)

        # the input is a ReLU's output that only this layer uses: its gradient mask (x > 0)
        # applies here, to each chunk's input gradient while it is in cache
        mask = dx is not None and self.name in run.relu_mask

        def one(i, worker):
            b0, b1 = parts[i]
            nb = b1 - b0
            if as_conv:
                # dx = patches(g) @ flipped weights; dW (flipped) = patches(g)^T @ x
                gcols = ws.get(f"train-gcols/{worker}", (nb * h * w, k * k * o), dtype)
                gpad = ws.get(f"train-gpad/{worker}", (nb, ho + 2 * q, wo + 2 * q, o), dtype)
                patches_hwc_into(g4[b0:b1], k, 1, q, gpad, gcols)
                rows = slice(b0 * h * w, b1 * h * w)
                np.matmul(gcols, w_flip, out=dx2[rows])
                np.matmul(gcols.T, a2[rows], out=wparts[i])
            else:
                cols = ws.get(f"train-cols/{worker}", (nb * m, kdim), dtype)
                pad = ws.get(f"train-pad/{worker}", (nb, h + 2 * p, w + 2 * p, c), dtype)
                patches_hwc_into(a[b0:b1], k, s, p, pad, cols)
                gi = g2[b0 * m:b1 * m]
                np.matmul(cols.T, gi, out=wparts[i])
                if dx is not None:
                    dcols = ws.get(f"train-dcols/{worker}", (nb * m, kdim), dtype)
                    np.matmul(gi, w_ohwi, out=dcols)
                    col2im_hwc_into(dcols, k, s, p, b0, b1, dx)
            if mask:
                dx1, a1 = dx[b0:b1].reshape(-1), a[b0:b1].reshape(-1)
                relu_grad_into(dx1, a1, dx1)

        run.run_chunks(one, len(parts))
        total = wparts.sum(axis=0)
        if as_conv:       # ((i', j', o), C) with i' = k-1-i: flip back to OHWI
            wgrad = total.reshape(k, k, o, c)[::-1, ::-1].transpose(2, 0, 1, 3)
        else:
            wgrad = total.T.reshape(o, k, k, c)                              # OHWI
        grads = {"weight": np.ascontiguousarray(wgrad.transpose(0, 3, 1, 2))}
        if self.bias:
            grads["bias"] = g2.sum(axis=0)
        return [dx], grads

    def backward(self, g, saved, need, run):
        if isinstance(saved[0], str):
            return self._backward_chunked(g, saved, need, run)
        cols, w2, in_shape = saved
        g2 = g.reshape(-1, w2.shape[0])                                   # (P, O)
        wshape = (self.out_channels, in_shape[3] // self.groups) + self.kernel_shape
        grads = {}
        if self.groups == 1:
            # (cols.T @ g2).T, not g2.T @ cols: OpenBLAS is several times slower on the latter
            grads["weight"] = np.ascontiguousarray((cols.T @ g2).T).reshape(wshape)
        else:
            gr, p = self.groups, cols.shape[0]
            kg, ng = cols.shape[1] // gr, w2.shape[0] // gr
            xg = cols.reshape(p, gr, kg).transpose(1, 2, 0)               # (G, Kg, P)
            gg = g2.reshape(p, gr, ng).transpose(1, 0, 2)                 # (G, P, Ng)
            grads["weight"] = np.matmul(xg, gg).transpose(0, 2, 1).reshape(wshape)
        if self.bias:
            grads["bias"] = g2.sum(axis=0)
        if not need[0]:
            return [None], grads
        ho, wo = g.shape[1], g.shape[2]
        sq = self.square
        if self.groups == 1:
            dcols = np.matmul(g2, w2, out=run.workspace.get("dcols", cols.shape, g2.dtype))
        else:
            gr, p = self.groups, cols.shape[0]
            ng, kg = w2.shape[0] // gr, w2.shape[1]
            dcols = np.matmul(g2.reshape(p, gr, ng).transpose(1, 0, 2), w2.reshape(gr, ng, kg))
            dcols = np.ascontiguousarray(dcols.transpose(1, 0, 2).reshape(p, gr * kg))
        if sq is not None:
            from ..kernels import col2im_into
            dx = run.workspace.get("dx/" + self.name, in_shape, dcols.dtype)
            col2im_into(dcols, sq[0], sq[1], sq[2], dx)
        else:
            dx = col2im_general(dcols, in_shape, self.kernel_shape, self.strides, self.pads,
                                self.dilations, ho, wo)
        return [dx], grads

    def input_row_needed(self, r, in_index, in_shape):
        return r * self.strides[0] - self.pads[0] + self.dilations[0] * (self.kernel_shape[0] - 1)

    def input_row_first(self, r, in_index, in_shape):
        return r * self.strides[0] - self.pads[0]

    @classmethod
    def from_onnx(cls, node):
        node.need_rank(0, 4)
        w = node.constant(1, "weight")
        if w.ndim != 4:
            node.unsupported(f"only 2-D convolutions are supported (weight of rank {w.ndim})")
        a = node.attrs
        kernel = tuple(a.get("kernel_shape", w.shape[2:]))
        if kernel != tuple(w.shape[2:]):
            node.bad_initializer(1, w.shape, f"(O, C/group, {kernel[0]}, {kernel[1]})")
        strides = tuple(a.get("strides", (1, 1)))
        dilations = tuple(a.get("dilations", (1, 1)))
        pads = node.spatial_pads(kernel, strides, dilations)
        bias = node.optional_constant(2, "bias")
        layer = cls(node.name, (node.activation(0),), out_channels=int(w.shape[0]),
                    kernel=kernel, stride=strides, padding=pads, dilation=dilations,
                    groups=int(a.get("group", 1)), bias=bias is not None)
        node.param("weight", 1, w)
        if bias is not None:
            node.param("bias", 2, bias)
        return layer


@dataclass(frozen=True)
class Linear(MatrixLayer):
    """Fully connected: weights ``(out, in)`` (PyTorch layout), optional bias; the input is
    flattened as it is laid out (put a Flatten before it for PyTorch's C, H, W order)."""
    kind: ClassVar[str] = "linear"
    onnx_ops: ClassVar[tuple[str, ...]] = ("Gemm", "MatMul")

    def check(self):
        return None if self.out_channels >= 1 else "out_channels must be positive"

    def infer(self, in_shapes):
        return (self.out_channels,)

    def param_specs(self, in_shapes):
        specs = [ParamSpec("weight", (self.out_channels, int(np.prod(in_shapes[0]))), True, "he")]
        if self.bias:
            specs.append(ParamSpec("bias", (self.out_channels,)))
        return specs

    def matrix_view(self, in_shape, out_shape) -> MatrixView:
        return MatrixView(int(np.prod(in_shape)), self.out_channels, 1, 1)

    def forward_fused(self, a, epilogue, residual, run):
        cols = np.ascontiguousarray(a.reshape(a.shape[0], -1), np.float32)
        weights = run.cached(("weights", self.name), lambda: np.ascontiguousarray(
            self.weight_matrix(run.params), np.float32))
        out = np.matmul(cols, weights)
        res = None if residual is None else np.ascontiguousarray(residual, np.float32)
        return output_stage(out, epilogue, res, self.bias_f32(run), run)

    def _forward_train(self, a, run):
        w2 = self._train_weight(run)
        cols = a.reshape(a.shape[0], -1)
        out = cols @ w2.T
        if self.bias:
            out = out + run.param(self, "bias")
        run.tape.saved[self.name] = (cols, w2, a.shape)
        return out

    def backward(self, g, saved, need, run):
        cols, w2, in_shape = saved
        g2 = g.reshape(-1, w2.shape[0])
        grads = {"weight": np.ascontiguousarray((cols.T @ g2).T).reshape(w2.shape)}
        if self.bias:
            grads["bias"] = g2.sum(axis=0)
        if not need[0]:
            return [None], grads
        dcols = np.matmul(g2, w2, out=run.workspace.get("dcols", cols.shape, g2.dtype))
        return [dcols.reshape(in_shape).copy()], grads

    def input_row_needed(self, r, in_index, in_shape):
        return None

    @classmethod
    def from_onnx(cls, node):
        node.need_rank(0, 2, "a 2-D (N, features) input (add a Flatten)")
        a = node.attrs
        w = node.constant(1, "weight")
        if w.ndim != 2:
            node.bad_initializer(1, w.shape, "a 2-D matrix")
        bias = None
        if node.op == "Gemm":
            if a.get("transA", 0):
                node.unsupported("transA=1 (the input must be (N, features))")
            if not a.get("transB", 0):
                w = w.T                                   # (in, out) -> PyTorch (out, in)
            w = w * np.float32(a.get("alpha", 1.0))
            c = node.optional_constant(2, "bias")
            if c is not None:
                if c.size not in (1, w.shape[0]) or (c.ndim == 2 and c.shape[0] != 1) or c.ndim > 2:
                    node.bad_initializer(2, c.shape, f"({w.shape[0]},) or a scalar")
                bias = np.broadcast_to(c.reshape(-1), (w.shape[0],)) * np.float32(a.get("beta", 1.0))
        else:
            w = w.T
        layer = cls(node.name, (node.activation(0),), out_channels=int(w.shape[0]),
                    bias=bias is not None)
        node.param("weight", 1, w)
        if bias is not None:
            node.param("bias", 2, bias)
        return layer
