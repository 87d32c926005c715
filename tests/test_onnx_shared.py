"""The two real PyTorch exports of the shared ResNet-32 (shared/data README section 7): one keeps
BatchNorm and traces the option-A shortcut into shape ops, one folds BatchNorm into the convs and
keeps its weights in an external data file. Both load, compute what the built-in network computes,
map to the same arrays, and the BatchNorm-keeping one runs with the built-in's cycle counts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import archsim
from archsim import functional as F
from archsim.cli import main
from archsim.config import load_chip
from archsim.mapping import map_network
from archsim.network import forward
from archsim.regress import LAYER_QUANTITIES, load_golden
from archsim.timing import simulate_timing
from archsim.workloads import load_workload
from conftest import shared_file

pytestmark = pytest.mark.shared_data

KEPT = "resnet32_cifar10_akamaster.onnx"
FOLDED = "resnet32_cifar10_akamaster_dynamo.onnx"
GOLDEN = Path(__file__).resolve().parent / "golden" / "pcm_hybrid__resnet32_cifar10.json"


@pytest.fixture(scope="module")
def builtin():
    shared_file("resnet32_cifar10_akamaster.npz")
    wl = load_workload("resnet32_cifar10")
    return wl, wl.load_params()


@pytest.fixture(scope="module", params=[KEPT, FOLDED])
def export(request):
    path = shared_file(request.param)
    net, params = archsim.import_onnx(path)
    return request.param, path, net, params


def test_exports_load_and_map_like_the_builtin(export, builtin):
    name, _, net, params = export
    wl, _ = builtin
    assert net.input_shape == (32, 32, 3) and net.input_layout == "NCHW" and net.num_classes == 10
    chip = load_chip("pcm_hybrid")
    mine, theirs = map_network(chip, net), map_network(chip, wl.network)
    # the default chip replicates (replication: auto): 39 arrays with one copy each, 58 as mapped
    assert len(mine.analog_layers) == 30 and mine.arrays_needed == 58
    assert mine.plan.arrays_one_copy == 39
    assert [(lm.k, lm.n, lm.placement, len(lm.arrays), lm.copies) for lm in mine.layers] == \
        [(lm.k, lm.n, lm.placement, len(lm.arrays), lm.copies) for lm in theirs.layers]
    assert mine.totals()["macs"] == theirs.totals()["macs"] == 68_862_592
    # BatchNorm kept: AdaBS can re-estimate all 30 analog layers; folded: none
    assert mine.totals()["adabs_layers"] == (30 if name == KEPT else 0)
    if name == KEPT:
        assert net.matrix_layers()[0].name == "/conv1/Conv"
        assert {"/bn1/BatchNormalization.running_var", "/linear/Gemm.bias"} <= set(params)
    else:
        assert "node_Conv_542.bias" in params      # the folded BatchNorm


def test_exports_compute_the_builtin_network(export, builtin):
    name, _, net, params = export
    wl, bparams = builtin
    x = wl.dataset("test").normalized(np.arange(0, 10000, 313))             # 32 images
    ref = forward(wl.network, bparams, x)
    got = archsim.fp32_logits(net, params, x.transpose(0, 3, 1, 2))
    if name == KEPT:       # the same operations in the same order: the same bits
        np.testing.assert_array_equal(got, ref)
        chip = load_chip("pcm_hybrid")
        streams = F.chip_streams(0, "hybrid", 0)
        ts = streams.child("time", 0)
        outs = [F.analog_forward(
            F.program_chip(map_network(chip, n), p, streams).at(3600.0, ts).read(ts("read")),
            x[:8], noise_rng=ts("adc-noise")) for n, p in ((net, params), (wl.network, bparams))]
        np.testing.assert_array_equal(outs[0], outs[1])
    else:                  # BatchNorm folded into the weights by the exporter
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
        assert (got.argmax(1) == ref.argmax(1)).all()


def test_batchnorm_export_has_the_builtin_cycle_counts():
    path = shared_file(KEPT)
    net, _ = archsim.import_onnx(path)
    golden = load_golden(GOLDEN)
    timing = simulate_timing(map_network(load_chip("pcm_hybrid"), net), golden["inferences"])
    for q, value in golden["totals"].items():
        assert getattr(timing, q) == value, q
    assert dict(timing.actions) == golden["actions"]
    # layer by layer, in order: the weight layers and the residual adds (names differ)
    builtin = load_workload("resnet32_cifar10").network
    pairs = [(a.name, b.name) for a, b in zip(
        [l for l in net.layers if l.is_matrix or l.kind == "add"],
        [l for l in builtin.layers if l.is_matrix or l.kind == "add"])]
    assert len(pairs) == 47
    for mine, theirs in pairs:
        lt = timing.layer(mine)
        assert {q: getattr(lt, q) for q in LAYER_QUANTITIES} == golden["layers"][theirs], mine


def test_archsim_run_on_the_batchnorm_export(tmp_path, capsys):
    path = shared_file(KEPT)
    golden = load_golden(GOLDEN)
    assert main(["run", "pcm_hybrid", str(path), "--no-accuracy", "--quiet", "--inferences",
                 str(golden["inferences"]), "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["timing"]["latency_cycles"] == golden["totals"]["latency_cycles"]
    assert report["timing"]["interval_cycles"] == golden["totals"]["interval_cycles"]
    # the default chip replicates (replication: auto): 58 arrays, 39 with one copy each
    assert report["mapping"]["totals"]["arrays"] == 58
    assert report["mapping"]["replication"]["arrays_one_copy"] == 39


def test_accuracy_path_with_a_dataset(builtin, tmp_path):
    """A bare .onnx with --dataset cifar10 (the shipped ResNet-32 workload's files and
    normalization): FP32 accuracy as the built-in network's on the same images."""
    path = shared_file(KEPT)
    shared_file("cifar10_test.npz")
    shared_file("cifar10_train_jpeg.npz")
    result = archsim.run("pcm_hybrid", str(path), dataset="cifar10", seeds=1, times_s=(3600.0,),
                         test_images=40, calib_images=40, inferences=1, progress=False)
    acc = result.accuracy
    wl, bparams = builtin
    test = wl.dataset("test")
    test = test.subset(np.linspace(0, len(test), 40, endpoint=False).astype(np.int64))
    assert acc.fp32 == F.fp32_accuracy(wl.network, bparams, test)
    assert [s.compensation for s in acc.series] == list(F.COMPENSATIONS)


@pytest.mark.slow
@pytest.mark.parametrize("name", [KEPT, FOLDED])
def test_exports_score_82_56_percent_on_the_whole_test_set(name, builtin):
    wl, _ = builtin
    net, params = archsim.import_onnx(shared_file(name))
    test = wl.dataset("test")
    x = test.normalized().transpose(0, 3, 1, 2)                 # NCHW, as the model takes it
    logits = archsim.fp32_logits(net, params, x)
    assert int((logits.argmax(1) == test.labels).sum()) == 8256
