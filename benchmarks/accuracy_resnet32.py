"""ResNet-32 / CIFAR-10 accuracy vs. time on the hybrid PCM chip (DESIGN.md section 4).

    python benchmarks/accuracy_resnet32.py [--seeds 5] [--images 10000] [--calib-images 1000]
                                           [--out reports/accuracy_resnet32_hybrid.md]

Needs ../shared/data (or $ARCHSIM_DATA): the pretrained weights, cifar10_test.npz and
cifar10_train_jpeg.npz (AdaBS calibration images come from the training file). The report is
rewritten after every programmed chip, so a run cut short still leaves the seeds it finished;
beside it go the same numbers as JSON (per chip included) and a PNG plot. ``--render FILE.json``
rewrites the Markdown and plot of a run from its JSON without simulating again.
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

from archsim.atomic import atomic_write_bytes, atomic_write_text  # noqa: E402
from archsim.config import load_chip  # noqa: E402
from archsim.functional import COMPENSATIONS, DEFAULT_TIMES_S, AccuracyResult, evaluate_accuracy  # noqa: E402
from archsim.mapping import map_network  # noqa: E402
from archsim.report import accuracy_plot, adc_table, read_model_line  # noqa: E402
from archsim.workloads import load_workload  # noqa: E402

TIME_LABELS = {25.0: "25 s", 3600.0: "1 h", 86400.0: "1 day", 2592000.0: "1 month",
               31536000.0: "1 year"}


def findings(fp32: float, times_s, by: dict) -> list[str]:
    """What the table shows, per time: the drop without compensation, the share of it GDC
    recovers, and GDC + AdaBS against GDC alone (mean and per chip)."""
    if not {"none", "gdc", "gdc+adabs"} <= set(by):
        return []
    none, gdc, ada = by["none"], by["gdc"], by["gdc+adabs"]
    lines = ["What it shows (points are percentage points of accuracy):", "",
             "| time | drop without compensation | share of the drop GDC recovers "
             "| GDC + AdaBS minus GDC | chips where GDC + AdaBS < GDC |", "| --- | --- | --- | --- | --- |"]
    for i, t in enumerate(times_s):
        chips = [k for k in range(len(none.per_seed)) if len(ada.per_seed[k]) > i]
        if not chips:
            continue
        drop = fp32 - none.mean[i]
        share = (gdc.mean[i] - none.mean[i]) / drop if drop > 0 else float("nan")
        worse = sum(ada.per_seed[k][i] < gdc.per_seed[k][i] for k in chips)
        lines.append(f"| {TIME_LABELS.get(t, f'{t:g} s')} | {100 * drop:.2f} | {100 * share:.1f}% "
                     f"| {100 * (ada.mean[i] - gdc.mean[i]):+.2f} | {worse} of {len(chips)} |")
    return lines + [""]


def previous_table(result: AccuracyResult, previous: dict | None) -> list[str]:
    """The mean accuracies of an earlier run (its saved JSON) beside this run's, per time and
    compensation, with the difference in points."""
    if not previous:
        return []
    old = AccuracyResult.from_dict(previous["accuracy"])
    old_by = {(s.mapping, s.compensation): s for s in old.series}
    lines = [f"## Against the earlier run ({previous.get('label', 'previous model')})", "",
             "Earlier: " + read_model_line(old.to_dict()), "",
             "Now: " + read_model_line(result.to_dict()), "",
             "| time | compensation | earlier | now | now - earlier |", "| --- | --- | --- | --- | --- |"]
    for s in result.series:
        o = old_by.get((s.mapping, s.compensation))
        if o is None:
            continue
        for i, t in enumerate(result.times_s):
            if t not in old.times_s or i >= len(s.mean) or s.mean[i] != s.mean[i]:
                continue
            j = old.times_s.index(t)
            lines.append(f"| {TIME_LABELS.get(t, f'{t:g} s')} | {s.compensation} "
                         f"| {100 * o.mean[j]:.2f} ± {100 * o.std[j]:.2f} "
                         f"| {100 * s.mean[i]:.2f} ± {100 * s.std[i]:.2f} "
                         f"| {100 * (s.mean[i] - o.mean[j]):+.2f} |")
    if previous.get("explanation"):
        lines += ["", previous["explanation"]]
    return lines + [""]


def table(result: AccuracyResult, settings: dict, elapsed_s: float, planned_seeds: int,
          previous: dict | None = None) -> str:
    lines = ["# ResNet-32 / CIFAR-10 on the hybrid PCM chip: accuracy vs. time", "",
             f"FP32 reference (same images, digital): **{100 * result.fp32:.2f}%**", "",
             read_model_line(result.to_dict()), "",
             f"Programmed chips (seeds) finished: **{result.seeds} of {planned_seeds}**"
             + ("" if result.seeds == planned_seeds else " (partial run: the rest did not finish)"),
             "", "Top-1 accuracy in %, mean ± std over the programmed chips:", ""]
    for s_map in sorted({s.mapping for s in result.series}):
        series = [s for s in result.series if s.mapping == s_map]
        header = ("| time after programming | " + " | ".join(s.compensation for s in series)
                  + " | chips |")
        lines += [f"Mapping `{s_map}`:", "", header,
                  "|" + " --- |" * (len(series) + 2)]
        for i, t in enumerate(result.times_s):
            done = sum(len(r) > i for r in series[0].per_seed)
            cells = [f"{100 * s.mean[i]:.2f} ± {100 * s.std[i]:.2f}" if done else "not run"
                     for s in series]
            lines.append(f"| {TIME_LABELS.get(t, f'{t:g} s')} | " + " | ".join(cells)
                         + f" | {done} |")
        lines.append("")
        lines += findings(result.fp32, result.times_s, {s.compensation: s for s in series})
        lines += ["Per chip (seed), % :", ""]
        for s in series:
            for k, row in enumerate(s.per_seed):
                lines.append(f"- {s.compensation}, chip {k}: "
                             + ", ".join(f"{100 * v:.2f}" for v in row))
        lines.append("")
    lines += previous_table(result, previous)
    adc = adc_table(result.to_dict(), "github")
    if adc:
        lines += ["## ADC conversions", "", "Share of the test passes' conversions per analog layer "
                  "that clipped at the ADC bound and that read zero:", "", adc, ""]
    lines += ["## Settings", ""] + [f"- {k}: {v}" for k, v in settings.items()]
    lines += [f"- wall time{'' if result.seeds == planned_seeds else ' so far'}: "
              f"{elapsed_s / 60:.1f} min", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chip", default=str(REPO / "configs" / "pcm_hybrid.yaml"))
    ap.add_argument("--workload", default=str(REPO / "workloads" / "resnet32_cifar10.yaml"))
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--images", type=int, default=10000,
                    help="N test images, evenly spaced over the (class-sorted) test file")
    ap.add_argument("--calib-images", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--out", default=str(REPO / "reports" / "accuracy_resnet32_hybrid.md"))
    ap.add_argument("--render", metavar="JSON", type=Path,
                    help="only rewrite the .md and .png of an earlier run from its .json")
    ap.add_argument("--previous", metavar="JSON", type=Path,
                    help="an earlier run's .json: its means are tabled beside this run's (with "
                         "--previous-label and --previous-explanation for the report)")
    ap.add_argument("--previous-label", default="previous model")
    ap.add_argument("--previous-explanation", default="")
    args = ap.parse_args(argv)
    if args.render:
        return render(args.render)
    previous = None
    if args.previous:
        previous = {"accuracy": json.loads(args.previous.read_text())["accuracy"],
                    "label": args.previous_label, "explanation": args.previous_explanation}

    chip = load_chip(args.chip)
    wl = load_workload(args.workload)
    params = wl.load_params()
    test = wl.dataset("test")
    if args.images < len(test):
        test = test.subset(np.arange(0, len(test), len(test) / args.images).astype(np.int64)[:args.images])
    calib = wl.dataset("train")
    mapping = map_network(chip, wl.network)
    tiles = chip.chip.tiles
    settings = {
        "chip": f"{args.chip} (mapping policy {chip.mapping.policy}; "
                f"{sum(lm.analog for lm in mapping.layers)} of {len(mapping.layers)} matrix layers analog, "
                f"{mapping.arrays_needed} arrays of {tiles.array.rows}x{tiles.array.cols})",
        "workload": f"{args.workload} (weights {wl.spec.weights})",
        "test images": f"{len(test)} from {Path(test.source).name}"
                       + ("" if len(test) == 10000 else " (evenly spaced subset: equal share of each class)"),
        "calibration (AdaBS)": f"{min(args.calib_images, len(calib))} images drawn at random from "
                               f"{Path(calib.source).name} (training split)",
        "DAC / ADC": f"{tiles.dac.bits}-bit / {tiles.adc.bits}-bit, ADC range {tiles.adc.range} "
                     + (f"(bound {tiles.adc.output_bound} normalized units)" if tiles.adc.range == "fixed"
                        else f"(per-layer bound at the {tiles.adc.range_percentile}th percentile of "
                             f"{tiles.calibration.range_images} calibration images)")
                     + f", ADC output noise {tiles.adc.output_noise} (normalized units)",
        "reads": f"read noise {chip.chip.device.read_noise}, GDC readout "
                 f"{tiles.calibration.gdc_readout}, {tiles.array.devices_per_weight} devices per weight",
        "device": f"{chip.chip.device.model}, g_max {chip.chip.device.g_max_us} uS, t0 "
                  f"{chip.chip.device.t0_s} s, weight scaling {chip.chip.device.weight_scaling}",
        "GDC calibration input": tiles.calibration.gdc_input,
        "times after programming (s)": ", ".join(f"{t:g}" for t in DEFAULT_TIMES_S),
        "compensations": ", ".join(COMPENSATIONS),
        "base seed": args.seed,
        "command": "python benchmarks/accuracy_resnet32.py " + " ".join(argv or sys.argv[1:]),
    }
    start = time.perf_counter()
    out = Path(args.out)

    def write(result: AccuracyResult) -> None:
        write_outputs(out, result, settings, time.perf_counter() - start, args.seeds, previous)

    result = evaluate_accuracy([mapping], params, test, calib=calib, calib_images=args.calib_images,
                               seeds=args.seeds, seed=args.seed, batch_size=args.batch_size,
                               on_progress=write)
    write(result)
    print(out.read_text())
    return 0


def write_outputs(out: Path, result: AccuracyResult, settings: dict, elapsed_s: float,
                  planned_seeds: int, previous: dict | None = None) -> None:
    """``out`` (Markdown) and, beside it, the same numbers as JSON and the plot as PNG."""
    atomic_write_text(out, table(result, settings, elapsed_s, planned_seeds, previous))
    atomic_write_text(out.with_suffix(".json"), json.dumps(
        {"accuracy": result.to_dict(), "planned_seeds": planned_seeds, "settings": settings,
         "wall_time_s": elapsed_s, "previous": previous}, indent=1) + "\n")
    png = accuracy_plot(result.to_dict(), f"ResNet-32 / CIFAR-10, {result.images} test images, "
                                          f"{result.seeds} chips")
    if png is not None:
        atomic_write_bytes(out.with_suffix(".png"), png)
    print(f"[{time.strftime('%H:%M:%S')}] {result.seeds} chip(s) finished -> {out}: "
          + "; ".join(f"{s.compensation} " + " ".join(f"{100 * v:.2f}" for v in s.mean)
                      for s in result.series), flush=True)


def render(json_path: Path) -> int:
    """Rewrite the Markdown and PNG of a finished (or partial) run from its JSON."""
    saved = json.loads(json_path.read_text())
    result = AccuracyResult.from_dict(saved["accuracy"])
    write_outputs(json_path.with_suffix(".md"), result, saved["settings"], saved["wall_time_s"],
                  saved["planned_seeds"], saved.get("previous"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
