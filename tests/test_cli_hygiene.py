"""CLI hygiene (issue #18): --version, help text with defaults and no docstring markup, times as
people write them, an ETA that skips the JIT warm-up, singular/plural, no spread from one chip,
one-line legends, --calib-images and its cost explained."""

from __future__ import annotations

import argparse
import configparser
import re
from pathlib import Path

import pytest

import archsim
from archsim import report as rep
from archsim.cli import build_parser, main
from archsim.progress import Progress, format_duration, format_time_s, plural

REPO = Path(__file__).resolve().parents[1]


def setup_cfg_version() -> str:
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    return parser["metadata"]["version"]


def test_version_has_one_source(capsys):
    assert archsim.__version__ == setup_cfg_version()
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"archsim {setup_cfg_version()}\n"


def all_parsers():
    parser = build_parser()
    yield "archsim", parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def test_every_argument_has_help_with_its_default():
    missing = []
    for name, parser in all_parsers():
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction,
                                   argparse._SubParsersAction)):
                continue
            text = action.help or ""
            if not text or not re.search(r"\((default: [^)]+|required)\)|default: ", text):
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


def test_help_has_no_docstring_markup(capsys):
    for name, parser in all_parsers():
        text = parser.format_help()
        for markup in ("``", ":mod:", ":func:", ":class:", ":meth:", "%("):
            assert markup not in text, (name, markup)
    # and the defaults are the real ones
    run = dict(all_parsers())["run"]
    defaults = {a.dest: (a.default, a.help) for a in run._actions}
    for dest in ("seeds", "calib_images", "inferences", "seed"):
        default, text = defaults[dest]
        assert f"(default: {default}" in text


def test_calib_images_and_its_cost_in_help_and_readme():
    run = dict(all_parsers())["run"]
    text = next(a.help for a in run._actions if a.dest == "calib_images")
    assert "0 = no AdaBS" in text and "Cost:" in text and "3 passes over the test images" in text
    readme = (REPO / "README.md").read_text()
    assert re.search(r"`--calib-images N`[^\n]*\n?[^\n]*cost", readme, re.I)


def test_help_exits_0_in_process(capsys):
    assert main(["run", "--help"]) == 0
    assert "--calib-images" in capsys.readouterr().out


@pytest.mark.parametrize("seconds, text", [(25.0, "25 s"), (90.5, "90.5 s"), (3600.0, "1 h"),
                                           (86400.0, "1 d"), (2592000.0, "1 mo"),
                                           (31536000.0, "1 y"), (7200.0, "2 h")])
def test_times_after_programming(seconds, text):
    assert format_time_s(seconds) == text
    assert rep.format_time_s(seconds) == text


@pytest.mark.parametrize("seconds, text", [(0.42, "0.4 s"), (25.2, "25 s"), (200, "3 min 20 s"),
                                           (3900, "1 h 5 min"), (7200, "2 h"),
                                           (2 * 86400 + 3 * 3600, "2 d 3 h")])
def test_durations(seconds, text):
    assert format_duration(seconds) == text


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_eta_skips_the_jit_warm_up():
    """First step 10 s (numba compiles), then 1 s per step: after 3 of 10 steps 7 s are left,
    not the 28 s an average from the start would say."""
    clock = FakeClock()
    lines = []

    class Stream:
        def write(self, text):
            lines.append(text)

        def flush(self):
            pass

        def isatty(self):
            return False
    bar = Progress(10, "x", stream=Stream(), log_interval_s=0.0, clock=clock)
    clock.t = 10.0
    bar.advance(1)
    assert bar.eta_s() is None                       # one step says nothing about the rate
    assert "eta" not in lines[-1]
    clock.t = 11.0
    bar.advance(1)
    clock.t = 12.0
    bar.advance(1)
    assert bar.eta_s() == pytest.approx(7.0)
    assert lines[-1].startswith("x [#######-----------------] 3/10 12 s, eta 7.0 s")
    bar.close()


def test_progress_carries_on_when_nobody_reads_stderr():
    class Closed:
        def write(self, text):
            raise BrokenPipeError

        def flush(self):
            pass

        def isatty(self):
            return False
    bar = Progress(3, "x", stream=Closed(), log_interval_s=0.0)
    bar.advance(1)
    bar.advance(2)
    bar.close()
    assert not bar.enabled


def fake_accuracy(seeds: int) -> dict:
    return {"fp32": 0.9, "times_s": [25.0, 31536000.0], "seeds": seeds, "images": 1,
            "calib_images": 1, "series": [{"mapping": "hybrid", "compensation": "gdc",
                                            "mean": [0.88, 0.85], "std": [0.0, 0.0],
                                            "per_seed": [[0.88, 0.85]] * seeds}]}


def test_one_chip_has_no_spread_and_singular_words():
    report = {"workload": {"name": "w"}, "chip": {"name": "c"}, "mapping": {"policy": "hybrid"},
              "accuracy": fake_accuracy(1)}
    text = rep.terminal_report(report)
    assert "±" not in text.split("none: no compensation")[0]
    assert "(1 test image, 1 programmed chip, 1 AdaBS calibration image), %:" in text
    assert "88.00" in text and "85.00" in text
    report["accuracy"] = dict(fake_accuracy(3), images=10_000, calib_images=1000)
    text = rep.terminal_report(report)
    assert "88.00 ± 0.00" in text
    assert "(10,000 test images, 3 programmed chips, 1,000 AdaBS calibration images), mean ± std" \
        in text
    assert plural(1, "inference") == "1 inference" and plural(4, "inference") == "4 inferences"


def test_terminal_output_has_one_line_legends(capsys):
    assert main(["run", "--quiet", "--seeds", "1", "--times", "1y", "--test-images", "20",
                 "--calib-images", "20"]) == 0
    lines = capsys.readouterr().out.splitlines()
    legend = [line for line in lines if line.startswith("none: no compensation")]
    assert legend == [rep.ACCURACY_LEGEND]
    for word in ("gdc:", "adabs:"):
        assert word in legend[0]
    assert [line for line in lines if line.startswith("busy: ")] == [rep.TIMING_LEGEND]
    assert "stall:" in rep.TIMING_LEGEND
    assert "(20 test images, 1 programmed chip, 20 AdaBS calibration images), %:" in "\n".join(lines)
    assert not any("± 0.00" in line for line in lines)


def test_readme_slow_claim_holds():
    """README: `python -m pytest -m slow` runs the long checks; it used to select nothing."""
    readme = (REPO / "README.md").read_text()
    assert "python -m pytest -m slow" in readme
    marked = [p.name for p in (REPO / "tests").glob("test_*.py")
              if "@pytest.mark.slow" in p.read_text()]
    assert {"test_workloads.py", "test_slow_reproduction.py"} <= set(marked)
