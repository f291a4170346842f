"""The shared response cache's store operations, on SQLite and Redis: get/put, expiry, size caps, eviction."""

from __future__ import annotations

import time

from api_orchestration.resilience.http_cache import CacheEntry


def _entry(body: bytes = b"x") -> dict:
    now = time.time()
    return CacheEntry(200, (("ETag", '"a"'),), body, now, now + 60, etag='"a"').to_dict()


def test_put_then_get_round_trips_the_entry(backend):
    assert backend.cache_get("api", "k1") is None
    put = backend.cache_put("api", "k1", _entry(b"hello"), 5, 30.0, 1000)
    assert (put.stored, put.evicted, put.total_bytes) == (True, 0, 5)
    got = CacheEntry.from_dict(backend.cache_get("api", "k1"))
    assert got.body == b"hello" and got.etag == '"a"'
    assert backend.cache_get("other", "k1") is None  # scopes are separate


def test_replacing_an_entry_does_not_count_it_twice(backend):
    backend.cache_put("api", "k1", _entry(), 100, 30.0, 1000)
    put = backend.cache_put("api", "k1", _entry(), 40, 30.0, 1000)
    assert put.total_bytes == 40
    [stats] = backend.cache_stats()
    assert (stats.scope, stats.entries, stats.bytes) == ("api", 1, 40)


def test_entries_expire(backend):
    backend.cache_put("api", "short", _entry(), 10, 0.3, 1000)
    backend.cache_put("api", "long", _entry(), 20, 30.0, 1000)
    assert backend.cache_get("api", "short") is not None
    time.sleep(0.45)
    assert backend.cache_get("api", "short") is None
    [stats] = backend.cache_stats()
    assert (stats.entries, stats.bytes) == (1, 20)


def test_total_cap_evicts_the_entries_nearest_expiry(backend):
    backend.cache_put("api", "a", _entry(), 400, 10.0, 1000)
    backend.cache_put("api", "b", _entry(), 400, 20.0, 1000)
    put = backend.cache_put("api", "c", _entry(), 400, 30.0, 1000)
    assert (put.stored, put.evicted, put.total_bytes) == (True, 1, 800)
    assert backend.cache_get("api", "a") is None
    assert backend.cache_get("api", "b") is not None and backend.cache_get("api", "c") is not None


def test_an_entry_larger_than_the_cap_is_not_stored(backend):
    backend.cache_put("api", "a", _entry(), 10, 10.0, 100)
    put = backend.cache_put("api", "big", _entry(), 101, 10.0, 100)
    assert (put.stored, put.evicted, put.total_bytes) == (False, 0, 10)
    assert backend.cache_get("api", "big") is None and backend.cache_get("api", "a") is not None


def test_stats_per_scope_and_clear(backend):
    backend.cache_put("a", "1", _entry(), 10, 10.0, 100)
    backend.cache_put("a", "2", _entry(), 15, 10.0, 100)
    backend.cache_put("b", "1", _entry(), 7, 10.0, 100)
    assert [(s.scope, s.entries, s.bytes) for s in backend.cache_stats()] == [("a", 2, 25), ("b", 1, 7)]
    backend.clear()
    assert backend.cache_stats() == [] and backend.cache_get("a", "1") is None
