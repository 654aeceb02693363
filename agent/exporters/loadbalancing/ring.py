"""Consistent hashing of trace ids onto backends.

Each backend owns ``POINTS_PER_BACKEND`` points on a 64-bit ring, placed by hashing ``"<endpoint>#<i>"``; a
trace belongs to the first point at or after the hash of its id. Adding or removing one of N backends moves
only the traces of the points it gains or loses, about 1/N of them, and every sidecar that knows the same
backends computes the same owner, with no coordination.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable

POINTS_PER_BACKEND = 160


def _hash(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class HashRing:
    def __init__(self, backends: Iterable[str]) -> None:
        self.backends: tuple[str, ...] = tuple(sorted(set(backends)))
        points = sorted(
            (_hash(f"{backend}#{i}".encode()), backend) for backend in self.backends for i in range(POINTS_PER_BACKEND)
        )
        self._positions = [position for position, _ in points]
        self._owners = [backend for _, backend in points]

    def __len__(self) -> int:
        return len(self.backends)

    def owner(self, key: bytes) -> str:
        """The backend for a trace id; raises LookupError when the ring is empty."""
        if not self._positions:
            raise LookupError("no backends")
        index = bisect.bisect_left(self._positions, _hash(key))
        return self._owners[index % len(self._owners)]

    def without(self, backend: str) -> HashRing:
        return HashRing(b for b in self.backends if b != backend)
