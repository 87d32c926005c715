"""Named random streams: one ``numpy.random.Generator`` per purpose, derived from the run's seed and
a path of names and indices (DESIGN.md section 10, as numpy's ``SeedSequence`` spawning does).

    streams = Streams(seed=0).child("mapping", 0, "chip", 3)
    programming = streams("program")             # the devices of chip 3
    reads = streams("time", 2, "read", "test", "gdc")   # the test pass with GDC at time 2

A path element is a string (hashed to a 64-bit word, so the name itself selects the stream) or a
non-negative integer (an index). Two different paths give independent streams; the same seed and
path give the same numbers bit for bit, whatever else the run draws and in whatever order. No
stream id is ever packed into an integer by arithmetic.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np


def _word(part: str | int) -> int:
    if isinstance(part, (bool, np.bool_)):
        raise TypeError(f"stream path element {part!r}: expected a name or an index")
    if isinstance(part, (int, np.integer)):
        if part < 0:
            raise ValueError(f"stream path index {part} must be >= 0")
        return int(part)
    if isinstance(part, str):
        return int.from_bytes(hashlib.blake2b(part.encode(), digest_size=8).digest(), "little")
    raise TypeError(f"stream path element {part!r}: expected a name or an index")


def named_rng(seed: int, *path: str | int) -> np.random.Generator:
    """The generator of stream ``path`` under the run seed ``seed``."""
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return np.random.default_rng(np.random.SeedSequence(int(seed),
                                                        spawn_key=tuple(_word(p) for p in path)))


@dataclass(frozen=True)
class Streams:
    """A node of the stream tree: ``streams(*names)`` is a generator, ``streams.child(*names)`` a
    sub-tree (e.g. one programmed chip)."""
    seed: int
    path: tuple = ()

    def __call__(self, *names: str | int) -> np.random.Generator:
        return named_rng(self.seed, *self.path, *names)

    def child(self, *names: str | int) -> "Streams":
        for name in names:
            _word(name)                 # reject bad elements where they are given
        return Streams(self.seed, (*self.path, *names))

    @classmethod
    def of(cls, source: "Streams | np.random.Generator | int") -> "Streams":
        """Streams from a seed, or from a generator (one draw of it seeds the tree: the same
        generator state gives the same tree)."""
        if isinstance(source, Streams):
            return source
        if isinstance(source, np.random.Generator):
            return cls(int(source.integers(0, 2 ** 63)))
        return cls(int(source))
