"""The layer base class, its registry and what every kind shares: :class:`Pass` (one walk over
the graph: parameters, scratch memory, the hooks of the analog pass, the training tape),
:class:`ParamSpec`, :class:`MatrixView` and the ``Layer(name, kind, inputs, **attrs)`` helper."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping, NamedTuple

import numpy as np

from ..errors import WorkloadError

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
        self._workers: dict[int, "Workspace"] = {}

    def worker(self, slot: int) -> "Workspace":
        """The scratch memory of worker thread ``slot`` of an inference pass (0: this one)."""
        if slot == 0:
            return self
        ws = self._workers.get(slot)
        if ws is None:
            ws = self._workers[slot] = Workspace()
        return ws

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
    # layers whose output they clamped themselves (a BatchNorm or Add with the ReLU after it)
    clamped: set[str] = field(default_factory=set)


MatmulHook = Callable[["MatrixLayer", np.ndarray], np.ndarray]
MatrixInputHook = Callable[["MatrixLayer", np.ndarray, Workspace], np.ndarray]
BatchnormHook = Callable[["BatchNorm", np.ndarray], np.ndarray]
AffineHook = Callable[["BatchNorm"], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Epilogue:
    """The layers an inference pass fuses into a matrix layer's output stage (one read and one
    write of the product instead of one per layer), applied in this order: the matrix layer's own
    bias, a BatchNorm's per-channel affine, the other operand of a residual Add, a clamp (ReLU:
    (0, inf); Clip). ``layers`` are the fused layers in graph order; the last one names the value
    the fused step produces. Each part is one float32 operation in the order the layers would run
    one by one, so fusing never changes a bit (:meth:`apply` runs them one by one)."""
    layers: tuple["Layer", ...] = ()
    batchnorm: "Layer | None" = None
    residual: str | None = None
    clamp: tuple[float, float] | None = None

    @property
    def output(self) -> str:
        return self.layers[-1].name

    def add(self, layer: "Layer", part: dict) -> "Epilogue | None":
        """This epilogue extended by ``layer`` contributing ``part`` (one of batchnorm, residual,
        clamp), or None when that part cannot follow the parts already fused."""
        (what, value), = part.items()
        later = {"batchnorm": (self.batchnorm, self.residual, self.clamp),
                 "residual": (self.residual, self.clamp), "clamp": (self.clamp,)}[what]
        if any(v is not None for v in later):
            return None
        return dataclasses.replace(self, layers=self.layers + (layer,), **{what: value})

    def apply(self, out: np.ndarray, residual: np.ndarray | None, run: "Pass") -> np.ndarray:
        """The fused layers run one by one on the product ``out`` (plain numpy)."""
        for layer in self.layers:
            if layer is self.batchnorm:
                scale, offset = run.batchnorm_affine(layer)
                out = out * scale + offset
            elif self.residual is not None and layer.kind == "add":
                out = out + residual
            else:
                out = layer.forward([out], run)
        return out


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
    gradient checks) is kept throughout; ``workers`` (:class:`archsim.threads.Workers`) runs the
    chunks of a batch that convolutions and BatchNorm split their training work into (None: one
    after the other in the calling thread, with the same numbers)."""
    params: Mapping[str, np.ndarray]
    workspace: Workspace = field(default_factory=Workspace)
    dtype: Any = np.float32
    matmul: MatmulHook | None = None
    matrix_input: MatrixInputHook | None = None
    batchnorm: BatchnormHook | None = None
    tape: Tape | None = None
    batch_statistics: bool = False
    weights: Mapping[str, np.ndarray] | None = None
    # inference passes (archsim.network.infer): a BatchNorm's (scale, offset) (default: from its
    # running statistics), the fused matrix layer hook (layer, input, epilogue, residual, pass)
    # -> output (default: the layer's own forward_fused), the first image of this chunk within
    # the batch, and values computed once per call and shared by its chunks (e.g. weight layouts)
    affine: AffineHook | None = None
    fused_matmul: Callable | None = None
    first_image: int = 0
    shared: dict = field(default_factory=dict)
    workers: Any = None
    # training: BatchNorm and Add layers whose only consumer is a ReLU (they may apply it)
    relu_after: frozenset = frozenset()
    # training backward: Conv2d layers whose input is the output of a ReLU they alone use: they
    # apply that ReLU's gradient mask to their input gradient, chunk by chunk (the ReLU's own
    # backward then passes its gradient through)
    relu_mask: frozenset = frozenset()

    def run_chunks(self, fn: Callable[[int, int], None], count: int) -> None:
        """``fn(chunk, worker)`` for every chunk index in ``range(count)`` (training)."""
        if self.workers is None:
            for i in range(count):
                fn(i, 0)
        else:
            self.workers.run(fn, count)

    def param(self, layer: "Layer", role: str) -> np.ndarray:
        return np.asarray(self.params[layer.param(role)], self.dtype)

    def batchnorm_affine(self, layer: "Layer") -> tuple[np.ndarray, np.ndarray]:
        """The inference affine (scale, offset) of a BatchNorm layer, float32."""
        if self.affine is not None:
            return self.affine(layer)
        key = ("affine", layer.name)
        out = self.shared.get(key)
        if out is None:
            from .ops import batchnorm_affine
            out = self.shared[key] = batchnorm_affine(self.params, layer.name, layer.eps)
        return out

    def cached(self, key, make: Callable[[], Any]) -> Any:
        """``make()`` once per pass (shared by its chunks; a race computes it twice, the same)."""
        out = self.shared.get(key)
        if out is None:
            out = self.shared[key] = make()
        return out


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


class SquareView:
    """The built-in networks' square view of a windowed layer's geometry (``kernel_shape``,
    ``strides``, ``pads``): an int where all entries agree, else the tuple."""

    @property
    def kernel(self):
        return _square(self.kernel_shape)

    @property
    def stride(self):
        return _square(self.strides)

    @property
    def padding(self):
        return _square(self.pads)


def _unbroadcast(g: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum ``g`` over the axes numpy broadcast to reach its shape from ``shape``."""
    lead = g.ndim - len(shape)
    if lead:
        g = g.sum(axis=tuple(range(lead)))
    axes = tuple(i for i, d in enumerate(shape) if d == 1 and g.shape[i] != 1)
    return g.sum(axis=axes, keepdims=True) if axes else g


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
    streams_input: ClassVar[bool] = False   # folds its input rows into a running result (pooling)
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

    def epilogue_part(self, producer: str) -> dict | None:
        """What this layer contributes when an inference pass fuses it into the output stage of
        the matrix layer chain ending at ``producer`` (its input): ``{"batchnorm": self}``,
        ``{"residual": other input name}`` or ``{"clamp": (lo, hi)}``; None: not fusable."""
        return None

    def input_row_first(self, r: int, in_index: int, in_shape) -> int:
        """The first row of input ``in_index`` that output row ``r`` needs (unclamped): the rows
        before it can be freed. Row-wise kinds need one row: the last one."""
        needed = self.input_row_needed(r, in_index, in_shape)
        return 0 if needed is None else needed

    # ---- ONNX ----------------------------------------------------------------------------
    @classmethod
    def from_onnx(cls, node) -> "Layer":
        """The layer for one ONNX node, through the importer's view ``node`` of it
        (:class:`archsim.onnx_import.NodeView`: attributes, constants, input shapes, axes)."""
        raise NotImplementedError
