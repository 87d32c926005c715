"""Training speed: one epoch of ResNet-32 (pretrained start, noise injection on, augmentation on) on
the first 4,000 CIFAR-10 training images (``cifar10_train_subset.npz``), batch 128.

    python benchmarks/bench_training.py [--data ../shared/data] [--images 4000] [--batch-size 128]

Prints images/second for the whole epoch and the split of one step into forward, backward and
update (the last measured separately on one batch).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from archsim.datasets import load_cifar10
from archsim.network import Workspace
from archsim.training import (TrainConfig, backward, forward_train, noisy_weights,
                              softmax_cross_entropy, train)
from archsim.workloads import find_data_file, load_workload


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("ARCHSIM_DATA", "../shared/data"))
    ap.add_argument("--images", type=int, default=4000)
    ap.add_argument("--batch-size", type=int, default=128)
    args = ap.parse_args()

    wl = load_workload("resnet32_cifar10", args.data)
    params = wl.load_params()
    ds = wl.spec.dataset
    data = load_cifar10(find_data_file("cifar10_train_subset.npz", args.data), "train", ds.mean,
                        ds.std)
    data = data.subset(slice(0, args.images))
    net = wl.network

    # one step, split (after a warm-up step that compiles the kernels)
    ws = Workspace()
    rng = np.random.default_rng(0)
    x, y = data.normalized(slice(0, args.batch_size)), data.labels[:args.batch_size]
    for _ in range(2):
        t0 = time.perf_counter()
        noisy = noisy_weights(net, params, 0.038, rng)
        logits, tape = forward_train(net, params, x, weights=noisy, workspace=ws)
        t1 = time.perf_counter()
        grads, _ = backward(net, tape, softmax_cross_entropy(logits, y)[1], workspace=ws)
        t2 = time.perf_counter()
    print(f"one step of {args.batch_size}: forward {t1 - t0:.2f} s, backward {t2 - t1:.2f} s")

    config = TrainConfig(epochs=1, lr=0.01, batch_size=args.batch_size)
    start = time.perf_counter()
    _, history = train(net, params, data, config, progress=False)
    seconds = time.perf_counter() - start
    used = (len(data) // args.batch_size) * args.batch_size
    print(f"ResNet-32 training, {used} images in {seconds:.1f} s: {used / seconds:.1f} images/s "
          f"(one 50,000-image epoch would take {50000 / (used / seconds) / 60:.0f} min); "
          f"loss {history[0].loss:.4f}, {os.cpu_count()} CPUs visible")


if __name__ == "__main__":
    main()
