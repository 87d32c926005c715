"""The archsim command line. Thin: parse, call archsim.simulate, print.

Exit statuses (archsim.errors): 0 ok; 1 a cycle count moved (regress only); 2 bad input (one line
on stderr naming the file, option or value); 3 internal error (one line naming a log file with the
traceback); 130 interrupted (Ctrl-C), 143 terminated (SIGTERM). Inputs and outputs are checked
before any simulation starts; output sets are written all or nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import re
import signal
import sys
import tempfile
import traceback

from . import __version__
from .errors import (EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, EXIT_REGRESSION,
                     ArchsimError, ConfigError, OptionError)

DESCRIPTION = ("Cycle-level simulator of hybrid digital/analog (PCM) AI accelerators: accuracy, "
               "energy, latency, area and cycle counts of a network on a chip described in YAML.")
EPILOG = ("Exit status: 0 ok, 1 a cycle count moved (regress), 2 bad input, 3 internal error "
          "(a bug: the message names a log file), 130 interrupted.")
TIME_UNITS_S = {"s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0, "mo": 2592000.0, "y": 31536000.0}
_TIME = re.compile(r"^([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(s|min|h|d|mo|y)?$")
POLICIES = ("hybrid", "all-digital", "all-analog")


# ------------------------------------------------------------------------------------------
# Argument types: every message says what was expected and what was given
# ------------------------------------------------------------------------------------------

def _int_type(lo: int, hi: int | None = None):
    expected = f"an integer {lo}..{hi:,}" if hi is not None else (
        "a positive integer" if lo == 1 else f"an integer >= {lo}")

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    return parse


def _float_type(lo: float, hi: float | None = None, *, lo_open: bool = False, what: str = ""):
    relation = ">" if lo_open else ">="
    expected = what or (f"a number {relation} {lo:g}" + (f" and <= {hi:g}" if hi is not None else ""))

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if (not math.isfinite(value) or value < lo or (lo_open and value == lo)
                or (hi is not None and value > hi)):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    return parse


def parse_times(text: str) -> tuple[float, ...]:
    """``25s,1h,1d,1mo,1y`` (plain numbers are seconds) -> seconds, each finite and > 0, sorted,
    each once."""
    out = []
    for item in text.split(","):
        m = _TIME.match(item.strip())
        value = float(m.group(1)) * TIME_UNITS_S[m.group(2) or "s"] if m else -1.0
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(
                f"expected times after programming such as 25s,1h,1d,1mo,1y (units s, min, h, d, "
                f"mo, y; > 0), got {item.strip()!r}")
        out.append(value)
    return tuple(sorted(set(out)))     # accuracy vs time: in time order, each time once


def _parse_set(items: list[str] | None) -> dict:
    """``--set PATH=VALUE`` arguments; errors name ``--set`` and the argument as typed."""
    from .config import SetArguments
    return SetArguments.parse(items)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``archsim run: error: ... (see archsim run --help)``)."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_chip_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", metavar="PATH=VALUE",
                   help="override a chip field, e.g. --set chip.tiles.dac.phases=4; repeatable "
                        "(default: none)")
    p.add_argument("--mapping", choices=POLICIES,
                   help="mapping policy (default: the chip file's mapping.policy)")
    p.add_argument("--data", metavar="DIR", help="folder with weights and datasets (default: "
                                                 "$ARCHSIM_DATA, then ~/.cache/archsim)")


def _add_sim_options(p: argparse.ArgumentParser) -> None:
    from .simulate import MAX_INFERENCES
    p.add_argument("--times", metavar="LIST", type=parse_times,
                   help="times after programming (units s, min, h, d, mo, y) "
                        "(default: 25s,1h,1d,1mo,1y)")
    p.add_argument("--seeds", type=_int_type(1), default=3, metavar="N",
                   help="programmed chips: each gets its own programming noise and drift "
                        "(default: 3)")
    p.add_argument("--calib-images", type=_int_type(0), default=1000, metavar="N",
                   help="AdaBS calibration images from the training split (default: 1000; 0 = "
                        "no AdaBS). Cost: for every programmed chip and time, N more images "
                        "through the analog network, on top of 3 passes over the test images "
                        "(no compensation, GDC, GDC + AdaBS)")
    p.add_argument("--test-images", type=_int_type(1), metavar="N",
                   help="use N test images, evenly spaced over the test set (default: all)")
    p.add_argument("--inferences", type=_int_type(1, MAX_INFERENCES), default=4, metavar="N",
                   help="inferences in flight in the timing simulation (default: 4)")
    p.add_argument("--no-accuracy", action="store_true",
                   help="skip the functional (accuracy) simulation (default: run it)")
    p.add_argument("--weights", metavar="FILE",
                   help="weights .npz instead of the workload's (default: the workload's)")
    p.add_argument("--dataset", metavar="NAME",
                   help="dataset for the accuracy of a bare .onnx model: digits, cifar10 or a "
                        "workload YAML whose dataset section to use (default: the workload's)")
    p.add_argument("--seed", type=_int_type(0), default=0, metavar="N",
                   help="base seed of the run (default: 0)")
    p.add_argument("--quiet", action="store_true", help="no progress display (default: show it)")


def build_parser() -> argparse.ArgumentParser:
    from .simulate import MAX_INFERENCES
    parser = _Parser(prog="archsim", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"archsim {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND",
                                help="default: run (the embedded default, pcm_hybrid x digits_cnn)")

    p = sub.add_parser("run", help="simulate a workload on a chip (no arguments: the embedded "
                                   "default, pcm_hybrid x digits_cnn)",
                       description="Simulate a workload on a chip: accuracy vs time after "
                                   "programming, timing, energy and area.", epilog=EPILOG)
    p.add_argument("chip", nargs="?", help="chip YAML or shipped name (default: pcm_hybrid)")
    p.add_argument("workload", nargs="?", help="workload YAML, shipped name or .onnx model "
                                               "(default: digits_cnn)")
    p.add_argument("--out", metavar="DIR",
                   help="write report.json, report.md, layers.csv and plots into DIR, replacing "
                        "an earlier report there as a whole (default: print only)")
    p.add_argument("--accuracy-mappings", metavar="LIST",
                   help="mapping policies to evaluate accuracy for, e.g. hybrid,all-analog "
                        "(default: the run's policy)")
    _add_chip_options(p)
    _add_sim_options(p)

    p = sub.add_parser("compare", help="two chips side by side on one workload, with ratios",
                       description="Two chips side by side on one workload, with ratios A / B.",
                       epilog=EPILOG)
    p.add_argument("chip_a", help="chip A: YAML or shipped name (required)")
    p.add_argument("chip_b", help="chip B: YAML or shipped name (required)")
    p.add_argument("workload", nargs="?", help="workload YAML, shipped name or .onnx model "
                                               "(default: digits_cnn)")
    p.add_argument("--out", metavar="DIR",
                   help="write compare.md, compare.json, CSVs and plots into DIR, replacing an "
                        "earlier comparison there as a whole (default: print only)")
    _add_chip_options(p)
    _add_sim_options(p)

    p = sub.add_parser("map", help="print how a workload is placed on a chip",
                       description="Print how a workload is placed on a chip.", epilog=EPILOG)
    p.add_argument("chip", nargs="?", help="chip YAML or shipped name (default: pcm_hybrid)")
    p.add_argument("workload", nargs="?", help="workload YAML, shipped name or .onnx model "
                                               "(default: digits_cnn)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table "
                                                       "(default: a table)")
    _add_chip_options(p)

    p = sub.add_parser("train", help="noise-injection (hardware-aware) training",
                       description="Noise-injection (hardware-aware) training of a workload's "
                                   "network; writes a weights .npz.", epilog=EPILOG)
    p.add_argument("workload", nargs="?", help="workload YAML, shipped name or .onnx model "
                                               "(default: digits_cnn)")
    p.add_argument("--noise", type=_float_type(0, 10), default=0.038, metavar="ETA",
                   help="weight noise eta, relative to max|W| per layer (default: 0.038; 0 = off)")
    p.add_argument("--clip", type=_float_type(0, 100), default=2.5, metavar="ALPHA",
                   help="clip weights to +-ALPHA*std(W) after each step (default: 2.5; 0 = off)")
    p.add_argument("--epochs", type=_int_type(1), default=10, help="epochs (default: 10)")
    p.add_argument("--lr", type=_float_type(0, 100, lo_open=True), default=0.05,
                   help="initial learning rate (default: 0.05)")
    p.add_argument("--batch-size", type=_int_type(2), default=64,
                   help="images per step (default: 64)")
    p.add_argument("--schedule", choices=("cosine", "step"), default="cosine",
                   help="learning-rate schedule: cosine to 0, or /10 at 50%% and 75%% of the "
                        "epochs (default: cosine)")
    p.add_argument("--max-images", type=_int_type(2), metavar="N",
                   help="train on N randomly chosen images only (default: all)")
    p.add_argument("--init", metavar="FILE",
                   help="fine-tune from these weights (.npz, or an .onnx model's initializers) "
                        "(default: from scratch, He-normal)")
    p.add_argument("--out", metavar="FILE", required=True,
                   help="weights file to write (.npz) (required)")
    p.add_argument("--checkpoint", metavar="DIR",
                   help="write the whole training state to DIR/checkpoint.npz at the end of every "
                        "epoch: weights, momentum, step, random streams, options (default: none)")
    p.add_argument("--resume", metavar="DIR",
                   help="continue the run checkpointed in DIR (same options; checkpoints keep "
                        "going to DIR unless --checkpoint names another folder) (default: none)")
    p.add_argument("--stop-after", type=_int_type(1), metavar="EPOCH",
                   help="stop after this epoch, to continue later with --resume (needs "
                        "--checkpoint or --resume) (default: run all epochs)")
    p.add_argument("--seed", type=_int_type(0), default=0,
                   help="seed of initialization, shuffling, augmentation and noise (default: 0)")
    p.add_argument("--data", metavar="DIR", help="folder with weights and datasets (default: "
                                                 "$ARCHSIM_DATA, then ~/.cache/archsim)")
    p.add_argument("--dataset", metavar="NAME",
                   help="digits, cifar10 or a workload YAML, for a bare .onnx model (default: "
                        "the workload's)")
    p.add_argument("--quiet", action="store_true", help="no progress display (default: show it)")

    p = sub.add_parser("regress", help="check cycle counts against a golden file",
                       description="Check the timing simulation's cycle counts against a golden "
                                   "file: exit 0 when equal (or within --tolerance), 1 with a "
                                   "table of what moved, 2 on a missing or corrupt golden file.",
                       epilog=EPILOG)
    p.add_argument("chip", help="chip YAML or shipped name (required)")
    p.add_argument("workload", help="workload YAML, shipped name or .onnx model (required)")
    p.add_argument("--golden", required=True, metavar="FILE",
                   help="golden cycle-count file (JSON) (required)")
    p.add_argument("--update", action="store_true",
                   help="(re)write the golden file and print what changed (default: check only)")
    p.add_argument("--tolerance", type=_float_type(0, 1, what="a relative tolerance in [0, 1), "
                                                          "e.g. 0.01 for 1%"), default=0.0,
                   help="relative tolerance, e.g. 0.01 for 1%% (default: 0, exact)")
    p.add_argument("--inferences", type=_int_type(1, MAX_INFERENCES),
                   help="inferences in flight (default: the golden file's)")
    _add_chip_options(p)

    p = sub.add_parser("sweep", help="design-space sweep on Dask: one task per point, a results "
                                     "table that resumes, Pareto table and plots",
                       description="Design-space sweep on Dask: every point of a sweep file "
                                   "simulated as one task, results appended to OUT/results.csv "
                                   "as they finish, a Pareto table and plots.",
                       epilog=EPILOG.replace("1 a cycle count moved (regress)",
                                             "1 some points recorded an error"))
    p.add_argument("sweep", nargs="?",
                   help="sweep YAML or shipped name (configs/sweeps/) (default: none; needed "
                        "unless --report)")
    p.add_argument("--out", metavar="DIR", help="results folder (default: out/<sweep name>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the sweep in --out: run only the points not in its table "
                        "(default: start a new table)")
    p.add_argument("--report", metavar="DIR",
                   help="re-render the report of DIR/results.csv, running nothing (default: off)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="a running Dask scheduler, tcp://HOST:PORT or a scheduler file "
                        "(default: a LocalCluster, one worker process per core)")
    p.add_argument("--workers", type=_int_type(1), metavar="N",
                   help="worker processes of the LocalCluster (default: one per core)")
    p.add_argument("--retries", type=_int_type(0), default=1, metavar="N",
                   help="reruns of a point that raised an internal error (default: 1)")
    p.add_argument("--no-accuracy", action="store_true",
                   help="timing, energy and area only, for every point (default: as the sweep "
                        "file says)")
    p.add_argument("--data", metavar="DIR", help="folder with weights and datasets (default: "
                                                 "$ARCHSIM_DATA, then ~/.cache/archsim)")
    p.add_argument("--quiet", action="store_true", help="no progress display (default: show it)")
    return parser


# ------------------------------------------------------------------------------------------
# Exit statuses, signals, pipes
# ------------------------------------------------------------------------------------------

class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every ``finally`` (temporary files) runs."""


def _on_sigterm(signum, frame):
    raise Terminated()


def _interrupt_in(exc: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt behind ``exc``: a Ctrl-C that lands in a numba nogil kernel surfaces
    as ``SystemError: CPUDispatcher(...) returned a result with an exception set`` whose cause is
    the KeyboardInterrupt."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _silence_stdout() -> None:
    """The reader of stdout is gone (``archsim run | head``): send the rest to /dev/null, so
    neither later prints nor the flush at exit raise BrokenPipeError."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def emit(text: str) -> None:
    """Print a result on stdout; a closed pipe ends the printing quietly (the run's files are
    still written)."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        _silence_stdout()


def note(text: str) -> None:
    """A line on stderr (``wrote ...``); a closed stderr is ignored."""
    try:
        print(text, file=sys.stderr, flush=True)
    except (BrokenPipeError, OSError, ValueError):
        pass


def _crash_log(exc: BaseException, argv: list[str]) -> str:
    """Write the traceback and the environment to a new log file; its path, or why not."""
    lines = [f"archsim {__version__} internal error, {datetime.datetime.now().isoformat()}",
             f"command: archsim {' '.join(argv)}",
             f"python {platform.python_version()} on {platform.platform()}"]
    for mod in ("numpy", "numba", "simpy", "yaml"):
        try:
            lines.append(f"{mod} {__import__(mod).__version__}")
        except Exception:  # noqa: BLE001 - the log must be written whatever is broken
            pass
    text = "\n".join(lines) + "\n\n" + "".join(traceback.format_exception(exc))
    try:
        fd, path = tempfile.mkstemp(prefix="archsim-crash-", suffix=".log")
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        return path
    except OSError as err:
        return f"(none: {err.strerror or err})"


def _internal_error(exc: BaseException, argv: list[str]) -> int:
    log = _crash_log(exc, argv)
    first = (str(exc).splitlines() or [""])[0][:200]
    note(f"archsim: internal error ({type(exc).__name__}{': ' + first if first else ''}); this is "
         f"a bug in archsim {__version__}: please report it with the log {log}")
    return EXIT_INTERNAL


@contextlib.contextmanager
def _signals():
    """SIGTERM raises :class:`Terminated` while the command runs (main thread only)."""
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError):        # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    """The ``archsim`` command; returns the exit status (see the module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv or ["run"])
    except SystemExit as exc:            # --help, --version, or a usage error (one line)
        return exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT
    if args.command is None:
        args = parser.parse_args(["run"])
    with _signals():
        try:
            return _dispatch(args)
        except ArchsimError as exc:
            note(f"archsim: error: {exc}")
            return EXIT_BAD_INPUT
        except KeyboardInterrupt as exc:
            return _interrupted(exc)
        except BrokenPipeError:
            _silence_stdout()
            return EXIT_OK
        except Exception as exc:  # noqa: BLE001 - the last line of defence: exit 3, with a log
            interrupt = _interrupt_in(exc)
            if interrupt is not None:
                return _interrupted(interrupt)
            return _internal_error(exc, argv)


def _interrupted(exc: KeyboardInterrupt) -> int:
    if isinstance(exc, Terminated):
        note("archsim: terminated")
        return 128 + signal.SIGTERM
    note("archsim: interrupted")
    return EXIT_INTERRUPTED


# ------------------------------------------------------------------------------------------
# Commands
# ------------------------------------------------------------------------------------------

def _run_kwargs(args, overrides) -> dict:
    return dict(overrides=overrides, policy=args.mapping, data_dir=args.data,
                accuracy=not args.no_accuracy, times_s=args.times, seeds=args.seeds,
                calib_images=args.calib_images, test_images=args.test_images,
                inferences=args.inferences, seed=args.seed, weights=args.weights,
                progress=not args.quiet, dataset=args.dataset)


def _check_data_dir(args) -> None:
    if getattr(args, "data", None) and not os.path.isdir(args.data):
        raise OptionError("--data", args.data, "an existing folder")


def _dispatch(args) -> int:
    from . import report as rep
    from . import simulate
    from .atomic import check_output_dir
    _check_data_dir(args)
    if args.command == "map":
        mapping = simulate.load_mapping(args.chip, args.workload, overrides=_parse_set(args.set),
                                        policy=args.mapping, data_dir=args.data)
        emit(json.dumps(mapping.to_dict(), indent=2) if args.json
             else simulate.mapping_table(mapping))
        return EXIT_OK
    if args.command == "run":
        policies = None
        if args.accuracy_mappings:
            policies = [p.strip() for p in args.accuracy_mappings.split(",")]
            bad = [p for p in policies if p not in POLICIES]
            if bad:
                raise ConfigError(None, "", f"expected {', '.join(POLICIES)}, got {bad[0]!r}",
                                  where=f"--accuracy-mappings {args.accuracy_mappings}")
        overrides = _parse_set(args.set)
        if args.out is not None:
            check_output_dir(args.out, "--out")       # before the simulation, not after it
        result = simulate.run(args.chip, args.workload, accuracy_policies=policies,
                              **_run_kwargs(args, overrides))
        report = result.report()
        written = rep.write_report(report, args.out) if args.out is not None else []
        emit(rep.terminal_report(report))
        for path in written:
            note(f"wrote {path}")
        return EXIT_OK
    if args.command == "compare":
        kwargs = _run_kwargs(args, _parse_set(args.set))
        for chip in (args.chip_a, args.chip_b):       # chip B's mistakes before chip A's run
            simulate.load_mapping(chip, args.workload, overrides=kwargs["overrides"],
                                  policy=args.mapping, data_dir=args.data, dataset=args.dataset)
        if args.out is not None:
            check_output_dir(args.out, "--out")
        a, b = simulate.compare(args.chip_a, args.chip_b, args.workload, **kwargs).reports()
        written = rep.write_compare(a, b, args.out) if args.out is not None else []
        emit(rep.compare_table(a, b))
        for path in written:
            note(f"wrote {path}")
        return EXIT_OK
    if args.command == "train":
        return _train(args)
    if args.command == "sweep":
        return _sweep(args)
    if args.command == "regress":
        from .regress import check_cycles
        result = check_cycles(args.chip, args.workload, args.golden, tolerance=args.tolerance,
                              update=args.update, inferences=args.inferences,
                              overrides=_parse_set(args.set), policy=args.mapping)
        emit(result.summary())
        return EXIT_OK if (result.ok or args.update) else EXIT_REGRESSION
    raise AssertionError(args.command)


def _sweep(args) -> int:
    """Exit status: 0 every point finished, 1 the sweep ran but some points recorded an error
    (in their rows), 2 bad input (nothing ran)."""
    from pathlib import Path

    from . import sweep
    if args.report:
        files = sweep.write_report(args.report)
        emit(sweep.terminal_summary(args.report))
        for path in files:
            note(f"wrote {path}")
        return EXIT_OK
    if not args.sweep:
        raise ConfigError("sweep", "", "expected a sweep file (or a shipped name such as "
                                       "adc_bits_x_array), or --report DIR")
    spec = sweep.load_sweep(args.sweep, data_dir=args.data,
                            accuracy=False if args.no_accuracy else None)
    out = Path(args.out) if args.out else Path("out") / spec.name
    outcome = sweep.run_sweep(spec, out, scheduler=args.scheduler, workers=args.workers,
                              resume=args.resume, retries=args.retries, progress=not args.quiet)
    emit(sweep.terminal_summary(out))
    for path in [outcome.table, *outcome.files]:
        note(f"wrote {path}")
    return EXIT_REGRESSION if outcome.failed else EXIT_OK


def _train(args) -> int:
    from . import training
    from .atomic import check_output_file
    from .workloads import load_workload, save_weights

    check_output_file(args.out, "--out")
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
    train_set, test_set = wl.dataset("train"), wl.dataset("test")
    params, history = training.train(wl.network, params, train_set, config,
                                     progress=not args.quiet, checkpoint=args.checkpoint,
                                     resume=args.resume, stop_after=args.stop_after)
    if len(history) < config.epochs:
        folder = args.checkpoint or args.resume
        emit(f"stopped after epoch {len(history)} of {config.epochs}; continue with the same "
             f"options and --resume {folder}")
        return EXIT_OK
    accuracy = training.evaluate_fp32(wl.network, params, test_set)
    save_weights(params, args.out)
    last = history[-1]
    emit(f"trained {wl.name}: {len(history)} epochs, final loss {last.loss:.4f}, train accuracy "
         f"{100 * last.train_accuracy:.2f}%, FP32 test accuracy {100 * accuracy:.2f}%; "
         f"wrote {args.out}")
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
