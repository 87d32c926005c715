"""ONNX import: every supported op and attribute against onnxruntime (models built with
onnx.helper), shape-subgraph folding with a symbolic batch, opsets, the NCHW layout, the public
API, workloads and the CLI on .onnx files, and every bad input as one line with exit status 2."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import archsim
from archsim.cli import main
from archsim.errors import DataError, WorkloadError
from archsim.layers import ONNX_OPS
from onnx_models import Graph, mobilenet, ort_run, save, without_attribute

# agreement with onnxruntime: |archsim - ort| <= 1e-4 x (|ort| + max|ort|), i.e. 1e-4 relative
# to each value and to the output's scale (values near zero carry the rounding of large sums)
RTOL = 1e-4


def compare_with_ort(model, tmp_path, batch=3, seed=1):
    path = save(model, tmp_path / "m.onnx")
    net, params = archsim.import_onnx(path)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    x = np.random.default_rng(seed).standard_normal([batch] + shape).astype(np.float32)
    ref = ort_run(model, x)
    got = archsim.fp32_logits(net, params, x)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=RTOL, atol=RTOL * float(np.abs(ref).max()))
    return net, params, x, ref


# ------------------------------------------------------------------------------------------
# One model per op family; "sensitive" lists attributes whose removal changes onnxruntime's
# answer, so the comparison would fail if archsim ignored them.
# ------------------------------------------------------------------------------------------

def conv_grouped_dilated_asymmetric():
    g = Graph(("N", 4, 9, 8))
    y = g.conv("x", 4, 6, (3, 2), group=2, name="conv", dilations=[2, 1], pads=[1, 0, 2, 1],
               strides=[2, 1])
    return g.model(g.flatten(y)), [("conv", "dilations"), ("conv", "pads"), ("conv", "strides")]


def conv_depthwise():
    g = Graph(("N", 5, 7, 7))
    y = g.conv("x", 5, 5, 3, group=5, bias=False, name="dw", pads=[1, 1, 1, 1])
    return g.model(g.flatten(y)), [("dw", "pads"), ("dw", "group")]


def conv_depthwise_multiplier_auto_pad():
    g = Graph(("N", 3, 7, 6))
    y = g.conv("x", 3, 6, 3, group=3, name="dw", strides=[2, 2], auto_pad="SAME_UPPER")
    z = g.conv(y, 6, 4, (2, 3), name="lower", auto_pad="SAME_LOWER")
    v = g.conv(z, 4, 2, 2, name="valid", auto_pad="VALID")
    return g.model(g.flatten(v)), [("dw", "auto_pad"), ("lower", "auto_pad")]


def gemm_variants():
    g = Graph(("N", 2, 3, 3))
    f = g.flatten("x")
    w = g.init(g.rand(18, 7))                     # (in, out): transB = 0
    c = g.init(g.rand(7))
    y = g.op("Gemm", [f, w, c], name="gemm", alpha=0.5, beta=2.0)
    z = g.gemm(y, 7, 5, name="gemm_t")
    m = g.op("MatMul", [z, g.init(g.rand(5, 4))], name="matmul")
    return g.model(m), [("gemm", "alpha"), ("gemm", "beta"), ("gemm_t", "transB")]


def batchnorm_eps():
    g = Graph(("N", 3, 4, 4))
    ins = ["x", g.init(g.rand(3) + 1), g.init(g.rand(3)), g.init(g.rand(3)),
           g.init(np.array([0.01, 0.02, 0.005], np.float32))]
    y = g.op("BatchNormalization", ins, name="bn", epsilon=0.05)
    return g.model(g.flatten(y)), [("bn", "epsilon")]


def activations():
    g = Graph(("N", 4, 3, 3))
    x = g.op("Mul", ["x", g.init(np.float32(4.0))])                 # values beyond +-6
    a = g.relu6(x, name="relu6")
    b = g.op("Clip", [x, g.const(np.float32(-1.5))], name="clip_min")
    c = g.op("LeakyRelu", [x], name="leaky", alpha=0.3)
    d = g.op("Sigmoid", [x])
    e = g.op("HardSigmoid", [x], name="hsig", alpha=0.3, beta=0.4)
    f = g.op("HardSwish", [x])
    t = g.op("Tanh", [x])
    r = g.op("Relu", [x])
    y = g.op("Concat", [a, b, c, d, e, f, t, r], axis=1)
    return g.model(g.flatten(y)), [("leaky", "alpha"), ("hsig", "alpha"), ("hsig", "beta")]


def pools():
    g = Graph(("N", 3, 9, 8))
    m = g.op("MaxPool", ["x"], name="max", kernel_shape=[3, 2], strides=[2, 1], pads=[1, 0, 1, 1])
    a = g.op("AveragePool", ["x"], name="avg", kernel_shape=[3, 2], strides=[2, 1],
             pads=[1, 0, 1, 1])
    b = g.op("AveragePool", ["x"], name="avg_incl", kernel_shape=[3, 2], strides=[2, 1],
             pads=[1, 0, 1, 1], count_include_pad=1)
    s = g.op("MaxPool", ["x"], kernel_shape=[2, 2], strides=[2, 2])
    p = g.op("AveragePool", [s], kernel_shape=[2, 2])
    y = g.op("Concat", [g.flatten(m), g.flatten(a), g.flatten(b), g.flatten(p)], axis=1)
    return g.model(y), [("max", "pads"), ("max", "strides"), ("avg", "strides"),
                        ("avg_incl", "count_include_pad")]


def global_pools():
    g = Graph(("N", 3, 5, 4))
    a = g.op("GlobalAveragePool", ["x"])
    b = g.op("ReduceMean", ["x"], name="mean", axes=[2, 3], keepdims=0)  # opset 17: attribute
    y = g.op("Concat", [g.flatten(a), b], axis=1)
    return g.model(y), [("mean", "keepdims")]


def reduce_mean_opset18():
    g = Graph(("N", 3, 5, 4), opset=18)
    a = g.op("ReduceMean", ["x", g.init(np.array([-1, -2], np.int64))], keepdims=1)
    b = g.op("Squeeze", [g.op("GlobalAveragePool", ["x"]), g.init(np.array([3, 2], np.int64))])
    y = g.op("Concat", [g.op("Reshape", [a, g.init(np.array([-1, 3], np.int64))]), b], axis=1)
    return g.model(y), []


def add_mul_broadcast():
    g = Graph(("N", 4, 5, 5))
    c = g.conv("x", 4, 4, 3, pads=[1, 1, 1, 1])
    res = g.op("Add", [c, "x"])                                       # residual
    b = g.op("Add", [res, g.init(g.rand(1, 4, 1, 1))])                 # per-channel constant
    s = g.op("Sub", [b, g.init(g.rand(1, 5, 1))])                      # per-row constant (H)
    m = g.op("Mul", [g.init(g.rand(4, 1, 1) + 1), s])                  # constant first
    d = g.op("Div", [m, g.init(np.float32(3.0))])
    # squeeze-excitation: a (N, C, 1, 1) gate times the activation
    gate = g.op("HardSigmoid", [g.op("GlobalAveragePool", [d])])
    y = g.op("Mul", [d, gate])
    return g.model(g.flatten(y)), []


def concat_pad_slice():
    g = Graph(("N", 3, 8, 7))
    a = g.conv("x", 3, 2, 1)
    b = g.conv("x", 3, 4, 1)
    cat = g.op("Concat", [a, b, "x"], name="cat", axis=-3)            # channels, negative axis
    pads = g.init(np.array([0, 2, 1, 0, 0, 1, 2, 3], np.int64))        # C 2/1, H 1/2, W 0/3
    p = g.op("Pad", [cat, pads, g.init(np.float32(0.5))], name="pad")
    sl = g.op("Slice", [p, g.init(np.array([1, -2, 7], np.int64)),      # H from 1 step 2,
                        g.init(np.array([9999, 0, 1], np.int64)),       # W backwards, C 7..1
                        g.init(np.array([2, 3, 1], np.int64)),
                        g.init(np.array([2, -1, -3], np.int64))], name="slice")
    return g.model(g.flatten(sl)), []


def pad_axes_opset18_and_removed_ops():
    g = Graph(("N", 2, 4, 4), opset=18)
    i = g.op("Identity", ["x"])
    d = g.op("Dropout", [i])
    p = g.op("Pad", [d, g.init(np.array([1, 0, 2, 3], np.int64)), "",
                     g.init(np.array([2, 3], np.int64))])               # H 1/2, W 0/3
    c = g.op("Cast", [p], to=TensorProto.FLOAT)
    return g.model(g.flatten(c)), []


def shape_subgraph_folding():
    """The ops exporters trace for shapes: Shape -> Gather -> Unsqueeze -> Concat -> Reshape with
    the batch kept symbolic, ConstantOfShape/Cast/arithmetic on constants feeding a Pad."""
    g = Graph(("N", 3, 6, 6))
    y = g.conv("x", 3, 4, 3, pads=[1, 1, 1, 1])
    shape = g.op("Shape", [y])
    batch = g.op("Gather", [shape, g.const(np.array(0, np.int64))], axis=0)
    b1 = g.op("Unsqueeze", [batch, g.const(np.array([0], np.int64))])
    target = g.op("Concat", [b1, g.const(np.array([-1], np.int64))], axis=0)
    # pads computed from constants, as PyTorch traces them: [0, 1, 0, 0, 0, 1, 0, 0] (C 1/1)
    ones = g.op("ConstantOfShape", [g.const(np.array([2], np.int64))],
                value=helper.make_tensor("v", TensorProto.INT64, [1], [1]))
    zeros = g.op("Sub", [ones, ones])
    zero = g.op("Cast", [g.const(np.array([0.0], np.float32))], to=TensorProto.INT64)
    one = g.op("Slice", [ones, g.const(np.array([0], np.int64)), g.const(np.array([1], np.int64))])
    half = g.op("Concat", [zero, one, zeros], axis=0)
    p = g.op("Pad", [y, g.op("Concat", [half, half], axis=0)])
    return g.model(g.op("Reshape", [p, target])), []


CASES = {f.__name__: f for f in (
    conv_grouped_dilated_asymmetric, conv_depthwise, conv_depthwise_multiplier_auto_pad,
    gemm_variants, batchnorm_eps, activations, pools, global_pools, reduce_mean_opset18,
    add_mul_broadcast, concat_pad_slice, pad_axes_opset18_and_removed_ops,
    shape_subgraph_folding)}


@pytest.mark.parametrize("case", sorted(CASES))
def test_ops_agree_with_onnxruntime(case, tmp_path):
    model, sensitive = CASES[case]()
    onnx.checker.check_model(model)
    _, _, x, ref = compare_with_ort(model, tmp_path)
    for node, attr in sensitive:     # the comparison would catch an ignored attribute
        try:
            other = ort_run(without_attribute(model, node, attr), x)
        except Exception:            # without it the model does not even fit together
            continue
        assert other.shape != ref.shape or np.abs(other - ref).max() > 1e-2 * np.abs(ref).max(), \
            (node, attr)


def test_every_supported_op_is_covered():
    used = {n.op_type for case in CASES.values() for n in case()[0].graph.node}
    assert set(ONNX_OPS) | {"Identity", "Dropout", "Cast"} <= used


def test_mobilenet_agrees_with_onnxruntime(tmp_path):
    net, _, _, _ = compare_with_ort(mobilenet(), tmp_path, batch=4)
    kinds = {l.name: l.kind for l in net.layers}
    assert kinds["b1_dw"] == "conv2d" and net.layer("b1_dw").groups == 16
    assert kinds["b1_add"] == "add" and sum(k == "clip" for k in kinds.values()) == 6


@pytest.mark.parametrize("opset", [13, 16, onnx.defs.onnx_opset_version()])
def test_opsets_13_to_newest(opset, tmp_path):
    g = Graph(("N", 2, 5, 5), opset=opset)
    y = g.op("Relu", [g.conv("x", 2, 3, 3, pads=[1, 1, 1, 1])])
    a = g.op("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])
    out = g.gemm(g.flatten(a), 12, 4)
    compare_with_ort(g.model(out), tmp_path)


def test_node_names_are_layer_names_and_params_follow(tmp_path):
    net, params = archsim.import_onnx(save(mobilenet(), tmp_path / "m.onnx"))
    assert net.name == "m" and net.input_layout == "NCHW" and net.input_shape == (8, 8, 1)
    assert [l.name for l in net.matrix_layers()][:3] == ["stem", "b1_expand", "b1_dw"]
    assert params["b1_dw.weight"].shape == (16, 1, 3, 3)
    assert params["b1_dw_bn.running_var"].dtype == np.float32
    assert net.num_classes == 10 and net.output == "classifier"


def test_internal_layout_is_nhwc(tmp_path):
    """fp32_logits takes NCHW; inside, the same network runs on NHWC (what datasets give)."""
    model = mobilenet()
    net, params = archsim.import_onnx(save(model, tmp_path / "m.onnx"))
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    from archsim.network import forward
    np.testing.assert_array_equal(forward(net, params, x.transpose(0, 2, 3, 1)),
                                  archsim.fp32_logits(net, params, x))
    with pytest.raises(WorkloadError, match=r"expects inputs of shape \(N, 1, 8, 8\) \(NCHW\)"):
        archsim.fp32_logits(net, params, x.transpose(0, 2, 3, 1))


def test_external_data_models_load(tmp_path):
    model = mobilenet()
    path = tmp_path / "ext.onnx"
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.onnx.data", size_threshold=0)
    assert (tmp_path / "ext.onnx.data").stat().st_size > 1000
    net, params = archsim.import_onnx(path)
    _, inline = archsim.import_onnx(save(model, tmp_path / "inline.onnx"))
    assert params.keys() == inline.keys()
    assert all(np.array_equal(params[k], inline[k]) for k in params)


def test_batchnorm_kept_or_folded_adabs_report(tmp_path):
    """A BatchNorm kept separate gives AdaBS statistics to re-estimate; one folded into the conv
    bias does not: the mapping says which layers have them."""
    g = Graph(("N", 2, 6, 6))
    same = {"pads": [1, 1, 1, 1]}
    a = g.op("Relu", [g.bn(g.conv("x", 2, 4, 3, bias=False, name="c1", **same), 4, name="bn1")])
    b = g.op("Relu", [g.conv(a, 4, 4, 3, bias=True, name="c2", **same)])        # BN folded
    c = g.op("Relu", [g.bn(g.conv(b, 4, 4, 3, bias=False, name="c3", **same), 4, name="bn3")])
    out = g.gemm(g.flatten(g.op("GlobalAveragePool", [c])), 4, 3, name="fc")
    path = save(g.model(out), tmp_path / "bn.onnx")
    mapping = archsim.load_mapping("pcm_hybrid", str(path), policy="all-analog")
    assert {lm.name: lm.batchnorm for lm in mapping.layers} == {
        "c1": "bn1", "c2": None, "c3": "bn3", "fc": None}
    assert mapping.totals()["adabs_layers"] == 2
    table = archsim.mapping_table(mapping)
    assert "AdaBS can re-estimate BatchNorm statistics for 2 of 4 analog layers" in table


# ------------------------------------------------------------------------------------------
# Workloads, the CLI and the API on .onnx files
# ------------------------------------------------------------------------------------------

def test_cli_map_and_run_take_an_onnx_file(tmp_path, capsys):
    path = str(save(mobilenet(), tmp_path / "mobilenet.onnx"))
    assert main(["map", "pcm_hybrid", path]) == 0
    out = capsys.readouterr().out
    assert out.startswith("mobilenet on pcm-hybrid-512 (hybrid)")
    assert "b1_dw" in out and "16x(9x1)" in out
    assert main(["run", "pcm_hybrid", path, "--no-accuracy", "--quiet", "--inferences", "2",
                 "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["accuracy"] is None and report["workload"]["dataset"] is None
    assert report["timing"]["latency_cycles"] > 0 and report["summary"]["area_mm2"] > 0
    assert report["energy"]["per_inference_pj"] > 0


def test_run_without_a_dataset_is_one_line(tmp_path, capsys):
    path = str(save(mobilenet(), tmp_path / "mobilenet.onnx"))
    rc = main(["run", "pcm_hybrid", path, "--quiet", "--out", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert "mobilenet.onnx: accuracy needs a dataset: give --dataset digits | cifar10" in err
    assert not (tmp_path / "out").exists()


def test_workload_yaml_names_an_onnx_network(tmp_path):
    save(mobilenet(), tmp_path / "mobilenet.onnx")
    (tmp_path / "w.yaml").write_text("workload:\n  name: mb\n  network: mobilenet.onnx\n"
                                     "  dataset: {name: digits, mean: [0.3], std: [0.4]}\n")
    from archsim.workloads import load_workload
    wl = load_workload(tmp_path / "w.yaml")
    assert wl.network.name == "mobilenet" and wl.spec.weights is None
    params = wl.load_params()
    assert params["stem.weight"].shape == (8, 1, 3, 3)
    assert wl.dataset("test").images.shape[1:] == (8, 8, 1)
    # --dataset on a bare .onnx: the shipped digits workload's dataset section
    bare = load_workload(tmp_path / "mobilenet.onnx", dataset="digits")
    assert bare.spec.dataset == wl.spec.dataset and bare.spec.name == "mobilenet"


def test_dataset_that_does_not_fit_the_network(tmp_path, monkeypatch):
    """A digits-shaped network with CIFAR-shaped images: one line naming both shapes."""
    import archsim.workloads as W
    from archsim.datasets import Dataset
    save(mobilenet(), tmp_path / "mobilenet.onnx")
    monkeypatch.setattr(W, "load_digits_split", lambda split, mean, std: Dataset(
        "digits", np.zeros((2, 32, 32, 3), np.uint8), np.zeros(2, np.int64),
        np.zeros(3, np.float32), np.ones(3, np.float32), "fake.npz"))
    wl = W.load_workload(tmp_path / "mobilenet.onnx", dataset="digits")
    with pytest.raises(DataError) as e:
        wl.dataset("test")
    assert str(e.value) == ("fake.npz: images of shape (32, 32, 3) (H, W, C), network mobilenet "
                            "expects (8, 8, 1)")
    with pytest.raises(Exception, match="expected digits | cifar10 or a workload YAML"):
        W.load_workload(tmp_path / "mobilenet.onnx", dataset="imagenet")


def test_train_fine_tunes_an_onnx_model(tmp_path, capsys):
    """archsim train on a bare .onnx: --dataset names the data, --init the model's own weights;
    the trained weights load back as the workload's."""
    path = str(save(mobilenet(), tmp_path / "mobilenet.onnx"))
    out = tmp_path / "w.npz"
    assert main(["train", path, "--dataset", "digits", "--init", path, "--epochs", "1",
                 "--max-images", "64", "--noise", "0", "--quiet", "--out", str(out)]) == 0
    assert "trained mobilenet: 1 epochs" in capsys.readouterr().out
    from archsim.workloads import load_workload
    wl = load_workload(path)
    trained, original = wl.load_params(out), wl.load_params()
    assert trained.keys() == original.keys()
    assert not np.array_equal(trained["b1_dw.weight"], original["b1_dw.weight"])


def test_unknown_network_name_in_yaml(tmp_path):
    from archsim.errors import ConfigError
    from archsim.workloads import load_workload
    (tmp_path / "w.yaml").write_text("workload:\n  network: vgg16\n")
    with pytest.raises(ConfigError) as e:
        load_workload(tmp_path / "w.yaml")
    assert e.value.yaml_path == "workload.network"
    assert "or an .onnx file, got 'vgg16'" in e.value.message


def test_import_onnx_and_fp32_logits_are_public():
    assert {"import_onnx", "fp32_logits", "run", "compare", "load_mapping"} <= set(archsim.__all__)
    assert all(hasattr(archsim, name) for name in archsim.__all__)


def test_compare_api(tmp_path):
    path = str(save(mobilenet(), tmp_path / "mobilenet.onnx"))
    both = archsim.compare("pcm_hybrid", "digital_fp32", path, accuracy=False, inferences=1,
                           progress=False)
    a, b = both.reports()
    assert a["chip"]["name"] != b["chip"]["name"]
    assert a["workload"]["macs_per_inference"] == b["workload"]["macs_per_inference"]
    assert "A / B" in both.table().splitlines()[0]


# ------------------------------------------------------------------------------------------
# Bad input: one line naming the file and the node, exit status 2, nothing written
# ------------------------------------------------------------------------------------------

def run_cli(capsys, tmp_path, path, *extra):
    out_dir = tmp_path / "out"
    rc = main(["run", "pcm_hybrid", str(path), "--no-accuracy", "--quiet", "--out", str(out_dir),
               *extra])
    out, err = capsys.readouterr()
    assert rc == 2 and out == "", err
    assert err.startswith("archsim: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert not out_dir.exists()
    return err


def small(op_nodes, tmp_path, name="bad.onnx", shape=("N", 2, 4, 4), opset=17):
    g = Graph(shape, opset=opset)
    out = op_nodes(g)
    return save(g.model(out), tmp_path / name)


def test_unsupported_op(tmp_path, capsys):
    path = small(lambda g: g.op("Erf", [g.op("Relu", ["x"])], name="my_erf"), tmp_path)
    err = run_cli(capsys, tmp_path, path)
    assert f"{path}: node my_erf (Erf): unsupported op Erf (supported: Add, AveragePool," in err
    assert "Slice, Squeeze, Sub, Tanh" in err


@pytest.mark.parametrize("build, needle", [
    (lambda g: g.op("Pad", ["x", g.init(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))],
                    name="p", mode="reflect"),
     "node p (Pad): mode 'reflect' (supported: 'constant')"),
    (lambda g: g.op("MaxPool", ["x"], name="mp", kernel_shape=[2, 2], ceil_mode=1),
     "node mp (MaxPool): ceil_mode=1 (supported: 0)"),
    (lambda g: g.op("Concat", ["x", "x"], name="cc", axis=2),
     "node cc (Concat): Concat on axis 2 (supported: 1, the channels)"),
    (lambda g: g.op("Reshape", ["x", g.init(np.array([-1, 4, 8], np.int64))], name="rs"),
     "node rs (Reshape): Reshape to [-1, 4, 8] (supported: (N, -1)"),
])
def test_unsupported_attribute_value(build, needle, tmp_path, capsys):
    assert needle in run_cli(capsys, tmp_path, small(build, tmp_path))


def test_batch_size_never_becomes_a_constant(tmp_path, capsys):
    """A value computed from the symbolic batch size used as data (not as Reshape's batch axis)
    is refused rather than frozen at some batch size."""
    def build(g):
        n = g.op("Gather", [g.op("Shape", ["x"]), g.const(np.array(0, np.int64))], axis=0)
        scale = g.op("Cast", [n], to=TensorProto.FLOAT)
        return g.op("Mul", ["x", scale], name="scale_by_batch")
    err = run_cli(capsys, tmp_path, small(build, tmp_path))
    assert "node scale_by_batch (Mul): constant" in err and "depends on the batch size" in err


def test_dynamic_spatial_size(tmp_path, capsys):
    path = small(lambda g: g.op("Relu", ["x"]), tmp_path, shape=("N", 2, "height", "width"))
    err = run_cli(capsys, tmp_path, path)
    assert "input x has a dynamic size on axis 2 ('height'" in err and "fixed" in err


def test_corrupt_and_truncated_files(tmp_path, capsys):
    good = save(mobilenet(), tmp_path / "good.onnx").read_bytes()
    (tmp_path / "trunc.onnx").write_bytes(good[: len(good) // 2])
    err = run_cli(capsys, tmp_path, tmp_path / "trunc.onnx")
    assert "trunc.onnx: not a readable ONNX model, corrupt or truncated" in err
    (tmp_path / "junk.onnx").write_bytes(b"\x00\x01this is not a model")
    assert "junk.onnx: not a" in run_cli(capsys, tmp_path, tmp_path / "junk.onnx")
    (tmp_path / "empty.onnx").write_bytes(b"")
    assert "empty.onnx: not an ONNX model" in run_cli(capsys, tmp_path, tmp_path / "empty.onnx")
    assert "nope.onnx: data file not found" in run_cli(capsys, tmp_path, tmp_path / "nope.onnx")


def test_missing_and_truncated_external_data(tmp_path, capsys):
    path = tmp_path / "ext.onnx"
    onnx.save(mobilenet(), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.onnx.data", size_threshold=0)
    data = (tmp_path / "ext.onnx.data").read_bytes()
    (tmp_path / "ext.onnx.data").write_bytes(data[:100])
    assert "ext.onnx.data is truncated" in run_cli(capsys, tmp_path, path)
    (tmp_path / "ext.onnx.data").unlink()
    err = run_cli(capsys, tmp_path, path)
    assert "external data file ext.onnx.data not found beside the model" in err
    with pytest.raises(DataError):
        archsim.import_onnx(path)


def test_several_inputs_or_outputs(tmp_path, capsys):
    g = Graph(("N", 2, 4, 4))
    y = g.op("Add", ["x", "x2"])
    x2 = helper.make_tensor_value_info("x2", TensorProto.FLOAT, ["N", 2, 4, 4])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 4, 4])
    path = save(g.model(y, inputs=[x, x2]), tmp_path / "two_in.onnx")
    assert "the graph has 2 inputs (x, x2)" in run_cli(capsys, tmp_path, path)
    g = Graph(("N", 2, 4, 4))
    a, b = g.op("Relu", ["x"]), g.op("Sigmoid", ["x"])
    path = save(g.model(a, outputs=[a, b]), tmp_path / "two_out.onnx")
    assert "the graph has 2 outputs" in run_cli(capsys, tmp_path, path)


def test_initializer_shape_disagrees_with_its_use(tmp_path, capsys):
    def conv(g):
        w = g.init(g.rand(4, 3, 3, 3))                    # 3 input channels; the input has 2
        return g.op("Conv", ["x", w], name="conv", kernel_shape=[3, 3])
    err = run_cli(capsys, tmp_path, small(conv, tmp_path))
    assert "node conv (Conv): initializer w1 has shape (4, 3, 3, 3), but its use as the weight " \
           "of this conv2d layer on an input of shape (N, 2, 4, 4) needs (4, 2, 3, 3)" in err

    def gemm(g):
        return g.op("Gemm", [g.flatten("x"), g.init(g.rand(5, 31))], name="fc", transB=1)
    err = run_cli(capsys, tmp_path, small(gemm, tmp_path, name="gemm.onnx"))
    assert "node fc (Gemm): initializer w2 has shape (5, 31)" in err and "needs (5, 32)" in err


def test_network_needing_more_arrays_than_the_chip_has(tmp_path, capsys):
    g = Graph(("N", 64, 8, 8))
    y = g.gemm(g.flatten(g.op("Relu", ["x"])), 4096, 64, name="first")
    y = g.gemm(g.op("Relu", [y]), 64, 16384, name="wide")
    y = g.gemm(g.op("Relu", [y]), 16384, 10, name="tall")
    out = g.gemm(g.op("Relu", [y]), 10, 10, name="last")
    path = save(g.model(out), tmp_path / "huge.onnx")
    err = run_cli(capsys, tmp_path, path)
    # hybrid: first and last digital; wide (64 x 16384) 64 column blocks, tall (16384 x 10)
    # 32 row blocks: 96 arrays
    assert "network huge needs 96 arrays (512x512) but the chip has 64 (64 tiles x 1)" in err
