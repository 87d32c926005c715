"""Issue #18: every input runs right or fails cleanly. Each case the issue lists, through the CLI
in process (``archsim.cli.main``): its exit status and its one-line message, and that nothing was
simulated or written before the error."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from archsim import atomic, config as cfg
from archsim.cli import main
from archsim.config import load_chip
from archsim.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
DIGITS_WEIGHTS = REPO / "workloads" / "digits_cnn.npz"
GOLDEN = REPO / "tests" / "golden" / "pcm_hybrid__digits_cnn.json"
FAST = ["--quiet", "--seeds", "1", "--times", "25s", "--test-images", "40", "--calib-images", "40"]


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_error(code, err, *needles, status=2):
    """One line on stderr, the status, every needle in it, no traceback."""
    assert code == status, err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)


@pytest.fixture
def no_simulation(monkeypatch):
    """Any simulation that starts fails the test: errors must come before."""
    from archsim import functional, timing

    def forbidden(*args, **kwargs):
        raise AssertionError("a simulation started before the inputs were checked")
    monkeypatch.setattr(functional, "evaluate_accuracy", forbidden)
    monkeypatch.setattr(functional, "fp32_accuracy", forbidden)
    monkeypatch.setattr(timing, "simulate_timing", forbidden)


def chip_file(tmp_path, text: str, name: str = "chip.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------------
# Chip files: encoding, finite numbers, sanity limits, required sections, duplicate keys
# ------------------------------------------------------------------------------------------

def test_latin1_chip_file_is_not_utf8_with_its_byte_offset(tmp_path, capsys, no_simulation):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("chip:\n  name: x\n  # g_max 25 \u00b5S\n".encode("latin-1"))
    code, out, err = cli(capsys, "run", path, "--no-accuracy")
    offset = path.read_bytes().index(b"\xb5")
    assert_error(code, err, f"{path}:3: not UTF-8 text (byte 0xb5 at offset {offset}, line 3)")
    assert out == ""


@pytest.mark.parametrize("text, path, needle", [
    ("chip:\n  name: x\n  clock_mhz: .nan\n", "chip.clock_mhz", "expected a finite number, got nan"),
    ("chip:\n  name: x\n  device:\n    g_max_us: .inf\n", "chip.device.g_max_us",
     "expected a finite number, got inf"),
    ("chip:\n  name: x\n  tiles:\n    array:\n      rows: 1000000000\n", "chip.tiles.array.rows",
     "expected a value <= 4,096 (sanity limit: largest crossbar side"),
    ("chip:\n  name: x\n  tiles:\n    count: 1000000000\n", "chip.tiles.count",
     "expected a value <= 100,000 (sanity limit: a wafer of 1 mm2 tiles"),
], ids=["nan", "inf", "rows-1e9", "tiles-1e9"])
def test_silent_nonsense_values_are_errors(tmp_path, capsys, no_simulation, text, path, needle):
    f = chip_file(tmp_path, text)
    code, out, err = cli(capsys, "run", f, "--no-accuracy")
    assert_error(code, err, f"{f}:", f": {path}: ", needle)


@pytest.mark.parametrize("source", ["empty", "comment", "devnull", "bare-chip", "mapping-only"])
def test_empty_chip_file_is_an_error(tmp_path, capsys, no_simulation, source):
    texts = {"empty": "", "comment": "# nothing yet\n", "bare-chip": "chip:\n",
             "mapping-only": "mapping:\n  policy: hybrid\n"}
    f = Path("/dev/null") if source == "devnull" else chip_file(tmp_path, texts[source])
    code, out, err = cli(capsys, "run", f, "--no-accuracy")
    needle = {"bare-chip": "chip.name: missing key 'name'",
              "mapping-only": "chip: missing section 'chip'"}.get(source, "empty chip file")
    assert_error(code, err, str(f), needle)


def test_compare_checks_chip_b_before_simulating_chip_a(tmp_path, capsys, no_simulation):
    f = chip_file(tmp_path, "extends: pcm_hybrid\nchip:\n  tiles:\n    count: -1\n")
    code, _, err = cli(capsys, "compare", "pcm_hybrid", f, "--quiet")
    assert_error(code, err, f"{f}:4: chip.tiles.count: expected a value >= 0, got -1")


def test_a_chip_file_that_extends_needs_nothing_else(tmp_path):
    assert load_chip(chip_file(tmp_path, "extends: hermes\n")) == load_chip("hermes")


def test_duplicate_keys_are_errors_not_last_wins(tmp_path, capsys, no_simulation):
    f = chip_file(tmp_path, "chip:\n  name: x\n  tiles:\n    count: 8\n    count: 64\n")
    code, _, err = cli(capsys, "run", f, "--no-accuracy")
    assert_error(code, err, f"{f}:5: chip.tiles.count: duplicate key 'count' (first given on line 4)")
    # in flow style and at the top level too
    for text, where in (("chip: {name: x, name: y}\n", "chip.name"),
                        ("chip:\n  name: x\nchip:\n  name: y\n", "chip")):
        with pytest.raises(ConfigError, match="duplicate key") as e:
            load_chip(chip_file(tmp_path, text))
        assert e.value.yaml_path == where


def test_numbers_in_exponent_notation_are_numbers(tmp_path):
    f = chip_file(tmp_path, "chip:\n  name: x\n  clock_mhz: 2.5e1\n  technology_nm: 1.4E1\n"
                            "  tiles:\n    count: 1e2\n    array: {read_time_ns: 1e-300}\n"
                            "  device:\n    t0_s: .5e2\n")
    c = load_chip(f).chip
    assert (c.clock_mhz, c.technology_nm, c.tiles.count, c.device.t0_s) == (25.0, 14.0, 100, 50.0)
    assert c.tiles.array.read_time_ns == 1e-300 and isinstance(c.tiles.count, int)
    # YAML 1.2 core schema: 010 is ten (not octal 8), yes is a word (not true)
    f = chip_file(tmp_path, "chip:\n  name: yes\n  tiles:\n    count: 010\n")
    assert (load_chip(f).chip.name, load_chip(f).chip.tiles.count) == ("yes", 10)
    with pytest.raises(ConfigError, match="expected true or false, got str 'yes'"):
        load_chip(chip_file(tmp_path, "chip:\n  name: x\n  tiles:\n    double_buffered: yes\n"))
    with pytest.raises(ConfigError, match="expected an integer, got float 2.5"):
        load_chip(chip_file(tmp_path, "chip:\n  name: x\n  tiles:\n    count: 2.5e0\n"))


def test_set_exponent_numbers(capsys):
    c = load_chip("pcm_hybrid", cfg.SetArguments.parse(["chip.clock_mhz=2.5e2",
                                                        "chip.tiles.count=1e2"]))
    assert (c.chip.clock_mhz, c.chip.tiles.count) == (250.0, 100)
    code, _, err = cli(capsys, "run", "--set", "chip.clock_mhz=1e9", "--no-accuracy")
    assert_error(code, err, "--set chip.clock_mhz=1e9: expected a value <= 100,000 "
                            "(sanity limit: 100 GHz), got 1000000000.0")


def test_tiles_count_1e9_fails_at_once_instead_of_hanging(capsys, no_simulation):
    code, _, err = cli(capsys, "run", "--set", "chip.tiles.count=1000000000", "--no-accuracy")
    assert_error(code, err, "--set chip.tiles.count=1000000000: expected a value <= 100,000")


# ------------------------------------------------------------------------------------------
# --set: errors name --set and the argument as typed, not the shipped file
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arg, message", [
    ("chip.tiles.dac.phasez=4", "unknown key 'phasez'; did you mean 'phases'?"),
    ("chip.tilez.count=3", "unknown key 'tilez'; did you mean 'tiles'?"),
    ("chip.tiles.dac.phases=0", "expected a value >= 1, got 0"),
    ("chip.tiles.dac.phases=four", "expected an integer, got str 'four'"),
    ("chip.name.first=3", "cannot set inside 'name', which is not a mapping"),
    ("chip.tiles={count: 3", "cannot read the value: YAML syntax error"),
    ("chip.clock_mhz=.nan", "expected a finite number, got nan"),
    ("chip.tiles.count", "expected PATH=VALUE"),
    ("chip..count=3", "expected a dotted path"),
    ("=3", "expected a dotted path"),
])
def test_set_errors_name_set_and_the_argument(capsys, no_simulation, arg, message):
    code, _, err = cli(capsys, "run", "--set", arg, "--no-accuracy")
    assert_error(code, err, f"archsim: error: --set {arg}: {message}")
    assert "pcm_hybrid.yaml" not in err


def test_set_error_in_a_user_file_still_names_the_file_for_the_files_own_mistakes(tmp_path, capsys):
    f = chip_file(tmp_path, "extends: pcm_hybrid\nchip:\n  tiles:\n    adc: {bitz: 4}\n")
    code, _, err = cli(capsys, "map", f, "--set", "chip.tiles.count=8")
    assert_error(code, err, f"{f}:4: chip.tiles.adc.bitz: unknown key 'bitz'")


# ------------------------------------------------------------------------------------------
# Workloads, weights and datasets: checked before the simulation starts
# ------------------------------------------------------------------------------------------

def workload(tmp_path, dataset: str | None = "cifar", network: str = "digits_cnn",
             x: np.ndarray | None = None, y: np.ndarray | None = None) -> Path:
    lines = ["workload:", "  name: w", f"  network: {network}", f"  weights: {DIGITS_WEIGHTS}"]
    if dataset == "cifar":
        np.savez(tmp_path / "data.npz", x=x, y=y)
        lines += ["  dataset:", "    name: cifar10", f"    test: {tmp_path / 'data.npz'}",
                  f"    train: {tmp_path / 'data.npz'}"]
    path = tmp_path / "w.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def cifar(n=4, labels=None):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    return x, (np.arange(n) % 10 if labels is None else labels)


def test_network_paired_with_the_wrong_dataset(tmp_path, capsys, no_simulation):
    x, y = cifar()
    wl = workload(tmp_path, x=x, y=y)
    code, _, err = cli(capsys, "run", "pcm_hybrid", wl, *FAST)
    assert_error(code, err, "data.npz: images of shape (32, 32, 3) (H, W, C), network digits_cnn "
                            "expects (8, 8, 1)")


@pytest.mark.parametrize("labels, needle", [
    (np.eye(10)[np.arange(4)], "labels must be a 1-D array of class indices, got shape (4, 10) "
                               "(one-hot labels? store their argmax)"),
    (np.array([0.0, 1.5, 2.0, 3.0]), "labels must be integer class indices, got 1.5 at index 1"),
    (np.array([0, 1, 2, 10]), "labels must be 0..9, got 0..10"),
    (np.array(["a", "b", "c", "d"]), "labels must be integer class indices, got dtype <U1"),
], ids=["one-hot", "float", "range", "strings"])
def test_bad_labels(tmp_path, capsys, no_simulation, labels, needle):
    x, _ = cifar()
    code, _, err = cli(capsys, "run", "pcm_hybrid", workload(tmp_path, x=x, y=labels), *FAST)
    assert_error(code, err, needle)


def test_integral_float_labels_are_accepted():
    from archsim.datasets import class_labels
    assert class_labels(np.array([0.0, 3.0, 9.0]), "x").tolist() == [0, 3, 9]


def test_zero_image_dataset(tmp_path, capsys, no_simulation):
    x = np.zeros((0, 32, 32, 3), np.uint8)
    code, _, err = cli(capsys, "run", "pcm_hybrid", workload(tmp_path, x=x, y=np.zeros(0, int)),
                       *FAST)
    assert_error(code, err, "data.npz: no images")


def test_labels_beyond_the_networks_classes():
    from archsim.datasets import check_dataset, load_digits_split
    ds = load_digits_split("test")
    with pytest.raises(Exception, match=r"labels 0..9, network n has 5 classes \(0..4\)"):
        check_dataset(ds, (8, 8, 1), 5, "n")


def test_empty_workload_is_an_error_not_digits(tmp_path, capsys, no_simulation):
    for text, needle in (("", "missing section 'workload'"),
                         ("workload:\n  name: w\n", "workload.network: missing key 'network'")):
        wl = tmp_path / "empty.yaml"
        wl.write_text(text)
        code, _, err = cli(capsys, "run", "pcm_hybrid", wl, "--no-accuracy", "--quiet")
        assert_error(code, err, str(wl), needle)


def bad_weights(tmp_path, name, **changes) -> Path:
    with np.load(DIGITS_WEIGHTS) as data:
        params = {k: data[k] for k in data.files}
    for key, fn in changes.items():
        params[key.replace("__", ".")] = fn(params[key.replace("__", ".")].copy())
    path = tmp_path / name
    np.savez(path, **params)
    return path


def _npy_bytes() -> bytes:
    import io
    buf = io.BytesIO()
    np.save(buf, np.zeros(3, np.float32))
    return buf.getvalue()


NPY_BYTES = _npy_bytes()


def _with(value, index=0):
    def change(a):
        a.reshape(-1)[index] = value
        return a
    return change


@pytest.mark.parametrize("name, change, needle", [
    ("nan.npz", {"conv1__weight": _with(np.nan)}, "parameter 'conv1.weight' has 1 NaN or infinite "
                                                  "value"),
    ("inf.npz", {"conv2__weight": lambda a: a.astype(np.float64) * 1e40},
     "parameter 'conv2.weight' has values beyond the float32 range"),
    ("negvar.npz", {"bn2__running_var": _with(-0.5, 3)},
     "parameter 'bn2.running_var' is a variance but has negative values (min -0.5)"),
    ("strings.npz", {"linear__bias": lambda a: a.astype(str)}, "array 'linear.bias' has dtype <U"),
], ids=["nan", "beyond-float32", "negative-variance", "strings"])
def test_bad_weights_are_errors_before_simulating(tmp_path, capsys, no_simulation, name, change,
                                                  needle):
    path = bad_weights(tmp_path, name, **change)
    code, _, err = cli(capsys, "run", "--weights", path, *FAST)
    assert_error(code, err, str(path), needle)


@pytest.mark.parametrize("content, needle", [
    (bytes(range(256)) * 4, "not a readable .npz weights file (no zip header)"),
    (NPY_BYTES, "a single .npy array, expected a .npz archive"),
    (b"PK\x03\x04" + b"\x00" * 40, "not a readable .npz weights file"),
], ids=["random", "npy", "bad-zip"])
def test_random_bytes_npz_gets_no_allow_pickle_advice(tmp_path, capsys, content, needle):
    path = tmp_path / "w.npz"
    path.write_bytes(content)
    code, _, err = cli(capsys, "run", "--weights", path, *FAST)
    assert_error(code, err, str(path), needle)
    assert "allow_pickle" not in err


def test_pickled_object_arrays_are_refused(tmp_path, capsys):
    path = tmp_path / "obj.npz"
    np.savez(path, **{"conv1.weight": np.array([{"a": 1}], dtype=object)})
    code, _, err = cli(capsys, "run", "--weights", path, *FAST)
    assert_error(code, err, "holds pickled Python objects, which archsim never loads")
    assert "allow_pickle" not in err


# ------------------------------------------------------------------------------------------
# Options
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, needle", [
    (["run", "--seeds", "abc"], "argument --seeds: expected a positive integer, got 'abc'"),
    (["run", "--seeds", "0"], "argument --seeds: expected a positive integer, got '0'"),
    (["run", "--seed", "-1"], "argument --seed: expected an integer >= 0, got '-1'"),
    (["run", "--calib-images", "-1"], "argument --calib-images: expected an integer >= 0"),
    (["run", "--inferences", "5000"], "argument --inferences: expected an integer 1..1,024"),
    (["run", "--times", "nan"], "argument --times: expected times after programming"),
    (["run", "--times", "inf"], "argument --times: expected times after programming"),
    (["regress", "pcm_hybrid", "digits_cnn", "--golden", "g.json", "--tolerance", "-1"],
     "argument --tolerance: expected a relative tolerance in [0, 1)"),
    (["regress", "pcm_hybrid", "digits_cnn", "--golden", "g.json", "--tolerance", "nan"],
     "argument --tolerance: expected a relative tolerance in [0, 1)"),
    (["train", "--noise", "inf", "--out", "w.npz"], "argument --noise: expected a number >= 0"),
    (["train", "--lr", "0", "--out", "w.npz"], "argument --lr: expected a number > 0"),
    (["run", "--mapping", "half"], "argument --mapping: invalid choice: 'half'"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_options_are_one_line_usage_errors(capsys, no_simulation, args, needle):
    code, out, err = cli(capsys, *args)
    assert_error(code, err, f"archsim {args[0]}: error: {needle}", f"(see archsim {args[0]} --help)")
    assert "_positive_int" not in err and "usage:" not in err and out == ""


def test_options_through_the_api_are_checked_too(no_simulation):
    from archsim import simulate
    from archsim.errors import OptionError
    from archsim.regress import check_cycles
    for kwargs, needle in (({"seed": -1}, "--seed -1"), ({"calib_images": -1}, "--calib-images"),
                           ({"times_s": (float("nan"),)}, "--times nan"),
                           ({"inferences": 0}, "--inferences 0")):
        with pytest.raises(OptionError, match=re.escape(needle)):
            simulate.run(**kwargs)
    with pytest.raises(OptionError, match=r"--tolerance -1: expected a relative tolerance"):
        check_cycles("pcm_hybrid", "digits_cnn", GOLDEN, tolerance=-1)


def test_calib_images_0_means_no_adabs(capsys):
    code, out, err = cli(capsys, "run", "--quiet", "--seeds", "1", "--times", "1d",
                         "--test-images", "40", "--calib-images", "0")
    assert code == 0, err
    rows = {line.split()[1] for line in out.splitlines() if line.startswith("hybrid ")}
    assert rows == {"none", "gdc"}
    assert "0 AdaBS calibration images" in out


def test_data_folder_must_exist(tmp_path, capsys, no_simulation):
    code, _, err = cli(capsys, "run", "--data", tmp_path / "nowhere", "--no-accuracy")
    assert_error(code, err, f"--data {tmp_path / 'nowhere'}: expected an existing folder")


# ------------------------------------------------------------------------------------------
# Golden files
# ------------------------------------------------------------------------------------------

def golden_with(tmp_path, change=None, raw: bytes | None = None) -> Path:
    path = tmp_path / "golden.json"
    if raw is not None:
        path.write_bytes(raw)
        return path
    data = json.loads(GOLDEN.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("kind, needle", [
    ("binary", "not UTF-8 text (byte 0x89 at offset 0, line 1)"),
    ("inferences-3", "inferences must be an integer 1..1024, got -3"),
    ("inferences-bool", "inferences must be an integer 1..1024, got True"),
    ("nan", "not valid golden JSON (NaN is not a number JSON allows)"),
    ("negative", "layers.conv1 must hold integer counts >= 0"),
    ("fraction", "actions."),
    ("duplicate", "not valid golden JSON (duplicate key 'inferences')"),
    ("deep", "nested too deeply"),
])
def test_corrupt_golden_files_exit_2(tmp_path, capsys, no_simulation, kind, needle):
    changes = {
        "inferences-3": lambda d: d.update(inferences=-3),
        "inferences-bool": lambda d: d.update(inferences=True),
        "negative": lambda d: d["layers"]["conv1"].update(end_cycle=-5),
        "fraction": lambda d: d["actions"].update({next(iter(d["actions"])): 2.5}),
    }
    raw = {"binary": b"\x89PNG\r\n\x1a\n" + bytes(range(256)),
           "nan": GOLDEN.read_bytes().replace(b'"inferences": 2', b'"inferences": NaN'),
           "duplicate": GOLDEN.read_bytes().replace(b'"inferences": 2',
                                                    b'"inferences": 2, "inferences": 3'),
           "deep": b"[" * 100_000 + b"]" * 100_000}.get(kind)
    path = golden_with(tmp_path, changes.get(kind), raw)
    code, out, err = cli(capsys, "regress", "pcm_hybrid", "digits_cnn", "--golden", path)
    assert_error(code, err, str(path), needle)


def test_regress_exit_1_only_when_cycles_move(tmp_path, capsys):
    path = golden_with(tmp_path, lambda d: d["totals"].update(latency_cycles=1))
    code, out, _ = cli(capsys, "regress", "pcm_hybrid", "digits_cnn", "--golden", path)
    assert code == 1 and "latency_cycles" in out


# ------------------------------------------------------------------------------------------
# Outputs are checked before simulating
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["file", "under-file", "nul", "too-long", "foreign", "cwd",
                                  "proc"])
def test_unwritable_or_invalid_out_fails_before_simulating(tmp_path, capsys, monkeypatch,
                                                          no_simulation, kind):
    if kind == "proc" and not Path("/proc/self").is_dir():
        pytest.skip("needs Linux's /proc (a folder nobody can create entries in)")
    (tmp_path / "afile").write_text("x")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    monkeypatch.chdir(tmp_path)
    out, needle = {
        "file": (tmp_path / "afile", "exists and is not a folder"),
        "under-file": (tmp_path / "afile" / "out", "is not a folder"),
        "nul": (f"{tmp_path}/a\0b", "invalid path"),
        "too-long": (tmp_path / ("x" * 300), "name too long"),
        "foreign": (tmp_path / "mine", "folder holds files archsim did not write (thesis.tex)"),
        "cwd": (".", "expected a folder name"),
        "proc": ("/proc/archsim-out", "cannot write in /proc"),
    }[kind]
    code, _, err = cli(capsys, "run", "--out", out, *FAST)
    assert_error(code, err, "--out ", needle)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "mine"]


@pytest.mark.parametrize("kind, needle", [("folder", "is a folder, expected a file"),
                                          ("under-file", "is not a folder"),
                                          ("too-long", "name too long")])
def test_unwritable_update_fails_before_simulating(tmp_path, capsys, no_simulation, kind, needle):
    (tmp_path / "afile").write_text("x")
    target = {"folder": tmp_path, "under-file": tmp_path / "afile" / "g.json",
              "too-long": tmp_path / ("g" * 300 + ".json")}[kind]
    code, _, err = cli(capsys, "regress", "pcm_hybrid", "digits_cnn", "--golden", target, "--update")
    assert_error(code, err, "--update ", needle)


def test_unwritable_train_out_fails_before_training(tmp_path, capsys, monkeypatch):
    from archsim import training

    def forbidden(*a, **k):
        raise AssertionError("training started")
    monkeypatch.setattr(training, "train", forbidden)
    code, _, err = cli(capsys, "train", "--out", tmp_path, "--quiet")
    assert_error(code, err, f"--out {tmp_path}: is a folder, expected a file")


# ------------------------------------------------------------------------------------------
# Exit status 3: an internal error is one line naming a log with the traceback
# ------------------------------------------------------------------------------------------

def test_internal_error_exit_3_with_a_log(capsys, monkeypatch):
    from archsim import simulate

    def broken(*a, **k):
        return 1 / 0
    monkeypatch.setattr(simulate, "run", broken)
    code, out, err = cli(capsys, "run", "--quiet")
    assert_error(code, err, "archsim: internal error (ZeroDivisionError: division by zero); this "
                            "is a bug in archsim", "please report it with the log ", status=3)
    log = Path(err.rstrip().rsplit(" ", 1)[1])
    try:
        text = log.read_text()
        assert "Traceback (most recent call last)" in text and "ZeroDivisionError" in text
        assert "command: archsim run --quiet" in text
    finally:
        log.unlink()


def test_interrupt_wrapped_by_numba_is_translated():
    from archsim.cli import _interrupt_in
    try:
        try:
            raise KeyboardInterrupt()
        except KeyboardInterrupt as ki:
            raise SystemError("CPUDispatcher(<function k>) returned a result with an exception "
                              "set") from ki
    except SystemError as exc:
        assert isinstance(_interrupt_in(exc), KeyboardInterrupt)
    assert _interrupt_in(ValueError("x")) is None


def test_interrupt_anywhere_exits_130(capsys, monkeypatch):
    from archsim import simulate

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(simulate, "run", interrupted)
    code, _, err = cli(capsys, "run", "--quiet")
    assert (code, err) == (130, "archsim: interrupted\n")


def test_atomic_check_helpers_return_paths(tmp_path):
    assert atomic.check_output_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()          # the check creates nothing
    assert atomic.check_output_file(tmp_path / "a" / "w.npz") == tmp_path / "a" / "w.npz"
