"""Decision caches: the kept LRU and the compact dropped-id cuckoo filter."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from agent.processors.tail_sampling.decision_cache import CuckooFilter, DroppedCache, KeptCache


def test_the_kept_cache_evicts_the_least_recently_used_id_first() -> None:
    cache: KeptCache[str] = KeptCache(2)
    cache.put(b"a", "A")
    cache.put(b"b", "B")
    assert cache.get(b"a") == "A"  # refreshes a
    cache.put(b"c", "C")
    assert (cache.get(b"a"), cache.get(b"b"), cache.get(b"c"), len(cache)) == ("A", None, "C", 2)


# More ids than the size: the cache rotates its generations at least once (hypothesis rarely makes long lists on
# its own), which is where the older of the last ``size`` ids could be forgotten.
@given(st.lists(st.binary(min_size=16, max_size=16), min_size=101, max_size=400, unique=True))
def test_a_dropped_cache_never_forgets_an_id_among_the_last_size_it_was_given(ids: list[bytes]) -> None:
    cache = DroppedCache(100)
    for trace_id in ids:
        cache.add(trace_id)
    assert all(trace_id in cache for trace_id in ids[-100:])


def test_the_dropped_cache_costs_a_few_bytes_per_id_and_its_memory_stays_flat_as_ids_keep_coming() -> None:
    size = 50_000
    cache = DroppedCache(size)
    for _ in range(size):
        cache.add(os.urandom(16))
    per_id = cache.nbytes / size
    assert per_id < 5  # 32-bit fingerprints at <= 90% load
    for _ in range(3 * size):
        cache.add(os.urandom(16))
    assert cache.nbytes <= 2 * per_id * size + 64  # two generations at most
    assert size <= len(cache) <= 2 * size


def test_the_dropped_cache_rarely_claims_an_id_it_never_saw() -> None:
    cache = DroppedCache(100_000)
    for _ in range(100_000):
        cache.add(os.urandom(16))
    false_positives = sum(os.urandom(16) in cache for _ in range(100_000))
    assert false_positives <= 2  # expected ~2e-4 at 32-bit fingerprints


def test_a_cuckoo_filter_holds_its_capacity_without_losing_ids() -> None:
    cuckoo = CuckooFilter(10_000)
    hashes = [int.from_bytes(os.urandom(8), "big") for _ in range(10_000)]
    assert all(cuckoo.add(h) for h in hashes)
    assert all(h in cuckoo for h in hashes)


def test_the_dropped_cache_counts_and_measures_both_of_its_generations() -> None:
    """Its size is the sampling_cache_entries gauge: after a rotation the older generation still holds ids."""
    cache = DroppedCache(100)
    for n in range(150):
        cache.add(n.to_bytes(16, "big"))
    assert len(cache) == 150
    assert cache.nbytes == 2 * CuckooFilter(100).nbytes
