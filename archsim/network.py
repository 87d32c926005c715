"""The network IR: a layer graph with shapes, MAC counts and the one graph walk that runs it.

Layers are the registered kinds of :mod:`archsim.layers` (one class per kind); this module holds
the graph (:class:`Network`: order, names, inputs, inferred shapes, parameters), the graph walks
- :func:`walk` (layer by layer: training in :mod:`archsim.training`, and :func:`forward` with
user hooks) and :func:`infer` (inference: :func:`fusion_plan`'s fused steps on chunks of the
batch, on the worker threads of :mod:`archsim.threads`; the FP32 pass and, through the hooks of
:class:`~archsim.layers.Pass`, the analog one of :mod:`archsim.functional`) - the built-in
networks and :func:`fp32_logits`, the FP32 reference in the model's own input layout.

Activations are NHWC float32 arrays (N, H, W, C), or (N, F) after Flatten/GlobalAvgPool. A conv
layer is a matrix layer: im2col patches of K = Cin*kh*kw values times the (K, N) weight matrix.
In the (c, i, j) order of an OIHW kernel flattened, that 2-D form is exactly what
:mod:`archsim.mapping` places on crossbar arrays (and what a ``matmul`` hook of :func:`forward`
receives); inference passes write the patches tap-major instead (whole channel vectors,
:class:`~archsim.layers.PatchLayout`) with the weights' rows in the same order - the same
products summed in another order.

Parameters live outside the graph, in a dict keyed ``<layer name>.<role>`` (PyTorch-style for the
built-in networks: ``conv1.weight``, ``layer2.0.bn1.running_mean``, ``linear.bias``); each layer
knows the names and shapes it needs.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from . import threads
from .errors import WorkloadError
from .layers import (INPUT, KINDS, BatchNorm, BatchnormHook, Epilogue, Layer,  # noqa: F401
                     LayerError, MatmulHook, MatrixInputHook, MatrixLayer, MatrixView, ParamSpec,
                     Pass, Workspace, batchnorm_affine, im2col, pool, shortcut_a)

LAYOUTS = ("NHWC", "NCHW")


@dataclass(frozen=True)
class Network:
    """A layer graph in topological order. ``input_shape`` is (H, W, C) (or (F,)) without the
    batch axis; ``input_layout`` is how the model's own users give inputs to
    :func:`fp32_logits` (NCHW for an ONNX model from PyTorch); inside, activations are NHWC."""
    name: str
    input_shape: tuple[int, ...]
    layers: tuple[Layer, ...]
    num_classes: int
    input_layout: str = "NHWC"
    _shapes: dict = field(default=None, init=False, repr=False, compare=False)
    _index: dict = field(default=None, init=False, repr=False, compare=False)
    _plans: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))
        object.__setattr__(self, "layers", tuple(self.layers))
        if self.input_layout not in LAYOUTS:
            raise WorkloadError(f"network {self.name}: input layout {self.input_layout!r} "
                                f"(expected one of {', '.join(LAYOUTS)})")
        seen = {INPUT}
        index = {}
        shapes: dict[str, tuple[int, ...]] = {INPUT: self.input_shape}
        for layer in self.layers:
            if not isinstance(layer, Layer):
                raise WorkloadError(f"network {self.name}: {layer!r} is not a layer")
            if layer.name in seen:
                raise WorkloadError(f"network {self.name}: duplicate layer name {layer.name!r}")
            for src in layer.inputs:
                if src not in seen:
                    raise WorkloadError(f"network {self.name}: layer {layer.name}: input {src!r} "
                                        "is not an earlier layer")
            try:
                shapes[layer.name] = tuple(int(d) for d in layer.infer(
                    [shapes[s] for s in layer.inputs]))
            except LayerError as exc:
                message = str(exc)
                prefix = f"layer {layer.name} ({layer.kind}): "
                if message.startswith(prefix):
                    message = message[len(prefix):]
                raise WorkloadError(f"network {self.name}: layer {layer.name}: {message}") from None
            seen.add(layer.name)
            index[layer.name] = layer
        object.__setattr__(self, "_shapes", shapes)
        object.__setattr__(self, "_index", index)

    # ---- structure -----------------------------------------------------------------------
    @property
    def output(self) -> str:
        return self.layers[-1].name if self.layers else INPUT

    def layer(self, name: str) -> Layer:
        return self._index[name]

    def matrix_layers(self) -> list[MatrixLayer]:
        return [layer for layer in self.layers if layer.is_matrix]

    def batchnorm_layers(self) -> list[Layer]:
        """The layers with running statistics (BatchNorm): what AdaBS re-estimates."""
        return [layer for layer in self.layers if layer.has_running_stats]

    def shape(self, name: str) -> tuple[int, ...]:
        """Output shape of a layer (without the batch axis); ``input`` for the input."""
        return self._shapes[name]

    def input_shape_of(self, layer: Layer) -> tuple[int, ...]:
        return self._shapes[layer.inputs[0]]

    def input_shapes_of(self, layer: Layer) -> list[tuple[int, ...]]:
        return [self._shapes[s] for s in layer.inputs]

    def consumers(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {INPUT: []}
        for layer in self.layers:
            out[layer.name] = []
            for src in layer.inputs:
                out[src].append(layer.name)
        return out

    def statistics_of(self, name: str) -> str | None:
        """The BatchNorm layer that normalizes the output of layer ``name`` (its consumer with
        running statistics), or None: where AdaBS can re-estimate statistics for it."""
        for user in self.consumers().get(name, []):
            if self._index[user].has_running_stats:
                return user
        return None

    def matrix_view(self, layer: MatrixLayer) -> MatrixView:
        return layer.matrix_view(self.input_shape_of(layer), self.shape(layer.name))

    def matrix_shape(self, layer: Layer) -> tuple[int, int]:
        """(K, N): rows (inputs per MVM) and columns (outputs) of the layer's weight matrix."""
        if not layer.is_matrix:
            raise ValueError(f"{layer.name} is not a matrix layer")
        view = self.matrix_view(layer)
        return view.k, view.n

    def mvms_per_inference(self, layer: Layer) -> int:
        """MVMs (one per output pixel) a matrix layer needs for one input."""
        return self.matrix_view(layer).mvms if layer.is_matrix else 0

    def macs(self, layer: Layer) -> int:
        return int(layer.macs(self.input_shapes_of(layer), self.shape(layer.name)))

    def total_macs(self) -> int:
        return sum(self.macs(layer) for layer in self.layers)

    # ---- parameters ----------------------------------------------------------------------
    def param_specs(self) -> dict[str, ParamSpec]:
        """Every parameter the network needs: name -> :class:`~archsim.layers.ParamSpec`."""
        return {layer.param(spec.role): spec for layer in self.layers
                for spec in layer.param_specs(self.input_shapes_of(layer))}

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter the network needs, name -> shape."""
        return {name: tuple(spec.shape) for name, spec in self.param_specs().items()}

    def check_params(self, params: Mapping[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
        """The parameters as float32, after checking every name and shape; names the first bad one."""
        out = {}
        for pname, shape in self.param_shapes().items():
            if pname not in params:
                raise WorkloadError(f"{source}: missing parameter {pname!r} (expected shape "
                                    f"{shape}) for network {self.name}")
            value = np.asarray(params[pname])
            if tuple(value.shape) != shape:
                raise WorkloadError(f"{source}: parameter {pname!r} has shape {tuple(value.shape)}, "
                                    f"network {self.name} expects {shape}")
            out[pname] = value.astype(np.float32, copy=False)
        return out

    def weight_matrix(self, params: Mapping[str, np.ndarray], layer: MatrixLayer) -> np.ndarray:
        """The layer's weights as the (K, N) matrix that goes onto arrays."""
        return layer.weight_matrix(params)

    def with_layers(self, layers) -> "Network":
        return dataclasses.replace(self, layers=tuple(layers))


# ------------------------------------------------------------------------------------------
# The graph walk
# ------------------------------------------------------------------------------------------

def walk(net: Network, x: np.ndarray, step: Callable[[Layer, list], np.ndarray], *,
         keep: Callable[[str], bool] | None = None) -> np.ndarray | dict[str, np.ndarray]:
    """Run ``step(layer, inputs)`` over the graph in order, each activation freed after its last
    use. With ``keep``, returns every activation whose name it accepts (plus the output) instead of
    the output alone. The one traversal of every pass (FP32, analog, training)."""
    return _evaluate(x, [(layer.name, layer.inputs, functools.partial(step, layer))
                         for layer in net.layers], net.output, keep)


Node = tuple[str, Sequence[str], Callable[[list], np.ndarray]]


def _evaluate(x: np.ndarray, nodes: Sequence[Node], output: str,
              keep: Callable[[str], bool] | None) -> np.ndarray | dict[str, np.ndarray]:
    """``nodes`` (name, input names, compute(inputs)) in order from the network input ``x``, each
    value freed after its last use; the ``output`` value, or with ``keep`` every value it accepts
    (plus the output)."""
    values: dict[str, np.ndarray] = {INPUT: x}
    refcount: dict[str, int] = {}
    for _, inputs, _ in nodes:
        for src in inputs:
            refcount[src] = refcount.get(src, 0) + 1
    kept: dict[str, np.ndarray] = {}
    for name, inputs, compute in nodes:
        values[name] = compute([values[s] for s in inputs])
        if keep is not None and keep(name):
            kept[name] = values[name]
        for src in inputs:
            refcount[src] -= 1
            if refcount[src] == 0 and src != INPUT:
                del values[src]
    if keep is not None:
        kept[output] = values[output]
        return kept
    return values[output]


@dataclass(frozen=True)
class Step:
    """One step of an inference pass: ``layer`` on ``inputs``, producing the value ``output``.
    A fused step is a matrix layer with the ``epilogue`` of the layers after it (``inputs``: the
    matrix layer's input, then the residual operand of a fused Add); it runs where its last layer
    stands in the graph order, when every operand exists."""
    layer: Layer
    inputs: tuple[str, ...]
    output: str
    epilogue: Epilogue | None = None


def fusion_plan(net: Network, *, batchnorm: bool = True,
                keep: Callable[[str], bool] | None = None) -> tuple[Step, ...]:
    """The steps of an inference pass: each matrix layer with the chain after it that its output
    stage can apply (BatchNorm -> residual Add -> ReLU/Clip, any of them, in that order; each
    link the only consumer of the previous one, never a value ``keep`` asks for or the network
    output), every other layer alone. ``batchnorm=False`` leaves BatchNorms unfused (a pass that
    replaces them, e.g. with batch statistics)."""
    key = (batchnorm,)
    if keep is None and key in net._plans:
        return net._plans[key]
    users = net.consumers()
    position = {layer.name: i for i, layer in enumerate(net.layers)}
    fused_into: dict[str, str] = {}
    chains: dict[str, Epilogue] = {}
    for layer in net.layers:
        if not layer.is_matrix:
            continue
        epi, tail = Epilogue(), layer.name
        while len(users[tail]) == 1 and tail != net.output and not (keep and keep(tail)):
            nxt = net.layer(users[tail][0])
            part = nxt.epilogue_part(tail)
            if part is None or (not batchnorm and "batchnorm" in part):
                break
            if "residual" in part and net.shape(part["residual"]) != net.shape(tail):
                break
            grown = epi.add(nxt, part)
            if grown is None:
                break
            epi, tail = grown, nxt.name
        if epi.layers:
            chains[layer.name] = epi
            for fused in epi.layers:
                fused_into[fused.name] = layer.name
    steps: list[tuple[int, Step]] = []
    for layer in net.layers:
        if layer.name in fused_into:
            continue
        epi = chains.get(layer.name)
        if epi is None:
            steps.append((position[layer.name], Step(layer, layer.inputs, layer.name)))
        else:
            inputs = layer.inputs + ((epi.residual,) if epi.residual is not None else ())
            steps.append((position[epi.output], Step(layer, inputs, epi.output, epi)))
    plan = tuple(step for _, step in sorted(steps, key=lambda item: item[0]))
    if keep is None:
        net._plans[key] = plan
    return plan


def run_steps(net: Network, x: np.ndarray, steps: tuple[Step, ...], run: Pass, *,
              keep: Callable[[str], bool] | None = None) -> np.ndarray | dict[str, np.ndarray]:
    """The inference walk over ``steps`` (:func:`fusion_plan`), each value freed after its last
    use; like :func:`walk`, with ``keep`` it returns the values ``keep`` accepts (and the output)."""

    def compute(step: Step, xs: list) -> np.ndarray:
        if not step.layer.is_matrix or run.tape is not None:
            out = step.layer.forward(xs, run)
        else:
            epi = step.epilogue
            residual = xs[1] if epi is not None and epi.residual is not None else None
            if run.fused_matmul is not None:
                out = run.fused_matmul(step.layer, xs[0], epi, residual, run)
            else:
                out = step.layer.forward_fused(xs[0], epi, residual, run)
        return out.astype(np.float32, copy=False)

    return _evaluate(x, [(step.output, step.inputs, functools.partial(compute, step))
                         for step in steps], net.output, keep)


# images per chunk of an inference pass: about this many MACs, so that the per-layer Python work
# is small beside the arithmetic (the patch matrices are written in blocks or groups that stay in
# cache whatever the chunk); the chunk count is a multiple of CHUNK_MULTIPLE (near-equal chunks),
# so that 1, 2 or 4 threads get equal shares. Neither depends on the thread count: the chunks,
# and so the numbers, are the same on any. Measured (ResNet-32, 2 threads, native kernels; the
# same logits): analog at 1 day 1e9 / 2e9 / 4e9 / 8e9 MACs -> 0.91-0.96 / 0.85-0.90 /
# 0.82-0.88 / 0.82-0.85 ms per image (batch 128: 12 / 8 / 4 / 4 chunks); FP32 batch 512 1e9 ->
# 1,649-1,668 images/s, 4e9 -> 1,817-1,832.
CHUNK_MACS = 4_000_000_000
CHUNK_MULTIPLE = 4


def chunk_bounds(net: Network, batch: int, chunk: int | None = None) -> list[tuple[int, int]]:
    """[first, end) images of each chunk of a batch (``chunk``: images per chunk, else about
    CHUNK_MACS each, the count rounded up to a multiple of CHUNK_MULTIPLE)."""
    if chunk is not None:
        size = max(1, int(chunk))
        return [(i, min(batch, i + size)) for i in range(0, batch, size)]
    per = max(1, CHUNK_MACS // max(1, net.total_macs()))
    count = -(-batch // per)
    count = min(batch, -(-count // CHUNK_MULTIPLE) * CHUNK_MULTIPLE)
    edges = np.linspace(0, batch, count + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def infer(net: Network, x: np.ndarray, make_pass: Callable[[int, Workspace], Pass], *,
          keep: Callable[[str], bool] | None = None, batchnorm_fusion: bool = True,
          chunk: int | None = None, workspace: Workspace | None = None
          ) -> np.ndarray | dict[str, np.ndarray]:
    """An inference pass over the batch ``x``: split into chunks (:func:`chunk_bounds`: they
    depend on the batch and the chunk size only), each walked
    through the fused steps of :func:`fusion_plan` with ``make_pass(first image, workspace)``, on
    the worker threads of :mod:`archsim.threads`. The results are the same on any number of
    threads."""
    return infer_many(net, [(x, make_pass)], keep=keep, batchnorm_fusion=batchnorm_fusion,
                      chunk=chunk, workspace=workspace)[0]


def infer_many(net: Network, batches: Sequence[tuple[np.ndarray, Callable[[int, Workspace], Pass]]],
               *, keep: Callable[[str], bool] | None = None, batchnorm_fusion: bool = True,
               chunk: int | None = None, workspace: Workspace | None = None) -> list:
    """:func:`infer` of several batches, each ``(x, make_pass)``, in one go: the chunks of all of
    them run on the worker threads together, so a thread that finishes its last chunk of one
    batch goes on with the next batch instead of waiting for the others (the numbers of each
    batch are those of :func:`infer` on it alone)."""
    steps = fusion_plan(net, batchnorm=batchnorm_fusion, keep=keep)
    ws = workspace if workspace is not None else Workspace()
    xs = [np.asarray(x, dtype=np.float32) for x, _ in batches]
    tasks = [(b, i0, i1) for b, x in enumerate(xs) if len(x)
             for i0, i1 in chunk_bounds(net, x.shape[0], chunk)]
    parts: list = [None] * len(tasks)

    def task(i: int, slot: int) -> None:
        b, i0, i1 = tasks[i]
        parts[i] = run_steps(net, xs[b][i0:i1], steps, batches[b][1](i0, ws.worker(slot)),
                             keep=keep)

    with threads.inference_threads():
        threads.run_chunks(task, len(tasks))
    outs = []
    for b, x in enumerate(xs):
        mine = [parts[i] for i, t in enumerate(tasks) if t[0] == b]
        if not mine:
            empty = np.zeros((0,) + net.shape(net.output), np.float32)
            outs.append(empty if keep is None else {net.output: empty})
        elif len(mine) == 1:
            outs.append(mine[0])
        elif keep is None:
            outs.append(np.concatenate(mine))
        else:
            outs.append({name: np.concatenate([p[name] for p in mine]) for name in mine[0]})
    return outs


def matrix_input(layer: MatrixLayer, x: np.ndarray, workspace: Workspace | None = None) -> np.ndarray:
    """The 2-D input of a matrix layer: im2col patches for conv, the batch for linear."""
    return layer.matrix_input(x, workspace)


def forward(net: Network, params: Mapping[str, np.ndarray], x: np.ndarray, *,
            matmul: MatmulHook | None = None, batchnorm: BatchnormHook | None = None,
            keep: Callable[[str], bool] | None = None, workspace: Workspace | None = None,
            matrix_input_hook: MatrixInputHook | None = None
            ) -> np.ndarray | dict[str, np.ndarray]:
    """Run the graph on a batch ``x`` (N, H, W, C) (internal layout; see :func:`fp32_logits` for
    the model's own).

    ``matmul(layer, a)`` computes the (P, K) @ (K, N) product of a matrix layer (default: FP32 with
    the layer's weights); bias is added after it. ``batchnorm(layer, x)`` replaces a BatchNorm layer
    (default: eval-mode affine). With ``keep``, returns every activation whose name it accepts
    (plus the output) instead of the output alone. ``workspace`` reuses im2col buffers across
    calls (pass one when running many batches of one size). ``matrix_input_hook(layer, a,
    workspace)`` replaces :func:`matrix_input` (e.g. to build and quantize patches in one pass).
    """
    if matmul is None and batchnorm is None and matrix_input_hook is None:
        shared: dict = {}
        return infer(net, x, lambda first, ws: Pass(params, ws, first_image=first, shared=shared),
                     keep=keep, workspace=workspace)
    run = Pass(params, workspace if workspace is not None else Workspace(), matmul=matmul,
               matrix_input=matrix_input_hook, batchnorm=batchnorm)
    return walk(net, np.asarray(x, dtype=np.float32),
                lambda layer, xs: layer.forward(xs, run).astype(np.float32, copy=False), keep=keep)


def predict(net: Network, params: Mapping[str, np.ndarray], x: np.ndarray, batch_size: int = 500,
            **hooks) -> np.ndarray:
    """Class predictions for a dataset, processed in batches."""
    workspace = hooks.pop("workspace", None) or Workspace()
    preds = [np.argmax(forward(net, params, x[i:i + batch_size], workspace=workspace, **hooks), axis=1)
             for i in range(0, len(x), batch_size)]
    return np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64)


def to_internal_layout(net: Network, x: np.ndarray) -> np.ndarray:
    """A batch in the model's own input layout -> the internal NHWC one (checked)."""
    x = np.asarray(x, np.float32)
    h_w_c = net.input_shape
    if net.input_layout == "NCHW" and len(h_w_c) == 3:
        expected = (h_w_c[2], h_w_c[0], h_w_c[1])
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise WorkloadError(f"network {net.name}: expects inputs of shape (N, "
                                f"{', '.join(map(str, expected))}) (NCHW), got {x.shape}")
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    if x.ndim != len(h_w_c) + 1 or tuple(x.shape[1:]) != h_w_c:
        raise WorkloadError(f"network {net.name}: expects inputs of shape (N, "
                            f"{', '.join(map(str, h_w_c))}), got {x.shape}")
    return x


def fp32_logits(network: Network, params: Mapping[str, np.ndarray], x: np.ndarray,
                batch_size: int = 500) -> np.ndarray:
    """The FP32 reference output for ``x`` given in the model's own input layout (NCHW for an
    ONNX model from PyTorch, NHWC for the built-in networks), in batches. A spatial output comes
    back in that layout too."""
    xi = to_internal_layout(network, x)
    workspace = Workspace()
    outs = [forward(network, params, xi[i:i + batch_size], workspace=workspace)
            for i in range(0, len(xi), batch_size)]
    out = np.concatenate(outs) if outs else np.zeros((0,) + network.shape(network.output),
                                                     np.float32)
    if network.input_layout == "NCHW" and out.ndim == 4:
        out = np.ascontiguousarray(out.transpose(0, 3, 1, 2))
    return out


# ------------------------------------------------------------------------------------------
# Built-in networks
# ------------------------------------------------------------------------------------------

def _conv_bn_relu(layers: list[Layer], prefix: str, src: str, conv: str, bn: str, out: int,
                  stride: int = 1, relu: str | None = None) -> str:
    layers.append(Layer(f"{prefix}{conv}", "conv2d", (src,), out_channels=out, kernel=3,
                        stride=stride, padding=1))
    layers.append(Layer(f"{prefix}{bn}", "batchnorm", (f"{prefix}{conv}",)))
    if relu is None:
        return f"{prefix}{bn}"
    layers.append(Layer(f"{prefix}{relu}", "relu", (f"{prefix}{bn}",)))
    return f"{prefix}{relu}"


def resnet_cifar(depth: int = 32, num_classes: int = 10, name: str | None = None) -> Network:
    """The CIFAR ResNet of He et al. with option-A shortcuts (akamaster/pytorch_resnet_cifar10
    parameter names): 3x3 stem, three stages of (depth-2)/6 basic blocks at 16/32/64 channels,
    global average pool, FC."""
    if (depth - 2) % 6:
        raise WorkloadError(f"resnet depth must be 6n+2, got {depth}")
    blocks = (depth - 2) // 6
    layers: list[Layer] = []
    x = _conv_bn_relu(layers, "", INPUT, "conv1", "bn1", 16, relu="relu")
    in_ch = 16
    for stage, ch in enumerate((16, 32, 64), start=1):
        for b in range(blocks):
            p = f"layer{stage}.{b}."
            stride = 2 if (stage > 1 and b == 0) else 1
            h = _conv_bn_relu(layers, p, x, "conv1", "bn1", ch, stride, relu="relu1")
            h = _conv_bn_relu(layers, p, h, "conv2", "bn2", ch)
            shortcut = x
            if stride != 1 or in_ch != ch:
                layers.append(Layer(p + "shortcut", "shortcut_a", (x,), out_channels=ch))
                shortcut = p + "shortcut"
            layers.append(Layer(p + "add", "add", (h, shortcut)))
            layers.append(Layer(p + "relu2", "relu", (p + "add",)))
            x = p + "relu2"
            in_ch = ch
    layers.append(Layer("avgpool", "globalavgpool", (x,)))
    layers.append(Layer("linear", "linear", ("avgpool",), out_channels=num_classes, bias=True))
    return Network(name or f"resnet{depth}_cifar10", (32, 32, 3), tuple(layers), num_classes)


def digits_cnn() -> Network:
    """A small CNN for the 8x8 scikit-learn digits: two analog-sized convs between a digital stem
    and a digital classifier under the hybrid policy."""
    layers: list[Layer] = []
    x = _conv_bn_relu(layers, "", INPUT, "conv1", "bn1", 16, relu="relu1")
    x = _conv_bn_relu(layers, "", x, "conv2", "bn2", 32, relu="relu2")
    layers.append(Layer("pool", "maxpool", (x,), kernel=2, stride=2))
    x = _conv_bn_relu(layers, "", "pool", "conv3", "bn3", 32, relu="relu3")
    layers.append(Layer("avgpool", "globalavgpool", (x,)))
    layers.append(Layer("linear", "linear", ("avgpool",), out_channels=10, bias=True))
    return Network("digits_cnn", (8, 8, 1), tuple(layers), 10)


BUILTIN_NETWORKS: dict[str, Callable[[], Network]] = {
    "resnet32_cifar10": lambda: resnet_cifar(32),
    "resnet20_cifar10": lambda: resnet_cifar(20),
    "digits_cnn": digits_cnn,
}


def init_params(net: Network, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """He-normal weights, zero biases, identity BatchNorm: a network ready to train from scratch."""
    params = {}
    for pname, spec in net.param_specs().items():
        shape = tuple(spec.shape)
        if spec.init == "he":
            fan_in = int(np.prod(shape[1:]))
            params[pname] = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        elif spec.init == "ones":
            params[pname] = np.ones(shape, np.float32)
        else:
            params[pname] = np.zeros(shape, np.float32)
    return params
