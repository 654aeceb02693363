"""Decisions remembered after a trace's data is gone, so late spans get the same answer at once.

* Kept ids: an LRU of trace id → :class:`Decision` bounded by count. A late span of a kept trace must be
  stamped with the trace's class, policy and threshold, so the decision itself is stored (a shared, interned
  object: an entry costs the dict slot, the key and the LRU links, about 200 bytes).
* Dropped ids: only membership matters and there are ~10x more of them, so they go into a cuckoo filter
  (Fan et al. 2014, as Refinery does) of 32-bit fingerprints in buckets of four, kept at most 90% full:
  about 4.4 bytes per id, against ~70 for a Python ``set`` of ints. Two generations of ``size`` ids each
  rotate (the older is discarded when the newer fills), which bounds memory and forgets the oldest ids first
  without per-entry bookkeeping; at least the last ``size`` dropped ids are always remembered.

  A cuckoo filter has no false negatives for ids it holds, and false positives at a rate of about
  ``2 * 4 / 2**32`` per generation (~2e-9; ~4e-9 over both). A false positive makes a *new* trace look already
  dropped, so the fingerprint is 32 bits rather than Refinery's smaller ones: one trace in about 250 million,
  well below any other loss in the pipeline. Hashes come from Python's ``hash`` of the id bytes (SipHash, keyed
  per process), so ids that are not random (timestamp prefixes) spread just as well.

  Every new trace id is looked up, and almost all of them are absent, which costs four bucket reads (two per
  generation) scattered over megabytes, i.e. CPU cache misses. Each filter therefore has a one-bit-per-hash
  summary of 4 bits per id it holds (half a byte): an absent id usually finds its bit clear, and the buckets
  are read for the 10-22% whose bit is set (more as the filter fills). A Python ``set`` of the hashes would
  answer in ~0.3 us instead of ~0.5 us but cost ~70 bytes per id, about 130 MB at the default size.
"""

from __future__ import annotations

import collections
import math
import random
from array import array
from collections.abc import Iterable
from typing import Generic, TypeVar

V = TypeVar("V")

_SLOTS_PER_BUCKET = 4
_MAX_LOAD = 0.9
_MAX_KICKS = 500
_MASK32 = 0xFFFFFFFF
_MASK64 = 0xFFFFFFFFFFFFFFFF
_SUMMARY_BITS_PER_ID = 4
_SUMMARY_SHIFT = 20  # the summary's bit comes from hash bits 20..63, not from the bucket's bits 0..31 alone
_ALTERNATE_MULTIPLIER = 0x5BD1E995


class KeptCache(Generic[V]):
    """LRU map bounded by entry count; a hit refreshes the entry."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: collections.OrderedDict[bytes, V] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> V | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: bytes, value: V) -> None:
        entries = self._entries
        entries[key] = value
        entries.move_to_end(key)
        while len(entries) > self._size:
            entries.popitem(last=False)


class CuckooFilter:
    """Approximate set of 64-bit hashes: 32-bit fingerprints, 4 slots per bucket, partial-key cuckoo hashing.

    The alternate bucket is ``(H(fp) - i) mod n``, which is its own inverse for any bucket count ``n``, so the
    table need not be a power of two (and waste up to half its memory).
    """

    def __init__(self, capacity: int, rng: random.Random | None = None) -> None:
        self.capacity = capacity
        # At least 64 buckets: tiny tables fill unevenly and would fail inserts well below the target load.
        self._buckets = max(64, math.ceil(capacity / (_SLOTS_PER_BUCKET * _MAX_LOAD)))
        self._slots = array("I", bytes(4 * _SLOTS_PER_BUCKET * self._buckets))  # 0 marks an empty slot
        self._summary = bytearray(max(64, capacity * _SUMMARY_BITS_PER_ID // 8))
        self._summary_bits = 8 * len(self._summary)
        self._rng = rng or random.Random(0x5EED)
        self.count = 0

    @property
    def nbytes(self) -> int:
        return self._slots.itemsize * len(self._slots) + len(self._summary)

    def _alternate(self, bucket: int, fingerprint: int) -> int:
        return ((fingerprint * _ALTERNATE_MULTIPLIER) - bucket) % self._buckets

    # __contains__ and add run once per new trace and per dropped trace: the arithmetic of _alternate is
    # inlined, and a bucket is read as one slice rather than slot by slot.

    def __contains__(self, h: int) -> bool:
        bit = (h >> _SUMMARY_SHIFT) % self._summary_bits
        if not self._summary[bit >> 3] & (1 << (bit & 7)):
            return False
        fingerprint = (h >> 32) & _MASK32 or 1
        buckets = self._buckets
        first = (h & _MASK32) % buckets
        slots = self._slots
        start = first * _SLOTS_PER_BUCKET
        if fingerprint in slots[start : start + _SLOTS_PER_BUCKET]:
            return True
        start = ((fingerprint * _ALTERNATE_MULTIPLIER) - first) % buckets * _SLOTS_PER_BUCKET
        return fingerprint in slots[start : start + _SLOTS_PER_BUCKET]

    def add(self, h: int) -> bool:
        """Insert; False when the table is too full (the caller rotates). Duplicates are not detected."""
        bit = (h >> _SUMMARY_SHIFT) % self._summary_bits
        self._summary[bit >> 3] |= 1 << (bit & 7)  # left set if the insert fails: a false positive, not a miss
        fingerprint = (h >> 32) & _MASK32 or 1
        first = (h & _MASK32) % self._buckets
        second = self._alternate(first, fingerprint)
        if self._place(first, fingerprint) or self._place(second, fingerprint):
            self.count += 1
            return True
        bucket = self._rng.choice((first, second))
        slots = self._slots
        for _ in range(_MAX_KICKS):
            index = bucket * _SLOTS_PER_BUCKET + self._rng.randrange(_SLOTS_PER_BUCKET)
            fingerprint, slots[index] = slots[index], fingerprint
            bucket = self._alternate(bucket, fingerprint)
            if self._place(bucket, fingerprint):
                self.count += 1
                return True
        # The last evicted fingerprint has no home: one earlier id is forgotten. Only near full load; the
        # caller rotates generations, so this stays rare and only costs a late span a fresh decision.
        return False

    def _place(self, bucket: int, fingerprint: int) -> bool:
        start = bucket * _SLOTS_PER_BUCKET
        free = self._slots[start : start + _SLOTS_PER_BUCKET]
        if 0 not in free:
            return False
        self._slots[start + free.index(0)] = fingerprint
        return True


class DroppedCache:
    """At least the last ``size`` dropped trace ids, in two rotating cuckoo-filter generations."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._current = CuckooFilter(size)
        self._previous: CuckooFilter | None = None

    def __len__(self) -> int:
        return self._current.count + (self._previous.count if self._previous else 0)

    @property
    def nbytes(self) -> int:
        return self._current.nbytes + (self._previous.nbytes if self._previous else 0)

    def __contains__(self, trace_id: bytes) -> bool:
        h = hash(trace_id) & _MASK64
        return h in self._current or (self._previous is not None and h in self._previous)

    def add(self, trace_id: bytes) -> None:
        self.add_all((trace_id,))

    def add_all(self, trace_ids: Iterable[bytes]) -> None:
        size = self._size
        for trace_id in trace_ids:
            h = hash(trace_id) & _MASK64
            if self._current.count >= size or not self._current.add(h):
                self._rotate()
                self._current.add(h)

    def _rotate(self) -> None:
        self._previous = self._current
        self._current = CuckooFilter(self._size)
