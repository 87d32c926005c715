"""Small ONNX models built with ``onnx.helper`` for the tests (no torch), and the onnxruntime
reference they are checked against."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class Graph:
    """A tiny graph builder: ``g.op("Relu", [x])`` appends a node and returns its output name."""

    def __init__(self, shape=("N", 3, 8, 8), opset: int = 17, seed: int = 0, name: str = "g"):
        self.shape = shape
        self.opset = opset
        self.name = name
        self.nodes: list = []
        self.inits: list = []
        self.rng = np.random.default_rng(seed)
        self.count = 0
        self.input = "x"

    def _name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def init(self, value, name: str | None = None) -> str:
        name = name or self._name("w")
        value = np.asarray(value)
        if value.dtype == np.float64:
            value = value.astype(np.float32)
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def rand(self, *shape, scale: float = 0.5) -> np.ndarray:
        return (self.rng.standard_normal(shape) * scale).astype(np.float32)

    def const(self, value) -> str:
        """A Constant node (what TorchScript exports emit)."""
        out = self._name("c")
        value = np.asarray(value)
        self.nodes.append(helper.make_node("Constant", [], [out], name=out + "_node",
                                           value=numpy_helper.from_array(value)))
        return out

    def op(self, op_type: str, inputs, name: str | None = None, outputs: int = 1, **attrs):
        name = name or self._name(op_type.lower())
        outs = [f"{name}_out{i}" if i else f"{name}_out" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=name, **attrs))
        return outs[0] if outputs == 1 else outs

    # ---- layers with weights ---------------------------------------------------------------
    def conv(self, x, cin, cout, k=3, bias=True, group=1, name=None, **attrs):
        kh, kw = (k, k) if isinstance(k, int) else k
        w = self.init(self.rand(cout, cin // group, kh, kw, scale=(2.0 / (cin // group * kh * kw)) ** 0.5))
        ins = [x, w] + ([self.init(self.rand(cout, scale=0.1))] if bias else [])
        return self.op("Conv", ins, name=name, kernel_shape=[kh, kw], group=group, **attrs)

    def bn(self, x, c, eps=1e-5, name=None):
        ins = [x, self.init(1 + self.rand(c, scale=0.2)), self.init(self.rand(c, scale=0.2)),
               self.init(self.rand(c, scale=0.2)), self.init(0.5 + self.rng.random(c))]
        return self.op("BatchNormalization", ins, name=name, epsilon=eps)

    def relu6(self, x, name=None):
        return self.op("Clip", [x, self.const(np.float32(0)), self.const(np.float32(6))], name=name)

    def gemm(self, x, fin, fout, name=None, **attrs):
        w = self.init(self.rand(fout, fin, scale=(1.0 / fin) ** 0.5))
        return self.op("Gemm", [x, w, self.init(self.rand(fout, scale=0.1))], name=name,
                       transB=1, **attrs)

    def flatten(self, x):
        return self.op("Flatten", [x], axis=1)

    # ---- the model -------------------------------------------------------------------------
    def model(self, out: str, outputs=None, inputs=None) -> onnx.ModelProto:
        x = helper.make_tensor_value_info(self.input, TensorProto.FLOAT, list(self.shape))
        ys = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in (outputs or [out])]
        graph = helper.make_graph(self.nodes, self.name, inputs or [x], ys, initializer=self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)],
                                  producer_name="archsim-tests")
        # output types as onnx's own shape inference finds them (the checker wants a shape)
        inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(model).graph.output}
        for out_info in model.graph.output:
            if out_info.name in inferred:
                out_info.CopyFrom(inferred[out_info.name])
        return model


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def ort_run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """onnxruntime's answer, graph optimizations off: its plain CPU kernels are the reference
    (onnxruntime 1.32's NCHWc rewrite rejects a SAME_LOWER conv with an even kernel that its
    plain kernel computes)."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def without_attribute(model: onnx.ModelProto, node_name: str, attr: str) -> onnx.ModelProto:
    """The model with one attribute of one node removed (its default applies)."""
    m = copy.deepcopy(model)
    node = next(n for n in m.graph.node if n.name == node_name)
    keep = [a for a in node.attribute if a.name != attr]
    assert len(keep) < len(node.attribute), (node_name, attr)
    del node.attribute[:]
    node.attribute.extend(keep)
    return m


def mobilenet(seed: int = 0, opset: int = 17) -> onnx.ModelProto:
    """A MobileNetV2-style network for the 8x8 digits: a 3x3 stem, two inverted residual blocks
    (1x1 expansion, 3x3 depthwise, 1x1 linear projection; BatchNorm and ReLU6 after each but the
    projection; the first with its residual Add, the second with stride 2), a 1x1 head, global
    pool, FC. Random weights (He-normal)."""
    g = Graph(("N", 1, 8, 8), opset=opset, seed=seed, name="mobilenet_digits")
    x = g.relu6(g.bn(g.conv("x", 1, 8, 3, bias=False, pads=[1, 1, 1, 1], name="stem"), 8,
                     name="stem_bn"), name="stem_relu6")
    # block 1: 8 -> 16 -> 8, stride 1, residual
    h = g.relu6(g.bn(g.conv(x, 8, 16, 1, bias=False, name="b1_expand"), 16, name="b1_expand_bn"))
    h = g.relu6(g.bn(g.conv(h, 16, 16, 3, bias=False, group=16, pads=[1, 1, 1, 1],
                            name="b1_dw"), 16, name="b1_dw_bn"))
    h = g.bn(g.conv(h, 16, 8, 1, bias=False, name="b1_project"), 8, name="b1_project_bn")
    x = g.op("Add", [h, x], name="b1_add")
    # block 2: 8 -> 24 -> 12, stride 2
    h = g.relu6(g.bn(g.conv(x, 8, 24, 1, bias=False, name="b2_expand"), 24, name="b2_expand_bn"))
    h = g.relu6(g.bn(g.conv(h, 24, 24, 3, bias=False, group=24, pads=[1, 1, 1, 1],
                            strides=[2, 2], name="b2_dw"), 24, name="b2_dw_bn"))
    x = g.bn(g.conv(h, 24, 12, 1, bias=False, name="b2_project"), 12, name="b2_project_bn")
    x = g.relu6(g.bn(g.conv(x, 12, 32, 1, bias=False, name="head"), 32, name="head_bn"))
    x = g.flatten(g.op("GlobalAveragePool", [x], name="pool"))
    return g.model(g.gemm(x, 32, 10, name="classifier"))
