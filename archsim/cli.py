"""The ``archsim`` command line. Thin: parse, call :mod:`archsim.simulate`, print.

Every user error (an :class:`ArchsimError`) ends as one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys

import yaml

from . import simulate
from .errors import ArchsimError, ConfigError

TIME_UNITS_S = {"s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0, "mo": 2592000.0, "y": 31536000.0}


def _parse_set(items: list[str] | None) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError("--set", item, "expected PATH=VALUE, e.g. chip.tiles.dac.phases=4")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def _parse_times(text: str | None) -> tuple[float, ...] | None:
    """``25s,1h,1d,1mo,1y`` (plain numbers are seconds)."""
    if text is None:
        return None
    out = []
    for item in text.split(","):
        item = item.strip()
        unit = next((u for u in sorted(TIME_UNITS_S, key=len, reverse=True)
                     if item.endswith(u) and item[:-len(u)].replace(".", "", 1).isdigit()), None)
        try:
            value = float(item[:-len(unit)]) * TIME_UNITS_S[unit] if unit else float(item)
        except ValueError:
            value = -1.0
        if value <= 0:
            raise ConfigError("--times", item, "expected positive times such as 25s,1h,1d,1mo,1y")
        out.append(value)
    return tuple(out)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _add_chip_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", metavar="PATH=VALUE",
                   help="override a chip field, e.g. --set chip.tiles.dac.phases=4 (repeatable)")
    p.add_argument("--mapping", choices=("hybrid", "all-digital", "all-analog"),
                   help="mapping policy (default: the chip file's mapping.policy)")
    p.add_argument("--data", metavar="DIR", help="folder with weights and datasets "
                                                 "(else $ARCHSIM_DATA, then ~/.cache/archsim)")


def _add_sim_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--times", metavar="LIST", help="times after programming, e.g. 25s,1h,1d,1mo,1y")
    p.add_argument("--seeds", type=_positive_int, default=3, help="programmed chips (default 3)")
    p.add_argument("--calib-images", type=int, default=1000,
                   help="AdaBS calibration images from the training split (default 1000)")
    p.add_argument("--test-images", type=_positive_int, help="use N test images, evenly spaced over the test set")
    p.add_argument("--inferences", type=_positive_int, default=4,
                   help="inferences in flight in the timing simulation (default 4)")
    p.add_argument("--no-accuracy", action="store_true", help="skip the functional simulation")
    p.add_argument("--weights", metavar="FILE", help="weights .npz instead of the workload's")
    p.add_argument("--dataset", metavar="NAME", help="dataset for the accuracy: digits, cifar10 "
                   "or a workload YAML whose dataset section to use (needed for a .onnx model)")
    p.add_argument("--seed", type=int, default=0, help="base seed of the run (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress display")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="archsim", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="simulate a workload on a chip (no arguments: the embedded "
                                   "default, pcm_hybrid x digits_cnn)")
    p.add_argument("chip", nargs="?", help="chip YAML or shipped name (default: pcm_hybrid)")
    p.add_argument("workload", nargs="?", help="workload YAML, shipped name or .onnx model "
                                               "(default: digits_cnn)")
    p.add_argument("--out", metavar="DIR", help="write report.json, report.md, layers.csv, plots")
    p.add_argument("--accuracy-mappings", metavar="LIST",
                   help="mapping policies to evaluate accuracy for, e.g. hybrid,all-analog "
                        "(default: the run's policy)")
    _add_chip_options(p)
    _add_sim_options(p)

    p = sub.add_parser("compare", help="two chips side by side on one workload, with ratios")
    p.add_argument("chip_a")
    p.add_argument("chip_b")
    p.add_argument("workload", nargs="?", help="workload YAML, shipped name or .onnx model "
                                               "(default: digits_cnn)")
    p.add_argument("--out", metavar="DIR", help="write compare.md, compare.json, CSVs, plots")
    _add_chip_options(p)
    _add_sim_options(p)

    p = sub.add_parser("map", help="print how a workload is placed on a chip")
    p.add_argument("chip", nargs="?", help="chip YAML (default: the shipped pcm_hybrid)")
    p.add_argument("workload", nargs="?", help="workload YAML or .onnx model (default: digits_cnn)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_chip_options(p)

    p = sub.add_parser("train", help="noise-injection (hardware-aware) training")
    p.add_argument("workload", nargs="?", help="workload YAML or shipped name (default: digits_cnn)")
    p.add_argument("--noise", type=float, default=0.038, metavar="ETA",
                   help="weight noise eta, relative to max|W| per layer (default 0.038; 0 = off)")
    p.add_argument("--clip", type=float, default=2.5, metavar="ALPHA",
                   help="clip weights to +-ALPHA*std(W) after each step (default 2.5; 0 = off)")
    p.add_argument("--epochs", type=_positive_int, default=10)
    p.add_argument("--lr", type=float, default=0.05, help="initial learning rate (default 0.05)")
    p.add_argument("--batch-size", type=_positive_int, default=64)
    p.add_argument("--schedule", choices=("cosine", "step"), default="cosine")
    p.add_argument("--max-images", type=_positive_int, help="train on the first N images only")
    p.add_argument("--init", metavar="FILE",
                   help="fine-tune from these weights (.npz); without it, train from scratch")
    p.add_argument("--out", metavar="FILE", required=True, help="weights file to write (.npz)")
    p.add_argument("--checkpoint", metavar="DIR",
                   help="write the whole training state to DIR/checkpoint.npz at the end of every "
                        "epoch (weights, momentum, step, random streams, options)")
    p.add_argument("--resume", metavar="DIR",
                   help="continue the run checkpointed in DIR (same options; checkpoints keep "
                        "going to DIR unless --checkpoint names another folder)")
    p.add_argument("--stop-after", type=_positive_int, metavar="EPOCH",
                   help="stop after this epoch (with --checkpoint/--resume: continue later)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", metavar="DIR")
    p.add_argument("--dataset", metavar="NAME", help="digits, cifar10 or a workload YAML (for a "
                                                     ".onnx model)")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("regress", help="check cycle counts against a golden file")
    p.add_argument("chip")
    p.add_argument("workload")
    p.add_argument("--golden", required=True, metavar="FILE")
    p.add_argument("--update", action="store_true", help="(re)write the golden file")
    p.add_argument("--tolerance", type=float, default=0.0,
                   help="relative tolerance, e.g. 0.01 for 1%% (default: exact)")
    p.add_argument("--inferences", type=_positive_int,
                   help="inferences in flight (default: the golden file's)")
    _add_chip_options(p)

    p = sub.add_parser("sweep", help="design-space sweep on Dask: one task per point, a results "
                                     "table that resumes, Pareto table and plots")
    p.add_argument("sweep", nargs="?", help="sweep YAML or shipped name (configs/sweeps/)")
    p.add_argument("--out", metavar="DIR", help="results folder (default: out/<sweep name>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the sweep in --out: run only the points not in its table")
    p.add_argument("--report", metavar="DIR",
                   help="re-render the report of DIR/results.csv (runs nothing)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="a running Dask scheduler, tcp://HOST:PORT or a scheduler file "
                        "(default: a LocalCluster, one worker process per core)")
    p.add_argument("--workers", type=_positive_int,
                   help="worker processes of the LocalCluster (default: one per core)")
    p.add_argument("--retries", type=int, default=1,
                   help="reruns of a point that raised an internal error (default 1)")
    p.add_argument("--no-accuracy", action="store_true",
                   help="timing, energy and area only, for every point")
    p.add_argument("--data", metavar="DIR", help="folder with weights and datasets "
                                                 "(else $ARCHSIM_DATA, then ~/.cache/archsim)")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv or ["run"])
    try:
        return _dispatch(args)
    except ArchsimError as exc:
        print(f"archsim: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("archsim: interrupted", file=sys.stderr)
        return 130


def _run_kwargs(args, overrides) -> dict:
    return dict(overrides=overrides, policy=args.mapping, data_dir=args.data,
                accuracy=not args.no_accuracy, times_s=_parse_times(args.times), seeds=args.seeds,
                calib_images=args.calib_images, test_images=args.test_images,
                inferences=args.inferences, seed=args.seed, weights=args.weights,
                progress=not args.quiet, dataset=args.dataset)


def _dispatch(args) -> int:
    from . import report as rep
    if args.command == "map":
        mapping = simulate.load_mapping(args.chip, args.workload, overrides=_parse_set(args.set),
                                        policy=args.mapping, data_dir=args.data)
        if args.json:
            print(json.dumps(mapping.to_dict(), indent=2))
        else:
            print(simulate.mapping_table(mapping))
        return 0
    if args.command == "run":
        policies = None
        if args.accuracy_mappings:
            policies = [p.strip() for p in args.accuracy_mappings.split(",")]
            bad = [p for p in policies if p not in ("hybrid", "all-analog", "all-digital")]
            if bad:
                raise ConfigError("--accuracy-mappings", bad[0],
                                  "expected hybrid, all-analog or all-digital")
        result = simulate.run(args.chip, args.workload, accuracy_policies=policies,
                              **_run_kwargs(args, _parse_set(args.set)))
        report = result.report()
        print(rep.terminal_report(report))
        if args.out:
            for path in rep.write_report(report, args.out):
                print(f"wrote {path}", file=sys.stderr)
        return 0
    if args.command == "compare":
        kwargs = _run_kwargs(args, _parse_set(args.set))
        a, b = simulate.compare(args.chip_a, args.chip_b, args.workload, **kwargs).reports()
        print(rep.compare_table(a, b))
        if args.out:
            for path in rep.write_compare(a, b, args.out):
                print(f"wrote {path}", file=sys.stderr)
        return 0
    if args.command == "train":
        return _train(args)
    if args.command == "sweep":
        return _sweep(args)
    if args.command == "regress":
        from .regress import check_cycles
        result = check_cycles(args.chip, args.workload, args.golden, tolerance=args.tolerance,
                              update=args.update, inferences=args.inferences,
                              overrides=_parse_set(args.set), policy=args.mapping)
        print(result.summary())
        return 0 if (result.ok or args.update) else 1
    raise AssertionError(args.command)


def _sweep(args) -> int:
    """Exit status: 0 every point finished, 1 the sweep ran but some points recorded an error
    (in their rows), 2 bad input (nothing ran)."""
    from pathlib import Path

    from . import sweep
    if args.report:
        files = sweep.write_report(args.report)
        print(sweep.terminal_summary(args.report))
        for path in files:
            print(f"wrote {path}", file=sys.stderr)
        return 0
    if not args.sweep:
        raise ConfigError("sweep", "", "expected a sweep file (or a shipped name such as "
                                       "adc_bits_x_array), or --report DIR")
    spec = sweep.load_sweep(args.sweep, data_dir=args.data,
                            accuracy=False if args.no_accuracy else None)
    out = Path(args.out) if args.out else Path("out") / spec.name
    outcome = sweep.run_sweep(spec, out, scheduler=args.scheduler, workers=args.workers,
                              resume=args.resume, retries=args.retries, progress=not args.quiet)
    print(sweep.terminal_summary(out))
    for path in [outcome.table, *outcome.files]:
        print(f"wrote {path}", file=sys.stderr)
    return 1 if outcome.failed else 0


def _train(args) -> int:
    from . import training
    from .workloads import load_workload, save_weights

    wl = load_workload(args.workload, args.data, args.dataset)
    # without --init: from scratch, He-normal weights drawn from the training seed
    params = wl.load_params(wl.find(args.init)) if args.init else None
    config = training.TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                                  schedule=args.schedule, noise_eta=args.noise,
                                  clip_alpha=args.clip or None, seed=args.seed,
                                  max_images=args.max_images)
    if args.stop_after is not None and not (args.checkpoint or args.resume):
        raise training.TrainingError("--stop-after needs --checkpoint DIR (or --resume DIR) to "
                                     "continue from")
    params, history = training.train(wl.network, params, wl.dataset("train"), config,
                                     progress=not args.quiet, checkpoint=args.checkpoint,
                                     resume=args.resume, stop_after=args.stop_after)
    if len(history) < config.epochs:
        folder = args.checkpoint or args.resume
        print(f"stopped after epoch {len(history)} of {config.epochs}; continue with the same "
              f"options and --resume {folder}")
        return 0
    accuracy = training.evaluate_fp32(wl.network, params, wl.dataset("test"))
    save_weights(params, args.out)
    last = history[-1]
    print(f"trained {wl.name}: {len(history)} epochs, final loss {last.loss:.4f}, train accuracy "
          f"{100 * last.train_accuracy:.2f}%, FP32 test accuracy {100 * accuracy:.2f}%; "
          f"wrote {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
