"""Reference operators (numpy, batched, NHWC): im2col in (c, i, j) order - the numba kernel for
square convs, plain numpy for any kernel, strides, pads and dilations - its adjoint, pooling, the
option-A shortcut and BatchNorm as a per-channel affine."""

from __future__ import annotations

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
    and one padding on all sides. ``padded`` (N, H+2p, W+2p, C) is scratch for the zero-padded
    batch. In (i, j, c) order the kernel*C values of one kernel row are contiguous in the padded
    batch, so the whole matrix is ``kernel`` strided copies (training's patch builder: about twice
    as fast as a per-pixel loop for 16-64 channels)."""
    n, h, w, c = x.shape
    p = padding
    ho = (h + 2 * p - kernel) // stride + 1
    wo = (w + 2 * p - kernel) // stride + 1
    if padded.shape != (n, h + 2 * p, w + 2 * p, c) or out.shape != (n * ho * wo,
                                                                        kernel * kernel * c):
        raise ValueError(f"patches_hwc_into: scratch {padded.shape} or out {out.shape} do not fit "
                         f"input {x.shape}, kernel {kernel}, stride {stride}, padding {p}")
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
