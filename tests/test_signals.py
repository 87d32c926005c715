"""Signals and pipes through a real ``archsim`` process (issue #18): Ctrl-C inside a numba kernel
exits 130 with ``archsim: interrupted`` and leaves the output folder as it was; SIGTERM the same
with 143; a closed stdout pipe ends the printing quietly (exit 0, the files still written)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Runs the CLI with the fused patches+DAC kernel preceded by a ~0.5 s serial nogil numba kernel
# (serial: the kernel runs on archsim's worker threads, and numba's workqueue layer allows one
# parallel region at a time), and says on stderr when it is inside it: the signal then lands in numba code, where it surfaces
# as "SystemError: CPUDispatcher(...) returned a result with an exception set".
DRIVER = r"""
import sys, time
import numba, numpy as np
from archsim import cli, kernels

@numba.njit(nogil=True)
def spin(n):
    acc = 0.0
    for i in range(n):
        acc += np.sin(i * 1e-3)
    return acc

spin(10)
n = 1_000_000
t = time.perf_counter()
spin(n)
n = int(n * 0.5 / max(time.perf_counter() - t, 1e-6))     # about half a second
def slowed(real):
    def slow(*args):
        sys.stderr.write("inside numba kernel\n")
        sys.stderr.flush()
        spin(n)
        return real(*args)
    return slow

kernels._patches_dac_kernel = slowed(kernels._patches_dac_kernel)
kernels._patch_products_kernel = slowed(kernels._patch_products_kernel)
kernels._patches_dac_by_pixel_kernel = slowed(kernels._patches_dac_by_pixel_kernel)
sys.exit(cli.main(sys.argv[1:]))
"""


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def run_until_inside_kernel(tmp_path: Path, out: Path) -> subprocess.Popen:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    proc = subprocess.Popen([sys.executable, str(script), "run", "--seeds", "1", "--times", "25s",
                             "--test-images", "40", "--calib-images", "40", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    lines = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        if not line or "inside numba kernel" in line:
            break
    assert "inside numba kernel" in lines[-1], "".join(lines)
    time.sleep(0.3)
    return proc


def old_set(tmp_path: Path) -> tuple[Path, dict]:
    out = tmp_path / "out"
    out.mkdir()
    files = {"report.json": b'{"old": true}', "report.md": b"# old", "layers.csv": b"old"}
    for name, data in files.items():
        (out / name).write_bytes(data)
    return out, files


@pytest.mark.parametrize("sig, status, message", [(signal.SIGINT, 130, "archsim: interrupted"),
                                                  (signal.SIGTERM, 143, "archsim: terminated")],
                         ids=["SIGINT", "SIGTERM"])
def test_signal_inside_a_numba_kernel(tmp_path, sig, status, message):
    out, files = old_set(tmp_path)
    proc = run_until_inside_kernel(tmp_path, out)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == status, stderr
    assert stderr.rstrip().endswith(message)
    assert "Traceback" not in stderr and "SystemError" not in stderr
    assert stdout == ""
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files       # nothing partial
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")] == []


def test_closed_stdout_pipe_exits_quietly_and_still_writes_the_files(tmp_path):
    read_end, write_end = os.pipe()
    os.close(read_end)                      # the reader is gone before archsim prints
    out = tmp_path / "out"
    try:
        proc = subprocess.run([sys.executable, "-m", "archsim", "run", "--no-accuracy", "--quiet",
                               "--out", str(out)], stdout=write_end, stderr=subprocess.PIPE,
                              text=True, env=env(), timeout=120)
    finally:
        os.close(write_end)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr
    assert "Exception ignored" not in proc.stderr
    assert (out / "report.json").is_file()


def test_archsim_run_piped_into_head(tmp_path):
    proc = subprocess.run(f"set -o pipefail; '{sys.executable}' -m archsim run --no-accuracy "
                          "--quiet | head -n 1", shell=True, executable="/bin/bash",
                          capture_output=True, text=True, env=env(), timeout=120, cwd=tmp_path)
    assert proc.returncode == 0
    assert proc.stdout == "== digits_cnn on pcm-hybrid-512 (hybrid) ==\n"
    assert proc.stderr == ""
