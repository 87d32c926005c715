"""Long checks (``python -m pytest -m slow``): the README's bit-for-bit claim about the shipped
digits weights. The full 10,000-image FP32 pass of ResNet-32 is in test_workloads.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
# What the README's "Training" section states: the shipped weights come from OpenBLAS's Haswell
# kernels (x86-64 with AVX2). Other kernels round the GEMMs differently.
KERNELS = "Haswell"


def _has_avx2() -> bool:
    try:
        return " avx2" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


@pytest.mark.slow
def test_digits_training_reproduces_the_shipped_weights_bit_for_bit(tmp_path):
    if not _has_avx2():
        pytest.skip("needs an x86-64 CPU with AVX2 to run OpenBLAS's Haswell kernels")
    env = dict(os.environ, OPENBLAS_CORETYPE=KERNELS)
    probe = subprocess.run([sys.executable, "-c", "import numpy; from threadpoolctl import "
                            "threadpool_info; print(*[i.get('architecture') for i in "
                            "threadpool_info() if i['user_api'] == 'blas'])"],
                           capture_output=True, text=True, env=env, timeout=120)
    if probe.stdout.split() != [KERNELS]:
        pytest.skip(f"numpy's BLAS is not OpenBLAS running {KERNELS} kernels: {probe.stdout!r}")
    out = tmp_path / "digits_cnn.npz"
    subprocess.run([sys.executable, "-m", "archsim", "train", "digits_cnn", "--epochs", "30",
                    "--noise", "0.038", "--out", str(out), "--quiet"], check=True, env=env,
                   timeout=1200, capture_output=True)
    with np.load(REPO / "workloads" / "digits_cnn.npz") as shipped, np.load(out) as made:
        assert sorted(made.files) == sorted(shipped.files)
        for name in shipped.files:
            assert np.array_equal(made[name], shipped[name]), name
