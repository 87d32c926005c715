"""Converter and read-model sensitivity of ResNet-32 / CIFAR-10 on the hybrid PCM chip: accuracy
1 day after programming with GDC and with GDC + AdaBS, over several programmed chips, for one
setting changed at a time around the default chip (8-bit ADC, ADC output noise 0.06, per-read
read noise, GDC read through the converters, fixed ADC range).

    python benchmarks/sensitivity_resnet32.py [--seeds 5] [--images 10000] [--calib-images 1000]
                                              [--out reports/sensitivity_resnet32.md]

The table an architect needs to size the converters. Every variant is a full Monte Carlo run
(programming, drift, per-batch reads) with the same seeds, so the chips differ between variants
only where the variant changes them. Results are saved after every variant (JSON beside the
Markdown); a rerun skips the variants already in the JSON (``--fresh`` recomputes all).
Needs ../shared/data (or $ARCHSIM_DATA).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
if (REPO.parent / "shared" / "data").is_dir():
    os.environ.setdefault("ARCHSIM_DATA", str(REPO.parent / "shared" / "data"))

from archsim.atomic import atomic_write_text  # noqa: E402
from archsim.config import load_chip  # noqa: E402
from archsim.functional import AccuracyResult, evaluate_accuracy  # noqa: E402
from archsim.mapping import map_network  # noqa: E402
from archsim.workloads import load_workload  # noqa: E402

DAY_S = 86400.0
# (label, what it changes, overrides)
VARIANTS = (
    ("default", "8-bit ADC, noise 0.06, per-read, real GDC readout, fixed range", {}),
    ("ADC 6 bits", "chip.tiles.adc.bits = 6", {"chip.tiles.adc.bits": 6}),
    ("ADC 7 bits", "chip.tiles.adc.bits = 7", {"chip.tiles.adc.bits": 7}),
    ("ADC 9 bits", "chip.tiles.adc.bits = 9", {"chip.tiles.adc.bits": 9}),
    ("ADC noise 0", "chip.tiles.adc.output_noise = 0", {"chip.tiles.adc.output_noise": 0.0}),
    ("ADC noise 0.03", "chip.tiles.adc.output_noise = 0.03", {"chip.tiles.adc.output_noise": 0.03}),
    ("frozen read noise", "chip.device.read_noise = frozen (aihwkit convention)",
     {"chip.device.read_noise": "frozen"}),
    ("ideal GDC readout", "chip.tiles.calibration.gdc_readout = ideal",
     {"chip.tiles.calibration.gdc_readout": "ideal"}),
    ("calibrated ADC range", "chip.tiles.adc.range = calibrated (99.99th percentile)",
     {"chip.tiles.adc.range": "calibrated"}),
    ("calibrated range, 6 bits", "adc.range = calibrated, adc.bits = 6",
     {"chip.tiles.adc.range": "calibrated", "chip.tiles.adc.bits": 6}),
)


def render(saved: dict) -> str:
    rows = saved["variants"]
    default = rows.get("default")
    lines = ["# ResNet-32 / CIFAR-10: converter and read-model sensitivity at 1 day", "",
             f"Hybrid PCM chip (`configs/pcm_hybrid.yaml`), {saved['images']} test images, "
             f"{saved['seeds']} programmed chips (the same seeds in every row), "
             f"{saved['calib_images']} AdaBS calibration images, accuracy 1 day after programming. "
             f"FP32 on the same images: **{100 * saved['fp32']:.2f}%**. One setting changes per "
             "row; the others stay at the default chip's.", "",
             "| variant | change | GDC | GDC + AdaBS | GDC vs default | GDC + AdaBS vs default "
             "| clip % | zero % |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for label, change, _ in VARIANTS:
        r = rows.get(label)
        if r is None:
            lines.append(f"| {label} | {change} | not run | | | | | |")
            continue
        cells = []
        for comp in ("gdc", "gdc+adabs"):
            cells.append(f"{100 * r[comp]['mean']:.2f} ± {100 * r[comp]['std']:.2f}")
        for comp in ("gdc", "gdc+adabs"):
            cells.append("-" if default is None or label == "default" else
                         f"{100 * (r[comp]['mean'] - default[comp]['mean']):+.2f}")
        lines.append(f"| {label} | {change} | " + " | ".join(cells)
                     + f" | {r['clip_pct']:.3f} | {r['zero_pct']:.2f} |")
    lines += ["", "Mean ± standard deviation over the programmed chips, in %; differences in "
              "percentage points. clip % / zero %: share of all the test passes' ADC conversions "
              "that clipped at the bound / read zero.", "",
              f"Command: `{saved['command']}`; wall time {saved['wall_time_s'] / 60:.1f} min.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--calib-images", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--only", help="comma-separated variant labels to run")
    ap.add_argument("--fresh", action="store_true", help="recompute variants already saved")
    ap.add_argument("--out", default=str(REPO / "reports" / "sensitivity_resnet32.md"))
    args = ap.parse_args(argv)

    out = Path(args.out)
    json_path = out.with_suffix(".json")
    wl = load_workload(REPO / "workloads" / "resnet32_cifar10.yaml")
    params = wl.load_params()
    test = wl.dataset("test")
    if args.images < len(test):
        test = test.subset(np.linspace(0, len(test), args.images, endpoint=False).astype(np.int64))
    calib = wl.dataset("train")
    saved = {"images": len(test), "seeds": args.seeds, "calib_images": args.calib_images,
             "variants": {}, "wall_time_s": 0.0,
             "command": "python benchmarks/sensitivity_resnet32.py " + " ".join(argv or sys.argv[1:])}
    if json_path.exists() and not args.fresh:
        old = json.loads(json_path.read_text())
        if (old["images"], old["seeds"], old["calib_images"]) == (len(test), args.seeds,
                                                                 args.calib_images):
            saved = {**old, "command": saved["command"]}
    only = set(args.only.split(",")) if args.only else None
    for label, _change, overrides in VARIANTS:
        if (only and label not in only) or label in saved["variants"]:
            continue
        start = time.perf_counter()
        mapping = map_network(load_chip("pcm_hybrid", overrides), wl.network)
        res: AccuracyResult = evaluate_accuracy(
            [mapping], params, test, calib=calib, calib_images=args.calib_images,
            times_s=(DAY_S,), seeds=args.seeds, compensations=("gdc", "gdc+adabs"),
            seed=args.seed, batch_size=args.batch_size)
        totals = np.sum([[c, k, z] for a in res.adc_stats for _, c, k, z in a.layers], axis=0)
        saved["fp32"] = res.fp32
        saved["variants"][label] = {
            **{s.compensation: {"mean": s.mean[0], "std": s.std[0],
                                "per_chip": [r[0] for r in s.per_seed]} for s in res.series},
            "clip_pct": 100.0 * totals[1] / totals[0], "zero_pct": 100.0 * totals[2] / totals[0]}
        saved["wall_time_s"] += time.perf_counter() - start
        atomic_write_text(json_path, json.dumps(saved, indent=1) + "\n")
        atomic_write_text(out, render(saved))
        print(f"[{time.strftime('%H:%M:%S')}] {label}: " + ", ".join(
            f"{c} {100 * saved['variants'][label][c]['mean']:.2f}" for c in ("gdc", "gdc+adabs")),
            flush=True)
    print(out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
