"""PCM statistics (archsim.pcm) against the closed forms of Joshi et al. 2020 / aihwkit."""

import math

import numpy as np
import pytest

from archsim.config import DeviceConfig
from archsim.pcm import PCMModel, targets

N = 1_000_000


def folded_normal(mu: float, sd: float) -> tuple[float, float]:
    """Mean and std of |mu + sd N(0,1)|."""
    mean = sd * math.sqrt(2 / math.pi) * math.exp(-mu * mu / (2 * sd * sd)) + mu * math.erf(
        mu / (sd * math.sqrt(2)))
    return mean, math.sqrt(mu * mu + sd * sd - mean * mean)


def test_programming_noise_polynomial_and_statistics():
    model = PCMModel()
    # sigma_prog = 0.26348 + 1.9650 x - 1.1731 x^2, x = G_T / 25
    assert model.programming_sigma_us(np.array([0.0, 25.0, 12.5])) == pytest.approx(
        [0.26348, 0.26348 + 1.9650 - 1.1731, 0.26348 + 1.9650 / 2 - 1.1731 / 4])
    g_t = np.full(N, 10.0)
    g_p = model.program(g_t, np.random.default_rng(0))
    sigma = 0.26348 + 1.9650 * 0.4 - 1.1731 * 0.16
    assert g_p.mean() == pytest.approx(10.0, rel=0.01)
    assert g_p.std() == pytest.approx(sigma, rel=0.01)
    # scale and g_max: sigma scales with programming_noise_scale and with g_max / 25
    g_p2 = PCMModel(g_max_us=50.0, programming_noise_scale=2.0).program(g_t * 2, np.random.default_rng(1))
    assert g_p2.std() == pytest.approx(2 * 2 * sigma, rel=0.01)
    # conductances never go negative
    assert PCMModel().program(np.zeros(1000), np.random.default_rng(2)).min() == 0.0


@pytest.mark.parametrize("g_target", [0.5, 5.0, 20.0])
def test_drift_exponent_statistics(g_target):
    model = PCMModel()
    g = g_target / 25.0
    mu = min(max(-0.0155 * math.log(g) + 0.0244, 0.049), 0.1)
    sd = min(max(-0.0125 * math.log(g) - 0.0059, 0.008), 0.045)
    assert [float(v) for v in model.drift_stats(np.array(g_target))] == pytest.approx([mu, sd])
    nu = model.drift_exponents(np.full(N, g_target), np.random.default_rng(3))
    mean, std = folded_normal(mu, sd)
    assert nu.mean() == pytest.approx(mean, rel=0.01)
    assert nu.std() == pytest.approx(std, rel=0.01)
    nu2 = PCMModel(drift_scale=0.5).drift_exponents(np.full(N, g_target), np.random.default_rng(3))
    np.testing.assert_allclose(nu2, 0.5 * nu)


def test_drift_power_law():
    model = PCMModel()
    g_p = np.array([10.0, 20.0, 3.0])
    nu = np.array([0.05, 0.1, 0.07])
    for t in (0.0, 25.0, 3600.0, 31536000.0):
        np.testing.assert_allclose(model.drift(g_p, nu, t), g_p * ((t + 20.0) / 20.0) ** (-nu))
    # log-log slope between two times is -nu
    t1, t2 = 1e3, 1e6
    slope = (np.log(model.drift(g_p, nu, t2)) - np.log(model.drift(g_p, nu, t1))) / (
        np.log(t2 + 20.0) - np.log(t1 + 20.0))
    np.testing.assert_allclose(slope, -nu)
    assert model.drift(g_p, nu, 0.0) == pytest.approx(g_p)


def test_read_noise_statistics():
    model = PCMModel()
    t = 3600.0
    g_p = np.full(N, 10.0)
    g_d = model.drift(g_p, np.full(N, 0.06), t)
    g = model.read(g_d, g_p, t, np.random.default_rng(4))
    q = min(0.0088 / (10.0 / 25.0) ** 0.65, 0.2)
    sigma = g_d[0] * q * math.sqrt(math.log((t + 20.0 + 250e-9) / (2 * 250e-9)))
    assert float(model.read_q(np.array(10.0))) == pytest.approx(q)
    assert g.mean() == pytest.approx(g_d[0], rel=0.01)
    assert (g - g_d).std() == pytest.approx(sigma, rel=0.01)
    # Q is capped at 0.2 for tiny conductances
    assert float(model.read_q(np.array(1e-6))) == pytest.approx(0.2)


def test_ideal_and_zero_scales_are_exact():
    rng = np.random.default_rng(5)
    g = rng.uniform(0, 25, 1000)
    for model in (PCMModel(ideal=True),
                  PCMModel(programming_noise_scale=0, read_noise_scale=0, drift_scale=0)):
        g_p = model.program(g, rng)
        nu = model.drift_exponents(g, rng)
        np.testing.assert_array_equal(g_p, g)
        np.testing.assert_array_equal(model.at(g_p, nu, 1e7, rng), g)


def test_from_config_and_targets():
    dev = DeviceConfig(model="pcm", g_max_us=30.0, t0_s=10.0, t_read_ns=100.0,
                       programming_noise_scale=0.5, read_noise_scale=2.0, drift_scale=1.5)
    m = PCMModel.from_config(dev)
    assert (m.g_max_us, m.t0_s, m.t_read_ns, m.programming_noise_scale, m.read_noise_scale,
            m.drift_scale, m.ideal) == (30.0, 10.0, 100.0, 0.5, 2.0, 1.5, False)
    assert PCMModel.from_config(DeviceConfig(model="ideal")).ideal
    gp, gm = targets(np.array([0.5, -1.0, 0.0, 2.0]), 25.0, 25.0)
    np.testing.assert_array_equal(gp, [12.5, 0.0, 0.0, 25.0])
    np.testing.assert_array_equal(gm, [0.0, 25.0, 0.0, 0.0])


def test_same_generator_same_devices():
    g = np.linspace(0, 25, 500)
    a = PCMModel().program(g, np.random.default_rng(7))
    b = PCMModel().program(g, np.random.default_rng(7))
    c = PCMModel().program(g, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
