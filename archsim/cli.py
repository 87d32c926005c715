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


def _parse_set(items: list[str] | None) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError("--set", item, "expected PATH=VALUE, e.g. chip.tiles.dac.phases=4")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def _add_chip_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", metavar="PATH=VALUE",
                   help="override a chip field, e.g. --set chip.tiles.dac.phases=4 (repeatable)")
    p.add_argument("--mapping", choices=("hybrid", "all-digital", "all-analog"),
                   help="mapping policy (default: the chip file's mapping.policy)")
    p.add_argument("--data", metavar="DIR", help="folder with weights and datasets "
                                                 "(else $ARCHSIM_DATA, then ~/.cache/archsim)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="archsim", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("map", help="print how a workload is placed on a chip")
    p.add_argument("chip", nargs="?", help="chip YAML (default: the shipped pcm_hybrid)")
    p.add_argument("workload", nargs="?", help="workload YAML (default: digits_cnn)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_chip_options(p)

    p = sub.add_parser("run", help="simulate a workload on a chip (default: the embedded default)")
    p.add_argument("chip", nargs="?", help="chip YAML (default: the shipped pcm_hybrid)")
    p.add_argument("workload", nargs="?", help="workload YAML (default: digits_cnn)")
    p.add_argument("--out", metavar="DIR", help="write report.json, report.md, layers.csv there")
    _add_chip_options(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["run", *(argv or [])])
    try:
        return _dispatch(args)
    except ArchsimError as exc:
        print(f"archsim: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("archsim: interrupted", file=sys.stderr)
        return 130


def _dispatch(args) -> int:
    overrides = _parse_set(getattr(args, "set", None))
    if args.command == "map":
        mapping = simulate.load_mapping(args.chip, args.workload, overrides=overrides,
                                        policy=args.mapping, data_dir=args.data)
        if args.json:
            print(json.dumps(mapping.to_dict(), indent=2))
        else:
            print(simulate.mapping_table(mapping))
        return 0
    if args.command == "run":
        mapping = simulate.load_mapping(args.chip, args.workload, overrides=overrides,
                                        policy=args.mapping, data_dir=args.data)
        print(simulate.mapping_table(mapping))
        return 0
    raise AssertionError(args.command)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
