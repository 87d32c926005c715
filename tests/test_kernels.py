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


def test_checked_wrappers_reject_bad_arguments():
    x = np.zeros((4, 6), np.float32)
    with pytest.raises(TypeError):
        kernels.dac_quantize_into(x.astype(np.float64), np.array([[0, 6]]), 8, x, np.zeros((4, 1), np.float32))
    with pytest.raises(ValueError):
        kernels.dac_quantize_into(x, np.array([[0, 7]]), 8, x.copy(), np.zeros((4, 1), np.float32))
    y = np.zeros((1, 4, 6), np.float32)
    ranges = np.array([[0, 6]])
    with pytest.raises(ValueError):          # absmax of the wrong shape
        kernels.adc_rows_into(y, ranges, np.zeros((4, 2), np.float32), np.zeros((1, 6), np.float32),
                              np.zeros((4, 6), np.float32), bound=1.0, bits=8)
    with pytest.raises(ValueError):          # a quantizing ADC without a bound
        kernels.adc_rows_into(y, ranges, np.zeros((4, 1), np.float32), np.zeros((1, 6), np.float32),
                              np.zeros((4, 6), np.float32), bound=None, bits=8)
    with pytest.raises(ValueError):          # a column range wider than y
        kernels.adc_rows_into(y, np.array([[0, 7]]), np.zeros((4, 1), np.float32),
                              np.zeros((1, 7), np.float32), np.zeros((4, 7), np.float32),
                              bound=1.0, bits=8)


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




# ------------------------------------------------------------------------------------------
# Inference kernels: patches in the run layout, the fused output stage
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kernel,stride,pads,dilation,groups,bounds", [
    ((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, None),
    ((3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1, [(0, 18), (18, 36)]),
    ((3, 3), (2, 2), (0, 1, 2, 0), (1, 1), 1, None),                            # strided windows
    ((3, 3), (1, 1), (0, 0, 0, 0), (1, 1), 1, [(0, 13), (13, 25), (25, 36)]),   # cut mid-channel
    ((2, 3), (2, 1), (1, 0, 0, 2), (2, 1), 1, None),                            # any geometry
    ((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 2, [(0, 18), (18, 36)]),             # grouped
    ((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 4, None)])                           # depthwise
def test_patches_are_im2col_in_the_layout_order(kernel, stride, pads, dilation, groups, bounds):
    """Patch rows in the run layout hold exactly the (c, i, j) im2col values, columns permuted by
    the layout's order; each row block's natural rows stay one contiguous range; any block of rows
    gives the same rows; with the DAC fused, the same codes as the two kernels one after another."""
    from archsim.layers.ops import PatchLayout, im2col_general
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 7, 6, 4)).astype(np.float32)
    x[0] = 0.0                                          # all-zero patches: abs-max 0
    x[1, 2, :3] = -0.0                                  # negative zeros keep their sign
    taps = kernel[0] * kernel[1]
    layout = PatchLayout(4, taps, bounds, kernel[1] if dilation[1] == 1 else 1)
    assert (layout.runs[:, 4] > 1).any() == (bounds is None and dilation[1] == 1)
    ho = (7 + pads[0] + pads[2] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    wo = (6 + pads[1] + pads[3] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    geom = kernels.conv_geometry(kernel, stride, pads, dilation, ho, wo)
    natural = im2col_general(x, kernel, stride, pads, dilation, ho, wo)
    rows = natural.shape[0]
    got = np.full((rows, 4 * taps), np.nan, np.float32)
    kernels.patches_into(x, geom, 0, rows, layout.runs, got)
    np.testing.assert_array_equal(got, natural[:, layout.order])
    for (r0, r1), (a0, a1) in zip(bounds or [(0, 4 * taps)], layout.bounds):
        assert sorted(layout.order[a0:a1]) == list(range(r0, r1))
    part = np.empty((5, 4 * taps), np.float32)
    kernels.patches_into(x, geom, 7, 12, layout.runs, part)
    np.testing.assert_array_equal(part, got[7:12])
    for bits in (8, None):
        want = np.empty_like(got)
        want_max = np.empty((rows, len(layout.bounds)), np.float32)
        kernels.dac_quantize_into(got, layout.bounds, bits, want, want_max)
        codes = np.empty_like(got)
        codes_max = np.empty_like(want_max)
        kernels.patches_dac_into(x, geom, 0, rows, layout.runs, layout.bounds, bits, codes,
                                 codes_max)
        assert np.array_equal(codes, want) and np.array_equal(codes_max, want_max)
        # the pixels of output columns [w0, w1) only (one copy's share), from any of them on
        w0, w1 = (1, wo) if wo > 1 else (0, 1)
        mine = (np.arange(rows) % wo >= w0) & (np.arange(rows) % wo < w1)
        share = int(mine.sum())
        part_codes = np.full((share - 2, 4 * taps), np.nan, np.float32)
        part_max = np.empty((share - 2, len(layout.bounds)), np.float32)
        kernels.patches_dac_into(x, geom, 2, share, layout.runs, layout.bounds, bits,
                                 part_codes, part_max, cols=(w0, w1))
        assert np.array_equal(part_codes, want[mine][2:])
        assert np.array_equal(part_max, want_max[mine][2:])
        # one row block of whole taps: abs-maxes from the pixels', values converted as copied
        dac = kernels.PatchesDac(x.shape, geom, layout.runs, layout.bounds, bits, 4 * taps,
                                 (w0, w1))
        assert dac.by_pixel == (bounds is None)
        window_max = dac.window_maxima(x)
        if dac.by_pixel:
            # every output pixel's window abs-max, on the input or not
            assert window_max.view(np.float32).reshape(-1).tobytes() == want_max[:, 0].tobytes()
            by_pixel = np.full_like(part_codes, np.nan)
            by_pixel_max = np.empty_like(part_max)
            dac(x, 2, share, by_pixel, by_pixel_max, window_max)
            assert by_pixel.tobytes() == want[mine][2:].tobytes()      # -0.0 and +0.0 alike
            assert by_pixel_max.tobytes() == want_max[mine][2:].tobytes()
        else:
            assert window_max is None
            with pytest.raises(ValueError, match="window_max"):
                dac(x, 2, share, part_codes, part_max, np.zeros(dac.window_shape, np.int32))
        # patch + DAC + the row blocks' products a few rows at a time: the codes' products
        w = rng.standard_normal((4 * taps, 21)).astype(np.float32)
        cranges = np.array([[b % 3, 21 - b % 2] for b in range(len(layout.bounds))])
        want_y = np.full((len(layout.bounds), share - 2, 21), np.nan, np.float32)
        kernels.block_products_into(want[mine][2:], layout.bounds, w, cranges, want_y)
        got_y = np.full_like(want_y, np.nan)
        got_max = np.empty_like(part_max)
        dac.products(x, 2, share, np.empty((5, 4 * taps), np.float32), got_max, w, cranges,
                     got_y, window_max)
        assert got_y.tobytes() == want_y.tobytes()          # untouched columns stay NaN too
        assert got_max.tobytes() == want_max[mine][2:].tobytes()
    with pytest.raises(ValueError):
        kernels.patches_dac_into(x, geom, 0, 1, layout.runs, layout.bounds, 8, codes, codes_max,
                                 cols=(0, wo + 1))
    with pytest.raises(ValueError):
        kernels.patches_into(x, geom, 0, rows + 1, layout.runs, got)
    with pytest.raises(ValueError):
        kernels.patches_into(x, geom, 0, rows, layout.runs + [0, 0, 0, 1, 0], got)


def _fma_f32(a, b, c):
    """float32 fma(a, b, c): the exact a b + c rounded once to float32 (ties to even)."""
    from fractions import Fraction
    exact = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))
    d = float(exact)                                    # correctly rounded to float64
    near = np.float32(d)
    if float(near) == d:
        return near
    other = np.nextafter(near, np.float32(np.inf if float(near) < d else -np.inf))
    mid = (Fraction(float(near)) + Fraction(float(other))) / 2
    if Fraction(d) != mid or exact == mid:              # float64 rounding did not decide it
        return near
    return near if abs(exact - Fraction(float(near))) < abs(exact - Fraction(float(other))) \
        else other


@pytest.mark.parametrize("rows,k,n", [(13, 40, 70), (7, 9, 20), (12, 5, 48), (6, 3, 16)])
def test_products_are_fused_multiply_adds_in_row_order(rows, k, n):
    """Every column sum is fma(x_i, w_i, acc) for i = 0 .. k-1 from +0, each rounded once, for
    any rows (whole tiles and the rest) and columns (tiles of 64, vectors of 16 and a part of
    one); a multiply then an add (two roundings) gives other numbers."""
    rng = np.random.default_rng(rows * k + n)
    x = rng.integers(-127, 128, (rows, k)).astype(np.float32)      # DAC codes
    w = rng.standard_normal((k, n)).astype(np.float32)
    want = np.empty((rows, n), np.float32)
    twice = np.empty((rows, n), np.float32)
    for p in range(rows):
        for j in range(n):
            acc = sep = np.float32(0.0)
            for i in range(k):
                acc = _fma_f32(x[p, i], w[i, j], acc)
                sep = np.float32(np.float32(x[p, i] * w[i, j]) + sep)
            want[p, j], twice[p, j] = acc, sep
    got = kernels.products_into(x, w, np.full((rows, n), np.nan, np.float32))
    assert got.tobytes() == want.tobytes()
    if k > 5:
        assert not np.array_equal(twice, want)
    # row blocks with their own column ranges; the columns beyond a block's range stay as they are
    bounds, cranges = np.array([[0, k // 2], [k // 2, k]]), np.array([[1, n], [0, n - 3]])
    y = np.full((2, rows, n), np.nan, np.float32)
    kernels.block_products_into(x, bounds, w, cranges, y)
    for b, ((r0, r1), (c0, c1)) in enumerate(zip(bounds, cranges)):
        part = kernels.products_into(np.ascontiguousarray(x[:, r0:r1]),
                                     np.ascontiguousarray(w[r0:r1, c0:c1]),
                                     np.empty((rows, c1 - c0), np.float32))
        assert y[b, :, :c1 - c0].tobytes() == part.tobytes()
        assert np.isnan(y[b, :, c1 - c0:]).all()
    with pytest.raises(ValueError):
        kernels.block_products_into(x, bounds, w, [[0, n + 1], [0, n]], y)
    with pytest.raises(ValueError):
        kernels.products_into(x, w[:-1], got)


def test_epilogue_is_the_layers_one_by_one():
    """((y + bias) * scale + offset + residual) clamped: the same bits as numpy layer by layer
    (conv bias, BatchNorm, Add, ReLU; a Clip)."""
    rng = np.random.default_rng(4)
    y = rng.standard_normal((50, 12)).astype(np.float32)
    bias, scale, offset = (rng.standard_normal(12).astype(np.float32) for _ in range(3))
    res = rng.standard_normal((50, 12)).astype(np.float32)
    out = kernels.epilogue_into(y, np.empty_like(y), bias=bias, scale=scale, offset=offset,
                                residual=res, clamp=(0.0, np.inf))
    np.testing.assert_array_equal(out, np.maximum(((y + bias) * scale + offset) + res, 0))
    out = kernels.epilogue_into(y, np.empty_like(y), scale=scale, offset=offset, clamp=(-0.5, 0.5))
    np.testing.assert_array_equal(out, np.clip(y * scale + offset, np.float32(-0.5), np.float32(0.5)))
    y2 = y.copy()
    kernels.epilogue_into(y2, y2, residual=res)                          # in place
    np.testing.assert_array_equal(y2, y + res)
    with pytest.raises(ValueError):
        kernels.epilogue_into(y, y, scale=scale)                         # scale without offset


# ------------------------------------------------------------------------------------------
# Counter-based normal numbers
# ------------------------------------------------------------------------------------------

PHILOX_KAT = [   # Random123 kat_vectors: philox4x32 10, counter, key -> output
    ((0, 0, 0, 0), (0, 0), (0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8)),
    ((0xffffffff,) * 4, (0xffffffff,) * 2, (0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd)),
    ((0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344), (0xa4093822, 0x299f31d0),
     (0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1))]


def philox_twin(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 in numpy (uint64 arrays holding 32-bit words)."""
    c = [np.asarray(v, np.uint64) for v in (c0, c1, c2, c3)]
    k0, k1 = np.uint64(k0), np.uint64(k1)
    mask = np.uint64(0xFFFFFFFF)
    for r in range(10):
        if r:
            k0, k1 = (k0 + np.uint64(0x9E3779B9)) & mask, (k1 + np.uint64(0xBB67AE85)) & mask
        p0, p1 = np.uint64(0xD2511F53) * c[0], np.uint64(0xCD9E8D57) * c[2]
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ k0, p1 & mask, (p0 >> np.uint64(32)) ^ c[3] ^ k1,
             p0 & mask]
    return c


def normals_twin(key, stream, counters):
    """The normals of ``counters`` (4 each, in order) by the numpy Philox and the words' map."""
    k0, k1 = key & 0xFFFFFFFF, key >> 32
    counters = np.asarray(counters, np.uint64)
    words = philox_twin(counters & np.uint64(0xFFFFFFFF), counters >> np.uint64(32),
                        np.full(counters.shape, stream, np.uint64), np.zeros(counters.shape, np.uint64),
                        k0, k1)
    return kernels.normal_of_words(np.stack(words, axis=-1).reshape(-1).astype(np.uint32))


def test_philox_known_answers_and_twin():
    for counter, key, want in PHILOX_KAT:
        assert kernels.philox4x32(counter, key) == want
        assert tuple(int(w[()]) for w in philox_twin(*counter, *key)) == want
    out = np.empty(4000, np.float32)
    kernels.normals_into(2 ** 63 + 12345, 7, 1000, out)
    np.testing.assert_array_equal(out, normals_twin(2 ** 63 + 12345, 7, 1000 + np.arange(1000)))


def test_normal_transform_is_the_inverse_normal_cdf():
    """A word's normal is sign * Phi^-1(p), p = (low 31 bits + 1/2) / 2^32 in (0, 1/2): within
    2e-6 of scipy's ndtri everywhere (PPND7 in float32), including both tails to +-6.34."""
    from scipy.special import ndtri
    words = np.concatenate([np.arange(0, 2 ** 32, 9973, dtype=np.uint64), np.arange(4096),
                            2 ** 31 - 1 - np.arange(4096), 2 ** 31 + np.arange(4096),
                            2 ** 32 - 1 - np.arange(4096)]).astype(np.uint32)
    z = kernels.normal_of_words(words).astype(np.float64)
    p = ((words & 0x7FFFFFFF).astype(np.float64) + 0.5) * 2.0 ** -32
    want = ndtri(p) * np.where(words >> 31, -1.0, 1.0)
    assert np.abs(z - want).max() < 2e-6
    assert z.min() == pytest.approx(-6.338, abs=1e-3) and z.max() == pytest.approx(6.338, abs=1e-3)


def test_normals_are_standard_normal_and_independent():
    """2^22 draws: mean, variance, skewness, kurtosis, the tail shares beyond 2, 3 and 4 sigma and
    a Kolmogorov-Smirnov test agree with N(0, 1) (bounds: 5 standard errors, KS p > 1e-4); draws
    of neighbouring elements, counters, streams and keys are uncorrelated (|r| < 5/sqrt(n))."""
    from scipy import stats
    n = 2 ** 22
    z = np.empty(n, np.float32)
    kernels.normals_into(42, 3, 0, z)
    z = z.astype(np.float64)
    se = 1 / np.sqrt(n)
    assert abs(z.mean()) < 5 * se
    assert abs(z.var() - 1) < 5 * np.sqrt(2) * se
    assert abs(stats.skew(z)) < 5 * np.sqrt(6) * se
    assert abs(stats.kurtosis(z)) < 5 * np.sqrt(24) * se
    for t in (2.0, 3.0, 4.0):
        p = 2 * stats.norm.sf(t)
        assert abs(np.mean(np.abs(z) > t) - p) < 5 * np.sqrt(p * (1 - p) / n)
    assert stats.kstest(z[:2 ** 20], "norm").pvalue > 1e-4
    bound = 5 / np.sqrt(n // 4)
    lanes = z.reshape(-1, 4)
    for a, b in ((0, 1), (0, 3), (1, 2)):                  # the 4 words of one counter
        assert abs(np.corrcoef(lanes[:, a], lanes[:, b])[0, 1]) < bound
    assert abs(np.corrcoef(lanes[:-1, 0], lanes[1:, 0])[0, 1]) < bound     # neighbouring counters
    for other in ((42, 4), (43, 3)):                       # another stream, another key
        w = np.empty(n // 4, np.float32)
        kernels.normals_into(other[0], other[1], 0, w)
        assert abs(np.corrcoef(z[:n // 4], w)[0, 1]) < 2 * bound
    again = np.empty(16, np.float32)
    kernels.normals_into(42, 3, 8, again)                  # any range: the same numbers
    np.testing.assert_array_equal(again, z[32:48].astype(np.float32))


# ------------------------------------------------------------------------------------------
# ADC with its noise inside, one read of a layer, grouped products
# ------------------------------------------------------------------------------------------

def adc_twin(y, ranges, absmax, colscale, bound, bits, in_scale, sigma, key, stream, row_start,
             offset, residual, clamp):
    """The ADC kernel in numpy, float32, the same operations in the same order."""
    nb, rows, wb = y.shape
    ncols = colscale.shape[1]
    w4 = (wb + 3) // 4
    f = np.float32
    acc = np.zeros((rows, ncols), np.float32)
    clipped = zero = 0
    for b in range(nb):
        c0, c1 = ranges[b]
        v = y[b, :, :c1 - c0] * f(in_scale)
        if sigma > 0:
            counters = ((row_start + np.arange(rows))[:, None] * nb + b) * w4 + np.arange(w4)
            z = normals_twin(key, stream, counters.ravel()).reshape(rows, w4 * 4)[:, :c1 - c0]
            v = v + f(sigma) * z
        if bound is not None:
            clipped += int(np.count_nonzero(np.abs(v) > f(bound)))
            v = np.clip(v, -f(bound), f(bound))
        if bits is not None:
            levels = 2 ** (bits - 1) - 1
            v = np.rint(v * (f(levels) / f(bound))) * (f(bound) / f(levels))
        zero += int(np.count_nonzero(v == 0))
        acc[:, c0:c1] += v * absmax[:, b:b + 1] * colscale[b, c0:c1]
    out = acc + offset
    if residual is not None:
        out = out + residual
    if clamp is not None:
        out = np.clip(out, f(clamp[0]), f(clamp[1]))
    return out, (clipped, zero)


@pytest.mark.parametrize("bound,bits,sigma,blocks", [(None, None, 0.0, "two"), (3.0, None, 0.0, "two"),
                                                     (3.0, 8, 0.0, "two"), (2.0, 6, 0.1, "two"),
                                                     (2.0, 8, 0.06, "grouped"),
                                                     (2.0, 8, 0.06, "one"), (None, None, 0.0, "one")])
def test_adc_matches_twin(bound, bits, sigma, blocks):
    rng = np.random.default_rng(1)
    ranges = np.array({"two": [[0, 24], [0, 24]], "grouped": [[0, 12], [12, 24]],
                       "one": [[0, 24]]}[blocks])
    nb, wb = len(ranges), 12 if blocks == "grouped" else 24
    y = (rng.standard_normal((nb, 40, wb)) * 2).astype(np.float32)
    absmax = rng.uniform(0, 3, (40, nb)).astype(np.float32)
    colscale = rng.uniform(0.5, 2, (nb, 24)).astype(np.float32)
    offset = rng.standard_normal(24).astype(np.float32)
    res = rng.standard_normal((40, 24)).astype(np.float32)
    key, stream, start = 2 ** 40 + 7, 5, 1000
    for residual, clamp in ((None, None), (res, (0.0, np.inf))):
        out = np.empty((40, 24), np.float32)
        counts = np.zeros(2, np.int64)
        kernels.adc_rows_into(y, ranges, absmax, colscale, out, bound=bound, bits=bits,
                              in_scale=0.5, noise_sigma=sigma, key=key, stream=stream,
                              row_start=start, offset=offset, residual=residual, clamp=clamp,
                              counts=counts)
        want, want_counts = adc_twin(y, ranges, absmax, colscale, bound, bits, 0.5, sigma, key,
                                     stream, start, offset, residual, clamp)
        np.testing.assert_array_equal(out, want)
        assert tuple(counts) == want_counts
    # the rows split in two blocks (each with its row_start) draw the same noise
    halves = np.empty((40, 24), np.float32)
    for r0, r1 in ((0, 15), (15, 40)):
        kernels.adc_rows_into(np.ascontiguousarray(y[:, r0:r1]), ranges, absmax[r0:r1], colscale,
                              halves[r0:r1], bound=bound, bits=bits, in_scale=0.5,
                              noise_sigma=sigma, key=key, stream=stream, row_start=start + r0,
                              offset=offset)
    full = np.empty((40, 24), np.float32)
    kernels.adc_rows_into(y, ranges, absmax, colscale, full, bound=bound, bits=bits, in_scale=0.5,
                          noise_sigma=sigma, key=key, stream=stream, row_start=start, offset=offset)
    np.testing.assert_array_equal(halves, full)


@pytest.mark.parametrize("blocks", ["one", "two"])
def test_adc_places_a_copys_rows_at_their_pixels(blocks):
    """pixels=(r0, w0, w1, wo): block row p is pixel r0 + p of those in columns [w0, w1) of rows
    of wo pixels; it lands on (and adds the residual of) its own pixel in the full output, with
    the same values and noise as a part-sized output gathered from there."""
    rng = np.random.default_rng(5)
    nb = 1 if blocks == "one" else 2
    lines, wo, w0, w1, ncols = 3, 7, 2, 5, 8           # 3 output rows of 7 pixels; copy: 2..4
    span = w1 - w0
    ranges = np.array([[0, ncols]] * nb)
    y = rng.standard_normal((nb, lines * span, ncols)).astype(np.float32)
    absmax = rng.uniform(0.5, 2, (lines * span, nb)).astype(np.float32)
    colscale = rng.uniform(0.5, 2, (nb, ncols)).astype(np.float32)
    residual = rng.standard_normal((lines * wo, ncols)).astype(np.float32)
    kw = dict(bound=2.0, bits=8, noise_sigma=0.05, key=11, stream=3, row_start=100,
              offset=rng.standard_normal(ncols).astype(np.float32), clamp=(0.0, np.inf))
    part_res = np.ascontiguousarray(residual.reshape(lines, wo, ncols)[:, w0:w1]).reshape(-1, ncols)
    want = np.empty((lines * span, ncols), np.float32)
    kernels.adc_rows_into(y, ranges, absmax, colscale, want, residual=part_res, **kw)
    full = np.full((lines * wo, ncols), -7.0, np.float32)
    r0 = 4                                                # a block of rows 4 .. 8 of the copy
    kw["row_start"] += r0
    kernels.adc_rows_into(np.ascontiguousarray(y[:, r0:]), ranges, absmax[r0:], colscale, full,
                          residual=residual, pixels=(r0, w0, w1, wo), **kw)
    grid = full.reshape(lines, wo, ncols)
    placed = grid[:, w0:w1].reshape(-1, ncols)
    np.testing.assert_array_equal(placed[r0:], want[r0:])
    untouched = np.ones((lines, wo), bool)
    untouched[:, w0:w1] = False
    untouched.reshape(-1)[[(i // span) * wo + w0 + i % span for i in range(r0)]] = True
    assert np.all(grid[untouched] == -7.0)
    with pytest.raises(ValueError, match="pixels"):
        kernels.adc_rows_into(y, ranges, absmax, colscale, full, pixels=(0, 5, 5, wo), **kw)
    with pytest.raises(ValueError, match="out"):          # the last pixel is beyond out
        kernels.adc_rows_into(y, ranges, absmax, colscale, full[:2 * wo + w1 - 1], residual=None,
                              pixels=(0, w0, w1, wo), **{**kw, "clamp": None})


def test_adc_known_values():
    # bound 12, 8 bits: step 12/127; 47/127 -> 4 steps, 66.5/127 -> 6 steps, 20 -> clipped to 12
    y = np.array([[[47 / 127, 66.5 / 127, 20.0]]], np.float32)
    out = np.empty((1, 3), np.float32)
    counts = np.zeros(2, np.int64)
    kernels.adc_rows_into(y, np.array([[0, 3]]), np.ones((1, 1), np.float32),
                          np.ones((1, 3), np.float32), out, bound=12.0, bits=8, counts=counts)
    np.testing.assert_allclose(out, [[48 / 127, 72 / 127, 12.0]], rtol=1e-6)
    assert tuple(counts) == (1, 0)


def test_adc_noise_has_the_given_sigma():
    """Unlimited converter, one row block, absmax = colscale = 1: out - y = sigma z, z ~ N(0, 1)."""
    y = np.random.default_rng(0).standard_normal((1, 4000, 64)).astype(np.float32)
    out = np.empty((4000, 64), np.float32)
    kernels.adc_rows_into(y, np.array([[0, 64]]), np.ones((4000, 1), np.float32),
                          np.ones((1, 64), np.float32), out, bound=None, bits=None,
                          noise_sigma=0.06, key=99)
    d = (out - y[0]).astype(np.float64).ravel()
    se = 0.06 / np.sqrt(d.size)
    assert abs(d.mean()) < 5 * se and abs(d.std() - 0.06) < 5 * se / np.sqrt(2)


def test_read_matches_twin():
    """One read: max(G + s sigma z, 0) per device (z: the Philox normals of counter
    ((polarity D + d) K + k) ceil(N/4) + n // 4), summed per polarity, (G+ - G-) / (D g_max), rows
    in the given order; without a key, the drifted conductances alone."""
    rng = np.random.default_rng(5)
    d, k, n = 2, 6, 7
    g = [rng.uniform(0, 25, (d, k, n)).astype(np.float32) for _ in range(2)]
    s = [rng.uniform(0, 3, (d, k, n)).astype(np.float32) for _ in range(2)]
    order = rng.permutation(k)
    out = np.empty((k, n), np.float32)
    kernels.read_devices_into((g[0], s[0]), (g[1], s[1]), 1 / 50, order, out, key=77,
                              noise_scale=1.5)
    n4 = (n + 3) // 4
    sums = []
    for pol in range(2):
        z = normals_twin(77, 0, (pol * d + np.arange(d)[:, None]) * k * n4 + np.arange(k * n4))
        z = z.reshape(d, k, n4 * 4)[:, :, :n]
        dev = np.maximum((z * s[pol]) * np.float32(1.5) + g[pol], 0)
        sums.append(dev[0] + dev[1])
    np.testing.assert_array_equal(out, ((sums[0] - sums[1]) * np.float32(1 / 50))[order])
    kernels.read_devices_into((g[0], s[0]), (g[1], s[1]), 1 / 50, np.arange(k), out, key=None)
    np.testing.assert_array_equal(out, ((g[0][0] + g[0][1]) - (g[1][0] + g[1][1])) * np.float32(1 / 50))


@pytest.mark.parametrize("cg,ng", [(1, 1), (2, 3)])
def test_grouped_products_are_the_diagonal_blocks(cg, ng):
    """A block of 3 whole groups, patch values tap-major: the products of its diagonal blocks
    of the (block-diagonal) weight matrix, as the dense product gives them."""
    from archsim.layers.matrix import grouped_weights
    rng = np.random.default_rng(6)
    taps, g = 4, 3
    k = taps * g * cg
    x = rng.standard_normal((30, 5 + k)).astype(np.float32)
    dense = np.zeros((taps, g, cg, g, ng), np.float32)            # rows (tap, group, channel)
    for gi in range(g):
        dense[:, gi, :, gi, :] = rng.standard_normal((taps, cg, ng))
    dense = dense.reshape(k, g * ng)
    w = grouped_weights(dense, g, taps)
    assert w.shape == (taps, cg, ng, g)
    out = np.zeros((30, g * ng + 2), np.float32)
    kernels.grouped_products_into(x, 5, w, out)
    np.testing.assert_allclose(out[:, :g * ng], x[:, 5:] @ dense, rtol=1e-5, atol=1e-5)
    assert not out[:, g * ng:].any()
    with pytest.raises(ValueError):
        kernels.grouped_products_into(x, 6, w, out)       # columns past the input
