"""Layer kinds: the registry and construction helper, shape errors, and for every kind added for
ONNX its training backward against central finite differences (float64) and its training forward
(eval mode) against the inference forward."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from archsim import layers as L
from archsim import network as nw
from archsim.errors import WorkloadError
from archsim.network import INPUT, Layer, Network
from archsim.training import backward, forward_train


def _net(layers, input_shape) -> Network:
    return Network("t", input_shape, tuple(layers), 10)


def _params64(net: Network, rng) -> dict[str, np.ndarray]:
    p = {k: v.astype(np.float64) for k, v in nw.init_params(net, rng).items()}
    for k, spec in net.param_specs().items():
        if spec.init != "he":
            p[k] = p[k] + 0.3 * rng.standard_normal(p[k].shape)
        if k.endswith("running_var"):
            p[k] = 0.5 + rng.random(p[k].shape)
    return p


def grad_check(net: Network, batch: int = 2, seed: int = 0) -> float:
    """Largest relative error of backward() against central differences of sum(out * R), over
    every trainable parameter entry and every input entry."""
    rng = np.random.default_rng(seed)
    params = _params64(net, rng)
    x = rng.standard_normal((batch,) + net.input_shape)
    out, tape = forward_train(net, params, x)
    r = rng.standard_normal(out.shape)
    grads, dx = backward(net, tape, r, need_input_grad=True)
    trainable = {k for k, s in net.param_specs().items() if s.trainable}
    assert set(grads) == trainable

    def loss(p, xx):
        return float((forward_train(net, p, xx)[0] * r).sum())

    eps = 1e-6
    worst = 0.0
    for name, arr in [(k, params[k]) for k in grads] + [(INPUT, x)]:
        analytic = dx if name == INPUT else grads[name]
        assert analytic.shape == arr.shape, name
        for idx in np.ndindex(arr.shape):
            plus, minus = arr.copy(), arr.copy()
            plus[idx] += eps
            minus[idx] -= eps
            if name == INPUT:
                num = (loss(params, plus) - loss(params, minus)) / (2 * eps)
            else:
                num = (loss({**params, name: plus}, x) - loss({**params, name: minus}, x)) / (2 * eps)
            worst = max(worst, abs(num - analytic[idx]) / max(1e-6, abs(num) + abs(analytic[idx])))
    return worst


GRAD_NETS = {
    "conv_grouped_dilated_asymmetric": _net([
        Layer("c", "conv2d", (INPUT,), out_channels=4, kernel=(3, 2), stride=(2, 1),
              padding=(1, 0, 2, 1), dilation=(2, 1), groups=2, bias=True)], (5, 4, 4)),
    "conv_depthwise": _net([Layer("c", "conv2d", (INPUT,), out_channels=3, kernel=3, padding=1,
                                  groups=3)], (4, 4, 3)),
    "clip": _net([Layer("a", "clip", (INPUT,), min=-0.5, max=0.7)], (3, 3, 2)),
    "leakyrelu": _net([Layer("a", "leakyrelu", (INPUT,), alpha=0.2)], (3, 3, 2)),
    "sigmoid": _net([Layer("a", "sigmoid", (INPUT,))], (3, 3, 2)),
    "tanh": _net([Layer("a", "tanh", (INPUT,))], (3, 3, 2)),
    "hardsigmoid": _net([Layer("a", "hardsigmoid", (INPUT,), alpha=0.4, beta=0.3)], (3, 3, 2)),
    "hardswish": _net([Layer("s", "linear", (INPUT,), out_channels=12),
                       Layer("a", "hardswish", ("s",))], (3, 3, 2)),
    "maxpool_padded": _net([Layer("p", "maxpool", (INPUT,), kernel=(3, 2), stride=(2, 1),
                                  padding=(1, 0, 1, 1))], (5, 4, 2)),
    "avgpool_padded": _net([Layer("p", "avgpool", (INPUT,), kernel=3, stride=2, padding=1)],
                           (5, 5, 2)),
    "avgpool_padded_incl": _net([Layer("p", "avgpool", (INPUT,), kernel=(2, 3), stride=1,
                                       padding=(1, 1, 0, 1), count_include_pad=True)], (3, 4, 2)),
    "globalavgpool_keepdims": _net([Layer("g", "globalavgpool", (INPUT,), keepdims=True),
                                    Layer("f", "flatten", ("g",))], (3, 2, 3)),
    "add_constant": _net([Layer("a", "add", (INPUT,), constant_shape=(1, 1, 2))], (3, 3, 2)),
    "mul_constant": _net([Layer("m", "mul", (INPUT,), constant_shape=(3, 1, 1))], (3, 3, 2)),
    "mul_broadcast": _net([Layer("g", "globalavgpool", (INPUT,), keepdims=True),
                           Layer("s", "sigmoid", ("g",)),
                           Layer("m", "mul", (INPUT, "s"))], (3, 3, 2)),
    "concat": _net([Layer("c", "conv2d", (INPUT,), out_channels=2, kernel=1),
                    Layer("k", "concat", ("c", INPUT))], (2, 3, 2)),
    "pad": _net([Layer("p", "pad", (INPUT,), pads=((1, 0), (0, 2), (1, 1)), value=0.5)],
                (2, 3, 2)),
    "slice": _net([Layer("s", "slice", (INPUT,), slices=((1, 2, 2), (2, 3, -1), (0, 1, 1)))],
                  (5, 3, 2)),
}


@pytest.mark.parametrize("kind", sorted(GRAD_NETS))
def test_backward_matches_finite_differences(kind):
    assert grad_check(GRAD_NETS[kind]) < 1e-6


@pytest.mark.parametrize("kind", sorted(GRAD_NETS))
def test_training_forward_equals_inference_forward(kind):
    net = GRAD_NETS[kind]
    rng = np.random.default_rng(3)
    params = nw.init_params(net, rng)
    for k in params:
        params[k] = params[k] + 0.1 * rng.standard_normal(params[k].shape).astype(np.float32)
    x = rng.standard_normal((3,) + net.input_shape).astype(np.float32)
    ours, _ = forward_train(net, params, x, train=False)
    np.testing.assert_allclose(ours, nw.forward(net, params, x), rtol=1e-5, atol=1e-6)


def test_every_kind_is_registered_and_has_a_gradient_check():
    from test_training import GRAD_NETS as BUILTIN
    kinds = {l.kind for n in list(GRAD_NETS.values()) + list(BUILTIN.values()) for l in n.layers}
    assert kinds == set(L.REGISTRY)


def test_layer_helper_builds_the_registered_class():
    c = Layer("c", "conv2d", (INPUT,), out_channels=4, kernel=3, stride=2, padding=1)
    assert type(c) is L.Conv2d and c.kind == "conv2d"
    assert (c.kernel, c.stride, c.padding) == (3, 2, 1)
    assert (c.kernel_shape, c.strides, c.pads, c.dilations) == ((3, 3), (2, 2), (1, 1, 1, 1), (1, 1))
    r = Layer("c", "conv2d", (INPUT,), out_channels=4, kernel=(3, 1), padding=(1, 0, 2, 0))
    assert r.kernel == (3, 1) and r.padding == (1, 0, 2, 0) and r.square is None
    assert L.Conv2d("c", (INPUT,), out_channels=4, kernel=3) == \
        Layer("c", "conv2d", (INPUT,), out_channels=4, kernel=3)
    moved = dataclasses.replace(c, name="d")
    assert type(moved) is L.Conv2d and moved.name == "d" and moved.kernel_shape == (3, 3)
    assert c.describe() == {"kind": "conv2d", "name": "c", "inputs": ["input"], "out_channels": 4,
                            "bias": False, "kernel_shape": [3, 3], "strides": [2, 2],
                            "pads": [1, 1, 1, 1], "dilations": [1, 1], "groups": 1}


@pytest.mark.parametrize("make, message", [
    (lambda: Layer("c", "conv2d", (INPUT,), out_channels=4, kernal=3),
     "layer c (conv2d): unknown attribute 'kernal' (expected bias, dilation, dilations"),
    (lambda: Layer("c", "conv2d", (INPUT,), out_channels=6, groups=4),
     "layer c (conv2d): 6 output channels do not divide into 4 groups"),
    (lambda: Layer("a", "add", (INPUT, INPUT, INPUT)), "layer a (add): needs 1 to 2 inputs, got 3"),
    (lambda: Layer("p", "maxpool", (INPUT,), kernel=2, padding=2),
     "layer p (maxpool): pads (2, 2, 2, 2) must be smaller than the kernel (2, 2)"),
    (lambda: Layer("s", "slice", (INPUT,), slices=((0, 0, 1),)),
     "layer s (slice): slice (start 0, count 0, step 1) is empty or invalid"),
    (lambda: Layer("c", "conv4d", (INPUT,)), "layer c: unknown kind 'conv4d' (expected one of conv2d"),
])
def test_bad_layers_are_one_line(make, message):
    with pytest.raises(WorkloadError) as e:
        make()
    assert str(e.value).startswith(message)


@pytest.mark.parametrize("layers, input_shape, message", [
    ([Layer("c", "conv2d", (INPUT,), out_channels=4, groups=2)], (3, 3, 3),
     "network t: layer c: 3 input channels do not divide into 2 groups"),
    ([Layer("k", "concat", (INPUT, "f")), ], (2, 2, 2), "input 'f' is not an earlier layer"),
    ([Layer("f", "flatten", (INPUT,)), Layer("k", "concat", (INPUT, "f"))], (2, 2, 2),
     "network t: layer k: concat needs inputs that differ in the last axis only"),
    ([Layer("m", "mul", (INPUT,), constant_shape=(3, 1, 1))], (2, 2, 2),
     "network t: layer m: constant of shape (3, 1, 1) does not broadcast to the input (2, 2, 2)"),
    ([Layer("s", "slice", (INPUT,), slices=((1, 2, 1), (0, 1, 1), (0, 1, 1)))], (2, 2, 2),
     "network t: layer s: slice (start 1, count 2, step 1) leaves an axis of size 2"),
])
def test_bad_shapes_name_the_network_and_layer(layers, input_shape, message):
    with pytest.raises(WorkloadError) as e:
        _net(layers, input_shape)
    assert message in str(e.value)


def test_grouped_conv_matrix_view_and_weight_matrix():
    """A grouped conv's K x N matrix is block-diagonal; the FP32 product uses the blocks only."""
    net = _net([Layer("c", "conv2d", (INPUT,), out_channels=6, kernel=3, padding=1, groups=3)],
               (4, 4, 6))
    layer = net.layer("c")
    view = net.matrix_view(layer)
    assert (view.k, view.n, view.groups, view.k_group, view.n_group, view.mvms) == \
        (54, 6, 3, 18, 2, 16)
    assert net.macs(layer) == 18 * 2 * 3 * 16            # the real MACs, not K x N x pixels
    params = nw.init_params(net, np.random.default_rng(0))
    wm = layer.weight_matrix(params)
    mask = layer.weight_mask(54)
    assert wm.shape == (54, 6) and not wm[~mask].any() and mask.sum() == 54 * 2
    w = params["c.weight"]                                  # (6, 2, 3, 3)
    np.testing.assert_array_equal(wm[18:36, 2:4], w[2:4].reshape(2, -1).T)
    x = np.random.default_rng(1).standard_normal((2, 4, 4, 6)).astype(np.float32)
    cols = layer.matrix_input(x)
    np.testing.assert_allclose(layer.matmul(cols, params), cols @ wm, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.multiply(cols, wm), cols @ wm, rtol=1e-5, atol=1e-5)
