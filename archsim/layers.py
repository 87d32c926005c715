"""Layer kinds: one class per kind, registered by name (``conv2d``, ``batchnorm``, ...).

Each kind owns, in one place:

- its attributes, validated at construction;
- shape inference (:meth:`Layer.infer`) and its parameters (:meth:`Layer.param_specs`: names,
  shapes, how they are initialized, which are trained) and MACs;
- the forward pass (:meth:`Layer.forward`) - FP32 inference, the analog pass through the hooks of a
  :class:`Pass`, and the training forward that records a :class:`Tape` - and the training backward
  (:meth:`Layer.backward`);
- what mapping and timing need to know: whether it is a weight matrix (:class:`MatrixLayer`: its
  K x N view, groups, the patches an output pixel multiplies), else whether the hardware fuses it into
  its producer's output stage (``timing = "fused"``) or runs it as a vector operation
  (``timing = "vector"``, :meth:`Layer.vector_ops` per output row), and which input rows an output
  row needs (:meth:`Layer.input_row_needed`);
- its ONNX import (:meth:`Layer.from_onnx`, called by :mod:`archsim.onnx_import` for the ops in
  ``onnx_ops``).

Adding a kind means adding one class here (and its tests). ``Layer(name, kind, inputs, **attrs)``
builds the registered class of ``kind``; square kernels, strides and paddings may be given as ints.

Activations are NHWC float arrays (N, H, W, C), or (N, F) for features; shapes below leave out the
batch axis. A conv multiplies im2col patches of K = Cin*kh*kw values in (c, i, j) order - an OIHW
kernel flattened - by the (K, N) weight matrix. A grouped conv's matrix is block-diagonal: group g
owns rows [g*K/G, (g+1)*K/G) and columns [g*N/G, (g+1)*N/G); :mod:`archsim.mapping` places whole
groups on arrays and leaves the devices off the diagonal blocks unprogrammed (RESET, 0 conductance).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping, NamedTuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .errors import WorkloadError

INPUT = "input"


class LayerError(WorkloadError):
    """A layer's attributes or input shapes are wrong. The message names the layer; the network
    or the ONNX importer prefix where it sits."""


# ------------------------------------------------------------------------------------------
# Small helpers
# ------------------------------------------------------------------------------------------

class Workspace:
    """Reusable scratch buffers keyed by (purpose, shape): batches of one size reuse the same memory
    instead of faulting in fresh pages every call. One per thread of work; not shared."""

    def __init__(self):
        self._buffers: dict[tuple, np.ndarray] = {}

    def get(self, key: str, shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
        full = (key, tuple(shape), np.dtype(dtype).str)
        buf = self._buffers.get(full)
        if buf is None:
            buf = self._buffers[full] = np.empty(shape, dtype)
        return buf


@dataclass
class Tape:
    """What a training forward pass recorded for the backward pass."""
    saved: dict[str, tuple] = field(default_factory=dict)
    # batch statistics of every BatchNorm: (mean, unbiased variance), for the running-stat update
    batch_stats: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    input_shape: tuple[int, ...] = ()


MatmulHook = Callable[["MatrixLayer", np.ndarray], np.ndarray]
MatrixInputHook = Callable[["MatrixLayer", np.ndarray, Workspace], np.ndarray]
BatchnormHook = Callable[["BatchNorm", np.ndarray], np.ndarray]


@dataclass
class Pass:
    """One walk over the graph: the parameters, scratch memory and what varies between the FP32
    reference, the analog simulation and training.

    Inference (``tape is None``): ``matrix_input(layer, a, workspace)`` builds the 2-D input of a
    matrix layer, ``matmul(layer, cols)`` computes its (P, K) @ (K, N) product and
    ``batchnorm(layer, a)`` replaces a BatchNorm layer; each ``None`` means the FP32 default.
    Training (``tape`` given): every layer records on the tape what its backward needs,
    ``batch_statistics`` makes BatchNorm normalize with the batch's own statistics and ``weights``
    replaces weight matrices by parameter name (noise injection); ``dtype`` (float32, or float64 for
    gradient checks) is kept throughout."""
    params: Mapping[str, np.ndarray]
    workspace: Workspace = field(default_factory=Workspace)
    dtype: Any = np.float32
    matmul: MatmulHook | None = None
    matrix_input: MatrixInputHook | None = None
    batchnorm: BatchnormHook | None = None
    tape: Tape | None = None
    batch_statistics: bool = False
    weights: Mapping[str, np.ndarray] | None = None

    def param(self, layer: "Layer", role: str) -> np.ndarray:
        return np.asarray(self.params[layer.param(role)], self.dtype)


class ParamSpec(NamedTuple):
    """One parameter of a layer: its role (the name suffix), shape, whether training updates it,
    and its initial value for training from scratch (he: He-normal, ones, zeros)."""
    role: str
    shape: tuple[int, ...]
    trainable: bool = True
    init: str = "zeros"


@dataclass(frozen=True)
class MatrixView:
    """A weight-matrix layer as the arrays see it: K x N (block-diagonal with ``groups`` blocks of
    K/groups x N/groups) and ``mvms`` matrix-vector products per inference."""
    k: int
    n: int
    groups: int
    mvms: int

    @property
    def k_group(self) -> int:
        return self.k // self.groups

    @property
    def n_group(self) -> int:
        return self.n // self.groups

    @property
    def weights(self) -> int:
        """Weights actually held (the diagonal blocks)."""
        return self.k_group * self.n_group * self.groups


def _pair(value, what: str) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    value = tuple(int(v) for v in value)
    if len(value) != 2:
        raise ValueError(f"{what} must be an int or 2 ints, got {value}")
    return value


def _pads4(value) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) from an int, (vertical, horizontal) or 4 ints (ONNX order)."""
    if isinstance(value, (int, np.integer)):
        return (int(value),) * 4
    value = tuple(int(v) for v in value)
    if len(value) == 2:
        return value + value
    if len(value) != 4:
        raise ValueError(f"padding must be an int, 2 or 4 ints, got {value}")
    return value


def _square(pair):
    """An int when both entries agree (the built-in networks' square kernels), else the tuple."""
    return pair[0] if all(v == pair[0] for v in pair) else pair


def _unbroadcast(g: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum ``g`` over the axes numpy broadcast to reach its shape from ``shape``."""
    lead = g.ndim - len(shape)
    if lead:
        g = g.sum(axis=tuple(range(lead)))
    axes = tuple(i for i, d in enumerate(shape) if d == 1 and g.shape[i] != 1)
    return g.sum(axis=axes, keepdims=True) if axes else g


# ------------------------------------------------------------------------------------------
# Reference operators (numpy, batched)
# ------------------------------------------------------------------------------------------

def im2col(x: np.ndarray, kernel: int, stride: int, padding: int,
           workspace: Workspace | None = None) -> np.ndarray:
    """(N, H, W, C) -> (N*Ho*Wo, C*kernel*kernel) patches in (c, i, j) order - the order of an
    OIHW kernel flattened - for a square kernel, one stride and one padding on all sides (the numba
    kernel). With a workspace the result lives in its buffer (valid until the next call with the
    same shape)."""
    from .kernels import im2col_into
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


# ------------------------------------------------------------------------------------------
# The base class and the registry
# ------------------------------------------------------------------------------------------

REGISTRY: dict[str, type["Layer"]] = {}
ONNX_OPS: dict[str, type["Layer"]] = {}


def layer_class(kind: str, name: str = "?") -> type["Layer"]:
    cls = REGISTRY.get(kind)
    if cls is None:
        raise LayerError(f"layer {name}: unknown kind {kind!r} (expected one of "
                         f"{', '.join(REGISTRY)})")
    return cls


class _LayerMeta(type):
    """``Layer(name, kind, inputs, **attrs)`` builds the class registered for ``kind``; every
    class call goes through :meth:`Layer.build`, which accepts the convenience forms of the
    attributes and turns bad ones into a :class:`LayerError` naming the layer."""

    def __call__(cls, *args, **kwargs):
        if cls is Layer:
            if len(args) < 2 and "kind" not in kwargs:
                raise TypeError("Layer(name, kind, inputs, **attributes)")
            args = list(args)
            name = args.pop(0) if args else kwargs.pop("name")
            kind = args.pop(0) if args else kwargs.pop("kind")
            inputs = args.pop(0) if args else kwargs.pop("inputs", ())
            return layer_class(kind, name).build(name, inputs, **kwargs)
        return cls.build(*args, **kwargs)


@dataclass(frozen=True)
class Layer(metaclass=_LayerMeta):
    """One node of the graph: a name, the names of its inputs (earlier layers or ``input``), and
    the attributes of its kind (fields of the subclass)."""
    name: str
    inputs: tuple[str, ...]

    kind: ClassVar[str] = ""
    onnx_ops: ClassVar[tuple[str, ...]] = ()
    min_inputs: ClassVar[int] = 1
    max_inputs: ClassVar[int | None] = 1
    is_matrix: ClassVar[bool] = False
    timing: ClassVar[str] = "vector"        # fused | vector | matrix
    has_running_stats: ClassVar[bool] = False
    aliases: ClassVar[dict[str, str]] = {}  # convenience attribute name -> field name

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("kind"):
            REGISTRY[cls.kind] = cls
            for op in cls.__dict__.get("onnx_ops", ()):
                ONNX_OPS[op] = cls

    # ---- construction --------------------------------------------------------------------
    @classmethod
    def build(cls, name: str, inputs=(), **attrs) -> "Layer":
        fields = {f.name for f in dataclasses.fields(cls)}
        canonical = {}
        for key, value in attrs.items():
            key = cls.aliases.get(key, key)
            if key not in fields or key in ("name", "inputs"):
                allowed = sorted(set(cls.aliases) | fields - {"name", "inputs"})
                raise LayerError(f"layer {name} ({cls.kind}): unknown attribute {key!r} "
                                 f"(expected {', '.join(allowed) or 'none'})")
            canonical[key] = value
        if isinstance(inputs, str):
            inputs = (inputs,)
        try:
            canonical = cls.normalize(canonical)
        except (TypeError, ValueError) as exc:
            raise LayerError(f"layer {name} ({cls.kind}): {exc}") from None
        layer = type.__call__(cls, name=name, inputs=tuple(inputs), **canonical)
        n = len(layer.inputs)
        if n < cls.min_inputs or (cls.max_inputs is not None and n > cls.max_inputs):
            want = (str(cls.min_inputs) if cls.max_inputs == cls.min_inputs else
                    f"{cls.min_inputs} or more" if cls.max_inputs is None else
                    f"{cls.min_inputs} to {cls.max_inputs}")
            raise LayerError(f"layer {name} ({cls.kind}): needs {want} inputs, got {n}")
        problem = layer.check()
        if problem:
            raise LayerError(f"layer {name} ({cls.kind}): {problem}")
        return layer

    @classmethod
    def normalize(cls, attrs: dict) -> dict:
        """Convenience forms -> field values (e.g. an int kernel -> (k, k))."""
        return attrs

    def check(self) -> str | None:
        """What is wrong with the attributes (None: nothing)."""
        return None

    def describe(self) -> dict:
        """Kind, name, inputs and attributes as plain data (stable; hashed by golden files)."""
        out = {"kind": self.kind}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    # ---- structure -----------------------------------------------------------------------
    def param(self, role: str) -> str:
        """Name of one of the layer's parameters in the parameter dict."""
        return f"{self.name}.{role}"

    def infer(self, in_shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
        """Output shape (without the batch axis) from the input shapes; raises LayerError."""
        return tuple(in_shapes[0])

    def param_specs(self, in_shapes: list[tuple[int, ...]]) -> list[ParamSpec]:
        return []

    def macs(self, in_shapes, out_shape) -> int:
        return 0

    def _fail(self, message: str):
        raise LayerError(f"layer {self.name} ({self.kind}): {message}")

    def _need_spatial(self, shape) -> None:
        if len(shape) != 3:
            raise LayerError(f"{self.kind} expects an (H, W, C) input, got {tuple(shape)}")

    # ---- compute -------------------------------------------------------------------------
    def forward(self, xs: list[np.ndarray], run: Pass) -> np.ndarray:
        raise NotImplementedError

    def backward(self, g: np.ndarray, saved: tuple, need: list[bool], run: Pass
                 ) -> tuple[list[np.ndarray | None], dict[str, np.ndarray]]:
        """Gradients of the inputs (None where ``need`` is False) and of the trainable parameters
        by role, from the output gradient ``g`` and what :meth:`forward` saved."""
        raise NotImplementedError

    # ---- mapping and timing view ---------------------------------------------------------
    def vector_ops(self, in_shapes, out_shape, row_values: int) -> int:
        """Vector-unit operations per output row (``timing == "vector"``)."""
        return row_values

    def input_row_needed(self, r: int, in_index: int, in_shape) -> int | None:
        """The last row of input ``in_index`` that output row ``r`` needs (unclamped), or None
        when it needs the whole input."""
        return r

    # ---- ONNX ----------------------------------------------------------------------------
    @classmethod
    def from_onnx(cls, node) -> "Layer":
        """The layer for one ONNX node, through the importer's view ``node`` of it
        (:class:`archsim.onnx_import.NodeView`: attributes, constants, input shapes, axes)."""
        raise NotImplementedError


# ------------------------------------------------------------------------------------------
# Weight matrices
# ------------------------------------------------------------------------------------------

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
        cols = (run.matrix_input or (lambda layer, x, ws: layer.matrix_input(x, ws)))(
            self, a, run.workspace)
        out = run.matmul(self, cols) if run.matmul is not None else self.matmul(cols, run.params)
        if self.bias:
            out = out + run.params[self.param("bias")]
        return self.matrix_output(out, a)

    def _train_weight(self, run: Pass) -> np.ndarray:
        """(O, K/groups) weights of a training pass (noisy ones when given)."""
        w = (run.weights or {}).get(self.param("weight"), run.params[self.param("weight")])
        return np.asarray(w, run.dtype).reshape(w.shape[0], -1)

    def _forward_train(self, a: np.ndarray, run: Pass) -> np.ndarray:
        raise NotImplementedError


def _grouped(cols: np.ndarray, w2: np.ndarray, groups: int) -> np.ndarray:
    """(P, K) patches times the grouped weights w2 (O, K/G): (P, O), one GEMM per group."""
    p = cols.shape[0]
    kg = cols.shape[1] // groups
    ng = w2.shape[0] // groups
    xg = cols.reshape(p, groups, kg).transpose(1, 0, 2)                 # (G, P, Kg)
    out = np.matmul(xg, w2.reshape(groups, ng, kg).transpose(0, 2, 1))  # (G, P, Ng)
    return out.transpose(1, 0, 2).reshape(p, groups * ng)


@dataclass(frozen=True)
class Conv2d(MatrixLayer):
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

    # the built-in networks' square view of the geometry
    @property
    def kernel(self):
        return _square(self.kernel_shape)

    @property
    def stride(self):
        return _square(self.strides)

    @property
    def padding(self):
        return _square(self.pads)

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

    def _train_cols(self, a: np.ndarray, ho: int, wo: int, workspace: Workspace) -> np.ndarray:
        sq = self.square
        if sq is not None and a.dtype == np.float32:
            from .kernels import im2col_into
            k, s, p = sq
            shape = (a.shape[0] * ho * wo, a.shape[3] * k * k)
            return im2col_into(a, k, s, p, ho, wo, workspace.get("cols/" + self.name, shape))
        return np.ascontiguousarray(im2col_general(a, self.kernel_shape, self.strides, self.pads,
                                                   self.dilations, ho, wo))

    def _forward_train(self, a, run):
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

    def backward(self, g, saved, need, run):
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
            from .kernels import col2im_into
            dx = run.workspace.get("dx/" + self.name, in_shape, dcols.dtype)
            col2im_into(dcols, sq[0], sq[1], sq[2], dx)
        else:
            dx = col2im_general(dcols, in_shape, self.kernel_shape, self.strides, self.pads,
                                self.dilations, ho, wo)
        return [dx], grads

    def input_row_needed(self, r, in_index, in_shape):
        return r * self.strides[0] - self.pads[0] + self.dilations[0] * (self.kernel_shape[0] - 1)

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


# ------------------------------------------------------------------------------------------
# Normalization and activations
# ------------------------------------------------------------------------------------------

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
            scale, offset = batchnorm_affine(run.params, self.name, self.eps)
            return a * scale + offset
        dtype = run.dtype
        gamma = run.param(self, "weight")
        beta = run.param(self, "bias")
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

    def backward(self, g, saved, need, run):
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

    def grad(self, a, out):
        return out > 0


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


# ------------------------------------------------------------------------------------------
# Pooling
# ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pool(Layer):
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
    def kernel(self):
        return _square(self.kernel_shape)

    @property
    def stride(self):
        return _square(self.strides)

    @property
    def padding(self):
        return _square(self.pads)

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


# ------------------------------------------------------------------------------------------
# Tensor plumbing: add, mul, concat, flatten, pad, slice, option-A shortcut
# ------------------------------------------------------------------------------------------

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
        return a + b

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
    """(H, W, C) -> (C*H*W,) in PyTorch's (C, H, W) order, so weights trained there fit."""
    kind: ClassVar[str] = "flatten"
    onnx_ops: ClassVar[tuple[str, ...]] = ("Flatten", "Reshape")
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
        size = int(np.prod(node.shape(0)))
        if node.op == "Flatten":
            if node.attrs.get("axis", 1) != 1:
                node.unsupported(f"Flatten axis {node.attrs['axis']} (supported: 1)")
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


KINDS = tuple(REGISTRY)
