"""The accuracy benchmark's report: the 'what it shows' numbers and re-rendering from JSON."""

import importlib.util

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
