"""Pooling kinds: max and average pooling (any kernel, strides, pads) and global average pooling."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .base import Layer, LayerError, SquareView, _pads4, _pair
from .ops import pool


@dataclass(frozen=True)
class Pool(SquareView, Layer):
    """Max or average pooling with any kernel, strides and (top, left, bottom, right) pads."""
    kernel_shape: tuple[int, int] = (1, 1)
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)

    aliases: ClassVar[dict[str, str]] = {"kernel": "kernel_shape", "stride": "strides",
                                         "padding": "pads"}

    @classmethod
    def normalize(cls, attrs):
        out = dict(attrs)
        for key in ("kernel_shape", "strides"):
            if key in out:
                out[key] = _pair(out[key], key)
        if "pads" in out:
            out["pads"] = _pads4(out["pads"])
        return out

    def check(self):
        if min(self.kernel_shape + self.strides) < 1 or min(self.pads) < 0:
            return "kernel and strides must be positive, pads not negative"
        kh, kw = self.kernel_shape
        if max(self.pads[0], self.pads[2]) >= kh or max(self.pads[1], self.pads[3]) >= kw:
            return f"pads {self.pads} must be smaller than the kernel {self.kernel_shape}"
        return None

    @property
    def padded(self) -> bool:
        return any(self.pads)

    def out_hw(self, h, w):
        (kh, kw), (sh, sw), (pt, pl, pb, pr) = self.kernel_shape, self.strides, self.pads
        return (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1

    def infer(self, in_shapes):
        x = in_shapes[0]
        self._need_spatial(x)
        ho, wo = self.out_hw(x[0], x[1])
        if ho < 1 or wo < 1:
            raise LayerError(f"kernel {self.kernel} does not fit input {tuple(x)}")
        return ho, wo, x[2]

    def _pad(self, a, value):
        pt, pl, pb, pr = self.pads
        return np.pad(a, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=value)

    def _windows(self, a, ho, wo):
        (kh, kw), (sh, sw) = self.kernel_shape, self.strides
        return sliding_window_view(a, (kh, kw), axis=(1, 2))[:, ::sh, ::sw][:, :ho, :wo]

    def _scatter(self, part_of, g, padded_shape, in_shape):
        """Sum over kernel offsets (i, j) of ``part_of(i, j)`` placed at the windows' positions,
        cropped to the input."""
        (kh, kw), (sh, sw), (pt, pl, _, _) = self.kernel_shape, self.strides, self.pads
        ho, wo = g.shape[1], g.shape[2]
        dx = np.zeros(padded_shape, g.dtype)
        for i in range(kh):              # one vectorized scatter per kernel offset
            for j in range(kw):
                dx[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw, :] += part_of(i, j)
        return dx[:, pt:pt + in_shape[1], pl:pl + in_shape[2], :]

    def vector_ops(self, in_shapes, out_shape, row_values):
        return row_values * self.kernel_shape[0] * self.kernel_shape[1]

    def input_row_needed(self, r, in_index, in_shape):
        return r * self.strides[0] - self.pads[0] + self.kernel_shape[0] - 1

    def input_row_first(self, r, in_index, in_shape):
        return r * self.strides[0] - self.pads[0]

    @classmethod
    def onnx_geometry(cls, node) -> dict:
        node.need_rank(0, 4)
        a = node.attrs
        if a.get("ceil_mode", 0):
            node.unsupported("ceil_mode=1 (supported: 0)")
        if any(d != 1 for d in a.get("dilations", (1, 1))):
            node.unsupported(f"dilations {list(a['dilations'])} (supported: 1)")
        kernel = tuple(a["kernel_shape"])
        if len(kernel) != 2:
            node.unsupported(f"only 2-D pooling is supported (kernel_shape {list(kernel)})")
        strides = tuple(a.get("strides", (1, 1)))
        return {"kernel": kernel, "stride": strides,
                "padding": node.spatial_pads(kernel, strides, (1, 1))}


@dataclass(frozen=True)
class MaxPool(Pool):
    kind: ClassVar[str] = "maxpool"
    onnx_ops: ClassVar[tuple[str, ...]] = ("MaxPool",)

    def forward(self, xs, run):
        a = xs[0]
        if self.padded:
            a = self._pad(a, -np.inf)
        ho, wo = self.out_hw(xs[0].shape[1], xs[0].shape[2])
        if run.tape is None:
            if not self.padded and self.kernel_shape[0] == self.kernel_shape[1] and \
                    self.strides[0] == self.strides[1]:
                return pool(a, self.kernel_shape[0], self.strides[0], "max")
            return self._windows(a, ho, wo).max(axis=(-2, -1))
        win = self._windows(a, ho, wo)
        flat = win.reshape(win.shape[:4] + (win.shape[4] * win.shape[5],))
        arg = flat.argmax(axis=-1)
        run.tape.saved[self.name] = (arg, a.shape, xs[0].shape)
        return np.take_along_axis(flat, arg[..., None], axis=-1)[..., 0]

    def backward(self, g, saved, need, run):
        arg, padded_shape, in_shape = saved
        kw = self.kernel_shape[1]
        return [self._scatter(lambda i, j: g * (arg == i * kw + j), g, padded_shape, in_shape)], {}

    @classmethod
    def from_onnx(cls, node):
        if node.output_used(1):
            node.unsupported("the Indices output is not supported")
        return cls(node.name, (node.activation(0),), **cls.onnx_geometry(node))


@dataclass(frozen=True)
class AvgPool(Pool):
    """Average pooling; with pads, ``count_include_pad`` divides by the whole window (else by the
    input elements under it, the ONNX default)."""
    count_include_pad: bool = False

    kind: ClassVar[str] = "avgpool"
    onnx_ops: ClassVar[tuple[str, ...]] = ("AveragePool",)

    def _divisor(self, h, w, ho, wo, dtype):
        """(1, ho, wo, 1) elements averaged per window."""
        if not self.padded or self.count_include_pad:
            return dtype.type(self.kernel_shape[0] * self.kernel_shape[1])
        ones = self._pad(np.ones((1, h, w, 1), dtype), 0)
        return self._windows(ones, ho, wo).sum(axis=(-2, -1))

    def forward(self, xs, run):
        a = xs[0]
        n, h, w, c = a.shape
        ho, wo = self.out_hw(h, w)
        dtype = np.dtype(run.dtype) if run.tape is not None else np.dtype(np.float32)
        if not self.padded:
            if run.tape is None and self.kernel_shape[0] == self.kernel_shape[1] and \
                    self.strides[0] == self.strides[1]:
                return pool(a, self.kernel_shape[0], self.strides[0], "mean")
            out = self._windows(a, ho, wo).mean(axis=(-2, -1), dtype=dtype)
        else:
            win = self._windows(self._pad(a, 0), ho, wo)
            out = (win.sum(axis=(-2, -1), dtype=dtype) / self._divisor(h, w, ho, wo, dtype)
                   ).astype(dtype, copy=False)
        if run.tape is not None:
            run.tape.saved[self.name] = (a.shape,)
        return out

    def backward(self, g, saved, need, run):
        in_shape = saved[0]
        _, h, w, c = in_shape
        pt, pl, pb, pr = self.pads
        share = g / self._divisor(h, w, g.shape[1], g.shape[2], g.dtype)
        return [self._scatter(lambda i, j: share, g, (g.shape[0], h + pt + pb, w + pl + pr, c),
                              in_shape)], {}

    @classmethod
    def from_onnx(cls, node):
        return cls(node.name, (node.activation(0),), **cls.onnx_geometry(node),
                   count_include_pad=bool(node.attrs.get("count_include_pad", 0)))


@dataclass(frozen=True)
class GlobalAvgPool(Layer):
    """Mean over H and W: (H, W, C) -> (C,), or (1, 1, C) with ``keepdims``."""
    keepdims: bool = False

    kind: ClassVar[str] = "globalavgpool"
    onnx_ops: ClassVar[tuple[str, ...]] = ("GlobalAveragePool", "ReduceMean")
    streams_input: ClassVar[bool] = True

    def infer(self, in_shapes):
        x = in_shapes[0]
        self._need_spatial(x)
        return (1, 1, x[2]) if self.keepdims else (x[2],)

    def forward(self, xs, run):
        a = xs[0]
        out = a.mean(axis=(1, 2), dtype=run.dtype if run.tape is not None else np.float32)
        if run.tape is not None:
            run.tape.saved[self.name] = (a.shape,)
        return out[:, None, None, :] if self.keepdims else out

    def backward(self, g, saved, need, run):
        n, h, w, c = saved[0]
        g = g.reshape(n, c)
        return [np.broadcast_to((g / (h * w))[:, None, None, :], (n, h, w, c))], {}

    def vector_ops(self, in_shapes, out_shape, row_values):
        return int(math.prod(in_shapes[0]))      # one add per input element

    def input_row_needed(self, r, in_index, in_shape):
        return None

    @classmethod
    def from_onnx(cls, node):
        node.need_rank(0, 4)
        if node.op == "GlobalAveragePool":
            return cls(node.name, (node.activation(0),), keepdims=True)
        a = node.attrs
        axes = a.get("axes")
        if axes is None and node.has_input(1):
            axes = node.constant(1, "axes").reshape(-1).tolist()
        if not axes or sorted(node.axis(ax, 4) for ax in axes) != [0, 1]:
            node.unsupported(f"ReduceMean over axes {axes} (supported: the spatial axes 2, 3)")
        return cls(node.name, (node.activation(0),), keepdims=bool(a.get("keepdims", 1)))
