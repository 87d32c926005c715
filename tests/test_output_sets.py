"""Output sets are all or nothing (issue #18): a failure or an interrupt while a set is written
leaves the previous set exactly as it was; a new set replaces an old one as a whole (no stale
files of an earlier run); folders archsim did not write are never replaced."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from archsim import atomic
from archsim.cli import main
from archsim.errors import OutputError

FAST = ["--quiet", "--seeds", "2", "--times", "25s,1y", "--test-images", "40",
        "--calib-images", "40"]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def leftovers(parent: Path, name: str) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]


@pytest.fixture(scope="module")
def old_set(tmp_path_factory):
    """An accuracy run's output set (with its accuracy plot)."""
    out = tmp_path_factory.mktemp("sets") / "out"
    assert main(["run", *FAST, "--out", str(out)]) == 0
    return out, snapshot(out)


def copy_set(old_set, tmp_path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    for name, data in old_set[1].items():
        (out / name).write_bytes(data)
    return out


def test_a_set_has_its_files_and_a_marker(old_set):
    out, files = old_set
    assert {"report.json", "report.md", "layers.csv", "accuracy_vs_time.png",
            atomic.MARKER} <= set(files)
    marker = json.loads(files[atomic.MARKER])
    assert marker["format"] == "archsim-output-set"
    assert set(marker["files"]) == set(files) - {atomic.MARKER}


@pytest.mark.parametrize("failure", ["disk-full", "interrupt"])
def test_failure_while_writing_the_last_file_keeps_the_old_set(old_set, tmp_path, capsys,
                                                               monkeypatch, failure):
    """The issue's case: a write that fails half-way through a set left a new report.json beside
    an old breakdown.png. Now the last file of the new set fails: the old set is intact."""
    out = copy_set(old_set, tmp_path)
    real = atomic._write_member
    written = []

    def failing(folder, name, data):
        written.append(name)
        if name == "breakdown.png":            # the last file of the set
            if failure == "interrupt":
                raise KeyboardInterrupt
            raise OSError(errno.ENOSPC, "No space left on device")
        real(folder, name, data)
    monkeypatch.setattr(atomic, "_write_member", failing)
    code = main(["run", "--no-accuracy", "--quiet", "--out", str(out)])
    err = capsys.readouterr().err
    assert written[:3] == ["report.json", "report.md", "layers.csv"]   # a new report.json was made
    if failure == "interrupt":
        assert (code, err) == (130, "archsim: interrupted\n")
    else:
        assert code == 2 and err.count("\n") == 1
        assert f"--out {out}" not in err and f"{out}: cannot write the output set (No space left " \
            "on device); the previous content is unchanged" in err
    assert snapshot(out) == old_set[1]                      # old set intact, no mixture
    assert leftovers(tmp_path, "out") == []                 # no temporary folder left


def test_rerun_into_the_same_folder_leaves_no_stale_files(old_set, tmp_path, capsys):
    """The issue's case: reusing an --out folder kept the earlier run's accuracy plot."""
    out = copy_set(old_set, tmp_path)
    assert main(["run", "--no-accuracy", "--quiet", "--out", str(out)]) == 0
    names = set(snapshot(out))
    assert "accuracy_vs_time.png" not in names
    assert names == {"report.json", "report.md", "layers.csv", "components.csv", "breakdown.png",
                     atomic.MARKER}
    assert json.loads((out / "report.json").read_text())["accuracy"] is None
    assert leftovers(tmp_path, "out") == []
    assert "wrote " in capsys.readouterr().err


def test_a_folder_with_other_files_is_never_replaced(tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    (out / "report.json").write_text("{}")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"folder holds files archsim did not write \(notes.txt\)"):
        atomic.write_output_set(out, {"report.json": b"new"})
    assert snapshot(out) == {"notes.txt": b"mine", "report.json": b"{}"}


def test_a_set_written_before_the_marker_existed_may_be_replaced(tmp_path):
    out = tmp_path / "legacy"
    out.mkdir()
    for name in ("report.json", "report.md", "layers.csv", "breakdown.png", ".report.json.x.tmp"):
        (out / name).write_text("old")
    atomic.write_output_set(out, {"report.json": b"new"})
    assert snapshot(out) == {atomic.MARKER: snapshot(out)[atomic.MARKER], "report.json": b"new"}


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_swap_with_and_without_an_atomic_exchange(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    out = tmp_path / "set"
    atomic.write_output_set(out, {"a.csv": b"1", "plots/b.png": b"2"})
    atomic.write_output_set(out, {"layers.csv": b"3"})
    assert sorted(p.name for p in out.iterdir()) == [atomic.MARKER, "layers.csv"]
    assert (out / "layers.csv").read_bytes() == b"3"
    assert leftovers(tmp_path, "set") == []
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask
    assert (out / "layers.csv").stat().st_mode & 0o777 == 0o666 & ~umask


def test_temporaries_of_a_killed_run_are_cleaned_up(tmp_path):
    dead = tmp_path / ".set.999999999.abc.new"        # no such process
    dead.mkdir()
    (dead / "report.json").write_text("half")
    alive = tmp_path / f".set.{os.getppid()}.abc.new"  # a running process: left alone
    alive.mkdir()
    atomic.write_output_set(tmp_path / "set", {"report.json": b"x"})
    assert not dead.exists() and alive.exists()


def test_member_names_cannot_escape_the_set(tmp_path):
    for bad in ("../x", "/etc/x", atomic.MARKER):
        with pytest.raises(ValueError):
            atomic.write_output_set(tmp_path / "s", {bad: b""})


def test_write_file_errors_are_output_errors(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="cannot write the weights file"):
        atomic.write_file(tmp_path / "f" / "w.npz", b"", "weights file")


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_ctrl_c_during_the_swap_waits_until_the_new_set_is_in_place(tmp_path, monkeypatch,
                                                                     exchange):
    import signal
    out = tmp_path / "set"
    atomic.write_output_set(out, {"a.csv": b"old"})
    real = atomic._exchange

    def interrupted(a, b):
        os.kill(os.getpid(), signal.SIGINT)          # blocked until the swap is done
        return real(a, b) if exchange else False
    monkeypatch.setattr(atomic, "_exchange", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic.write_output_set(out, {"b.csv": b"new"})
    assert sorted(p.name for p in out.iterdir()) == [atomic.MARKER, "b.csv"]
    assert leftovers(tmp_path, "set") == []
