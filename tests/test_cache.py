"""The shared response cache against the demo API's /reference endpoints (Cache-Control, ETag, 304),
on SQLite and Redis, through both drivers and across processes: calls are counted at the server."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pytest
import requests

from api_orchestration import DeferralNeeded, Guard, RateLimit, ResilientCaller, RetryPolicy
from api_orchestration.calls.engines import call_concurrently, call_concurrently_async
from api_orchestration.calls.events import CacheResult, CacheUsed, RecordingListener
from api_orchestration.errors import ConfigurationError
from api_orchestration.policy import CachePolicy

FAST = RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.02)


def guard(backend, cache: CachePolicy | None, **kw) -> tuple[Guard, RecordingListener]:
    seen = RecordingListener()
    kw.setdefault("limit_key", "reference")
    return Guard(backend=backend, retry=FAST, cache=cache, listeners=[seen], **kw), seen


def caller(g: Guard) -> ResilientCaller:
    return ResilientCaller(requests.Session(), g, timeout=5)


def calls(demo, path: str) -> int:
    return demo.calls()["paths"].get(path, 0)


def results(seen: RecordingListener) -> list[str]:
    return [str(e.result) for e in seen.of(CacheUsed)]


def test_a_fresh_entry_is_served_by_another_caller_without_a_call(backend, demo):
    url = f"{demo.url}/reference/countries?max_age=60"
    first, seen_a = guard(backend, CachePolicy(ttl=60))
    second, seen_b = guard(backend, CachePolicy(ttl=60))
    a = caller(first).call("GET", url)
    b = caller(second).call("GET", url)  # another caller (its own session) on the shared store
    assert calls(demo, "/reference/countries") == 1
    assert b.status_code == 200 and b.json() == a.json() and b.from_cache
    assert b.headers["ETag"] == a.headers["ETag"]
    assert (results(seen_a), results(seen_b)) == (["stored"], ["hit"])
    [stats] = backend.cache_stats()
    assert (stats.scope, stats.entries) == ("reference", 1) and stats.bytes >= len(a.content)


def test_a_hit_spends_no_rate_limit_permit(backend, demo):
    url = f"{demo.url}/reference/countries?max_age=60"
    g, _ = guard(backend, CachePolicy(ttl=60), rate_limit=RateLimit(1, per_seconds=30), max_sleep=1)
    caller(g).call("GET", url)
    started = time.monotonic()
    for _ in range(5):  # without the cache the second call would wait 30 s for a permit (a deferral)
        assert caller(g).call("GET", url).status_code == 200
    assert time.monotonic() - started < 1.0
    assert backend.limiter_status("reference").granted == 1
    with pytest.raises(DeferralNeeded):  # the key's only permit is spent: an uncached call must wait
        caller(g).call("GET", f"{demo.url}/reference/countries?max_age=61")


def test_hits_across_two_processes(state_url, demo):
    """A second process (its own store connection) is served what the first stored: 0 calls."""
    from api_orchestration.state import backend_for_url

    url = f"{demo.url}/reference/countries?max_age=60&t={uuid.uuid4().hex}"
    script = f"""
import json, requests
from api_orchestration import Guard, ResilientCaller
from api_orchestration.policy import CachePolicy
from api_orchestration.state import backend_for_url
g = Guard(backend=backend_for_url({state_url!r}), limit_key="reference", cache=CachePolicy(ttl=60))
r = ResilientCaller(requests.Session(), g, timeout=5).call("GET", {url!r})
print(json.dumps({{"cached": getattr(r, "from_cache", False), "body": r.json()}}))
"""
    env_path = "plugins:include:tests"
    outputs = []
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
            env={**__import__("os").environ, "PYTHONPATH": env_path},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        outputs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    assert [o["cached"] for o in outputs] == [False, True]
    assert outputs[0]["body"] == outputs[1]["body"]
    assert calls(demo, "/reference/countries") == 1
    backend_for_url(state_url).close()


def test_no_cache_revalidates_with_etag_and_a_304_refreshes_the_entry(backend, demo):
    url = f"{demo.url}/reference/currencies"
    g, seen = guard(backend, CachePolicy(ttl=60))
    first = caller(g).call("GET", url)
    second = caller(g).call("GET", url)  # no-cache: a conditional call, answered 304 without a body
    assert calls(demo, "/reference/currencies") == 2
    assert second.status_code == 200 and second.json() == first.json() and second.from_cache
    assert results(seen) == ["stored", "revalidated"]
    requests.post(f"{demo.url}/admin/reference/currencies", timeout=5).raise_for_status()  # a new version
    third = caller(g).call("GET", url)
    assert third.json()["version"] == first.json()["version"] + 1 and not getattr(third, "from_cache", False)
    assert results(seen)[-1] == "stored"
    assert caller(g).call("GET", url).json()["version"] == third.json()["version"]


def test_a_stale_entry_is_revalidated_after_its_ttl(backend, demo):
    """``ttl`` caps the server's max-age; the stale entry is kept to be revalidated (304)."""
    url = f"{demo.url}/reference/countries?max_age=3600"
    g, seen = guard(backend, CachePolicy(ttl=0.3))
    first = caller(g).call("GET", url)
    assert caller(g).call("GET", url).from_cache  # fresh
    time.sleep(0.4)
    third = caller(g).call("GET", url)
    assert third.json() == first.json() and calls(demo, "/reference/countries") == 2
    assert results(seen) == ["stored", "hit", "revalidated"]


def test_no_store_is_never_stored(backend, demo):
    g, seen = guard(backend, CachePolicy(ttl=60))
    versions = [caller(g).call("GET", f"{demo.url}/reference/rates").json()["version"] for _ in range(3)]
    assert versions == [1, 2, 3] and calls(demo, "/reference/rates") == 3
    assert backend.cache_stats() == []
    assert {(e.result, e.detail) for e in seen.of(CacheUsed)} == {(CacheResult.NOT_STORED, "no-store")}


def test_entry_size_cap(backend, demo):
    g, seen = guard(backend, CachePolicy(ttl=60, max_entry_bytes=50))
    for _ in range(2):
        caller(g).call("GET", f"{demo.url}/reference/countries")
    assert calls(demo, "/reference/countries") == 2 and backend.cache_stats() == []
    assert "more than max_entry_bytes (50)" in seen.of(CacheUsed)[0].detail


def test_total_size_cap_evicts(backend, demo):
    probe, _ = guard(backend, CachePolicy(ttl=60), limit_key="probe")
    caller(probe).call("GET", f"{demo.url}/reference/countries?max_age=60")
    size = next(s.bytes for s in backend.cache_stats() if s.scope == "probe")  # body and headers
    policy = CachePolicy(ttl=60, max_entry_bytes=size + 10, max_total_bytes=size * 3 // 2)
    g, seen = guard(backend, policy)
    caller(g).call("GET", f"{demo.url}/reference/countries?max_age=60")
    caller(g).call("GET", f"{demo.url}/reference/countries?max_age=61")  # no room for both
    [stats] = [s for s in backend.cache_stats() if s.scope == "reference"]
    assert stats.entries == 1 and stats.bytes <= policy.max_total_bytes
    assert "1 older entries evicted" in seen.of(CacheUsed)[-1].detail
    caller(g).call("GET", f"{demo.url}/reference/countries?max_age=60")  # evicted: a call again
    assert calls(demo, "/reference/countries") == 4  # the size probe, two stores, one after eviction


def test_key_template_and_methods(backend, demo):
    g, _ = guard(backend, CachePolicy(ttl=60))
    c = caller(g)
    c.call("GET", f"{demo.url}/reference/countries?max_age=60&a=1", cache_key="countries")
    assert c.call("GET", f"{demo.url}/reference/countries?max_age=60&a=2", cache_key="countries").from_cache
    c.call("POST", f"{demo.url}/echo/x", json={})  # not a cached method: no lookup, no store
    assert calls(demo, "/reference/countries") == 1 and calls(demo, "/echo/x") == 1
    assert [s.entries for s in backend.cache_stats()] == [1]


@pytest.mark.parametrize("engine", ["async", "threads"])
def test_bulk_engines_share_the_cache(backend, demo, engine):
    g, seen = guard(backend, CachePolicy(ttl=60))
    paths = ["countries?max_age=60", "currencies"] * 3

    def request(i: int) -> dict:
        return {"method": "GET", "url": f"{demo.url}/reference/{paths[i]}", "json": None,
                "params": None, "headers": None, "idempotency_key": None, "cache_key": None}  # fmt: skip

    if engine == "async":
        rows = list(call_concurrently_async(len(paths), request, guard=g, concurrency=1, timeout=5))
    else:
        sessions = requests.Session
        rows = list(
            call_concurrently(len(paths), request, guard=g, sessions=sessions, concurrency=1, timeout=5)
        )
    assert all(r["ok"] for r in rows), rows
    assert [r.get("cached", False) for r in rows] == [False, False, True, True, True, True]
    assert rows[0]["result"] == rows[2]["result"] and rows[1]["result"] == rows[5]["result"]
    assert calls(demo, "/reference/countries") == 1  # max-age: hits
    assert calls(demo, "/reference/currencies") == 3  # no-cache: revalidated each time, 304s
    assert results(seen).count("revalidated") == 2


def test_cache_policy_validation():
    with pytest.raises(ConfigurationError, match="ttl must be a number of seconds > 0"):
        CachePolicy(ttl=0)
    with pytest.raises(ConfigurationError, match="methods must be a non-empty list of GET and HEAD"):
        CachePolicy(ttl=1, methods=("POST",))
    with pytest.raises(ConfigurationError, match="max_total_bytes must be an integer >= max_entry_bytes"):
        CachePolicy(ttl=1, max_entry_bytes=10, max_total_bytes=5)
    assert CachePolicy(ttl=1, methods=["get"]).methods == ("GET",)
