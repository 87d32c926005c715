"""Training on the network IR: backward passes, SGD, and hardware-aware noise injection.

A training step runs :func:`forward_train` (train-mode BatchNorm on batch statistics, every layer
recording what its backward needs on a tape), softmax cross-entropy, :func:`backward` (reverse
graph order; gradients of activations used twice, as in residual blocks, are summed), then SGD with
momentum and weight decay (PyTorch semantics: ``buf = m*buf + g + wd*p; p -= lr*buf``, all
trainable parameters decayed).

Noise injection (DESIGN.md section 5): each forward pass uses ``W + eta * max|W| * N(0,1)`` for the
conv/linear weights of every layer, redrawn every batch; the gradient found with the noisy weights
is applied to the clean ones, and after each step the weights are clipped to
``+-alpha * std(W)`` per layer. A network trained that way tolerates the PCM programming and read
noise of :mod:`archsim.functional` better.

Convolutions are GEMMs on im2col patches (the same (c, i, j) order as :mod:`archsim.network`); the
input gradient goes back through :func:`archsim.kernels.col2im_into`. Everything works in float32
for training and in float64 for the gradient checks of the tests. All randomness (initial weights,
shuffling, augmentation, weight noise) comes from one ``numpy.random.Generator(config.seed)``.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .datasets import Dataset
from .errors import ArchsimError
from .kernels import col2im_into, im2col_into
from .network import INPUT, Layer, Network, Workspace, init_params, predict, shortcut_a
from .progress import Progress

BN_MOMENTUM = 0.1            # PyTorch's default: running = 0.9 * running + 0.1 * batch
SCHEDULES = ("cosine", "step", "constant")
STEP_MILESTONES = (0.5, 0.75)  # step schedule: lr / 10 at half and three quarters of the epochs
# Below this many MACs per training step (forward), BLAS runs single-threaded: on small networks
# (the digits CNN: 0.45 M MACs per image) thread hand-offs cost more than the GEMMs (measured on 2
# busy cores: 5 digits epochs 19 s with OpenBLAS threads, 2.8 s without).
SINGLE_THREAD_MACS_PER_STEP = 200_000_000
CROP_PADDING = 4             # CIFAR augmentation: random 32x32 crop of the 4-pixel zero-padded image


class TrainingError(ArchsimError):
    """A training option a user gave is invalid."""


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64
    schedule: str = "cosine"        # cosine (per step, to 0) | step (/10 at 50% and 75%) | constant
    noise_eta: float = 0.038        # 0 disables noise injection
    clip_alpha: float | None = 2.5  # None or 0 disables weight clipping
    augment: bool | None = None     # None: random crop + flip for cifar10, nothing otherwise
    seed: int = 0
    max_images: int | None = None   # train on a random subset of this many images

    def __post_init__(self):
        checks = [
            (self.epochs >= 1, "epochs", "must be at least 1"),
            (self.lr > 0, "lr", "must be positive"),
            (0 <= self.momentum < 1, "momentum", "must be in [0, 1)"),
            (self.weight_decay >= 0, "weight_decay", "must be >= 0"),
            (self.batch_size >= 2, "batch_size", "must be at least 2 (BatchNorm needs a batch)"),
            (self.schedule in SCHEDULES, "schedule", f"must be one of {', '.join(SCHEDULES)}"),
            (self.noise_eta >= 0, "noise_eta", "must be >= 0"),
            (self.clip_alpha is None or self.clip_alpha >= 0, "clip_alpha", "must be >= 0 or None"),
            (self.max_images is None or self.max_images >= 2, "max_images", "must be at least 2"),
        ]
        for ok, name, msg in checks:
            if not ok:
                raise TrainingError(f"training option {name}={getattr(self, name)!r}: {msg}")


@dataclass(frozen=True)
class EpochStats:
    epoch: int              # 1-based
    loss: float             # mean cross-entropy over the epoch's batches (noisy forward passes)
    train_accuracy: float   # fraction right in those forward passes
    seconds: float
    lr: float               # learning rate of the epoch's first step


# ------------------------------------------------------------------------------------------
# Forward (train mode) and backward
# ------------------------------------------------------------------------------------------

@dataclass
class Tape:
    """What :func:`forward_train` recorded for :func:`backward`."""
    saved: dict[str, tuple] = field(default_factory=dict)
    # batch statistics of every BatchNorm: (mean, unbiased variance), for the running-stat update
    batch_stats: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    input_shape: tuple[int, ...] = ()


def _im2col(x: np.ndarray, layer: Layer, out_hw: tuple[int, int], workspace: Workspace | None
            ) -> np.ndarray:
    k, s, p = layer.kernel, layer.stride, layer.padding
    ho, wo = out_hw
    n, _, _, c = x.shape
    shape = (n * ho * wo, c * k * k)
    if x.dtype == np.float32:
        out = (workspace.get("cols/" + layer.name, shape) if workspace is not None
               else np.empty(shape, np.float32))
        return im2col_into(x, k, s, p, ho, wo, out)
    # float64 (gradient checks): plain numpy, same (c, i, j) column order
    xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    win = sliding_window_view(xp, (k, k), axis=(1, 2))[:, ::s, ::s][:, :ho, :wo]
    return np.ascontiguousarray(win).reshape(shape)


def forward_train(net: Network, params: Mapping[str, np.ndarray], x: np.ndarray, *,
                  train: bool = True, weights: Mapping[str, np.ndarray] | None = None,
                  workspace: Workspace | None = None) -> tuple[np.ndarray, Tape]:
    """Logits of a batch plus the tape for :func:`backward`.

    ``train``: BatchNorm normalizes with batch statistics (else the running ones, as in
    :func:`archsim.network.forward`). ``weights`` replaces conv/linear weights by name (the noisy
    copies of noise injection). The dtype of ``x`` (float32 or float64) is kept throughout.
    """
    dtype = np.float64 if np.asarray(x).dtype == np.float64 else np.float32
    x = np.asarray(x, dtype)
    tape = Tape(input_shape=x.shape)
    values: dict[str, np.ndarray] = {INPUT: x}
    refcount = {name: len(users) for name, users in net.consumers().items()}
    for layer in net.layers:
        a = values[layer.inputs[0]]
        name = layer.name
        if layer.is_matrix:
            w = (weights or {}).get(f"{name}.weight", params[f"{name}.weight"])
            w2 = np.asarray(w, dtype).reshape(w.shape[0], -1)            # (O, K)
            if layer.kind == "conv2d":
                ho, wo, co = net.shape(name)
                cols = _im2col(a, layer, (ho, wo), workspace)
                shape = (cols.shape[0], co)
                buf = (workspace.get("out/" + name, shape, dtype) if workspace is not None
                       else np.empty(shape, dtype))     # reused: no page faults per batch
                out = np.matmul(cols, w2.T, out=buf).reshape(a.shape[0], ho, wo, co)
            else:
                cols = a.reshape(a.shape[0], -1)
                out = cols @ w2.T
            if layer.bias:
                out = out + np.asarray(params[f"{name}.bias"], dtype)
            tape.saved[name] = (cols, w2, a.shape)
        elif layer.kind == "batchnorm":
            gamma = np.asarray(params[f"{name}.weight"], dtype)
            beta = np.asarray(params[f"{name}.bias"], dtype)
            axes = tuple(range(a.ndim - 1))
            if train:
                count = a.size // a.shape[-1]
                mean = a.mean(axis=axes)
                var = a.var(axis=axes, mean=mean.reshape((1,) * len(axes) + (-1,)))
                tape.batch_stats[name] = (mean, var * count / max(count - 1, 1))
            else:
                mean = np.asarray(params[f"{name}.running_mean"], dtype)
                var = np.asarray(params[f"{name}.running_var"], dtype)
            inv_std = (1.0 / np.sqrt(var + layer.eps)).astype(dtype)
            xhat = (a - mean) * inv_std
            out = xhat * gamma + beta
            tape.saved[name] = (xhat, inv_std, gamma, train)
        elif layer.kind == "relu":
            out = np.maximum(a, 0)
            tape.saved[name] = (out > 0,)
        elif layer.kind == "maxpool":
            k, s = layer.kernel, layer.stride
            ho, wo, _ = net.shape(name)
            win = sliding_window_view(a, (k, k), axis=(1, 2))[:, ::s, ::s][:, :ho, :wo]
            flat = win.reshape(win.shape[:4] + (k * k,))
            arg = flat.argmax(axis=-1)
            out = np.take_along_axis(flat, arg[..., None], axis=-1)[..., 0]
            tape.saved[name] = (arg, a.shape)
        elif layer.kind == "avgpool":
            k, s = layer.kernel, layer.stride
            win = sliding_window_view(a, (k, k), axis=(1, 2))[:, ::s, ::s]
            out = win.mean(axis=(-2, -1), dtype=dtype)   # network.pool would round to float32
            tape.saved[name] = (a.shape,)
        elif layer.kind == "globalavgpool":
            out = a.mean(axis=(1, 2), dtype=dtype)
            tape.saved[name] = (a.shape,)
        elif layer.kind == "flatten":
            out = a.transpose(0, 3, 1, 2).reshape(a.shape[0], -1) if a.ndim == 4 else a
            tape.saved[name] = (a.shape,)
        elif layer.kind == "shortcut_a":
            out = shortcut_a(a, layer.out_channels)
            tape.saved[name] = (a.shape,)
        elif layer.kind == "add":
            out = a + values[layer.inputs[1]]
        else:  # pragma: no cover - kinds are checked at construction
            raise AssertionError(layer.kind)
        values[name] = out.astype(dtype, copy=False)
        for src in layer.inputs:
            refcount[src] -= 1
            if refcount[src] == 0 and src != INPUT:
                del values[src]
    return values[net.output], tape


def backward(net: Network, tape: Tape, dout: np.ndarray, *, need_input_grad: bool = False,
             workspace: Workspace | None = None) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Gradients of a scalar loss given ``dout`` = dLoss/dLogits: ({param name: grad}, dLoss/dx).

    Parameter gradients cover the trainable parameters (conv/linear weights and biases, BatchNorm
    weight and bias); with a train-mode tape BatchNorm differentiates through the batch statistics.
    """
    workspace = workspace if workspace is not None else Workspace()
    shapes = net.param_shapes()
    grads: dict[str, np.ndarray] = {}
    dvals: dict[str, np.ndarray] = {net.output: dout}

    def accumulate(src: str, g: np.ndarray) -> None:
        if src == INPUT and not need_input_grad:
            return
        if src in dvals:
            dvals[src] = dvals[src] + g
        else:
            dvals[src] = g

    for layer in reversed(net.layers):
        name = layer.name
        g = dvals.pop(name, None)
        if g is None:           # the layer does not influence the loss
            continue
        saved = tape.saved.get(name, ())
        src = layer.inputs[0]
        if layer.is_matrix:
            cols, w2, in_shape = saved
            g2 = g.reshape(-1, w2.shape[0])                               # (P, O)
            # (cols.T @ g2).T, not g2.T @ cols: OpenBLAS is several times slower on the latter
            grads[f"{name}.weight"] = np.ascontiguousarray((cols.T @ g2).T).reshape(
                shapes[f"{name}.weight"])
            if layer.bias:
                grads[f"{name}.bias"] = g2.sum(axis=0)
            if src == INPUT and not need_input_grad:
                continue
            dcols = np.matmul(g2, w2, out=workspace.get("dcols", cols.shape, g2.dtype))  # (P, K)
            if layer.kind == "conv2d":
                dx = workspace.get("dx/" + name, in_shape, dcols.dtype)
                col2im_into(dcols, layer.kernel, layer.stride, layer.padding, dx)
            else:
                dx = dcols.reshape(in_shape).copy()
            accumulate(src, dx)
        elif layer.kind == "batchnorm":
            xhat, inv_std, gamma, train = saved
            axes = tuple(range(g.ndim - 1))
            grads[f"{name}.bias"] = g.sum(axis=axes)
            grads[f"{name}.weight"] = (g * xhat).sum(axis=axes)
            if train:
                count = g.size // g.shape[-1]
                dxhat = g * gamma
                dx = (inv_std / count) * (count * dxhat - dxhat.sum(axis=axes)
                                          - xhat * (dxhat * xhat).sum(axis=axes))
            else:
                dx = g * (gamma * inv_std)
            accumulate(src, dx.astype(g.dtype, copy=False))
        elif layer.kind == "relu":
            accumulate(src, g * saved[0])
        elif layer.kind in ("maxpool", "avgpool"):
            k, s = layer.kernel, layer.stride
            in_shape = saved[-1]
            ho, wo = g.shape[1], g.shape[2]
            dx = np.zeros(in_shape, g.dtype)
            for i in range(k):              # one vectorized scatter per kernel offset
                for j in range(k):
                    part = (g * (saved[0] == i * k + j) if layer.kind == "maxpool"
                            else g / (k * k))
                    dx[:, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s, :] += part
            accumulate(src, dx)
        elif layer.kind == "globalavgpool":
            n, h, w, c = saved[0]
            accumulate(src, np.broadcast_to((g / (h * w))[:, None, None, :], (n, h, w, c)))
        elif layer.kind == "flatten":
            shape = saved[0]
            dx = (g.reshape(shape[0], shape[3], shape[1], shape[2]).transpose(0, 2, 3, 1)
                  if len(shape) == 4 else g)
            accumulate(src, dx)
        elif layer.kind == "shortcut_a":
            shape = saved[0]
            pad = (layer.out_channels - shape[3]) // 2
            dx = np.zeros(shape, g.dtype)
            dx[:, ::2, ::2, :] = g[..., pad:pad + shape[3]]
            accumulate(src, dx)
        elif layer.kind == "add":
            accumulate(layer.inputs[0], g)
            accumulate(layer.inputs[1], g)
        else:  # pragma: no cover
            raise AssertionError(layer.kind)
    return grads, dvals.get(INPUT)


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy over the batch and its gradient with respect to the logits."""
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    n = len(labels)
    loss = float(-log_p[np.arange(n), labels].mean())
    grad = np.exp(log_p)
    grad[np.arange(n), labels] -= 1.0
    return loss, (grad / n).astype(logits.dtype, copy=False)


# ------------------------------------------------------------------------------------------
# Optimizer pieces
# ------------------------------------------------------------------------------------------

def trainable_names(net: Network) -> list[str]:
    """Conv/linear weights and biases, BatchNorm weight and bias (not the running statistics)."""
    return [p for p in net.param_shapes() if not p.endswith((".running_mean", ".running_var"))]


def weight_names(net: Network) -> list[str]:
    """The conv/linear weights: the ones that go onto arrays, get noise and get clipped."""
    return [f"{layer.name}.weight" for layer in net.matrix_layers()]


def learning_rate(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Learning rate of a (0-based) optimizer step: cosine annealing to 0 over all steps, step decay
    (/10 at 50% and 75% of the epochs), or constant."""
    total = config.epochs * steps_per_epoch
    if config.schedule == "cosine":
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * step / total))
    if config.schedule == "step":
        epoch = step // steps_per_epoch
        drops = sum(epoch >= int(round(m * config.epochs)) for m in STEP_MILESTONES)
        return config.lr * 0.1 ** drops
    return config.lr


def noisy_weights(net: Network, params: Mapping[str, np.ndarray], eta: float,
                  rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``W + eta * max|W| * N(0,1)`` for every conv/linear weight (per layer abs-max)."""
    out = {}
    for pname in weight_names(net):
        w = params[pname]
        scale = eta * float(np.abs(w).max())
        out[pname] = w + (scale * rng.standard_normal(w.shape, dtype=w.dtype)).astype(w.dtype)
    return out


def clip_weights(net: Network, params: dict[str, np.ndarray], alpha: float) -> None:
    """In place: each conv/linear weight clipped to +-alpha * std(W_layer)."""
    for pname in weight_names(net):
        w = params[pname]
        bound = alpha * float(w.std())
        np.clip(w, -bound, bound, out=w)


def augment_cifar(images: np.ndarray, rng: np.random.Generator,
                  padding: int = CROP_PADDING) -> np.ndarray:
    """Random crop of the zero-padded images and random horizontal flip, per image (NHWC, any
    dtype; padding is black, as torchvision pads the raw image before normalizing)."""
    n, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    oy = rng.integers(0, 2 * padding + 1, n)
    ox = rng.integers(0, 2 * padding + 1, n)
    flip = rng.random(n) < 0.5
    rows = oy[:, None] + np.arange(h)
    cols_fwd = np.arange(w)
    cols = ox[:, None] + np.where(flip[:, None], cols_fwd[::-1], cols_fwd)
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def _normalize(dataset: Dataset, raw: np.ndarray) -> np.ndarray:
    x = raw.astype(np.float32) / 255.0 if raw.dtype == np.uint8 else raw.astype(np.float32)
    return (x - dataset.mean) / dataset.std


# ------------------------------------------------------------------------------------------
# Training loop and evaluation
# ------------------------------------------------------------------------------------------

def train(network: Network, params: dict | None, train_set: Dataset, config: TrainConfig, *,
          progress: bool = True, on_epoch: Callable[[EpochStats, dict], None] | None = None
          ) -> tuple[dict, list[EpochStats]]:
    """Train ``network`` on ``train_set``: from scratch (``params=None``: He-normal initialization
    from the config's seed) or fine-tuning from ``params`` (not modified). Returns the trained
    float32 parameters (running statistics included) and one :class:`EpochStats` per epoch.

    ``on_epoch(stats, params)`` is called after every epoch (e.g. to save a checkpoint). With
    ``progress``, a bar runs over an epoch's batches and one line per epoch goes to stderr.
    """
    rng = np.random.default_rng(config.seed)
    if params is None:
        params = init_params(network, rng)
    params = {k: np.array(v, dtype=np.float32) for k, v in
              network.check_params(params, "initial parameters").items()}
    n_total = len(train_set)
    index = (np.sort(rng.choice(n_total, config.max_images, replace=False))
             if config.max_images is not None and config.max_images < n_total
             else np.arange(n_total))
    n = len(index)
    if n < 2:
        raise TrainingError(f"{train_set.source}: need at least 2 training images, got {n}")
    batch = min(config.batch_size, n)
    steps_per_epoch = n // batch           # whole batches only: BatchNorm sees full batches
    augment = config.augment if config.augment is not None else train_set.name == "cifar10"
    workspace = Workspace()
    history: list[EpochStats] = []
    with _blas_threads(1 if network.total_macs() * batch < SINGLE_THREAD_MACS_PER_STEP else None):
        _train_epochs(network, params, train_set, config, index, batch, steps_per_epoch, augment,
                      rng, workspace, history, progress, on_epoch)
    return params, history


def _blas_threads(limit: int | None):
    """A context limiting the BLAS thread pool (threadpoolctl comes with scikit-learn)."""
    if limit is None:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - optional
        return contextlib.nullcontext()
    return threadpool_limits(limits=limit, user_api="blas")


def _train_epochs(network, params, train_set, config, index, batch, steps_per_epoch, augment,
                  rng, workspace, history, progress, on_epoch) -> None:
    n = len(index)
    names = trainable_names(network)
    velocity = {k: np.zeros_like(params[k]) for k in names}
    clip = config.clip_alpha if config.clip_alpha else None
    step = 0
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        order = index[rng.permutation(n)]
        loss_sum, correct, seen = 0.0, 0, 0
        first_lr = learning_rate(config, step, steps_per_epoch)
        label = f"train {network.name} epoch {epoch}/{config.epochs}"
        with Progress(steps_per_epoch, label, enabled=progress) as bar:
            for b in range(steps_per_epoch):
                idx = np.sort(order[b * batch:(b + 1) * batch])
                raw = train_set.images[idx]
                if augment:
                    raw = augment_cifar(raw, rng)
                x, y = _normalize(train_set, raw), train_set.labels[idx]
                noisy = (noisy_weights(network, params, config.noise_eta, rng)
                         if config.noise_eta > 0 else None)
                logits, tape = forward_train(network, params, x, weights=noisy,
                                             workspace=workspace)
                loss, dlogits = softmax_cross_entropy(logits, y)
                grads, _ = backward(network, tape, dlogits, workspace=workspace)
                lr = learning_rate(config, step, steps_per_epoch)
                for k in names:
                    g = grads[k]
                    if config.weight_decay:
                        g = g + config.weight_decay * params[k]
                    v = velocity[k]
                    v *= config.momentum
                    v += g
                    params[k] -= (lr * v).astype(np.float32)
                for bn, (mean, var) in tape.batch_stats.items():
                    for key, stat in (("running_mean", mean), ("running_var", var)):
                        p = params[f"{bn}.{key}"]
                        p *= 1.0 - BN_MOMENTUM
                        p += BN_MOMENTUM * stat.astype(np.float32)
                if clip is not None:
                    clip_weights(network, params, clip)
                step += 1
                loss_sum += loss * len(y)
                correct += int((logits.argmax(axis=1) == y).sum())
                seen += len(y)
                bar.advance(1, f"loss {loss_sum / seen:.4f} acc {correct / seen:.4f}")
        stats = EpochStats(epoch, loss_sum / max(seen, 1), correct / max(seen, 1),
                           time.perf_counter() - start, first_lr)
        history.append(stats)
        if progress:
            print(f"epoch {epoch}/{config.epochs}: loss {stats.loss:.4f}  train acc "
                  f"{stats.train_accuracy:.4f}  {stats.seconds:.1f}s  lr {stats.lr:.4g}",
                  file=sys.stderr, flush=True)
        if on_epoch is not None:
            on_epoch(stats, params)


def evaluate_fp32(network: Network, params: Mapping[str, np.ndarray], dataset: Dataset,
                  batch_size: int = 256) -> float:
    """Top-1 accuracy (a fraction) of the FP32 network, eval-mode BatchNorm."""
    if len(dataset) == 0:
        return 0.0
    workspace = Workspace()
    correct = 0
    for x, y in dataset.batches(batch_size):
        correct += int((predict(network, params, x, batch_size=len(x),
                                workspace=workspace) == y).sum())
    return correct / len(dataset)


__all__ = ["TrainConfig", "EpochStats", "TrainingError", "train", "evaluate_fp32", "forward_train",
           "backward", "softmax_cross_entropy", "learning_rate", "noisy_weights", "clip_weights",
           "augment_cifar", "trainable_names", "weight_names"]
