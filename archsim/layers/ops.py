"""Reference operators (numpy, batched, NHWC): im2col in (c, i, j) order - the numba kernel for
square convs, plain numpy for any kernel, strides, pads and dilations - its adjoint, pooling, the
option-A shortcut and BatchNorm as a per-channel affine."""

from __future__ import annotations

import functools
from typing import Mapping

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .base import Workspace


def im2col(x: np.ndarray, kernel: int, stride: int, padding: int,
           workspace: Workspace | None = None) -> np.ndarray:
    """(N, H, W, C) -> (N*Ho*Wo, C*kernel*kernel) patches in (c, i, j) order - the order of an
    OIHW kernel flattened - for a square kernel, one stride and one padding on all sides (the numba
    kernel). With a workspace the result lives in its buffer (valid until the next call with the
    same shape)."""
    from ..kernels import im2col_into
    n, h, w, c = x.shape
    ho = (h + 2 * padding - kernel) // stride + 1
    wo = (w + 2 * padding - kernel) // stride + 1
    shape = (n * ho * wo, c * kernel * kernel)
    out = workspace.get("im2col", shape) if workspace is not None else np.empty(shape, np.float32)
    return im2col_into(np.asarray(x, np.float32), kernel, stride, padding, ho, wo, out)


def im2col_general(x: np.ndarray, kernel: tuple[int, int], strides: tuple[int, int],
                   pads: tuple[int, int, int, int], dilations: tuple[int, int], ho: int, wo: int
                   ) -> np.ndarray:
    """Patches for any kernel, strides, (top, left, bottom, right) pads and dilations, (c, i, j)
    order, in the dtype of ``x`` (plain numpy)."""
    (kh, kw), (sh, sw), (pt, pl, pb, pr), (dh, dw) = kernel, strides, pads, dilations
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    n, _, _, c = x.shape
    cols = np.empty((n, ho, wo, c, kh, kw), x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[..., i, j] = xp[:, i * dh:i * dh + sh * (ho - 1) + 1:sh,
                                 j * dw:j * dw + sw * (wo - 1) + 1:sw, :]
    return cols.reshape(n * ho * wo, c * kh * kw)


def col2im_general(cols: np.ndarray, in_shape: tuple[int, ...], kernel, strides, pads, dilations,
                   ho: int, wo: int) -> np.ndarray:
    """The adjoint of :func:`im2col_general`: patch gradients scatter-added back to (N, H, W, C)."""
    (kh, kw), (sh, sw), (pt, pl, pb, pr), (dh, dw) = kernel, strides, pads, dilations
    n, h, w, c = in_shape
    patches = cols.reshape(n, ho, wo, c, kh, kw)
    xp = np.zeros((n, h + pt + pb, w + pl + pr, c), cols.dtype)
    for i in range(kh):
        for j in range(kw):
            xp[:, i * dh:i * dh + sh * (ho - 1) + 1:sh,
               j * dw:j * dw + sw * (wo - 1) + 1:sw, :] += patches[..., i, j]
    return xp[:, pt:pt + h, pl:pl + w, :]


def pool(x: np.ndarray, kernel: int, stride: int, op: str) -> np.ndarray:
    """Square max or mean pooling without padding (float32 mean)."""
    windows = sliding_window_view(x, (kernel, kernel), axis=(1, 2))[:, ::stride, ::stride]
    return windows.max(axis=(-2, -1)) if op == "max" else windows.mean(axis=(-2, -1), dtype=np.float32)


def shortcut_a(x: np.ndarray, out_channels: int) -> np.ndarray:
    """Option-A shortcut: every second row and column, zero channels padded equally both sides."""
    pad = (out_channels - x.shape[3]) // 2
    return np.pad(x[:, ::2, ::2, :], ((0, 0), (0, 0), (0, 0), (pad, pad)))


def batchnorm_affine(params: Mapping[str, np.ndarray], name: str, eps: float,
                     mean: np.ndarray | None = None, var: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """BatchNorm as the per-channel affine y = x * scale + offset (float32), from the running
    statistics in ``params`` or from the given ``mean`` and ``var`` (e.g. re-estimated ones)."""
    mean = params[f"{name}.running_mean"] if mean is None else mean
    var = params[f"{name}.running_var"] if var is None else var
    scale = params[f"{name}.weight"] / np.sqrt(var + eps)
    offset = params[f"{name}.bias"] - mean * scale
    return scale.astype(np.float32), offset.astype(np.float32)


def patches_hwc_into(x: np.ndarray, kernel: int, stride: int, padding: int, padded: np.ndarray,
                     out: np.ndarray) -> np.ndarray:
    """Patches of an NHWC batch ``x`` into ``out`` (N*ho*wo, kernel*kernel*C) in (i, j, c) order -
    the order of an OHWI kernel flattened - zeros off the edge, for a square kernel, one stride
    and one padding on all sides (training's patch builder). float32: straight from ``x`` by the
    inference passes' kernel (:func:`archsim.kernels.patches_into` with the tap-major layout, in
    which each kernel row's kernel*C values are one copy; 25-40% faster than the copies below).
    Otherwise ``padded`` (N, H+2p, W+2p, C) is scratch for the zero-padded batch, and the whole
    matrix is ``kernel`` strided copies out of it."""
    n, h, w, c = x.shape
    p = padding
    ho = (h + 2 * p - kernel) // stride + 1
    wo = (w + 2 * p - kernel) // stride + 1
    if padded.shape != (n, h + 2 * p, w + 2 * p, c) or out.shape != (n * ho * wo,
                                                                        kernel * kernel * c):
        raise ValueError(f"patches_hwc_into: scratch {padded.shape} or out {out.shape} do not fit "
                         f"input {x.shape}, kernel {kernel}, stride {stride}, padding {p}")
    if (x.dtype == np.float32 and out.dtype == np.float32 and x.flags.c_contiguous
            and out.flags.c_contiguous):
        from ..kernels import conv_geometry, patches_into
        geom = conv_geometry((kernel, kernel), (stride, stride), (p, p, p, p), (1, 1), ho, wo)
        return patches_into(x, geom, 0, n * ho * wo,
                            patch_layout(c, kernel * kernel, None, kernel).runs, out)
    if p:
        padded[:, :p] = 0
        padded[:, h + p:] = 0
        padded[:, p:h + p, :p] = 0
        padded[:, p:h + p, w + p:] = 0
    padded[:, p:h + p, p:w + p] = x
    if not padded.flags.c_contiguous:
        raise ValueError("patches_hwc_into: the scratch must be C-contiguous")
    sb, sy, sx, sc = padded.strides
    rows = out.reshape(n, ho, wo, kernel, kernel * c)
    for i in range(kernel):
        # kernel row i of every patch: a window of kernel*C contiguous values per output pixel
        # (np.ndarray over the scratch's buffer: as_strided's checks cost more than the copy here)
        rows[:, :, :, i, :] = np.ndarray((n, ho, wo, kernel * c), padded.dtype, padded,
                                         offset=i * sy, strides=(sb, sy * stride, sx * stride, sc))
    return out


@functools.lru_cache(maxsize=1024)
def patch_layout(channels: int, taps: int,
                 row_bounds: tuple[tuple[int, int], ...] | None = None,
                 kernel_width: int = 1) -> "PatchLayout":
    """The (cached) :class:`PatchLayout` of a conv input; ``row_bounds`` a tuple of pairs."""
    return PatchLayout(channels, taps, row_bounds, kernel_width)


class PatchLayout:
    """Where each value of a conv patch sits in the patch rows of the fast kernels
    (:func:`archsim.kernels.patches_into`), for a layer of ``channels`` inputs and ``taps`` kernel
    positions whose natural (c, i, j) patch order is cut into row blocks ``row_bounds`` (the
    crossbar arrays' rows; None: one block).

    Within each row block the values go tap by tap, each tap's channels (those of the block)
    contiguous: the kernel copies whole channel vectors instead of scattering every value (3-5x
    faster), and every row block keeps its own set of values in one contiguous range - the
    arrays hold the same weights in their rows, in another order. (A grouped conv's block of
    whole groups then holds, per tap, the channels of all its groups side by side: its products
    vectorize over the groups, see :func:`archsim.kernels.grouped_products_into`.)

    - ``runs`` (R, 5) int64: (tap, first channel, end channel, first column, taps) per copy:
      ``taps`` > 1 when the run covers that many neighbouring taps of one kernel row with all
      the channels (``kernel_width``: taps per kernel row), one contiguous stretch of an NHWC
      input row copied at once;
    - ``order`` (K,): the natural index c * taps + t of each column (weights: ``w[order]``);
    - ``bounds`` (B, 2): the row blocks as column ranges of this layout;
    - ``block_channels`` (B, 2): the channels of each row block when it holds all the taps of
      one channel range and nothing else (-1 where it does not)."""

    def __init__(self, channels: int, taps: int, row_bounds=None, kernel_width: int = 1):
        k = channels * taps
        row_bounds = [(0, k)] if row_bounds is None else [tuple(map(int, b)) for b in row_bounds]
        runs, order, bounds = [], [], []
        block_channels = np.full((len(row_bounds), 2), -1, np.int64)
        pos = 0
        for bi, (r0, r1) in enumerate(row_bounds):
            start = pos
            spans = set()
            for t in range(taps):
                # channels c with r0 <= c * taps + t < r1
                c_lo = max(0, -((t - r0) // taps))
                c_hi = min(channels, (r1 - 1 - t) // taps + 1) if r1 - 1 - t >= 0 else 0
                if c_hi <= c_lo:
                    spans.add(None)
                    continue
                spans.add((c_lo, c_hi))
                last = runs[-1] if runs and runs[-1][3] + runs[-1][4] * (
                    runs[-1][2] - runs[-1][1]) == pos else None
                if (last is not None and c_lo == 0 and c_hi == channels and last[1] == 0
                        and last[2] == channels and t == last[0] + last[4]
                        and t // kernel_width == last[0] // kernel_width):
                    runs[-1] = last[:4] + (last[4] + 1,)
                else:
                    runs.append((t, c_lo, c_hi, pos, 1))
                order.extend(c * taps + t for c in range(c_lo, c_hi))
                pos += c_hi - c_lo
            if len(spans) == 1 and None not in spans:
                block_channels[bi] = spans.pop()
            bounds.append((start, pos))
        if pos != k or sorted(order) != list(range(k)):
            raise ValueError(f"row bounds {row_bounds} do not partition the {k} patch values")
        self.runs = np.array(runs, np.int64).reshape(-1, 5)
        self.order = np.array(order, np.int64)
        self.bounds = np.array(bounds, np.int64).reshape(-1, 2)
        self.block_channels = block_channels
        self.taps = taps
        self.identity = bool(np.array_equal(self.order, np.arange(k)))
