"""The network IR: a layer graph with shapes, MAC counts and the FP32 reference forward pass.

Activations are NHWC float32 arrays (N, H, W, C), or (N, F) after Flatten/GlobalAvgPool. A conv
layer is computed GEMM-bound: im2col patches of K = Cin*kh*kw values in (c, i, j) order - the order
of an OIHW kernel flattened - times the (K, Cout) weight matrix, for the whole batch in one matmul.
That 2-D form is exactly what :mod:`archsim.mapping` places on crossbar arrays, and the functional
simulation swaps the matmul for the analog one through the ``matmul`` hook of :func:`forward`.

Parameters live outside the graph, in a dict keyed by PyTorch-style names (``conv1.weight``,
``layer2.0.bn1.running_mean``, ``linear.bias``); each layer knows the names and shapes it needs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .errors import WorkloadError

INPUT = "input"
MATRIX_KINDS = ("conv2d", "linear")
SPATIAL_KINDS = ("conv2d", "maxpool", "avgpool", "globalavgpool", "shortcut_a")
KINDS = ("conv2d", "linear", "batchnorm", "relu", "maxpool", "avgpool", "globalavgpool", "add",
         "shortcut_a", "flatten")


@dataclass(frozen=True)
class Layer:
    """One node of the graph. Fields not used by a kind keep their defaults."""
    name: str
    kind: str
    inputs: tuple[str, ...]
    out_channels: int = 0          # conv2d, shortcut_a; out_features for linear
    kernel: int = 1                # conv2d, pools (square)
    stride: int = 1
    padding: int = 0
    bias: bool = False             # conv2d, linear
    eps: float = 1e-5              # batchnorm

    @property
    def is_matrix(self) -> bool:
        """Conv and Linear layers: the ones that become weight matrices on arrays."""
        return self.kind in MATRIX_KINDS


@dataclass(frozen=True)
class Network:
    name: str
    input_shape: tuple[int, int, int]      # (H, W, C)
    layers: tuple[Layer, ...]
    num_classes: int

    def __post_init__(self):
        seen = {INPUT}
        for layer in self.layers:
            if layer.kind not in KINDS:
                raise WorkloadError(f"network {self.name}: layer {layer.name}: unknown kind "
                                    f"{layer.kind!r} (expected one of {', '.join(KINDS)})")
            if layer.name in seen:
                raise WorkloadError(f"network {self.name}: duplicate layer name {layer.name!r}")
            for src in layer.inputs:
                if src not in seen:
                    raise WorkloadError(f"network {self.name}: layer {layer.name}: input {src!r} "
                                        "is not an earlier layer")
            seen.add(layer.name)
        object.__setattr__(self, "_shapes", _infer_shapes(self))

    # ---- structure -----------------------------------------------------------------------
    @property
    def output(self) -> str:
        return self.layers[-1].name

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def matrix_layers(self) -> list[Layer]:
        return [layer for layer in self.layers if layer.is_matrix]

    def shape(self, name: str) -> tuple[int, ...]:
        """Output shape of a layer (without the batch axis); ``input`` for the input."""
        return self._shapes[name]

    def input_shape_of(self, layer: Layer) -> tuple[int, ...]:
        return self._shapes[layer.inputs[0]]

    def consumers(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {INPUT: []}
        for layer in self.layers:
            out[layer.name] = []
            for src in layer.inputs:
                out[src].append(layer.name)
        return out

    def matrix_shape(self, layer: Layer) -> tuple[int, int]:
        """(K, N): rows (inputs per MVM) and columns (outputs) of the layer's weight matrix."""
        in_shape = self.input_shape_of(layer)
        if layer.kind == "conv2d":
            return in_shape[2] * layer.kernel * layer.kernel, layer.out_channels
        if layer.kind == "linear":
            return int(np.prod(in_shape)), layer.out_channels
        raise ValueError(f"{layer.name} is not a matrix layer")

    def mvms_per_inference(self, layer: Layer) -> int:
        """MVMs (one per output pixel) a matrix layer needs for one input."""
        if layer.kind == "conv2d":
            h, w, _ = self.shape(layer.name)
            return h * w
        return 1

    def macs(self, layer: Layer) -> int:
        if not layer.is_matrix:
            return 0
        k, n = self.matrix_shape(layer)
        return k * n * self.mvms_per_inference(layer)

    def total_macs(self) -> int:
        return sum(self.macs(layer) for layer in self.layers)

    # ---- parameters ----------------------------------------------------------------------
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter the network needs, PyTorch names -> shape."""
        shapes: dict[str, tuple[int, ...]] = {}
        for layer in self.layers:
            in_shape = self._shapes[layer.inputs[0]] if layer.inputs else ()
            if layer.kind == "conv2d":
                shapes[f"{layer.name}.weight"] = (layer.out_channels, in_shape[2], layer.kernel,
                                                  layer.kernel)
            elif layer.kind == "linear":
                shapes[f"{layer.name}.weight"] = (layer.out_channels, int(np.prod(in_shape)))
            elif layer.kind == "batchnorm":
                for p in ("weight", "bias", "running_mean", "running_var"):
                    shapes[f"{layer.name}.{p}"] = (in_shape[-1],)
            if layer.is_matrix and layer.bias:
                shapes[f"{layer.name}.bias"] = (layer.out_channels,)
        return shapes

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

    def weight_matrix(self, params: Mapping[str, np.ndarray], layer: Layer) -> np.ndarray:
        """The layer's weights as the (K, N) matrix that goes onto arrays."""
        w = params[f"{layer.name}.weight"]
        return np.ascontiguousarray(w.reshape(w.shape[0], -1).T)

    def with_layers(self, layers) -> "Network":
        return dataclasses.replace(self, layers=tuple(layers))


def _infer_shapes(net: Network) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {INPUT: tuple(net.input_shape)}
    for layer in net.layers:
        ins = [shapes[s] for s in layer.inputs]
        x = ins[0]
        where = f"network {net.name}: layer {layer.name}"
        if layer.kind in SPATIAL_KINDS and len(x) != 3:
            raise WorkloadError(f"{where}: expects an (H, W, C) input, got {x}")
        if layer.kind == "conv2d":
            h, w, _ = x
            ho = (h + 2 * layer.padding - layer.kernel) // layer.stride + 1
            wo = (w + 2 * layer.padding - layer.kernel) // layer.stride + 1
            if ho < 1 or wo < 1:
                raise WorkloadError(f"{where}: kernel {layer.kernel} does not fit input {x}")
            shapes[layer.name] = (ho, wo, layer.out_channels)
        elif layer.kind in ("maxpool", "avgpool"):
            h, w, c = x
            stride = layer.stride
            shapes[layer.name] = ((h - layer.kernel) // stride + 1, (w - layer.kernel) // stride + 1, c)
        elif layer.kind == "globalavgpool":
            shapes[layer.name] = (x[2],)
        elif layer.kind == "flatten":
            shapes[layer.name] = (int(np.prod(x)),)
        elif layer.kind == "linear":
            shapes[layer.name] = (layer.out_channels,)
        elif layer.kind == "shortcut_a":
            h, w, c = x
            if (layer.out_channels - c) % 2 or layer.out_channels < c:
                raise WorkloadError(f"{where}: cannot pad {c} channels to {layer.out_channels}")
            shapes[layer.name] = ((h + 1) // 2, (w + 1) // 2, layer.out_channels)
        elif layer.kind == "add":
            if len(ins) != 2 or ins[0] != ins[1]:
                raise WorkloadError(f"{where}: add needs two inputs of one shape, got {ins}")
            shapes[layer.name] = x
        else:  # batchnorm, relu
            shapes[layer.name] = x
    return shapes


# ------------------------------------------------------------------------------------------
# Reference operators (numpy, float32, batched)
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


def im2col(x: np.ndarray, kernel: int, stride: int, padding: int,
           workspace: Workspace | None = None) -> np.ndarray:
    """(N, H, W, C) -> (N*Ho*Wo, C*kernel*kernel) patches in (c, i, j) order - the order of an
    OIHW kernel flattened. With a workspace the result lives in its buffer (valid until the next
    call with the same shape)."""
    from .kernels import im2col_into
    n, h, w, c = x.shape
    ho = (h + 2 * padding - kernel) // stride + 1
    wo = (w + 2 * padding - kernel) // stride + 1
    shape = (n * ho * wo, c * kernel * kernel)
    out = workspace.get("im2col", shape) if workspace is not None else np.empty(shape, np.float32)
    return im2col_into(np.asarray(x, np.float32), kernel, stride, padding, ho, wo, out)


def pool(x: np.ndarray, kernel: int, stride: int, op: str) -> np.ndarray:
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


def matrix_input(layer: Layer, x: np.ndarray, workspace: Workspace | None = None) -> np.ndarray:
    """The 2-D input of a matrix layer: im2col patches for conv, the batch for linear."""
    if layer.kind == "conv2d":
        return im2col(x, layer.kernel, layer.stride, layer.padding, workspace)
    return x.reshape(x.shape[0], -1)


MatmulHook = Callable[[Layer, np.ndarray], np.ndarray]
MatrixInputHook = Callable[[Layer, np.ndarray, "Workspace"], np.ndarray]
BatchnormHook = Callable[[Layer, np.ndarray], np.ndarray]


def forward(net: Network, params: Mapping[str, np.ndarray], x: np.ndarray, *,
            matmul: MatmulHook | None = None, batchnorm: BatchnormHook | None = None,
            keep: Callable[[str], bool] | None = None, workspace: Workspace | None = None,
            matrix_input_hook: MatrixInputHook | None = None
            ) -> np.ndarray | dict[str, np.ndarray]:
    """Run the graph on a batch ``x`` (N, H, W, C).

    ``matmul(layer, a)`` computes the (P, K) @ (K, N) product of a matrix layer (default: FP32 with
    the layer's weights); bias is added after it. ``batchnorm(layer, x)`` replaces a BatchNorm layer
    (default: eval-mode affine). With ``keep``, returns every activation whose name it accepts
    (plus the output) instead of the output alone. ``workspace`` reuses im2col buffers across
    calls (pass one when running many batches of one size). ``matrix_input_hook(layer, a,
    workspace)`` replaces :func:`matrix_input` (e.g. to build and quantize patches in one pass).
    """
    workspace = workspace if workspace is not None else Workspace()
    values: dict[str, np.ndarray] = {INPUT: np.asarray(x, dtype=np.float32)}
    refcount = {name: len(users) for name, users in net.consumers().items()}
    kept: dict[str, np.ndarray] = {}
    for layer in net.layers:
        a = values[layer.inputs[0]]
        if layer.is_matrix:
            cols = (matrix_input_hook or matrix_input)(layer, a, workspace)
            if matmul is None:
                out = cols @ net.weight_matrix(params, layer)
            else:
                out = matmul(layer, cols)
            if layer.bias:
                out = out + params[f"{layer.name}.bias"]
            if layer.kind == "conv2d":
                ho, wo, co = net.shape(layer.name)
                out = out.reshape(a.shape[0], ho, wo, co)
        elif layer.kind == "batchnorm":
            if batchnorm is not None:
                out = batchnorm(layer, a)
            else:
                scale, offset = batchnorm_affine(params, layer.name, layer.eps)
                out = a * scale + offset
        elif layer.kind == "relu":
            out = np.maximum(a, 0)
        elif layer.kind == "maxpool":
            out = pool(a, layer.kernel, layer.stride, "max")
        elif layer.kind == "avgpool":
            out = pool(a, layer.kernel, layer.stride, "mean")
        elif layer.kind == "globalavgpool":
            out = a.mean(axis=(1, 2), dtype=np.float32)
        elif layer.kind == "flatten":
            # PyTorch order (C, H, W), so weights trained there fit
            out = a.transpose(0, 3, 1, 2).reshape(a.shape[0], -1) if a.ndim == 4 else a
        elif layer.kind == "shortcut_a":
            out = shortcut_a(a, layer.out_channels)
        elif layer.kind == "add":
            out = a + values[layer.inputs[1]]
        else:  # pragma: no cover - kinds are checked at construction
            raise AssertionError(layer.kind)
        values[layer.name] = out.astype(np.float32, copy=False)
        if keep is not None and keep(layer.name):
            kept[layer.name] = values[layer.name]
        for src in layer.inputs:
            refcount[src] -= 1
            if refcount[src] == 0 and src != INPUT:
                del values[src]
    if keep is not None:
        kept[net.output] = values[net.output]
        return kept
    return values[net.output]


def predict(net: Network, params: Mapping[str, np.ndarray], x: np.ndarray, batch_size: int = 500,
            **hooks) -> np.ndarray:
    """Class predictions for a dataset, processed in batches."""
    workspace = hooks.pop("workspace", None) or Workspace()
    preds = [np.argmax(forward(net, params, x[i:i + batch_size], workspace=workspace, **hooks), axis=1)
             for i in range(0, len(x), batch_size)]
    return np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64)


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
    for pname, shape in net.param_shapes().items():
        if pname.endswith(".weight") and len(shape) > 1:
            fan_in = int(np.prod(shape[1:]))
            params[pname] = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        elif pname.endswith((".weight", ".running_var")):
            params[pname] = np.ones(shape, np.float32)
        else:
            params[pname] = np.zeros(shape, np.float32)
    return params
