"""The report scripts in benchmarks/: the accuracy benchmark's 'what it shows' numbers and
re-rendering from JSON; the noise fine-tune experiment's goal check, report, variants and (slow)
the whole pipeline at tiny size."""

import importlib.util

import pytest

from archsim.functional import AccuracyResult, AccuracySeries

from conftest import REPO


def load_script():
    spec = importlib.util.spec_from_file_location("accuracy_resnet32",
                                                  REPO / "benchmarks" / "accuracy_resnet32.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def hand_result() -> AccuracyResult:
    """FP32 80%; two chips at 25 s and 1 year."""
    def series(comp, per_seed):
        cols = list(zip(*per_seed))
        mean = tuple(sum(c) / len(c) for c in cols)
        std = tuple((sum((v - m) ** 2 for v in c) / len(c)) ** 0.5 for c, m in zip(cols, mean))
        return AccuracySeries("hybrid", comp, mean, std, tuple(tuple(r) for r in per_seed))
    return AccuracyResult(0.80, (25.0, 31536000.0), 2, 100, 10, (
        series("none", [(0.70, 0.10), (0.70, 0.10)]),
        series("gdc", [(0.75, 0.60), (0.79, 0.50)]),
        series("gdc+adabs", [(0.76, 0.66), (0.78, 0.70)])))


def test_findings_and_render_round_trip(tmp_path):
    script = load_script()
    out = tmp_path / "acc.md"
    script.write_outputs(out, hand_result(), {"command": "by hand"}, 60.0, 2)
    md = out.read_text()
    # drop = 80 - 70 = 10 points; GDC recovers (77 - 70) / 10 = 70%; AdaBS - GDC = 77 - 77 = 0;
    # chip 1 is worse with AdaBS (78 < 79)
    assert "| 25 s | 10.00 | 70.0% | +0.00 | 1 of 2 |" in md
    # 1 year: drop 70 points, GDC recovers (55 - 10) / 70 = 64.3%, AdaBS +13 points, no chip worse
    assert "| 1 year | 70.00 | 64.3% | +13.00 | 0 of 2 |" in md
    assert "| 25 s | 70.00 ± 0.00 | 77.00 ± 2.00 | 77.00 ± 1.00 | 2 |" in md
    assert (tmp_path / "acc.json").exists()
    # re-rendering from the JSON gives the same Markdown
    out.unlink()
    assert script.main(["--render", str(tmp_path / "acc.json")]) == 0
    assert out.read_text() == md


# ---- benchmarks/noise_finetune_resnet32.py -------------------------------------------------------

def load_finetune_script():
    spec = importlib.util.spec_from_file_location(
        "noise_finetune_resnet32", REPO / "benchmarks" / "noise_finetune_resnet32.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _eval_json(folder, network, mapping, fp32, gdc_adabs, stds, times=(25.0, 86400.0)):
    """A saved evaluation: gdc+adabs means per time (and gdc one point lower), two chips."""
    import json
    series = []
    for comp, shift in (("gdc", -0.01), ("gdc+adabs", 0.0)):
        mean = [m + shift for m in gdc_adabs]
        series.append({"mapping": mapping, "compensation": comp, "mean": mean, "std": list(stds),
                       "per_seed": [[m - s for m, s in zip(mean, stds)],
                                    [m + s for m, s in zip(mean, stds)]]})
    chips = folder / "eval" / f"{network}__{mapping}"
    chips.mkdir(parents=True, exist_ok=True)
    for k in range(2):
        acc = {"fp32": fp32, "times_s": list(times), "seeds": 1, "images": 100,
               "calib_images": 10, "series": [dict(s, per_seed=[s["per_seed"][k]])
                                              for s in series]}
        (chips / f"chip{k}.json").write_text(json.dumps(
            {"network": network, "mapping": mapping, "chip": k, "settings": {"times": times},
             "seconds": 30.0, "accuracy": acc}))


def test_noise_finetune_goal_check_and_report(tmp_path):
    """Hand-made results: noise-trained FP32 88.0%, 87.3% at 1 day (drop 0.7 <= 1.0: met), control
    85.0 +- 0.4 (margin 2.3 > 0.5, the larger std: met); then a noise run 1.5 points down."""
    script = load_finetune_script()
    runs = tmp_path / "runs"
    _eval_json(runs, "pretrained", "hybrid", 0.8256, (0.80, 0.79), (0.003, 0.003))
    _eval_json(runs, "control", "hybrid", 0.880, (0.86, 0.850), (0.004, 0.004))
    _eval_json(runs, "noise", "hybrid", 0.880, (0.875, 0.873), (0.002, 0.005))
    _eval_json(runs, "noise", "all-analog", 0.880, (0.85, 0.84), (0.01, 0.01))
    out = tmp_path / "report.md"
    summary = script.render(runs, out, {"command": "by hand"}, ["noise", "control"])
    goal = summary["goal"]
    assert goal["drop_points"] == pytest.approx(0.7)
    assert goal["margin_points"] == pytest.approx(2.3)
    assert goal["chip_std_points"] == pytest.approx(0.5)
    assert goal["within_1_point"] and goal["beats_control"]
    md = out.read_text()
    assert "**Goal (Joshi et al. 2020): met.**" in md
    # per chip at 1 day 86.80 and 87.80: one of two within a point; the mean drop 0.70 lies
    # within one standard error (0.50) of the line
    assert goal["noise_per_chip"] == pytest.approx([86.8, 87.8])
    assert goal["chips_within_1_point"] == 1 and goal["drop_sem_points"] == pytest.approx(0.5)
    assert "1 of 2 chips within 1.0 point" in md
    assert "within one standard error of the 1.0-point line: met on the mean" in md
    assert "| noise | gdc+adabs | 88.00 | 87.50 ± 0.20 | 87.30 ± 0.50 | 2 |" in md
    assert "## Mapping `all-analog`" in md and (tmp_path / "report.json").exists()
    # a chip left from a run with other settings is not combined with these
    import json
    stale = json.loads((runs / "eval" / "noise__hybrid" / "chip1.json").read_text())
    stale["settings"] = {"times": "other"}
    (runs / "eval" / "noise__hybrid" / "chip2.json").write_text(json.dumps(stale))
    assert script.render(runs, out, {}, ["noise", "control"])["goal"] == goal
    assert "| noise | gdc+adabs | 88.00 | 87.50 ± 0.20 | 87.30 ± 0.50 | 2 |" in out.read_text()
    # a drop a hair over the line: three decimals say which side, and the standard error that
    # the chips cannot tell
    _eval_json(runs, "noise", "hybrid", 0.880, (0.875, 0.86996), (0.002, 0.005))
    goal = script.render(runs, out, {}, ["noise", "control"])["goal"]
    assert not goal["within_1_point"] and goal["beats_control"]
    md = out.read_text()
    assert "a drop of 1.004 points" in md and "short by 0.004 points" in md
    assert "within one standard error of the 1.0-point line: not met on the mean" in md
    # the noise network 1.5 points below its FP32 and only 0.3 above the control
    _eval_json(runs, "noise", "hybrid", 0.880, (0.875, 0.865), (0.002, 0.005))
    _eval_json(runs, "control", "hybrid", 0.880, (0.86, 0.862), (0.004, 0.004))
    goal = script.render(runs, out, {}, ["noise", "control"])["goal"]
    assert goal["short_by_points"]["drop"] == pytest.approx(0.5)
    assert goal["short_by_points"]["margin"] == pytest.approx(0.2)
    md = out.read_text()
    assert "not met" in md and "short by 0.50 points" in md and "short by 0.20 points" in md


def test_noise_finetune_variants_and_the_shipped_command():
    script = load_finetune_script()
    assert script.parse_variant("noise") == ("noise", {"eta": 0.038, "clip": 2.5})
    assert script.parse_variant("long:eta=0.05,clip=2,epochs=30") == (
        "long", {"eta": 0.05, "clip": 2.0, "epochs": 30})
    with pytest.raises(Exception, match="eta= and clip="):
        script.parse_variant("x:epochs=3")
    # the workload YAML quotes the archsim train command of the script's defaults
    args = script.main.__globals__["argparse"].Namespace(
        epochs=script.DEFAULT_EPOCHS, lr=script.DEFAULT_LR, batch_size=128, seed=0,
        train_images=None)
    command = script.reproduce_command("noise", args, script.train_config(
        args, script.DEFAULT_VARIANTS["noise"]))
    yaml_text = (REPO / "workloads" / "resnet32_cifar10_noise.yaml").read_text()
    flat = " ".join(line.lstrip("# ").strip() for line in yaml_text.splitlines())
    assert command in " ".join(flat.split())


@pytest.mark.slow
@pytest.mark.shared_data
def test_noise_finetune_pipeline_at_tiny_size(tmp_path):
    """The whole experiment at tiny size (about 2 minutes): both fine-tunes, six evaluations, the
    report; a second run resumes everything and changes nothing."""
    script = load_finetune_script()
    argv = ["--train-images", "256", "--epochs", "1", "--test-images", "64", "--chips", "1",
            "--times", "25s,1d", "--calib-images", "32", "--runs", str(tmp_path / "runs"),
            "--out", str(tmp_path / "r.md"), "--quiet"]
    script.main(argv)
    first = (tmp_path / "r.json").read_text()
    assert len(list((tmp_path / "runs" / "eval").glob("*__*/chip0.json"))) == 6
    script.main(argv)                      # all done: nothing reruns, same numbers
    import json
    a, b = json.loads(first), json.loads((tmp_path / "r.json").read_text())
    assert a["evaluation"] == b["evaluation"] and a["goal"] == b["goal"]


# ---- benchmarks/blas_kernels.py and benchmarks/gemm_bound.py ----------------------------------

def load_benchmark_module(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_blas_kernel_choice_environment():
    """--blas native (the default) drops both pinning variables (and nothing else); --blas
    as-set keeps the environment as it is; --blas-coretype sets one."""
    bk = load_benchmark_module("blas_kernels")
    env = {"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "512", "PATH": "/bin"}
    assert bk.environment([], env) == {"PATH": "/bin"}
    assert bk.environment(["--blas", "as-set"], env) == env
    assert bk.environment(["--images", "10", "--blas", "native"], env) == {"PATH": "/bin"}
    assert bk.environment(["--blas=native", "--blas-coretype=SkylakeX"], env) == {
        "PATH": "/bin", "OPENBLAS_CORETYPE": "SkylakeX"}
    assert bk.environment(["--blas-coretype", "Zen"], env) == {"PATH": "/bin",
                                                                "OPENBLAS_CORETYPE": "Zen"}
    assert bk.environment(["--blas", "as-set", "--blas-coretype", "Zen"], env) == {
        "PATH": "/bin", "OPENBLAS_CORETYPE": "Zen", "OPENBLAS_L2_SIZE": "512"}


def test_gemm_ceiling_makes_the_networks_products():
    """The ceiling's GEMMs are the network's multiply-adds: ResNet-32 68,862,592 per image (16
    channels at 32x32 ... 64 at 8x8, the 10-way classifier); (rows, K, N) scale with the images."""
    from archsim.network import digits_cnn, resnet_cifar
    gb = load_benchmark_module("gemm_bound")
    net = resnet_cifar(32)
    shapes = gb.inference_gemms(net, 1)
    assert sum(r * k * n for r, k, n in shapes) == net.total_macs() == 68_862_592
    assert shapes[0] == (1024, 27, 16) and shapes[-1] == (1, 64, 10)
    assert gb.inference_gemms(net, 3)[1] == (3 * 1024, 144, 16)
    small = digits_cnn()
    assert sum(r * k * n for r, k, n in gb.inference_gemms(small, 2)) == 2 * small.total_macs()
    # both ceilings run on a small network and give a rate
    assert 0 < gb.inference_images_per_s(small, 16, 8, repeats=1) < float("inf")
    assert 0 < gb.training_images_per_s(small, 16, 8, workers=2, repeats=1) < float("inf")


def test_blas_kernel_choice_restarts_the_script(tmp_path):
    """choose() restarts the script once, in the environment the command line asks for."""
    import os
    import subprocess
    import sys
    script = tmp_path / "probe.py"
    script.write_text(
        "import os, sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from benchmarks import blas_kernels\n"
        "blas_kernels.choose(sys.argv[1:])\n"
        "print(os.environ.get('OPENBLAS_CORETYPE'), os.environ.get('OPENBLAS_L2_SIZE'))\n")
    env = dict(os.environ, OPENBLAS_CORETYPE="Haswell", OPENBLAS_L2_SIZE="512")

    def run(*args):
        return subprocess.run([sys.executable, str(script), *args], env=env, text=True,
                              capture_output=True, timeout=60).stdout.split()

    assert run() == ["None", "None"]
    assert run("--blas", "as-set") == ["Haswell", "512"]
    assert run("--blas", "native") == ["None", "None"]
    assert run("--blas", "as-set", "--blas-coretype", "SkylakeX") == ["SkylakeX", "512"]
