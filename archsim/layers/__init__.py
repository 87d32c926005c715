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

Adding a kind means adding one class to the module of its family (and its tests). ``Layer(name, kind, inputs, **attrs)``
builds the registered class of ``kind``; square kernels, strides and paddings may be given as ints.

Activations are NHWC float arrays (N, H, W, C), or (N, F) for features; shapes below leave out the
batch axis. A conv multiplies im2col patches of K = Cin*kh*kw values in (c, i, j) order - an OIHW
kernel flattened - by the (K, N) weight matrix. A grouped conv's matrix is block-diagonal: group g
owns rows [g*K/G, (g+1)*K/G) and columns [g*N/G, (g+1)*N/G); :mod:`archsim.mapping` places whole
groups on arrays and leaves the devices off the diagonal blocks unprogrammed (RESET, 0 conductance).
"""

from __future__ import annotations

from .base import (INPUT, ONNX_OPS, REGISTRY, AffineHook, BatchnormHook, Epilogue,  # noqa: F401
                   Layer, LayerError, MatmulHook, MatrixInputHook, MatrixView, ParamSpec, Pass,
                   Tape, Workspace, layer_class)
from .ops import (PatchLayout, batchnorm_affine, col2im_general, im2col,  # noqa: F401
                  im2col_general, pool, shortcut_a)
from .matrix import Conv2d, Linear, MatrixLayer  # noqa: F401
from .pointwise import (BatchNorm, Clip, Elementwise, HardSigmoid, HardSwish,  # noqa: F401
                        LeakyRelu, Relu, Sigmoid, Tanh)
from .pooling import AvgPool, GlobalAvgPool, MaxPool, Pool  # noqa: F401
from .tensor import Add, Binary, Concat, Flatten, Mul, Pad, ShortcutA, Slice  # noqa: F401

KINDS = tuple(REGISTRY)
