"""Tensor plumbing kinds: add, mul, concat, flatten, pad, slice and the option-A shortcut."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import numpy as np

from ..threads import element_chunks
from .base import Layer, LayerError, ParamSpec, _unbroadcast
from .ops import shortcut_a


@dataclass(frozen=True)
class Binary(Layer):
    """Two activations, or one activation and a constant parameter ``constant`` of shape
    ``constant_shape`` (internal layout, broadcast over the activation)."""
    constant_shape: tuple[int, ...] | None = None

    max_inputs: ClassVar[int | None] = 2
    constant_init: ClassVar[str] = "zeros"

    @classmethod
    def normalize(cls, attrs):
        out = dict(attrs)
        if out.get("constant_shape") is not None:
            out["constant_shape"] = tuple(int(v) for v in out["constant_shape"])
        return out

    def _operands(self, xs, run):
        if self.constant_shape is not None:
            return xs[0], run.param(self, "constant")
        return xs[0], xs[1]

    def param_specs(self, in_shapes):
        if self.constant_shape is None:
            return []
        return [ParamSpec("constant", self.constant_shape, False, self.constant_init)]

    def _check_constant(self, in_shapes):
        if self.constant_shape is None:
            if len(in_shapes) != 2:
                raise LayerError(f"{self.kind} needs two inputs or a constant")
            return None
        if len(in_shapes) != 1:
            raise LayerError(f"{self.kind} with a constant takes one input")
        try:
            full = np.broadcast_shapes(tuple(in_shapes[0]), self.constant_shape)
        except ValueError:
            full = None
        if full != tuple(in_shapes[0]):
            raise LayerError(f"constant of shape {self.constant_shape} does not broadcast to "
                             f"the input {tuple(in_shapes[0])}")
        return tuple(in_shapes[0])

    @classmethod
    def _onnx_operands(cls, node, fold: Callable[[np.ndarray], np.ndarray]):
        """(inputs, constant or None): one activation and a constant (in either order for
        commutative ops), or two activations."""
        consts = [i for i in (0, 1) if node.is_constant(i)]
        if not consts:
            return (node.activation(0), node.activation(1)), None
        c = consts[0]
        if c == 0 and not cls.commutative_onnx(node.op):
            node.unsupported(f"a constant first operand of {node.op}")
        x = 1 - c
        value = fold(node.constant(c, "constant"))
        return (node.activation(x),), node.to_internal(value, x)

    @classmethod
    def commutative_onnx(cls, op: str) -> bool:
        return op in ("Add", "Mul")

    @classmethod
    def _from_onnx(cls, node, fold):
        inputs, const = cls._onnx_operands(node, fold)
        layer = cls(node.name, inputs,
                    constant_shape=None if const is None else const.shape)
        if const is not None:
            node.param("constant", 0 if node.is_constant(0) else 1, const)
        return layer


@dataclass(frozen=True)
class Add(Binary):
    """Elementwise sum of two activations of one shape (residual), or activation + constant
    (ONNX Sub by a constant adds its negation)."""
    kind: ClassVar[str] = "add"
    onnx_ops: ClassVar[tuple[str, ...]] = ("Add", "Sub")

    def infer(self, in_shapes):
        out = self._check_constant(in_shapes)
        if out is not None:
            return out
        if in_shapes[0] != in_shapes[1]:
            raise LayerError(f"add needs two inputs of one shape, got {list(in_shapes)}")
        return tuple(in_shapes[0])

    def forward(self, xs, run):
        a, b = self._operands(xs, run)
        if run.tape is not None and a.shape == b.shape and a.dtype == b.dtype:
            out = run.workspace.get("add-out/" + self.name, a.shape, a.dtype)
            a1, b1, out1 = (np.ascontiguousarray(a).reshape(-1), np.ascontiguousarray(b).reshape(-1),
                            out.reshape(-1))
            parts = element_chunks(out1)            # in chunks on the pass's workers
            relu = self.name in run.relu_after      # the ReLU after it, on the chunk in cache

            def one(i, worker):
                sl = parts[i]
                np.add(a1[sl], b1[sl], out=out1[sl])
                if relu:
                    np.maximum(out1[sl], 0, out=out1[sl])

            run.run_chunks(one, len(parts))
            if relu:
                run.tape.clamped.add(self.name)
            return out
        return a + b

    def epilogue_part(self, producer):
        if self.constant_shape is not None or self.inputs[0] == self.inputs[1]:
            return None
        return {"residual": self.inputs[1] if self.inputs[0] == producer else self.inputs[0]}

    def backward(self, g, saved, need, run):
        return ([g] if self.constant_shape is not None else [g, g]), {}

    @classmethod
    def from_onnx(cls, node):
        return cls._from_onnx(node, (lambda c: -c) if node.op == "Sub" else (lambda c: c))


@dataclass(frozen=True)
class Mul(Binary):
    """Elementwise product: activation times a broadcast constant (ONNX Div by a constant
    multiplies by its reciprocal), or of two activations where one broadcasts over the other
    (e.g. a squeeze-excitation scale of shape (1, 1, C))."""
    kind: ClassVar[str] = "mul"
    onnx_ops: ClassVar[tuple[str, ...]] = ("Mul", "Div")
    constant_init: ClassVar[str] = "ones"

    def infer(self, in_shapes):
        out = self._check_constant(in_shapes)
        if out is not None:
            return out
        try:
            return tuple(np.broadcast_shapes(tuple(in_shapes[0]), tuple(in_shapes[1])))
        except ValueError:
            raise LayerError(f"mul inputs {list(in_shapes)} do not broadcast") from None

    def forward(self, xs, run):
        a, b = self._operands(xs, run)
        if run.tape is not None:
            run.tape.saved[self.name] = (a, b)
        return a * b

    def backward(self, g, saved, need, run):
        a, b = saved
        da = _unbroadcast(g * b, a.shape) if need[0] else None
        if self.constant_shape is not None:
            return [da], {}
        db = _unbroadcast(g * a, b.shape) if need[1] else None
        return [da, db], {}

    @classmethod
    def from_onnx(cls, node):
        return cls._from_onnx(node, (lambda c: np.float32(1) / c) if node.op == "Div"
                              else (lambda c: c))


@dataclass(frozen=True)
class Concat(Layer):
    """Concatenation on the last axis (channels, or features)."""
    kind: ClassVar[str] = "concat"
    onnx_ops: ClassVar[tuple[str, ...]] = ("Concat",)
    max_inputs: ClassVar[int | None] = None

    def infer(self, in_shapes):
        first = tuple(in_shapes[0])
        if any(tuple(s[:-1]) != first[:-1] or len(s) != len(first) for s in in_shapes):
            raise LayerError(f"concat needs inputs that differ in the last axis only, got "
                             f"{[tuple(s) for s in in_shapes]}")
        return first[:-1] + (sum(s[-1] for s in in_shapes),)

    def forward(self, xs, run):
        if run.tape is not None:
            run.tape.saved[self.name] = ([x.shape[-1] for x in xs],)
        return np.concatenate(xs, axis=-1)

    def backward(self, g, saved, need, run):
        edges = np.cumsum(saved[0])[:-1]
        return list(np.split(g, edges, axis=-1)), {}

    def vector_ops(self, in_shapes, out_shape, row_values):
        return 0                                # data movement only

    @classmethod
    def from_onnx(cls, node):
        rank = node.rank(0)
        axis = node.attrs.get("axis")
        if node.axis(axis, rank) != (2 if rank == 4 else 0):
            node.unsupported(f"Concat on axis {axis} (supported: 1, the channels)")
        return cls(node.name, tuple(node.activation(i) for i in range(node.num_inputs)))


@dataclass(frozen=True)
class Flatten(Layer):
    """(H, W, C) -> (C*H*W,) in PyTorch's (C, H, W) order, so weights trained there fit. Imports
    ONNX Flatten (axis 1), Reshape to (N, -1) and Squeeze of a (N, C, 1, 1) tensor's 1x1 axes."""
    kind: ClassVar[str] = "flatten"
    onnx_ops: ClassVar[tuple[str, ...]] = ("Flatten", "Reshape", "Squeeze")
    timing: ClassVar[str] = "fused"          # an addressing pattern of the producer's write

    def infer(self, in_shapes):
        return (int(np.prod(in_shapes[0])),)

    def forward(self, xs, run):
        a = xs[0]
        if run.tape is not None:
            run.tape.saved[self.name] = (a.shape,)
        return a.transpose(0, 3, 1, 2).reshape(a.shape[0], -1) if a.ndim == 4 else a

    def backward(self, g, saved, need, run):
        shape = saved[0]
        dx = (g.reshape(shape[0], shape[3], shape[1], shape[2]).transpose(0, 2, 3, 1)
              if len(shape) == 4 else g)
        return [dx], {}

    def input_row_needed(self, r, in_index, in_shape):
        return None

    @classmethod
    def from_onnx(cls, node):
        rank = node.rank(0)
        shape = node.shape(0)
        size = int(np.prod(shape))
        if node.op == "Flatten":
            if node.attrs.get("axis", 1) != 1:
                node.unsupported(f"Flatten axis {node.attrs['axis']} (supported: 1)")
        elif node.op == "Squeeze":
            if node.has_input(1):
                axes = node.constant(1, "axes").reshape(-1).tolist()
                internal = sorted(node.axis(a, rank) for a in axes)
            else:                                   # every axis of size 1
                axes, internal = "of size 1", [i for i, d in enumerate(shape) if d == 1]
            if rank != 4 or internal != [0, 1] or shape[:2] != (1, 1):
                node.unsupported(f"Squeeze of axes {axes} (supported: the 1x1 spatial axes 2, 3 "
                                 "of an (N, C, 1, 1) tensor)")
        else:
            target, is_batch = node.shape_constant(1)
            allow_zero = node.attrs.get("allowzero", 0)
            ok = len(target) == 2 and (target[1] in (-1, size) or (target[0] == -1 and
                                                                  target[1] == size))
            ok = ok and (is_batch[0] or target[0] == -1 or (target[0] == 0 and not allow_zero))
            if not ok:
                node.unsupported(f"Reshape to {target.tolist()} (supported: (N, -1), the "
                                 f"batch kept and the rest flattened to {size})")
        return cls(node.name, (node.activation(0),))


@dataclass(frozen=True)
class Pad(Layer):
    """Constant padding: ``pads`` gives (before, after) per non-batch axis (H, W, C or F)."""
    pads: tuple[tuple[int, int], ...] = ()
    value: float = 0.0

    kind: ClassVar[str] = "pad"
    onnx_ops: ClassVar[tuple[str, ...]] = ("Pad",)

    @classmethod
    def normalize(cls, attrs):
        out = dict(attrs)
        if "pads" in out:
            out["pads"] = tuple((int(a), int(b)) for a, b in out["pads"])
        return out

    def check(self):
        return None if all(min(p) >= 0 for p in self.pads) else "pads must not be negative"

    def infer(self, in_shapes):
        x = tuple(in_shapes[0])
        if len(self.pads) != len(x):
            raise LayerError(f"pads {self.pads} do not fit an input of shape {x}")
        return tuple(d + a + b for d, (a, b) in zip(x, self.pads))

    def forward(self, xs, run):
        a = xs[0]
        return np.pad(a, ((0, 0),) + self.pads, constant_values=a.dtype.type(self.value))

    def backward(self, g, saved, need, run):
        index = (slice(None),) + tuple(slice(a, g.shape[i + 1] - b)
                                       for i, (a, b) in enumerate(self.pads))
        return [g[index]], {}

    def vector_ops(self, in_shapes, out_shape, row_values):
        return 0                                # zeros written with the data

    def input_row_needed(self, r, in_index, in_shape):
        return r - self.pads[0][0]

    @classmethod
    def from_onnx(cls, node):
        mode = node.attrs.get("mode", "constant")
        if mode != "constant":
            node.unsupported(f"mode {mode!r} (supported: 'constant')")
        rank = node.rank(0)
        onnx_pads = node.constant(1, "pads").reshape(-1).astype(np.int64)
        axes = (node.constant(3, "axes").reshape(-1).tolist() if node.has_input(3)
                else list(range(rank)))
        if len(onnx_pads) != 2 * len(axes):
            node.unsupported(f"pads {onnx_pads.tolist()} do not fit axes {axes}")
        value = node.optional_constant(2, "constant_value")
        per_axis = [[0, 0] for _ in range(len(node.shape(0)))]
        for i, ax in enumerate(axes):
            before, after = int(onnx_pads[i]), int(onnx_pads[i + len(axes)])
            internal = node.axis(ax, rank, batch_ok=before == after == 0)
            if internal is None:
                continue
            if before < 0 or after < 0:
                node.unsupported(f"negative pads {onnx_pads.tolist()} (cropping)")
            per_axis[internal] = [before, after]
        return cls(node.name, (node.activation(0),), pads=per_axis,
                   value=0.0 if value is None else float(value.reshape(())))


@dataclass(frozen=True)
class Slice(Layer):
    """Strided selection: ``slices`` gives (start, count, step) per non-batch axis (H, W, C or
    F); a negative step walks backwards from ``start``."""
    slices: tuple[tuple[int, int, int], ...] = ()

    kind: ClassVar[str] = "slice"
    onnx_ops: ClassVar[tuple[str, ...]] = ("Slice",)

    @classmethod
    def normalize(cls, attrs):
        out = dict(attrs)
        if "slices" in out:
            out["slices"] = tuple((int(a), int(b), int(c)) for a, b, c in out["slices"])
        return out

    def check(self):
        for start, count, step in self.slices:
            if step == 0 or count < 1 or start < 0:
                return f"slice (start {start}, count {count}, step {step}) is empty or invalid"
        return None

    def _index(self):
        out = [slice(None)]
        for start, count, step in self.slices:
            stop = start + count * step
            out.append(slice(start, stop if stop >= 0 else None, step))
        return tuple(out)

    def infer(self, in_shapes):
        x = tuple(in_shapes[0])
        if len(self.slices) != len(x):
            raise LayerError(f"slices {self.slices} do not fit an input of shape {x}")
        for d, (start, count, step) in zip(x, self.slices):
            last = start + (count - 1) * step
            if not (0 <= start < d and 0 <= last < d):
                raise LayerError(f"slice (start {start}, count {count}, step {step}) leaves an "
                                 f"axis of size {d}")
        return tuple(count for _, count, _ in self.slices)

    def forward(self, xs, run):
        a = xs[0]
        if run.tape is not None:
            run.tape.saved[self.name] = (a.shape,)
        return a[self._index()]

    def backward(self, g, saved, need, run):
        dx = np.zeros(saved[0], g.dtype)
        dx[self._index()] = g
        return [dx], {}

    def vector_ops(self, in_shapes, out_shape, row_values):
        return 0                                # a strided selection

    def input_row_needed(self, r, in_index, in_shape):
        start, _, step = self.slices[0]
        return start + r * step if step > 0 else start

    @classmethod
    def from_onnx(cls, node):
        rank = node.rank(0)
        shape = node.shape(0)
        starts = node.constant(1, "starts").reshape(-1).tolist()
        ends = node.constant(2, "ends").reshape(-1).tolist()
        axes = (node.constant(3, "axes").reshape(-1).tolist() if node.has_input(3)
                else list(range(len(starts))))
        steps = (node.constant(4, "steps").reshape(-1).tolist() if node.has_input(4)
                 else [1] * len(starts))
        slices = [[0, d, 1] for d in shape]
        for start, end, ax, step in zip(starts, ends, axes, steps):
            if step == 0:
                node.unsupported("a slice step of 0")
            full = start in (0,) and end >= 2 ** 31 - 1 and step == 1
            internal = node.axis(ax, rank, batch_ok=full)
            if internal is None:
                continue
            dim = shape[internal]
            # ONNX slice semantics = Python's: negative indices count from the end, clamped
            idx = range(*slice(int(start), int(end), int(step)).indices(dim))
            if len(idx) == 0:
                node.unsupported(f"an empty slice of axis {ax}")
            slices[internal] = [idx[0], len(idx), int(step)]
        return cls(node.name, (node.activation(0),), slices=slices)


@dataclass(frozen=True)
class ShortcutA(Layer):
    """The parameter-free option-A shortcut of CIFAR ResNets: every second row and column, zero
    channels padded equally both sides up to ``out_channels``."""
    out_channels: int = 0

    kind: ClassVar[str] = "shortcut_a"

    def infer(self, in_shapes):
        x = in_shapes[0]
        self._need_spatial(x)
        h, w, c = x
        if (self.out_channels - c) % 2 or self.out_channels < c:
            raise LayerError(f"cannot pad {c} channels to {self.out_channels}")
        return (h + 1) // 2, (w + 1) // 2, self.out_channels

    def forward(self, xs, run):
        a = xs[0]
        if run.tape is not None:
            run.tape.saved[self.name] = (a.shape,)
        return shortcut_a(a, self.out_channels)

    def backward(self, g, saved, need, run):
        shape = saved[0]
        pad = (self.out_channels - shape[3]) // 2
        dx = np.zeros(shape, g.dtype)
        dx[:, ::2, ::2, :] = g[..., pad:pad + shape[3]]
        return [dx], {}

    def vector_ops(self, in_shapes, out_shape, row_values):
        return 0                                # a strided selection with zero channels

    def input_row_needed(self, r, in_index, in_shape):
        return 2 * r
