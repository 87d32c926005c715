"""Training: every layer's backward against central finite differences (float64), col2im as the
adjoint of im2col, the optimizer's closed form, BatchNorm running statistics, noise injection,
clipping, augmentation, the schedules, determinism, and a short digits run."""

from __future__ import annotations

import math

import numpy as np
import pytest

from archsim import network as nw
from archsim.datasets import Dataset
from archsim import threads, training
from archsim.kernels import (batchnorm_grad_input_into, batchnorm_grad_sums_into,
                             channel_affine_into, channel_sums_into, col2im_hwc_into, col2im_into,
                             im2col_into, relu_grad_into)
from archsim.layers.ops import patches_hwc_into
from archsim.threads import Workers, chunks
from archsim.network import INPUT, Layer, Network
from archsim.datasets import augment_cifar
from archsim.training import (TrainConfig, TrainingError, backward, clip_weights,
                              evaluate_fp32, forward_train, learning_rate, load_checkpoint,
                              noisy_weights, softmax_cross_entropy, train)
from archsim.workloads import load_workload


# ---- helpers ---------------------------------------------------------------------------------

def _params64(net: Network, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random float64 parameters, BatchNorm affine away from identity."""
    p = {k: v.astype(np.float64) for k, v in nw.init_params(net, rng).items()}
    for k in p:
        if k.endswith(".bias") or (k.endswith(".weight") and p[k].ndim == 1):
            p[k] = p[k] + 0.5 * rng.standard_normal(p[k].shape)
        elif k.endswith(".running_mean"):
            p[k] = 0.3 * rng.standard_normal(p[k].shape)
        elif k.endswith(".running_var"):
            p[k] = 0.5 + rng.random(p[k].shape)
    return p


def _grad_check(net: Network, batch: int = 3, train_mode: bool = True, seed: int = 0) -> float:
    """Largest relative error between backward() and central differences of sum(out * R), over
    every parameter entry and every input entry."""
    rng = np.random.default_rng(seed)
    params = _params64(net, rng)
    x = rng.standard_normal((batch,) + net.input_shape)
    out, tape = forward_train(net, params, x, train=train_mode)
    r = rng.standard_normal(out.shape)
    grads, dx = backward(net, tape, r, need_input_grad=True)

    def loss(p, xx):
        return float((forward_train(net, p, xx, train=train_mode)[0] * r).sum())

    eps = 1e-6
    worst = 0.0
    targets = [(k, params[k]) for k in grads] + [(INPUT, x)]
    for name, arr in targets:
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
            err = abs(num - analytic[idx]) / max(1e-6, abs(num) + abs(analytic[idx]))
            worst = max(worst, err)
    return worst


def _net(layers, input_shape) -> Network:
    return Network("t", input_shape, tuple(layers), 10)


# ---- gradient checks, one per layer kind -------------------------------------------------------

GRAD_NETS = {
    "conv2d": _net([Layer("c", "conv2d", (INPUT,), out_channels=3, kernel=3, stride=2, padding=1,
                          bias=True)], (5, 5, 2)),
    "conv2d_nopad": _net([Layer("c", "conv2d", (INPUT,), out_channels=2, kernel=2, stride=1)],
                         (4, 3, 2)),
    # stride 1: the input gradient is a convolution of the output gradient (padding k-1-p)
    "conv2d_same": _net([Layer("c", "conv2d", (INPUT,), out_channels=3, kernel=3, padding=1)],
                        (4, 5, 2)),
    "conv2d_5x5": _net([Layer("c", "conv2d", (INPUT,), out_channels=2, kernel=5, padding=1)],
                       (5, 4, 1)),
    "conv2d_1x1": _net([Layer("c", "conv2d", (INPUT,), out_channels=3, kernel=1)], (3, 2, 2)),
    # padding > kernel-1 falls back to the scatter-add
    "conv2d_widepad": _net([Layer("c", "conv2d", (INPUT,), out_channels=2, kernel=2, padding=2)],
                           (3, 3, 1)),
    "linear": _net([Layer("f", "flatten", (INPUT,)),
                    Layer("fc", "linear", ("f",), out_channels=4, bias=True)], (2, 3, 2)),
    "batchnorm": _net([Layer("bn", "batchnorm", (INPUT,))], (3, 3, 2)),
    "batchnorm_2d": _net([Layer("f", "flatten", (INPUT,)), Layer("bn", "batchnorm", ("f",))],
                         (2, 2, 1)),
    "relu": _net([Layer("r", "relu", (INPUT,))], (3, 3, 2)),
    "maxpool": _net([Layer("p", "maxpool", (INPUT,), kernel=2, stride=2)], (4, 5, 2)),
    "maxpool_overlap": _net([Layer("p", "maxpool", (INPUT,), kernel=3, stride=1)], (4, 4, 2)),
    "avgpool": _net([Layer("p", "avgpool", (INPUT,), kernel=2, stride=2)], (4, 4, 2)),
    "avgpool_overlap": _net([Layer("p", "avgpool", (INPUT,), kernel=3, stride=2)], (5, 5, 1)),
    "globalavgpool": _net([Layer("g", "globalavgpool", (INPUT,))], (3, 2, 3)),
    "add": _net([Layer("c", "conv2d", (INPUT,), out_channels=2, kernel=3, padding=1),
                 Layer("a", "add", ("c", INPUT))], (3, 3, 2)),
    "shortcut_a": _net([Layer("s", "shortcut_a", (INPUT,), out_channels=4)], (5, 4, 2)),
    "flatten": _net([Layer("c", "conv2d", (INPUT,), out_channels=2, kernel=1),
                     Layer("f", "flatten", ("c",)),
                     Layer("fc", "linear", ("f",), out_channels=3)], (2, 3, 2)),
}


@pytest.mark.parametrize("kind", sorted(GRAD_NETS))
def test_backward_matches_finite_differences(kind):
    assert _grad_check(GRAD_NETS[kind]) < 1e-6


def test_batchnorm_eval_mode_backward():
    assert _grad_check(GRAD_NETS["batchnorm"], train_mode=False) < 1e-6


def test_resnet_block_backward_end_to_end():
    """conv-bn-relu, a downsampling block with shortcut_a and add, global pool and FC together."""
    net = nw.resnet_cifar(8)
    net = Network("r8", (4, 4, 3), net.layers, 10)
    rng = np.random.default_rng(3)
    params = _params64(net, rng)
    x = rng.standard_normal((3, 4, 4, 3))
    y = np.array([1, 7, 3])
    out, tape = forward_train(net, params, x)
    _, dlogits = softmax_cross_entropy(out, y)
    grads, _ = backward(net, tape, dlogits)
    eps = 1e-6
    for name in ("conv1.weight", "layer2.0.conv1.weight", "layer3.0.bn2.bias", "linear.weight"):
        idx = tuple(rng.integers(0, s) for s in params[name].shape)
        vals = []
        for sign in (1, -1):
            q = params[name].copy()
            q[idx] += sign * eps
            vals.append(softmax_cross_entropy(forward_train(net, {**params, name: q}, x)[0], y)[0])
        num = (vals[0] - vals[1]) / (2 * eps)
        assert num == pytest.approx(grads[name][idx], rel=1e-5, abs=1e-9), name


def test_softmax_cross_entropy_known_values():
    logits = np.zeros((2, 10))
    loss, grad = softmax_cross_entropy(logits, np.array([3, 0]))
    assert loss == pytest.approx(math.log(10))
    assert grad[0, 3] == pytest.approx((0.1 - 1) / 2)
    assert grad[0, 4] == pytest.approx(0.1 / 2)
    rng = np.random.default_rng(0)
    z = rng.standard_normal((3, 4))
    y = np.array([0, 3, 1])
    _, g = softmax_cross_entropy(z, y)
    eps = 1e-6
    for idx in np.ndindex(z.shape):
        zp, zm = z.copy(), z.copy()
        zp[idx] += eps
        zm[idx] -= eps
        num = (softmax_cross_entropy(zp, y)[0] - softmax_cross_entropy(zm, y)[0]) / (2 * eps)
        assert num == pytest.approx(g[idx], abs=1e-8)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kernel,stride,pad", [(3, 1, 1), (3, 2, 1), (2, 2, 0), (1, 1, 0)])
def test_col2im_is_the_adjoint_of_im2col(dtype, kernel, stride, pad):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 5, 6, 3)).astype(dtype)
    ho = (5 + 2 * pad - kernel) // stride + 1
    wo = (6 + 2 * pad - kernel) // stride + 1
    cols = im2col_into(x.astype(np.float32), kernel, stride, pad, ho, wo,
                       np.empty((2 * ho * wo, 3 * kernel * kernel), np.float32))
    c = rng.standard_normal(cols.shape).astype(dtype)
    back = col2im_into(c, kernel, stride, pad, np.full(x.shape, 7.0, dtype))   # overwritten
    # <im2col(x), c> == <x, col2im(c)>
    assert float((cols.astype(np.float64) * c).sum()) == pytest.approx(
        float((x.astype(np.float64) * back).sum()), rel=1e-5)
    # and the plain scatter-add twin
    twin = np.zeros(x.shape, np.float64)
    xp = np.zeros((2, 5 + 2 * pad, 6 + 2 * pad, 3))
    patches = c.reshape(2, ho, wo, 3, kernel, kernel)
    for i in range(kernel):
        for j in range(kernel):
            xp[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride, :] += \
                patches[..., i, j]
    twin = xp[:, pad:pad + 5, pad:pad + 6, :]
    np.testing.assert_allclose(back, twin, rtol=1e-5, atol=1e-5)


# ---- the training kernels (chunks of a batch, (i, j, c) patches) against numpy twins ----------

def _hwc_patches_twin(x, kernel, stride, pad):
    """(N*ho*wo, kernel*kernel*C) patches in (i, j, c) order, plain numpy."""
    n, h, w, c = x.shape
    ho = (h + 2 * pad - kernel) // stride + 1
    wo = (w + 2 * pad - kernel) // stride + 1
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out = np.empty((n, ho, wo, kernel, kernel, c), x.dtype)
    for i in range(kernel):
        for j in range(kernel):
            out[:, :, :, i, j, :] = xp[:, i:i + stride * (ho - 1) + 1:stride,
                                       j:j + stride * (wo - 1) + 1:stride, :]
    return out.reshape(n * ho * wo, -1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kernel,stride,pad", [(3, 1, 1), (3, 2, 1), (2, 2, 0), (1, 1, 0),
                                               (5, 1, 2), (3, 2, 2)])
def test_hwc_patches_and_their_adjoint_match_numpy_twins(dtype, kernel, stride, pad):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 6, 7, 3)).astype(dtype)
    full = _hwc_patches_twin(x, kernel, stride, pad)
    per_image = full.shape[0] // 5
    b0, b1 = 1, 4                                   # a chunk in the middle of the batch
    cols = np.full(((b1 - b0) * per_image, full.shape[1]), 9.0, dtype)
    padded = np.full((b1 - b0, 6 + 2 * pad, 7 + 2 * pad, 3), 5.0, dtype)   # stale scratch
    patches_hwc_into(x[b0:b1], kernel, stride, pad, padded, cols)
    np.testing.assert_array_equal(cols, full[b0 * per_image:b1 * per_image])
    # col2im: the adjoint, written into images b0..b1-1 only (others untouched)
    c = rng.standard_normal(cols.shape).astype(dtype)
    dx = np.full(x.shape, 7.0, dtype)
    col2im_hwc_into(c, kernel, stride, pad, b0, b1, dx)
    assert np.all(dx[:b0] == 7.0) and np.all(dx[b1:] == 7.0)
    n_, h, w, ch = x.shape
    ho = (h + 2 * pad - kernel) // stride + 1
    wo = (w + 2 * pad - kernel) // stride + 1
    twin = np.zeros((b1 - b0, h + 2 * pad, w + 2 * pad, ch))
    patches = c.reshape(b1 - b0, ho, wo, kernel, kernel, ch).astype(np.float64)
    for i in range(kernel):
        for j in range(kernel):
            twin[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride, :] += \
                patches[:, :, :, i, j, :]
    np.testing.assert_allclose(dx[b0:b1], twin[:, pad:pad + h, pad:pad + w, :], rtol=1e-6,
                               atol=1e-6)


def test_hwc_patch_kernels_reject_bad_input():
    x = np.zeros((2, 4, 4, 3), np.float32)
    with pytest.raises(ValueError, match="do not fit"):
        patches_hwc_into(x, 3, 1, 1, np.zeros((2, 6, 6, 3), np.float32),
                         np.zeros((32, 28), np.float32))
    with pytest.raises(ValueError, match="outside a batch"):
        col2im_hwc_into(np.zeros((32, 27), np.float32), 3, 1, 1, 1, 3, x)
    with pytest.raises(TypeError):
        col2im_hwc_into(np.zeros((16, 27)), 3, 1, 1, 0, 1, x)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batchnorm_kernels_match_numpy_twins(dtype):
    rng = np.random.default_rng(4)
    a = (3.0 + 2.0 * rng.standard_normal((50, 6))).astype(dtype)
    g = rng.standard_normal((50, 6)).astype(dtype)
    r0, r1 = 7, 41
    sums = channel_sums_into(a, r0, r1, np.empty((2, 6)))
    ref = a[r0:r1].astype(np.float64)
    np.testing.assert_allclose(sums, [ref.sum(0), (ref * ref).sum(0)], rtol=1e-12)
    scale, shift = rng.standard_normal(6), rng.standard_normal(6)
    out = np.full_like(a, 5.0)
    channel_affine_into(a, r0, r1, scale, shift, out)
    np.testing.assert_allclose(out[r0:r1], a[r0:r1] * scale.astype(dtype) + shift.astype(dtype),
                               rtol=1e-6)
    assert np.all(out[:r0] == 5.0) and np.all(out[r1:] == 5.0)
    mean, inv_std = rng.standard_normal(6), 1.0 + rng.random(6)
    gs = batchnorm_grad_sums_into(g, a, mean, inv_std, r0, r1, np.empty((2, 6)))
    xhat = (ref - mean) * inv_std
    gr = g[r0:r1].astype(np.float64)
    np.testing.assert_allclose(gs, [gr.sum(0), (gr * xhat).sum(0)], rtol=1e-6, atol=1e-9)
    k = [rng.standard_normal(6) for _ in range(3)]
    dx = np.zeros_like(a)
    batchnorm_grad_input_into(g, a, mean, *k, r0, r1, dx)
    np.testing.assert_allclose(dx[r0:r1], gr * k[0] - k[1] - (ref - mean) * k[2], rtol=1e-5,
                               atol=1e-5)
    with pytest.raises(ValueError):
        channel_sums_into(a, 0, 51, np.empty((2, 6)))


def test_chunks_cover_the_range_in_pieces_that_fit():
    assert chunks(10, 100, 300) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert chunks(3, 1000, 10) == [(0, 1), (1, 2), (2, 3)]       # at least one item each
    assert chunks(0, 8, 64) == []


def test_workers_run_every_chunk_once_and_raise_errors():
    seen = []
    workers = Workers(3)
    try:
        workers.run(lambda i, w: seen.append((i, w)), 20)
        assert sorted(i for i, _ in seen) == list(range(20))
        assert {w for _, w in seen} <= {0, 1, 2}

        def boom(i, w):
            if i == 5:
                raise RuntimeError("chunk 5")
        with pytest.raises(RuntimeError, match="chunk 5"):
            workers.run(boom, 10)
    finally:
        workers.close()


def test_training_numbers_do_not_depend_on_the_worker_count(monkeypatch):
    """Small chunks (several per layer) on 1 and 3 workers: the same weights bit for bit."""
    monkeypatch.setattr(threads, "CHUNK_BYTES", 2048)
    wl = load_workload("digits_cnn")
    cfg = TrainConfig(epochs=1, batch_size=32, max_images=96, seed=1)
    one, _ = train(wl.network, None, wl.dataset("train"), cfg, progress=False, workers=1)
    three, _ = train(wl.network, None, wl.dataset("train"), cfg, progress=False, workers=3)
    for k in one:
        np.testing.assert_array_equal(one[k], three[k], err_msg=k)


def test_col2im_rejects_bad_shapes():
    with pytest.raises(ValueError):
        col2im_into(np.zeros((10, 9), np.float32), 3, 1, 1, np.zeros((1, 3, 3, 1), np.float32))
    with pytest.raises(TypeError):
        col2im_into(np.zeros((9, 9), np.float64), 3, 1, 1, np.zeros((1, 3, 3, 1), np.float32))


def test_eval_mode_forward_matches_network_forward():
    wl = load_workload("digits_cnn")
    params = nw.init_params(wl.network, np.random.default_rng(0))
    params["bn2.running_mean"] += 0.3
    params["bn2.running_var"] *= 2.0
    x = wl.dataset("test").normalized(slice(0, 16))
    ours, _ = forward_train(wl.network, params, x, train=False)
    np.testing.assert_allclose(ours, nw.forward(wl.network, params, x), rtol=1e-5, atol=1e-5)


# ---- optimizer, BatchNorm statistics, noise, clipping, schedule, augmentation -----------------

def _toy_dataset(n=8, seed=0, shape=(2, 2, 1)) -> Dataset:
    rng = np.random.default_rng(seed)
    return Dataset("toy", rng.random((n,) + shape).astype(np.float32),
                   rng.integers(0, 3, n).astype(np.int64), np.zeros(shape[-1], np.float32),
                   np.ones(shape[-1], np.float32), "toy")


def test_sgd_momentum_weight_decay_closed_form():
    """Two full-batch steps of SGD (PyTorch semantics) reproduced by hand."""
    net = _net([Layer("f", "flatten", (INPUT,)), Layer("fc", "linear", ("f",), out_channels=3,
                                                        bias=True)], (2, 2, 1))
    data = _toy_dataset()
    rng = np.random.default_rng(5)
    p0 = {"fc.weight": rng.standard_normal((3, 4)).astype(np.float32),
          "fc.bias": rng.standard_normal(3).astype(np.float32)}
    cfg = TrainConfig(epochs=2, lr=0.1, momentum=0.9, weight_decay=0.01, batch_size=8,
                      schedule="constant", noise_eta=0.0, clip_alpha=None, augment=False)
    before = {k: v.copy() for k, v in p0.items()}
    trained, history = train(net, p0, data, cfg, progress=False)
    x = data.normalized()

    def grads(p):
        out, tape = forward_train(net, p, x)
        return backward(net, tape, softmax_cross_entropy(out, data.labels)[1])[0]

    p = {k: v.astype(np.float64) for k, v in p0.items()}
    v = {k: np.zeros_like(p[k]) for k in p}
    for _ in range(2):
        g = grads(p)
        for k in p:
            v[k] = 0.9 * v[k] + g[k] + 0.01 * p[k]
            p[k] = p[k] - 0.1 * v[k]
    for k in p:
        np.testing.assert_allclose(trained[k], p[k], rtol=1e-5, atol=1e-6)
    for k in p0:                                                   # the input is not modified
        np.testing.assert_array_equal(p0[k], before[k])
    assert len(history) == 2 and history[0].lr == 0.1
    assert history[1].loss < history[0].loss


def test_batchnorm_running_stats_momentum():
    net = _net([Layer("bn", "batchnorm", (INPUT,)), Layer("g", "globalavgpool", ("bn",)),
                Layer("fc", "linear", ("g",), out_channels=3)], (2, 2, 2))
    data = _toy_dataset(n=6, shape=(2, 2, 2))
    cfg = TrainConfig(epochs=1, lr=0.01, batch_size=6, noise_eta=0.0, clip_alpha=None)
    trained, _ = train(net, None, data, cfg, progress=False)
    flat = data.images.reshape(-1, 2).astype(np.float64)
    np.testing.assert_allclose(trained["bn.running_mean"], 0.1 * flat.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(trained["bn.running_var"], 0.9 + 0.1 * flat.var(axis=0, ddof=1),
                               rtol=1e-5)


def test_noisy_weights_statistics_and_clean_copy():
    net = _net([Layer("f", "flatten", (INPUT,)), Layer("fc", "linear", ("f",), out_channels=200)],
               (10, 10, 1))
    w = np.zeros((200, 100), np.float32)
    w[0, 0] = -2.0                       # max|W| = 2
    params = {"fc.weight": w}
    noisy = noisy_weights(net, params, 0.05, np.random.default_rng(0))["fc.weight"]
    assert params["fc.weight"][0, 1] == 0.0                      # clean weights untouched
    assert float((noisy - w).std()) == pytest.approx(0.05 * 2.0, rel=0.02)
    again = noisy_weights(net, params, 0.05, np.random.default_rng(0))["fc.weight"]
    np.testing.assert_array_equal(noisy, again)


def test_clip_weights_to_alpha_std():
    net = _net([Layer("f", "flatten", (INPUT,)), Layer("fc", "linear", ("f",), out_channels=1,
                                                        bias=True)], (1, 1, 4))
    w = np.array([[-10.0, 0.0, 0.0, 0.0]], np.float32)
    params = {"fc.weight": w.copy(), "fc.bias": np.array([100.0], np.float32)}
    clip_weights(net, params, 1.0)
    bound = float(w.std())               # sqrt(18.75)
    np.testing.assert_allclose(params["fc.weight"], [[-bound, 0, 0, 0]], rtol=1e-6)
    assert params["fc.bias"][0] == 100.0                          # biases are not clipped


def test_learning_rate_schedules():
    cos = TrainConfig(epochs=4, lr=0.2, schedule="cosine")
    assert learning_rate(cos, 0, 10) == pytest.approx(0.2)
    assert learning_rate(cos, 20, 10) == pytest.approx(0.1)
    assert learning_rate(cos, 30, 10) == pytest.approx(0.1 * (1 + math.cos(0.75 * math.pi)))
    step = TrainConfig(epochs=4, lr=0.2, schedule="step")
    assert [learning_rate(step, e * 10, 10) for e in range(4)] == pytest.approx(
        [0.2, 0.2, 0.02, 0.002])


def test_augment_cifar_is_a_padded_crop_or_its_mirror():
    rng = np.random.default_rng(0)
    imgs = rng.integers(1, 256, (40, 6, 5, 3)).astype(np.uint8)
    out = augment_cifar(imgs, np.random.default_rng(1), padding=2)
    assert out.shape == imgs.shape and out.dtype == np.uint8
    padded = np.pad(imgs, ((0, 0), (2, 2), (2, 2), (0, 0)))
    flips = 0
    for k in range(len(imgs)):
        found = set()
        for oy in range(5):
            for ox in range(5):
                crop = padded[k, oy:oy + 6, ox:ox + 5]
                if np.array_equal(out[k], crop):
                    found.add("plain")
                if np.array_equal(out[k], crop[:, ::-1]):
                    found.add("flip")
        assert found, k
        flips += found == {"flip"}
    assert 8 <= flips <= 32


def test_train_config_validation():
    with pytest.raises(TrainingError, match="schedule"):
        TrainConfig(schedule="linear")
    with pytest.raises(TrainingError, match="batch_size"):
        TrainConfig(batch_size=1)
    with pytest.raises(TrainingError, match="noise_eta"):
        TrainConfig(noise_eta=-0.1)


# ---- end to end on digits --------------------------------------------------------------------

def test_training_is_deterministic_and_noise_changes_it():
    wl = load_workload("digits_cnn")
    data = wl.dataset("train")
    cfg = TrainConfig(epochs=1, batch_size=32, max_images=128, seed=3)
    a, ha = train(wl.network, None, data, cfg, progress=False)
    b, hb = train(wl.network, None, data, cfg, progress=False)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert ha[0].loss == hb[0].loss
    c, _ = train(wl.network, None, data, TrainConfig(epochs=1, batch_size=32, max_images=128,
                                                     seed=3, noise_eta=0.0), progress=False)
    assert not np.array_equal(a["conv2.weight"], c["conv2.weight"])
    # clipping holds after every step
    for name in ("conv1.weight", "conv2.weight", "conv3.weight", "linear.weight"):
        assert np.abs(a[name]).max() <= 2.5 * a[name].std() * (1 + 1e-4)


def test_short_digits_training_learns(capsys):
    wl = load_workload("digits_cnn")
    cfg = TrainConfig(epochs=3, lr=0.05, batch_size=32, seed=0)
    seen = []
    params, history = train(wl.network, None, wl.dataset("train"), cfg,
                            on_epoch=lambda stats, p: seen.append(stats.epoch))
    assert seen == [1, 2, 3]
    assert history[-1].loss < history[0].loss
    assert history[-1].train_accuracy > 0.85
    assert evaluate_fp32(wl.network, params, wl.dataset("test")) > 0.9
    err = capsys.readouterr().err
    assert "epoch 3/3: loss" in err


def test_shipped_digits_weights_accuracy():
    wl = load_workload("digits_cnn")
    acc = evaluate_fp32(wl.network, wl.load_params(), wl.dataset("test"))
    assert acc >= 0.97


# ---- checkpoint and resume -------------------------------------------------------------------

def _digits_run(**overrides):
    wl = load_workload("digits_cnn")
    cfg = dict(epochs=2, batch_size=32, max_images=160, seed=4, lr=0.05)
    cfg.update(overrides)
    return wl.network, wl.dataset("train"), TrainConfig(**cfg)


def test_resume_gives_the_uninterrupted_weights_bit_for_bit(tmp_path):
    net, data, cfg = _digits_run()
    whole, hist_whole = train(net, None, data, cfg, progress=False)
    first, hist_first = train(net, None, data, cfg, progress=False, checkpoint=tmp_path / "ck",
                              stop_after=1)
    assert len(hist_first) == 1 and (tmp_path / "ck" / "checkpoint.npz").exists()
    resumed, hist = train(net, None, data, cfg, progress=False, resume=tmp_path / "ck")
    for k in whole:
        np.testing.assert_array_equal(resumed[k], whole[k], err_msg=k)
    assert [h.loss for h in hist] == [h.loss for h in hist_whole]
    # the checkpoint now holds epoch 2 and the momentum buffers of the last step
    state, identity = load_checkpoint(tmp_path / "ck")
    assert (state.epoch, state.step) == (2, 2 * (160 // 32))
    assert identity["config"]["lr"] == 0.05 and identity["initial_weights"] == "scratch"
    assert set(state.rngs) == {"init", "shuffle", "augment", "noise"}
    assert np.abs(state.velocity["conv2.weight"]).max() > 0


def test_a_run_killed_mid_epoch_loses_that_epoch_only(tmp_path, monkeypatch):
    net, data, cfg = _digits_run()
    whole, _ = train(net, None, data, cfg, progress=False)
    calls = {"n": 0}
    real = training.softmax_cross_entropy

    def dies_in_epoch_2(logits, labels):
        calls["n"] += 1
        if calls["n"] == 7:                        # epoch 1 has 5 steps
            raise KeyboardInterrupt
        return real(logits, labels)
    monkeypatch.setattr(training, "softmax_cross_entropy", dies_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(net, None, data, cfg, progress=False, checkpoint=tmp_path / "ck")
    monkeypatch.setattr(training, "softmax_cross_entropy", real)
    assert load_checkpoint(tmp_path / "ck")[0].epoch == 1
    assert not list((tmp_path / "ck").glob(".*.tmp"))
    resumed, _ = train(net, None, data, cfg, progress=False, resume=tmp_path / "ck")
    for k in whole:
        np.testing.assert_array_equal(resumed[k], whole[k], err_msg=k)


def test_resume_refuses_another_run(tmp_path):
    net, data, cfg = _digits_run()
    train(net, None, data, cfg, progress=False, checkpoint=tmp_path / "ck", stop_after=1)
    with pytest.raises(TrainingError, match=r"noise_eta 0.0 \(checkpoint: 0.038\)"):
        train(net, None, data, _digits_run(noise_eta=0.0)[2], progress=False,
              resume=tmp_path / "ck")
    with pytest.raises(TrainingError, match="training_images"):
        train(net, None, data.subset(slice(0, 500)), cfg, progress=False, resume=tmp_path / "ck")
    params = nw.init_params(net, np.random.default_rng(0))
    with pytest.raises(TrainingError, match="initial_weights"):
        train(net, params, data, cfg, progress=False, resume=tmp_path / "ck")
    with pytest.raises(TrainingError, match="already there"):
        train(net, None, data, cfg, progress=False, checkpoint=tmp_path / "ck")
    with pytest.raises(TrainingError, match="no checkpoint"):
        train(net, None, data, cfg, progress=False, resume=tmp_path / "nothing")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_kernels_give_numpys_bits(dtype):
    """The ReLU applied in BatchNorm's affine pass is np.maximum(y, 0) bit for bit (NaN stays,
    negatives and -0.0 become +0.0), and relu_grad_into is g * (y > 0) as numpy multiplies by the
    boolean mask (g * 0 keeps NaN and gives -0.0 for negative g)."""
    a = np.array([[1.5, -2.0, 0.0, np.nan], [-0.0, 3.0, -1e-30, 2.0]], dtype)
    scale = np.array([2.0, 1.0, 1.0, 1.0])
    shift = np.array([-0.0, 0.5, -0.0, 0.0])
    fused = channel_affine_into(a, 0, 2, scale, shift, np.empty_like(a), 0.0)
    plain = channel_affine_into(a, 0, 2, scale, shift, np.empty_like(a))
    want = np.maximum(plain, 0)
    assert fused.tobytes() == want.tobytes()
    assert np.signbit(plain[1, 0]) and not np.signbit(fused[1, 0])  # -0.0 * 2 + -0.0 -> +0.0
    assert fused[0, 1] == 0.0 and not np.signbit(fused[0, 1])       # -1.5 -> +0.0
    assert np.isnan(fused[0, 3])
    y = want.reshape(-1)
    g = np.array([1.0, -1.0, np.nan, 2.0, -3.0, 4.0, -5.0, np.inf], dtype)
    dx = relu_grad_into(g, y, np.empty_like(g))
    assert dx.tobytes() == np.multiply(g, y > 0).astype(dtype).tobytes()
    assert np.signbit(dx[1]) and np.isnan(dx[2])
    with pytest.raises(ValueError):
        relu_grad_into(g, y[:-1], np.empty_like(g))


def test_relu_fused_into_batchnorm_and_add_changes_no_bit(monkeypatch):
    """Training applies a ReLU inside the BatchNorm or Add before it when it is their only
    consumer (ResNet: every ReLU): logits, batch statistics and every gradient are the bits of
    the layer-by-layer walk."""
    net = nw.resnet_cifar(8)
    fused_names = training.relu_after(net)
    kinds = {net.layer(name).kind for name in fused_names}
    relus = [layer for layer in net.layers if layer.kind == "relu"]
    assert kinds == {"batchnorm", "add"} and len(fused_names) == len(relus) == 7
    rng = np.random.default_rng(5)
    params = nw.init_params(net, rng)
    x = rng.standard_normal((6, 32, 32, 3)).astype(np.float32)
    labels = rng.integers(0, 10, 6)

    def step():
        logits, tape = forward_train(net, params, x)
        grads, _ = backward(net, tape, softmax_cross_entropy(logits, labels)[1])
        return logits, tape, grads

    logits, tape, grads = step()
    assert tape.clamped == set(fused_names)
    monkeypatch.setattr(training, "relu_after", lambda net: frozenset())
    logits0, tape0, grads0 = step()
    assert tape0.clamped == set()
    assert logits.tobytes() == logits0.tobytes()
    assert all(tape.batch_stats[k][i].tobytes() == tape0.batch_stats[k][i].tobytes()
               for k in tape0.batch_stats for i in (0, 1))
    assert grads.keys() == grads0.keys()
    assert all(grads[k].tobytes() == grads0[k].tobytes() for k in grads0)


def test_relu_gradient_masks_in_other_passes_change_no_bit(monkeypatch):
    """Backward applies a ReLU's gradient mask in the pass of its single consumer conv (ResNet:
    the ReLU inside each block) or in the sum of its consumers' gradients (the ReLU after each
    residual join but the last): every gradient is the bits of the ReLUs' own backward."""
    net = nw.resnet_cifar(8)
    rng = np.random.default_rng(7)
    params = nw.init_params(net, rng)
    x = rng.standard_normal((6, 32, 32, 3)).astype(np.float32)
    labels = rng.integers(0, 10, 6)
    logits, tape = forward_train(net, params, x)
    masked, summed = training.relu_grad_fusions(net, tape)
    assert len(masked) == 3 and all(isinstance(net.layer(c), training.Conv2d) for c in masked.values())
    assert len(summed) == 3                 # the stem's ReLU and the first two blocks' outputs
    dlogits = softmax_cross_entropy(logits, labels)[1]
    seen = []
    real_relu_grad = training.Relu.backward
    monkeypatch.setattr(training.Relu, "backward",
                        lambda self, *a: seen.append(self.name) or real_relu_grad(self, *a))
    grads, dx = backward(net, tape, dlogits, need_input_grad=True)
    assert len(seen) == 1                   # the last block's ReLU (its one consumer: the pool)
    seen.clear()
    monkeypatch.setattr(training, "relu_grad_fusions", lambda net, tape: ({}, frozenset()))
    grads0, dx0 = backward(net, tape, dlogits, need_input_grad=True)
    assert len(seen) == 7
    assert grads.keys() == grads0.keys()
    assert all(grads[k].tobytes() == grads0[k].tobytes() for k in grads0)
    assert dx.tobytes() == dx0.tobytes()
