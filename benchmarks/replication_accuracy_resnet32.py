"""Accuracy with and without weight replication: ResNet-32 / CIFAR-10 on the hybrid PCM chip, the
non-replicated mapping (``mapping.replication: none``) against the balanced one (``auto``, copies
packed into arrays), same chips, same images, same times (issue 15).

    python benchmarks/replication_accuracy_resnet32.py [--images 2000] [--seeds 3] [--times 1d]
        [--calib-images 1000] [--out reports/replication_accuracy_resnet32.md]

Both mappings program chip k from the same stream tree (``functional.chip_streams``): copy 0 of
every layer gets the same devices in both, the extra copies of the replicated mapping their own.
What a copy changes is which programmed devices compute which output pixel, so the question is
whether the replicated chip's accuracy lies within the chip-to-chip spread of the
non-replicated one. The report gives, per compensation and time, mean ± std over the chips, each
chip, the difference of the means and where the replicated mean falls against the spread (std and
min..max) of the non-replicated chips. A JSON file beside the Markdown holds the numbers. Needs
../shared/data (or $ARCHSIM_DATA). ``--images 200 --seeds 1`` checks that it runs (~1 min).

``--control N``: only a control experiment on N test images, GDC at the first time: per chip, the
one-copy mapping, the replicated one, and the replicated one with every copy given copy 0's
devices (same programming noise and drift; reads stay per copy). If independent programming of
the copies is what changes the accuracy, the third matches the first.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
if (REPO.parent / "shared" / "data").is_dir():
    os.environ.setdefault("ARCHSIM_DATA", str(REPO.parent / "shared" / "data"))

from archsim.atomic import atomic_write_text  # noqa: E402
from archsim import functional as F  # noqa: E402
from archsim.functional import COMPENSATIONS, evaluate_accuracy  # noqa: E402
from archsim.mapping import map_network  # noqa: E402
from archsim.report import format_time_s  # noqa: E402
from archsim.simulate import accuracy_inputs, load  # noqa: E402

TIME_UNITS_S = {"s": 1.0, "h": 3600.0, "d": 86400.0, "mo": 2592000.0, "y": 31536000.0}
VARIANTS = (("none", {"mapping.replication": "none"}),
            ("auto", {"mapping.replication": "auto", "mapping.packing": "copies"}))


def parse_time(text: str) -> float:
    """``25s``, ``1h``, ``1d``, ``1mo``, ``1y`` or plain seconds."""
    text = text.strip()
    for unit in sorted(TIME_UNITS_S, key=len, reverse=True):
        if text.endswith(unit):
            return float(text[:-len(unit)]) * TIME_UNITS_S[unit]
    return float(text)


def run(args) -> dict:
    results = {}
    inputs = None
    for label, overrides in VARIANTS:
        chip, wl = load(args.chip, args.workload, overrides=overrides)
        mapping = map_network(chip, wl.network)
        if inputs is None:
            inputs = accuracy_inputs(wl, test_images=args.images, calib_images=args.calib_images,
                                     seed=args.seed)
        start = time.perf_counter()
        acc = evaluate_accuracy([mapping], inputs.params, inputs.test, calib=inputs.calib,
                                calib_images=args.calib_images, times_s=args.times,
                                seeds=args.seeds, seed=args.seed, progress=not args.quiet)
        results[label] = {
            "accuracy": acc.to_dict(), "wall_s": time.perf_counter() - start,
            "arrays": mapping.arrays_needed, "copies": sum(lm.copies for lm in mapping.analog_layers),
            "plan": mapping.plan.lines() if mapping.plan else []}
    return results


def cloned_copies(chip: F.ProgrammedChip, streams) -> F.ProgrammedChip:
    """``chip`` with every copy of a replicated layer on copy 0's devices (its GDC baselines read
    again)."""
    layers = {key: (dataclasses.replace(chip.layers[pl.name], copy=pl.copy,
                                        array_index=pl.array_index) if pl.copy else pl)
              for key, pl in chip.layers.items()}
    chip = dataclasses.replace(chip, layers=layers)
    base = streams.child("baseline")
    levels = chip.gdc_levels(chip.state_at(0.0, base), base)
    return dataclasses.replace(chip, layers={n: dataclasses.replace(pl, gdc_baseline=levels[n])
                                             for n, pl in chip.layers.items()})


def control(args) -> list[dict]:
    chip, wl = load(args.chip, args.workload, overrides=dict(VARIANTS)["auto"])
    inputs = accuracy_inputs(wl, test_images=args.control, calib_images=0, calibration=False)
    rows = []
    for k in range(args.seeds):
        row = {"chip": k}
        for label in ("none", "auto", "auto, copies on copy 0's devices"):
            overrides = dict(VARIANTS)["none" if label == "none" else "auto"]
            mapping = map_network(load(args.chip, args.workload, overrides=overrides)[0],
                                  wl.network)
            streams = F.chip_streams(args.seed, mapping.chip.mapping.policy, k)
            programmed = F.program_chip(mapping, inputs.params, streams)
            if label.startswith("auto,"):
                programmed = cloned_copies(programmed, streams)
            ts = streams.child("time", 0)
            row[label] = F.test_pass(programmed.at(args.times[0], ts), inputs.test, ts, "gdc")
        rows.append(row)
        print(row, flush=True)
    return rows


def verdicts(results: dict) -> list[dict]:
    """Per (compensation, time): the two means, the non-replicated chips' spread, and whether the
    replicated mean lies within it."""
    base, rep = results["none"]["accuracy"], results["auto"]["accuracy"]
    out = []
    by = {s["compensation"]: s for s in rep["series"]}
    for s in base["series"]:
        r = by[s["compensation"]]
        for i, t in enumerate(base["times_s"]):
            chips = [row[i] for row in s["per_seed"]]
            diff = r["mean"][i] - s["mean"][i]
            out.append({"compensation": s["compensation"], "t_s": t,
                        "none_mean": s["mean"][i], "none_std": s["std"][i],
                        "none_min": min(chips), "none_max": max(chips),
                        "auto_mean": r["mean"][i], "auto_std": r["std"][i],
                        "auto_chips": [row[i] for row in r["per_seed"]], "none_chips": chips,
                        "difference": diff,
                        "within_std": abs(diff) <= s["std"][i],
                        "within_range": min(chips) <= r["mean"][i] <= max(chips)})
    return out


def markdown(results: dict, rows: list[dict], settings: dict) -> str:
    base = results["none"]["accuracy"]
    lines = ["# ResNet-32 on the hybrid PCM chip: accuracy with and without weight replication", "",
             f"{base['images']} test images, {base['seeds']} programmed chips per mapping, "
             f"{base['calib_images']} AdaBS calibration images; FP32 {100 * base['fp32']:.2f}%. "
             "Top-1 accuracy in %.", ""]
    for label in ("none", "auto"):
        r = results[label]
        lines += [f"- `replication: {label}`: {r['copies']} copies on {r['arrays']} arrays"]
        lines += [f"  - {x}" for x in r["plan"]]
    lines += ["", "| compensation | time | none: mean ± std (chips) | auto: mean ± std (chips) "
                  "| auto - none | within none's std | within none's min..max |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for v in rows:
        lines.append(
            f"| {v['compensation']} | {format_time_s(v['t_s'])} "
            f"| {100 * v['none_mean']:.2f} ± {100 * v['none_std']:.2f} "
            f"({', '.join(f'{100 * c:.2f}' for c in v['none_chips'])}) "
            f"| {100 * v['auto_mean']:.2f} ± {100 * v['auto_std']:.2f} "
            f"({', '.join(f'{100 * c:.2f}' for c in v['auto_chips'])}) "
            f"| {100 * v['difference']:+.2f} | {'yes' if v['within_std'] else 'no'} "
            f"| {'yes' if v['within_range'] else 'no'} |")
    lines += ["", "## Settings", ""] + [f"- {k}: {v}" for k, v in settings.items()] + [""]
    return "\n".join(lines)


def shown(path: str) -> str:
    """A path as the report shows it: relative to the repository when inside it."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chip", default=str(REPO / "configs" / "pcm_hybrid.yaml"))
    ap.add_argument("--workload", default=str(REPO / "workloads" / "resnet32_cifar10.yaml"))
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--times", default="1d")
    ap.add_argument("--calib-images", type=int, default=1000)
    ap.add_argument("--out", default=str(REPO / "reports" / "replication_accuracy_resnet32.md"))
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--control", type=int, metavar="N", default=0,
                    help="only the control experiment (copies on copy 0's devices), N images")
    args = ap.parse_args(argv)
    args.times = tuple(parse_time(t) for t in args.times.split(","))
    if args.control:
        rows = control(args)
        labels = [k for k in rows[0] if k != "chip"]
        print(f"GDC at {args.times[0]:g} s, {args.control} test images, accuracy %:")
        for label in labels:
            print(f"  {label}: " + ", ".join(f"{100 * r[label]:.2f}" for r in rows))
        return 0
    start = time.perf_counter()
    results = run(args)
    rows = verdicts(results)
    settings = {"chip": shown(args.chip), "workload": shown(args.workload),
                "base seed": args.seed, "compensations": ", ".join(COMPENSATIONS),
                "wall time": f"{(time.perf_counter() - start) / 60:.1f} min",
                "command": "python benchmarks/replication_accuracy_resnet32.py "
                           + " ".join(argv if argv is not None else sys.argv[1:])}
    out = Path(args.out)
    atomic_write_text(out, markdown(results, rows, settings))
    atomic_write_text(out.with_suffix(".json"), json.dumps(
        {"results": results, "comparison": rows, "settings": settings}, indent=1) + "\n")
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
