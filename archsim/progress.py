"""Progress display for long runs: a one-line bar on a terminal, a line every few seconds otherwise
(logs, CI), always on stderr so reports on stdout stay clean. Silent when ``enabled`` is False."""

from __future__ import annotations

import sys
import time


class Progress:
    """``with Progress(total, "analog eval") as bar: ... bar.advance(n, note)``."""

    def __init__(self, total: int, label: str, *, enabled: bool = True, stream=None,
                 min_interval_s: float = 0.2, log_interval_s: float = 10.0):
        self.total = max(int(total), 1)
        self.label = label
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = min_interval_s if self.tty else log_interval_s
        self.done = 0
        self.note = ""
        self.start = time.perf_counter()
        self._last = 0.0

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def advance(self, n: int = 1, note: str = "") -> None:
        self.done = min(self.done + n, self.total)
        self.note = note or self.note
        now = time.perf_counter()
        if now - self._last >= self.interval or self.done == self.total:
            self._last = now
            self._draw()

    def _draw(self, final: bool = False) -> None:
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.start
        frac = self.done / self.total
        eta = elapsed / frac - elapsed if frac > 0 else 0.0
        bar = "#" * int(24 * frac) + "-" * (24 - int(24 * frac))
        text = (f"{self.label} [{bar}] {self.done}/{self.total} {elapsed:5.1f}s"
                + (f" eta {eta:5.1f}s" if not final and frac < 1 else "")
                + (f"  {self.note}" if self.note else ""))
        if self.tty:
            self.stream.write("\r" + text[:150].ljust(150) + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and (self.tty or self.done < self.total):
            self._draw(final=True)
        self.enabled = False
