"""Progress display for long runs: a one-line bar on a terminal, a line every few seconds otherwise
(logs, CI), always on stderr so reports on stdout stay clean. Silent when ``enabled`` is False.

The ETA is measured from the end of the first step, not from the start: the first step carries the
one-off costs (numba compiling or loading its kernels, first-touch page faults) and would make the
estimate of every later step too long.
"""

from __future__ import annotations

import sys
import time


_TIME_UNITS = (("y", 31536000.0), ("mo", 2592000.0), ("d", 86400.0), ("h", 3600.0), ("min", 60.0))


def format_time_s(seconds: float) -> str:
    """A time after programming: ``25 s``, ``1 h``, ``1 d``, ``1 mo``, ``1 y`` (the largest unit
    that divides it; seconds otherwise)."""
    for unit, size in _TIME_UNITS:
        if seconds >= size and abs(seconds / size - round(seconds / size)) < 1e-9:
            return f"{round(seconds / size):g} {unit}"
    return f"{seconds:g} s"


def plural(n: int, word: str, words: str | None = None) -> str:
    """``1 programmed chip``, ``3 programmed chips``, ``1,000 test images``."""
    return f"{n:,} {word if n == 1 else (words or word + 's')}"


def format_duration(seconds: float) -> str:
    """A wall-clock duration as a person says it: ``0.4 s``, ``25 s``, ``3 min 20 s``,
    ``1 h 5 min``, ``2 d 3 h``."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s" if s % 60 else f"{s // 60} min"
    if s < 86400:
        h, m = s // 3600, (s % 3600) // 60
        return f"{h} h {m} min" if m else f"{h} h"
    d, h = s // 86400, (s % 86400) // 3600
    return f"{d} d {h} h" if h else f"{d} d"


class Progress:
    """``with Progress(total, "analog eval") as bar: ... bar.advance(n, note)``."""

    def __init__(self, total: int, label: str, *, enabled: bool = True, stream=None,
                 min_interval_s: float = 0.2, log_interval_s: float = 10.0, clock=time.perf_counter):
        self.total = max(int(total), 1)
        self.label = label
        self.enabled = enabled
        self.stream = stream or sys.stderr
        try:
            self.tty = bool(self.stream.isatty())
        except (AttributeError, ValueError, OSError):
            self.tty = False
        self.interval = min_interval_s if self.tty else log_interval_s
        self.clock = clock
        self.done = 0
        self.note = ""
        self.start = clock()
        self._last = 0.0
        self._warm: tuple[float, int] | None = None     # (time, done) at the end of the first step

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def advance(self, n: int = 1, note: str = "") -> None:
        self.done = min(self.done + n, self.total)
        self.note = note or self.note
        now = self.clock()
        if self._warm is None:
            self._warm = (now, self.done)
        if now - self._last >= self.interval or self.done == self.total:
            self._last = now
            self._draw()

    def eta_s(self) -> float | None:
        """Seconds left at the rate since the first step; None until a second step is done."""
        if self._warm is None:
            return None
        t1, d1 = self._warm
        if self.done <= d1:
            return None
        rate = (self.clock() - t1) / (self.done - d1)
        return rate * (self.total - self.done)

    def _draw(self, final: bool = False) -> None:
        if not self.enabled:
            return
        elapsed = self.clock() - self.start
        frac = self.done / self.total
        eta = None if final or frac >= 1 else self.eta_s()
        bar = "#" * int(24 * frac) + "-" * (24 - int(24 * frac))
        text = (f"{self.label} [{bar}] {self.done}/{self.total} {format_duration(elapsed)}"
                + (f", eta {format_duration(eta)}" if eta is not None else "")
                + (f"  {self.note}" if self.note else ""))
        try:
            if self.tty:
                self.stream.write("\r" + text[:150].ljust(150) + ("\n" if final else ""))
            else:
                self.stream.write(text + "\n")
            self.stream.flush()
        except (BrokenPipeError, OSError, ValueError):
            self.enabled = False          # nobody reads stderr any more: carry on silently

    def close(self) -> None:
        if self.enabled and (self.tty or self.done < self.total):
            self._draw(final=True)
        self.enabled = False
