"""Functional simulation: a network executed on a programmed PCM chip, with global drift
compensation (GDC), adaptive BatchNorm statistics (AdaBS) and a Monte Carlo accuracy-vs-time driver
(DESIGN.md section 4).

- :func:`program_chip` programs every analog :class:`~archsim.mapping.ArrayBlock` once per chip:
  weight scale (per array or per column), differential targets G+/G-, programming noise and drift
  exponents (:mod:`archsim.pcm`), all from one generator.
- :meth:`ProgrammedChip.at` gives the chip ``t`` seconds after programming: drift and read noise
  drawn once and frozen; the normalized weight matrix (G+ - G-)/g_max of each layer and the GDC
  factor of each array are computed once per (chip, time), never per batch.
- :func:`analog_forward` runs :func:`archsim.network.forward` with a ``matmul`` hook (DAC on each
  row block's input slice, one GEMM per row block, ADC + digital accumulation of the row-block
  partial sums, GDC) and a ``batchnorm`` hook (the per-column affine applied digitally after the
  ADC). Digital layers stay exact FP32.
- :func:`evaluate_accuracy` is the Monte Carlo driver.

Units inside an array are normalized as in aihwkit: inputs divided by their abs-max (in [-1, 1]),
weights as G / g_max (in [-1, 1]), so the ADC bound ``chip.tiles.adc.output_bound`` is in those
units. The digital side multiplies back by abs-max * g_max / scale (and the GDC alpha).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from . import kernels
from .datasets import Dataset
from .mapping import LayerMapping, Mapping
from .network import Layer, Network, Workspace, batchnorm_affine, forward, matrix_input
from .pcm import PCMModel, targets
from .progress import Progress, format_time_s

DEFAULT_TIMES_S = (25.0, 3600.0, 86400.0, 2592000.0, 31536000.0)
COMPENSATIONS = ("none", "gdc", "gdc+adabs")
UNLIMITED = "unlimited"

# stream tags for np.random.SeedSequence([seed, ..., tag, ...]): every draw has its own stream
_PROGRAM, _READ, _ADC_NOISE, _CALIB = 0, 1, 2, 3


# ------------------------------------------------------------------------------------------
# Converters
# ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Converters:
    """DAC/ADC settings of the analog path. ``None`` bits: unlimited precision; ``None`` bound: no
    clipping."""
    dac_bits: int | None = 8
    adc_bits: int | None = 8
    adc_bound: float | None = 12.0
    adc_noise: float = 0.0
    gdc_input: str = "one-hot"

    @classmethod
    def from_chip(cls, mapping: Mapping, precision: str | None = None) -> "Converters":
        """From ``chip.tiles``; ``precision="unlimited"`` drops quantization, clipping and noise."""
        tiles = mapping.chip.chip.tiles
        if precision == UNLIMITED:
            return cls(None, None, None, 0.0, tiles.calibration.gdc_input)
        return cls(tiles.dac.bits, tiles.adc.bits, tiles.adc.output_bound, tiles.adc.output_noise,
                   tiles.calibration.gdc_input)


# ------------------------------------------------------------------------------------------
# Programming
# ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ProgrammedLayer:
    """One analog layer's devices. Matrices are (K, N) over the whole layer; array blocks partition
    them. ``unit`` (B, N): weight units per microsiemens (1 / scale) of each row block's arrays."""
    name: str
    row_bounds: np.ndarray          # (B, 2) int64
    col_bounds: tuple[tuple[int, int], ...]
    unit: np.ndarray                # (B, N) float64
    g_prog_pos: np.ndarray          # (K, N) float64, uS
    g_prog_neg: np.ndarray
    nu_pos: np.ndarray              # (K, N) drift exponents
    nu_neg: np.ndarray
    gdc_baseline: np.ndarray        # (B, C) mean |readout| right after programming, per array


@dataclass(frozen=True)
class ProgrammedChip:
    mapping: Mapping
    params: dict
    model: PCMModel
    converters: Converters
    layers: dict                    # name -> ProgrammedLayer (analog layers)
    digital: dict                   # name -> (K, N) float32 weight matrix (digital layers)

    def at(self, t_s: float, rng: np.random.Generator) -> "ChipState":
        """The chip ``t_s`` seconds after programming: drift (D2) and read noise (R1) drawn once."""
        states = {}
        g_max = self.model.g_max_us
        for name, pl in self.layers.items():
            g_pos = self.model.at(pl.g_prog_pos, pl.nu_pos, t_s, rng)
            g_neg = self.model.at(pl.g_prog_neg, pl.nu_neg, t_s, rng)
            wn = normalized_weights(g_pos, g_neg, g_max)
            now = _gdc_readout(wn, pl.row_bounds, pl.col_bounds, self.converters)
            alpha = np.divide(pl.gdc_baseline, now, out=np.ones_like(now), where=now > 0)
            states[name] = LayerState(pl.row_bounds, wn, (pl.unit * g_max).astype(np.float32),
                                      _expand_cols(alpha, pl.col_bounds).astype(np.float32), alpha)
        return ChipState(self, float(t_s), states)


@dataclass(frozen=True)
class LayerState:
    row_bounds: np.ndarray          # (B, 2)
    wn: np.ndarray                  # (K, N) float32 normalized weights (G+ - G-) / g_max at t
    colscale: np.ndarray            # (B, N) float32 g_max / scale: normalized -> weight units
    alpha_cols: np.ndarray          # (B, N) float32 GDC factor of each column's array
    alpha: np.ndarray               # (B, C) GDC factor per array


@dataclass(frozen=True)
class ChipState:
    chip: ProgrammedChip
    t_s: float
    layers: dict                    # name -> LayerState


def normalized_weights(g_pos: np.ndarray, g_neg: np.ndarray, g_max_us: float) -> np.ndarray:
    """The array's weights in normalized units, (G+ - G-) / g_max, float32."""
    return ((g_pos - g_neg) / g_max_us).astype(np.float32)


def _block_scales(w: np.ndarray, g_max_us: float, per_column: bool) -> np.ndarray:
    """scale = g_max / max|W_block| (DESIGN 4), per array or per column; zero blocks get 1."""
    m = np.abs(w).max(axis=0) if per_column else np.full(w.shape[1], np.abs(w).max() if w.size else 0.0)
    return np.divide(g_max_us, m, out=np.ones_like(m, dtype=np.float64), where=m > 0)


def _expand_cols(per_array: np.ndarray, col_bounds) -> np.ndarray:
    """(B, C) per-array values -> (B, N) per column."""
    return np.concatenate([np.repeat(per_array[:, [c]], c1 - c0, axis=1)
                           for c, (c0, c1) in enumerate(col_bounds)], axis=1)


def _gdc_readout(wn: np.ndarray, row_bounds, col_bounds, conv: Converters) -> np.ndarray:
    """Mean |output| of each array for the GDC calibration input: one-hot rows (each output is one
    weight, as aihwkit) or all ones (each output is a column sum, the paper's summed current).
    Outputs saturate at the ADC bound but are not rounded to its levels: the calibration mean is
    taken over many reads (one ADC LSB is about half a typical one-hot read, and rounding each
    read would bias alpha by up to 20% after a year)."""
    out = np.empty((len(row_bounds), len(col_bounds)))
    for b, (r0, r1) in enumerate(row_bounds):
        block = wn[r0:r1].astype(np.float64)
        y = block.sum(axis=0, keepdims=True) if conv.gdc_input == "all-ones" else block
        if conv.adc_bound is not None:
            y = np.clip(y, -conv.adc_bound, conv.adc_bound)
        for c, (c0, c1) in enumerate(col_bounds):
            out[b, c] = np.abs(y[:, c0:c1]).mean()
    return out


def program_layer(lm: LayerMapping, w: np.ndarray, model: PCMModel, conv: Converters,
                  per_column: bool, rng: np.random.Generator) -> ProgrammedLayer:
    row_bounds = np.array(lm.row_bounds(), np.int64).reshape(-1, 2)
    col_bounds = tuple(lm.col_bounds())
    unit = np.empty((len(row_bounds), lm.n))
    scale_full = np.empty(w.shape)
    for b, (r0, r1) in enumerate(row_bounds):
        for c0, c1 in col_bounds:
            s = _block_scales(w[r0:r1, c0:c1], model.g_max_us, per_column)
            unit[b, c0:c1] = 1.0 / s
            scale_full[r0:r1, c0:c1] = s
    gt_pos, gt_neg = targets(w, scale_full, model.g_max_us)
    g_pos = model.program(gt_pos, rng)                  # (P1)
    g_neg = model.program(gt_neg, rng)
    nu_pos = model.drift_exponents(gt_pos, rng)         # (D1)
    nu_neg = model.drift_exponents(gt_neg, rng)
    wn0 = normalized_weights(g_pos, g_neg, model.g_max_us)
    baseline = _gdc_readout(wn0, row_bounds, col_bounds, conv)
    return ProgrammedLayer(lm.name, row_bounds, col_bounds, unit, g_pos, g_neg, nu_pos, nu_neg,
                           baseline)


def program_chip(mapping: Mapping, params: dict, rng: np.random.Generator, *,
                 precision: str | None = None, model: PCMModel | None = None) -> ProgrammedChip:
    """Program every analog layer of ``mapping`` once (targets, programming noise, drift exponents).
    ``precision="unlimited"`` turns DAC/ADC quantization and clipping off (for checks)."""
    net = mapping.network
    model = model or PCMModel.from_config(mapping.chip.chip.device)
    conv = Converters.from_chip(mapping, precision)
    per_column = mapping.chip.chip.device.weight_scaling == "per-column"
    layers, digital = {}, {}
    for lm in mapping.layers:
        w = net.weight_matrix(params, net.layer(lm.name))
        if lm.analog:
            layers[lm.name] = program_layer(lm, w.astype(np.float64), model, conv, per_column, rng)
        else:
            digital[lm.name] = w
    return ProgrammedChip(mapping, params, model, conv, layers, digital)


# ------------------------------------------------------------------------------------------
# Execution
# ------------------------------------------------------------------------------------------

def analog_matmul(state: LayerState, cols: np.ndarray, conv: Converters, *, gdc: bool,
                  workspace: Workspace, noise_rng: np.random.Generator | None = None,
                  in_place: bool = False,
                  affine: tuple[np.ndarray, np.ndarray] | None = None,
                  dac_absmax: np.ndarray | None = None) -> np.ndarray:
    """(P, K) @ W on the arrays: DAC per row block, one GEMM per row block, ADC, digital sum.
    ``in_place``: the DAC codes overwrite ``cols`` (a scratch im2col buffer). ``affine``: a
    per-column (scale, offset) applied in the same digital pass (the folded BatchNorm).
    ``dac_absmax``: ``cols`` already holds the DAC codes (:func:`kernels.im2col_dac_into`), with
    these per-row-block abs-maxes."""
    cols = np.ascontiguousarray(cols, np.float32)
    p, k = cols.shape
    nb, n = state.colscale.shape
    if dac_absmax is not None:
        xq, absmax = cols, dac_absmax
    else:
        xq = cols if in_place else workspace.get("dac.x", (p, k))
        absmax = workspace.get("dac.absmax", (p, nb))
        kernels.dac_quantize_into(cols, state.row_bounds, conv.dac_bits, xq, absmax)
    y = workspace.get("adc.y", (nb, p, n))
    for b, (r0, r1) in enumerate(state.row_bounds):
        np.matmul(xq[:, r0:r1], state.wn[r0:r1], out=y[b])
    noise = None
    if conv.adc_noise > 0:
        noise = workspace.get("adc.noise", (nb, p, n))
        rng = noise_rng if noise_rng is not None else np.random.default_rng(0)
        rng.standard_normal(out=noise, dtype=np.float32)
    colscale = state.colscale * state.alpha_cols if gdc else state.colscale
    offset = None
    if affine is not None:
        colscale = colscale * affine[0]
        offset = affine[1]
    out = np.empty((p, n), np.float32)
    return kernels.adc_accumulate_into(y, absmax, colscale, conv.adc_bound, conv.adc_bits, out,
                                       noise, conv.adc_noise, kernels.dac_code_scale(conv.dac_bits),
                                       offset)


@dataclass
class BatchNormStats:
    """Per BatchNorm layer: the (scale, offset) of the digital affine periphery."""
    affine: dict = field(default_factory=dict)

    @classmethod
    def from_params(cls, net: Network, params: dict) -> "BatchNormStats":
        return cls({l.name: batchnorm_affine(params, l.name, l.eps)
                    for l in net.layers if l.kind == "batchnorm"})


def analog_forward(state: ChipState, x: np.ndarray, *, gdc: bool = True,
                   bn: BatchNormStats | None = None, workspace: Workspace | None = None,
                   noise_rng: np.random.Generator | None = None,
                   batchnorm: Callable | None = None) -> np.ndarray:
    """Logits of batch ``x`` on the chip state: analog layers through the arrays (with GDC when
    ``gdc``), digital layers in FP32, BatchNorm as the affine ``bn`` (default: the eval stats)."""
    chip = state.chip
    net = chip.mapping.network
    ws = workspace if workspace is not None else Workspace()
    bn = bn or BatchNormStats.from_params(net, chip.params)
    # an analog conv whose only consumer is a BatchNorm gets the BN affine in its ADC pass (the
    # per-column periphery of the hardware); that BN is then the identity
    fused = {} if batchnorm is not None else _fusable_batchnorms(net, state)
    dac_absmax: dict[str, np.ndarray] = {}

    def patches(layer: Layer, a: np.ndarray, workspace: Workspace) -> np.ndarray:
        """Analog conv inputs: im2col and the DAC in one pass (codes + abs-maxes)."""
        ls = state.layers.get(layer.name)
        if ls is None or layer.kind != "conv2d":
            return matrix_input(layer, a, workspace)
        ho, wo, _ = net.shape(layer.name)
        rows = a.shape[0] * ho * wo
        out = workspace.get("im2col", (rows, a.shape[3] * layer.kernel * layer.kernel))
        absmax = workspace.get("dac.absmax", (rows, len(ls.row_bounds)))
        kernels.im2col_dac_into(np.asarray(a, np.float32), layer.kernel, layer.stride,
                                layer.padding, ho, wo, ls.row_bounds, chip.converters.dac_bits,
                                out, absmax)
        dac_absmax[layer.name] = absmax
        return out

    def matmul(layer: Layer, cols: np.ndarray) -> np.ndarray:
        ls = state.layers.get(layer.name)
        if ls is None:
            return cols @ chip.digital[layer.name]
        bn_name = fused.get(layer.name)
        # conv inputs are im2col scratch buffers of the workspace: the DAC may overwrite them
        return analog_matmul(ls, cols, chip.converters, gdc=gdc, workspace=ws, noise_rng=noise_rng,
                             in_place=layer.kind == "conv2d",
                             affine=None if bn_name is None else bn.affine[bn_name],
                             dac_absmax=dac_absmax.pop(layer.name, None))

    fused_bns = set(fused.values())

    def affine(layer: Layer, a: np.ndarray) -> np.ndarray:
        if layer.name in fused_bns:
            return a
        scale, offset = bn.affine[layer.name]
        return a * scale + offset

    return forward(net, chip.params, x, matmul=matmul, batchnorm=batchnorm or affine, workspace=ws,
                   matrix_input_hook=patches)


def _fusable_batchnorms(net: Network, state: ChipState) -> dict[str, str]:
    """analog layer -> the BatchNorm that is its only consumer (no bias in between)."""
    users = net.consumers()
    out = {}
    for layer in net.layers:
        if layer.kind == "batchnorm" and len(layer.inputs) == 1:
            src = layer.inputs[0]
            if src in state.layers and users[src] == [layer.name] and not net.layer(src).bias:
                out[src] = layer.name
    return out


def adabs(state: ChipState, calib: Dataset, *, gdc: bool = True, batch_size: int = 128,
          noise_rng: np.random.Generator | None = None) -> BatchNormStats:
    """AdaBS: run the calibration images through the drifted analog network (train-mode BatchNorm,
    each batch normalized by its own statistics) and re-estimate every BatchNorm's running mean and
    variance as the average over batches (PyTorch momentum=None, unbiased variance); return the
    refreshed affine periphery."""
    net = state.chip.mapping.network
    params = state.chip.params
    sums: dict[str, list] = {l.name: [0.0, 0.0, 0] for l in net.layers if l.kind == "batchnorm"}

    def train_bn(layer: Layer, a: np.ndarray) -> np.ndarray:
        axes = tuple(range(a.ndim - 1))
        count = int(np.prod([a.shape[i] for i in axes]))
        mean = a.mean(axis=axes, dtype=np.float64)
        var = a.var(axis=axes, dtype=np.float64)
        acc = sums[layer.name]
        acc[0] = acc[0] + mean
        acc[1] = acc[1] + var * count / max(count - 1, 1)
        acc[2] += 1
        scale, offset = batchnorm_affine(params, layer.name, layer.eps, mean, var)
        return (a * scale + offset).astype(np.float32)

    ws = Workspace()
    for xb, _ in calib.batches(batch_size):
        analog_forward(state, xb, gdc=gdc, workspace=ws, noise_rng=noise_rng, batchnorm=train_bn)
    out = {}
    for layer in net.layers:
        if layer.kind != "batchnorm":
            continue
        s_mean, s_var, nbat = sums[layer.name]
        out[layer.name] = batchnorm_affine(params, layer.name, layer.eps, s_mean / max(nbat, 1),
                                           s_var / max(nbat, 1))
    return BatchNormStats(out)


# ------------------------------------------------------------------------------------------
# Accuracy
# ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AccuracySeries:
    mapping: str
    compensation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    per_seed: tuple[tuple[float, ...], ...]       # [seed][time]


@dataclass(frozen=True)
class AccuracyResult:
    fp32: float
    times_s: tuple[float, ...]
    seeds: int
    images: int
    calib_images: int
    series: tuple[AccuracySeries, ...]

    def to_dict(self) -> dict:
        return {"fp32": self.fp32, "times_s": list(self.times_s), "seeds": self.seeds,
                "images": self.images, "calib_images": self.calib_images,
                "series": [{"mapping": s.mapping, "compensation": s.compensation,
                            "mean": list(s.mean), "std": list(s.std),
                            "per_seed": [list(r) for r in s.per_seed]} for s in self.series]}

    @classmethod
    def from_dict(cls, d: dict) -> "AccuracyResult":
        """The inverse of :meth:`to_dict` (e.g. to re-render a saved report)."""
        return cls(d["fp32"], tuple(d["times_s"]), d["seeds"], d["images"], d["calib_images"],
                   tuple(AccuracySeries(s["mapping"], s["compensation"], tuple(s["mean"]),
                                        tuple(s["std"]), tuple(tuple(r) for r in s["per_seed"]))
                         for s in d["series"]))


def _count_correct(logits_fn, data: Dataset, batch_size: int, bar: Progress | None, note: str) -> int:
    correct = 0
    for xb, yb in data.batches(batch_size):
        correct += int(np.count_nonzero(np.argmax(logits_fn(xb), axis=1) == yb))
        if bar is not None:
            bar.advance(len(yb), note)
    return correct


def fp32_accuracy(net: Network, params: dict, data: Dataset, batch_size: int = 128,
                  bar: Progress | None = None) -> float:
    ws = Workspace()
    return _count_correct(lambda xb: forward(net, params, xb, workspace=ws), data, batch_size, bar,
                          "fp32") / max(len(data), 1)


def chip_rng(seed: int, chip_index: int, mapping_index: int = 0) -> np.random.Generator:
    """Generator of programmed chip ``chip_index`` (derived from (seed, chip, mapping))."""
    return np.random.default_rng(np.random.SeedSequence([seed, chip_index, mapping_index, _PROGRAM]))


def time_rng(seed: int, chip_index: int, mapping_index: int, time_index: int, tag: int = _READ
             ) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, chip_index, mapping_index, tag,
                                                         time_index]))


def calibration_subset(calib: Dataset, n: int, seed: int) -> Dataset:
    """``n`` training images drawn without replacement (the training files are class-sorted)."""
    n = min(n, len(calib))
    rng = np.random.default_rng(np.random.SeedSequence([seed, _CALIB]))
    return calib.subset(np.sort(rng.permutation(len(calib))[:n]))


def evaluate_accuracy(mappings: Sequence[Mapping], params: dict, test: Dataset, *,
                      calib: Dataset | None = None, calib_images: int = 1000,
                      times_s=DEFAULT_TIMES_S, seeds: int = 5, compensations=COMPENSATIONS,
                      seed: int = 0, batch_size: int = 128, progress: bool = True,
                      precision: str | None = None,
                      on_progress: Callable[["AccuracyResult"], None] | None = None
                      ) -> AccuracyResult:
    """Monte Carlo accuracy vs. time: FP32 once, then for each mapping, each programmed chip
    (seed), each time after programming and each compensation, one pass over ``test``.
    AdaBS needs ``calib`` (training images; ``calib_images`` of them). ``on_progress`` receives
    the partial result after every (chip, time) (e.g. to write a report as the run goes): ``seeds``
    counts the finished chips, each time's mean/std covers the chips that reached it."""
    times_s = tuple(float(t) for t in times_s)
    compensations = tuple(compensations)
    unknown = [c for c in compensations if c not in COMPENSATIONS]
    if unknown:
        raise ValueError(f"unknown compensation {unknown[0]!r} (expected {', '.join(COMPENSATIONS)})")
    if not mappings:
        raise ValueError("evaluate_accuracy: no mappings given")
    net = mappings[0].network
    calib_set = None
    if "gdc+adabs" in compensations:
        if calib is None:
            raise ValueError("evaluate_accuracy: gdc+adabs needs calibration images (calib)")
        calib_set = calibration_subset(calib, calib_images, seed)
    n_calib = len(calib_set) if calib_set is not None else 0
    passes = 1 + len(mappings) * seeds * len(times_s) * len(compensations)
    total = passes * len(test) + len(mappings) * seeds * len(times_s) * n_calib * (
        "gdc+adabs" in compensations)
    # per (mapping, compensation): [seed][time]
    acc: dict[tuple[int, str], list[list[float]]] = {}
    with Progress(total, "accuracy", enabled=progress) as bar:
        fp32 = fp32_accuracy(net, params, test, batch_size, bar)

        def result(done_seeds: int) -> AccuracyResult:
            """Mean/std per time over the chips that have reached it (rows may be partial while
            a chip is still running)."""
            series = []
            for m, mp in enumerate(mappings):
                for comp in compensations:
                    rows = acc.get((m, comp), [])
                    cols = [[r[i] for r in rows if len(r) > i] for i in range(len(times_s))]
                    series.append(AccuracySeries(
                        mp.chip.mapping.policy, comp,
                        tuple(float(np.mean(c)) if c else float("nan") for c in cols),
                        tuple(float(np.std(c)) if c else float("nan") for c in cols),
                        tuple(tuple(float(v) for v in r) for r in rows)))
            return AccuracyResult(fp32, times_s, done_seeds, len(test), n_calib, tuple(series))

        ws = Workspace()
        for k in range(seeds):
            for m, mp in enumerate(mappings):
                chip = program_chip(mp, params, chip_rng(seed, k, m), precision=precision)
                per_comp = {c: [] for c in compensations}
                for comp in compensations:
                    acc.setdefault((m, comp), []).append(per_comp[comp])
                for i, t in enumerate(times_s):
                    state = chip.at(t, time_rng(seed, k, m, i))
                    for c_i, comp in enumerate(compensations):
                        noise_rng = time_rng(seed, k, m, i * 16 + c_i, _ADC_NOISE)
                        gdc = comp != "none"
                        bn = None
                        if comp == "gdc+adabs":
                            bn = adabs(state, calib_set, gdc=True, batch_size=batch_size,
                                       noise_rng=noise_rng)
                            bar.advance(n_calib, f"{mp.chip.mapping.policy} chip {k} at "
                                                 f"{format_time_s(t)} adabs")
                        note = f"{mp.chip.mapping.policy} chip {k} at {format_time_s(t)} {comp}"
                        correct = _count_correct(
                            lambda xb: analog_forward(state, xb, gdc=gdc, bn=bn, workspace=ws,
                                                      noise_rng=noise_rng),
                            test, batch_size, bar, note)
                        per_comp[comp].append(correct / max(len(test), 1))
                    if on_progress is not None:
                        on_progress(result(k))
            if on_progress is not None:
                on_progress(result(k + 1))
    return result(seeds)
