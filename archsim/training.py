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

Each layer kind's training forward and backward live in its class (:mod:`archsim.layers`);
this module walks the graph, runs the loss and the optimizer. Convolutions are GEMMs on im2col
patches (the same (c, i, j) order as :mod:`archsim.network`); the input gradient goes back through
:func:`archsim.kernels.col2im_into`. Everything works in float32
for training and in float64 for the gradient checks of the tests. All randomness (initial weights,
shuffling, augmentation, weight noise) comes from one ``numpy.random.Generator(config.seed)``.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from .datasets import Dataset
from .errors import ArchsimError
from .layers import Pass, Tape
from .network import INPUT, Network, Workspace, init_params, predict, walk
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

def forward_train(net: Network, params: Mapping[str, np.ndarray], x: np.ndarray, *,
                  train: bool = True, weights: Mapping[str, np.ndarray] | None = None,
                  workspace: Workspace | None = None) -> tuple[np.ndarray, Tape]:
    """Logits of a batch plus the tape for :func:`backward`: the graph walk of
    :func:`archsim.network.walk` with every layer recording what its backward needs.

    ``train``: BatchNorm normalizes with batch statistics (else the running ones, as in
    :func:`archsim.network.forward`). ``weights`` replaces conv/linear weights by name (the noisy
    copies of noise injection). The dtype of ``x`` (float32 or float64) is kept throughout.
    """
    dtype = np.float64 if np.asarray(x).dtype == np.float64 else np.float32
    x = np.asarray(x, dtype)
    tape = Tape(input_shape=x.shape)
    run = Pass(params, workspace if workspace is not None else Workspace(), dtype=dtype,
               tape=tape, batch_statistics=train, weights=weights)
    out = walk(net, x, lambda layer, xs: layer.forward(xs, run).astype(dtype, copy=False))
    return out, tape


def backward(net: Network, tape: Tape, dout: np.ndarray, *, need_input_grad: bool = False,
             workspace: Workspace | None = None) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Gradients of a scalar loss given ``dout`` = dLoss/dLogits: ({param name: grad}, dLoss/dx).

    Parameter gradients cover the trainable parameters (conv/linear weights and biases, BatchNorm
    weight and bias); with a train-mode tape BatchNorm differentiates through the batch statistics.
    Layers run in reverse graph order; gradients of activations used twice are summed.
    """
    run = Pass({}, workspace if workspace is not None else Workspace(), dtype=dout.dtype)
    grads: dict[str, np.ndarray] = {}
    dvals: dict[str, np.ndarray] = {net.output: dout}

    def accumulate(src: str, g: np.ndarray) -> None:
        if src in dvals:
            dvals[src] = dvals[src] + g
        else:
            dvals[src] = g

    for layer in reversed(net.layers):
        g = dvals.pop(layer.name, None)
        if g is None:           # the layer does not influence the loss
            continue
        need = [src != INPUT or need_input_grad for src in layer.inputs]
        dxs, layer_grads = layer.backward(g, tape.saved.get(layer.name, ()), need, run)
        for role, value in layer_grads.items():
            grads[layer.param(role)] = value
        for src, dx, wanted in zip(layer.inputs, dxs, need):
            if wanted and dx is not None:
                accumulate(src, dx)
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
    """Conv/linear weights and biases, BatchNorm weight and bias (not the running statistics nor
    constants)."""
    return [name for name, spec in net.param_specs().items() if spec.trainable]


def weight_names(net: Network) -> list[str]:
    """The conv/linear weights: the ones that go onto arrays, get noise and get clipped."""
    return [layer.param("weight") for layer in net.matrix_layers()]


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
