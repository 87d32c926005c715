"""Network IR: shapes, MAC and parameter counts, option-A shortcut, Flatten order, im2col, and the
FP32 forward pass against a naive loop implementation."""

from __future__ import annotations

import numpy as np
import pytest

from archsim.errors import WorkloadError
from archsim.network import (INPUT, Layer, Network, Workspace, batchnorm_affine, digits_cnn,
                             forward, im2col, init_params, predict, resnet_cifar, shortcut_a)


@pytest.fixture(scope="module")
def resnet32():
    return resnet_cifar(32)


# ------------------------------------------------------------------------------------------
# ResNet-32 structure
# ------------------------------------------------------------------------------------------

def test_resnet32_shapes(resnet32):
    n = resnet32
    assert n.input_shape == (32, 32, 3) and n.num_classes == 10
    assert n.shape(INPUT) == (32, 32, 3)
    assert n.shape("conv1") == (32, 32, 16)
    assert n.shape("layer1.4.relu2") == (32, 32, 16)
    assert n.shape("layer2.0.conv1") == (16, 16, 32)
    assert n.shape("layer2.0.shortcut") == (16, 16, 32)
    assert n.shape("layer3.0.shortcut") == (8, 8, 64)
    assert n.shape("layer3.4.relu2") == (8, 8, 64)
    assert n.shape("avgpool") == (64,)
    assert n.shape("linear") == (10,)
    assert n.output == "linear"
    # 1 stem conv + 30 block convs + 1 FC = 32 weight layers; exactly two option-A shortcuts
    kinds = [layer.kind for layer in n.layers]
    assert kinds.count("conv2d") == 31 and kinds.count("linear") == 1
    assert kinds.count("shortcut_a") == 2 and kinds.count("add") == 15
    assert kinds.count("batchnorm") == 31
    assert [l.name for l in n.matrix_layers()][:3] == ["conv1", "layer1.0.conv1", "layer1.0.conv2"]
    assert n.layer("layer2.0.conv1").stride == 2 and n.layer("layer2.0.conv2").stride == 1
    assert n.layer("layer3.0.add").inputs == ("layer3.0.bn2", "layer3.0.shortcut")
    assert n.layer("layer3.1.add").inputs == ("layer3.1.bn2", "layer3.0.relu2")


def test_resnet32_matrix_shapes(resnet32):
    n = resnet32
    assert n.matrix_shape(n.layer("conv1")) == (27, 16)
    assert n.matrix_shape(n.layer("layer1.0.conv1")) == (144, 16)
    assert n.matrix_shape(n.layer("layer2.0.conv1")) == (144, 32)
    assert n.matrix_shape(n.layer("layer2.0.conv2")) == (288, 32)
    assert n.matrix_shape(n.layer("layer3.0.conv1")) == (288, 64)
    assert n.matrix_shape(n.layer("layer3.1.conv1")) == (576, 64)
    assert n.matrix_shape(n.layer("linear")) == (64, 10)
    assert n.mvms_per_inference(n.layer("conv1")) == 1024
    assert n.mvms_per_inference(n.layer("layer3.0.conv1")) == 64
    assert n.mvms_per_inference(n.layer("linear")) == 1
    with pytest.raises(ValueError):
        n.matrix_shape(n.layer("bn1"))


def test_resnet32_macs(resnet32):
    n = resnet32
    # closed form: per stage, output pixels x 9*Cin x Cout summed over its 10 convs
    stem = 32 * 32 * 27 * 16
    stage1 = 10 * 32 * 32 * (9 * 16) * 16
    stage2 = 16 * 16 * (9 * 16) * 32 + 9 * 16 * 16 * (9 * 32) * 32
    stage3 = 8 * 8 * (9 * 32) * 64 + 9 * 8 * 8 * (9 * 64) * 64
    fc = 64 * 10
    assert n.total_macs() == stem + stage1 + stage2 + stage3 + fc == 68_862_592
    assert n.macs(n.layer("conv1")) == 442_368
    assert n.macs(n.layer("layer3.1.conv1")) == 2_359_296
    assert n.macs(n.layer("linear")) == 640
    assert n.macs(n.layer("bn1")) == 0


def test_resnet32_param_shapes(resnet32):
    shapes = resnet32.param_shapes()
    assert len(shapes) == 157          # every tensor of the akamaster checkpoint
    assert shapes["conv1.weight"] == (16, 3, 3, 3)
    assert shapes["bn1.running_var"] == (16,)
    assert shapes["layer2.0.conv1.weight"] == (32, 16, 3, 3)
    assert shapes["layer3.4.conv2.weight"] == (64, 64, 3, 3)
    assert shapes["layer3.4.bn2.bias"] == (64,)
    assert shapes["linear.weight"] == (10, 64) and shapes["linear.bias"] == (10,)
    assert not any("shortcut" in k for k in shapes)     # option A has no parameters
    assert "conv1.bias" not in shapes
    trainable = sum(int(np.prod(s)) for k, s in shapes.items()
                    if not k.endswith(("running_mean", "running_var")))
    assert trainable == 464_154
    conv_fc = sum(int(np.prod(s)) for k, s in shapes.items() if len(s) > 1)
    assert conv_fc == 461_872           # 464,154 minus 10 FC biases and 2 x 1,136 BN channels


def test_resnet_depths():
    r20 = resnet_cifar(20)
    assert len(r20.matrix_layers()) == 20
    assert r20.name == "resnet20_cifar10"
    trainable = sum(int(np.prod(s)) for k, s in r20.param_shapes().items()
                    if not k.endswith(("running_mean", "running_var")))
    assert trainable == 269_722         # the known ResNet-20 count (0.27 M)
    with pytest.raises(WorkloadError, match="6n\\+2, got 33"):
        resnet_cifar(33)


def test_digits_cnn_structure():
    n = digits_cnn()
    assert n.input_shape == (8, 8, 1)
    assert n.shape("conv2") == (8, 8, 32) and n.shape("pool") == (4, 4, 32)
    assert n.shape("conv3") == (4, 4, 32) and n.shape("linear") == (10,)
    assert [n.matrix_shape(l) for l in n.matrix_layers()] == [(9, 16), (144, 32), (288, 32), (32, 10)]
    assert n.total_macs() == 64 * 9 * 16 + 64 * 144 * 32 + 16 * 288 * 32 + 32 * 10


# ------------------------------------------------------------------------------------------
# Graph validation
# ------------------------------------------------------------------------------------------

def test_invalid_graphs_raise_workload_error():
    conv = Layer("c", "conv2d", (INPUT,), out_channels=4, kernel=3, padding=1)
    with pytest.raises(WorkloadError, match="unknown kind 'conv3d'"):
        Network("n", (4, 4, 1), (Layer("c", "conv3d", (INPUT,)),), 2)
    with pytest.raises(WorkloadError, match="duplicate layer name 'c'"):
        Network("n", (4, 4, 1), (conv, Layer("c", "relu", ("c",))), 2)
    with pytest.raises(WorkloadError, match="input 'later' is not an earlier layer"):
        Network("n", (4, 4, 1), (Layer("r", "relu", ("later",)), conv), 2)
    with pytest.raises(WorkloadError, match="add needs two inputs of one shape"):
        Network("n", (4, 4, 1), (conv, Layer("a", "add", ("c", INPUT))), 2)
    with pytest.raises(WorkloadError, match="cannot pad 4 channels to 7"):
        Network("n", (4, 4, 1), (conv, Layer("s", "shortcut_a", ("c",), out_channels=7)), 2)
    with pytest.raises(WorkloadError, match="kernel 5 does not fit"):
        Network("n", (4, 4, 1), (Layer("c", "conv2d", (INPUT,), out_channels=2, kernel=5),), 2)
    with pytest.raises(WorkloadError, match="expects an \\(H, W, C\\) input"):
        Network("n", (4, 4, 1), (Layer("f", "flatten", (INPUT,)),
                                 Layer("p", "maxpool", ("f",), kernel=2, stride=2)), 2)


# ------------------------------------------------------------------------------------------
# Naive reference implementation (loops; tiny sizes only)
# ------------------------------------------------------------------------------------------

def naive_conv(x, w, b, stride, pad):
    """x (N,H,W,C), w OIHW -> (N,Ho,Wo,O), float64, one output value at a time."""
    n, h, wd, c = x.shape
    o, _, k, _ = w.shape
    xp = np.zeros((n, h + 2 * pad, wd + 2 * pad, c))
    xp[:, pad:pad + h, pad:pad + wd] = x
    ho, wo = (h + 2 * pad - k) // stride + 1, (wd + 2 * pad - k) // stride + 1
    out = np.zeros((n, ho, wo, o))
    for bi in range(n):
        for y in range(ho):
            for xx in range(wo):
                for oc in range(o):
                    acc = 0.0 if b is None else float(b[oc])
                    for ic in range(c):
                        for i in range(k):
                            for j in range(k):
                                acc += xp[bi, y * stride + i, xx * stride + j, ic] * w[oc, ic, i, j]
                    out[bi, y, xx, oc] = acc
    return out


def naive_pool(x, k, s, op):
    n, h, w, c = x.shape
    ho, wo = (h - k) // s + 1, (w - k) // s + 1
    out = np.zeros((n, ho, wo, c))
    for y in range(ho):
        for xx in range(wo):
            win = x[:, y * s:y * s + k, xx * s:xx * s + k, :]
            out[:, y, xx, :] = win.max(axis=(1, 2)) if op == "max" else win.mean(axis=(1, 2))
    return out


def naive_forward(net, params, x):
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    vals = {INPUT: np.asarray(x, np.float64)}
    for layer in net.layers:
        a = vals[layer.inputs[0]]
        if layer.kind == "conv2d":
            out = naive_conv(a, p[f"{layer.name}.weight"], p.get(f"{layer.name}.bias"),
                             layer.stride, layer.padding)
        elif layer.kind == "linear":
            w = p[f"{layer.name}.weight"]
            out = np.array([[sum(a[n, i] * w[o, i] for i in range(a.shape[1]))
                             for o in range(w.shape[0])] for n in range(a.shape[0])])
            if layer.bias:
                out = out + p[f"{layer.name}.bias"]
        elif layer.kind == "batchnorm":
            q = layer.name
            out = (a - p[f"{q}.running_mean"]) / np.sqrt(p[f"{q}.running_var"] + layer.eps) \
                * p[f"{q}.weight"] + p[f"{q}.bias"]
        elif layer.kind == "relu":
            out = np.where(a > 0, a, 0.0)
        elif layer.kind == "maxpool":
            out = naive_pool(a, layer.kernel, layer.stride, "max")
        elif layer.kind == "avgpool":
            out = naive_pool(a, layer.kernel, layer.stride, "mean")
        elif layer.kind == "globalavgpool":
            out = a.mean(axis=(1, 2))
        elif layer.kind == "flatten":
            n, h, w, c = a.shape          # PyTorch flattens (C, H, W)
            out = np.zeros((n, c * h * w))
            for ci in range(c):
                for y in range(h):
                    for xx in range(w):
                        out[:, ci * h * w + y * w + xx] = a[:, y, xx, ci]
        elif layer.kind == "shortcut_a":
            n, h, w, c = a.shape
            pad = (layer.out_channels - c) // 2
            out = np.zeros((n, (h + 1) // 2, (w + 1) // 2, layer.out_channels))
            for y in range(0, h, 2):
                for xx in range(0, w, 2):
                    out[:, y // 2, xx // 2, pad:pad + c] = a[:, y, xx, :]
        elif layer.kind == "add":
            out = a + vals[layer.inputs[1]]
        else:
            raise AssertionError(layer.kind)
        vals[layer.name] = out
    return vals


def random_params(net, rng):
    params = {}
    for name, shape in net.param_shapes().items():
        if name.endswith("running_var"):
            params[name] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
        else:
            params[name] = rng.standard_normal(shape).astype(np.float32) * 0.5
    return params


def tiny_net() -> Network:
    """Odd input size; conv with stride 2 and padding, conv with bias, BN, ReLU, residual add,
    option-A shortcut, max and average pools, Flatten, Linear."""
    L = Layer
    layers = (
        L("c1", "conv2d", (INPUT,), out_channels=4, kernel=3, padding=1, bias=True),   # 7x7x4
        L("bn1", "batchnorm", ("c1",)),
        L("r1", "relu", ("bn1",)),
        L("c2", "conv2d", ("r1",), out_channels=4, kernel=3, padding=1),
        L("add1", "add", ("c2", "r1")),
        L("sc", "shortcut_a", ("add1",), out_channels=8),                               # 4x4x8
        L("c3", "conv2d", ("add1",), out_channels=8, kernel=3, stride=2, padding=1),    # 4x4x8
        L("add2", "add", ("c3", "sc")),
        L("mp", "maxpool", ("add2",), kernel=2, stride=2),                              # 2x2x8
        L("ap", "avgpool", ("add2",), kernel=3, stride=1),                              # 2x2x8
        L("add3", "add", ("mp", "ap")),
        L("c4", "conv2d", ("add3",), out_channels=3, kernel=2, stride=1, padding=2),    # 5x5x3
        L("fl", "flatten", ("c4",)),
        L("fc", "linear", ("fl",), out_channels=5, bias=True),
    )
    return Network("tiny", (7, 7, 3), layers, 5)


def gap_net() -> Network:
    L = Layer
    layers = (
        L("c1", "conv2d", (INPUT,), out_channels=6, kernel=3, stride=2, padding=0),      # 3x3x6
        L("bn", "batchnorm", ("c1",), eps=1e-3),
        L("r", "relu", ("bn",)),
        L("gap", "globalavgpool", ("r",)),
        L("fc", "linear", ("gap",), out_channels=4),
    )
    return Network("gap", (7, 8, 2), layers, 4)


@pytest.mark.parametrize("make", [tiny_net, gap_net], ids=["tiny", "gap"])
def test_forward_matches_naive_loops(make):
    net = make()
    rng = np.random.default_rng(1)
    params = random_params(net, rng)
    x = rng.standard_normal((3, *net.input_shape)).astype(np.float32)
    ref = naive_forward(net, params, x)
    got = forward(net, params, x, keep=lambda name: True)
    for layer in net.layers:
        assert got[layer.name].shape == (3, *net.shape(layer.name)), layer.name
        assert got[layer.name].dtype == np.float32
        np.testing.assert_allclose(got[layer.name], ref[layer.name], rtol=1e-4, atol=1e-4,
                                   err_msg=layer.name)
    out = forward(net, params, x)
    np.testing.assert_array_equal(out, got[net.output])
    # the answer is not trivial: the classes differ between images
    assert np.ptp(ref[net.output]) > 0.3


def test_forward_hooks():
    net = tiny_net()
    rng = np.random.default_rng(2)
    params = random_params(net, rng)
    x = rng.standard_normal((2, 7, 7, 3)).astype(np.float32)
    seen = []

    def matmul(layer, cols):
        k, n = net.matrix_shape(layer)
        assert cols.shape == (2 * int(np.prod(net.shape(layer.name)[:-1])) if layer.kind == "conv2d"
                              else 2, k)
        seen.append(layer.name)
        return cols @ net.weight_matrix(params, layer)

    # a matmul hook sees (c, i, j) patches; the default pass multiplies tap-major patches (the
    # fast kernels' layout) by the same weights in that order: float32 sums in another order
    ref = forward(net, params, x)
    np.testing.assert_allclose(forward(net, params, x, matmul=matmul), ref, rtol=1e-6,
                               atol=1e-6 * np.abs(ref).max())
    assert seen == ["c1", "c2", "c3", "c4", "fc"]
    # a matmul hook that doubles every product doubles the (bias-free) output of c2's matmul
    doubled = forward(net, params, x, matmul=lambda l, a: 2 * (a @ net.weight_matrix(params, l)),
                      keep=lambda n: n in ("r1", "c2"))
    plain = forward(net, params, x, keep=lambda n: n in ("r1", "c2"))
    assert set(doubled) == {"r1", "c2", "fc"}
    assert not np.allclose(doubled["r1"], plain["r1"])   # c1's bias is added after the hook
    # batchnorm hook replaces the layer
    out = forward(net, params, x, batchnorm=lambda l, a: np.zeros_like(a), keep=lambda n: n == "r1")
    assert not out["r1"].any()


def test_flatten_uses_pytorch_chw_order():
    net = Network("fl", (2, 3, 4), (Layer("f", "flatten", (INPUT,)),), 24)
    x = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)       # NHWC
    out = forward(net, {}, x)
    # element (c, h, w) sits at c*H*W + h*W + w
    expected = x.transpose(0, 3, 1, 2).reshape(1, 24)
    np.testing.assert_array_equal(out, expected)
    assert out[0, 3 * 6 + 1 * 3 + 2] == x[0, 1, 2, 3]
    # and a PyTorch-style Linear weight (out, C*H*W) is the matching (K, N) matrix
    net2 = Network("fl", (2, 3, 4), (Layer("f", "flatten", (INPUT,)),
                                     Layer("fc", "linear", ("f",), out_channels=2)), 2)
    w = np.zeros((2, 24), np.float32)
    w[0, 3 * 6 + 1 * 3 + 2] = 1.0          # picks channel 3, row 1, column 2
    w[1, 1 * 6] = 1.0                      # channel 1, row 0, column 0
    np.testing.assert_array_equal(forward(net2, {"fc.weight": w}, x)[0], [x[0, 1, 2, 3], x[0, 0, 0, 1]])


def test_shortcut_a_subsamples_and_pads_equally():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 5, 6, 4)).astype(np.float32)
    y = shortcut_a(x, 8)
    assert y.shape == (2, 3, 3, 8)
    np.testing.assert_array_equal(y[..., 2:6], x[:, ::2, ::2, :])
    assert not y[..., :2].any() and not y[..., 6:].any()
    # 16 -> 32 as in ResNet-32: 8 zero channels before and 8 after
    z = shortcut_a(np.ones((1, 4, 4, 16), np.float32), 32)
    assert z.shape == (1, 2, 2, 32)
    assert z[0, 0, 0].tolist() == [0.0] * 8 + [1.0] * 16 + [0.0] * 8
    # the IR agrees with the function on odd sizes
    net = Network("s", (5, 5, 2), (Layer("s", "shortcut_a", (INPUT,), out_channels=4),), 1)
    assert net.shape("s") == (3, 3, 4)


def test_batchnorm_affine():
    p = {"b.weight": np.array([2.0, 1.0], np.float32), "b.bias": np.array([0.5, -1.0], np.float32),
         "b.running_mean": np.array([1.0, 0.0], np.float32),
         "b.running_var": np.array([3.0, 0.0], np.float32)}
    scale, offset = batchnorm_affine(p, "b", 1.0)
    np.testing.assert_allclose(scale, [1.0, 1.0])          # 2/sqrt(4), 1/sqrt(1)
    np.testing.assert_allclose(offset, [-0.5, -1.0])       # 0.5 - 1*1, -1 - 0
    assert scale.dtype == offset.dtype == np.float32


# ------------------------------------------------------------------------------------------
# im2col
# ------------------------------------------------------------------------------------------

def naive_im2col(x, k, s, p):
    n, h, w, c = x.shape
    xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    rows = []
    for b in range(n):
        for y in range(ho):
            for xx in range(wo):
                patch = xp[b, y * s:y * s + k, xx * s:xx * s + k, :]    # (k, k, c)
                rows.append(patch.transpose(2, 0, 1).reshape(-1))       # (c, i, j) order
    return np.array(rows, np.float32)


@pytest.mark.parametrize("shape, k, s, p", [
    ((2, 6, 5, 3), 3, 1, 1), ((2, 6, 5, 3), 3, 2, 1), ((1, 7, 7, 2), 1, 1, 0),
    ((3, 4, 4, 1), 2, 2, 0), ((1, 5, 6, 4), 2, 3, 2), ((2, 3, 3, 16), 3, 1, 0)])
def test_im2col_equals_naive(shape, k, s, p):
    x = np.random.default_rng(4).standard_normal(shape).astype(np.float32)
    got = im2col(x, k, s, p)
    np.testing.assert_array_equal(got, naive_im2col(x, k, s, p))
    ws = Workspace()
    np.testing.assert_array_equal(im2col(x, k, s, p, ws), got)
    assert im2col(x, k, s, p, ws) is im2col(x, k, s, p, ws)     # the buffer is reused


def test_im2col_times_oihw_weights_is_the_convolution():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 5, 5, 3)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    cols = im2col(x, 3, 2, 1)
    out = (cols @ w.reshape(4, -1).T).reshape(2, 3, 3, 4)
    np.testing.assert_allclose(out, naive_conv(x, w, None, 2, 1), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------
# Parameters
# ------------------------------------------------------------------------------------------

def test_init_params_and_check_params(resnet32):
    params = init_params(resnet32, np.random.default_rng(0))
    assert {k: v.shape for k, v in params.items()} == resnet32.param_shapes()
    assert all(v.dtype == np.float32 for v in params.values())
    np.testing.assert_array_equal(params["bn1.weight"], 1.0)
    np.testing.assert_array_equal(params["bn1.running_mean"], 0.0)
    # He-normal: std sqrt(2 / fan_in) (fan_in 576 for stage-3 convs)
    assert params["layer3.1.conv1.weight"].std() == pytest.approx(np.sqrt(2 / 576), rel=0.02)
    # same seed, same weights
    again = init_params(resnet32, np.random.default_rng(0))
    assert all(np.array_equal(params[k], again[k]) for k in params)
    checked = resnet32.check_params({k: v.astype(np.float64) for k, v in params.items()}, "w.npz")
    assert checked["conv1.weight"].dtype == np.float32


def test_check_params_errors(resnet32):
    params = init_params(resnet32, np.random.default_rng(0))
    missing = dict(params)
    del missing["layer2.3.bn1.running_var"]
    with pytest.raises(WorkloadError) as e:
        resnet32.check_params(missing, "w.npz")
    assert str(e.value) == ("w.npz: missing parameter 'layer2.3.bn1.running_var' (expected shape "
                            "(32,)) for network resnet32_cifar10")
    wrong = dict(params, **{"linear.weight": np.zeros((64, 10), np.float32)})
    with pytest.raises(WorkloadError) as e:
        resnet32.check_params(wrong, "w.npz")
    assert str(e.value) == ("w.npz: parameter 'linear.weight' has shape (64, 10), network "
                            "resnet32_cifar10 expects (10, 64)")


def test_predict_batches_like_forward():
    net = gap_net()
    rng = np.random.default_rng(6)
    params = random_params(net, rng)
    x = rng.standard_normal((7, *net.input_shape)).astype(np.float32)
    expected = np.argmax(forward(net, params, x), axis=1)
    np.testing.assert_array_equal(predict(net, params, x, batch_size=3), expected)
    assert predict(net, params, x[:0]).shape == (0,)
