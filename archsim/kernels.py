"""The only numba module: pure array-in/array-out kernels. Everything above them is plain numpy.

Each kernel has a checked wrapper (shapes, dtypes, contiguity) that callers use; tests compare every
kernel with a plain-numpy twin.
"""

from __future__ import annotations

import functools
import math

import numba
import numpy as np
from llvmlite import ir as llvm_ir
from numba import njit, prange, types
from numba.extending import intrinsic

# numba's OpenMP layer spin-waits after a parallel region and steals the cores OpenBLAS needs for
# the GEMM that follows (measured: ResNet-32 forward 6.5 s -> 4.7 s per 1024 images with workqueue).
numba.config.THREADING_LAYER = "workqueue"


@njit(cache=True, nogil=True, inline="always")
def _patch_row(x, b, oy, ox, kernel, stride, pad, out, row):
    """Patch of output pixel (b, oy, ox) into ``out[row]``, (c, i, j) order, zeros off the edge."""
    _, h, w, c = x.shape
    kk = kernel * kernel
    for i in range(kernel):
        y = oy * stride + i - pad
        for j in range(kernel):
            xx = ox * stride + j - pad
            col = i * kernel + j
            if y < 0 or y >= h or xx < 0 or xx >= w:
                for ch in range(c):
                    out[row, ch * kk + col] = 0.0
            else:
                for ch in range(c):
                    out[row, ch * kk + col] = x[b, y, xx, ch]


@njit(parallel=True, cache=True, nogil=True)
def _im2col_kernel(x, kernel, stride, pad, ho, wo, out):
    for b in prange(x.shape[0]):
        for oy in range(ho):
            for ox in range(wo):
                _patch_row(x, b, oy, ox, kernel, stride, pad, out, (b * ho + oy) * wo + ox)
    return out


def im2col_into(x: np.ndarray, kernel: int, stride: int, padding: int, ho: int, wo: int,
                out: np.ndarray) -> np.ndarray:
    """Patches of an NHWC float32 batch into ``out`` (N*ho*wo, C*kernel*kernel), (c, i, j) order.

    Writing into a reused buffer is what makes this fast: a fresh 100+ MB array per call costs more
    in page faults than the copy itself."""
    n, _, _, c = x.shape
    if x.dtype != np.float32 or out.dtype != np.float32:
        raise TypeError("im2col_into: float32 arrays expected")
    if out.shape != (n * ho * wo, c * kernel * kernel) or not out.flags.c_contiguous:
        raise ValueError(f"im2col_into: out must be C-contiguous {(n * ho * wo, c * kernel * kernel)}, "
                         f"got {out.shape}")
    return _im2col_kernel(np.ascontiguousarray(x), kernel, stride, padding, ho, wo, out)


@njit(parallel=True, cache=True, nogil=True)
def _col2im_kernel(cols, kernel, stride, pad, ho, wo, out):
    n, h, w, c = out.shape
    kk = kernel * kernel
    for b in prange(n):
        out[b] = 0.0
        for oy in range(ho):
            for ox in range(wo):
                row = (b * ho + oy) * wo + ox
                for i in range(kernel):
                    y = oy * stride + i - pad
                    if y < 0 or y >= h:
                        continue
                    for j in range(kernel):
                        xx = ox * stride + j - pad
                        if xx < 0 or xx >= w:
                            continue
                        col = i * kernel + j
                        for ch in range(c):
                            out[b, y, xx, ch] += cols[row, ch * kk + col]
    return out


def col2im_into(cols: np.ndarray, kernel: int, stride: int, padding: int, out: np.ndarray
                ) -> np.ndarray:
    """The adjoint of :func:`im2col_into`: scatter-add patch gradients (N*ho*wo, C*kernel*kernel),
    (c, i, j) order, back into an NHWC ``out`` (N, H, W, C), which it overwrites. float32 or
    float64 (both arrays of one dtype); the backward pass of a convolution's input."""
    n, h, w, c = out.shape
    ho = (h + 2 * padding - kernel) // stride + 1
    wo = (w + 2 * padding - kernel) // stride + 1
    if cols.dtype != out.dtype or cols.dtype not in (np.float32, np.float64):
        raise TypeError(f"col2im_into: float32 or float64 arrays of one dtype expected, got "
                        f"{cols.dtype} and {out.dtype}")
    if cols.shape != (n * ho * wo, c * kernel * kernel) or not out.flags.c_contiguous:
        raise ValueError(f"col2im_into: cols must be {(n * ho * wo, c * kernel * kernel)} and out "
                         f"C-contiguous, got {cols.shape}")
    return _col2im_kernel(np.ascontiguousarray(cols), kernel, stride, padding, ho, wo, out)


# ------------------------------------------------------------------------------------------
# Inference (FP32 and analog): serial kernels over a range of patch rows. The worker threads of
# archsim.threads run them side by side on different images (numba's own thread pool is not
# used here: its workqueue layer must not be entered from two threads at once, and BLAS runs on
# the same workers, one thread each). error_model="numpy" (no ZeroDivisionError branch) and
# unsigned indices (no negative-index wraparound) let the loops vectorize; no fastmath: every
# float32 operation is the one written, in the order written (the arrays' products below fuse
# each multiply-add, in a fixed order, on purpose).
# ------------------------------------------------------------------------------------------

_FAST = dict(cache=True, nogil=True, error_model="numpy")
_NONE_2D = np.zeros((1, 1), np.float32)
_NO_WINDOW_MAX = np.zeros((1, 1, 1), np.int32)


def levels_of(bits: int | None) -> int:
    """Signed levels per side of a converter, 2^(bits-1) - 1; 0 means unlimited precision."""
    return 0 if bits is None else (1 << (int(bits) - 1)) - 1


def dac_code_scale(bits: int | None) -> float:
    """Factor from DAC codes to normalized inputs in [-1, 1]: 1 / (2^(bits-1) - 1)."""
    return 1.0 if bits is None else 1.0 / levels_of(bits)


@njit(**_FAST, inline="always")
def _run_offsets(geom, runs):
    """(dy, dx) of each run's tap within the window."""
    kw, dh, dw = geom[1], geom[6], geom[7]
    off = np.empty((runs.shape[0], 2), np.int64)
    for r in range(runs.shape[0]):
        i = runs[r, 0] // kw
        off[r, 0] = i * dh
        off[r, 1] = (runs[r, 0] - i * kw) * dw
    return off


@njit(**_FAST, inline="always")
def _put(v, mode, s):
    """A patch value as it is written: itself (mode 0), its DAC code rint(v * s) (1: s = levels /
    abs-max) or its unrounded v / s (2: s = abs-max)."""
    if mode == 1:
        return np.rint(v * s)
    if mode == 2:
        return v / s
    return v


@njit(**_FAST, inline="always")
def _patch_row_runs(xf, h, w, c, b, y0, x0, offsets, runs, of, base, dw, mode, s):
    """One patch row at of[base:]: run r copies channels [c0, c1) of the pixel at its tap's
    offset from the window's top-left corner (y0, x0) of image b to of[base + d:]; a run of m > 1
    taps (all channels, neighbouring pixels of one input row when dw == 1) copies m C values at
    once where the whole stretch lies inside the input. Each value goes through _put(v, mode, s)
    (mode 0: as it is); taps off the input write 0. Unsigned indices: numba adds no
    negative-index wraparound, so the copies vectorize (5x)."""
    for r in range(runs.shape[0]):
        c0 = runs[r, 1]
        n = np.uint64(runs[r, 2] - c0)
        d = base + np.uint64(runs[r, 3])
        m = runs[r, 4]
        y = y0 + offsets[r, 0]
        xx = x0 + offsets[r, 1]
        if m == 1:
            if y < 0 or y >= h or xx < 0 or xx >= w:
                for i in range(n):
                    of[d + i] = 0.0
            else:
                src = np.uint64(((b * h + y) * w + xx) * c + c0)
                for i in range(n):
                    of[d + i] = _put(xf[src + i], mode, s)
        elif y < 0 or y >= h:
            for i in range(n * np.uint64(m)):
                of[d + i] = 0.0
        elif xx >= 0 and xx + m - 1 < w:
            src = np.uint64(((b * h + y) * w + xx) * c)
            for i in range(n * np.uint64(m)):
                of[d + i] = _put(xf[src + i], mode, s)
        else:
            for j in range(m):
                xj = xx + j * dw
                dj = d + np.uint64(j) * n
                if xj < 0 or xj >= w:
                    for i in range(n):
                        of[dj + i] = 0.0
                else:
                    src = np.uint64(((b * h + y) * w + xj) * c + c0)
                    for i in range(n):
                        of[dj + i] = _put(xf[src + i], mode, s)


@njit(**_FAST)
def _patches_kernel(x, geom, row0, row1, runs, out):
    _, h, w, c = x.shape
    k = out.shape[1]
    sh, sw, pt, pl, ho, wo = geom[2], geom[3], geom[4], geom[5], geom[8], geom[9]
    offsets = _run_offsets(geom, runs)
    xf = x.ravel()
    of = out.ravel()
    b = row0 // (ho * wo)
    oy = (row0 - b * ho * wo) // wo
    ox = row0 - b * ho * wo - oy * wo
    for row in range(row0, row1):
        _patch_row_runs(xf, h, w, c, b, oy * sh - pt, ox * sw - pl, offsets, runs, of,
                        np.uint64((row - row0) * k), geom[7], 0, np.float32(1.0))
        ox += 1
        if ox == wo:
            ox = 0
            oy += 1
            if oy == ho:
                oy = 0
                b += 1
    return out


@njit(**_FAST, inline="always")
def _dac_row_flat(of, oi, base, bounds, levels, absmax, p):
    """:func:`_dac_row` in place on row ``p`` starting at of[base], with unsigned indices and the
    abs-max taken on the bit patterns (|x| as an int31 orders like the float): vectorized."""
    lv = np.float32(levels)
    for b in range(bounds.shape[0]):
        r0 = base + np.uint64(bounds[b, 0])
        n = np.uint64(bounds[b, 1] - bounds[b, 0])
        mb = np.int32(0)
        for i in range(n):
            mb = max(mb, oi[r0 + i] & np.int32(0x7FFFFFFF))
        m = np.int32(mb).view(np.float32)
        absmax[p, b] = m
        if m == 0.0:
            for i in range(n):
                of[r0 + i] = 0.0
        elif levels > 0:
            sc = lv / m
            for i in range(n):
                of[r0 + i] = np.rint(of[r0 + i] * sc)
        else:
            for i in range(n):
                of[r0 + i] = of[r0 + i] / m


@njit(**_FAST, inline="always")
def _first_pixel(row0, col0, col1, ho):
    """(image, oy, ox) of patch row ``row0`` when the rows are the output pixels of columns
    [col0, col1), (image, oy, ox) flattened."""
    span = col1 - col0
    line = row0 // span
    b = line // ho
    return b, line - b * ho, col0 + row0 - line * span


@njit(**_FAST, inline="always")
def _next_pixel(b, oy, ox, col0, col1, ho):
    """The pixel of the next patch row after (b, oy, ox) (see _first_pixel)."""
    ox += 1
    if ox == col1:
        ox = col0
        oy += 1
        if oy == ho:
            oy = 0
            b += 1
    return b, oy, ox


@njit(**_FAST)
def _patches_dac_kernel(x, geom, row0, row1, runs, bounds, levels, out, absmax, col0, col1):
    _, h, w, c = x.shape
    k = out.shape[1]
    sh, sw, pt, pl, ho = geom[2], geom[3], geom[4], geom[5], geom[8]
    offsets = _run_offsets(geom, runs)
    xf = x.ravel()
    of = out.ravel()
    oi = of.view(np.int32)
    # rows are the output pixels of columns [col0, col1), (image, oy, ox) flattened
    b, oy, ox = _first_pixel(row0, col0, col1, ho)
    for row in range(row0, row1):
        p = row - row0
        base = np.uint64(p * k)
        _patch_row_runs(xf, h, w, c, b, oy * sh - pt, ox * sw - pl, offsets, runs, of, base,
                        geom[7], 0, np.float32(1.0))
        _dac_row_flat(of, oi, base, bounds, levels, absmax, p)   # in cache: the DAC, in place
        b, oy, ox = _next_pixel(b, oy, ox, col0, col1, ho)
    return out


@njit(**_FAST)
def _pixel_absmax_kernel(x, out):
    """out[b, y, x] = the abs-max of pixel (b, y, x) over its channels, as the int32 bit pattern
    of the float (|v| as an int31 orders like the float)."""
    c = x.shape[3]
    xi = x.ravel().view(np.int32)
    of = out.ravel()
    for p in range(of.shape[0]):
        base = np.uint64(p * c)
        mb = np.int32(0)
        for i in range(np.uint64(c)):
            mb = max(mb, xi[base + i] & np.int32(0x7FFFFFFF))
        of[p] = mb
    return out


@njit(**_FAST)
def _window_absmax_kernel(pixel_max, geom, out):
    """out[b, oy, ox] = the largest of ``pixel_max`` (int32 bit patterns, _pixel_absmax_kernel's)
    over the taps of output pixel (b, oy, ox)'s window that lie on the input (0 if none): a row
    of output pixels per tap at a time (the loop vectorizes)."""
    n, h, w = pixel_max.shape
    kh, kw, sh, sw, pt, pl, dh, dw = (geom[0], geom[1], geom[2], geom[3], geom[4], geom[5],
                                      geom[6], geom[7])
    ho, wo = out.shape[1], out.shape[2]
    pf = pixel_max.ravel()
    of = out.ravel()
    for b in range(n):
        for oy in range(ho):
            ob = np.uint64((b * ho + oy) * wo)
            for ox in range(np.uint64(wo)):
                of[ob + ox] = 0
            for i in range(kh):
                yy = oy * sh - pt + i * dh
                if yy < 0 or yy >= h:
                    continue
                pb = (b * h + yy) * w
                for j in range(kw):
                    off = j * dw - pl               # input column of output column ox: ox sw + off
                    lo = 0 if off >= 0 else (sw - 1 - off) // sw
                    hi = min(wo, (w - 1 - off) // sw + 1) if w - 1 - off >= 0 else 0
                    for ox in range(np.uint64(lo), np.uint64(max(lo, hi))):
                        v = pf[np.uint64(pb + off) + ox * np.uint64(sw)]
                        of[ob + ox] = max(of[ob + ox], v)
    return out


@njit(**_FAST)
def _patches_dac_by_pixel_kernel(x, window_max, geom, row0, row1, runs, levels, out, absmax,
                                 col0, col1):
    """_patches_dac_kernel for a layout of whole taps in one row block: each row's abs-max is
    the largest of its taps' pixel abs-maxes (the same number; ``window_max`` from
    _window_absmax_kernel), so every value is converted as it is copied, in one write of the
    row."""
    _, h, w, c = x.shape
    k = out.shape[1]
    kh, kw, sh, sw, pt, pl, dh, dw, ho, wo = (geom[0], geom[1], geom[2], geom[3], geom[4],
                                              geom[5], geom[6], geom[7], geom[8], geom[9])
    offsets = _run_offsets(geom, runs)
    xf = x.ravel()
    of = out.ravel()
    wf = window_max.ravel()
    span = np.uint64(kw * c)
    tap_rows = dw == 1 and runs.shape[0] == kh
    for r in range(runs.shape[0]):
        tap_rows = tap_rows and (runs[r, 0] == r * kw and runs[r, 1] == 0 and runs[r, 2] == c
                                 and runs[r, 3] == r * kw * c and runs[r, 4] == kw)
    lv = np.float32(levels)
    b, oy, ox = _first_pixel(row0, col0, col1, ho)
    for row in range(row0, row1):
        p = row - row0
        base = np.uint64(p * k)
        y0 = oy * sh - pt
        x0 = ox * sw - pl
        m = np.int32(wf[np.uint64((b * ho + oy) * wo + ox)]).view(np.float32)
        absmax[p, 0] = m
        if m == 0.0:
            for i in range(np.uint64(k)):
                of[base + i] = 0.0
        elif tap_rows and levels > 0 and x0 >= 0 and x0 + kw <= w:
            # the layout is the kernel's rows in order (each kw C values of one input row) and
            # this window lies inside the input's width: one scaled copy per kernel row, without
            # _patch_row_runs' per-run bookkeeping (measured: the ResNet-32 analog pass 1.51-1.54
            # against 1.56-1.61 ms/image on one thread through the runs)
            s = lv / m
            for i in range(kh):
                y = y0 + i * dh
                d = base + np.uint64(i) * span
                if y < 0 or y >= h:
                    for j in range(span):
                        of[d + j] = 0.0
                else:
                    src = np.uint64(((b * h + y) * w + x0) * c)
                    for j in range(span):
                        of[d + j] = np.rint(xf[src + j] * s)
        elif levels > 0:
            _patch_row_runs(xf, h, w, c, b, y0, x0, offsets, runs, of, base, dw, 1, lv / m)
        else:
            _patch_row_runs(xf, h, w, c, b, y0, x0, offsets, runs, of, base, dw, 2, m)
        b, oy, ox = _next_pixel(b, oy, ox, col0, col1, ho)
    return out


def conv_geometry(kernel: tuple[int, int], strides: tuple[int, int], pads: tuple[int, ...],
                  dilations: tuple[int, int], ho: int, wo: int) -> np.ndarray:
    """The int64 vector the patch kernels read: kh, kw, sh, sw, pad top, pad left, dh, dw, ho, wo."""
    return np.array([kernel[0], kernel[1], strides[0], strides[1], pads[0], pads[1],
                     dilations[0], dilations[1], ho, wo], np.int64)


@njit(**_FAST)
def _runs_fit(runs, channels, kw, taps, k):
    for r in range(runs.shape[0]):
        t, c0, c1, d, m = runs[r, 0], runs[r, 1], runs[r, 2], runs[r, 3], runs[r, 4]
        if (t < 0 or m < 1 or t + m > taps or c0 < 0 or c1 > channels or c0 > c1 or d < 0
                or d + m * (c1 - c0) > k):
            return False
        if m > 1 and (c0 != 0 or c1 != channels or t // kw != (t + m - 1) // kw):
            return False
    return True


# ------------------------------------------------------------------------------------------
# The arrays' products: register tiles of fused multiply-adds in row order
# ------------------------------------------------------------------------------------------
# A column current is a sum of products over the array's rows. The tiles below hold R patch rows
# x 16 V columns in R V vector registers for the whole sum and add the rows one by one, each
# element from +0 with llvm.fma (one rounding per step: the same bits on every machine, emulated
# where a CPU has no FMA unit). That is the order of OpenBLAS's own x86-64 SGEMM kernels
# (SkylakeX/Zen) for sums up to at least 288 rows, so the analog pass keeps their bits there, but
# no longer depends on which BLAS kernel a machine picks. Written as LLVM IR (numba intrinsics):
# numba neither keeps such a tile in registers nor fuses a multiply-add without fastmath. Rows
# per tile for V vectors: as many as keep two FMA units busy without spilling (measured on Zen 5,
# one core, sums of 144 or 288 rows from memory: V = 1: 12 rows 20.9 ns per row of 16 sums, 8
# rows 25.4; V = 2: 6 rows 70.8, 4 rows 83.5, 8 rows 76.6, 10 rows spill; V = 4: 6 rows 141, 4
# rows 186; OpenBLAS 28 / 103 / 179. From the L1 cache, 288-row sums: V = 3 with 4 / 6 / 8 rows
# 136 / 140 / 141 multiply-adds per ns, V = 4 with 4 / 5 / 6 rows 137 / 140 / 141).

_TILE_ROWS = {1: 12, 2: 6, 3: 6, 4: 6}


def _llvm_function(module, name, fnty):
    fn = module.globals.get(name)
    return fn if fn is not None else llvm_ir.Function(module, fnty, name=name)


def _fma_tiles(rows_of: dict[int, int]):
    """A numba intrinsic ``tiles(a, ao, lda, w, wo, ldw, k, y, yo, ldy, vectors, tail)`` on flat
    float32 arrays: y[yo + q ldy + j] = sum over i < k (k >= 1), in order, of a[ao + q lda + i] *
    w[wo + i ldw + j] for q < ``rows_of[vectors]`` and j < 16 (vectors - 1) + tail (1 <= tail <=
    16): the last vector's lanes from ``tail`` on neither read w nor write y. One loop per vector
    count (a key of ``rows_of``), chosen by a switch; another count does nothing."""

    @intrinsic
    def tiles(typingctx, a, ao, lda, w, wo, ldw, k, y, yo, ldy, vectors, tail):
        arrays = [t for t in (a, w, y) if isinstance(t, types.Array)]
        if len(arrays) != 3 or any(t.dtype != types.float32 or t.ndim != 1 for t in arrays):
            return None
        index = types.intp
        sig = types.void(a, index, index, w, index, index, index, y, index, index, index, index)

        def codegen(context, builder, sig, args):
            a_, ao_, lda_, w_, wo_, ldw_, k_, y_, yo_, ldy_, vectors_, tail_ = args
            data = [context.make_array(sig.args[i])(context, builder, v).data
                    for i, v in ((0, a_), (3, w_), (7, y_))]
            a_ptr, w_ptr, y_ptr = (builder.gep(d, [o]) for d, o in zip(data, (ao_, wo_, yo_)))
            f32, i32, i64 = llvm_ir.FloatType(), llvm_ir.IntType(32), llvm_ir.IntType(64)
            vec = llvm_ir.VectorType(f32, 16)
            vec_ptr = vec.as_pointer()
            mask_ty = llvm_ir.VectorType(llvm_ir.IntType(1), 16)
            module = builder.module
            fma = _llvm_function(module, "llvm.fma.v16f32", llvm_ir.FunctionType(vec, [vec] * 3))
            load = _llvm_function(module, "llvm.masked.load.v16f32.p0", llvm_ir.FunctionType(
                vec, [vec_ptr, i32, mask_ty, vec]))
            store = _llvm_function(module, "llvm.masked.store.v16f32.p0", llvm_ir.FunctionType(
                llvm_ir.VoidType(), [vec, vec_ptr, i32, mask_ty]))
            zero = llvm_ir.Constant(vec, None)
            align = llvm_ir.Constant(i32, 4)
            lane0 = llvm_ir.Constant(llvm_ir.VectorType(i32, 16), [0] * 16)

            def splat(value, ty):
                undef = llvm_ir.Constant(ty, llvm_ir.Undefined)
                return builder.shuffle_vector(
                    builder.insert_element(undef, value, llvm_ir.Constant(i32, 0)), undef, lane0)

            lanes = llvm_ir.Constant(llvm_ir.VectorType(i64, 16), list(range(16)))
            mask = builder.icmp_unsigned("<", lanes, splat(tail_, llvm_ir.VectorType(i64, 16)))

            def vector_at(base, offset):
                return builder.bitcast(builder.gep(base, [llvm_ir.Constant(i64, offset)]), vec_ptr)

            def tile(rows, vectors):
                """The loop over i for one tile shape, from the current block on."""
                entry = builder.basic_block
                loop = builder.append_basic_block(f"tile{rows}x{vectors}.loop")
                done = builder.append_basic_block(f"tile{rows}x{vectors}.done")
                builder.branch(loop)
                builder.position_at_end(loop)
                i = builder.phi(i64)
                i.add_incoming(llvm_ir.Constant(i64, 0), entry)
                acc = []
                for _ in range(rows * vectors):
                    phi = builder.phi(vec)
                    phi.add_incoming(zero, entry)
                    acc.append(phi)
                w_row = builder.gep(w_ptr, [builder.mul(i, ldw_)])
                w_vec = [builder.load(vector_at(w_row, 16 * v), align=4)
                         for v in range(vectors - 1)]
                w_vec.append(builder.call(load, [vector_at(w_row, 16 * (vectors - 1)), align,
                                                 mask, zero]))
                new = []
                for q in range(rows):
                    a_q = builder.load(builder.gep(a_ptr, [builder.add(
                        builder.mul(llvm_ir.Constant(i64, q), lda_), i)]), align=4)
                    a_vec = splat(a_q, vec)
                    new += [builder.call(fma, [a_vec, w_vec[v], acc[q * vectors + v]])
                            for v in range(vectors)]
                i_next = builder.add(i, llvm_ir.Constant(i64, 1))
                i.add_incoming(i_next, loop)
                for phi, value in zip(acc, new):
                    phi.add_incoming(value, loop)
                builder.cbranch(builder.icmp_signed("<", i_next, k_), loop, done)
                builder.position_at_end(done)
                for q in range(rows):
                    y_row = builder.gep(y_ptr, [builder.mul(llvm_ir.Constant(i64, q), ldy_)])
                    for v in range(vectors - 1):
                        builder.store(new[q * vectors + v], vector_at(y_row, 16 * v), align=4)
                    builder.call(store, [new[q * vectors + vectors - 1],
                                         vector_at(y_row, 16 * (vectors - 1)), align, mask])

            exit_ = builder.append_basic_block("tiles.exit")
            switch = builder.switch(vectors_, exit_)
            for vectors, rows in rows_of.items():
                case = builder.append_basic_block(f"tiles.v{vectors}")
                switch.add_case(llvm_ir.Constant(i64, vectors), case)
                builder.position_at_end(case)
                tile(rows, vectors)
                builder.branch(exit_)
            builder.position_at_end(exit_)
            return context.get_dummy_value()

        return sig, codegen

    return tiles


_TILES = _fma_tiles(_TILE_ROWS)
_ROWS = _fma_tiles({v: 1 for v in _TILE_ROWS})
_TILE_ROWS_OF = np.array([_TILE_ROWS.get(v, 0) for v in range(5)], np.int64)


# Patch rows written and multiplied at a time (PatchesDac.products): measured (ResNet-32 analog
# pass, one thread): 32 KiB / 128 KiB / 256 KiB / 1 MiB -> 1.73 / 1.59 / 1.60 / 1.59 ms per
# image (against 1.85-1.89 with one 8 MB patch block per GEMM call). Half the L2 cache: the
# group's codes stay there while the tiles read them, next to the weights and the input pixels.
PATCH_GROUP_BYTES = 256 * 1024


def patch_group_rows(k: int) -> int:
    """Rows of K patch values that :meth:`PatchesDac.products` writes and multiplies at a time:
    about ``PATCH_GROUP_BYTES``, a whole number of every tile's rows."""
    tile = math.lcm(*_TILE_ROWS.values())
    return max(tile, PATCH_GROUP_BYTES // (4 * max(k, 1)) // tile * tile)


@njit(**_FAST, inline="always")
def _products(af, ao, lda, rows, k, wf, wo, ldw, ncols, yf, yo, ldy):
    """yf[yo + p ldy + j] = the sum over i < k, in order, of af[ao + p lda + i] *
    wf[wo + i ldw + j] (fused multiply-adds from +0) for p < rows, j < ncols: tiles of up to 64
    columns, then rows."""
    if k == 0:
        for p in range(rows):
            for j in range(ncols):
                yf[yo + p * ldy + j] = 0.0
        return
    for g in range(0, ncols, 64):
        width = min(ncols - g, 64)
        v = (width + 15) // 16
        tail = width - 16 * (v - 1)
        tile = _TILE_ROWS_OF[v]
        p = 0
        while p + tile <= rows:
            _TILES(af, ao + p * lda, lda, wf, wo + g, ldw, k, yf, yo + p * ldy + g, ldy, v, tail)
            p += tile
        while p < rows:
            _ROWS(af, ao + p * lda, lda, wf, wo + g, ldw, k, yf, yo + p * ldy + g, ldy, v, tail)
            p += 1


@njit(**_FAST, inline="always")
def _row_block_products(af, lda, rows, bounds, wf, ldw, cranges, yf, y_rows, y_row0, wb):
    """_products of ``rows`` rows of af (``lda`` values each) with each row block b's arrays
    (rows ``bounds[b]``, columns ``cranges[b]`` of wf, ``ldw`` columns) into rows y_row0 ... of
    block b of yf (``y_rows`` rows of ``wb`` values per block)."""
    for b in range(bounds.shape[0]):
        r0 = bounds[b, 0]
        c0 = cranges[b, 0]
        _products(af, r0, lda, rows, bounds[b, 1] - r0, wf, r0 * ldw + c0, ldw,
                  cranges[b, 1] - c0, yf, (b * y_rows + y_row0) * wb, wb)


@njit(**_FAST)
def _block_products_kernel(x, bounds, w, cranges, y):
    rows, k = x.shape
    _row_block_products(x.ravel(), k, rows, bounds, w.ravel(), w.shape[1], cranges, y.ravel(),
                        rows, 0, y.shape[2])
    return y


def block_products_into(x: np.ndarray, bounds: np.ndarray, w: np.ndarray, col_ranges: np.ndarray,
                        y: np.ndarray) -> np.ndarray:
    """The products of each row block b of a layer's arrays: y[b, :, :c1 - c0] = x[:, r0:r1] @
    w[r0:r1, c0:c1] for rows ``bounds[b]`` = [r0, r1) and columns ``col_ranges[b]`` = [c0, c1),
    every sum in row order with fused multiply-adds (see the tiles above). float32 x (P, K),
    w (K, N), y (B, P, W), all C-contiguous; y[b, :, c1 - c0:] is left as it is."""
    bounds = np.ascontiguousarray(bounds, np.int64)
    col_ranges = np.ascontiguousarray(col_ranges, np.int64)
    if x.dtype != np.float32 or w.dtype != np.float32 or y.dtype != np.float32:
        raise TypeError("block_products_into: float32 arrays expected")
    if not (x.flags.c_contiguous and w.flags.c_contiguous and y.flags.c_contiguous):
        raise ValueError("block_products_into: arrays must be C-contiguous")
    nb = len(bounds)
    if (x.ndim != 2 or w.ndim != 2 or y.ndim != 3 or w.shape[0] != x.shape[1]
            or y.shape[:2] != (nb, x.shape[0]) or bounds.shape != (nb, 2)
            or col_ranges.shape != (nb, 2)):
        raise ValueError(f"block_products_into: shapes x {x.shape}, w {w.shape}, y {y.shape} do "
                         f"not fit {nb} row blocks")
    if nb and (bounds.min() < 0 or bounds.max() > x.shape[1] or np.any(bounds[:, 1] < bounds[:, 0])
               or not _ranges_fit(col_ranges, w.shape[1], y.shape[2])):
        raise ValueError("block_products_into: row blocks or column ranges outside w and y")
    return _block_products_kernel(x, bounds, w, col_ranges, y)


def products_into(x: np.ndarray, w: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out = x @ w (float32, C-contiguous; x (P, K), w (K, N)) with every sum in row order as
    fused multiply-adds: :func:`block_products_into` with one row block."""
    if out.ndim != 2:
        raise ValueError("products_into: out must be (P, N)")
    k, n = w.shape if w.ndim == 2 else (-1, -1)
    block_products_into(x, np.array([[0, k]]), w, np.array([[0, n]]), out[None])
    return out


@njit(**_FAST)
def _patch_products_kernel(x, window_max, by_pixel, geom, row0, row1, runs, bounds, levels, buf,
                           absmax, w, cranges, y, col0, col1):
    """The patch + DAC kernels on a group of rows at a time into ``buf`` (G, K; sized to stay in
    cache, patch_group_rows), each group's products with every row block's arrays straight after
    into y."""
    group, k = buf.shape
    bf = buf.ravel()
    wf = w.ravel()
    yf = y.ravel()
    for g0 in range(row0, row1, group):
        g1 = min(row1, g0 + group)
        if by_pixel:
            _patches_dac_by_pixel_kernel(x, window_max, geom, g0, g1, runs, levels, buf,
                                         absmax[g0 - row0:], col0, col1)
        else:
            _patches_dac_kernel(x, geom, g0, g1, runs, bounds, levels, buf, absmax[g0 - row0:],
                                col0, col1)
        _row_block_products(bf, k, g1 - g0, bounds, wf, w.shape[1], cranges, yf, row1 - row0,
                            g0 - row0, y.shape[2])
    return y

def _check_patches(x, geom, row0, row1, runs, out, name, cols=None):
    if x.dtype != np.float32 or out.dtype != np.float32 or not x.flags.c_contiguous:
        raise TypeError(f"{name}: C-contiguous float32 arrays expected")
    if geom.dtype != np.int64 or geom.shape != (10,):
        raise ValueError(f"{name}: geometry must be conv_geometry(...)")
    width = int(geom[9])
    if cols is not None:
        if not 0 <= cols[0] < cols[1] <= width:
            raise ValueError(f"{name}: output columns {cols} outside the {width} of the layer")
        width = cols[1] - cols[0]
    rows = x.shape[0] * int(geom[8]) * width
    if not 0 <= row0 <= row1 <= rows:
        raise ValueError(f"{name}: rows [{row0}, {row1}) outside the {rows} patch rows")
    if out.ndim != 2 or out.shape[0] < row1 - row0 or not out.flags.c_contiguous:
        raise ValueError(f"{name}: out must be C-contiguous with at least {row1 - row0} rows, "
                         f"got {out.shape}")
    if (runs.dtype != np.int64 or runs.ndim != 2 or runs.shape[1] != 5
            or not _runs_fit(runs, x.shape[3], int(geom[1]), int(geom[0] * geom[1]),
                             out.shape[1])):
        raise ValueError(f"{name}: runs must be int64 (R, 5) inside the input channels, the "
                         f"kernel taps (one kernel row per run of taps, all channels) and the "
                         f"{out.shape[1]} patch columns")


def patches_into(x: np.ndarray, geom: np.ndarray, row0: int, row1: int, runs: np.ndarray,
                 out: np.ndarray) -> np.ndarray:
    """Patch rows [row0, row1) of an NHWC float32 batch (rows are (image, oy, ox) flattened) into
    ``out[:row1 - row0]``, laid out by ``runs`` (R, 5): run (t, c0, c1, d, m) copies channels
    [c0, c1) of kernel taps t .. t + m - 1 (row-major over the kernel; m > 1: all channels, one
    kernel row) to columns [d, d + m (c1 - c0)); taps off the input read 0. With runs (i kw, 0, C,
    i kw C, kw) the row is tap-major: each kernel row's kw C values one contiguous copy (the (c, i,
    j) order of :func:`im2col_into` scatters every value). Any kernel, strides, pads and
    dilations (``geom`` from :func:`conv_geometry`)."""
    _check_patches(x, geom, row0, row1, runs, out, "patches_into")
    return _patches_kernel(x, geom, row0, row1, runs, out)


class PatchesDac:
    """:func:`patches_dac_into` for one layer: the geometry, run layout, row blocks, converter
    and output columns checked once for inputs shaped ``x_shape``; each call checks only what
    changes (the rows and buffers). An inference pass makes one per layer and calls it per block
    of rows."""

    def __init__(self, x_shape: tuple[int, ...], geom: np.ndarray, runs: np.ndarray,
                 bounds: np.ndarray, bits: int | None, k: int,
                 cols: tuple[int, int] | None = None):
        self.x_shape = tuple(int(v) for v in x_shape)
        width = int(geom[9])
        col0, col1 = (0, width) if cols is None else (int(cols[0]), int(cols[1]))
        if len(self.x_shape) != 4 or geom.dtype != np.int64 or geom.shape != (10,):
            raise ValueError("patches_dac_into: an NHWC input and conv_geometry(...) expected")
        if not 0 <= col0 < col1 <= width:
            raise ValueError(f"patches_dac_into: output columns {cols} outside the {width} of "
                             f"the layer")
        if (runs.dtype != np.int64 or runs.ndim != 2 or runs.shape[1] != 5
                or not _runs_fit(runs, self.x_shape[3], int(geom[1]), int(geom[0] * geom[1]), k)):
            raise ValueError(f"patches_dac_into: runs must be int64 (R, 5) inside the input "
                             f"channels, the kernel taps (one kernel row per run of taps, all "
                             f"channels) and the {k} patch columns")
        bounds = np.ascontiguousarray(bounds, np.int64)
        if bounds.ndim != 2 or bounds.shape[1] != 2 or (
                bounds.size and (bounds.min() < 0 or bounds.max() > k)):
            raise ValueError("patches_dac_into: row bounds outside the patch")
        self.geom, self.runs, self.bounds, self.k = geom, runs, bounds, k
        self.levels = levels_of(bits)
        self.col0, self.col1 = col0, col1
        self.rows = self.x_shape[0] * int(geom[8]) * (col1 - col0)
        # one row block of whole taps (every run all channels, every tap once): a row's abs-max
        # is the largest abs-max of its taps' pixels, known before the row is written
        taps, channels = int(geom[0] * geom[1]), self.x_shape[3]
        self.by_pixel = bool(
            bounds.shape == (1, 2) and bounds[0, 0] == 0 and bounds[0, 1] == k
            and k == taps * channels and np.all(runs[:, 1] == 0) and np.all(runs[:, 2] == channels)
            and int(runs[:, 4].sum()) == taps
            and len(set(t for r in runs for t in range(int(r[0]), int(r[0] + r[4])))) == taps)

    def window_maxima(self, x: np.ndarray, out: np.ndarray | None = None,
                      pixels: np.ndarray | None = None) -> np.ndarray | None:
        """The abs-max of every output pixel's window (N, Ho, Wo; int32 bit patterns of the
        floats) that calls take as ``window_max`` when :attr:`by_pixel` (once per input, shared
        by every block of rows and every copy): the largest of its taps' pixel abs-maxes over
        their channels (``pixels``: a (N, H, W) int32 scratch for those). Else None."""
        if not self.by_pixel:
            return None
        if x.dtype != np.float32 or x.shape != self.x_shape or not x.flags.c_contiguous:
            raise ValueError(f"patches_dac_into: C-contiguous float32 input {self.x_shape} "
                             f"expected, got {x.dtype} {x.shape}")
        shape = self.window_shape
        for a, want in ((out, shape), (pixels, self.x_shape[:3])):
            if a is not None and (a.shape != want or a.dtype != np.int32
                                  or not a.flags.c_contiguous):
                raise ValueError(f"patches_dac_into: window maxima must be int32 {shape}, pixel "
                                 f"maxima {self.x_shape[:3]}")
        pixels = _pixel_absmax_kernel(x, np.empty(self.x_shape[:3], np.int32) if pixels is None
                                      else pixels)
        return _window_absmax_kernel(pixels, self.geom, np.empty(shape, np.int32) if out is None
                                     else out)

    @property
    def window_shape(self) -> tuple[int, int, int]:
        """(N, Ho, Wo): the output pixels of the whole layer."""
        return self.x_shape[0], int(self.geom[8]), int(self.geom[9])

    def __call__(self, x: np.ndarray, row0: int, row1: int, out: np.ndarray,
                 absmax: np.ndarray, window_max: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        self._check(x, row0, row1, out, row1 - row0, absmax)
        if window_max is not None:
            _patches_dac_by_pixel_kernel(x, self._window_max(window_max), self.geom, row0, row1,
                                         self.runs, self.levels, out, absmax, self.col0,
                                         self.col1)
        else:
            _patches_dac_kernel(x, self.geom, row0, row1, self.runs, self.bounds, self.levels,
                                out, absmax, self.col0, self.col1)
        return out, absmax

    def _check(self, x: np.ndarray, row0: int, row1: int, out: np.ndarray, out_rows: int,
               absmax: np.ndarray) -> None:
        if (x.dtype != np.float32 or x.shape != self.x_shape or not x.flags.c_contiguous
                or out.dtype != np.float32 or out.ndim != 2 or out.shape[1] != self.k
                or not out.flags.c_contiguous):
            raise ValueError(f"patches_dac_into: C-contiguous float32 input {self.x_shape} and "
                             f"out (rows, {self.k}) expected, got {x.dtype} {x.shape} and "
                             f"{out.dtype} {out.shape}")
        if not 0 <= row0 <= row1 <= self.rows or out.shape[0] < out_rows:
            raise ValueError(f"patches_dac_into: rows [{row0}, {row1}) outside the {self.rows} "
                             f"patch rows or the {out.shape[0]} of out")
        if (absmax.dtype != np.float32 or absmax.ndim != 2 or absmax.shape[1] != len(self.bounds)
                or absmax.shape[0] < row1 - row0 or not absmax.flags.c_contiguous):
            raise ValueError(f"patches_dac_into: absmax must be C-contiguous float32 with "
                             f"{len(self.bounds)} columns")

    def _window_max(self, window_max: np.ndarray | None) -> np.ndarray:
        """``window_max`` checked (a placeholder for None)."""
        if window_max is None:
            return _NO_WINDOW_MAX
        if (not self.by_pixel or window_max.shape != self.window_shape
                or window_max.dtype != np.int32 or not window_max.flags.c_contiguous):
            raise ValueError("patches_dac_into: window_max must be window_maxima(x) of a "
                             "layout of whole taps")
        return window_max

    def products(self, x: np.ndarray, row0: int, row1: int, buf: np.ndarray, absmax: np.ndarray,
                 w: np.ndarray, col_ranges: np.ndarray, y: np.ndarray,
                 window_max: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The patch + DAC of rows [row0, row1) (as :meth:`__call__`, a group of ``len(buf)``
        rows at a time in ``buf``, G x K) and each group's products with the row blocks' arrays
        straight after, while it is in cache: y[b, p, :c1 - c0] = codes[p, r0:r1] @
        w[r0:r1, c0:c1] for the row blocks [r0, r1) and their columns ``col_ranges`` [c0, c1)
        (:func:`block_products_into`'s numbers). Returns (y, absmax)."""
        rows = row1 - row0
        self._check(x, row0, row1, buf, 1, absmax)
        col_ranges = np.ascontiguousarray(col_ranges, np.int64)
        nb = len(self.bounds)
        if (w.dtype != np.float32 or y.dtype != np.float32 or w.ndim != 2 or w.shape[0] != self.k
                or y.ndim != 3 or y.shape[:2] != (nb, rows)
                or not (w.flags.c_contiguous and y.flags.c_contiguous)
                or col_ranges.shape != (nb, 2)
                or not _ranges_fit(col_ranges, w.shape[1], y.shape[2])):
            raise ValueError(f"patches_dac_into: C-contiguous float32 w ({self.k}, N) and y "
                             f"({nb}, {rows}, W) with column ranges inside them expected, got "
                             f"w {w.dtype} {w.shape}, y {y.dtype} {y.shape}")
        _patch_products_kernel(x, self._window_max(window_max), window_max is not None, self.geom,
                               row0, row1, self.runs, self.bounds, self.levels, buf, absmax, w,
                               col_ranges, y, self.col0, self.col1)
        return y, absmax


def patches_dac_into(x: np.ndarray, geom: np.ndarray, row0: int, row1: int, runs: np.ndarray,
                     bounds: np.ndarray, bits: int | None, out: np.ndarray, absmax: np.ndarray,
                     cols: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`patches_into` and the DAC of :func:`dac_quantize_into` (row blocks ``bounds`` of the
    run layout's columns) in one pass: each row is quantized while it is in cache. ``cols`` =
    (w0, w1): only the output pixels of columns w0 .. w1-1 of every output row are rows (the
    pixels one copy of a replicated layer computes), (image, oy, ox) flattened as before.
    (:class:`PatchesDac` checks the fixed arguments once for many calls.)"""
    if out.ndim != 2:
        raise ValueError("patches_dac_into: out must be (rows, K)")
    return PatchesDac(x.shape, geom, runs, bounds, bits, out.shape[1], cols)(
        x, row0, row1, out, absmax)


@njit(**_FAST)
def _dac_serial_kernel(x, bounds, levels, xq, absmax):
    k = x.shape[1]
    xf = x.ravel()
    of = xq.ravel()
    oi = of.view(np.int32)
    for p in range(x.shape[0]):
        base = np.uint64(p * k)
        if xq is not x:
            for i in range(np.uint64(k)):
                of[base + i] = xf[base + i]
        _dac_row_flat(of, oi, base, bounds, levels, absmax, p)
    return xq


def dac_quantize_into(x: np.ndarray, bounds: np.ndarray, bits: int | None, xq: np.ndarray,
                      absmax: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Noise-managed DAC: each row of ``x`` (P, K), restricted to each row block [r0, r1) of
    ``bounds`` (B, 2), is divided by its abs-max m and rounded to the signed levels
    L = 2^(bits-1) - 1 per side. Writes the DAC codes rint(x * (L / m)) (integers in [-L, L], all
    float32 arithmetic) into ``xq`` (P, K) - with ``bits=None`` the unrounded x / m in [-1, 1] - and
    the abs-maxes m into ``absmax`` (P, B). ``xq`` may be ``x`` itself (in place). The normalized
    input is ``xq / L`` (see :func:`dac_code_scale`). Runs on the calling thread."""
    if x.dtype != np.float32 or xq.dtype != np.float32 or absmax.dtype != np.float32:
        raise TypeError("dac_quantize_into: float32 arrays expected")
    if x.ndim != 2 or xq.shape != x.shape or absmax.shape != (x.shape[0], len(bounds)):
        raise ValueError(f"dac_quantize_into: shapes x {x.shape}, xq {xq.shape}, absmax "
                         f"{absmax.shape} do not fit {len(bounds)} row blocks")
    if not (x.flags.c_contiguous and xq.flags.c_contiguous and absmax.flags.c_contiguous):
        raise ValueError("dac_quantize_into: arrays must be C-contiguous")
    bounds = np.ascontiguousarray(bounds, np.int64)
    if bounds.size and (bounds.min() < 0 or bounds.max() > x.shape[1]):
        raise ValueError("dac_quantize_into: row bounds outside the input")
    return _dac_serial_kernel(x, bounds, levels_of(bits), xq, absmax), absmax


@njit(**_FAST)
def _epilogue_kernel(y, bias, scale, offset, residual, lo, hi, use_bias, use_affine,
                     use_residual):
    """In place on ``y`` (one array read and written at the same index: the loop vectorizes; an
    output array that might overlap the input would keep it scalar)."""
    rows, cols = y.shape
    yf = y.ravel()
    rf = residual.ravel()
    nc = np.uint64(cols)
    for p in range(rows):
        base = np.uint64(p) * nc
        for n in range(nc):
            v = yf[base + n]
            if use_bias:
                v = v + bias[n]
            if use_affine:
                v = v * scale[n] + offset[n]
            if use_residual:
                v = v + rf[base + n]
            v = lo if v < lo else v
            v = hi if v > hi else v
            yf[base + n] = v
    return y


_NONE_F32 = np.zeros(1, np.float32)


def epilogue_into(y: np.ndarray, out: np.ndarray, *, bias: np.ndarray | None = None,
                  scale: np.ndarray | None = None, offset: np.ndarray | None = None,
                  residual: np.ndarray | None = None,
                  clamp: tuple[float, float] | None = None) -> np.ndarray:
    """The output stage of a matrix layer in one read and one write of its (P, N) product ``y``:
    ``((y + bias) * scale + offset) + residual``, then clamped to ``clamp`` (lo, hi) - each part
    optional, every operation float32 in exactly this order (the same bits as the layers run one
    by one: conv bias, BatchNorm, Add, ReLU/Clip). ``out`` may be ``y``."""
    if (y.dtype != np.float32 or out.dtype != np.float32 or y.ndim != 2 or out.shape != y.shape
            or not out.flags.c_contiguous):
        raise ValueError(f"epilogue_into: float32 (P, N) arrays of one shape expected (out "
                         f"C-contiguous), got "
                         f"{y.dtype} {y.shape} and {out.dtype} {out.shape}")
    n = y.shape[1]
    vecs = []
    for v, what in ((bias, "bias"), (scale, "scale"), (offset, "offset")):
        if v is not None and (v.dtype != np.float32 or v.shape != (n,)):
            raise ValueError(f"epilogue_into: {what} must be float32 ({n},)")
        vecs.append(_NONE_F32 if v is None else v)
    if (scale is None) != (offset is None):
        raise ValueError("epilogue_into: scale and offset go together")
    if residual is not None and (residual.dtype != np.float32 or residual.shape != y.shape):
        raise ValueError("epilogue_into: residual must be float32 shaped like y")
    if residual is not None and not residual.flags.c_contiguous:
        raise ValueError("epilogue_into: residual must be C-contiguous")
    if out is not y:
        np.copyto(out, y)
    lo, hi = (-np.inf, np.inf) if clamp is None else clamp
    return _epilogue_kernel(out, vecs[0], vecs[1], vecs[2],
                            _NONE_2D if residual is None else residual, np.float32(lo),
                            np.float32(hi), bias is not None, scale is not None,
                            residual is not None)


# ------------------------------------------------------------------------------------------
# Counter-based normal numbers: Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy
# as 1, 2, 3", SC'11; the generator of Random123, cuRAND and JAX) turned into N(0, 1) by the
# inverse normal CDF (Wichura, AS 241 PPND7, accurate to about 1e-7). A draw is a pure function of
# (key, counter): any range of counters can be generated on any thread, in any order, with the
# same numbers, and the loop vectorizes (about 1.2 ns per normal on one core, numpy's ziggurat
# 7.6 ns). The key (64 bits) comes from a named stream; the counter says which draw it is.
# ------------------------------------------------------------------------------------------

_PHILOX_M0 = np.uint64(0xD2511F53)
_PHILOX_M1 = np.uint64(0xCD9E8D57)
_PHILOX_W0 = np.uint64(0x9E3779B9)
_PHILOX_W1 = np.uint64(0xBB67AE85)
_LO32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)


@njit(**_FAST, inline="always")
def _philox_round(c0, c1, c2, c3, k0, k1):
    p0 = _PHILOX_M0 * c0
    p1 = _PHILOX_M1 * c2
    return (p1 >> _SHIFT32) ^ c1 ^ k0, p1 & _LO32, (p0 >> _SHIFT32) ^ c3 ^ k1, p0 & _LO32


@njit(**_FAST, inline="always")
def _philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox4x32 with 10 rounds on 32-bit words held in uint64 (the 32x32 -> 64 products)."""
    for _ in range(9):
        c0, c1, c2, c3 = _philox_round(c0, c1, c2, c3, k0, k1)
        k0 = (k0 + _PHILOX_W0) & _LO32
        k1 = (k1 + _PHILOX_W1) & _LO32
    return _philox_round(c0, c1, c2, c3, k0, k1)


# AS 241 PPND7 (Wichura 1988): rational approximations of the inverse normal CDF
_A = (3.3871327179, 50.434271938, 159.29113202, 59.109374720)
_B = (17.895169469, 78.757757664, 67.187563600)
_C = (1.4234372777, 2.7568153900, 1.3067284816, 0.17023821103)
_D = (0.73700164250, 0.12021132975)
_f32 = np.float32


@njit(**_FAST, inline="always")
def _log_f32(x):
    """Natural log of a positive normal float32 (Cephes logf: exponent from the bits, a degree-9
    polynomial on the mantissa; within 2 ulp), written without calls so that loops vectorize."""
    bits = np.float32(x).view(np.int32)
    e = ((bits >> 23) & 0xff) - 126
    m = np.int32((bits & 0x007fffff) | 0x3f000000).view(np.float32)      # [0.5, 1)
    small = m < _f32(0.70710678)
    e = e - np.int32(1) if small else e
    m = (m + m - _f32(1.0)) if small else (m - _f32(1.0))
    z = m * m
    y = ((((((((_f32(7.0376836292e-2) * m - _f32(1.1514610310e-1)) * m
               + _f32(1.1676998740e-1)) * m - _f32(1.2420140846e-1)) * m
             + _f32(1.4249322787e-1)) * m - _f32(1.6668057665e-1)) * m
           + _f32(2.0000714765e-1)) * m - _f32(2.4999993993e-1)) * m
         + _f32(3.3333331174e-1)) * m * z
    fe = _f32(e)
    y = y + _f32(-2.12194440e-4) * fe - _f32(0.5) * z
    return m + y + _f32(0.693359375) * fe


@njit(**_FAST, inline="always")
def _normal_of_word(w):
    """A 32-bit word -> N(0, 1) float32: the low 31 bits m give p = (m + 1/2) / 2^32 in (0, 1/2)
    and z = PPND7(p) = Phi^-1(p) < 0, negated when the top bit is set. |z| <= 6.34 (a normal
    goes beyond 2.3e-10 of the time). PPND7's central and near-tail rational functions are both
    evaluated and the numerator and denominator of one selected (one division, no branch: the
    loop vectorizes); its far tail (p < 1e-11) is below the smallest p of 31 bits."""
    m = np.int32(w & np.uint64(0x7FFFFFFF))
    p = (_f32(m) + _f32(0.5)) * _f32(2.0 ** -32)
    q = p - _f32(0.5)
    r = _f32(0.180625) - q * q
    num_c = q * (((_f32(_A[3]) * r + _f32(_A[2])) * r + _f32(_A[1])) * r + _f32(_A[0]))
    den_c = ((_f32(_B[2]) * r + _f32(_B[1])) * r + _f32(_B[0])) * r + _f32(1.0)
    s = np.sqrt(-_log_f32(p)) - _f32(1.6)
    num_t = -((((_f32(_C[3]) * s + _f32(_C[2])) * s + _f32(_C[1])) * s + _f32(_C[0])))
    den_t = (_f32(_D[1]) * s + _f32(_D[0])) * s + _f32(1.0)
    central = q >= _f32(-0.425)
    z = (num_c if central else num_t) / (den_c if central else den_t)
    return -z if (w >> np.uint64(31)) else z


@njit(**_FAST)
def _normals_kernel(k0, k1, stream, start, out):
    """out[4 i + j] = normal j of counter (start + i) for i < len(out) / 4 (len a multiple of 4)."""
    s = np.uint64(stream) & _LO32
    for i in range(out.shape[0] // 4):
        g = np.uint64(start + i)
        a, b, c, d = _philox4x32_10(g & _LO32, g >> _SHIFT32, s, np.uint64(0), k0, k1)
        out[4 * i] = _normal_of_word(a)
        out[4 * i + 1] = _normal_of_word(b)
        out[4 * i + 2] = _normal_of_word(c)
        out[4 * i + 3] = _normal_of_word(d)
    return out


def key_words(key: int) -> tuple[np.uint64, np.uint64]:
    """A 64-bit key (e.g. ``rng.integers(2**64, dtype=np.uint64)`` of a named stream) as the two
    32-bit Philox key words."""
    key = int(key)
    if not 0 <= key < 2 ** 64:
        raise ValueError(f"key {key} is not a 64-bit unsigned integer")
    return np.uint64(key & 0xFFFFFFFF), np.uint64(key >> 32)


def philox4x32(counter: tuple[int, int, int, int], key: tuple[int, int]) -> tuple[int, ...]:
    """The four 32-bit output words of Philox4x32-10 for one counter and key (for tests)."""
    c = [np.uint64(v) for v in counter]
    return tuple(int(v) for v in _philox_one(c[0], c[1], c[2], c[3], np.uint64(key[0]),
                                               np.uint64(key[1])))


@njit(**_FAST)
def _philox_one(c0, c1, c2, c3, k0, k1):
    return _philox4x32_10(c0, c1, c2, c3, k0, k1)


@njit(**_FAST)
def _normal_words(words, out):
    for i in range(words.shape[0]):
        out[i] = _normal_of_word(np.uint64(words[i]))
    return out


def normal_of_words(words: np.ndarray) -> np.ndarray:
    """The normal numbers of 32-bit words (the transformation alone, for tests)."""
    words = np.ascontiguousarray(words, np.uint32)
    return _normal_words(words, np.empty(words.shape, np.float32))


def normals_into(key: int, stream: int, start: int, out: np.ndarray) -> np.ndarray:
    """Standard normal float32 numbers of counters ``start``, ``start + 1``, ... under ``key``
    (64 bits) and ``stream`` (32 bits: e.g. a layer): 4 per counter, in counter order, filling
    ``out`` (its length a multiple of 4). The same (key, stream, counter) always gives the same
    numbers."""
    if out.dtype != np.float32 or out.ndim != 1 or out.size % 4 or not out.flags.c_contiguous:
        raise ValueError("normals_into: out must be contiguous float32 with a multiple of 4 values")
    if not 0 <= stream < 2 ** 32 or start < 0:
        raise ValueError("normals_into: stream must fit 32 bits and start be >= 0")
    k0, k1 = key_words(key)
    return _normals_kernel(k0, k1, stream, start, out)


# ------------------------------------------------------------------------------------------
# ADC with its output noise drawn inside, on a block of rows
# ------------------------------------------------------------------------------------------

@njit(**_FAST, inline="always")
def _convert(y, z, in_scale, sigma, bound, levels, step, inv_step):
    """One conversion: the analog value ``y`` (times ``in_scale``: normalized units) plus output
    noise ``sigma * z`` (z ~ N(0, 1)), clipped to +-``bound``, rounded to ``levels`` per side (0: no rounding).
    Returns the converted value and 1 if it clipped, else 0."""
    v = y * in_scale
    if sigma > 0.0:
        v = v + sigma * z
    over = v > bound
    under = v < -bound
    v = bound if over else v
    v = -bound if under else v
    if levels > 0:
        v = np.rint(v * inv_step) * step
    return v, np.int32(over or under)


@njit(**_FAST)
def _adc_rows_kernel(y, cranges, absmax, colscale, offset, residual, use_residual, lo, hi,
                     in_scale, bound, levels, sigma, k0, k1, stream, row_start, noise, acc,
                     out, counts, out_row0, col0, span, row_pixels):
    nb, rows, wb = y.shape
    ncols = out.shape[1]
    # block row p is pixel out_row0 + p of a part that computes output columns [col0, col0 +
    # span) of every output row of ``row_pixels`` pixels; out and residual hold every pixel:
    # the patch rows' walk with one output row per "image" gives its (row, column)
    line, _, ox = _first_pixel(out_row0, col0, col0 + span, 1)
    w4 = (wb + 3) // 4
    step = bound / _f32(levels) if levels > 0 else _f32(0.0)
    inv_step = _f32(levels) / bound if levels > 0 else _f32(0.0)
    if sigma > 0.0:
        # one normal per conversion (row, block, column), counter = ((row * B + b) * W4 + j / 4)
        _normals_kernel(k0, k1, stream, row_start * nb * w4, noise[:rows * nb * w4 * 4])
    yf = y.ravel()
    cf = colscale.ravel()
    of = out.ravel()
    rf = residual.ravel()
    nc = np.uint64(ncols)
    # per-column counters: the inner loops carry no horizontal reduction
    clip_n = np.zeros(wb, np.int32)
    zero_n = np.zeros(wb, np.int32)
    if nb == 1 and cranges[0, 0] == 0 and cranges[0, 1] == ncols:
        # one row block over all columns: convert and finish each row in one pass (the same
        # operations: 0 + t is t, up to the sign of a zero that the offset add erases)
        for p in range(rows):
            yb = np.uint64(p * wb)
            nz = np.uint64(p * w4 * 4)
            ob = np.uint64(line * row_pixels + ox) * nc
            line, _, ox = _next_pixel(line, 0, ox, col0, col0 + span, 1)
            am = absmax[p, 0]
            for j in range(nc):
                z = noise[nz + j] if sigma > 0.0 else _f32(0.0)   # no noise: no buffer to read
                v, clipped = _convert(yf[yb + j], z, in_scale, sigma, bound, levels, step,
                                      inv_step)
                clip_n[j] += clipped
                zero_n[j] += np.int32(v == 0.0)
                v = (_f32(0.0) + v * am * cf[j]) + offset[j]
                if use_residual:
                    v = v + rf[ob + j]
                v = lo if v < lo else v
                v = hi if v > hi else v
                of[ob + j] = v
        counts[0] += clip_n.sum()
        counts[1] += zero_n.sum()
        return out
    for i in range(np.uint64(rows) * nc):
        acc[i] = 0.0
    for b in range(nb):
        c0 = np.uint64(cranges[b, 0])
        width = np.uint64(cranges[b, 1] - cranges[b, 0])
        cb = np.uint64(b * ncols) + c0
        for p in range(rows):
            yb = np.uint64((b * rows + p) * wb)
            nz = np.uint64((p * nb + b) * w4 * 4)
            ab = np.uint64(p) * nc + c0
            am = absmax[p, b]
            for j in range(width):
                z = noise[nz + j] if sigma > 0.0 else _f32(0.0)   # no noise: no buffer to read
                v, clipped = _convert(yf[yb + j], z, in_scale, sigma, bound, levels, step,
                                      inv_step)
                clip_n[j] += clipped
                zero_n[j] += np.int32(v == 0.0)
                acc[ab + j] += v * am * cf[cb + j]
    for p in range(rows):
        ab = np.uint64(p) * nc
        ob = np.uint64(line * row_pixels + ox) * nc
        line, _, ox = _next_pixel(line, 0, ox, col0, col0 + span, 1)
        for n in range(nc):
            v = acc[ab + n] + offset[n]
            if use_residual:
                v = v + rf[ob + n]
            v = lo if v < lo else v
            v = hi if v > hi else v
            of[ob + n] = v
    counts[0] += clip_n.sum()
    counts[1] += zero_n.sum()
    return out


@njit(**_FAST)
def _ranges_fit(ranges, ncols, width):
    for b in range(ranges.shape[0]):
        if ranges[b, 0] < 0 or ranges[b, 1] > ncols or ranges[b, 1] < ranges[b, 0] or (
                ranges[b, 1] - ranges[b, 0] > width):
            return False
    return True


@functools.lru_cache(maxsize=64)
def _zeros_f32(n: int) -> np.ndarray:
    out = np.zeros(n, np.float32)
    out.flags.writeable = False
    return out


class AdcRows:
    """:func:`adc_rows_into` for one layer's output stage: the column ranges, per-column factors,
    offset, converter, noise and clamp checked once; each call checks only what changes (the
    block's rows, buffers, noise key and placement). An inference pass makes one per layer."""

    def __init__(self, col_ranges: np.ndarray, colscale: np.ndarray, *, width: int,
                 bound: float | None, bits: int | None, in_scale: float = 1.0,
                 noise_sigma: float = 0.0, offset: np.ndarray | None = None,
                 clamp: tuple[float, float] | None = None):
        col_ranges = np.ascontiguousarray(col_ranges, np.int64)
        nb = len(col_ranges)
        if colscale.dtype != np.float32 or colscale.ndim != 2 or colscale.shape[0] != nb or \
                not colscale.flags.c_contiguous:
            raise ValueError(f"adc_rows_into: colscale must be C-contiguous float32 ({nb}, N)")
        ncols = colscale.shape[1]
        if col_ranges.shape != (nb, 2) or not _ranges_fit(col_ranges, ncols, width):
            raise ValueError("adc_rows_into: column ranges do not fit y and out")
        if bits is not None and bound is None:
            raise ValueError("adc_rows_into: a quantizing ADC needs an output bound")
        if offset is None:
            offset = _zeros_f32(ncols)
        elif offset.dtype != np.float32 or offset.shape != (ncols,):
            raise ValueError(f"adc_rows_into: offset must be float32 ({ncols},)")
        if noise_sigma < 0:
            raise ValueError("adc_rows_into: noise_sigma must be >= 0")
        lo, hi = (-np.inf, np.inf) if clamp is None else clamp
        self.nb, self.width, self.ncols = nb, int(width), ncols
        self.col_ranges, self.colscale, self.offset = col_ranges, colscale, offset
        self.noisy = noise_sigma > 0
        # the kernel's fixed arguments after (..., offset, residual, use_residual)
        self.converter = (np.float32(lo), np.float32(hi), np.float32(in_scale),
                          np.float32(np.inf if bound is None else bound), levels_of(bits),
                          np.float32(noise_sigma))

    def __call__(self, y: np.ndarray, absmax: np.ndarray, out: np.ndarray, *, key: int = 0,
                 stream: int = 0, row_start: int = 0, residual: np.ndarray | None = None,
                 counts: np.ndarray | None = None, scratch=None,
                 pixels: tuple[int, int, int, int] | None = None) -> np.ndarray:
        nb, rows, wb = y.shape
        row0, col0, span, row_pixels = (0, 0, 1, 1) if pixels is None else pixels
        if pixels is not None:
            span -= col0
            if rows and not (row0 >= 0 and 0 <= col0 and span > 0 and col0 + span <= row_pixels):
                raise ValueError(f"adc_rows_into: pixels {pixels} are not (r0, w0, w1, wo) with "
                                 f"0 <= w0 < w1 <= wo")
        last = row0 + rows - 1
        needed = (last // span) * row_pixels + col0 + last % span + 1 if rows else 0
        if (y.dtype != np.float32 or nb != self.nb or wb != self.width
                or out.dtype != np.float32 or out.ndim != 2 or out.shape[1] != self.ncols
                or out.shape[0] < needed or (pixels is None and out.shape[0] != rows)
                or not (y.flags.c_contiguous and out.flags.c_contiguous)):
            raise ValueError(f"adc_rows_into: C-contiguous float32 y ({self.nb}, P, "
                             f"{self.width}) and out (P, {self.ncols}) expected, got {y.dtype} "
                             f"{y.shape} and {out.dtype} {out.shape}")
        if absmax.dtype != np.float32 or absmax.shape != (rows, nb):
            raise ValueError(f"adc_rows_into: absmax must be float32 {(rows, nb)}")
        if residual is not None and (residual.dtype != np.float32 or residual.shape != out.shape
                                     or not residual.flags.c_contiguous):
            raise ValueError("adc_rows_into: residual must be C-contiguous float32 shaped like "
                             "out")
        if counts is None:
            counts = np.zeros(2, np.int64)
        elif counts.shape != (2,) or counts.dtype != np.int64:
            raise ValueError("adc_rows_into: counts must be int64 (2,)")
        if row_start < 0:
            raise ValueError("adc_rows_into: row_start must be >= 0")
        size = rows * nb * ((wb + 3) // 4) * 4 if self.noisy else 4
        if scratch is None:
            noise, acc = np.empty(size, np.float32), np.empty(rows * self.ncols, np.float32)
        else:
            noise, acc = scratch("adc.noise", (size,)), scratch("adc.acc", (rows * self.ncols,))
        k0, k1 = key_words(key)
        return _adc_rows_kernel(y, self.col_ranges, absmax, self.colscale, self.offset,
                                _NONE_2D if residual is None else residual, residual is not None,
                                *self.converter, k0, k1, stream, row_start, noise, acc, out,
                                counts, row0, col0, span, row_pixels)


def adc_rows_into(y: np.ndarray, col_ranges: np.ndarray, absmax: np.ndarray,
                  colscale: np.ndarray, out: np.ndarray, *, bound: float | None, bits: int | None,
                  in_scale: float = 1.0, noise_sigma: float = 0.0, key: int = 0, stream: int = 0,
                  row_start: int = 0, offset: np.ndarray | None = None,
                  residual: np.ndarray | None = None, clamp: tuple[float, float] | None = None,
                  counts: np.ndarray | None = None, scratch=None,
                  pixels: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """ADC of every conversion of a block of rows, digital sum of the row-block partial sums and
    the layer's output stage, float32 throughout, in one pass.

    ``y`` (B, P, W): the analog outputs of row block b for its columns ``col_ranges[b]`` = [c0, c1)
    of the layer (in ``y[b, :, :c1 - c0]``); times ``in_scale`` they are in normalized units. Each
    conversion gets output noise ``noise_sigma * z`` (z ~ N(0, 1), Philox counter
    ((row_start + p) B + b) ceil(W / 4) + j // 4, word j % 4, under ``key`` and ``stream``: the same
    conversion of the same row always draws the same number, however the rows are split into
    blocks or threads), is clipped to +-``bound`` (None: no clip) and rounded to the signed levels
    2^(bits-1) - 1 per side (None: no rounding), then multiplied by the input abs-max ``absmax``
    (P, B) and the per-column factor ``colscale`` (B, N) and summed over the row blocks; plus
    ``offset`` (N,), plus ``residual`` (P, N), clamped to ``clamp`` into ``out`` (P, N).
    ``counts`` (2,) int64 accumulates the conversions that clipped and that read zero.
    ``pixels`` = (r0, w0, w1, wo): the P rows are the output pixels r0 .. r0 + P - 1 of the ones
    in columns [w0, w1) of output rows of wo pixels (what one copy of a replicated layer
    computes: (image, oy, ox) flattened), and ``out`` and ``residual`` hold every pixel: each row
    goes to (and reads the residual of) its own pixel there. (:class:`AdcRows` checks the fixed
    arguments once for many calls.)"""
    if y.ndim != 3:
        raise ValueError(f"adc_rows_into: y must be (B, P, W), got {y.shape}")
    adc = AdcRows(col_ranges, colscale, width=y.shape[2], bound=bound, bits=bits,
                  in_scale=in_scale, noise_sigma=noise_sigma, offset=offset, clamp=clamp)
    return adc(y, absmax, out, key=key, stream=stream, row_start=row_start, residual=residual,
               counts=counts, scratch=scratch, pixels=pixels)


# ------------------------------------------------------------------------------------------
# One read of a layer's devices, and grouped products
# ------------------------------------------------------------------------------------------

@njit(**_FAST)
def _read_kernel(g_pos, s_pos, g_neg, s_neg, noisy, noise_scale, per_us, order, k0, k1, stream,
                 z, acc_pos, acc_neg, out):
    d_count, k, n = g_pos.shape
    n4 = (n + 3) // 4
    s = np.uint64(stream) & _LO32
    for pol in range(2):
        g_all = g_pos if pol == 0 else g_neg
        s_all = s_pos if pol == 0 else s_neg
        acc = acc_pos if pol == 0 else acc_neg
        for d in range(d_count):
            if noisy:
                base = (pol * d_count + d) * k * n4
                for i in range(k * n4):
                    g = np.uint64(base + i)
                    a, b, c, e = _philox4x32_10(g & _LO32, g >> _SHIFT32, s, np.uint64(0), k0, k1)
                    z[4 * i] = _normal_of_word(a)
                    z[4 * i + 1] = _normal_of_word(b)
                    z[4 * i + 2] = _normal_of_word(c)
                    z[4 * i + 3] = _normal_of_word(e)
            for r in range(k):
                zr = r * n4 * 4
                for j in range(n):
                    v = g_all[d, r, j]
                    if noisy:
                        t = z[zr + j] * s_all[d, r, j]
                        if noise_scale != 1.0:
                            t = t * noise_scale
                        v = t + v
                        if v < 0.0:
                            v = _f32(0.0)
                    if d == 0:
                        acc[r, j] = v
                    else:
                        acc[r, j] = acc[r, j] + v
    for r in range(k):
        src = order[r]
        for j in range(n):
            out[r, j] = (acc_pos[src, j] - acc_neg[src, j]) * per_us
    return out


def read_devices_into(pos: tuple[np.ndarray, np.ndarray], neg: tuple[np.ndarray, np.ndarray],
                      per_us: float, order: np.ndarray, out: np.ndarray, *, key: int | None,
                      stream: int = 0, noise_scale: float = 1.0) -> np.ndarray:
    """One read of a layer's devices: per polarity (drifted conductance G_d, read-noise sigma),
    each (D, K, N) float32, every device read as max(G_d + noise_scale sigma z, 0) (z ~ N(0, 1)
    from Philox counter ((polarity D + d) K + k) ceil(N / 4) + n // 4 under ``key`` and ``stream``;
    ``key=None``: no read noise), summed over the D devices of a polarity, G+ - G- times ``per_us``
    (1 / (D g_max): normalized weights) into ``out`` (K, N) with its rows in ``order`` (row r of
    ``out`` is weight row ``order[r]``)."""
    g_pos, s_pos = pos
    g_neg, s_neg = neg
    shape = g_pos.shape
    for a in (g_pos, s_pos, g_neg, s_neg):
        if a.dtype != np.float32 or a.shape != shape or not a.flags.c_contiguous:
            raise ValueError("read_devices_into: C-contiguous float32 (D, K, N) arrays expected")
    d, k, n = shape
    order = np.ascontiguousarray(order, np.int64)
    if out.dtype != np.float32 or out.shape != (k, n) or order.shape != (k,):
        raise ValueError(f"read_devices_into: out must be float32 {(k, n)} and order ({k},)")
    if k and (order.min() < 0 or order.max() >= k):
        raise ValueError("read_devices_into: order outside the rows")
    noisy = key is not None
    k0, k1 = key_words(key if noisy else 0)
    z = np.empty(k * ((n + 3) // 4) * 4 if noisy else 4, np.float32)
    acc_pos, acc_neg = np.empty((k, n), np.float32), np.empty((k, n), np.float32)
    return _read_kernel(g_pos, s_pos, g_neg, s_neg, noisy, np.float32(noise_scale),
                        np.float32(per_us), order, k0, k1, stream, z, acc_pos, acc_neg, out)


@njit(**_FAST)
def _grouped_kernel(x, r0, w, acc, out):
    rows = x.shape[0]
    taps, cg, ng, g_count = w.shape
    cb = cg * g_count
    k = x.shape[1]
    xf = x.ravel()
    wf = w.ravel()
    af = acc.ravel()
    gc = np.uint64(g_count)
    for p in range(rows):
        for i in range(np.uint64(ng) * gc):
            af[i] = 0.0
        for t in range(taps):
            for c in range(cg):
                src = np.uint64(p * k + r0 + t * cb + c)
                for j in range(ng):
                    wb = np.uint64(((t * cg + c) * ng + j) * g_count)
                    ab = np.uint64(j) * gc
                    for g in range(gc):
                        af[ab + g] += xf[src + g * np.uint64(cg)] * wf[wb + g]
        for g in range(g_count):
            for j in range(ng):
                out[p, g * ng + j] = acc[j, g]
    return out


def grouped_products_into(x: np.ndarray, r0: int, w: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Products of G whole groups held by one row block of a grouped conv: x (P, K) holds, from
    column r0, the block's patch values tap by tap with the channels of its G groups side by side
    (C/G each, :class:`archsim.layers.PatchLayout`); ``w`` (taps, C/G, N/G, G): the diagonal
    blocks (:func:`archsim.layers.matrix.grouped_weights`). out[:, g N/G + j] = sum over taps and
    the group's channels of x times w, float32, the sum over taps then channels; vectorized over
    the groups (the RESET devices off the diagonal blocks add nothing and are skipped)."""
    taps, cg, ng, g = w.shape
    if x.dtype != np.float32 or w.dtype != np.float32 or out.dtype != np.float32:
        raise TypeError("grouped_products_into: float32 arrays expected")
    if (x.ndim != 2 or out.ndim != 2 or out.shape[0] != x.shape[0] or out.shape[1] < g * ng
            or not 0 <= r0 <= x.shape[1] - taps * cg * g or not x.flags.c_contiguous
            or not w.flags.c_contiguous):
        raise ValueError(f"grouped_products_into: shapes x {x.shape}, w {w.shape}, out "
                         f"{out.shape} and first column {r0} do not fit")
    return _grouped_kernel(x, r0, w, np.empty((ng, g), np.float32), out)


# ------------------------------------------------------------------------------------------
# Training: serial kernels on one chunk of a batch (archsim.threads runs the chunks, one thread
# per core, so none of these starts threads of its own); float32 and float64 alike (gradient
# checks). Patches here are in (i, j, c) order (archsim.layers.ops.patches_hwc_into builds them);
# the weights of a training pass are permuted to match (OHWI).
# ------------------------------------------------------------------------------------------

@njit(cache=True, nogil=True)
def _col2im_hwc_kernel(cols, kernel, stride, pad, b0, b1, ho, wo, out):
    _, h, w, c = out.shape
    for b in range(b0, b1):
        out[b] = 0.0
    row = 0
    for b in range(b0, b1):
        for oy in range(ho):
            for ox in range(wo):
                col = 0
                for i in range(kernel):
                    y = oy * stride + i - pad
                    for j in range(kernel):
                        xx = ox * stride + j - pad
                        if y >= 0 and y < h and xx >= 0 and xx < w:
                            for ch in range(c):
                                out[b, y, xx, ch] += cols[row, col + ch]
                        col += c
                row += 1
    return out


def _conv_chunk_check(name, x, kernel, stride, padding, b0, b1, cols):
    n, h, w, c = x.shape
    if x.dtype != cols.dtype or x.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name}: float32 or float64 arrays of one dtype expected, got {x.dtype} "
                        f"and {cols.dtype}")
    if not 0 <= b0 < b1 <= n:
        raise ValueError(f"{name}: images [{b0}, {b1}) outside a batch of {n}")
    ho = (h + 2 * padding - kernel) // stride + 1
    wo = (w + 2 * padding - kernel) // stride + 1
    shape = ((b1 - b0) * ho * wo, kernel * kernel * c)
    if cols.shape != shape or not cols.flags.c_contiguous or not x.flags.c_contiguous:
        raise ValueError(f"{name}: C-contiguous arrays with patches of shape {shape} expected, "
                         f"got {cols.shape}")
    return ho, wo


def col2im_hwc_into(cols: np.ndarray, kernel: int, stride: int, padding: int, b0: int, b1: int,
                    out: np.ndarray) -> np.ndarray:
    """The adjoint of building (i, j, c) patches: patch gradients ((b1-b0)*ho*wo,
    kernel*kernel*C) of images ``b0 .. b1-1`` scatter-added into ``out[b0:b1]`` (N, H, W, C),
    which it overwrites (the other images are not touched). Serial."""
    _conv_chunk_check("col2im_hwc_into", out, kernel, stride, padding, b0, b1, cols)
    ho = (out.shape[1] + 2 * padding - kernel) // stride + 1
    wo = (out.shape[2] + 2 * padding - kernel) // stride + 1
    return _col2im_hwc_kernel(cols, kernel, stride, padding, b0, b1, ho, wo, out)


@njit(cache=True, nogil=True)
def _channel_sums_kernel(a, r0, r1, out):
    c = a.shape[1]
    s = np.zeros(c)
    ss = np.zeros(c)
    for r in range(r0, r1):
        for ch in range(c):
            v = np.float64(a[r, ch])
            s[ch] += v
            ss[ch] += v * v
    out[0, :] = s
    out[1, :] = ss
    return out


@njit(cache=True, nogil=True)
def _channel_affine_kernel(a, r0, r1, scale, shift, low, out):
    c = a.shape[1]
    for r in range(r0, r1):
        for ch in range(c):
            v = a[r, ch] * scale[ch] + shift[ch]
            if v <= low:         # max(v, low) as np.maximum gives it: NaN stays, -0.0 -> 0
                v = low
            out[r, ch] = v
    return out


@njit(cache=True, nogil=True)
def _relu_grad_kernel(g, y, factors, dx):
    for i in range(g.shape[0]):
        dx[i] = g[i] * (factors[1] if y[i] > 0 else factors[0])
    return dx


@njit(cache=True, nogil=True)
def _relu_grad_sum_kernel(g1, g2, y, factors, dx):
    for i in range(g1.shape[0]):
        dx[i] = (g1[i] + g2[i]) * (factors[1] if y[i] > 0 else factors[0])
    return dx


@njit(cache=True, nogil=True)
def _bn_grad_sums_kernel(g, a, mean, inv_std, r0, r1, out):
    c = a.shape[1]
    sg = np.zeros(c)
    sgx = np.zeros(c)
    for r in range(r0, r1):
        for ch in range(c):
            gv = np.float64(g[r, ch])
            sg[ch] += gv
            sgx[ch] += gv * ((np.float64(a[r, ch]) - mean[ch]) * inv_std[ch])
    out[0, :] = sg
    out[1, :] = sgx
    return out


@njit(cache=True, nogil=True)
def _bn_grad_input_kernel(g, a, mean, k_g, k_0, k_x, r0, r1, out):
    c = a.shape[1]
    for r in range(r0, r1):
        for ch in range(c):
            out[r, ch] = g[r, ch] * k_g[ch] - k_0[ch] - (a[r, ch] - mean[ch]) * k_x[ch]
    return out


def _rows_check(name, arrays, r0, r1, c):
    dtype = arrays[0].dtype
    for arr in arrays:
        if arr.dtype != dtype or dtype not in (np.float32, np.float64):
            raise TypeError(f"{name}: float32 or float64 arrays of one dtype expected")
        if arr.ndim != 2 or arr.shape != arrays[0].shape or not arr.flags.c_contiguous:
            raise ValueError(f"{name}: C-contiguous (rows, channels) arrays of one shape expected")
    if not 0 <= r0 <= r1 <= arrays[0].shape[0] or arrays[0].shape[1] != c:
        raise ValueError(f"{name}: rows [{r0}, {r1}) or {c} channels do not fit "
                         f"{arrays[0].shape}")


def _per_channel(values, c, dtype=np.float64):
    arr = np.ascontiguousarray(values, dtype)
    if arr.shape != (c,):
        raise ValueError(f"per-channel values of shape ({c},) expected, got {arr.shape}")
    return arr


def channel_sums_into(a: np.ndarray, r0: int, r1: int, out: np.ndarray) -> np.ndarray:
    """Per-channel sum and sum of squares of rows ``r0 .. r1-1`` of ``a`` (rows, C), accumulated
    in float64, into ``out`` (2, C) float64: the partial batch statistics of one chunk."""
    _rows_check("channel_sums_into", [a], r0, r1, a.shape[1])
    if out.shape != (2, a.shape[1]) or out.dtype != np.float64:
        raise ValueError(f"channel_sums_into: out must be float64 (2, {a.shape[1]})")
    return _channel_sums_kernel(a, r0, r1, out)


def channel_affine_into(a: np.ndarray, r0: int, r1: int, scale: np.ndarray, shift: np.ndarray,
                        out: np.ndarray, low: float | None = None) -> np.ndarray:
    """``out[r] = a[r] * scale + shift`` for rows ``r0 .. r1-1`` (per-channel scale and shift in
    the dtype of ``a``): BatchNorm's forward with its statistics folded in; ``low``: then
    ``max(out, low)`` as np.maximum computes it (0: the ReLU after it, in the same pass)."""
    c = a.shape[1]
    _rows_check("channel_affine_into", [a, out], r0, r1, c)
    return _channel_affine_kernel(a, r0, r1, _per_channel(scale, c, a.dtype),
                                  _per_channel(shift, c, a.dtype),
                                  a.dtype.type(-np.inf if low is None else low), out)


def relu_grad_into(g: np.ndarray, y: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """ReLU's input gradient from its output ``y``: ``dx = g * (y > 0)`` in one pass, the bits of
    numpy's product with the boolean mask (g * 1 or g * 0: NaN and the sign of zero kept).
    1-D arrays of one float dtype."""
    if (g.dtype != y.dtype or g.dtype != dx.dtype or g.dtype not in (np.float32, np.float64)
            or g.ndim != 1 or g.shape != y.shape or g.shape != dx.shape):
        raise ValueError("relu_grad_into: 1-D float32 or float64 arrays of one shape expected")
    return _relu_grad_kernel(g, y, np.array([0, 1], g.dtype), dx)


def relu_grad_sum_into(g1: np.ndarray, g2: np.ndarray, y: np.ndarray, dx: np.ndarray
                       ) -> np.ndarray:
    """:func:`relu_grad_into` of the sum of two gradients, in one pass: ``dx = (g1 + g2) * (y >
    0)``, the bits of numpy's sum and then its product with the mask. 1-D arrays of one float
    dtype; ``dx`` may be ``g1`` or ``g2``."""
    if (len({g1.dtype, g2.dtype, y.dtype, dx.dtype}) != 1 or g1.dtype not in (np.float32, np.float64)
            or g1.ndim != 1 or not g1.shape == g2.shape == y.shape == dx.shape):
        raise ValueError("relu_grad_sum_into: 1-D float32 or float64 arrays of one shape expected")
    return _relu_grad_sum_kernel(g1, g2, y, np.array([0, 1], g1.dtype), dx)


def batchnorm_grad_sums_into(g: np.ndarray, a: np.ndarray, mean: np.ndarray, inv_std: np.ndarray,
                             r0: int, r1: int, out: np.ndarray) -> np.ndarray:
    """Per-channel sum of ``g`` and of ``g * xhat`` with ``xhat = (a - mean) * inv_std``, rows
    ``r0 .. r1-1``, accumulated in float64 into ``out`` (2, C): BatchNorm's bias and weight
    gradients (partial, one chunk)."""
    c = a.shape[1]
    _rows_check("batchnorm_grad_sums_into", [g, a], r0, r1, c)
    if out.shape != (2, c) or out.dtype != np.float64:
        raise ValueError(f"batchnorm_grad_sums_into: out must be float64 (2, {c})")
    return _bn_grad_sums_kernel(g, a, _per_channel(mean, c), _per_channel(inv_std, c), r0, r1,
                                out)


def batchnorm_grad_input_into(g: np.ndarray, a: np.ndarray, mean: np.ndarray, k_g: np.ndarray,
                              k_0: np.ndarray, k_x: np.ndarray, r0: int, r1: int,
                              out: np.ndarray) -> np.ndarray:
    """``out[r] = g[r] * k_g - k_0 - (a[r] - mean) * k_x`` for rows ``r0 .. r1-1`` (per-channel
    factors in the dtype of ``a``): the input gradient of a train-mode BatchNorm in one pass."""
    c = a.shape[1]
    _rows_check("batchnorm_grad_input_into", [g, a, out], r0, r1, c)
    dt = a.dtype
    return _bn_grad_input_kernel(g, a, _per_channel(mean, c, dt), _per_channel(k_g, c, dt),
                                 _per_channel(k_0, c, dt), _per_channel(k_x, c, dt), r0, r1, out)
