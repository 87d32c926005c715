"""The only numba module: pure array-in/array-out kernels. Everything above them is plain numpy.

Each kernel has a checked wrapper (shapes, dtypes, contiguity) that callers use; tests compare every
kernel with a plain-numpy twin.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

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
# Analog periphery: DAC input quantization and ADC output conversion (DESIGN.md section 4)
# ------------------------------------------------------------------------------------------

def levels_of(bits: int | None) -> int:
    """Signed levels per side of a converter, 2^(bits-1) - 1; 0 means unlimited precision."""
    return 0 if bits is None else (1 << (int(bits) - 1)) - 1


@njit(cache=True, nogil=True, inline="always")
def _abs_max(xr, r0, r1):
    """max |xr[r0:r1]| with four running maxima: one chain waits on every compare, four overlap
    (max is exact, so the order does not change the result)."""
    m0 = np.float32(0.0)
    m1 = np.float32(0.0)
    m2 = np.float32(0.0)
    m3 = np.float32(0.0)
    k = r0
    while k + 4 <= r1:
        m0 = max(m0, abs(xr[k]))
        m1 = max(m1, abs(xr[k + 1]))
        m2 = max(m2, abs(xr[k + 2]))
        m3 = max(m3, abs(xr[k + 3]))
        k += 4
    while k < r1:
        m0 = max(m0, abs(xr[k]))
        k += 1
    return max(max(m0, m1), max(m2, m3))


@njit(cache=True, nogil=True, inline="always")
def _dac_row(x, p, bounds, levels, xq, absmax):
    """DAC of row ``p`` of ``x`` into ``xq[p]`` (may be ``x`` itself), each row block on its own."""
    lv = np.float32(levels)
    xr = x[p]
    qr = xq[p]
    for b in range(bounds.shape[0]):
        r0 = bounds[b, 0]
        r1 = bounds[b, 1]
        m = _abs_max(xr, r0, r1)
        absmax[p, b] = m
        if m == 0.0:
            for k in range(r0, r1):
                qr[k] = 0.0
        elif levels > 0:
            s = lv / m
            for k in range(r0, r1):
                qr[k] = np.rint(xr[k] * s)
        else:
            for k in range(r0, r1):
                qr[k] = xr[k] / m


@njit(parallel=True, cache=True, nogil=True)
def _dac_kernel(x, bounds, levels, xq, absmax):
    for p in prange(x.shape[0]):
        _dac_row(x, p, bounds, levels, xq, absmax)
    return xq


@njit(parallel=True, cache=True, nogil=True)
def _im2col_dac_kernel(x, kernel, stride, pad, ho, wo, bounds, levels, out, absmax):
    for b in prange(x.shape[0]):
        for oy in range(ho):
            for ox in range(wo):
                row = (b * ho + oy) * wo + ox
                _patch_row(x, b, oy, ox, kernel, stride, pad, out, row)
                # the row is in cache now: its DAC, in place
                _dac_row(out, row, bounds, levels, out, absmax)
    return out


def im2col_dac_into(x: np.ndarray, kernel: int, stride: int, padding: int, ho: int, wo: int,
                    bounds: np.ndarray, bits: int | None, out: np.ndarray, absmax: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`im2col_into` and :func:`dac_quantize_into` in one pass over memory: each patch row
    is built and DAC-quantized while it is in cache. Same numbers as the two kernels in turn."""
    n, _, _, c = x.shape
    if x.dtype != np.float32 or out.dtype != np.float32 or absmax.dtype != np.float32:
        raise TypeError("im2col_dac_into: float32 arrays expected")
    k = c * kernel * kernel
    if out.shape != (n * ho * wo, k) or not out.flags.c_contiguous:
        raise ValueError(f"im2col_dac_into: out must be C-contiguous {(n * ho * wo, k)}, "
                         f"got {out.shape}")
    bounds = np.ascontiguousarray(bounds, np.int64)
    if absmax.shape != (out.shape[0], len(bounds)) or not absmax.flags.c_contiguous:
        raise ValueError(f"im2col_dac_into: absmax must be C-contiguous "
                         f"{(out.shape[0], len(bounds))}, got {absmax.shape}")
    if bounds.size and (bounds.min() < 0 or bounds.max() > k):
        raise ValueError("im2col_dac_into: row bounds outside the patch")
    _im2col_dac_kernel(np.ascontiguousarray(x), kernel, stride, padding, ho, wo, bounds,
                       levels_of(bits), out, absmax)
    return out, absmax


def dac_quantize_into(x: np.ndarray, bounds: np.ndarray, bits: int | None, xq: np.ndarray,
                      absmax: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Noise-managed DAC: each row of ``x`` (P, K), restricted to each row block [r0, r1) of
    ``bounds`` (B, 2), is divided by its abs-max m and rounded to the signed levels
    L = 2^(bits-1) - 1 per side. Writes the DAC codes rint(x * (L / m)) (integers in [-L, L], all
    float32 arithmetic) into ``xq`` (P, K) - with ``bits=None`` the unrounded x / m in [-1, 1] - and
    the abs-maxes m into ``absmax`` (P, B). ``xq`` may be ``x`` itself (in place). The normalized
    input is ``xq / L`` (see :func:`dac_code_scale`)."""
    if x.dtype != np.float32 or xq.dtype != np.float32 or absmax.dtype != np.float32:
        raise TypeError("dac_quantize_into: float32 arrays expected")
    if x.ndim != 2 or xq.shape != x.shape or absmax.shape != (x.shape[0], len(bounds)):
        raise ValueError(f"dac_quantize_into: shapes x {x.shape}, xq {xq.shape}, absmax "
                         f"{absmax.shape} do not fit {len(bounds)} row blocks")
    if not xq.flags.c_contiguous or not absmax.flags.c_contiguous:
        raise ValueError("dac_quantize_into: outputs must be C-contiguous")
    bounds = np.ascontiguousarray(bounds, np.int64)
    if bounds.size and (bounds.min() < 0 or bounds.max() > x.shape[1]):
        raise ValueError("dac_quantize_into: row bounds outside the input")
    _dac_kernel(x, bounds, levels_of(bits), xq, absmax)
    return xq, absmax


def dac_code_scale(bits: int | None) -> float:
    """Factor from DAC codes to normalized inputs in [-1, 1]: 1 / (2^(bits-1) - 1)."""
    return 1.0 if bits is None else 1.0 / levels_of(bits)


@njit(parallel=True, cache=True, nogil=True)
def _adc_kernel(y, in_scale, absmax, colscale, offset, bound, levels, noise, noise_sigma, out,
                counts):
    nb, rows, cols = y.shape
    step = bound / levels if levels > 0 else 0.0
    for p in prange(rows):
        clipped = 0
        zero = 0
        for n in range(cols):
            acc = 0.0
            for b in range(nb):
                v = np.float64(y[b, p, n]) * in_scale
                if noise_sigma > 0.0:
                    v = v + noise_sigma * np.float64(noise[b, p, n])
                if v > bound:
                    v = bound
                    clipped += 1
                elif v < -bound:
                    v = -bound
                    clipped += 1
                if levels > 0:
                    v = np.rint(v / step) * step
                if v == 0.0:
                    zero += 1
                acc = acc + v * np.float64(absmax[p, b]) * np.float64(colscale[b, n])
            out[p, n] = acc + offset[n]
        counts[p, 0] = clipped
        counts[p, 1] = zero
    return out


_NO_NOISE = np.zeros((1, 1, 1), np.float32)


def adc_accumulate_into(y: np.ndarray, absmax: np.ndarray, colscale: np.ndarray, bound: float | None,
                        bits: int | None, out: np.ndarray, noise: np.ndarray | None = None,
                        noise_sigma: float = 0.0, in_scale: float = 1.0,
                        offset: np.ndarray | None = None, counts: np.ndarray | None = None
                        ) -> np.ndarray:
    """ADC and digital accumulation of row-block partial sums.

    ``y`` (B, P, N): analog outputs of each row block; times ``in_scale`` (e.g. the DAC code scale)
    they are in normalized units (inputs and weights in [-1, 1]); optional ``noise_sigma * noise``
    (same shape) is added, then each value is clipped to +-``bound`` (None: no clip) and rounded to
    the signed levels 2^(bits-1) - 1 per side of the bound (``bits=None``: no rounding), then scaled
    back by the input abs-max ``absmax`` (P, B) and the per-column factor ``colscale`` (B, N), and
    summed over the row blocks (in float64) plus the optional per-column ``offset`` (N,) into
    ``out`` (P, N). ``colscale`` and ``offset`` together are the digital per-column affine periphery
    (GDC factor, BatchNorm scale and shift). ``counts`` (P, 2) int64, if given, receives per row
    the conversions that clipped and the conversions that read zero (B x N conversions per row)."""
    nb, rows, cols = y.shape
    if y.dtype != np.float32 or out.dtype != np.float32:
        raise TypeError("adc_accumulate_into: float32 arrays expected")
    if absmax.shape != (rows, nb) or colscale.shape != (nb, cols) or out.shape != (rows, cols):
        raise ValueError(f"adc_accumulate_into: shapes y {y.shape}, absmax {absmax.shape}, colscale "
                         f"{colscale.shape}, out {out.shape} do not fit")
    if bits is not None and bound is None:
        raise ValueError("adc_accumulate_into: a quantizing ADC needs an output bound")
    if noise_sigma > 0.0:
        if noise is None or noise.shape != y.shape or noise.dtype != np.float32:
            raise ValueError("adc_accumulate_into: noise must be float32 shaped like y")
    else:
        noise = _NO_NOISE
    offset = np.zeros(cols) if offset is None else np.ascontiguousarray(offset, np.float64)
    if offset.shape != (cols,):
        raise ValueError(f"adc_accumulate_into: offset must have shape ({cols},)")
    if counts is None:
        counts = np.empty((rows, 2), np.int64)
    elif counts.shape != (rows, 2) or counts.dtype != np.int64 or not counts.flags.c_contiguous:
        raise ValueError(f"adc_accumulate_into: counts must be C-contiguous int64 ({rows}, 2)")
    return _adc_kernel(y, float(in_scale), np.ascontiguousarray(absmax, np.float32),
                       np.ascontiguousarray(colscale, np.float32), offset,
                       np.inf if bound is None else float(bound), levels_of(bits), noise,
                       float(noise_sigma), out, counts)


# ------------------------------------------------------------------------------------------
# Training: serial kernels on one chunk of a batch (archsim.parallel runs the chunks, one thread
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
def _channel_affine_kernel(a, r0, r1, scale, shift, out):
    c = a.shape[1]
    for r in range(r0, r1):
        for ch in range(c):
            out[r, ch] = a[r, ch] * scale[ch] + shift[ch]
    return out


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
                        out: np.ndarray) -> np.ndarray:
    """``out[r] = a[r] * scale + shift`` for rows ``r0 .. r1-1`` (per-channel scale and shift in
    the dtype of ``a``): BatchNorm's forward with its statistics folded in."""
    c = a.shape[1]
    _rows_check("channel_affine_into", [a, out], r0, r1, c)
    return _channel_affine_kernel(a, r0, r1, _per_channel(scale, c, a.dtype),
                                  _per_channel(shift, c, a.dtype), out)


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
