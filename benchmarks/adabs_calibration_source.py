"""Where AdaBS's calibration images come from, and what it costs: ResNet-32 on the hybrid PCM chip
1 day after programming, GDC and GDC + AdaBS, with the 1,000 AdaBS images drawn from the JPEG
training file (the default of every archsim run) or held out of the test file (every 10th test
image), evaluated on the same other 9,000 test images and the same programmed chips.

A network fine-tuned on the training file has seen (and fits) those very images: their
activation statistics are not those of unseen images, and AdaBS, which re-estimates every
BatchNorm's statistics from them, can then make things worse. This measures it for the pretrained
akamaster weights (trained on the PNG images, so the JPEG training file is new to them) and the
noise-trained weights (fine-tuned on exactly that file).

    python benchmarks/adabs_calibration_source.py [--chips 3] [--out reports/adabs_calibration_source_resnet32.md]

Needs ../shared/data (or $ARCHSIM_DATA); the noise-trained weights are
workloads/resnet32_cifar10_noise.npz.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from archsim.atomic import atomic_write_text  # noqa: E402
from archsim.config import load_chip  # noqa: E402
from archsim.functional import evaluate_accuracy  # noqa: E402
from archsim.mapping import map_network  # noqa: E402
from archsim.workloads import load_workload  # noqa: E402

NETWORKS = {"pretrained (akamaster)": "resnet32_cifar10",
            "noise-trained (16 epochs on the JPEG training file)": "resnet32_cifar10_noise"}
DAY_S = 86400.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__)
    ap.add_argument("--data", default=None)
    ap.add_argument("--chips", type=int, default=3)
    ap.add_argument("--calib-images", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(REPO / "reports" / "adabs_calibration_source_resnet32.md"))
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    rows = []
    for label, name in NETWORKS.items():
        wl = load_workload(name, args.data)
        params = wl.load_params()
        test = wl.dataset("test")
        held = np.arange(len(test)) % 10 == 0                   # every 10th: all classes alike
        held_out, evaluated = test.subset(np.flatnonzero(held)), test.subset(np.flatnonzero(~held))
        mapping = map_network(load_chip("pcm_hybrid"), wl.network)
        cells = {}
        for source, calib in (("training file", wl.dataset("train")),
                              ("held-out test images", held_out)):
            result = evaluate_accuracy([mapping], params, evaluated, calib=calib,
                                       calib_images=args.calib_images, times_s=(DAY_S,),
                                       seeds=args.chips, compensations=("gdc", "gdc+adabs"),
                                       seed=args.seed, progress=not args.quiet)
            series = {s.compensation: s for s in result.series}
            # per_seed is [chip][time]; one time here
            chips = {c: [row[0] for row in s.per_seed] for c, s in series.items()}
            cells[source] = {c: (100 * float(np.mean(a)), 100 * float(np.std(a)),
                                 [round(100 * v, 2) for v in a]) for c, a in chips.items()}
            cells["fp32"] = 100 * result.fp32
        rows.append((label, cells))
        print(f"{label}: {json.dumps(cells)}", flush=True)
    minutes = (time.perf_counter() - start) / 60
    lines = ["# AdaBS calibration images: from the training file or held out of the test file",
             "",
             "ResNet-32 on the hybrid PCM chip (`configs/pcm_hybrid.yaml`), 1 day after "
             f"programming, {args.chips} programmed chips (the same in every column), "
             f"{args.calib_images} AdaBS images; evaluated on the 9,000 test images that are not "
             "held out (every 10th test image is held out). Mean ± std over chips, %.",
             "",
             "| network | FP32 | GDC | GDC + AdaBS, calibrated on the training file | "
             "GDC + AdaBS, calibrated on held-out test images |",
             "| --- | --- | --- | --- | --- |"]
    for label, cells in rows:
        gdc = cells["training file"]["gdc"]
        tr = cells["training file"]["gdc+adabs"]
        ho = cells["held-out test images"]["gdc+adabs"]
        lines.append(f"| {label} | {cells['fp32']:.2f} | {gdc[0]:.2f} ± {gdc[1]:.2f} | "
                     f"{tr[0]:.2f} ± {tr[1]:.2f} | {ho[0]:.2f} ± {ho[1]:.2f} |")
    lines += ["", "Per chip (GDC; AdaBS on training images; AdaBS on held-out images):"]
    for label, cells in rows:
        lines.append(f"- {label}: {cells['training file']['gdc'][2]}; "
                     f"{cells['training file']['gdc+adabs'][2]}; "
                     f"{cells['held-out test images']['gdc+adabs'][2]}")
    lines += ["", f"Command: `python benchmarks/adabs_calibration_source.py --chips {args.chips}`; "
                  f"wall time {minutes:.1f} min."]
    text = "\n".join(lines) + "\n"
    atomic_write_text(Path(args.out), text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
