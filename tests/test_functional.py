"""Functional simulation (archsim.functional): closed forms, GDC, AdaBS, reproducibility."""

import json

import numpy as np
import pytest

from archsim import functional as F
from archsim.config import load_chip
from archsim.datasets import load_digits_split
from archsim.mapping import map_network
from archsim.network import Layer, Network, Workspace, digits_cnn, forward, init_params

from conftest import REPO, shared_file

CHIP = REPO / "configs" / "pcm_hybrid.yaml"


def chip(policy="all-analog", **overrides):
    """The default chip without ADC output noise (hand-computed cases set it when they want it)."""
    return load_chip(CHIP, {"chip.tiles.adc.output_noise": 0.0, **overrides}).with_mapping(policy)


def small_net() -> Network:
    """Conv (K = 27) -> BN -> ReLU -> conv (K = 72) -> BN -> pool -> linear: on 16x16 arrays every
    layer is split into several row and column blocks."""
    layers = (Layer("c1", "conv2d", ("input",), out_channels=8, kernel=3, padding=1),
              Layer("b1", "batchnorm", ("c1",)), Layer("r1", "relu", ("b1",)),
              Layer("c2", "conv2d", ("r1",), out_channels=12, kernel=3, padding=1, stride=2),
              Layer("b2", "batchnorm", ("c2",)), Layer("r2", "relu", ("b2",)),
              Layer("gap", "globalavgpool", ("r2",)),
              Layer("fc", "linear", ("gap",), out_channels=5, bias=True))
    return Network("small", (6, 6, 3), layers, 5)


def random_params(net, seed=0):
    rng = np.random.default_rng(seed)
    params = init_params(net, rng)
    for name in list(params):
        if name.endswith(("running_mean", "bias")):
            params[name] = rng.normal(0, 0.1, params[name].shape).astype(np.float32)
        elif name.endswith("running_var"):
            params[name] = rng.uniform(0.5, 2, params[name].shape).astype(np.float32)
    return params


def digits_setup(n=64):
    net = digits_cnn()
    params = random_params(net)
    data = load_digits_split("test", (0.3,), (0.4,))
    return net, params, data.normalized(slice(0, n))


@pytest.mark.parametrize("policy", ["all-analog", "hybrid"])
def test_ideal_unlimited_equals_fp32_digits(policy):
    net, params, x = digits_setup()
    mp = map_network(chip(policy, **{"chip.device.model": "ideal"}), net)
    pc = F.program_chip(mp, params, np.random.default_rng(0), precision=F.UNLIMITED)
    read = pc.at(31536000.0, np.random.default_rng(1)).read(None)
    for gdc in (False, True):
        np.testing.assert_allclose(F.analog_forward(read, x, gdc=gdc), forward(net, params, x),
                                   rtol=1e-5, atol=1e-5)


def test_ideal_unlimited_equals_fp32_split_arrays():
    net = small_net()
    params = random_params(net, 3)
    c = chip("all-analog", **{"chip.device.model": "ideal", "chip.tiles.array.rows": 16,
                              "chip.tiles.array.cols": 16, "chip.tiles.count": 64})
    mp = map_network(c, net)
    assert [(lm.row_blocks, lm.col_blocks) for lm in mp.layers] == [(2, 1), (5, 2), (1, 1)]
    x = np.random.default_rng(4).standard_normal((10, 6, 6, 3)).astype(np.float32)
    pc = F.program_chip(mp, params, np.random.default_rng(0), precision=F.UNLIMITED)
    out = F.analog_forward(pc.at(100.0, np.random.default_rng(1)).read(None), x)
    np.testing.assert_allclose(out, forward(net, params, x), rtol=1e-5, atol=1e-5)
    # with 8-bit converters it is close but not equal (quantization only)
    pc8 = F.program_chip(mp, params, np.random.default_rng(0))
    out8 = F.analog_forward(pc8.at(100.0, np.random.default_rng(1)).read(None), x)
    ref = forward(net, params, x)
    assert 0 < np.abs(out8 - ref).max() < 0.1 * np.abs(ref).max()


def test_zero_noise_scales_equal_ideal():
    net, params, x = digits_setup(16)
    zero = {"chip.device.programming_noise_scale": 0, "chip.device.read_noise_scale": 0,
            "chip.device.drift_scale": 0}
    outs = []
    for ov in (zero, {"chip.device.model": "ideal"}):
        pc = F.program_chip(map_network(chip(**ov), net), params, np.random.default_rng(0))
        outs.append(F.analog_forward(pc.at(1e6, np.random.default_rng(1)).read(None), x))
    np.testing.assert_array_equal(outs[0], outs[1])


def one_layer_net():
    return Network("one", (1, 1, 4), (Layer("flat", "flatten", ("input",)),
                                      Layer("fc", "linear", ("flat",), out_channels=2)), 2)


def test_single_array_hand_computed():
    """W = [[1, .5], [-1, .25], [.5, 0], [0, -1]], x = [1, .5, -.25, .1], 8-bit DAC/ADC, bound 12:
    DAC codes [127, 64, -32, 13]; column sums 47 and 66.5 codes -> 47/127 and 66.5/127 normalized;
    ADC step 12/127 gives 4 and 6 steps -> outputs 48/127 and 72/127."""
    net = one_layer_net()
    params = {"fc.weight": np.array([[1, -1, .5, 0], [.5, .25, 0, -1]], np.float32)}
    mp = map_network(chip("all-analog", **{"chip.device.model": "ideal"}), net)
    pc = F.program_chip(mp, params, np.random.default_rng(0))
    pl = pc.layers["fc"]
    np.testing.assert_array_equal(pl.g_prog_pos[0, :, 0], [25, 0, 12.5, 0])  # G+ = w * 25 / max|W|
    np.testing.assert_array_equal(pl.g_prog_neg[0, :, 1], [0, 0, 0, 25])
    x = np.array([1, .5, -.25, .1], np.float32).reshape(1, 1, 1, 4)
    counts = {}
    out = F.analog_forward(pc.at(25.0, np.random.default_rng(0)).read(None), x, adc_counts=counts)
    np.testing.assert_allclose(out, [[48 / 127, 72 / 127]], rtol=1e-6)
    np.testing.assert_array_equal(counts["fc"], [0, 0, 2])         # no clip, no zero, 2 conversions
    # a bound of 0.5: column 2 (66.5/127 = 0.52) clips to 0.5 = 5.29 steps of 12/127... rounded
    small = map_network(chip("all-analog", **{"chip.device.model": "ideal",
                                              "chip.tiles.adc.output_bound": 0.5}), net)
    counts = {}
    out = F.analog_forward(F.program_chip(small, params, np.random.default_rng(0)).at(
        25.0, np.random.default_rng(0)).read(None), x, adc_counts=counts)
    step = 0.5 / 127
    np.testing.assert_allclose(out, [[np.rint(47 / 127 / step) * step, 0.5]], rtol=1e-6)
    np.testing.assert_array_equal(counts["fc"], [1, 0, 2])
    # weights at 1/2 scale: the same conductances (per-array scaling), outputs halved
    params2 = {"fc.weight": params["fc.weight"] / 2}
    pc2 = F.program_chip(mp, params2, np.random.default_rng(0))
    np.testing.assert_array_equal(pc2.layers["fc"].g_prog_pos, pl.g_prog_pos)
    np.testing.assert_allclose(F.analog_forward(pc2.at(25.0, np.random.default_rng(0)).read(None), x),
                               [[24 / 127, 36 / 127]], rtol=1e-6)


def test_per_column_scaling_and_known_drift():
    """Per-column scaling maps each column's max to g_max; with drift only (nu fixed by an ideal
    programming of targets), G(t) follows the power law exactly."""
    net = one_layer_net()
    params = {"fc.weight": np.array([[1, -1, .5, 0], [.5, .25, 0, -1]], np.float32) * [[1], [0.1]]}
    mp = map_network(chip("all-analog", **{"chip.device.weight_scaling": "per-column",
                                           "chip.device.programming_noise_scale": 0,
                                           "chip.device.read_noise_scale": 0}), net)
    pc = F.program_chip(mp, params, np.random.default_rng(0), precision=F.UNLIMITED)
    pl = pc.layers["fc"]
    assert pl.g_prog_neg[:, 1].max() == 25.0 and pl.g_prog_pos[:, 0].max() == 25.0
    np.testing.assert_allclose(pl.unit[0], [1 / 25, 0.1 / 25])
    t = 86400.0
    st = pc.at(t, np.random.default_rng(0))
    g_pos = pl.g_prog_pos[0] * ((t + 20) / 20) ** (-pl.nu_pos[0])
    g_neg = pl.g_prog_neg[0] * ((t + 20) / 20) ** (-pl.nu_neg[0])
    np.testing.assert_allclose(st.read(None).layers["fc"].wn, (g_pos - g_neg) / 25, rtol=1e-6)


@pytest.mark.parametrize("weights,gdc_input,tol", [("sign", "one-hot", 0.01), ("sign", "all-ones", 0.01),
                                                  ("gauss", "one-hot", 0.06)])
def test_gdc_restores_mean_output(weights, gdc_input, tol):
    """One 256x64 array, drifted for a year: the output shrinks to about half; GDC brings its mean
    back to the value right after programming - within 1% when all devices share the drift
    statistics (weights +-1), within 6% for Gaussian weights (small conductances drift faster, and one-hot GDC
    weighs them more than the outputs do)."""
    k = 256
    net = Network("one", (1, 1, k), (Layer("flat", "flatten", ("input",)),
                                     Layer("fc", "linear", ("flat",), out_channels=64)), 64)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, k))
    params = {"fc.weight": (np.sign(w) if weights == "sign" else w).astype(np.float32)}
    mp = map_network(chip("all-analog", **{"chip.tiles.calibration.gdc_input": gdc_input}), net)
    pc = F.program_chip(mp, params, np.random.default_rng(1), precision=F.UNLIMITED)
    cols = np.abs(rng.standard_normal((2000, k))).astype(np.float32)
    ws = Workspace()
    pl = pc.layers["fc"]
    base_state = F.LayerRead(pl.row_bounds,
                             F.normalized_weights(pl.g_prog_pos, pl.g_prog_neg, 25),
                             (pl.unit * 25).astype(np.float32), np.ones((1, 64), np.float32),
                             np.ones((1, 1)), None)

    def mean_out(st, gdc):
        return np.abs(F.analog_matmul(st, cols, pc.converters, gdc=gdc, workspace=ws)).mean()

    base = mean_out(base_state, False)                  # right after programming, no drift
    st = pc.at(31536000.0, np.random.default_rng(2)).read(np.random.default_rng(3)).layers["fc"]
    assert mean_out(st, False) < 0.6 * base
    assert mean_out(st, True) == pytest.approx(base, rel=tol)
    assert st.alpha[0, 0] > 1.6


def test_adabs_matches_batch_statistics():
    """Ideal device, unlimited precision, one calibration batch: AdaBS gives the first BN the
    exact mean and unbiased variance of its input over the calibration images."""
    net, params, _ = digits_setup()
    train = load_digits_split("train", (0.3,), (0.4,)).subset(slice(0, 100))
    mp = map_network(chip("all-analog", **{"chip.device.model": "ideal"}), net)
    pc = F.program_chip(mp, params, np.random.default_rng(0), precision=F.UNLIMITED)
    bn = F.adabs(pc.at(25.0, np.random.default_rng(0)), train, read_rng=None, noise_rng=None,
                 batch_size=100)
    act = forward(net, params, train.normalized(), keep=lambda n: n == "conv1")["conv1"]
    mean = act.mean(axis=(0, 1, 2), dtype=np.float64)
    var = act.var(axis=(0, 1, 2), ddof=1, dtype=np.float64)
    scale = params["bn1.weight"] / np.sqrt(var + 1e-5)
    np.testing.assert_allclose(bn.affine["bn1"][0], scale, rtol=1e-4)
    np.testing.assert_allclose(bn.affine["bn1"][1], params["bn1.bias"] - mean * scale, rtol=1e-4,
                               atol=1e-5)


def test_adabs_augments_its_batches_as_training_does(monkeypatch):
    """With ``augment_rng`` every calibration batch's raw images go through the training
    augmentation before normalization (here a flip of the whole image stands in for it): the
    statistics are those of the augmented images. evaluate_accuracy augments for CIFAR-10 only
    (by default), from the (chip, time) stream tree."""
    net, params, _ = digits_setup()
    train = load_digits_split("train", (0.3,), (0.4,)).subset(slice(0, 100))
    mp = map_network(chip("all-analog", **{"chip.device.model": "ideal"}), net)
    pc = F.program_chip(mp, params, np.random.default_rng(0), precision=F.UNLIMITED)
    seen = []

    def flip(images, rng):
        seen.append((len(images), images.dtype))
        return images[:, :, ::-1]

    monkeypatch.setattr(F, "augment_cifar", flip)
    state = pc.at(25.0, np.random.default_rng(0))
    bn = F.adabs(state, train, read_rng=None, noise_rng=None, batch_size=40,
                 augment_rng=np.random.default_rng(1))
    assert seen == [(40, train.images.dtype), (40, train.images.dtype), (20, train.images.dtype)]
    flipped = train.with_images(train.images[:, :, ::-1])
    want = F.adabs(state, flipped, read_rng=None, noise_rng=None, batch_size=40)
    np.testing.assert_allclose(bn.affine["bn1"][0], want.affine["bn1"][0], rtol=1e-6)
    plain = F.adabs(state, train, read_rng=None, noise_rng=None, batch_size=40)
    assert not np.allclose(plain.affine["bn1"][1], bn.affine["bn1"][1])
    seen.clear()
    tiny_eval(0)                                             # digits: no augmentation
    assert seen == []
    tiny_eval(0, calib_augment=True)
    assert seen


def tiny_eval(seed, **kw):
    net = digits_cnn()
    params = random_params(net)
    test = load_digits_split("test", (0.3,), (0.4,)).subset(slice(0, 40))
    train = load_digits_split("train", (0.3,), (0.4,))
    mps = [map_network(chip("hybrid"), net), map_network(chip("all-analog"), net)]
    kw = {"seeds": 2, "times_s": (25.0, 1e6)} | kw
    return F.evaluate_accuracy(mps, params, test, calib=train, calib_images=30, seed=seed,
                               batch_size=16, progress=False, **kw)


def test_evaluate_accuracy_chip_by_chip_combines_to_one_run():
    """Chips 0 and 1 evaluated one at a time and combined give the two-chip run bit for bit
    (per-chip rows, means, stds, ADC counts): a long table can be saved and resumed by chip."""
    whole = tiny_eval(0)
    parts = [tiny_eval(0, seeds=1), tiny_eval(0, seeds=1, first_chip=1)]
    assert parts[0].series[0].per_seed != parts[1].series[0].per_seed
    assert F.AccuracyResult.combine(parts) == whole
    assert F.AccuracyResult.combine(parts[::-1]) != whole           # chip order is kept
    assert F.AccuracyResult.combine([whole]) == whole
    assert whole.adc_stats[0].layers[0][1] == 2 * parts[0].adc_stats[0].layers[0][1]
    other = tiny_eval(0, seeds=1, first_chip=1, times_s=(25.0,))
    with pytest.raises(ValueError, match="different evaluations"):
        F.AccuracyResult.combine([parts[0], other])
    with pytest.raises(ValueError, match="first_chip"):
        tiny_eval(0, seeds=1, first_chip=-1)


def test_evaluate_accuracy_reproducible_and_shaped():
    a, b, c = tiny_eval(0), tiny_eval(0), tiny_eval(1)
    assert a == b                                              # bit for bit
    assert a.to_dict() == b.to_dict()
    assert [s.per_seed for s in a.series] != [s.per_seed for s in c.series]
    assert (a.seeds, a.images, a.calib_images, a.times_s) == (2, 40, 30, (25.0, 1e6))
    assert [(s.mapping, s.compensation) for s in a.series] == [
        (m, c) for m in ("hybrid", "all-analog") for c in F.COMPENSATIONS]
    d = a.to_dict()
    assert set(d) == {"fp32", "times_s", "seeds", "images", "calib_images", "series", "read_noise",
                      "gdc_readout", "adc_range", "adc_stats"}
    assert (d["read_noise"], d["gdc_readout"], d["adc_range"]) == ("per-read", "real", "fixed")
    assert set(d["series"][0]) == {"mapping", "compensation", "mean", "std", "per_seed"}
    assert [s["per_seed"] for s in d["series"]] == [[list(r) for r in s.per_seed] for s in a.series]
    assert F.AccuracyResult.from_dict(json.loads(json.dumps(d))) == a
    for s in a.series:
        assert len(s.per_seed) == 2 and all(len(r) == 2 for r in s.per_seed)
        np.testing.assert_allclose(s.mean, np.mean(s.per_seed, axis=0))
        np.testing.assert_allclose(s.std, np.std(s.per_seed, axis=0))


def test_evaluate_accuracy_ideal_unlimited_is_fp32():
    net, params, _ = digits_setup()
    test = load_digits_split("test", (0.3,), (0.4,))
    mp = map_network(chip("all-analog", **{"chip.device.model": "ideal"}), net)
    res = F.evaluate_accuracy([mp], params, test, times_s=(25.0,), seeds=1,
                              compensations=("none", "gdc"), progress=False,
                              precision=F.UNLIMITED)
    assert res.fp32 > 0 and all(s.mean == (res.fp32,) for s in res.series)
    with pytest.raises(ValueError, match="calibration"):
        F.evaluate_accuracy([mp], params, test, times_s=(25.0,), seeds=1, progress=False)


@pytest.mark.shared_data
def test_resnet32_ideal_unlimited_equals_fp32_and_noisy_is_close():
    from archsim.workloads import load_workload
    shared_file("resnet32_cifar10_akamaster.npz")
    wl = load_workload(REPO / "workloads" / "resnet32_cifar10.yaml")
    params = wl.load_params()
    test = wl.dataset("test")
    x = test.normalized(np.arange(0, 10000, 500))              # 20 images, all classes
    ref = forward(wl.network, params, x)
    mp = map_network(load_chip(CHIP, {"chip.device.model": "ideal"}), wl.network)
    pc = F.program_chip(mp, params, np.random.default_rng(0), precision=F.UNLIMITED)
    np.testing.assert_allclose(F.analog_forward(pc.at(25.0, np.random.default_rng(0)).read(None), x), ref,
                               rtol=1e-4, atol=1e-3)
    # the default noisy chip at 25 s: logits stay close to FP32 (correlation over 20 images x 10
    # classes: 0.94-0.97 on chips 0-2), most predictions agree (75-85% on 20 images)
    streams = F.chip_streams(0, "hybrid", 0)
    pcm = F.program_chip(map_network(load_chip(CHIP), wl.network), params, streams)
    ts = streams.child("time", 0)
    out = F.analog_forward(pcm.at(25.0, ts).read(ts("read", "test")), x,
                           noise_rng=ts("adc-noise", "test"))
    assert np.corrcoef(out.ravel(), ref.ravel())[0, 1] > 0.9
    assert np.mean(out.argmax(1) == ref.argmax(1)) >= 0.7


def test_adc_output_noise_is_drawn_from_the_given_generator():
    net, params, x = digits_setup(8)
    mp = map_network(chip(**{"chip.device.model": "ideal", "chip.tiles.adc.output_noise": 0.05}), net)
    conv = F.Converters.from_chip(mp)
    assert (conv.dac_bits, conv.adc_bits, conv.adc_bound, conv.adc_noise) == (8, 8, 12.0, 0.05)
    read = F.program_chip(mp, params, np.random.default_rng(0)).at(
        25.0, np.random.default_rng(0)).read(None)
    a = F.analog_forward(read, x, noise_rng=np.random.default_rng(5))
    b = F.analog_forward(read, x, noise_rng=np.random.default_rng(5))
    c = F.analog_forward(read, x, noise_rng=np.random.default_rng(6))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    quiet = map_network(chip(**{"chip.device.model": "ideal"}), net)
    q = F.analog_forward(F.program_chip(quiet, params, np.random.default_rng(0)).at(
        25.0, np.random.default_rng(0)).read(None), x)
    with pytest.raises(ValueError, match="needs a generator"):
        F.analog_forward(read, x)                         # no silent default generator
    assert 0 < np.abs(a - q).max() < 0.5 * np.abs(q).max()


def test_batches_in_flight_give_the_numbers_of_one_call_per_batch():
    """analog_forward_batches (the test passes' way: the chunks of several batches share the
    threads) gives each batch's logits and ADC counts of analog_forward on it alone, in order,
    bit for bit - the default noisy hybrid chip with replicated copies, ADC noise on."""
    streams = F.chip_streams(3, "hybrid", 0)
    wl_net, params, x = digits_setup(40)
    mp = map_network(load_chip(CHIP), wl_net)
    state = F.program_chip(mp, params, streams).at(3600.0, streams.child("time", 0))
    sizes = ((0, 16), (16, 32), (32, 37))                  # a short last batch too
    xs = [x[a:b] for a, b in sizes]

    def gens():
        return np.random.default_rng(11), np.random.default_rng(12)

    read_rng, noise_rng = gens()
    counts_one: dict = {}
    one = [F.analog_forward(state.read(read_rng), xb, noise_rng=noise_rng, adc_counts=counts_one)
           for xb in xs]
    read_rng, noise_rng = gens()
    counts_many: dict = {}
    many = F.analog_forward_batches([state.read(read_rng) for _ in xs], xs, noise_rng=noise_rng,
                                    adc_counts=counts_many)
    assert [m.tobytes() for m in many] == [o.tobytes() for o in one]
    assert counts_many.keys() == counts_one.keys() and all(
        np.array_equal(counts_many[k], counts_one[k]) for k in counts_one)
    assert not np.array_equal(many[0], many[1][:16])      # different images, different reads
    assert F.analog_forward_batches([], []) == []
    with pytest.raises(ValueError, match="reads for"):
        F.analog_forward_batches([state.read(read_rng)], xs, noise_rng=noise_rng)


def test_calibration_batches_mix_the_classes_of_a_class_sorted_file():
    """AdaBS normalizes each calibration batch by its own statistics, so the subset comes in
    random order: from a class-sorted file of 10 classes x 100 images, the first batch of 128
    holds all 10 classes (in file order it held 2), and the subset is the same for the same seed."""
    from archsim.datasets import Dataset
    labels = np.repeat(np.arange(10), 100)
    data = Dataset("sorted", np.zeros((1000, 2, 2, 1), np.uint8), labels, (0.0,), (1.0,), "x")
    subset = F.calibration_subset(data, 500, seed=3)
    assert len(subset) == 500 and len(np.unique(subset.labels[:128])) == 10
    assert np.array_equal(subset.labels, F.calibration_subset(data, 500, seed=3).labels)
    assert len(np.unique(F.calibration_subset(data, 1000, seed=3).labels[:128])) == 10
