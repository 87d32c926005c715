"""The inference passes (issue 14): fused output stages, chunks on worker threads, the analog
layers' fast layout and grouped products - the same numbers as the layers one by one, on any
number of threads."""

import numpy as np
import pytest

from archsim import functional as F
from archsim import threads
from archsim.config import load_chip
from archsim.mapping import map_network
from archsim.network import (INPUT, Layer, Network, forward, fusion_plan, init_params,
                             resnet_cifar)
from archsim.rng import Streams

from conftest import REPO

CHIP = REPO / "configs" / "pcm_hybrid.yaml"


@pytest.fixture
def two_threads():
    before = threads.workers()
    yield
    threads.set_workers(before)


def chain_net() -> Network:
    """Every fusable chain: conv -> BN -> add (residual on either side) -> ReLU, a biased conv ->
    BN -> Clip, conv -> ReLU, a grouped conv, a value used twice (not fused past), linear -> ReLU."""
    L = Layer
    layers = (
        L("c1", "conv2d", (INPUT,), out_channels=8, kernel=3, padding=1),
        L("b1", "batchnorm", ("c1",)), L("r1", "relu", ("b1",)),
        L("c2", "conv2d", ("r1",), out_channels=8, kernel=3, padding=1),
        L("b2", "batchnorm", ("c2",)), L("a2", "add", ("r1", "b2")), L("r2", "relu", ("a2",)),
        L("c3", "conv2d", ("r2",), out_channels=8, kernel=3, padding=1, bias=True),
        L("b3", "batchnorm", ("c3",)), L("k3", "clip", ("b3",), min=-0.5, max=2.0),
        L("c4", "conv2d", ("k3",), out_channels=8, kernel=(2, 3), padding=(1, 1, 0, 1),
          stride=(1, 2)),
        L("r4", "relu", ("c4",)),
        L("c5", "conv2d", ("r4",), out_channels=8, kernel=3, padding=1, groups=4),
        L("b5", "batchnorm", ("c5",)), L("a5", "add", ("b5", "r4")),
        L("c6", "conv2d", ("a5",), out_channels=4, kernel=1),
        L("a6", "add", ("c6", "c6")),
        L("gap", "globalavgpool", ("a6",)),
        L("fc", "linear", ("gap",), out_channels=6, bias=True), L("rf", "relu", ("fc",)))
    return Network("chains", (6, 7, 3), layers, 6)


def random_params(net, seed=0):
    rng = np.random.default_rng(seed)
    params = init_params(net, rng)
    for name in list(params):
        if name.endswith(("running_mean", "bias")):
            params[name] = rng.normal(0, 0.3, params[name].shape).astype(np.float32)
        elif name.endswith("running_var"):
            params[name] = rng.uniform(0.5, 2, params[name].shape).astype(np.float32)
    return params


def test_fusion_plan_of_the_chains():
    plan = {step.layer.name: [l.name for l in step.epilogue.layers] if step.epilogue else []
            for step in fusion_plan(chain_net())}
    assert plan == {"c1": ["b1", "r1"], "c2": ["b2", "a2", "r2"], "c3": ["b3", "k3"],
                    "c4": ["r4"], "c5": ["b5", "a5"], "c6": [], "a6": [], "gap": [],
                    "fc": ["rf"]}
    # ResNet-32: 31 convs with their BatchNorm, ReLU and (second conv of a block) residual add;
    # the shortcuts, the pool and the classifier alone
    steps = fusion_plan(resnet_cifar(32))
    assert len(steps) == 31 + 2 + 2
    assert sum(1 for s in steps if s.epilogue and s.epilogue.residual) == 15
    # a pass that replaces BatchNorms keeps them as layers of their own
    assert all(s.epilogue is None or s.epilogue.batchnorm is None
               for s in fusion_plan(chain_net(), batchnorm=False))


def test_fused_pass_is_the_layers_one_by_one(two_threads):
    """Fused output stages give the same bits as the layers run one by one (keep=every layer
    disables fusion), on one thread and on two."""
    net = chain_net()
    params = random_params(net)
    x = np.random.default_rng(1).standard_normal((5, 6, 7, 3)).astype(np.float32)
    threads.set_workers(1)
    layers = forward(net, params, x, keep=lambda name: True)
    fused = forward(net, params, x)
    np.testing.assert_array_equal(fused, layers[net.output])
    threads.set_workers(2)
    np.testing.assert_array_equal(forward(net, params, x), fused)
    assert np.ptp(fused) > 0.1


def test_chunks_on_threads_give_the_same_numbers(two_threads, monkeypatch):
    """A batch split into chunks of 3 images on 1 or 2 threads, or of 4 images: the FP32 logits
    and the analog ones - read noise, ADC noise, clip/zero counts included, replicated layers
    (pixels on 2 or 4 copies, uneven shares) too - are the same bits."""
    import archsim.network as network
    net = chain_net()
    params = random_params(net)
    x = np.random.default_rng(2).standard_normal((10, 6, 7, 3)).astype(np.float32)
    chip = load_chip(CHIP, {"chip.tiles.array.rows": 32, "chip.tiles.array.cols": 32}
                     ).with_mapping("all-analog")
    mp = map_network(chip, net)
    assert mp.layer("c1").copy_cols == ((0, 2), (2, 4), (4, 6), (6, 7))
    assert mp.layer("c5").copies == 2
    state = F.program_chip(mp, params, Streams(0)).at(86400.0, Streams(1))
    results = []
    for n, images in ((1, 3), (2, 3), (2, 4)):
        monkeypatch.setattr(network, "CHUNK_MACS", images * net.total_macs())
        threads.set_workers(n)
        counts = {}
        analog = F.analog_forward(state.read(np.random.default_rng(3)), x, adc_counts=counts,
                                  noise_rng=np.random.default_rng(4))
        results.append((forward(net, params, x), analog, counts))
    for other in results[1:]:
        np.testing.assert_array_equal(results[0][0], other[0])
        np.testing.assert_array_equal(results[0][1], other[1])
        assert results[0][2].keys() == other[2].keys() and all(
            np.array_equal(results[0][2][k], other[2][k]) for k in results[0][2])
    assert results[0][2]["c2"][2] == 10 * 6 * 7 * 8 * 3          # K = 72 on 32 rows: 3 blocks


def test_analog_pass_equals_the_natural_order_product():
    """Each analog layer, computed by the fast path (patches in the layout order, the weights'
    rows in the same order, grouped products on the diagonal blocks) gives what
    analog_matmul gives on plain (c, i, j) patches: the same conversions (to float32 rounding of
    the GEMM's sums), the same counts, and - no ADC noise, ideal devices, unlimited converters -
    the FP32 result."""
    net = chain_net()
    params = random_params(net, 3)
    x = np.random.default_rng(5).standard_normal((4, 6, 7, 3)).astype(np.float32)
    chip = load_chip(CHIP, {"chip.tiles.array.rows": 40, "chip.tiles.array.cols": 16,
                            "chip.device.model": "ideal", "chip.tiles.adc.output_noise": 0.0,
                            "mapping.replication": "none"}
                     ).with_mapping("all-analog")
    mp = map_network(chip, net)
    assert mp.layer("c5").groups == 4 and len(mp.layer("c5").arrays) == 2
    pc = F.program_chip(mp, params, Streams(0), precision=F.UNLIMITED)
    read = pc.at(3600.0, Streams(1)).read(None)
    ref = forward(net, params, x)
    np.testing.assert_allclose(F.analog_forward(read, x), ref, rtol=1e-5,
                               atol=1e-5 * np.abs(ref).max())
    # grouped layer: the diagonal blocks only; its conversions are those of its two arrays
    lr = read.layers["c5"]
    assert [d is not None for d in lr.diagonal] == [True, True]
    acts = forward(net, params, x, keep=lambda n: n == "r4")["r4"]
    layer = net.layer("c5")
    cols = layer.matrix_input(acts)
    counts = np.zeros(3, np.int64)
    out = F.analog_matmul(lr, cols, pc.converters, gdc=False, workspace=F.Workspace(),
                          counts=counts)
    np.testing.assert_allclose(out, layer.multiply(cols, layer.weight_matrix(params)),
                               rtol=1e-5, atol=1e-5)
    assert counts[2] == cols.shape[0] * 8                    # 2 arrays x 4 columns, not 2 x 8


def test_blas_runs_one_thread_per_worker_during_a_pass(two_threads):
    """archsim.threads owns the thread counts: during a pass every BLAS runs one thread per
    worker (the workers are the parallelism), after it BLAS is back to its own count."""
    from threadpoolctl import threadpool_info
    from archsim.layers import Pass

    def blas_threads():
        return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    before = blas_threads()
    threads.set_workers(2)
    net = chain_net()
    params = random_params(net)
    seen = []

    def fused(layer, a, epilogue, residual, run):
        seen.append(blas_threads())
        return layer.forward_fused(a, epilogue, residual, run)

    from archsim.network import infer
    shared = {}
    infer(net, np.zeros((8, 6, 7, 3), np.float32),
          lambda first, ws: Pass(params, ws, fused_matmul=fused, first_image=first, shared=shared))
    assert seen and all(s == {1} for s in seen)
    assert blas_threads() == before
