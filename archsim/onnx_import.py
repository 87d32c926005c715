"""ONNX import: a model file -> (:class:`~archsim.network.Network`, parameters).

- Reading: ``onnx.load`` (protobuf), with the weights of an external ``.onnx.data`` file beside the
  model (``onnx.external_data_helper``); opsets 13 to the newest the installed ``onnx`` knows.
- One input, NCHW (N, C, H, W) with any (symbolic) batch axis and fixed C, H, W - or (N, F) -, and
  one output. The network runs NHWC inside: the input is converted once (:func:`archsim.network
  .fp32_logits` takes NCHW), and every layout-dependent attribute (axes of Concat, Slice, Pad,
  ReduceMean; the broadcast constants of Add and Mul; Flatten's C, H, W order) is translated here.
- Folding: every node whose inputs are constants (initializers, ``Constant``) or shapes of
  activations is evaluated at import by the ``onnx`` package's reference implementation
  (``onnx.reference.ReferenceEvaluator``): Shape, Gather, Unsqueeze, Concat of shapes,
  ConstantOfShape, Cast, arithmetic on constants, ... - whatever PyTorch's exporters trace. The batch
  axis is never folded into a constant: shape subgraphs are evaluated for two batch sizes, and an
  element that differs between them depends on the batch (a Reshape may keep it as its batch axis;
  anywhere else it is an error).
- The other nodes map 1:1 to layer kinds (:data:`archsim.layers.ONNX_OPS`; each kind's
  ``from_onnx`` reads its attributes); Identity, Dropout and a Cast to float are removed. Node names
  become layer names (so reports and ``mapping.overrides`` use the names Netron shows); parameters
  are named ``<node name>.<role>`` (``weight``, ``bias``, ``running_mean``, ...).

Every problem is one line naming the file and the node (name and op type): an unsupported op (with
the supported list) or attribute value, a dynamic spatial size, a corrupt or truncated file, a
missing external data file, several inputs or outputs, an initializer whose shape disagrees with its
use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError, WorkloadError
from .layers import INPUT, ONNX_OPS, Layer, LayerError
from .network import Network

MIN_OPSET = 13
BATCH_A, BATCH_B = 7, 11        # two batch sizes: shape values that differ depend on the batch
REMOVED_OPS = ("Identity", "Dropout", "Cast")


class _NodeProblem(Exception):
    """Raised inside a node's import; the importer adds the file and the node."""


def supported_ops() -> list[str]:
    return sorted(set(ONNX_OPS) | set(REMOVED_OPS))


# ------------------------------------------------------------------------------------------
# Reading the file
# ------------------------------------------------------------------------------------------

def load_model(path: str | Path):
    """The ModelProto with its external data loaded; DataError for anything unreadable."""
    import onnx
    from google.protobuf.message import DecodeError
    from onnx import external_data_helper as ext

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such ONNX file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise DataError(f"{path}: not a readable ONNX model, corrupt or truncated "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
                        ) from None
    if not model.graph.node or not model.opset_import:
        raise DataError(f"{path}: not an ONNX model (no graph nodes or no opset), or a "
                        "truncated one")
    base = path.parent
    for tensor in model.graph.initializer:
        if ext.uses_external_data(tensor):
            info = ext.ExternalDataInfo(tensor)
            data_file = base / info.location
            if not data_file.is_file():
                raise DataError(f"{path}: initializer {tensor.name}: external data file "
                                f"{info.location} not found beside the model")
            size = data_file.stat().st_size
            end = (info.offset or 0) + (info.length or 0)
            if end > size:
                raise DataError(f"{path}: initializer {tensor.name}: external data file "
                                f"{info.location} is truncated ({size} bytes, needs {end})")
    try:
        ext.load_external_data_for_model(model, str(base))
    except Exception as exc:     # onnx raises several kinds here
        raise DataError(f"{path}: cannot read its external data ({exc})") from None
    return model


def _opset(model, path: Path) -> int:
    import onnx
    newest = onnx.defs.onnx_opset_version()
    version = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if version is None or not MIN_OPSET <= version <= newest:
        raise WorkloadError(f"{path}: opset {version} of the default ONNX domain (supported: "
                            f"{MIN_OPSET} to {newest})")
    return int(version)


# ------------------------------------------------------------------------------------------
# A node as a layer class sees it
# ------------------------------------------------------------------------------------------

class NodeView:
    """One ONNX node for :meth:`archsim.layers.Layer.from_onnx`: its attributes, its inputs
    (activations with their internal shapes, or folded constants) and the layout translation."""

    def __init__(self, importer: "_Importer", node, name: str):
        from onnx import helper
        self._imp = importer
        self._node = node
        self.name = name
        self.op = node.op_type
        self.num_inputs = len(node.input)
        attrs = {}
        for a in node.attribute:
            value = helper.get_attribute_value(a)
            if isinstance(value, bytes):
                value = value.decode()
            elif isinstance(value, list):
                value = [v.decode() if isinstance(v, bytes) else v for v in value]
            attrs[a.name] = value
        self.attrs: dict[str, Any] = attrs
        self.params: dict[str, tuple[np.ndarray, str]] = {}

    # ---- inputs ----------------------------------------------------------------------------
    def _tensor(self, i: int) -> str:
        return self._node.input[i] if self.has_input(i) else ""

    def has_input(self, i: int) -> bool:
        return i < len(self._node.input) and self._node.input[i] != ""

    def is_constant(self, i: int) -> bool:
        return self.has_input(i) and self._tensor(i) in self._imp.consts

    def activation(self, i: int) -> str:
        """The layer producing input ``i`` (``input`` for the network input)."""
        t = self._tensor(i)
        if t in self._imp.acts:
            return self._imp.acts[t][0]
        if t in self._imp.consts:
            self.unsupported(f"input {i} ({t}) is a constant; {self.op} needs an activation there")
        self.unsupported(f"input {i} is missing")

    def shape(self, i: int) -> tuple[int, ...]:
        """Internal shape of activation input ``i``: (H, W, C) or (F,)."""
        self.activation(i)
        return self._imp.acts[self._tensor(i)][1]

    def rank(self, i: int) -> int:
        """ONNX rank of activation input ``i`` (4: N, C, H, W; 2: N, F)."""
        return 4 if len(self.shape(i)) == 3 else 2

    def need_rank(self, i: int, rank: int, what: str | None = None) -> None:
        if self.rank(i) != rank:
            self.unsupported(f"expects {what or f'a rank-{rank} input'}, got rank {self.rank(i)}")

    def output_used(self, i: int) -> bool:
        out = self._node.output
        return i < len(out) and out[i] != "" and out[i] in self._imp.used

    def constant(self, i: int, what: str) -> np.ndarray:
        """Input ``i`` as a constant that does not depend on the batch size."""
        t = self._tensor(i)
        if not t:
            self.unsupported(f"{what} (input {i}) is missing")
        if t not in self._imp.consts:
            self.unsupported(f"{what} ({t}) must be a constant (an initializer or a folded "
                             "subgraph), not computed from the network input")
        a, b = self._imp.consts[t]
        if a is not b and (a.shape != b.shape or not np.array_equal(a, b)):
            self.unsupported(f"{what} ({t}) depends on the batch size")
        return np.asarray(a)

    def optional_constant(self, i: int, what: str) -> np.ndarray | None:
        return self.constant(i, what) if self.has_input(i) else None

    def shape_constant(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """A shape-like constant (Reshape's target): its values and which of them are the batch
        size (equal to each of the two trial batch sizes)."""
        t = self._tensor(i)
        if t not in self._imp.consts:
            self.unsupported(f"input {i} ({t}) must be a constant or a shape computation")
        a, b = (np.asarray(v).reshape(-1) for v in self._imp.consts[t])
        is_batch = (a != b) & (a == BATCH_A) & (b == BATCH_B)
        if ((a != b) & ~is_batch).any():
            self.unsupported(f"input {i} ({t}) depends on the batch size other than as the "
                             "batch axis")
        return a.astype(np.int64), is_batch

    # ---- parameters ------------------------------------------------------------------------
    def param(self, role: str, i: int, value: np.ndarray) -> None:
        """Record a parameter of the layer, taken from input ``i``."""
        self.params[role] = (np.asarray(value, np.float32), self._tensor(i) or f"input {i}")

    def bad_initializer(self, i: int, shape, expected: str):
        self.unsupported(f"initializer {self._tensor(i)} has shape {tuple(shape)}, expected "
                         f"{expected}")

    def unsupported(self, message: str):
        raise _NodeProblem(message)

    # ---- layout ----------------------------------------------------------------------------
    def axis(self, axis: int, rank: int, batch_ok: bool = False) -> int | None:
        """ONNX axis of a rank-``rank`` activation -> internal axis without the batch (NCHW ->
        H 0, W 1, C 2; NF -> F 0). The batch axis gives None when ``batch_ok`` (an operation that
        leaves it alone), else it is unsupported."""
        a = int(axis) + (rank if int(axis) < 0 else 0)
        if not 0 <= a < rank:
            self.unsupported(f"axis {axis} out of range for rank {rank}")
        if a == 0:
            if batch_ok:
                return None
            self.unsupported(f"an operation on axis {axis}, the batch axis")
        return {4: {1: 2, 2: 0, 3: 1}, 2: {1: 0}}[rank][a]

    def to_internal(self, value: np.ndarray, i: int) -> np.ndarray:
        """A constant broadcast against activation input ``i`` (ONNX layout) -> internal layout."""
        rank = self.rank(i)
        v = np.asarray(value, np.float32)
        if v.ndim > rank:
            self.unsupported(f"a constant of rank {v.ndim} for a rank-{rank} activation")
        v = v.reshape((1,) * (rank - v.ndim) + v.shape)
        if v.shape[0] != 1:
            self.unsupported(f"a constant of shape {value.shape} that varies over the batch")
        v = v[0]
        return np.ascontiguousarray(v.transpose(1, 2, 0)) if rank == 4 else v

    def spatial_pads(self, kernel, strides, dilations) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) from ``pads`` or ``auto_pad`` (SAME_UPPER/LOWER, VALID)."""
        auto = self.attrs.get("auto_pad", "NOTSET")
        if auto in ("NOTSET", ""):
            pads = tuple(int(p) for p in self.attrs.get("pads", (0, 0, 0, 0)))
            if len(pads) != 4:
                self.unsupported(f"pads {list(pads)} (expected 4 values for a 2-D kernel)")
            return pads
        if auto == "VALID":
            return 0, 0, 0, 0
        if auto not in ("SAME_UPPER", "SAME_LOWER"):
            self.unsupported(f"auto_pad {auto!r}")
        h, w = self.shape(0)[:2]
        begin, end = [], []
        for size, k, s, d in zip((h, w), kernel, strides, dilations):
            out = -(-size // s)
            total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
            small = total // 2
            begin.append(small if auto == "SAME_UPPER" else total - small)
            end.append(total - begin[-1])
        return begin[0], begin[1], end[0], end[1]


# ------------------------------------------------------------------------------------------
# The import
# ------------------------------------------------------------------------------------------

class _Importer:
    def __init__(self, path: Path, model):
        self.path = path
        self.model = model
        self.opset = _opset(model, path)
        self.consts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.acts: dict[str, tuple[str, tuple[int, ...]]] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.layers: list[Layer] = []
        self.params: dict[str, np.ndarray] = {}
        self.names: set[str] = {INPUT}
        graph = model.graph
        self.used = {t for node in graph.node for t in node.input if t} | {o.name for o in graph.output}

    def fail(self, message: str, node=None, name: str | None = None):
        where = f"{self.path}"
        if node is not None:
            where += f": node {name or node.name or node.output[0]} ({node.op_type})"
        raise WorkloadError(f"{where}: {message}")

    # ---- graph input and constants ----------------------------------------------------------
    def read_inputs(self) -> tuple[tuple[int, ...], str]:
        from onnx import numpy_helper
        graph = self.model.graph
        for init in graph.initializer:
            value = numpy_helper.to_array(init)
            self.consts[init.name] = (value, value)
        real = [i for i in graph.input if i.name not in self.consts]
        if len(real) != 1:
            names = ", ".join(i.name for i in real) or "none"
            self.fail(f"the graph has {len(real)} inputs ({names}); archsim places networks "
                      "with exactly one input (the image batch)")
        if len(graph.output) != 1:
            names = ", ".join(o.name for o in graph.output)
            self.fail(f"the graph has {len(graph.output)} outputs ({names}); archsim needs "
                      "exactly one (the logits)")
        inp = real[0]
        tt = inp.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                for d in tt.shape.dim]
        if tt.elem_type not in (1,):          # FLOAT
            self.fail(f"input {inp.name}: element type {tt.elem_type} (supported: float32)")
        if len(dims) not in (2, 4):
            self.fail(f"input {inp.name} has shape {dims}; supported: (N, C, H, W) images or "
                      "(N, F) features")
        for axis, d in enumerate(dims[1:], start=1):
            if not isinstance(d, int) or d <= 0:
                self.fail(f"input {inp.name} has a dynamic size on axis {axis} ({d!r} in "
                          f"{dims}); archsim needs fixed channel and spatial sizes (export "
                          "with a fixed image size; only the batch axis may be symbolic)")
        shape = (dims[2], dims[3], dims[1]) if len(dims) == 4 else (dims[1],)
        self.acts[inp.name] = (INPUT, shape)
        self.shapes[INPUT] = shape
        return shape, inp.name

    def _onnx_shape(self, shape: tuple[int, ...], batch: int) -> tuple[int, ...]:
        return (batch, shape[2], shape[0], shape[1]) if len(shape) == 3 else (batch,) + shape

    def fold(self, node, name: str) -> None:
        """Evaluate a node of constants (or of an activation's shape) for both trial batches."""
        from onnx.reference import ReferenceEvaluator
        feeds = []
        for variant, batch in ((0, BATCH_A), (1, BATCH_B)):
            feed = {}
            for t in node.input:
                if not t:
                    continue
                if t in self.consts:
                    feed[t] = self.consts[t][variant]
                else:       # Shape / Size of an activation: only its shape matters
                    shape = self._onnx_shape(self.acts[t][1], batch)
                    feed[t] = np.broadcast_to(np.zeros((), np.float32), shape)
            feeds.append(feed)
        same = all(feeds[0][t] is feeds[1][t] for t in feeds[0])
        try:
            evaluator = ReferenceEvaluator(node, opsets={"": self.opset})
            results = [evaluator.run(None, feeds[0])]
            results.append(results[0] if same else evaluator.run(None, feeds[1]))
        except Exception as exc:     # the reference ops raise many kinds
            self.fail(f"cannot fold this node of constants ({type(exc).__name__}: {exc})", node,
                      name)
        for i, out in enumerate(node.output):
            if out:
                a = np.asarray(results[0][i])
                b = a if same else np.asarray(results[1][i])
                self.consts[out] = (a, b)

    def unique_name(self, node) -> str:
        base = node.name or node.output[0] or node.op_type
        name, k = base, 1
        while name in self.names:
            k += 1
            name = f"{base}_{k}"
        self.names.add(name)
        return name

    # ---- nodes -----------------------------------------------------------------------------
    def node(self, node) -> None:
        name = self.unique_name(node)
        op = node.op_type
        present = [t for t in node.input if t]
        for t in present:
            if t not in self.consts and t not in self.acts:
                self.fail(f"input {t} is not produced by an earlier node (the graph must be "
                          "sorted topologically)", node, name)
        if node.domain not in ("", "ai.onnx"):
            self.fail(f"unsupported op {node.domain}.{op} (supported: "
                      f"{', '.join(supported_ops())})", node, name)
        acts_in = [t for t in present if t in self.acts]
        if not acts_in or (op in ("Shape", "Size") and len(present) == 1):
            self.fold(node, name)
            return
        if op in REMOVED_OPS:
            self.alias(node, name)
            return
        cls = ONNX_OPS.get(op)
        if cls is None:
            self.fail(f"unsupported op {op} (supported: {', '.join(supported_ops())}; any op "
                      "is folded when its inputs are constants or shapes)", node, name)
        view = NodeView(self, node, name)
        try:
            for i in range(1, len(node.output)):
                if view.output_used(i):
                    view.unsupported(f"output {i} ({node.output[i]}) is used; only the first "
                                     "output is supported")
            layer = cls.from_onnx(view)
            in_shapes = [self.shapes[s] for s in layer.inputs]
            specs = layer.param_specs(in_shapes)
            for spec in specs:
                value, source = view.params[spec.role]
                if tuple(value.shape) != tuple(spec.shape):
                    view.unsupported(f"initializer {source} has shape {tuple(value.shape)}, but "
                                     f"its use as the {spec.role} of this {layer.kind} layer on "
                                     f"an input of shape {self._describe(in_shapes[0])} needs "
                                     f"{tuple(spec.shape)}")
                self.params[layer.param(spec.role)] = value
            out_shape = tuple(int(d) for d in layer.infer(in_shapes))
        except _NodeProblem as exc:
            self.fail(str(exc), node, name)
        except LayerError as exc:
            message = str(exc)
            prefix = f"layer {name} ({cls.kind}): "
            self.fail(message[len(prefix):] if message.startswith(prefix) else message, node, name)
        self.layers.append(layer)
        self.shapes[layer.name] = out_shape
        self.acts[node.output[0]] = (layer.name, out_shape)

    def _describe(self, shape) -> str:
        return str(self._onnx_shape(tuple(shape), "N")).replace("'", "")

    def alias(self, node, name: str) -> None:
        """Identity, Dropout (inference) and Cast to float: the output is the input."""
        view = NodeView(self, node, name)
        try:
            if node.op_type == "Cast" and view.attrs.get("to") != 1:
                view.unsupported(f"Cast of an activation to type {view.attrs.get('to')} "
                                 "(supported: to float32)")
            if node.op_type == "Dropout":
                if view.output_used(1):
                    view.unsupported("the mask output is used")
                if view.has_input(2) and bool(view.constant(2, "training_mode").reshape(())):
                    view.unsupported("training_mode=true")
            for i in range(1, len(node.input)):
                if node.input[i] in self.acts:
                    view.unsupported(f"input {i} is an activation")
        except _NodeProblem as exc:
            self.fail(str(exc), node, name)
        self.acts[node.output[0]] = self.acts[node.input[0]]

    # ---- the network -----------------------------------------------------------------------
    def network(self, name: str, input_shape) -> tuple[Network, dict[str, np.ndarray]]:
        out = self.model.graph.output[0].name
        if out not in self.acts:
            self.fail(f"the output {out} is a constant, not computed from the input")
        last = self.acts[out][0]
        if last == INPUT:
            self.fail(f"the output {out} is the input itself")
        # keep the layers the output depends on (in order)
        by_name = {layer.name: layer for layer in self.layers}
        needed, stack = set(), [last]
        while stack:
            n = stack.pop()
            if n in needed or n == INPUT:
                continue
            needed.add(n)
            stack.extend(by_name[n].inputs)
        layers = [layer for layer in self.layers if layer.name in needed]
        out_shape = self.shapes[last]
        params = {k: v for k, v in self.params.items() if k.rsplit(".", 1)[0] in needed}
        net = Network(name, input_shape, tuple(layers), int(out_shape[-1]), input_layout="NCHW")
        return net, params


def import_onnx(path: str | Path) -> tuple[Network, dict[str, np.ndarray]]:
    """Read an ONNX model: its network (NCHW input, NHWC inside; node names as layer names) and
    its parameters from the initializers (float32, named ``<node name>.<role>``)."""
    path = Path(path)
    model = load_model(path)
    imp = _Importer(path, model)
    input_shape, _ = imp.read_inputs()
    for node in model.graph.node:
        imp.node(node)
    net, params = imp.network(path.name[:-5] if path.name.endswith(".onnx") else path.stem,
                              input_shape)
    return net, net.check_params(params, str(path))
