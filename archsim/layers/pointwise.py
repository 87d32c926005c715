"""Per-element and per-channel kinds: BatchNorm and the activations."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..threads import element_chunks
from .base import Layer, ParamSpec


@dataclass(frozen=True)
class BatchNorm(Layer):
    """Batch normalization over the last (channel) axis; eval mode uses the running statistics."""
    eps: float = 1e-5

    kind: ClassVar[str] = "batchnorm"
    onnx_ops: ClassVar[tuple[str, ...]] = ("BatchNormalization",)
    timing: ClassVar[str] = "fused"         # the affine unit / systolic output stage
    has_running_stats: ClassVar[bool] = True

    def check(self):
        return None if self.eps > 0 else "eps must be positive"

    def param_specs(self, in_shapes):
        c = (in_shapes[0][-1],)
        return [ParamSpec("weight", c, True, "ones"), ParamSpec("bias", c, True, "zeros"),
                ParamSpec("running_mean", c, False, "zeros"),
                ParamSpec("running_var", c, False, "ones")]

    def forward(self, xs, run):
        a = xs[0]
        if run.tape is None:
            if run.batchnorm is not None:
                return run.batchnorm(self, a)
            scale, offset = run.batchnorm_affine(self)
            return a * scale + offset
        dtype = run.dtype
        gamma = run.param(self, "weight")
        beta = run.param(self, "bias")
        if run.batch_statistics and np.dtype(dtype) in (np.float32, np.float64):
            return self._forward_batch_stats(a, gamma, beta, run)
        axes = tuple(range(a.ndim - 1))
        if run.batch_statistics:
            count = a.size // a.shape[-1]
            mean = a.mean(axis=axes)
            var = a.var(axis=axes, mean=mean.reshape((1,) * len(axes) + (-1,)))
            run.tape.batch_stats[self.name] = (mean, var * count / max(count - 1, 1))
        else:
            mean = run.param(self, "running_mean")
            var = run.param(self, "running_var")
        inv_std = (1.0 / np.sqrt(var + self.eps)).astype(dtype)
        xhat = (a - mean) * inv_std
        run.tape.saved[self.name] = (xhat, inv_std, gamma, run.batch_statistics)
        return xhat * gamma + beta

    # ---- train mode in two passes over memory each way (fused kernels, chunks of rows) ---------
    # Forward: per-channel sums (float64) -> mean and variance -> one affine pass. The tape keeps
    # the input, not a normalized copy. Backward: the sums of g and g * xhat -> one pass for dx.

    @staticmethod
    def _row_chunks(a2):
        from ..threads import chunks
        return chunks(a2.shape[0], a2.shape[1] * a2.dtype.itemsize)

    def _forward_batch_stats(self, a, gamma, beta, run):
        from ..kernels import channel_affine_into, channel_sums_into
        dtype = np.dtype(run.dtype)
        c = a.shape[-1]
        a2 = np.ascontiguousarray(a, dtype).reshape(-1, c)
        count = a2.shape[0]
        parts = self._row_chunks(a2)
        sums = run.workspace.get("bn-sums/" + self.name, (len(parts), 2, c), np.float64)
        run.run_chunks(lambda i, w: channel_sums_into(a2, *parts[i], sums[i]), len(parts))
        total = sums.sum(axis=0)
        mean = total[0] / count
        var = np.maximum(total[1] / count - mean * mean, 0.0)
        inv_std = 1.0 / np.sqrt(var + self.eps)
        scale = gamma * inv_std.astype(dtype)
        shift = beta - mean.astype(dtype) * scale
        out = run.workspace.get("bn-out/" + self.name, a2.shape, dtype)
        # the ReLU after it, when that is its only consumer, in the same pass (Relu.forward
        # then passes the output on): one pass over the activation fewer
        low = 0.0 if self.name in run.relu_after else None
        run.run_chunks(lambda i, w: channel_affine_into(a2, *parts[i], scale, shift, out, low),
                       len(parts))
        if low is not None:
            run.tape.clamped.add(self.name)
        run.tape.batch_stats[self.name] = (mean.astype(dtype),
                                           (var * count / max(count - 1, 1)).astype(dtype))
        run.tape.saved[self.name] = ("batch", a2, mean, inv_std, gamma, a.shape)
        return out.reshape(a.shape)

    def _backward_batch_stats(self, g, saved, run):
        from ..kernels import batchnorm_grad_input_into, batchnorm_grad_sums_into
        _, a2, mean, inv_std, gamma, shape = saved
        count, c = a2.shape
        g2 = np.ascontiguousarray(g, a2.dtype).reshape(count, c)
        parts = self._row_chunks(a2)
        sums = run.workspace.get("bn-gsums/" + self.name, (len(parts), 2, c), np.float64)
        run.run_chunks(lambda i, w: batchnorm_grad_sums_into(g2, a2, mean, inv_std, *parts[i],
                                                             sums[i]), len(parts))
        sum_g, sum_gx = sums.sum(axis=0)
        k_g = gamma * inv_std
        k_0 = k_g * sum_g / count
        k_x = k_g * inv_std * sum_gx / count
        dx = run.workspace.get("bn-dx/" + self.name, a2.shape, a2.dtype)
        run.run_chunks(lambda i, w: batchnorm_grad_input_into(g2, a2, mean, k_g, k_0, k_x,
                                                              *parts[i], dx), len(parts))
        grads = {"bias": sum_g.astype(a2.dtype), "weight": sum_gx.astype(a2.dtype)}
        return [dx.reshape(shape)], grads

    def epilogue_part(self, producer):
        return {"batchnorm": self}

    def backward(self, g, saved, need, run):
        if isinstance(saved[0], str):
            return self._backward_batch_stats(g, saved, run)
        xhat, inv_std, gamma, train = saved
        axes = tuple(range(g.ndim - 1))
        grads = {"bias": g.sum(axis=axes), "weight": (g * xhat).sum(axis=axes)}
        if train:
            count = g.size // g.shape[-1]
            dxhat = g * gamma
            dx = (inv_std / count) * (count * dxhat - dxhat.sum(axis=axes)
                                      - xhat * (dxhat * xhat).sum(axis=axes))
        else:
            dx = g * (gamma * inv_std)
        return [dx.astype(g.dtype, copy=False)], grads

    @classmethod
    def from_onnx(cls, node):
        if node.attrs.get("training_mode", 0):
            node.unsupported("training_mode=1 (export the model in eval mode)")
        layer = cls(node.name, (node.activation(0),), eps=float(node.attrs.get("epsilon", 1e-5)))
        for i, role in enumerate(("weight", "bias", "running_mean", "running_var"), start=1):
            node.param(role, i, node.constant(i, role))
        return layer


@dataclass(frozen=True)
class Elementwise(Layer):
    """A one-input elementwise activation: ``fn`` and its derivative ``grad`` (from the input and
    the output)."""

    def fn(self, a: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def grad(self, a: np.ndarray, out: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def forward(self, xs, run):
        out = self.fn(xs[0])
        if run.tape is not None:
            run.tape.saved[self.name] = (self.grad(xs[0], out),)
        return out

    def backward(self, g, saved, need, run):
        return [g * saved[0]], {}

    @classmethod
    def from_onnx(cls, node):
        return cls(node.name, (node.activation(0),), **cls.onnx_attrs(node))

    @classmethod
    def onnx_attrs(cls, node) -> dict:
        return {}


@dataclass(frozen=True)
class Relu(Elementwise):
    kind: ClassVar[str] = "relu"
    onnx_ops: ClassVar[tuple[str, ...]] = ("Relu",)
    timing: ClassVar[str] = "fused"          # a sign test in the producer's output write

    def fn(self, a):
        return np.maximum(a, 0)

    def epilogue_part(self, producer):
        return {"clamp": (0.0, math.inf)}

    def grad(self, a, out):
        return out > 0

    # training: the output and the input gradient go into per-layer scratch (a fresh 8 MB array
    # per stage-1 ResNet layer and step costs more in page faults than the max itself), in chunks
    # on the pass's workers (numpy releases the GIL for each)
    def forward(self, xs, run):
        if run.tape is None:
            return self.fn(xs[0])
        if self.inputs[0] in run.tape.clamped:       # its producer applied it already
            run.tape.saved[self.name] = (xs[0],)
            return xs[0]
        a = np.ascontiguousarray(xs[0])
        out = run.workspace.get("relu-out/" + self.name, a.shape, a.dtype)
        a1, out1 = a.reshape(-1), out.reshape(-1)
        parts = element_chunks(a1)
        run.run_chunks(lambda i, w: np.maximum(a1[parts[i]], 0, out=out1[parts[i]]), len(parts))
        run.tape.saved[self.name] = (out,)
        return out

    def backward(self, g, saved, need, run):
        out = saved[0]
        g1 = np.ascontiguousarray(g, out.dtype).reshape(-1)
        out1 = out.reshape(-1)
        dx = run.workspace.get("relu-dx/" + self.name, out.shape, out.dtype)
        dx1 = dx.reshape(-1)
        parts = element_chunks(out1)
        if out.dtype in (np.float32, np.float64):
            from ..kernels import relu_grad_into
            run.run_chunks(lambda i, w: relu_grad_into(g1[parts[i]], out1[parts[i]],
                                                       dx1[parts[i]]), len(parts))
        else:
            run.run_chunks(lambda i, w: np.multiply(g1[parts[i]], out1[parts[i]] > 0,
                                                    out=dx1[parts[i]]), len(parts))
        return [dx], {}


@dataclass(frozen=True)
class Clip(Elementwise):
    """Clamp to [min, max] (ReLU6: 0, 6)."""
    min: float = -math.inf
    max: float = math.inf

    kind: ClassVar[str] = "clip"
    onnx_ops: ClassVar[tuple[str, ...]] = ("Clip",)
    timing: ClassVar[str] = "fused"          # two compares in the producer's output write

    def check(self):
        return None if self.min <= self.max else f"min {self.min} > max {self.max}"

    def fn(self, a):
        return np.clip(a, a.dtype.type(self.min), a.dtype.type(self.max))

    def epilogue_part(self, producer):
        return {"clamp": (self.min, self.max)}

    def grad(self, a, out):
        return (a > self.min) & (a < self.max)

    @classmethod
    def onnx_attrs(cls, node):
        lo = node.optional_constant(1, "min")
        hi = node.optional_constant(2, "max")
        for v, what in ((lo, "min"), (hi, "max")):
            if v is not None and v.size != 1:
                node.unsupported(f"{what} must be a scalar, got shape {v.shape}")
        return {"min": -math.inf if lo is None else float(lo.reshape(())),
                "max": math.inf if hi is None else float(hi.reshape(()))}


@dataclass(frozen=True)
class LeakyRelu(Elementwise):
    alpha: float = 0.01

    kind: ClassVar[str] = "leakyrelu"
    onnx_ops: ClassVar[tuple[str, ...]] = ("LeakyRelu",)
    timing: ClassVar[str] = "fused"

    def fn(self, a):
        return np.where(a >= 0, a, a * a.dtype.type(self.alpha))

    def grad(self, a, out):
        return np.where(a >= 0, a.dtype.type(1), a.dtype.type(self.alpha))

    @classmethod
    def onnx_attrs(cls, node):
        return {"alpha": float(node.attrs.get("alpha", 0.01))}


@dataclass(frozen=True)
class Sigmoid(Elementwise):
    kind: ClassVar[str] = "sigmoid"
    onnx_ops: ClassVar[tuple[str, ...]] = ("Sigmoid",)

    def fn(self, a):
        half = a.dtype.type(0.5)
        return half + half * np.tanh(half * a)

    def grad(self, a, out):
        return out * (1 - out)


@dataclass(frozen=True)
class Tanh(Elementwise):
    kind: ClassVar[str] = "tanh"
    onnx_ops: ClassVar[tuple[str, ...]] = ("Tanh",)

    def fn(self, a):
        return np.tanh(a)

    def grad(self, a, out):
        return 1 - out * out


@dataclass(frozen=True)
class HardSigmoid(Elementwise):
    """clip(alpha * x + beta, 0, 1)."""
    alpha: float = 0.2
    beta: float = 0.5

    kind: ClassVar[str] = "hardsigmoid"
    onnx_ops: ClassVar[tuple[str, ...]] = ("HardSigmoid",)

    def fn(self, a):
        t = a.dtype.type
        return np.clip(a * t(self.alpha) + t(self.beta), t(0), t(1))

    def grad(self, a, out):
        z = a * self.alpha + self.beta
        return np.where((z > 0) & (z < 1), a.dtype.type(self.alpha), a.dtype.type(0))

    @classmethod
    def onnx_attrs(cls, node):
        return {"alpha": float(node.attrs.get("alpha", 0.2)),
                "beta": float(node.attrs.get("beta", 0.5))}


@dataclass(frozen=True)
class HardSwish(Elementwise):
    """x * clip(x / 6 + 1/2, 0, 1)."""
    kind: ClassVar[str] = "hardswish"
    onnx_ops: ClassVar[tuple[str, ...]] = ("HardSwish",)

    def vector_ops(self, in_shapes, out_shape, row_values):
        return 2 * row_values                  # the hard sigmoid and the product

    def fn(self, a):
        t = a.dtype.type
        return a * np.clip(a / t(6) + t(0.5), t(0), t(1))

    def grad(self, a, out):
        t = a.dtype.type
        return np.where(a >= 3, t(1), np.where(a <= -3, t(0), (2 * a + 3) / t(6)))
