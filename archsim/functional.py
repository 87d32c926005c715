"""Functional simulation: a network executed on a programmed PCM chip, with global drift
compensation (GDC), adaptive BatchNorm statistics (AdaBS) and a Monte Carlo accuracy-vs-time driver
(DESIGN.md section 4).

The life of a chip, and the random stream each step draws from (:mod:`archsim.rng`, under the
run seed, per mapping and programmed chip):

- :func:`program_chip` programs every analog :class:`~archsim.mapping.ArrayBlock` once: weight
  scale (per array or per column), differential targets split over the devices of each polarity
  (``devices_per_weight / 2``: 1 for a G+/G- pair, 2 for HERMES' 4-device unit cell), programming
  noise and drift exponents per device (stream ``program``). With ``adc.range: calibrated`` it
  then runs calibration images through the freshly programmed chip (its own read) and sets each
  layer's ADC bound; finally it reads the GDC baseline through the GDC read path (its own read).
- :meth:`ProgrammedChip.at` gives the chip ``t`` seconds after programming (drifted conductances
  and the 1/f read-noise sigma of every device) and reads its GDC factors through the same path as
  the baseline, with a read of its own (stream ``time/i/read/gdc``).
- :meth:`ChipState.read` is one read of the whole chip: a fresh read-noise sample of every device
  (``device.read_noise: per-read``, the default) or the one sample drawn at :meth:`at`
  (``frozen``: aihwkit's drift_weights convention, where the GDC readout, AdaBS and every test
  image share one draw). The driver reads once per batch: each AdaBS calibration batch and each
  test batch of each pass sees its own read, from its own stream (``read/adabs``,
  ``read/test/<compensation>``), so a calibration never shares a read-noise draw with the test
  pass it is judged on. A read draws one 64-bit key per layer from its stream; the normal numbers
  of the layer's devices are Philox4x32-10 draws under that key (:mod:`archsim.kernels`).
- :func:`analog_forward` runs an inference pass (:func:`archsim.network.infer`: the batch in
  chunks on the worker threads) on one read. Each analog layer is one fused step: patches
  written and DAC-quantized per row block, a group of rows at a time, and each group's products
  with every row block's arrays right after (register tiles of fused multiply-adds in row order,
  :func:`archsim.kernels.block_products_into`: the same bits whatever BLAS the machine has;
  the diagonal blocks only for grouped convs), then one ADC pass: output noise, clip and
  rounding, the digital sum of the row-block partial sums and the layer's output stage - GDC
  factors and the BatchNorm after it (the per-column affine of the periphery), the residual add
  and the ReLU that follow.
  :func:`analog_matmul` / :func:`analog_rows` do the same for any block of rows with one
  :class:`LayerRead` (a caller may split a layer's rows: each row keeps its noise draws). The ADC
  noise is keyed by one draw per batch from the named stream; the counter of a draw is the
  conversion (row, row block, column) and the layer, so the numbers do not depend on chunks or
  threads. Digital layers stay exact FP32.
- :func:`evaluate_accuracy` is the Monte Carlo driver; it also counts, per layer and time, the
  conversions that clip and that read zero.

Copies (``mapping.replication``): each copy of a replicated layer is programmed on its own arrays
with its own stream (``program/layer/<i>/copy/<c>``, i the layer's position among the matrix
layers, so a network imported from ONNX programs like the built-in one; copy 0 keeps the chip's
``program`` stream), so it has its own programming noise, drift exponents and read-noise samples; it sits in
the chip's layer dicts under :func:`archsim.mapping.copy_key` (``name#copy<c>``). Each output pixel
is computed on the copy the mapping assigns it to (:func:`on_copies`: copy c takes the output
columns ``copy_cols[c]`` of every output row), with that copy's read; the DAC codes of a pixel do
not depend on the copy. What is per copy and what per layer follows the hardware: GDC is per
array (packed blocks on one array share one factor: their readouts are pooled, weighted by the
outputs each block contributes); the ADC range (``adc.range: calibrated``) is set per layer from
the outputs of all its copies, and the BatchNorm affine periphery (AdaBS included) is per layer,
the same scale and offset programmed into every copy's affine unit: BatchNorm statistics are
per output channel over all pixels, and per-copy gain differences are what GDC corrects.

Units inside an array are normalized as in aihwkit: inputs divided by their abs-max (in [-1, 1]),
weights as (sum G+ - sum G-) / (D g_max) (in [-1, 1], D devices per polarity), so the ADC bound,
its output noise and the GDC readout are in those units. The digital side multiplies back by
abs-max * D g_max / scale (and the GDC alpha).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from . import kernels, threads
from .datasets import Dataset, augment_cifar
from .errors import ConfigError
from .layers import Epilogue, PatchLayout, Pass
from .layers.matrix import grouped_weights, output_stage, patch_block_rows, run_blocks
from .mapping import LayerMapping, Mapping, copy_key
from .network import (Layer, MatrixLayer, Network, Workspace, batchnorm_affine, forward, infer,
                      infer_many)
from .pcm import PCMModel, targets
from .progress import Progress, format_time_s
from .rng import Streams

DEFAULT_TIMES_S = (25.0, 3600.0, 86400.0, 2592000.0, 31536000.0)
# images per batch of the Monte Carlo driver: the images that share one read of the chip
DEFAULT_BATCH_SIZE = 128
# test batches whose chunks share the worker threads in one go (analog_forward_batches): a
# thread done with its part of one batch goes on with the next instead of waiting at its end
BATCHES_IN_FLIGHT = 8
COMPENSATIONS = ("none", "gdc", "gdc+adabs")
UNLIMITED = "unlimited"


# ------------------------------------------------------------------------------------------
# Converters
# ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Converters:
    """DAC/ADC settings of the analog path. ``None`` bits: unlimited precision; ``None`` bound: no
    clipping. ``adc_bound`` is the fixed bound; with ``adc_range="calibrated"`` each layer gets its
    own at programming time (:attr:`ProgrammedLayer.adc_bound`)."""
    dac_bits: int | None = 8
    adc_bits: int | None = 8
    adc_bound: float | None = 12.0
    adc_noise: float = 0.0
    gdc_input: str = "one-hot"
    gdc_readout: str = "real"
    adc_range: str = "fixed"
    range_percentile: float = 99.99
    range_images: int = 256

    @classmethod
    def from_chip(cls, mapping: Mapping, precision: str | None = None) -> "Converters":
        """From ``chip.tiles``; ``precision="unlimited"`` drops quantization, clipping and noise
        (and with them range calibration: there is no range to set)."""
        tiles = mapping.chip.chip.tiles
        cal = tiles.calibration
        if precision == UNLIMITED:
            return cls(None, None, None, 0.0, cal.gdc_input, cal.gdc_readout, "fixed",
                       tiles.adc.range_percentile, cal.range_images)
        return cls(tiles.dac.bits, tiles.adc.bits, tiles.adc.output_bound, tiles.adc.output_noise,
                   cal.gdc_input, cal.gdc_readout, tiles.adc.range, tiles.adc.range_percentile,
                   cal.range_images)


def devices_per_polarity(mapping: Mapping) -> int:
    """PCM devices per weight and sign: half of ``chip.tiles.array.devices_per_weight`` (the
    devices of a weight are split evenly between G+ and G-)."""
    array = mapping.chip.chip.tiles.array
    if array.devices_per_weight % 2:
        raise ConfigError(mapping.chip.file, "chip.tiles.array.devices_per_weight",
                          f"the accuracy model needs an even count (G+ and G- devices), got "
                          f"{array.devices_per_weight}")
    return array.devices_per_weight // 2


# ------------------------------------------------------------------------------------------
# Programming
# ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ProgrammedLayer:
    """One analog layer's devices. Conductance arrays are (D, K, N) over the whole layer (D devices
    per polarity); array blocks partition K x N. ``unit`` (B, N): weight units per microsiemens of
    the summed polarity (1 / scale) of each row block's arrays."""
    name: str
    row_bounds: np.ndarray          # (B, 2) int64
    col_bounds: tuple[tuple[int, int], ...]
    unit: np.ndarray                # (B, N) float64
    g_prog_pos: np.ndarray          # (D, K, N) float64, uS, per device
    g_prog_neg: np.ndarray
    nu_pos: np.ndarray              # (D, K, N) drift exponents
    nu_neg: np.ndarray
    adc_bound: float | None         # this layer's ADC bound, normalized units
    gdc_baseline: np.ndarray | None = None   # (B, C) mean |readout| right after programming
    copy: int = 0                   # which copy of the layer's weights (replication)
    array_index: np.ndarray | None = None    # (B, C) int64 array of each block, -1 where none
    # how the fast path lays out the layer's rows (a conv's patch layout: each row block's rows
    # contiguous, in another order; None: the natural order), and the columns each row block's
    # arrays cover ((B, 2); None: all of them)
    layout: PatchLayout | None = None
    col_ranges: np.ndarray | None = None
    groups: int = 1

    @property
    def devices(self) -> int:
        return self.g_prog_pos.shape[0]

    @property
    def order(self) -> np.ndarray:
        """Natural row index of each row of the layer's weights as reads hold them."""
        if self.layout is None:
            return np.arange(self.g_prog_pos.shape[1])
        return self.layout.order

    @property
    def array_bounds(self) -> np.ndarray:
        """The row blocks as row ranges of the weights as reads hold them."""
        return self.row_bounds if self.layout is None else self.layout.bounds

    @property
    def block_cols(self) -> np.ndarray:
        n = self.unit.shape[1]
        if self.col_ranges is None:
            return np.tile(np.array([[0, n]], np.int64), (len(self.row_bounds), 1))
        return self.col_ranges


@dataclass(frozen=True)
class ProgrammedChip:
    mapping: Mapping
    params: dict
    model: PCMModel
    converters: Converters
    layers: dict                    # copy key -> ProgrammedLayer (analog layers; copy c >= 1 of a
    #                                 replicated layer under mapping.copy_key(name, c))
    digital: dict                   # name -> (K, N) float32 weight matrix (digital layers)
    read_noise: str = "per-read"    # per-read | frozen

    def devices_at(self, t_s: float) -> dict:
        """Every analog layer's devices ``t_s`` seconds after programming: drifted conductances
        (D2) and read-noise sigmas (R1), float32."""
        g_max = self.model.g_max_us
        out = {}
        for name, pl in self.layers.items():
            polarities = []
            for g_prog, nu in ((pl.g_prog_pos, pl.nu_pos), (pl.g_prog_neg, pl.nu_neg)):
                g_d = self.model.drift(g_prog, nu, t_s)
                sigma = self.model.read_sigma_us(g_d, g_prog, t_s)
                polarities.append((np.ascontiguousarray(g_d, np.float32),
                                   np.ascontiguousarray(sigma, np.float32)))
            out[name] = LayerDevices(pl, polarities[0], polarities[1],
                                     np.float32(1.0 / (pl.devices * g_max)))
        return out

    def state_at(self, t_s: float, streams: Streams) -> "ChipState":
        """The drifted chip without GDC factors (frozen mode: with its one read drawn)."""
        devices = self.devices_at(t_s)
        frozen = None
        if self.read_noise == "frozen":
            frozen = read_layers(self.model, devices, streams("read", "frozen"))
        return ChipState(self, float(t_s), devices, {}, frozen)

    def gdc_levels(self, state: "ChipState", streams: Streams) -> dict:
        """Mean |GDC readout| per array of every analog layer (:func:`gdc_readout`) on ``state``:
        the ideal readout sees the drifted conductances exactly; the real one a read of its own
        (stream ``read/gdc``; frozen mode: the frozen read) and ADC noise (``adc-noise/gdc``)."""
        if self.converters.gdc_readout == "ideal":
            wn = {n: d.read(self.model, None) for n, d in state.devices.items()}
        else:
            read = state.read(streams("read", "gdc"))
            wn = {n: lr.wn for n, lr in read.layers.items()}
        noise_rng = streams("adc-noise", "gdc")
        return _pool_per_array({n: gdc_readout(wn[n], pl, self.converters, noise_rng)
                                for n, pl in self.layers.items()},
                               self.layers, self.converters.gdc_input == "one-hot")

    def at(self, t_s: float, streams: "Streams | np.random.Generator | int") -> "ChipState":
        """The chip ``t_s`` seconds after programming, its GDC factors read through the GDC path
        (``streams``: this time's stream tree, or a generator/seed to derive one)."""
        streams = Streams.of(streams)
        state = self.state_at(t_s, streams)
        alphas = {}
        for name, level in self.gdc_levels(state, streams).items():
            base = self.layers[name].gdc_baseline
            alphas[name] = np.divide(base, level, out=np.ones_like(level), where=level > 0)
        return _replace(state, alphas=alphas)


@dataclass(frozen=True)
class LayerDevices:
    """One analog layer at a time t: per polarity (drifted conductance, read-noise sigma), each
    (D, K, N) float32, and the factor from summed microsiemens to normalized weights."""
    programmed: ProgrammedLayer
    pos: tuple[np.ndarray, np.ndarray]
    neg: tuple[np.ndarray, np.ndarray]
    per_us: np.float32              # 1 / (D g_max)

    def read(self, model: PCMModel, rng: np.random.Generator | None,
             order: np.ndarray | None = None) -> np.ndarray:
        """Normalized weights (sum G+ - sum G-) / (D g_max) of one read, float32 (K, N), rows in
        ``order`` (default natural); ``rng=None``: the drifted conductances without read noise.
        One 64-bit key drawn from ``rng`` seeds the read's Philox stream (see
        :func:`archsim.kernels.read_devices_into`)."""
        noisy = rng is not None and not (model.ideal or model.read_noise_scale == 0)
        key = int(rng.integers(0, 2 ** 64, dtype=np.uint64)) if noisy else None
        return self.read_keyed(model, key, order)

    def read_keyed(self, model: PCMModel, key: int | None, order: np.ndarray | None = None
                   ) -> np.ndarray:
        k, n = self.pos[0].shape[1:]
        order = np.arange(k) if order is None else order
        return kernels.read_devices_into(self.pos, self.neg, self.per_us, order,
                                         np.empty((k, n), np.float32), key=key,
                                         noise_scale=model.read_noise_scale)


def read_layers(model: PCMModel, devices: dict, rng: np.random.Generator | None) -> dict:
    """One read of every layer: name -> (K, N) float32 normalized weights in the layer's fast
    order (rows :attr:`ProgrammedLayer.order`). One key per layer is drawn from ``rng`` (in layer
    order) and the layers are read on the worker threads."""
    noisy = rng is not None and not (model.ideal or model.read_noise_scale == 0)
    names = list(devices)
    keys = [int(rng.integers(0, 2 ** 64, dtype=np.uint64)) if noisy else None for _ in names]
    out: dict = {}

    def task(i: int, slot: int) -> None:
        dev = devices[names[i]]
        out[names[i]] = dev.read_keyed(model, keys[i], dev.programmed.order)

    threads.run_chunks(task, len(names))
    return {name: out[name] for name in names}


@dataclass(frozen=True)
class LayerRead:
    """One analog layer as one read sees it. ``weights`` (K, N) float32: the normalized weights
    of this read, rows in the fast order of ``layout`` (None: natural; :attr:`wn` gives them in
    the natural order); ``row_bounds`` the row blocks in the natural order; ``colscale`` (B, N):
    D g_max / scale, normalized -> weight units; ``alpha_cols`` (B, N) and ``alpha`` (B, C): the
    GDC factors; ``col_ranges`` (B, 2): the columns each row block's arrays cover (None: all)."""
    row_bounds: np.ndarray          # (B, 2)
    weights: np.ndarray             # (K, N) float32
    colscale: np.ndarray            # (B, N) float32
    alpha_cols: np.ndarray          # (B, N) float32 GDC factor of each column's array
    alpha: np.ndarray               # (B, C) GDC factor per array
    adc_bound: float | None
    layout: PatchLayout | None = None
    col_ranges: np.ndarray | None = None
    groups: int = 1

    @functools.cached_property
    def wn(self) -> np.ndarray:
        """The normalized weights with their rows in the natural order."""
        if self.layout is None or self.layout.identity:
            return self.weights
        out = np.empty_like(self.weights)
        out[self.layout.order] = self.weights
        return out

    @property
    def bounds(self) -> np.ndarray:
        """The row blocks as row ranges of :attr:`weights`."""
        return self.row_bounds if self.layout is None else self.layout.bounds

    @functools.cached_property
    def block_cols(self) -> np.ndarray:
        if self.col_ranges is not None:
            return self.col_ranges
        return np.tile(np.array([[0, self.weights.shape[1]]], np.int64), (len(self.row_bounds), 1))

    @functools.cached_property
    def block_width(self) -> int:
        """The most columns one row block's arrays cover."""
        c = self.block_cols
        return int((c[:, 1] - c[:, 0]).max())

    def adc(self, conv: "Converters", colscale: np.ndarray, offset: np.ndarray | None = None,
            clamp: tuple[float, float] | None = None) -> kernels.AdcRows:
        """This layer's converters and output stage (per-column ``colscale``, ``offset``,
        ``clamp``) as :class:`archsim.kernels.AdcRows` checks them once."""
        return kernels.AdcRows(self.block_cols, np.ascontiguousarray(colscale, np.float32),
                               width=self.block_width, bound=self.adc_bound, bits=conv.adc_bits,
                               in_scale=kernels.dac_code_scale(conv.dac_bits),
                               noise_sigma=conv.adc_noise, offset=offset, clamp=clamp)

    @functools.cached_property
    def diagonal(self) -> list:
        """Per row block: None (one product of its rows and columns), or its diagonal blocks
        ((taps, C/G, N/G, G_b) weights, :func:`archsim.layers.matrix.grouped_weights`) when it
        holds G_b >= 2 whole groups of a grouped conv: only those products are made (the RESET
        devices off the diagonal add nothing)."""
        out = []
        layout, k, n = self.layout, self.weights.shape[0], self.weights.shape[1]
        for b, (r0, r1) in enumerate(self.bounds):
            c0, c1 = self.block_cols[b]
            out.append(None)
            if self.groups == 1 or layout is None:
                continue
            cg, ng = k // layout.taps // self.groups, n // self.groups
            ch0, ch1 = layout.block_channels[b]
            if ch0 < 0 or ch0 % cg or (ch1 - ch0) % cg:
                continue
            g_b = (ch1 - ch0) // cg
            if g_b < 2 or c0 != ch0 // cg * ng or c1 - c0 != g_b * ng:
                continue
            out[-1] = grouped_weights(self.weights[r0:r1, c0:c1], g_b, layout.taps)
        return out


@dataclass(frozen=True)
class ChipRead:
    """One read of the whole chip at one time: what one batch of inputs sees."""
    state: "ChipState"
    layers: dict                    # name -> LayerRead

    @property
    def chip(self) -> ProgrammedChip:
        return self.state.chip


@dataclass(frozen=True)
class ChipState:
    """The chip at time ``t_s``: drifted devices, GDC factors, and (frozen read noise) the
    normalized weights of the one read every use shares."""
    chip: ProgrammedChip
    t_s: float
    devices: dict                   # name -> LayerDevices
    alphas: dict                    # name -> (B, C) GDC factors (empty: not calibrated)
    frozen: dict | None = None      # name -> (K, N) weights of the frozen read (fast order)
    _columns: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def columns(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(colscale, alpha_cols, alpha) of a layer: the same for every read of this state."""
        out = self._columns.get(name)
        if out is None:
            pl = self.devices[name].programmed
            colscale = (pl.unit * (pl.devices * self.chip.model.g_max_us)).astype(np.float32)
            alpha = self.alphas.get(name)
            if alpha is None:
                alpha = np.ones((len(pl.row_bounds), len(pl.col_bounds)))
            out = self._columns[name] = (colscale, _expand_cols(alpha, pl.col_bounds).astype(
                np.float32), alpha)
        return out

    def read(self, rng: np.random.Generator | None) -> ChipRead:
        """One read: every device with a fresh read-noise sample (per-read mode; one key per
        layer drawn from ``rng``), or the frozen read. ``rng`` may be None only for a chip without
        read noise."""
        model = self.chip.model
        if self.frozen is None and rng is None and not (model.ideal or model.read_noise_scale == 0):
            raise ValueError("ChipState.read: a noisy chip needs a generator for its read noise")
        weights = self.frozen if self.frozen is not None else read_layers(model, self.devices, rng)
        layers = {}
        for name, dev in self.devices.items():
            pl = dev.programmed
            colscale, alpha_cols, alpha = self.columns(name)
            layers[name] = LayerRead(pl.row_bounds, weights[name], colscale, alpha_cols, alpha,
                                     pl.adc_bound, pl.layout, pl.col_ranges, pl.groups)
        return ChipRead(self, layers)


def normalized_weights(g_pos: np.ndarray, g_neg: np.ndarray, g_max_us: float) -> np.ndarray:
    """The array's weights in normalized units, (sum G+ - sum G-) / (D g_max), float32; (D, K, N)
    per-device conductances or (K, N) for one device per polarity."""
    g_pos, g_neg = np.asarray(g_pos), np.asarray(g_neg)
    d = g_pos.shape[0] if g_pos.ndim == 3 else 1
    if g_pos.ndim == 3:
        g_pos, g_neg = g_pos.sum(axis=0), g_neg.sum(axis=0)
    return ((g_pos - g_neg) / (d * g_max_us)).astype(np.float32)


def _block_scales(w: np.ndarray, g_total_us: float, per_column: bool) -> np.ndarray:
    """scale = g_total / max|W_block| (DESIGN 4), per array or per column, with g_total = D g_max
    the largest summed conductance of a polarity; zero blocks get 1."""
    m = np.abs(w).max(axis=0) if per_column else np.full(w.shape[1], np.abs(w).max() if w.size else 0.0)
    return np.divide(g_total_us, m, out=np.ones_like(m, dtype=np.float64), where=m > 0)


def _expand_cols(per_array: np.ndarray, col_bounds) -> np.ndarray:
    """(B, C) per-array values -> (B, N) per column."""
    return np.concatenate([np.repeat(per_array[:, [c]], c1 - c0, axis=1)
                           for c, (c0, c1) in enumerate(col_bounds)], axis=1)


def gdc_readout(wn: np.ndarray, pl: ProgrammedLayer, conv: Converters,
                noise_rng: np.random.Generator | None) -> np.ndarray:
    """Mean |output| of each array of ``pl`` for the GDC calibration input, from the normalized
    weights ``wn`` of one read: one-hot rows (each output is one weight, as aihwkit; the DAC code of
    a one-hot input is exactly full scale) or all ones (each output is a column sum, the paper's
    summed current). ``conv.gdc_readout == "real"``: each output goes through the ADC as inference
    does (output noise from ``noise_rng``, clip at the layer's bound, rounding to its levels);
    ``"ideal"``: the exact values."""
    real = conv.gdc_readout == "real"
    bound = pl.adc_bound
    step = bound / kernels.levels_of(conv.adc_bits) if (conv.adc_bits and bound) else None
    out = np.empty((len(pl.row_bounds), len(pl.col_bounds)))
    for b, (r0, r1) in enumerate(pl.row_bounds):
        block = wn[r0:r1].astype(np.float64)
        y = block.sum(axis=0, keepdims=True) if conv.gdc_input == "all-ones" else block
        if real:
            if conv.adc_noise > 0:
                if noise_rng is None:
                    raise ValueError("gdc_readout: ADC output noise needs a generator")
                y = y + conv.adc_noise * noise_rng.standard_normal(y.shape)
            if bound is not None:
                y = np.clip(y, -bound, bound)
            if step is not None:
                y = np.rint(y / step) * step
        for c, (c0, c1) in enumerate(pl.col_bounds):
            out[b, c] = np.abs(y[:, c0:c1]).mean()
    return out


def _pool_per_array(levels: dict, layers: dict, one_hot: bool) -> dict:
    """GDC is per array: where blocks share an array (packed copies or layers), their mean
    |readout| levels become the array's, each block weighted by the outputs it averaged (one-hot:
    rows x columns; all-ones: columns). Arrays of one block keep their level untouched."""
    members: dict[int, list] = {}
    for key, pl in layers.items():
        if pl.array_index is None:
            continue
        for b, (r0, r1) in enumerate(pl.row_bounds):
            for c, (c0, c1) in enumerate(pl.col_bounds):
                index = int(pl.array_index[b, c])
                if index >= 0:
                    outputs = (int(r1 - r0) if one_hot else 1) * (c1 - c0)
                    members.setdefault(index, []).append((key, b, c, outputs))
    shared = [m for m in members.values() if len(m) > 1]
    if not shared:
        return levels
    out = {k: np.array(v, copy=True) for k, v in levels.items()}
    for m in shared:
        level = sum(levels[k][b, c] * w for k, b, c, w in m) / sum(w for *_, w in m)
        for k, b, c, _w in m:
            out[k][b, c] = level
    return out


def program_layer(lm: LayerMapping, w: np.ndarray, model: PCMModel, conv: Converters,
                  per_column: bool, devices: int, rng: np.random.Generator,
                  mask: np.ndarray | None = None, copy: int = 0,
                  layout: PatchLayout | None = None) -> ProgrammedLayer:
    """Targets, programming noise and drift exponents of the devices of copy ``copy`` of one analog
    layer (no readout yet). ``mask`` (K, N): the devices that hold a weight (the diagonal blocks of
    a grouped conv); the others stay in the RESET state (0 conductance, no programming noise, no
    read noise). Columns of a row block that no array covers get unit 0 (no output). ``layout``:
    the rows' order on the fast path (a conv's patch layout; the same for every copy)."""
    row_bounds = np.array(lm.row_bounds(), np.int64).reshape(-1, 2)
    col_bounds = tuple(lm.col_bounds())
    row_block = {bounds: b for b, bounds in enumerate(lm.row_bounds())}
    col_block = {bounds: c for c, bounds in enumerate(col_bounds)}
    unit = np.zeros((len(row_bounds), lm.n))
    scale_full = np.ones(w.shape)
    array_index = np.full((len(row_bounds), len(col_bounds)), -1, np.int64)
    for a in lm.blocks_of(copy):
        r0, r1, c0, c1 = a.row_start, a.row_stop, a.col_start, a.col_stop
        s = _block_scales(w[r0:r1, c0:c1], devices * model.g_max_us, per_column)
        unit[row_block[(r0, r1)], c0:c1] = 1.0 / s
        scale_full[r0:r1, c0:c1] = s
        array_index[row_block[(r0, r1)], col_block[(c0, c1)]] = a.index
    gt_pos, gt_neg = targets(w, scale_full, model.g_max_us, devices)    # per device
    shape = (devices, *w.shape)
    g_pos = model.program(np.broadcast_to(gt_pos, shape), rng)           # (P1)
    g_neg = model.program(np.broadcast_to(gt_neg, shape), rng)
    nu_pos = model.drift_exponents(np.broadcast_to(gt_pos, shape), rng)  # (D1)
    nu_neg = model.drift_exponents(np.broadcast_to(gt_neg, shape), rng)
    if mask is not None:
        g_pos = np.where(mask, g_pos, 0.0)
        g_neg = np.where(mask, g_neg, 0.0)
    return ProgrammedLayer(lm.name, row_bounds, col_bounds, unit, g_pos, g_neg, nu_pos, nu_neg,
                           conv.adc_bound, copy=copy, array_index=array_index, layout=layout,
                           col_ranges=_block_col_ranges(lm, row_bounds, copy), groups=lm.groups)


def _block_col_ranges(lm: LayerMapping, row_bounds: np.ndarray, copy: int = 0
                      ) -> np.ndarray | None:
    """The columns the arrays of each row block cover, (B, 2), or None when every row block
    covers all N (a dense layer); of the arrays of copy ``copy``. Always one range: the arrays of a row block sit side by side."""
    out = np.zeros((len(row_bounds), 2), np.int64)
    for b, (r0, r1) in enumerate(row_bounds):
        cols = sorted((a.col_start, a.col_stop) for a in lm.blocks_of(copy)
                      if (a.row_start, a.row_stop) == (r0, r1))
        if any(c1 != c0 for (_, c1), (c0, _) in zip(cols[:-1], cols[1:])):
            raise ValueError(f"{lm.name}: the arrays of rows {r0}-{r1} do not cover one range")
        out[b] = cols[0][0], cols[-1][1]
    if (out[:, 0] == 0).all() and (out[:, 1] == lm.n).all():
        return None
    return out


def program_chip(mapping: Mapping, params: dict, streams: "Streams | np.random.Generator | int",
                 *, precision: str | None = None, model: PCMModel | None = None,
                 calibration_images: np.ndarray | None = None, batch_size: int = DEFAULT_BATCH_SIZE
                 ) -> ProgrammedChip:
    """Program every analog layer of ``mapping`` once (targets, programming noise, drift exponents:
    stream ``program``; copy c >= 1 of the i-th matrix layer: ``program/layer/<i>/copy/<c>``), set
    the ADC ranges (``adc.range: calibrated``: from
    ``calibration_images``, normalized network inputs, through the freshly programmed chip with a
    read of its own), then read the GDC baselines through the GDC path (their own read).
    ``streams``: this chip's stream tree (or a generator/seed to derive it).
    ``precision="unlimited"`` turns DAC/ADC quantization, clipping and noise off (for checks)."""
    streams = Streams.of(streams)
    net = mapping.network
    device = mapping.chip.chip.device
    model = model or PCMModel.from_config(device)
    conv = Converters.from_chip(mapping, precision)
    per_column = device.weight_scaling == "per-column"
    d = devices_per_polarity(mapping)
    rng = streams("program")
    layers, digital = {}, {}
    for li, lm in enumerate(mapping.layers):
        layer = net.layer(lm.name)
        w = layer.weight_matrix(params)
        if lm.analog:
            w64, mask = w.astype(np.float64), layer.weight_mask(lm.k)
            layout = None
            if hasattr(layer, "patch_layout"):
                layout = layer.patch_layout(net.input_shape_of(layer)[-1], lm.row_bounds())
            layers[lm.name] = program_layer(lm, w64, model, conv, per_column, d, rng, mask,
                                            layout=layout)
            for c in range(1, lm.copies):       # each copy on arrays of its own
                layers[copy_key(lm.name, c)] = program_layer(
                    lm, w64, model, conv, per_column, d,
                    streams("program", "layer", li, "copy", c), mask, copy=c, layout=layout)
        else:
            digital[lm.name] = w
    chip = ProgrammedChip(mapping, params, model, conv, layers, digital, device.read_noise)
    if conv.adc_range == "calibrated" and layers:
        if calibration_images is None or len(calibration_images) == 0:
            raise ConfigError(mapping.chip.file, "chip.tiles.adc.range",
                              "calibrated ADC ranges need calibration images (the workload's "
                              "training split; --calib-images > 0)")
        bounds = calibrate_adc_ranges(chip, calibration_images[:conv.range_images],
                                      streams, batch_size)
        chip = _replace(chip, layers={n: _replace(pl, adc_bound=bounds[n])
                                      for n, pl in layers.items()})
    # GDC baseline: the readout right after programming, through the same path as later readouts
    baseline = streams.child("baseline")
    levels = chip.gdc_levels(chip.state_at(0.0, baseline), baseline)
    return _replace(chip, layers={n: _replace(pl, gdc_baseline=levels[n])
                                  for n, pl in chip.layers.items()})


_replace = dataclasses.replace


def calibrate_adc_ranges(chip: ProgrammedChip, images: np.ndarray, streams: Streams,
                         batch_size: int) -> dict[str, float]:
    """Each analog layer's ADC bound: the ``range_percentile`` of |analog output| (normalized
    units, over its row blocks, columns and copies) on ``images`` run through the chip right after
    programming (a read of its own, no clipping or rounding during the calibration). Returned per
    copy key (every copy of a layer gets the layer's bound)."""
    conv = chip.converters
    open_conv = _replace(conv, adc_bits=None, adc_bound=None, adc_noise=0.0)
    open_layers = {n: _replace(pl, adc_bound=None) for n, pl in chip.layers.items()}
    open_chip = _replace(chip, converters=open_conv, layers=open_layers)
    state = ChipState(open_chip, 0.0, open_chip.devices_at(0.0), {})
    seen: dict[str, list[np.ndarray]] = {pl.name: [] for pl in chip.layers.values()}
    rng = streams("read", "adc-range")
    ws = Workspace()
    for start in range(0, len(images), batch_size):
        read = state.read(rng)
        analog_forward(read, images[start:start + batch_size], gdc=False, workspace=ws,
                       observe=lambda name, y: seen[name].append(np.abs(y).ravel()))
    per_layer = {}
    for name, parts in seen.items():
        values = np.concatenate(parts) if parts else np.zeros(1)
        bound = float(np.percentile(values, conv.range_percentile))
        per_layer[name] = bound if bound > 0 else float(conv.adc_bound or 1.0)
    return {key: per_layer[pl.name] for key, pl in chip.layers.items()}


# ------------------------------------------------------------------------------------------
# Execution
# ------------------------------------------------------------------------------------------

def analog_matmul(layer_read: LayerRead, cols: np.ndarray, conv: Converters, *, gdc: bool,
                  workspace: Workspace, noise_rng: np.random.Generator | None = None,
                  in_place: bool = False,
                  affine: tuple[np.ndarray, np.ndarray] | None = None,
                  dac_absmax: np.ndarray | None = None,
                  counts: np.ndarray | None = None,
                  observe: Callable[[np.ndarray], None] | None = None,
                  noise_key: int | None = None, row_start: int = 0) -> np.ndarray:
    """A block of rows (P, K) @ W on the arrays of one read: DAC per row block, the products of
    each array, ADC (with its output noise), digital sum of the row-block partial sums. ``cols``
    in the natural row order (:attr:`LayerRead.wn`'s); ``in_place``: the DAC codes may overwrite
    them. ``affine``: a per-column (scale, offset) applied in the same digital pass (a folded
    BatchNorm). ``dac_absmax``: ``cols`` already holds the DAC codes, with these per-row-block
    abs-maxes. ``counts`` (3,) int64 accumulates the conversions that clipped, that read zero,
    and all conversions. ``observe(y)`` receives every conversion's analog value in normalized
    units before the ADC. ADC noise: Philox key ``noise_key``, or one drawn from ``noise_rng``;
    ``row_start``: the index of the first row among the rows that share the key (a caller that
    splits a layer's rows keeps each row's draws by passing its offset)."""
    cols = np.ascontiguousarray(cols, np.float32)
    p, k = cols.shape
    nb = len(layer_read.row_bounds)
    layout = layer_read.layout
    if layout is not None and not layout.identity:
        cols = np.take(cols, layout.order, axis=1)
        in_place = True
    if dac_absmax is not None:
        xq, absmax = cols, np.ascontiguousarray(dac_absmax, np.float32)
    else:
        xq = cols if in_place else np.empty((p, k), np.float32)
        absmax = np.empty((p, nb), np.float32)
        kernels.dac_quantize_into(cols, layer_read.bounds, conv.dac_bits, xq, absmax)
    colscale = layer_read.colscale * layer_read.alpha_cols if gdc else layer_read.colscale
    offset = None
    if affine is not None:
        colscale = colscale * affine[0]
        offset = np.asarray(affine[1], np.float32)
    out = np.empty((p, layer_read.weights.shape[1]), np.float32)
    key = noise_key
    if key is None and conv.adc_noise > 0:
        if noise_rng is None:
            raise ValueError("analog_matmul: ADC output noise needs a generator (noise_rng)")
        key = int(noise_rng.integers(0, 2 ** 64, dtype=np.uint64))
    adc_counts = np.zeros(2, np.int64)
    analog_rows(layer_read, xq, absmax, layer_read.adc(conv, colscale, offset), out,
                key=key or 0, row_start=row_start, workspace=workspace, counts=adc_counts,
                observe=observe)
    if counts is not None:
        counts[:2] += adc_counts
        counts[2] += conversions(layer_read, p)
    return out


def conversions(layer_read: LayerRead, rows: int) -> int:
    """ADC conversions of ``rows`` MVMs: each row block converts the columns its arrays cover."""
    c = layer_read.block_cols
    return int(rows * (c[:, 1] - c[:, 0]).sum())


def analog_rows(layer_read: LayerRead, xq: np.ndarray, absmax: np.ndarray,
                adc: kernels.AdcRows, out: np.ndarray, *, key: int, stream: int = 0,
                row_start: int = 0, workspace: Workspace, residual: np.ndarray | None = None,
                counts: np.ndarray | None = None,
                observe: Callable[[np.ndarray], None] | None = None,
                pixels: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """The arrays and converters on a block of DAC codes ``xq`` (P, K; rows in the read's fast
    order) with their per-row-block abs-maxes: the products of each row block's arrays
    (:func:`array_products`), then the converters and output stage (:func:`convert_rows`)."""
    y = array_products(layer_read, xq, workspace.get("adc.y", (len(layer_read.block_cols),
                                                               xq.shape[0],
                                                               layer_read.block_width)))
    return convert_rows(layer_read, y, absmax, adc, out, key=key, stream=stream,
                        row_start=row_start, residual=residual, counts=counts, observe=observe,
                        workspace=workspace, pixels=pixels)


def array_products(layer_read: LayerRead, xq: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The column sums of each row block b of the arrays on DAC codes ``xq`` (P, K): y[b, :,
    :c1 - c0] = xq[:, r0:r1] @ W[r0:r1, c0:c1], each sum in row order as fused multiply-adds
    (:func:`archsim.kernels.block_products_into`; a grouped layer's row blocks that hold whole
    groups: their diagonal blocks only)."""
    if all(d is None for d in layer_read.diagonal):
        return kernels.block_products_into(xq, layer_read.bounds, layer_read.weights,
                                           layer_read.block_cols, y)
    for b, diag in enumerate(layer_read.diagonal):
        if diag is None:
            kernels.block_products_into(xq, layer_read.bounds[b:b + 1], layer_read.weights,
                                        layer_read.block_cols[b:b + 1], y[b:b + 1])
        else:
            kernels.grouped_products_into(xq, int(layer_read.bounds[b, 0]), diag, y[b])
    return y


def convert_rows(layer_read: LayerRead, y: np.ndarray, absmax: np.ndarray,
                 adc: kernels.AdcRows, out: np.ndarray, *, key: int, stream: int = 0,
                 row_start: int = 0, workspace: Workspace, residual: np.ndarray | None = None,
                 counts: np.ndarray | None = None,
                 observe: Callable[[np.ndarray], None] | None = None,
                 pixels: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """The converters and output stage ``adc`` (:meth:`LayerRead.adc`; ADC noise under
    ``key``/``stream`` for rows ``row_start`` ...) on the row blocks' column sums ``y``
    (:func:`array_products`) into ``out`` (P, N; with ``pixels``, the rows of every output pixel,
    as :func:`archsim.kernels.adc_rows_into` places them)."""
    if observe is not None:
        observe(np.concatenate([y[b, :, :c1 - c0].ravel()
                                for b, (c0, c1) in enumerate(layer_read.block_cols)])
                * adc.converter[2])
    return adc(y, absmax, out, key=key, stream=stream, row_start=row_start, residual=residual,
               counts=counts, scratch=workspace.get, pixels=pixels)


@dataclass
class BatchNormStats:
    """Per BatchNorm layer: the (scale, offset) of the digital affine periphery."""
    affine: dict = field(default_factory=dict)

    @classmethod
    def from_params(cls, net: Network, params: dict) -> "BatchNormStats":
        return cls({l.name: batchnorm_affine(params, l.name, l.eps)
                    for l in net.batchnorm_layers()})


# ADC noise streams of copy c of a replicated layer: the layer's stream + c * _COPY_STREAMS
_COPY_STREAMS = 1 << 16


@dataclass(frozen=True)
class _AnalogStage:
    """An analog layer's output stage in one pass: the converters with the per-column factor,
    offset and clamp the ADC pass applies (GDC factors, and a BatchNorm folded in when the layer
    has no bias), whether it adds the residual too, and what is left for a plain epilogue
    afterwards (bias + BatchNorm)."""
    adc: kernels.AdcRows
    residual: bool
    rest: Epilogue | None


def _analog_stage(layer: MatrixLayer, lr: LayerRead, conv: Converters,
                  epilogue: Epilogue | None, gdc: bool, bn: BatchNormStats) -> _AnalogStage:
    colscale = lr.colscale * lr.alpha_cols if gdc else lr.colscale
    if layer.bias or epilogue is None or (epilogue.batchnorm is None and epilogue.residual is None
                                          and epilogue.clamp is None):
        return _AnalogStage(lr.adc(conv, colscale), False, epilogue)
    offset = None
    if epilogue.batchnorm is not None:
        scale, offset = bn.affine[epilogue.batchnorm.name]
        colscale = colscale * scale
        offset = np.asarray(offset, np.float32)
    return _AnalogStage(lr.adc(conv, colscale, offset, epilogue.clamp),
                        epilogue.residual is not None, None)


def analog_forward(read: ChipRead, x: np.ndarray, *, gdc: bool = True,
                   bn: BatchNormStats | None = None, workspace: Workspace | None = None,
                   noise_rng: np.random.Generator | None = None,
                   batchnorm: Callable | None = None,
                   adc_counts: dict[str, np.ndarray] | None = None,
                   observe: Callable[[str, np.ndarray], None] | None = None) -> np.ndarray:
    """Logits of batch ``x`` on one read of the chip: analog layers through the arrays (with GDC
    when ``gdc``, ADC output noise keyed by one draw from ``noise_rng``), digital layers in FP32,
    BatchNorm as the affine ``bn`` (default: the eval stats). Each analog layer's output stage -
    the BatchNorm after it (the per-column affine of the hardware), a residual add and a ReLU -
    runs in its ADC pass. ``batchnorm`` replaces every BatchNorm (e.g. batch statistics: the batch
    then runs as one chunk, its BatchNorms unfused). ``adc_counts``: per analog layer, a (3,) int64
    array that accumulates the conversions that clipped, that read zero, and all of them.
    ``observe(layer, y)`` sees every analog layer's conversions before the ADC (normalized units).
    The batch runs in chunks on the worker threads of :mod:`archsim.threads`; the numbers do not
    depend on the thread count."""
    x = np.asarray(x, np.float32)
    make_pass, finish = _analog_batch(read, x, gdc=gdc, bn=bn, noise_rng=noise_rng,
                                      batchnorm=batchnorm, adc_counts=adc_counts, observe=observe)
    net = read.chip.mapping.network
    return finish(infer(net, x, make_pass, batchnorm_fusion=batchnorm is None,
                        chunk=len(x) if batchnorm is not None else None, workspace=workspace))


def analog_forward_batches(reads: Sequence[ChipRead], xs: Sequence[np.ndarray], *,
                           gdc: bool = True, bn: BatchNormStats | None = None,
                           workspace: Workspace | None = None,
                           noise_rng: np.random.Generator | None = None,
                           adc_counts: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
    """:func:`analog_forward` of batch ``xs[i]`` on read ``reads[i]``, for every i, in one go:
    the chunks of all the batches share the worker threads (no thread waits at the end of a
    batch for the others). The same numbers as one call per batch in this order (each batch
    draws its ADC noise key from ``noise_rng`` in turn)."""
    if len(reads) != len(xs):
        raise ValueError(f"analog_forward_batches: {len(reads)} reads for {len(xs)} batches")
    if not reads:
        return []
    xs = [np.asarray(x, np.float32) for x in xs]
    jobs = [_analog_batch(r, x, gdc=gdc, bn=bn, noise_rng=noise_rng, batchnorm=None,
                          adc_counts=adc_counts, observe=None) for r, x in zip(reads, xs)]
    net = reads[0].chip.mapping.network
    outs = infer_many(net, [(x, make_pass) for x, (make_pass, _) in zip(xs, jobs)],
                      workspace=workspace)
    return [finish(out) for out, (_, finish) in zip(outs, jobs)]


def _analog_batch(read: ChipRead, x: np.ndarray, *, gdc: bool, bn: BatchNormStats | None,
                  noise_rng: np.random.Generator | None, batchnorm: Callable | None,
                  adc_counts: dict[str, np.ndarray] | None,
                  observe: Callable[[str, np.ndarray], None] | None
                  ) -> tuple[Callable[[int, Workspace], Pass], Callable[[np.ndarray], np.ndarray]]:
    """One batch of :func:`analog_forward`: its passes' factory for :func:`archsim.network.infer`
    (drawing the batch's ADC noise key now) and what finishes its logits (the ADC counts)."""
    chip = read.chip
    net = chip.mapping.network
    conv = chip.converters
    bn = bn or BatchNormStats.from_params(net, chip.params)
    key = 0
    if conv.adc_noise > 0 and read.layers:
        if noise_rng is None:
            raise ValueError("analog_forward: ADC output noise needs a generator (noise_rng)")
        key = int(noise_rng.integers(0, 2 ** 64, dtype=np.uint64))
    # each matrix layer draws its ADC noise from its own Philox stream (its index among them)
    stream_of = {layer.name: i for i, layer in enumerate(net.matrix_layers())}
    stages: dict = {}
    # a replicated layer's output pixels run on their copies (mapping.replication)
    replicated = {lm.name: lm for lm in chip.mapping.analog_layers if lm.copies > 1}
    chunk_counts: dict[int, dict] = {}

    def step(layer: MatrixLayer, a: np.ndarray, epilogue: Epilogue | None,
             residual: np.ndarray | None, run: Pass) -> np.ndarray:
        lr = read.layers.get(layer.name)
        if lr is None:
            return layer.forward_fused(a, epilogue, residual, run)
        lm = replicated.get(layer.name)
        reads = [lr] if lm is None else [read.layers[copy_key(layer.name, c)]
                                         for c in range(lm.copies)]
        copy_stages = stages.get((layer.name, id(epilogue)))
        if copy_stages is None:
            copy_stages = stages[(layer.name, id(epilogue))] = [
                _analog_stage(layer, r, conv, epilogue, gdc, bn) for r in reads]
        stage = copy_stages[0]
        counts = chunk_counts[run.first_image].setdefault(layer.name, np.zeros(2, np.int64))
        ws = run.workspace
        n = a.shape[0]
        if lr.layout is not None:
            geom = run.cached(("geometry", layer.name), lambda: layer.geometry(a.shape[1:]))
            ho, wo = int(geom[8]), int(geom[9])
            src = np.ascontiguousarray(a, np.float32)
        else:
            ho = wo = 1
            src = np.ascontiguousarray(a.reshape(n, -1), np.float32)
        rows, k = n * ho * wo, lr.weights.shape[0]
        nout = lr.weights.shape[1]
        out = np.empty((rows, nout), np.float32)
        res = None
        if stage.residual:
            res = np.ascontiguousarray(residual, np.float32).reshape(rows, nout)
        # the parts of the output: (read, stage, ADC noise stream, output columns) - one, or one
        # per copy of a replicated layer (copy c computes the output columns copy_cols[c] of
        # every output row, with its own read and its own noise stream). A part's rows are its
        # pixels, (image, oy, ox) flattened; their ADC noise is counted by that index among the
        # part's pixels, so it does not depend on blocks, chunks or threads.
        if lm is None:
            parts = [(lr, stage, stream_of[layer.name], (0, wo))]
        else:
            if lr.layout is None or lm.width != wo:
                raise ValueError(f"{layer.name}: copies split {lm.width} output columns, the "
                                 f"layer has {wo}")
            parts = [(reads[c], copy_stages[c], stream_of[layer.name] + c * _COPY_STREAMS, cols)
                     for c, cols in enumerate(lm.copy_cols)]
        block = patch_block_rows(k)
        tasks = []
        for pi, (_, _, _, (w0, w1)) in enumerate(parts):
            part_rows = n * ho * (w1 - w0)
            tasks += [(pi, r0, min(part_rows, r0 + block)) for r0 in range(0, part_rows, block)]
        block_counts = np.zeros((len(tasks), 2), np.int64)
        cap = max((r1 - r0 for _, r0, r1 in tasks), default=1)
        see = None if observe is None else (lambda y, name=layer.name: observe(name, y))
        window_max = None
        if lr.layout is not None:       # the patch + DAC pass of each part, checked once
            dacs = [run.cached(("patches-dac", layer.name, cols, src.shape),
                               lambda cols=cols: kernels.PatchesDac(
                                   src.shape, geom, lr.layout.runs, lr.bounds, conv.dac_bits, k,
                                   cols))
                    for _, _, _, cols in parts]
            # one row block of whole taps: the rows' abs-maxes come from the windows' (once here)
            if dacs[0].by_pixel:
                window_max = dacs[0].window_maxima(
                    src, ws.get("dac.window-max", dacs[0].window_shape, np.int32),
                    ws.get("dac.pixel-max", src.shape[:3], np.int32))

        # patch + DAC + array products a small group of rows at a time, in cache (not for the
        # diagonal blocks of a grouped layer)
        fused = lr.layout is not None and all(d is None for d in lr.diagonal)
        group = kernels.patch_group_rows(k)

        def rows_block(i: int, slot: int) -> None:
            pi, r0, r1 = tasks[i]
            part_read, part_stage, stream, (w0, w1) = parts[pi]
            bws = ws.worker(slot)
            absmax = bws.get("dac.absmax", (cap, len(lr.row_bounds)))[:r1 - r0]
            convert = dict(key=key, stream=stream, workspace=bws, residual=res,
                           row_start=run.first_image * ho * (w1 - w0) + r0,
                           counts=block_counts[i], observe=see, pixels=(r0, w0, w1, wo))
            if fused:
                y = bws.get("adc.y", (len(part_read.block_cols), r1 - r0, part_read.block_width))
                dacs[pi].products(src, r0, r1, bws.get("patches", (group, k)), absmax,
                                  part_read.weights, part_read.block_cols, y, window_max)
                convert_rows(part_read, y, absmax, part_stage.adc, out, **convert)
                return
            cols = bws.get("patches", (cap, k))[:r1 - r0]
            if lr.layout is not None:
                dacs[pi](src, r0, r1, cols, absmax, window_max)
            else:
                kernels.dac_quantize_into(src[r0:r1], lr.bounds, conv.dac_bits, cols, absmax)
            # each row goes straight to its pixel in out (a copy's pixels are a column range)
            analog_rows(part_read, cols, absmax, part_stage.adc, out, **convert)

        run_blocks(rows_block, len(tasks))
        counts += block_counts.sum(axis=0)
        if stage.rest is not None or layer.bias:
            output_stage(out, stage.rest, None if residual is None else
                         np.ascontiguousarray(residual, np.float32).reshape(rows, nout),
                         layer.bias_f32(run), run)
        return out.reshape((n, ho, wo, nout) if lr.layout is not None else (n, nout))

    shared: dict = {}

    def make_pass(first: int, ws: Workspace) -> Pass:
        chunk_counts[first] = {}
        return Pass(chip.params, ws, batchnorm=batchnorm,
                    affine=lambda layer: bn.affine[layer.name], fused_matmul=step,
                    first_image=first, shared=shared)

    def finish(out: np.ndarray) -> np.ndarray:
        if adc_counts is not None:
            for counts in chunk_counts.values():
                for name, c in counts.items():
                    total = adc_counts.setdefault(name, np.zeros(3, np.int64))
                    total[:2] += c
            for name, lr in read.layers.items():
                if any(name in c for c in chunk_counts.values()):
                    rows = len(x) * int(np.prod(net.shape(name)[:-1]))
                    adc_counts.setdefault(name, np.zeros(3, np.int64))[2] += conversions(lr, rows)
        return out

    return make_pass, finish


def adabs(state: ChipState, calib: Dataset, *, read_rng: np.random.Generator | None,
          noise_rng: np.random.Generator | None, gdc: bool = True, batch_size: int = DEFAULT_BATCH_SIZE,
          augment_rng: np.random.Generator | None = None) -> BatchNormStats:
    """AdaBS: run the calibration images through the drifted chip (each batch a read of its own
    from ``read_rng``; ADC noise from ``noise_rng``) with train-mode BatchNorm (each batch
    normalized by its own statistics), and re-estimate every BatchNorm's running mean and variance
    as the average over batches (PyTorch momentum=None, unbiased variance); return the refreshed
    affine periphery. ``augment_rng``: each batch is augmented as in training first (CIFAR: random
    crop of the zero-padded image and flip, :func:`archsim.datasets.augment_cifar`) - the
    statistics a network's BatchNorms were trained with are those of augmented images, and
    re-estimating them on plain ones costs accuracy by itself: on an ideal chip (exact arithmetic,
    1,000 images, 1 day) the noise-trained ResNet-32 scored 87.05% after plain AdaBS and 89.14%
    after augmented AdaBS, against 89.28% FP32 with its trained statistics."""
    net = state.chip.mapping.network
    params = state.chip.params
    sums: dict[str, list] = {l.name: [0.0, 0.0, 0] for l in net.batchnorm_layers()}

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
    for start in range(0, len(calib), batch_size):
        part = slice(start, start + batch_size)
        if augment_rng is None:
            xb = calib.normalized(part)
        else:
            xb = calib.with_images(augment_cifar(calib.images[part], augment_rng)).normalized()
        analog_forward(state.read(read_rng), xb, gdc=gdc, workspace=ws, noise_rng=noise_rng,
                       batchnorm=train_bn)
    out = {}
    for layer in net.batchnorm_layers():
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

    @classmethod
    def of_rows(cls, mapping: str, compensation: str, rows, times: int) -> "AccuracySeries":
        """The series of per-chip rows ([chip][time]; a chip still running may have fewer
        times): mean and std per time over the chips that reached it (NaN where none has)."""
        cols = [[r[i] for r in rows if len(r) > i] for i in range(times)]
        return cls(mapping, compensation,
                   tuple(float(np.mean(c)) if c else float("nan") for c in cols),
                   tuple(float(np.std(c)) if c else float("nan") for c in cols),
                   tuple(tuple(r) for r in rows))


@dataclass(frozen=True)
class AdcStats:
    """Conversions of one mapping's test passes at one time, per analog layer: (total, clipped,
    read zero)."""
    mapping: str
    t_s: float
    layers: tuple[tuple[str, int, int, int], ...]     # (layer, conversions, clipped, zero)

    def to_dict(self) -> dict:
        return {"mapping": self.mapping, "t_s": self.t_s,
                "layers": [{"layer": n, "conversions": c, "clipped": k, "zero": z}
                           for n, c, k, z in self.layers]}

    @classmethod
    def from_dict(cls, d: dict) -> "AdcStats":
        return cls(d["mapping"], float(d["t_s"]), tuple(
            (r["layer"], int(r["conversions"]), int(r["clipped"]), int(r["zero"]))
            for r in d["layers"]))


@dataclass(frozen=True)
class AccuracyResult:
    fp32: float
    times_s: tuple[float, ...]
    seeds: int
    images: int
    calib_images: int
    series: tuple[AccuracySeries, ...]
    # how the run read the chip (reported so results can be compared with other conventions)
    read_noise: str = "per-read"
    gdc_readout: str = "real"
    adc_range: str = "fixed"
    adc_stats: tuple[AdcStats, ...] = ()

    def to_dict(self) -> dict:
        return {"fp32": self.fp32, "times_s": list(self.times_s), "seeds": self.seeds,
                "images": self.images, "calib_images": self.calib_images,
                "read_noise": self.read_noise, "gdc_readout": self.gdc_readout,
                "adc_range": self.adc_range,
                "series": [{"mapping": s.mapping, "compensation": s.compensation,
                            "mean": list(s.mean), "std": list(s.std),
                            "per_seed": [list(r) for r in s.per_seed]} for s in self.series],
                "adc_stats": [a.to_dict() for a in self.adc_stats]}

    @classmethod
    def from_dict(cls, d: dict) -> "AccuracyResult":
        """The inverse of :meth:`to_dict` (e.g. to re-render a saved report). Reports written
        before the read-noise options existed read as the frozen, ideal-readout convention they
        used."""
        old = "read_noise" not in d
        return cls(d["fp32"], tuple(d["times_s"]), d["seeds"], d["images"], d["calib_images"],
                   tuple(AccuracySeries(s["mapping"], s["compensation"], tuple(s["mean"]),
                                        tuple(s["std"]), tuple(tuple(r) for r in s["per_seed"]))
                         for s in d["series"]),
                   d.get("read_noise", "frozen" if old else "per-read"),
                   d.get("gdc_readout", "ideal" if old else "real"),
                   d.get("adc_range", "fixed"),
                   tuple(AdcStats.from_dict(a) for a in d.get("adc_stats", ())))

    @classmethod
    def combine(cls, parts: Sequence["AccuracyResult"]) -> "AccuracyResult":
        """One result of runs over disjoint chips of the same evaluation (``evaluate_accuracy``
        with ``first_chip`` 0, 1, ...), chips in the order given: the numbers one run over all
        of them gives. Parts of different evaluations (FP32, times, images, conventions,
        mappings and compensations) are refused."""
        if not parts:
            raise ValueError("AccuracyResult.combine: no results given")
        first = parts[0]

        def settings(r: "AccuracyResult") -> tuple:
            return (r.fp32, r.times_s, r.images, r.calib_images, r.read_noise, r.gdc_readout,
                    r.adc_range, tuple((s.mapping, s.compensation) for s in r.series),
                    tuple((a.mapping, a.t_s, tuple(x[0] for x in a.layers))
                          for a in r.adc_stats))
        for r in parts[1:]:
            if settings(r) != settings(first):
                raise ValueError("AccuracyResult.combine: the results are of different "
                                 "evaluations (FP32, times, images, conventions, mappings, "
                                 "compensations or analog layers differ)")
        series = [AccuracySeries.of_rows(s.mapping, s.compensation,
                                         [row for r in parts for row in r.series[j].per_seed],
                                         len(first.times_s))
                  for j, s in enumerate(first.series)]
        stats = tuple(
            AdcStats(a.mapping, a.t_s, tuple(
                (layer[0],) + tuple(sum(r.adc_stats[j].layers[i][f] for r in parts)
                                    for f in (1, 2, 3))
                for i, layer in enumerate(a.layers)))
            for j, a in enumerate(first.adc_stats))
        return dataclasses.replace(first, seeds=sum(r.seeds for r in parts),
                                   series=tuple(series), adc_stats=stats)


def _count_correct(logits_fn, data: Dataset, batch_size: int, bar: Progress | None, note: str,
                   in_flight: int = 1) -> int:
    """Top-1 hits over ``data`` in batches of ``batch_size``: ``logits_fn`` gives the logits of a
    list of up to ``in_flight`` batches at once."""
    correct = 0
    batches = data.batches(batch_size)
    while group := list(itertools.islice(batches, in_flight)):
        for logits, (_, yb) in zip(logits_fn([xb for xb, _ in group]), group):
            correct += int(np.count_nonzero(np.argmax(logits, axis=1) == yb))
            if bar is not None:
                bar.advance(len(yb), note)
    return correct


def fp32_accuracy(net: Network, params: dict, data: Dataset, batch_size: int = DEFAULT_BATCH_SIZE,
                  bar: Progress | None = None) -> float:
    ws = Workspace()
    return _count_correct(lambda xbs: [forward(net, params, xb, workspace=ws) for xb in xbs], data,
                          batch_size, bar, "fp32") / max(len(data), 1)


def chip_streams(seed: int, policy: str, chip_index: int) -> Streams:
    """The stream tree of programmed chip ``chip_index`` of mapping ``policy`` in a run seeded
    ``seed``."""
    return Streams(seed).child("mapping", policy, "chip", chip_index)


def calibration_subset(calib: Dataset, n: int, seed: int) -> Dataset:
    """``n`` training images drawn without replacement, in random order: the training files are
    class-sorted, and AdaBS normalizes each calibration batch by its own statistics, so a batch
    must mix the classes as a training batch does (in file order a batch of 128 held one or two
    classes, and the re-estimated statistics cost 1.3-2.3 points even on an ideal chip)."""
    n = min(n, len(calib))
    rng = Streams(seed)("calibration-subset")
    return calib.subset(rng.permutation(len(calib))[:n])


def test_pass(state: ChipState, test: Dataset, streams: Streams, compensation: str, *,
              bn: BatchNormStats | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
              workspace: Workspace | None = None, bar: Progress | None = None, note: str = "",
              adc_counts: dict | None = None) -> float:
    """Accuracy of one pass over ``test`` on the chip at one time: every batch a read of its own
    (stream ``read/test/<compensation>``), ADC noise from ``adc-noise/test/<compensation>``."""
    read_rng = streams("read", "test", compensation)
    noise_rng = streams("adc-noise", "test", compensation)
    gdc = compensation != "none"
    ws = workspace if workspace is not None else Workspace()
    correct = _count_correct(
        lambda xbs: analog_forward_batches([state.read(read_rng) for _ in xbs], xbs, gdc=gdc, bn=bn,
                                           workspace=ws, noise_rng=noise_rng,
                                           adc_counts=adc_counts),
        test, batch_size, bar, note, BATCHES_IN_FLIGHT)
    return correct / max(len(test), 1)


def evaluate_accuracy(mappings: Sequence[Mapping], params: dict, test: Dataset, *,
                      calib: Dataset | None = None, calib_images: int = 1000,
                      times_s=DEFAULT_TIMES_S, seeds: int = 5, compensations=COMPENSATIONS,
                      seed: int = 0, batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = True,
                      precision: str | None = None,
                      on_progress: Callable[["AccuracyResult"], None] | None = None,
                      calib_augment: bool | None = None, first_chip: int = 0) -> AccuracyResult:
    """Monte Carlo accuracy vs. time: FP32 once, then for each mapping, each programmed chip
    (seed), each time after programming and each compensation, one pass over ``test`` (every batch
    a read of its own). AdaBS needs ``calib`` (training images; ``calib_images`` of them, also the
    source of the ADC-range calibration images). ``on_progress`` receives the partial result after
    every (chip, time) (e.g. to write a report as the run goes): ``seeds`` counts the finished
    chips, each time's mean/std covers the chips that reached it. ``calib_augment``: AdaBS
    augments its calibration batches as training did (None: for CIFAR-10, whose training
    augments; see :func:`adabs`). ``first_chip``: the chips are ``first_chip`` ...
    ``first_chip + seeds - 1`` (each chip's draws depend on its index alone), so runs over
    disjoint chips combine (:meth:`AccuracyResult.combine`) into the numbers of one run over all
    of them, bit for bit: a long table can be computed, saved and resumed chip by chip."""
    if first_chip < 0:
        raise ValueError(f"evaluate_accuracy: first_chip must be >= 0, got {first_chip}")
    times_s = tuple(float(t) for t in times_s)
    compensations = tuple(compensations)
    unknown = [c for c in compensations if c not in COMPENSATIONS]
    if unknown:
        raise ValueError(f"unknown compensation {unknown[0]!r} (expected {', '.join(COMPENSATIONS)})")
    if not mappings:
        raise ValueError("evaluate_accuracy: no mappings given")
    net = mappings[0].network
    calib_set = None
    if calib is not None and calib_images > 0:
        calib_set = calibration_subset(calib, calib_images, seed)
    if "gdc+adabs" in compensations and calib_set is None:
        raise ValueError("evaluate_accuracy: gdc+adabs needs calibration images (calib)")
    n_calib = len(calib_set) if calib_set is not None and "gdc+adabs" in compensations else 0
    augment = (calib_augment if calib_augment is not None
               else calib_set is not None and calib_set.name == "cifar10")
    passes = 1 + len(mappings) * seeds * len(times_s) * len(compensations)
    total = passes * len(test) + len(mappings) * seeds * len(times_s) * n_calib
    range_images = None
    conv0 = Converters.from_chip(mappings[0], precision)
    if calib_set is not None and conv0.adc_range == "calibrated":
        range_images = calib_set.normalized(slice(0, conv0.range_images))
    # per (mapping, compensation): [seed][time]
    acc: dict[tuple[int, str], list[list[float]]] = {}
    counts: dict[tuple[int, int], dict[str, np.ndarray]] = {}
    with Progress(total, "accuracy", enabled=progress) as bar:
        fp32 = fp32_accuracy(net, params, test, batch_size, bar)

        def result(done_seeds: int) -> AccuracyResult:
            """Mean/std per time over the chips that have reached it (rows may be partial while
            a chip is still running)."""
            series = [AccuracySeries.of_rows(mp.chip.mapping.policy, comp,
                                             [[float(v) for v in r] for r in acc.get((m, comp), [])],
                                             len(times_s))
                      for m, mp in enumerate(mappings) for comp in compensations]
            stats = tuple(
                AdcStats(mappings[m].chip.mapping.policy, times_s[i], tuple(
                    (name, int(c[2]), int(c[0]), int(c[1])) for name, c in per_layer.items()))
                for (m, i), per_layer in sorted(counts.items()))
            return AccuracyResult(fp32, times_s, done_seeds, len(test), n_calib, tuple(series),
                                  mappings[0].chip.chip.device.read_noise, conv0.gdc_readout,
                                  conv0.adc_range, stats)

        ws = Workspace()
        for done in range(seeds):
            k = first_chip + done
            for m, mp in enumerate(mappings):
                policy = mp.chip.mapping.policy
                streams = chip_streams(seed, policy, k)
                chip = program_chip(mp, params, streams, precision=precision,
                                    calibration_images=range_images, batch_size=batch_size)
                per_comp = {c: [] for c in compensations}
                for comp in compensations:
                    acc.setdefault((m, comp), []).append(per_comp[comp])
                for i, t in enumerate(times_s):
                    ts = streams.child("time", i)
                    state = chip.at(t, ts)
                    layer_counts = counts.setdefault((m, i), {})
                    pass_counts: dict[str, np.ndarray] = {}
                    for comp in compensations:
                        bn = None
                        if comp == "gdc+adabs":
                            bn = adabs(state, calib_set, read_rng=ts("read", "adabs"),
                                       noise_rng=ts("adc-noise", "adabs"), gdc=True,
                                       batch_size=batch_size,
                                       augment_rng=ts("augment", "adabs") if augment else None)
                            bar.advance(n_calib, f"{policy} chip {k} at {format_time_s(t)} adabs")
                        note = f"{policy} chip {k} at {format_time_s(t)} {comp}"
                        per_comp[comp].append(test_pass(state, test, ts, comp, bn=bn,
                                                        batch_size=batch_size, workspace=ws,
                                                        bar=bar, note=note,
                                                        adc_counts=pass_counts))
                    for name, c in pass_counts.items():
                        layer_counts.setdefault(name, np.zeros(3, np.int64))[:] += c
                    if on_progress is not None:
                        on_progress(result(done))
            if on_progress is not None:
                on_progress(result(done + 1))
    return result(seeds)
