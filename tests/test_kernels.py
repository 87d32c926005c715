"""archsim.kernels against plain-numpy twins."""

import numpy as np
import pytest

from archsim import kernels
from archsim.network import im2col


def dac_twin(x, bounds, bits):
    xq = np.empty_like(x)
    absmax = np.empty((x.shape[0], len(bounds)), np.float32)
    for b, (r0, r1) in enumerate(bounds):
        m = np.abs(x[:, r0:r1]).max(axis=1)
        absmax[:, b] = m
        safe = np.where(m == 0, np.float32(1), m)[:, None]
        if bits is None:
            q = x[:, r0:r1] / safe
        else:
            q = np.rint(x[:, r0:r1] * (np.float32(2 ** (bits - 1) - 1) / safe))
        xq[:, r0:r1] = np.where(m[:, None] == 0, np.float32(0), q)
    return xq, absmax


def adc_twin(y, absmax, colscale, bound, bits, noise=None, sigma=0.0, in_scale=1.0, offset=None):
    acc = np.zeros(y.shape[1:])
    for b in range(y.shape[0]):
        v = y[b].astype(np.float64) * in_scale
        if sigma > 0:
            v = v + sigma * noise[b].astype(np.float64)
        if bound is not None:
            v = np.clip(v, -bound, bound)
        if bits is not None:
            step = bound / (2 ** (bits - 1) - 1)
            v = np.rint(v / step) * step
        acc = acc + v * absmax[:, b].astype(np.float64)[:, None] * colscale[b].astype(np.float64)
    if offset is not None:
        acc = acc + offset
    return acc.astype(np.float32)


@pytest.mark.parametrize("bits", [None, 4, 8])
def test_dac_matches_twin(bits):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 50)).astype(np.float32)
    x[3] = 0.0                       # an all-zero row: codes 0, abs-max 0
    x[7, :20] = 0.0                  # zero in the first block only
    bounds = np.array([[0, 20], [20, 50]])
    xq = np.empty_like(x)
    absmax = np.empty((300, 2), np.float32)
    kernels.dac_quantize_into(x, bounds, bits, xq, absmax)
    tq, tm = dac_twin(x, bounds, bits)
    np.testing.assert_array_equal(absmax, tm)
    np.testing.assert_array_equal(xq, tq)
    if bits is not None:
        levels = 2 ** (bits - 1) - 1
        assert np.abs(xq).max() == levels and np.all(xq == np.round(xq))
        # each block's largest entry maps to the full-scale code
        assert np.all(np.abs(xq[:, :20]).max(axis=1)[[0, 1, 2]] == levels)
    # in place gives the same codes
    x2 = x.copy()
    kernels.dac_quantize_into(x2, bounds, bits, x2, absmax)
    np.testing.assert_array_equal(x2, tq)


def test_dac_known_values():
    x = np.array([[1.0, 0.5, -0.25, 0.1]], np.float32)
    xq = np.empty_like(x)
    absmax = np.empty((1, 1), np.float32)
    kernels.dac_quantize_into(x, np.array([[0, 4]]), 8, xq, absmax)
    np.testing.assert_array_equal(xq, [[127, 64, -32, 13]])     # rint(127 x): 63.5 -> 64 (even)
    assert absmax[0, 0] == 1.0
    assert kernels.dac_code_scale(8) == 1 / 127 and kernels.dac_code_scale(None) == 1.0


@pytest.mark.parametrize("bound,bits,sigma", [(None, None, 0.0), (3.0, None, 0.0), (3.0, 8, 0.0),
                                              (2.0, 6, 0.1)])
def test_adc_matches_twin(bound, bits, sigma):
    rng = np.random.default_rng(1)
    y = (rng.standard_normal((2, 400, 24)) * 2).astype(np.float32)
    absmax = rng.uniform(0, 3, (400, 2)).astype(np.float32)
    colscale = rng.uniform(0.5, 2, (2, 24)).astype(np.float32)
    noise = rng.standard_normal(y.shape).astype(np.float32)
    out = np.empty((400, 24), np.float32)
    kernels.adc_accumulate_into(y, absmax, colscale, bound, bits, out, noise, sigma, in_scale=0.5)
    np.testing.assert_array_equal(out, adc_twin(y, absmax, colscale, bound, bits, noise, sigma, 0.5))
    offset = rng.standard_normal(24)
    kernels.adc_accumulate_into(y, absmax, colscale, bound, bits, out, noise, sigma, in_scale=0.5,
                                offset=offset)
    np.testing.assert_array_equal(out, adc_twin(y, absmax, colscale, bound, bits, noise, sigma, 0.5,
                                                offset))


def test_adc_known_values():
    # bound 12, 8 bits: step 12/127; 47/127 -> 4 steps, 66.5/127 -> 6 steps, 20 -> clipped to 12
    y = np.array([[[47 / 127, 66.5 / 127, 20.0]]], np.float32)
    out = np.empty((1, 3), np.float32)
    kernels.adc_accumulate_into(y, np.ones((1, 1), np.float32), np.ones((1, 3), np.float32), 12.0, 8, out)
    np.testing.assert_allclose(out, [[48 / 127, 72 / 127, 12.0]], rtol=1e-6)


def test_checked_wrappers_reject_bad_arguments():
    x = np.zeros((4, 6), np.float32)
    with pytest.raises(TypeError):
        kernels.dac_quantize_into(x.astype(np.float64), np.array([[0, 6]]), 8, x, np.zeros((4, 1), np.float32))
    with pytest.raises(ValueError):
        kernels.dac_quantize_into(x, np.array([[0, 7]]), 8, x.copy(), np.zeros((4, 1), np.float32))
    with pytest.raises(ValueError):
        kernels.adc_accumulate_into(np.zeros((1, 4, 6), np.float32), np.zeros((4, 2), np.float32),
                                    np.zeros((1, 6), np.float32), 1.0, 8, np.zeros((4, 6), np.float32))
    with pytest.raises(ValueError):
        kernels.adc_accumulate_into(np.zeros((1, 4, 6), np.float32), np.zeros((4, 1), np.float32),
                                    np.zeros((1, 6), np.float32), None, 8, np.zeros((4, 6), np.float32))


def test_im2col_matches_twin():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 5, 6, 3)).astype(np.float32)
    cols = im2col(x, 3, 2, 1)
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    ref = []
    for b in range(2):
        for oy in range(3):
            for ox in range(3):
                patch = xp[b, oy * 2:oy * 2 + 3, ox * 2:ox * 2 + 3, :]     # (3, 3, C)
                ref.append(patch.transpose(2, 0, 1).reshape(-1))
    np.testing.assert_array_equal(cols, np.array(ref))


@pytest.mark.parametrize("bits", [8, 4, None])
@pytest.mark.parametrize("stride,padding,bounds", [(1, 1, [[0, 36]]), (2, 1, [[0, 18], [18, 36]]),
                                                   (1, 0, [[0, 13], [13, 25], [25, 36]])])
def test_fused_im2col_dac_equals_the_two_kernels(bits, stride, padding, bounds):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 7, 6, 4)).astype(np.float32)
    x[0, :, :, :] = 0.0                       # all-zero patches: abs-max 0
    ho = (7 + 2 * padding - 3) // stride + 1
    wo = (6 + 2 * padding - 3) // stride + 1
    bounds = np.array(bounds, np.int64)
    cols = np.empty((3 * ho * wo, 36), np.float32)
    kernels.im2col_into(x, 3, stride, padding, ho, wo, cols)
    want = np.empty_like(cols)
    want_max = np.empty((cols.shape[0], len(bounds)), np.float32)
    kernels.dac_quantize_into(cols, bounds, bits, want, want_max)
    got = np.empty_like(cols)
    got_max = np.empty_like(want_max)
    kernels.im2col_dac_into(x, 3, stride, padding, ho, wo, bounds, bits, got, got_max)
    assert np.array_equal(got, want) and np.array_equal(got_max, want_max)
    with pytest.raises(ValueError):
        kernels.im2col_dac_into(x, 3, stride, padding, ho, wo, bounds, bits, got,
                                np.empty((1, 1), np.float32))
