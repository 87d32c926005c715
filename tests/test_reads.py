"""Reads are reads: named random streams, a fresh read-noise sample per read, GDC read through the
converters, devices per weight, calibrated ADC ranges (issue: accuracy a device researcher can
trust)."""

import dataclasses

import numpy as np
import pytest
from scipy.stats import norm

from archsim import functional as F
from archsim.config import load_chip
from archsim.datasets import load_digits_split
from archsim.mapping import map_network
from archsim.network import INPUT, Layer, Network, digits_cnn, init_params
from archsim.rng import Streams, named_rng

from conftest import REPO

CHIP = REPO / "configs" / "pcm_hybrid.yaml"


def chip(policy="all-analog", **overrides):
    """The default chip without ADC output noise and with one copy per layer (copies:
    test_replication.py)."""
    return load_chip(CHIP, {"chip.tiles.adc.output_noise": 0.0, "mapping.replication": "none",
                            **overrides}).with_mapping(policy)


def fc_net(k: int, n: int) -> Network:
    return Network("fc", (1, 1, k), (Layer("flat", "flatten", (INPUT,)),
                                      Layer("fc", "linear", ("flat",), out_channels=n)), n)


# ------------------------------------------------------------------------------------------
# streams
# ------------------------------------------------------------------------------------------

def test_named_streams_are_independent_and_reproducible():
    a = named_rng(7, "read", "test", "gdc").standard_normal(4)
    np.testing.assert_array_equal(a, named_rng(7, "read", "test", "gdc").standard_normal(4))
    others = [named_rng(7, "read", "test", "none"), named_rng(7, "read", "adabs"),
              named_rng(8, "read", "test", "gdc"), named_rng(7, "read", "test"),
              named_rng(7, 1, 16), named_rng(7, 17), named_rng(7, 16, 1)]
    draws = [r.standard_normal(4) for r in others]
    for d in draws:
        assert not np.array_equal(d, a)
    # an index path is not an arithmetic packing: (1, 16), (17,) and (16, 1) are distinct streams
    assert not np.array_equal(draws[4], draws[5]) and not np.array_equal(draws[4], draws[6])
    s = Streams(7).child("read")
    np.testing.assert_array_equal(s("test", "gdc").standard_normal(4), a)
    with pytest.raises(ValueError):
        named_rng(-1, "x")
    with pytest.raises(ValueError):
        Streams(0).child(-3)
    with pytest.raises(TypeError):
        Streams(0).child(1.5)


# ------------------------------------------------------------------------------------------
# reads
# ------------------------------------------------------------------------------------------

def digits_chip(**overrides):
    net = digits_cnn()
    params = init_params(net, np.random.default_rng(0))
    mp = map_network(chip("all-analog", **overrides), net)
    data = load_digits_split("test", (0.3,), (0.4,))
    return net, params, mp, data


def test_two_test_passes_differ_by_read_noise_alone():
    """Same programming, same drift, same ADC noise draws: two reads give different outputs; with
    the read noise off they are identical. Frozen mode: every read is the same one."""
    net, params, mp, data = digits_chip()
    x = data.normalized(slice(0, 32))
    state = F.program_chip(mp, params, Streams(1)).at(86400.0, Streams(2))
    r1, r2 = state.read(np.random.default_rng(10)), state.read(np.random.default_rng(11))
    assert not np.array_equal(r1.layers["conv2"].wn, r2.layers["conv2"].wn)
    out1 = F.analog_forward(r1, x)
    out2 = F.analog_forward(r2, x)
    assert not np.array_equal(out1, out2)
    np.testing.assert_array_equal(out1, F.analog_forward(state.read(np.random.default_rng(10)), x))
    # the alpha of GDC is the chip's at this time, whatever the read
    np.testing.assert_array_equal(r1.layers["conv2"].alpha, r2.layers["conv2"].alpha)

    _, _, quiet, _ = digits_chip(**{"chip.device.read_noise_scale": 0.0})
    qstate = F.program_chip(quiet, params, Streams(1)).at(86400.0, Streams(2))
    np.testing.assert_array_equal(F.analog_forward(qstate.read(np.random.default_rng(10)), x),
                                  F.analog_forward(qstate.read(np.random.default_rng(11)), x))
    # same programming and drift as the noisy chip (read noise draws come from other streams)
    np.testing.assert_array_equal(qstate.devices["conv2"].pos[0], state.devices["conv2"].pos[0])

    _, _, frozen_map, _ = digits_chip(**{"chip.device.read_noise": "frozen"})
    fstate = F.program_chip(frozen_map, params, Streams(1)).at(86400.0, Streams(2))
    f1, f2 = fstate.read(np.random.default_rng(10)), fstate.read(None)
    np.testing.assert_array_equal(f1.layers["conv2"].wn, f2.layers["conv2"].wn)
    assert not np.array_equal(f1.layers["conv2"].wn, qstate.read(None).layers["conv2"].wn)


def test_adabs_and_test_passes_never_share_a_read(monkeypatch):
    """Every read of a Monte Carlo run is a fresh draw: the AdaBS calibration batches, the GDC
    readout and each test batch of each pass see different read-noise samples."""
    net, params, mp, data = digits_chip()
    train = load_digits_split("train", (0.3,), (0.4,))
    reads: list[tuple[str, np.ndarray]] = []
    original = F.analog_forward

    def recording(read, x, **kw):
        reads.append(("adabs" if kw.get("batchnorm") is not None else "test",
                      read.layers["conv2"].wn.copy()))
        return original(read, x, **kw)

    original_batches = F.analog_forward_batches

    def recording_batches(reads_of_batches, xs, **kw):      # the test passes
        reads.extend(("test", r.layers["conv2"].wn.copy()) for r in reads_of_batches)
        return original_batches(reads_of_batches, xs, **kw)

    monkeypatch.setattr(F, "analog_forward", recording)
    monkeypatch.setattr(F, "analog_forward_batches", recording_batches)
    F.evaluate_accuracy([mp], params, data.subset(slice(0, 48)), calib=train, calib_images=48,
                        times_s=(3600.0,), seeds=1, batch_size=16, progress=False)
    adabs_reads = [w for kind, w in reads if kind == "adabs"]
    test_reads = [w for kind, w in reads if kind == "test"]
    assert len(adabs_reads) == 3 and len(test_reads) == 3 * 3     # 3 batches x 3 passes
    everything = adabs_reads + test_reads
    for i in range(len(everything)):
        for j in range(i + 1, len(everything)):
            assert not np.array_equal(everything[i], everything[j])


# ------------------------------------------------------------------------------------------
# GDC through the real read path
# ------------------------------------------------------------------------------------------

def test_gdc_readout_hand_sized_array():
    """A 3x2 array read with one-hot inputs: each output is one normalized weight, then the ADC
    (bound 1, 3 bits: step 1/3) rounds it. The real readout is the mean |rounded| per array; the
    ideal one the exact mean |w|."""
    wn = np.array([[0.9, -0.2], [0.5, 0.05], [-0.4, 0.7]], np.float32)
    pl = F.ProgrammedLayer("fc", np.array([[0, 3]]), ((0, 2),), np.ones((1, 2)),
                           *(np.zeros((1, 3, 2)),) * 4, adc_bound=1.0)
    real = F.Converters(8, 3, 1.0, 0.0, "one-hot", "real")
    ideal = F.Converters(8, 3, 1.0, 0.0, "one-hot", "ideal")
    # rounded to thirds: .9 -> 1, .2 -> 1/3 (0.6 steps), .5 -> 2/3 (1.5 steps, rint to even 2),
    # .05 -> 0, .4 -> 1/3, .7 -> 2/3
    expected = (1 + 1 / 3 + 2 / 3 + 0 + 1 / 3 + 2 / 3) / 6
    assert F.gdc_readout(wn, pl, real, None)[0, 0] == pytest.approx(expected, rel=1e-6)
    assert F.gdc_readout(wn, pl, ideal, None)[0, 0] == pytest.approx(2.75 / 6, rel=1e-6)
    # all-ones input: the column sums 1.0 and 0.55 -> 1 (clipped) and 2/3
    ones = F.Converters(8, 3, 1.0, 0.0, "all-ones", "real")
    assert F.gdc_readout(wn, pl, ones, None)[0, 0] == pytest.approx((1 + 2 / 3) / 2, rel=1e-6)


def test_gdc_readout_noise_effect_matches_the_expected_value():
    """With output noise sigma the mean |readout| of outputs that all equal y is
    E|Q(y + sigma N)| = sum_k |k s| P(round((y + sigma N) / s) = k) (Q: round to steps s, clip at
    the bound): the readout of a 256 x 64 array of equal weights agrees with it to 3 standard
    errors, and differs from the noiseless |Q(y)|."""
    y, sigma, bound, bits = 0.23, 0.06, 1.0, 5           # step 1/15
    wn = np.full((256, 64), y, np.float32)
    pl = F.ProgrammedLayer("fc", np.array([[0, 256]]), ((0, 64),), np.ones((1, 64)),
                           *(np.zeros((1, 256, 64)),) * 4, adc_bound=bound)
    conv = F.Converters(8, bits, bound, sigma, "one-hot", "real")
    got = F.gdc_readout(wn, pl, conv, np.random.default_rng(0))[0, 0]
    step = bound / 15
    k = np.arange(-15, 16)
    lo = np.where(k == -15, -np.inf, (k - 0.5) * step)
    hi = np.where(k == 15, np.inf, (k + 0.5) * step)
    p = norm.cdf((hi - y) / sigma) - norm.cdf((lo - y) / sigma)
    expected = float(np.sum(np.abs(k * step) * p))
    spread = float(np.sqrt(np.sum((np.abs(k * step) - expected) ** 2 * p)))
    assert abs(got - expected) < 3 * spread / np.sqrt(wn.size)
    assert abs(expected - np.rint(y / step) * step) > 10 * spread / np.sqrt(wn.size)


def test_gdc_factor_real_vs_ideal_readout_on_a_drifted_chip():
    """No programming or read noise, no ADC noise: the chip drifts by its (known) exponents; the
    GDC factor of the real readout is the ratio of the mean |ADC-rounded one-hot outputs| right
    after programming and at t, the ideal one the ratio of exact means; they differ by the
    quantization alone."""
    rng = np.random.default_rng(3)
    k, n = 12, 8
    w = rng.uniform(-1, 1, (n, k)).astype(np.float32)
    quiet = {"chip.device.programming_noise_scale": 0.0, "chip.device.read_noise_scale": 0.0,
             "chip.tiles.adc.output_bound": 1.0, "chip.tiles.adc.bits": 4}
    t = 31536000.0
    alphas = {}
    for readout in ("real", "ideal"):
        mp = map_network(chip(**quiet, **{"chip.tiles.calibration.gdc_readout": readout}), fc_net(k, n))
        pc = F.program_chip(mp, {"fc.weight": w}, Streams(0))
        alphas[readout] = pc.at(t, Streams(1)).alphas["fc"][0, 0]
    pl = pc.layers["fc"]
    wn0 = F.normalized_weights(pl.g_prog_pos, pl.g_prog_neg, 25.0).astype(np.float64)
    drift = ((t + 20) / 20)
    wnt = ((pl.g_prog_pos[0] * drift ** -pl.nu_pos[0]) - (pl.g_prog_neg[0] * drift ** -pl.nu_neg[0])) / 25
    step = 1.0 / 7

    def q(v):
        return np.rint(np.clip(v, -1, 1) / step) * step

    assert alphas["ideal"] == pytest.approx(np.abs(wn0).mean() / np.abs(wnt).mean(), rel=1e-5)
    assert alphas["real"] == pytest.approx(np.abs(q(wn0)).mean() / np.abs(q(wnt)).mean(), rel=1e-5)
    assert abs(alphas["real"] - alphas["ideal"]) > 1e-3


# ------------------------------------------------------------------------------------------
# devices per weight
# ------------------------------------------------------------------------------------------

def test_two_devices_per_polarity_sum_their_programming_noise():
    """HERMES unit cell: 4 devices per weight, 2 per polarity. Weights all at max: each device's
    target is g_max; the summed G+ has mean 2 g_max and programming-noise std sqrt(2) times one
    device's (independent draws), and the normalized weight is sum / (2 g_max)."""
    k, n = 256, 128
    w = np.ones((n, k), np.float32)
    c = chip(**{"chip.tiles.array.devices_per_weight": 4, "chip.tiles.array.pair_layout": "unit-cell",
                "chip.tiles.array.cols": 128})
    mp = map_network(c, fc_net(k, n))
    pc = F.program_chip(mp, {"fc.weight": w}, Streams(0))
    pl = pc.layers["fc"]
    assert pl.devices == 2 and pl.g_prog_pos.shape == (2, k, n)
    single_sigma = pc.model.programming_sigma_us(np.array(25.0))     # at target g_max
    total = pl.g_prog_pos.sum(axis=0)
    # max(., 0) never binds at g_max (sigma ~1 uS)
    assert total.std() == pytest.approx(np.sqrt(2) * single_sigma, rel=0.03)
    assert pl.g_prog_pos[0].std() == pytest.approx(single_sigma, rel=0.03)
    assert total.mean() == pytest.approx(50.0, abs=0.05)
    np.testing.assert_allclose(F.normalized_weights(pl.g_prog_pos, pl.g_prog_neg, 25.0),
                               (total - pl.g_prog_neg.sum(axis=0)) / 50.0, rtol=1e-6)
    with pytest.raises(Exception, match="even count"):
        F.program_chip(map_network(chip(**{"chip.tiles.array.devices_per_weight": 3}),
                                   fc_net(4, 2)), {"fc.weight": np.ones((2, 4), np.float32)}, 0)


def test_hermes_accuracy_path_programs_two_devices_per_polarity():
    net = digits_cnn()
    params = init_params(net, np.random.default_rng(0))
    mp = map_network(load_chip("hermes"), net)
    pc = F.program_chip(mp, params, Streams(0))
    assert {pl.devices for pl in pc.layers.values()} == {2}
    x = load_digits_split("test", (0.3,), (0.4,)).normalized(slice(0, 8))
    ts = Streams(0).child("time", 0)
    out = F.analog_forward(pc.at(25.0, ts).read(ts("read")), x, noise_rng=ts("adc-noise"))
    assert out.shape == (8, 10) and np.isfinite(out).all()


# ------------------------------------------------------------------------------------------
# calibrated ADC ranges
# ------------------------------------------------------------------------------------------

def test_calibrated_adc_range_is_the_percentile_of_the_calibration_outputs():
    net, params, _, data = digits_chip()
    images = data.normalized(slice(0, 40))
    over = {"chip.tiles.adc.range": "calibrated", "chip.tiles.adc.range_percentile": 99.0}
    mp = map_network(chip(**over), net)
    pc = F.program_chip(mp, params, Streams(4), calibration_images=images)
    bounds = {n: pl.adc_bound for n, pl in pc.layers.items()}
    assert all(b != 12.0 and b > 0 for b in bounds.values())
    # the same calibration by hand: open converters, the same read stream
    seen = {n: [] for n in bounds}
    open_chip = pc.__class__(pc.mapping, pc.params, pc.model,
                             F.Converters(8, None, None, 0.0), {n: dataclasses.replace(pl, adc_bound=None)
                                                                for n, pl in pc.layers.items()},
                             pc.digital)
    state = F.ChipState(open_chip, 0.0, open_chip.devices_at(0.0), {})
    F.analog_forward(state.read(Streams(4)("read", "adc-range")), images, gdc=False,
                     observe=lambda name, y: seen[name].append(np.abs(y).ravel()))
    for name, b in bounds.items():
        assert b == pytest.approx(np.percentile(np.concatenate(seen[name]), 99.0), rel=1e-6)
    # on the calibration images about 1% of the conversions clip
    counts = {}
    F.analog_forward(F.program_chip(mp, params, Streams(4), calibration_images=images).at(
        0.0, Streams(5)).read(np.random.default_rng(6)), images, gdc=False, adc_counts=counts)
    clipped, _, total = np.sum(list(counts.values()), axis=0)
    assert 0.003 < clipped / total < 0.03
    with pytest.raises(Exception, match="calibration images"):
        F.program_chip(mp, params, Streams(4))


# ------------------------------------------------------------------------------------------
# reports say how the chip was read
# ------------------------------------------------------------------------------------------

def test_reports_state_the_read_model_and_adc_conversions():
    from archsim.report import adc_table, read_model_line
    acc = F.AccuracyResult(0.9, (25.0, 86400.0), 1, 10, 5, (), "per-read", "real", "calibrated", (
        F.AdcStats("hybrid", 25.0, (("conv2", 1000, 3, 120),)),
        F.AdcStats("hybrid", 86400.0, (("conv2", 1000, 0, 250),)))).to_dict()
    line = read_model_line(acc)
    assert "per-read" in line and "real" in line and "calibrated" in line
    table = adc_table(acc)
    row = next(l for l in table.splitlines() if "conv2" in l).split()
    assert row == ["hybrid", "conv2", "0.300", "12.00", "0.000", "25.00"]
    # an old report (no read-model keys) reads as the conventions it used
    old = {k: v for k, v in acc.items() if k not in ("read_noise", "gdc_readout", "adc_range",
                                                      "adc_stats")}
    assert "frozen" in read_model_line(old) and "ideal" in read_model_line(old)
    assert adc_table(old) is None
    assert F.AccuracyResult.from_dict(old).read_noise == "frozen"
