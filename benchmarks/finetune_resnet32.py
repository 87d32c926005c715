"""Fine-tune the pretrained ResNet-32 with noise injection on the 50,000 JPEG CIFAR-10 training
images (same JPEG domain as the test file), then measure the FP32 test accuracy.

    python benchmarks/finetune_resnet32.py --data ../shared/data --out /tmp/resnet32_ft.npz
    python benchmarks/finetune_resnet32.py --data ../shared/data --analog WEIGHTS.npz|pretrained

The second form only measures the analog accuracy (pcm_hybrid, hybrid mapping, 1 day after
programming, GDC + AdaBS) of the given weights on a random subset of the test file.

Prints the time per epoch and the accuracy; writes the weights (keep them out of the repo) and a
JSON summary beside them. Takes about an hour per epoch on 2 busy cores.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from archsim.training import TrainConfig, evaluate_fp32, train
from archsim.workloads import load_workload, save_weights


def analog_accuracy(wl, params, *, images: int, seeds: int, calib_images: int) -> dict:
    import numpy as np

    from archsim.config import load_chip
    from archsim.functional import evaluate_accuracy
    from archsim.mapping import map_network

    test = wl.dataset("test")
    # the test file is class-sorted: a seeded random subset keeps the classes balanced
    test = test.subset(np.sort(np.random.default_rng(0).permutation(len(test))[:images]))
    mapping = map_network(load_chip("pcm_hybrid"), wl.network)
    start = time.perf_counter()
    result = evaluate_accuracy([mapping], params, test, calib=wl.dataset("train"),
                               calib_images=calib_images, times_s=(86400.0,), seeds=seeds,
                               compensations=("gdc+adabs",), progress=False)
    series = result.series[0]
    return {"fp32_subset": result.fp32, "analog_1day_gdc_adabs_mean": series.mean[0],
            "analog_1day_gdc_adabs_std": series.std[0], "per_seed": series.per_seed,
            "test_images": len(test), "seeds": seeds, "calib_images": result.calib_images,
            "mapping": series.mapping, "seconds": time.perf_counter() - start}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None)
    ap.add_argument("--out", default="/tmp/resnet32_ft.npz")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--noise", type=float, default=0.038)
    ap.add_argument("--clip", type=float, default=2.5)
    ap.add_argument("--max-images", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--analog", metavar="WEIGHTS", help="only the analog evaluation of these "
                    "weights ('pretrained': the workload's)")
    ap.add_argument("--analog-images", type=int, default=1000)
    ap.add_argument("--analog-seeds", type=int, default=2)
    ap.add_argument("--calib-images", type=int, default=1000)
    args = ap.parse_args()

    wl = load_workload("resnet32_cifar10", args.data)
    if args.analog:
        params = wl.load_params(None if args.analog == "pretrained" else args.analog)
        res = analog_accuracy(wl, params, images=args.analog_images, seeds=args.analog_seeds,
                              calib_images=args.calib_images)
        print(json.dumps({"weights": args.analog, **res}))
        return
    params = wl.load_params()
    train_set = wl.dataset("train")
    config = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                         schedule="cosine", noise_eta=args.noise, clip_alpha=args.clip,
                         seed=args.seed, max_images=args.max_images)
    print(f"fine-tuning on {len(train_set)} images from {train_set.source}: {config}", flush=True)
    out = Path(args.out)
    start = time.perf_counter()
    tuned, history = train(wl.network, params, train_set, config,
                           on_epoch=lambda stats, p: save_weights(p, out))
    train_s = time.perf_counter() - start
    save_weights(tuned, out)
    test = wl.dataset("test")
    acc = evaluate_fp32(wl.network, tuned, test)
    summary = {"config": {k: getattr(config, k) for k in config.__dataclass_fields__},
               "train_images": len(train_set), "train_seconds": train_s,
               "epochs": [vars(h) for h in history], "fp32_test_accuracy_after": acc,
               "test_images": len(test), "weights": str(out)}
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    for h in history:
        print(f"epoch {h.epoch}: loss {h.loss:.4f} train acc {h.train_accuracy:.4f} "
              f"{h.seconds:.0f} s ({h.seconds / len(train_set) * 1000:.1f} ms/image)")
    print(f"FP32 test accuracy after fine-tuning: {acc:.4f} on {len(test)} images")


if __name__ == "__main__":
    main()
