"""Atomic outputs: nothing archsim writes is ever seen half-written.

- :func:`atomic_write_bytes` (one file: reports, golden files, weights): the data goes to a
  temporary file beside the target, then a rename.
- :func:`write_output_set` (a folder of files that belong together: ``--out DIR``): the whole set is
  written into a temporary folder beside the target and swapped in with one rename (an atomic
  exchange where the OS has one), so a reader sees the old set or the new one, never a mixture,
  and files of an earlier run that the new one does not write are gone.
- :func:`check_output_dir` / :func:`check_output_file`: the same checks the writers need, done
  before a long simulation starts, so an unwritable ``--out`` fails in a second, not after an hour.

Every failure is an :class:`~archsim.errors.OutputError` naming the path; an interrupted or failed
write leaves the previous file or set as it was and removes its temporary files.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Mapping

from .errors import OutputError

# mkstemp creates files readable by the owner only; reports should get the usual permissions
_UMASK = os.umask(0)
os.umask(_UMASK)

MARKER = ".archsim-output.json"      # names the files of a set archsim wrote
# files of sets written before the marker existed (report, compare): such a folder may be replaced
_LEGACY_OUTPUT = re.compile(r"^(report\.(json|md)|compare\.(json|md)|([ab]_)?layers\.csv|"
                            r"[\w.-]+\.png|\..+\.tmp)$")


# ------------------------------------------------------------------------------------------
# One file
# ------------------------------------------------------------------------------------------

def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_file(path: str | Path, data: bytes, what: str = "file") -> Path:
    """:func:`atomic_write_bytes` with its OS errors as an :class:`OutputError` naming the path."""
    path = Path(path)
    try:
        atomic_write_bytes(path, data)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write the {what} ({_reason(exc)}); nothing was "
                          "changed") from None
    return path


# ------------------------------------------------------------------------------------------
# Checks before a run
# ------------------------------------------------------------------------------------------

def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _existing_ancestor(path: Path) -> Path:
    for parent in path.parents:
        if parent.exists() or parent.is_symlink():
            return parent
    return Path(path.anchor or ".")


def _probe_writable(folder: Path, name: str, target: Path, option: str) -> None:
    """Create and remove a temporary entry named after ``name`` in ``folder``: the only reliable
    test (permissions, read-only file systems, ACLs, names that are too long)."""
    if not folder.is_dir():
        raise OutputError(f"{option}{target}: {folder} is not a folder")
    try:
        probe = tempfile.mkdtemp(prefix=f".{name}.", suffix=".probe", dir=folder)
        os.rmdir(probe)
    except OSError as exc:
        raise OutputError(f"{option}{target}: cannot write in {folder} ({_reason(exc)})") from None


def _label(option: str | None) -> str:
    return f"{option} " if option else ""


def check_output_file(path: str | Path, option: str | None = None) -> Path:
    """``path`` can be (re)written atomically: it is not a folder and its folder (or the nearest
    existing one above it) accepts new files. ``option`` (e.g. ``--update``) prefixes the error."""
    label = _label(option)
    if str(path) in ("", "."):
        raise OutputError(f"{label}{str(path)!r}: expected a file name")
    try:
        path = Path(path)
        if path.is_dir():
            raise OutputError(f"{label}{path}: is a folder, expected a file")
        folder = path.parent if path.parent.exists() else _existing_ancestor(path)
        _probe_writable(folder, path.name, path, label)
    except (ValueError, OSError) as exc:     # a NUL byte in the name, a name too long
        raise OutputError(f"{label}{path!r}: invalid path ({exc})") from None
    return path


def _foreign_entries(folder: Path) -> list[str]:
    """Entries of ``folder`` that archsim did not write (the marker lists a set's files)."""
    names = sorted(os.listdir(folder))
    owned: set[str] = set()
    marker = folder / MARKER
    if marker.is_file():
        try:
            owned = {Path(f).parts[0] for f in json.loads(marker.read_text()).get("files", [])}
        except (OSError, ValueError, AttributeError, TypeError):
            owned = set()
        owned.add(MARKER)
    foreign = []
    for name in names:
        if name in owned:
            continue
        if _LEGACY_OUTPUT.match(name) and (folder / name).is_file() \
                and not (folder / name).is_symlink():
            continue
        foreign.append(name)
    return foreign


def check_output_dir(path: str | Path, option: str | None = None) -> Path:
    """``path`` can receive an output set: it is absent, or a folder that is empty or holds an
    earlier archsim set (files it would replace), and its parent accepts new entries. Returns the
    path with a symbolic link to a folder resolved (the set is swapped in where the link points)."""
    label = _label(option)
    if str(path) in ("", "."):
        raise OutputError(f"{label}{str(path)!r}: expected a folder name (the set is swapped in "
                          "as a whole, so not the working directory itself)")
    try:
        path = Path(path)
        if path.is_symlink() and path.is_dir():
            path = path.resolve()
        if path.exists():
            if not path.is_dir():
                raise OutputError(f"{label}{path}: exists and is not a folder")
            if path.resolve() == Path.cwd().resolve() or path.resolve() == Path(path.anchor):
                raise OutputError(f"{label}{path}: the working directory or a root cannot be "
                                  "replaced by an output set; name a folder inside it")
            foreign = _foreign_entries(path)
            if foreign:
                shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
                raise OutputError(f"{label}{path}: folder holds files archsim did not write "
                                  f"({shown}); an output set replaces the whole folder, so name "
                                  "a new or empty one")
            _probe_writable(path.parent, path.name, path, label)
        else:
            _probe_writable(_existing_ancestor(path), path.name, path, label)
    except (ValueError, OSError) as exc:
        raise OutputError(f"{label}{path!r}: invalid path ({_reason(exc)})") from None
    return path


# ------------------------------------------------------------------------------------------
# A set of files, all or nothing
# ------------------------------------------------------------------------------------------

def _clean_stale_temporaries(parent: Path, name: str) -> None:
    """Remove ``.NAME.<pid>.*`` folders left by a run that was killed (its process is gone)."""
    pattern = re.compile(rf"^\.{re.escape(name)}\.(\d+)\..*\.(new|old)$")
    try:
        entries = os.listdir(parent)
    except OSError:
        return
    for entry in entries:
        m = pattern.match(entry)
        if not m:
            continue
        pid = int(m.group(1))
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
            continue                       # still running: not ours to remove
        except ProcessLookupError:
            pass
        except (PermissionError, OverflowError):
            continue
        shutil.rmtree(parent / entry, ignore_errors=True)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False                        # file system without exchange: two renames instead
    raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def _signals_deferred():
    """Ctrl-C and SIGTERM wait until the block is done (the swap of two folders must not stop
    half-way), then act as they would have. Python runs signal handlers in the main thread only,
    so replacing the handlers is enough whatever threads numba or BLAS started."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    signums = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, lambda signum, frame: pending.append(signum)) for s in signums}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        if pending:
            handler = previous[pending[0]]
            if callable(handler):
                handler(pending[0], None)        # e.g. raises KeyboardInterrupt
            elif handler != signal.SIG_IGN:
                signal.raise_signal(pending[0])  # the default action


def _write_member(folder: Path, name: str, data: bytes) -> None:
    target = folder / name
    if target.parent != folder:
        target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 & ~_UMASK)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def write_output_set(out_dir: str | Path, files: Mapping[str, bytes],
                     option: str | None = None) -> list[Path]:
    """Write ``files`` (relative name -> bytes, all rendered beforehand) as the whole content of
    the folder ``out_dir``, all or nothing: written into ``.NAME.<pid>.<random>.new`` beside it,
    then swapped in. The previous content of ``out_dir`` (an earlier archsim set, see
    :func:`check_output_dir`) is replaced as a whole. Returns the paths of the files written."""
    for name in files:
        parts = Path(name).parts
        if not parts or Path(name).is_absolute() or ".." in parts or name == MARKER:
            raise ValueError(f"write_output_set: invalid member name {name!r}")
    target = check_output_dir(out_dir, option)
    parent = target.parent
    label = _label(option)
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{label}{target}: cannot create {parent} ({_reason(exc)})") from None
    _clean_stale_temporaries(parent, target.name)
    stem = f".{target.name}.{os.getpid()}."
    tmp = old = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=stem, suffix=".new", dir=parent))
        for name, data in files.items():
            _write_member(tmp, name, data)
        _write_member(tmp, MARKER, (json.dumps({"format": "archsim-output-set",
                                                "files": sorted(files)}, indent=1) + "\n").encode())
        os.chmod(tmp, 0o777 & ~_UMASK)
        with _signals_deferred():
            if not target.exists():
                os.rename(tmp, target)
            elif _exchange(tmp, target):
                old = tmp                    # it now holds the previous set
            else:
                old = Path(tempfile.mkdtemp(prefix=stem, suffix=".old", dir=parent))
                os.rename(target, old / "set")
                try:
                    os.rename(tmp, target)
                except OSError:
                    os.rename(old / "set", target)
                    raise
            tmp = None
    except OSError as exc:
        raise OutputError(f"{label}{target}: cannot write the output set ({_reason(exc)}); the "
                          "previous content is unchanged") from None
    finally:
        for leftover in (tmp, old):
            if leftover is not None:
                shutil.rmtree(leftover, ignore_errors=True)
    return [target / name for name in files]
