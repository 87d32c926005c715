"""Which OpenBLAS kernels a speed benchmark runs on (standard library only: it acts before numpy
is imported).

numpy's OpenBLAS picks its GEMM kernels for the CPU when it loads, unless OPENBLAS_CORETYPE names
them; OPENBLAS_L2_SIZE overrides the cache size its blocking assumes. Some machines set both (this
project's do: Haswell and 512) because older OpenBLAS builds misdetect newer CPUs; with a current
numpy they pin slower kernels (here AVX2 kernels on an AVX-512 CPU). onnxruntime brings its own
kernels and reads neither. Tests and CI keep the machine's settings; a benchmark runs with

- ``--blas native`` (default): both variables removed in the benchmark's own process, numpy's
  OpenBLAS choosing for itself - how a current numpy runs on a machine without them, the
  like-with-like comparison with onnxruntime, and what this project's machine notes ask of a
  benchmark (unset both together, in that command alone, and check the kernel it then runs:
  every speed benchmark prints it);
- ``--blas as-set``: the environment as it is (here: the pinned AVX2 kernels);
- ``--blas-coretype NAME``: OPENBLAS_CORETYPE=NAME (after ``--blas``).

OpenBLAS reads the variables once, when it loads: :func:`choose` restarts the script with the
changed environment when the command line asks for one.
"""

from __future__ import annotations

import argparse
import os
import sys

PINS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
DEFAULT = "native"


def _option(argv: list[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def environment(argv: list[str], env: dict[str, str]) -> dict[str, str]:
    """The environment the command line ``argv`` asks the benchmark to run in."""
    out = dict(env)
    if (_option(argv, "--blas") or DEFAULT) == "native":
        for name in PINS:
            out.pop(name, None)
    core = _option(argv, "--blas-coretype")
    if core:
        out["OPENBLAS_CORETYPE"] = core
    return out


def choose(argv: list[str]) -> None:
    """Restart this script in the environment ``argv`` asks for, if it differs from this one
    (call before importing numpy)."""
    env = environment(argv, dict(os.environ))
    if any(env.get(name) != os.environ.get(name) for name in PINS):
        os.execve(sys.executable, [sys.executable] + sys.argv, env)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--blas", choices=("as-set", "native"), default=DEFAULT,
                        help="OpenBLAS kernels: 'native' (default): without OPENBLAS_CORETYPE "
                             "and OPENBLAS_L2_SIZE, numpy's OpenBLAS choosing for this CPU; "
                             "'as-set': as the environment sets them "
                             "(see benchmarks/blas_kernels.py)")
    parser.add_argument("--blas-coretype", metavar="NAME",
                        help="run with OPENBLAS_CORETYPE=NAME (e.g. SkylakeX: AVX-512 kernels)")


def pins_text() -> str:
    """The pinning variables as set, e.g. 'OPENBLAS_CORETYPE=Haswell OPENBLAS_L2_SIZE=512'."""
    return " ".join(f"{name}={os.environ[name]}" for name in PINS if name in os.environ) or \
        "no OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE"
