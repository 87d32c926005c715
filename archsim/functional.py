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
  pass it is judged on.
- :func:`analog_forward` runs :func:`archsim.network.forward` on one read with a ``matmul`` hook
  (DAC on each row block's input slice, one GEMM per row block, ADC with its output noise +
  digital accumulation of the row-block partial sums, GDC) and a ``batchnorm`` hook (the
  per-column affine applied digitally after the ADC). Digital layers stay exact FP32.
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
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from . import kernels
from .datasets import Dataset
from .errors import ConfigError
from .mapping import LayerMapping, Mapping, copy_key
from .network import Layer, MatrixLayer, Network, Workspace, batchnorm_affine, forward, matrix_input
from .pcm import PCMModel, targets
from .progress import Progress, format_time_s
from .rng import Streams

DEFAULT_TIMES_S = (25.0, 3600.0, 86400.0, 2592000.0, 31536000.0)
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

    @property
    def devices(self) -> int:
        return self.g_prog_pos.shape[0]


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
                polarities.append((g_d.astype(np.float32), sigma.astype(np.float32)))
            out[name] = LayerDevices(pl, polarities[0], polarities[1],
                                     np.float32(1.0 / (pl.devices * g_max)))
        return out

    def state_at(self, t_s: float, streams: Streams) -> "ChipState":
        """The drifted chip without GDC factors (frozen mode: with its one read drawn)."""
        devices = self.devices_at(t_s)
        frozen = None
        if self.read_noise == "frozen":
            rng = streams("read", "frozen")
            frozen = {n: d.read(self.model, rng) for n, d in devices.items()}
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

    def read(self, model: PCMModel, rng: np.random.Generator | None) -> np.ndarray:
        """Normalized weights (sum G+ - sum G-) / (D g_max) of one read, float32 (K, N);
        ``rng=None``: the drifted conductances without read noise."""
        sums = []
        for g_d, sigma in (self.pos, self.neg):
            g = g_d if rng is None else model.sample_read(g_d, sigma, rng)
            sums.append(g.sum(axis=0, dtype=np.float32) if g.shape[0] > 1 else g[0])
        wn = sums[0] - sums[1]
        wn *= self.per_us
        return wn


@dataclass(frozen=True)
class LayerRead:
    row_bounds: np.ndarray          # (B, 2)
    wn: np.ndarray                  # (K, N) float32 normalized weights of this read
    colscale: np.ndarray            # (B, N) float32 D g_max / scale: normalized -> weight units
    alpha_cols: np.ndarray          # (B, N) float32 GDC factor of each column's array
    alpha: np.ndarray               # (B, C) GDC factor per array
    adc_bound: float | None


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
    frozen: dict | None = None      # name -> (K, N) normalized weights of the frozen read

    def read(self, rng: np.random.Generator | None) -> ChipRead:
        """One read: every device with a fresh read-noise sample from ``rng`` (per-read mode), or
        the frozen read. ``rng`` may be None only for a chip without read noise."""
        model = self.chip.model
        if self.frozen is None and rng is None and not (model.ideal or model.read_noise_scale == 0):
            raise ValueError("ChipState.read: a noisy chip needs a generator for its read noise")
        g_max = model.g_max_us
        layers = {}
        for name, dev in self.devices.items():
            pl = dev.programmed
            wn = self.frozen[name] if self.frozen is not None else dev.read(model, rng)
            colscale = (pl.unit * (pl.devices * g_max)).astype(np.float32)
            alpha = self.alphas.get(name)
            if alpha is None:
                alpha = np.ones((len(pl.row_bounds), len(pl.col_bounds)))
            layers[name] = LayerRead(pl.row_bounds, wn, colscale,
                                     _expand_cols(alpha, pl.col_bounds).astype(np.float32), alpha,
                                     pl.adc_bound)
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
                  mask: np.ndarray | None = None, copy: int = 0) -> ProgrammedLayer:
    """Targets, programming noise and drift exponents of the devices of copy ``copy`` of one analog
    layer (no readout yet). ``mask`` (K, N): the devices that hold a weight (the diagonal blocks of
    a grouped conv); the others stay in the RESET state (0 conductance, no programming noise, no
    read noise). Columns of a row block that no array covers get unit 0 (no output)."""
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
                           conv.adc_bound, copy=copy, array_index=array_index)


def program_chip(mapping: Mapping, params: dict, streams: "Streams | np.random.Generator | int",
                 *, precision: str | None = None, model: PCMModel | None = None,
                 calibration_images: np.ndarray | None = None, batch_size: int = 128
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
            layers[lm.name] = program_layer(lm, w64, model, conv, per_column, d, rng, mask)
            for c in range(1, lm.copies):       # each copy on arrays of its own
                layers[copy_key(lm.name, c)] = program_layer(
                    lm, w64, model, conv, per_column, d,
                    streams("program", "layer", li, "copy", c), mask, copy=c)
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
                  observe: Callable[[np.ndarray], None] | None = None) -> np.ndarray:
    """(P, K) @ W on the arrays: DAC per row block, one GEMM per row block, ADC, digital sum.
    ``in_place``: the DAC codes overwrite ``cols`` (a scratch im2col buffer). ``affine``: a
    per-column (scale, offset) applied in the same digital pass (the folded BatchNorm).
    ``dac_absmax``: ``cols`` already holds the DAC codes (:func:`kernels.im2col_dac_into`), with
    these per-row-block abs-maxes. ``counts`` (3,) int64 accumulates the conversions that clipped,
    that read zero, and all conversions. ``observe(y)`` receives the analog outputs (B, P, N) in normalized units
    before the ADC."""
    state = layer_read
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
    in_scale = kernels.dac_code_scale(conv.dac_bits)
    if observe is not None:
        observe(y * np.float32(in_scale))
    noise = None
    if conv.adc_noise > 0:
        if noise_rng is None:
            raise ValueError("analog_matmul: ADC output noise needs a generator (noise_rng)")
        noise = workspace.get("adc.noise", (nb, p, n))
        noise_rng.standard_normal(out=noise, dtype=np.float32)
    colscale = state.colscale * state.alpha_cols if gdc else state.colscale
    offset = None
    if affine is not None:
        colscale = colscale * affine[0]
        offset = affine[1]
    out = np.empty((p, n), np.float32)
    row_counts = workspace.get("adc.counts", (p, 2), np.int64)
    kernels.adc_accumulate_into(y, absmax, colscale, state.adc_bound, conv.adc_bits, out, noise,
                                conv.adc_noise, in_scale, offset, row_counts)
    if counts is not None:
        counts[:2] += row_counts.sum(axis=0)
        counts[2] += p * n * nb
    return out


@dataclass
class BatchNormStats:
    """Per BatchNorm layer: the (scale, offset) of the digital affine periphery."""
    affine: dict = field(default_factory=dict)

    @classmethod
    def from_params(cls, net: Network, params: dict) -> "BatchNormStats":
        return cls({l.name: batchnorm_affine(params, l.name, l.eps)
                    for l in net.batchnorm_layers()})


def analog_forward(read: ChipRead, x: np.ndarray, *, gdc: bool = True,
                   bn: BatchNormStats | None = None, workspace: Workspace | None = None,
                   noise_rng: np.random.Generator | None = None,
                   batchnorm: Callable | None = None,
                   adc_counts: dict[str, np.ndarray] | None = None,
                   observe: Callable[[str, np.ndarray], None] | None = None) -> np.ndarray:
    """Logits of batch ``x`` on one read of the chip: analog layers through the arrays (with GDC
    when ``gdc``, ADC output noise from ``noise_rng``), digital layers in FP32, BatchNorm as the
    affine ``bn`` (default: the eval stats). ``adc_counts``: per analog layer, a (3,) int64 array
    that accumulates the conversions that clipped, that read zero, and all of them. ``observe(layer, y)`` sees every
    analog layer's outputs before the ADC (normalized units)."""
    chip = read.chip
    net = chip.mapping.network
    ws = workspace if workspace is not None else Workspace()
    bn = bn or BatchNormStats.from_params(net, chip.params)
    # an analog conv whose only consumer is a BatchNorm gets the BN affine in its ADC pass (the
    # per-column periphery of the hardware); that BN is then the identity
    fused = {} if batchnorm is not None else _fusable_batchnorms(net, read.layers)
    replicated = {lm.name: lm for lm in chip.mapping.analog_layers if lm.copies > 1}
    dac_absmax: dict[str, np.ndarray] = {}

    def patches(layer: MatrixLayer, a: np.ndarray, workspace: Workspace) -> np.ndarray:
        """Analog conv inputs: im2col and the DAC in one pass (codes + abs-maxes), where the
        numba patch kernel applies (square kernel, one stride and padding, no dilation)."""
        lr = read.layers.get(layer.name)
        square = layer.square
        if lr is None or square is None:
            return matrix_input(layer, a, workspace)
        kernel, stride, padding = square
        ho, wo, _ = net.shape(layer.name)
        rows = a.shape[0] * ho * wo
        out = workspace.get("im2col", (rows, a.shape[3] * kernel * kernel))
        absmax = workspace.get("dac.absmax", (rows, len(lr.row_bounds)))
        kernels.im2col_dac_into(np.asarray(a, np.float32), kernel, stride, padding, ho, wo,
                                lr.row_bounds, chip.converters.dac_bits, out, absmax)
        dac_absmax[layer.name] = absmax
        return out

    def matmul(layer: MatrixLayer, cols: np.ndarray) -> np.ndarray:
        lr = read.layers.get(layer.name)
        if lr is None:
            return layer.multiply(cols, chip.digital[layer.name])
        bn_name = fused.get(layer.name)
        counts = None
        if adc_counts is not None:
            counts = adc_counts.setdefault(layer.name, np.zeros(3, np.int64))

        def run(layer_read: LayerRead, x: np.ndarray, absmax: np.ndarray | None,
                in_place: bool) -> np.ndarray:
            return analog_matmul(layer_read, x, chip.converters, gdc=gdc, workspace=ws,
                                 noise_rng=noise_rng, in_place=in_place,
                                 affine=None if bn_name is None else bn.affine[bn_name],
                                 dac_absmax=absmax, counts=counts,
                                 observe=None if observe is None else
                                 (lambda y, name=layer.name: observe(name, y)))

        absmax = dac_absmax.pop(layer.name, None)
        lm = replicated.get(layer.name)
        if lm is None:
            # conv patches are fresh or scratch buffers of the workspace: the DAC may overwrite them
            return run(lr, cols, absmax, layer.input_is_copy)
        reads = [read.layers[copy_key(lm.name, c)] for c in range(lm.copies)]
        return on_copies(reads, lm.copy_cols, lm.width, cols, absmax, run)

    fused_bns = set(fused.values())

    def affine(layer: Layer, a: np.ndarray) -> np.ndarray:
        if layer.name in fused_bns:
            return a
        scale, offset = bn.affine[layer.name]
        return a * scale + offset

    return forward(net, chip.params, x, matmul=matmul, batchnorm=batchnorm or affine, workspace=ws,
                   matrix_input_hook=patches)


def on_copies(reads: Sequence[LayerRead], copy_cols: Sequence[tuple[int, int]], width: int,
              cols: np.ndarray, dac_absmax: np.ndarray | None,
              run: Callable[[LayerRead, np.ndarray, np.ndarray | None, bool], np.ndarray]
              ) -> np.ndarray:
    """A replicated layer's MVMs, each output pixel on its copy: the rows of ``cols`` (one per
    output pixel, in (image, output row, output column) order, ``width`` columns per output row)
    are split by output column, copy c taking columns ``copy_cols[c]`` of every row; each copy's
    rows run as ``run(its read, its rows, their DAC abs-maxes or None, in_place=True)`` (the rows
    are a fresh gather) and its outputs are scattered back into pixel order."""
    p, k = cols.shape
    lines = p // width
    x = cols.reshape(lines, width, k)
    am = None if dac_absmax is None else dac_absmax.reshape(lines, width, -1)
    out = None
    for layer_read, (w0, w1) in zip(reads, copy_cols):
        xc = np.ascontiguousarray(x[:, w0:w1]).reshape(-1, k)
        ac = None if am is None else np.ascontiguousarray(am[:, w0:w1]).reshape(-1, am.shape[2])
        y = run(layer_read, xc, ac, True)
        if out is None:
            out = np.empty((lines, width, y.shape[1]), y.dtype)
        out[:, w0:w1] = y.reshape(lines, w1 - w0, -1)
    return out.reshape(p, -1)


def _fusable_batchnorms(net: Network, analog: dict) -> dict[str, str]:
    """analog layer -> the BatchNorm that is its only consumer (no bias in between)."""
    users = net.consumers()
    out = {}
    for layer in net.batchnorm_layers():
        if len(layer.inputs) == 1:
            src = layer.inputs[0]
            if src in analog and users[src] == [layer.name] and not net.layer(src).bias:
                out[src] = layer.name
    return out


def adabs(state: ChipState, calib: Dataset, *, read_rng: np.random.Generator | None,
          noise_rng: np.random.Generator | None, gdc: bool = True, batch_size: int = 128
          ) -> BatchNormStats:
    """AdaBS: run the calibration images through the drifted chip (each batch a read of its own
    from ``read_rng``; ADC noise from ``noise_rng``) with train-mode BatchNorm (each batch
    normalized by its own statistics), and re-estimate every BatchNorm's running mean and variance
    as the average over batches (PyTorch momentum=None, unbiased variance); return the refreshed
    affine periphery."""
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
    for xb, _ in calib.batches(batch_size):
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


def chip_streams(seed: int, policy: str, chip_index: int) -> Streams:
    """The stream tree of programmed chip ``chip_index`` of mapping ``policy`` in a run seeded
    ``seed``."""
    return Streams(seed).child("mapping", policy, "chip", chip_index)


def calibration_subset(calib: Dataset, n: int, seed: int) -> Dataset:
    """``n`` training images drawn without replacement (the training files are class-sorted)."""
    n = min(n, len(calib))
    rng = Streams(seed)("calibration-subset")
    return calib.subset(np.sort(rng.permutation(len(calib))[:n]))


def test_pass(state: ChipState, test: Dataset, streams: Streams, compensation: str, *,
              bn: BatchNormStats | None = None, batch_size: int = 128,
              workspace: Workspace | None = None, bar: Progress | None = None, note: str = "",
              adc_counts: dict | None = None) -> float:
    """Accuracy of one pass over ``test`` on the chip at one time: every batch a read of its own
    (stream ``read/test/<compensation>``), ADC noise from ``adc-noise/test/<compensation>``."""
    read_rng = streams("read", "test", compensation)
    noise_rng = streams("adc-noise", "test", compensation)
    gdc = compensation != "none"
    ws = workspace if workspace is not None else Workspace()
    correct = _count_correct(
        lambda xb: analog_forward(state.read(read_rng), xb, gdc=gdc, bn=bn, workspace=ws,
                                  noise_rng=noise_rng, adc_counts=adc_counts),
        test, batch_size, bar, note)
    return correct / max(len(test), 1)


def evaluate_accuracy(mappings: Sequence[Mapping], params: dict, test: Dataset, *,
                      calib: Dataset | None = None, calib_images: int = 1000,
                      times_s=DEFAULT_TIMES_S, seeds: int = 5, compensations=COMPENSATIONS,
                      seed: int = 0, batch_size: int = 128, progress: bool = True,
                      precision: str | None = None,
                      on_progress: Callable[["AccuracyResult"], None] | None = None
                      ) -> AccuracyResult:
    """Monte Carlo accuracy vs. time: FP32 once, then for each mapping, each programmed chip
    (seed), each time after programming and each compensation, one pass over ``test`` (every batch
    a read of its own). AdaBS needs ``calib`` (training images; ``calib_images`` of them, also the
    source of the ADC-range calibration images). ``on_progress`` receives the partial result after
    every (chip, time) (e.g. to write a report as the run goes): ``seeds`` counts the finished
    chips, each time's mean/std covers the chips that reached it."""
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
            stats = tuple(
                AdcStats(mappings[m].chip.mapping.policy, times_s[i], tuple(
                    (name, int(c[2]), int(c[0]), int(c[1])) for name, c in per_layer.items()))
                for (m, i), per_layer in sorted(counts.items()))
            return AccuracyResult(fp32, times_s, done_seeds, len(test), n_calib, tuple(series),
                                  mappings[0].chip.chip.device.read_noise, conv0.gdc_readout,
                                  conv0.adc_range, stats)

        ws = Workspace()
        for k in range(seeds):
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
                                       batch_size=batch_size)
                            bar.advance(n_calib, f"{policy} chip {k} at {format_time_s(t)} adabs")
                        note = f"{policy} chip {k} at {format_time_s(t)} {comp}"
                        per_comp[comp].append(test_pass(state, test, ts, comp, bn=bn,
                                                        batch_size=batch_size, workspace=ws,
                                                        bar=bar, note=note,
                                                        adc_counts=pass_counts))
                    for name, c in pass_counts.items():
                        layer_counts.setdefault(name, np.zeros(3, np.int64))[:] += c
                    if on_progress is not None:
                        on_progress(result(k))
            if on_progress is not None:
                on_progress(result(k + 1))
    return result(seeds)
