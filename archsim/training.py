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
patches, built chunk by chunk of the batch in a core's cache and built again in the backward pass
(:mod:`archsim.threads` runs the chunks, one thread per core, BLAS single-threaded in each).
Everything works in float32 for training and in float64 for the gradient checks of the tests.

Randomness: one named stream per purpose (:data:`STREAMS`: initial weights, shuffling,
augmentation, weight noise; plus the ``max_images`` subset) under ``(config.seed, "train")``
(:mod:`archsim.rng`). A checkpoint (:func:`save_checkpoint`, every epoch) holds the weights, the
momentum buffers, the step and epoch, every stream's state and the run's identity; resuming from
it gives the same weights bit for bit as a run that was never interrupted. The numbers do not
depend on the number of worker threads; they do depend on the BLAS library's kernels (numpy's
OpenBLAS picks them per CPU family), so bit-identity holds on one machine type and numpy build.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from .atomic import atomic_write_bytes
from .datasets import Dataset, augment_cifar
from .errors import ArchsimError
from .kernels import relu_grad_sum_into
from .layers import Pass, Tape
from .layers.matrix import Conv2d
from .layers.pointwise import BatchNorm, Relu
from .layers.tensor import Add
from .network import INPUT, Network, Workspace, init_params, predict, walk
from .threads import Workers, element_chunks, training_threads
from .progress import Progress
from .rng import Streams, named_rng

BN_MOMENTUM = 0.1            # PyTorch's default: running = 0.9 * running + 0.1 * batch
SCHEDULES = ("cosine", "step", "constant")
STEP_MILESTONES = (0.5, 0.75)  # step schedule: lr / 10 at half and three quarters of the epochs
# Below this many MACs per training step (forward), one worker thread: on small networks (the
# digits CNN: 0.45 M MACs per image, one chunk per layer) hand-offs cost more than the GEMMs
# (measured on 2 busy cores: 5 digits epochs 19 s with OpenBLAS threads, 2.8 s without).
SINGLE_THREAD_MACS_PER_STEP = 200_000_000
# One random stream per purpose, under (seed, "train", name): switching noise injection off leaves
# the shuffling and augmentation of a run as they were (a clean control run).
STREAMS = ("init", "shuffle", "augment", "noise")
CHECKPOINT_FILE = "checkpoint.npz"
CHECKPOINT_FORMAT = "archsim-train-checkpoint/1"


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
    images: int = 0         # images trained on (whole batches)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


# ------------------------------------------------------------------------------------------
# Forward (train mode) and backward
# ------------------------------------------------------------------------------------------

def forward_train(net: Network, params: Mapping[str, np.ndarray], x: np.ndarray, *,
                  train: bool = True, weights: Mapping[str, np.ndarray] | None = None,
                  workspace: Workspace | None = None, workers: Workers | None = None
                  ) -> tuple[np.ndarray, Tape]:
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
               tape=tape, batch_statistics=train, weights=weights, workers=workers,
               relu_after=relu_after(net))
    out = walk(net, x, lambda layer, xs: layer.forward(xs, run).astype(dtype, copy=False))
    return out, tape


def relu_after(net: Network) -> frozenset:
    """The BatchNorm and Add layers whose only consumer is a ReLU: in training they apply it in
    their own output pass (the same numbers, one pass over the activation fewer)."""
    users = net.consumers()
    return frozenset(layer.name for layer in net.layers
                     if isinstance(layer, (BatchNorm, Add)) and layer.name != net.output
                     and len(users[layer.name]) == 1
                     and isinstance(net.layer(users[layer.name][0]), Relu))


def relu_grad_fusions(net: Network, tape: Tape) -> tuple[dict[str, str], frozenset]:
    """The ReLUs whose gradient mask the backward pass applies in another pass over the same
    activation, with the same numbers as their own backward (one pass fewer each):

    - ReLU -> the Conv2d that is its only consumer and ran its training pass in chunks (it saved
      its input, the ReLU's output): that conv masks its input gradient chunk by chunk;
    - the ReLUs with several consumers (a residual join): the pass that adds the last of their
      gradient terms applies the mask to the sum."""
    users = net.consumers()
    masked, summed = {}, set()
    for layer in net.layers:
        if not isinstance(layer, Relu) or layer.inputs[0] == INPUT or layer.name == net.output:
            continue
        consumers = users[layer.name]
        if len(consumers) > 1:
            summed.add(layer.name)
            continue
        conv = net.layer(consumers[0]) if consumers else None
        saved = tape.saved.get(conv.name, ()) if conv is not None else ()
        if (isinstance(conv, Conv2d) and conv.inputs == (layer.name,) and len(saved) > 0
                and isinstance(saved[0], str) and saved[0] == "chunked"):
            masked[layer.name] = conv.name
    return masked, frozenset(summed)


def backward(net: Network, tape: Tape, dout: np.ndarray, *, need_input_grad: bool = False,
             workspace: Workspace | None = None, workers: Workers | None = None
             ) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Gradients of a scalar loss given ``dout`` = dLoss/dLogits: ({param name: grad}, dLoss/dx).

    Parameter gradients cover the trainable parameters (conv/linear weights and biases, BatchNorm
    weight and bias); with a train-mode tape BatchNorm differentiates through the batch statistics.
    Layers run in reverse graph order; gradients of activations used twice are summed.
    """
    # ReLUs whose gradient mask another pass applies: their single consumer conv's, or the
    # pass that sums the gradients of their consumers (the last sum, with the mask)
    masked, summed = relu_grad_fusions(net, tape)
    premasked: set[str] = set(masked)
    run = Pass({}, workspace if workspace is not None else Workspace(), dtype=dout.dtype,
               workers=workers, relu_mask=frozenset(masked.values()))
    grads: dict[str, np.ndarray] = {}
    dvals: dict[str, np.ndarray] = {net.output: dout}
    # gradient terms still to come per activation (a consumer's every input slot gives one)
    pending: dict[str, int] = {}
    for layer in net.layers:
        for src in layer.inputs:
            pending[src] = pending.get(src, 0) + 1

    def accumulate(src: str, g: np.ndarray) -> None:
        pending[src] -= 1
        prev = dvals.get(src)
        if prev is None:
            dvals[src] = g
        elif (src == INPUT or prev.shape != g.shape or prev.dtype != g.dtype
              or not (prev.flags.c_contiguous and g.flags.c_contiguous)):
            dvals[src] = prev + g
        else:
            # the sum into this activation's scratch (never another layer's array; it may be
            # the sum of its earlier consumers), in chunks on the workers; the last term of a
            # ReLU's output gradient takes its mask in the same pass
            out = run.workspace.get("grad-sum/" + src, g.shape, g.dtype)
            p1, g1, o1 = prev.reshape(-1), g.reshape(-1), out.reshape(-1)
            parts = element_chunks(o1)
            y = tape.saved.get(src, (None,))[0] if src in summed and pending[src] == 0 else None
            if y is not None and y.shape == g.shape and y.dtype == g.dtype and \
                    y.flags.c_contiguous and g.dtype in (np.float32, np.float64):
                y1 = y.reshape(-1)
                run.run_chunks(lambda i, w: relu_grad_sum_into(
                    p1[parts[i]], g1[parts[i]], y1[parts[i]], o1[parts[i]]), len(parts))
                premasked.add(src)
            else:
                run.run_chunks(lambda i, w: np.add(p1[parts[i]], g1[parts[i]],
                                                   out=o1[parts[i]]), len(parts))
            dvals[src] = out

    for layer in reversed(net.layers):
        g = dvals.pop(layer.name, None)
        if g is None:           # the layer does not influence the loss
            continue
        if layer.name in premasked:     # another pass applied its mask: g is its input's gradient
            accumulate(layer.inputs[0], g)
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


def _normalize(dataset: Dataset, raw: np.ndarray) -> np.ndarray:
    x = raw.astype(np.float32) / 255.0 if raw.dtype == np.uint8 else raw.astype(np.float32)
    return (x - dataset.mean) / dataset.std


# ------------------------------------------------------------------------------------------
# Training state, checkpoints
# ------------------------------------------------------------------------------------------

@dataclass
class TrainState:
    """Everything a run carries from one epoch to the next: resuming from it continues the run
    exactly. ``rngs`` are the named random streams (one per purpose, :data:`STREAMS`)."""
    params: dict[str, np.ndarray]
    velocity: dict[str, np.ndarray]            # SGD momentum buffers, one per trainable tensor
    rngs: dict[str, np.random.Generator]
    epoch: int = 0                             # epochs finished
    step: int = 0                              # optimizer steps taken (the schedule position)
    history: list[EpochStats] = field(default_factory=list)


def run_identity(network: Network, params: Mapping[str, np.ndarray] | None, train_set: Dataset,
                 config: TrainConfig) -> dict:
    """What a checkpoint must agree on with the run that resumes it: the options, the network,
    the starting weights and the training images (content digests, not file names)."""
    def digest(arrays) -> str:
        h = hashlib.sha256()
        for name, arr in arrays:
            arr = np.ascontiguousarray(arr)
            h.update(f"{name}:{arr.dtype.str}:{arr.shape};".encode())
            h.update(memoryview(arr).cast("B"))
        return h.hexdigest()[:16]

    return {
        "config": {f.name: getattr(config, f.name) for f in dataclasses.fields(config)},
        "network": network.name,
        "parameters": hashlib.sha256(repr(sorted(network.param_shapes().items())).encode()
                                     ).hexdigest()[:16],
        "initial_weights": "scratch" if params is None else
                           digest((k, params[k]) for k in sorted(params)),
        "training_images": f"{train_set.name}, {len(train_set)} images, "
                           f"{digest([('x', train_set.images), ('y', train_set.labels)])}",
    }


def save_checkpoint(folder: str | Path, state: TrainState, identity: dict) -> Path:
    """``folder/checkpoint.npz``, written atomically: weights (``param/NAME``), momentum
    (``momentum/NAME``) and one JSON string (``state``) with the epoch, step, history, every
    random stream's ``bit_generator.state`` and the run's identity (:func:`run_identity`)."""
    meta = {"format": CHECKPOINT_FORMAT, "epoch": state.epoch, "step": state.step,
            "identity": identity, "history": [dataclasses.asdict(h) for h in state.history],
            "rngs": {name: rng.bit_generator.state for name, rng in state.rngs.items()}}
    arrays = {f"param/{k}": np.asarray(v, np.float32) for k, v in state.params.items()}
    arrays.update({f"momentum/{k}": np.asarray(v, np.float32) for k, v in state.velocity.items()})
    arrays["state"] = np.array(json.dumps(meta, sort_keys=True))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path = Path(folder) / CHECKPOINT_FILE
    atomic_write_bytes(path, buf.getvalue())
    return path


def checkpoint_path(folder: str | Path) -> Path:
    return Path(folder) / CHECKPOINT_FILE


def load_checkpoint(folder: str | Path) -> tuple[TrainState, dict]:
    """The :class:`TrainState` and identity saved by :func:`save_checkpoint` in ``folder``."""
    path = checkpoint_path(folder)
    if not path.exists():
        raise TrainingError(f"{path}: no checkpoint here (write one with --checkpoint "
                            f"{Path(folder)})")
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["state"]))
            params = {k[len("param/"):]: data[k] for k in data.files if k.startswith("param/")}
            velocity = {k[len("momentum/"):]: data[k] for k in data.files
                        if k.startswith("momentum/")}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        raise TrainingError(f"{path}: not a readable training checkpoint ({exc})") from None
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"{path}: checkpoint format {meta.get('format')!r}, expected "
                            f"{CHECKPOINT_FORMAT!r}")
    rngs = {}
    for name, st in meta["rngs"].items():
        gen = np.random.Generator(getattr(np.random, st["bit_generator"])())
        gen.bit_generator.state = st
        rngs[name] = gen
    state = TrainState(params, velocity, rngs, meta["epoch"], meta["step"],
                       [EpochStats(**h) for h in meta["history"]])
    return state, meta["identity"]


def _identity_mismatch(saved: dict, current: dict) -> list[str]:
    out = []
    for key in current:
        if key == "config":
            for name, value in current["config"].items():
                old = saved.get("config", {}).get(name)
                if old != value:
                    out.append(f"{name} {value!r} (checkpoint: {old!r})")
        elif saved.get(key) != current[key]:
            out.append(f"{key} {current[key]!r} (checkpoint: {saved.get(key)!r})")
    return out


def new_state(network: Network, params: Mapping[str, np.ndarray] | None,
              config: TrainConfig) -> TrainState:
    """The state before the first epoch: the named streams of ``config.seed``, the starting
    weights (He-normal from the ``init`` stream when ``params`` is None) and zero momentum."""
    streams = Streams(config.seed).child("train")
    rngs = {name: streams(name) for name in STREAMS}
    if params is None:
        params = init_params(network, rngs["init"])
    params = {k: np.array(v, dtype=np.float32) for k, v in
              network.check_params(params, "initial parameters").items()}
    velocity = {k: np.zeros_like(params[k]) for k in trainable_names(network)}
    return TrainState(params, velocity, rngs)


# ------------------------------------------------------------------------------------------
# Training loop and evaluation
# ------------------------------------------------------------------------------------------

def train(network: Network, params: dict | None, train_set: Dataset, config: TrainConfig, *,
          progress: bool = True, on_epoch: Callable[[EpochStats, dict], None] | None = None,
          checkpoint: str | Path | None = None, resume: str | Path | None = None,
          stop_after: int | None = None, workers: int | None = None
          ) -> tuple[dict, list[EpochStats]]:
    """Train ``network`` on ``train_set``: from scratch (``params=None``: He-normal initialization
    from the config's seed) or fine-tuning from ``params`` (not modified). Returns the trained
    float32 parameters (running statistics included) and one :class:`EpochStats` per epoch (those
    of a resumed run's earlier epochs included).

    ``checkpoint``: a folder where :func:`save_checkpoint` writes the whole state at the end of
    every epoch (a run killed mid-epoch loses that epoch only). ``resume``: a folder to continue
    from; the run must be the checkpoint's (same options, network, starting weights and training
    images: else a :class:`TrainingError` says what differs), and the result is bit for bit that
    of an uninterrupted run. ``stop_after``: return after this epoch (resume later).
    ``workers``: threads for the batch chunks (default: one per available core; 1 for small
    networks) - the numbers do not depend on it.

    ``on_epoch(stats, params)`` is called after every epoch (after the checkpoint is written).
    With ``progress``, a bar runs over an epoch's batches and one line per epoch goes to stderr.
    """
    identity = run_identity(network, params, train_set, config)
    if resume is not None:
        state, saved = load_checkpoint(resume)
        diff = _identity_mismatch(saved, identity)
        if diff:
            raise TrainingError(f"{checkpoint_path(resume)}: this run is not the checkpoint's: "
                                f"{'; '.join(diff)} (resume with the checkpoint's options, or "
                                "start a new checkpoint folder)")
        network.check_params(state.params, str(checkpoint_path(resume)))
        if checkpoint is None:
            checkpoint = resume
    else:
        if checkpoint is not None and checkpoint_path(checkpoint).exists():
            raise TrainingError(f"{checkpoint_path(checkpoint)}: a checkpoint is already there: "
                                f"continue it with --resume {checkpoint}, or choose another folder")
        state = new_state(network, params, config)
    n_total = len(train_set)
    index = (training_subset(config, n_total) if config.max_images is not None
             and config.max_images < n_total else np.arange(n_total))
    n = len(index)
    if n < 2:
        raise TrainingError(f"{train_set.source}: need at least 2 training images, got {n}")
    batch = min(config.batch_size, n)
    steps_per_epoch = n // batch           # whole batches only: BatchNorm sees full batches
    augment = config.augment if config.augment is not None else train_set.name == "cifar10"
    if workers is None:
        workers = 1 if network.total_macs() * batch < SINGLE_THREAD_MACS_PER_STEP else None
    workspace = Workspace()
    last = config.epochs if stop_after is None else min(config.epochs, stop_after)
    while state.epoch < last:
        with training_threads(workers) as pool:
            stats = _train_epoch(network, train_set, config, state, index, batch,
                                 steps_per_epoch, augment, workspace, pool, progress)
        state.history.append(stats)
        if progress:
            print(f"epoch {stats.epoch}/{config.epochs}: loss {stats.loss:.4f}  train acc "
                  f"{stats.train_accuracy:.4f}  {stats.seconds:.1f}s  "
                  f"{stats.images_per_s:.1f} images/s  lr {stats.lr:.4g}",
                  file=sys.stderr, flush=True)
        if checkpoint is not None:
            save_checkpoint(checkpoint, state, identity)
        if on_epoch is not None:
            on_epoch(stats, state.params)
    return state.params, list(state.history)


def training_subset(config: TrainConfig, n_total: int) -> np.ndarray:
    """The ``max_images`` training images of a run (sorted indices), from its ``subset`` stream:
    the same for every epoch and every resume."""
    gen = named_rng(config.seed, "train", "subset")
    return np.sort(gen.choice(n_total, config.max_images, replace=False))


def _train_epoch(network, train_set, config, state: TrainState, index, batch, steps_per_epoch,
                 augment, workspace, workers, progress) -> EpochStats:
    n = len(index)
    params, velocity, rngs = state.params, state.velocity, state.rngs
    names = list(velocity)
    clip = config.clip_alpha if config.clip_alpha else None
    epoch = state.epoch + 1
    start = time.perf_counter()
    order = index[rngs["shuffle"].permutation(n)]
    loss_sum, correct, seen = 0.0, 0, 0
    first_lr = learning_rate(config, state.step, steps_per_epoch)
    label = f"train {network.name} epoch {epoch}/{config.epochs}"
    with Progress(steps_per_epoch, label, enabled=progress) as bar:
        for b in range(steps_per_epoch):
            idx = np.sort(order[b * batch:(b + 1) * batch])
            raw = train_set.images[idx]
            if augment:
                raw = augment_cifar(raw, rngs["augment"])
            x, y = _normalize(train_set, raw), train_set.labels[idx]
            noisy = (noisy_weights(network, params, config.noise_eta, rngs["noise"])
                     if config.noise_eta > 0 else None)
            logits, tape = forward_train(network, params, x, weights=noisy,
                                         workspace=workspace, workers=workers)
            loss, dlogits = softmax_cross_entropy(logits, y)
            grads, _ = backward(network, tape, dlogits, workspace=workspace, workers=workers)
            lr = learning_rate(config, state.step, steps_per_epoch)
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
            state.step += 1
            loss_sum += loss * len(y)
            correct += int((logits.argmax(axis=1) == y).sum())
            seen += len(y)
            rate = seen / max(time.perf_counter() - start, 1e-9)
            bar.advance(1, f"loss {loss_sum / seen:.4f} acc {correct / seen:.4f} "
                           f"{rate:.0f} images/s")
    state.epoch = epoch
    return EpochStats(epoch, loss_sum / max(seen, 1), correct / max(seen, 1),
                      time.perf_counter() - start, first_lr, seen)


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


__all__ = ["TrainConfig", "EpochStats", "TrainingError", "TrainState", "train", "evaluate_fp32",
           "forward_train", "backward", "softmax_cross_entropy", "learning_rate", "noisy_weights",
           "clip_weights", "trainable_names", "weight_names", "save_checkpoint",
           "load_checkpoint", "checkpoint_path", "run_identity", "new_state", "training_subset"]
