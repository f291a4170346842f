"""Limiter and breaker shared by separate OS processes, measured at the server they call."""

from __future__ import annotations

import pytest
from fleet import run_workers, window_stats

pytestmark = pytest.mark.slow

PROCESSES, PERMITS, DURATION = 8, 20, 5.0


def _hammer(state_url: str, demo, path: str, skews: list[float]) -> tuple:
    args = [
        {
            "mode": "limiter", "state_url": state_url, "key": "hammer", "permits": PERMITS, "per_seconds": 1.0,
            "duration": DURATION, "target": f"{demo.url}{path}", "clock_skew": skew,
        }
        for skew in skews
    ]  # fmt: skip
    start, results = run_workers(args)
    arrivals = demo.calls(path=path, arrivals=True)["arrivals"].get(path, [])
    return results, window_stats(arrivals, PERMITS, 1.0, start, DURATION)


def test_eight_processes_share_one_limit(state_url, demo):
    results, stats = _hammer(state_url, demo, "/echo/hammer", [0.0] * PROCESSES)
    per_process = [r["sent"] for r in results]
    assert stats.max_in_window <= PERMITS, stats
    assert stats.utilisation >= 0.95, stats
    fair = stats.admitted / PROCESSES
    assert min(per_process) >= 0.5 * fair, f"a process starved: {per_process}"


def test_redis_limit_holds_with_skewed_client_clocks(redis_available, demo):
    from conftest import unique_redis_url

    from api_orchestration.state import backend_for_url

    url = unique_redis_url(redis_available)
    skews = [0.25 if i % 2 else -0.25 for i in range(PROCESSES)]
    try:
        _, stats = _hammer(url, demo, "/echo/skewed", skews)
    finally:
        backend_for_url(url).clear()
    assert stats.max_in_window <= PERMITS, stats
    assert stats.utilisation >= 0.95, stats


def test_breaker_shared_by_processes_admits_exact_trials(state_url, demo):
    """A downed endpoint gets min_calls calls, then exactly half_open_calls per half-open window."""
    policy = {
        "failure_rate": 0.5,
        "window_size": 10,
        "min_calls": 6,
        "open_seconds": 1.0,
        "half_open_calls": 2,
    }
    path = "/status/503"
    args = [
        {"mode": "breaker", "state_url": state_url, "key": "downed", "policy": policy, "calls": 1000,
         "target": f"{demo.url}{path}", "duration": 1.5, "pause": 0.002}
        for _ in range(4)
    ]  # fmt: skip
    _, results = run_workers(args)
    reached = demo.calls(path=path)["paths"].get(path, 0)
    # 0 s: 6 calls trip it; 1.0 s: half-open, 2 trials fail, open again until 2.0 s; stop at 1.5 s.
    assert reached == policy["min_calls"] + policy["half_open_calls"], (reached, results)
    assert sum(r.get("circuit_open", 0) for r in results) > 100


def test_many_processes_open_a_new_sqlite_store_at_once(tmp_path, demo):
    """Opening a fresh SQLite file races on switching it to WAL: every process must get through."""
    url = f"sqlite:///{tmp_path}/fresh.db"
    args = [
        {"mode": "breaker", "state_url": url, "key": "fresh", "calls": 3, "target": f"{demo.url}/echo/fresh",
         "policy": {"window_size": 10, "min_calls": 10}}
        for _ in range(8)
    ]  # fmt: skip
    _, results = run_workers(args, lead=0.0)
    assert [r.get("ok") for r in results] == [3] * 8


def test_bulk_engines_in_four_processes_share_one_limit(state_url, demo):
    """Admissions in batches (bulk mode's asyncio engine) from 4 processes: the limit holds at the
    server, it is used, and the processes share it."""
    limit = {"permits": 100, "per_seconds": 1.0, "burst": 10}
    path = "/echo/bulk-shared"
    args = [
        {"mode": "bulk", "state_url": state_url, "key": "bulk-shared", "limit": limit, "calls": 150,
         "concurrency": 16, "target": f"{demo.url}{path}"}
        for _ in range(4)
    ]  # fmt: skip
    start, results = run_workers(args)
    arrivals = demo.calls(path=path, arrivals=True)["arrivals"][path]
    floor = (600 - 10) * 1.02 / 100  # a burst of 10, then 100/s (2 % margin)
    stats = window_stats(arrivals, 100, 1.0, start, floor)
    assert [r.get("ok") for r in results] == [150] * 4 and len(arrivals) == 600
    assert stats.max_in_window <= 100, stats
    assert max(arrivals) - start <= 1.1 * floor, max(arrivals) - start
    finished = [r["done_at"] - start for r in results]
    assert max(finished) - min(finished) < 0.15 * floor, f"not shared fairly: {finished}"


def test_bulk_engines_in_four_processes_send_a_downed_endpoint_what_the_breaker_bounds(state_url, demo):
    """Without a bulkhead: the calls in flight when the first failure is recorded (at most 4 x 8)
    plus what trips it (min_calls); with a shared bulkhead of 1: exactly min_calls."""
    policy = {"failure_rate": 0.5, "window_size": 10, "min_calls": 6, "open_seconds": 30}
    for key, bulkhead, most in (("bulk-down", None, 4 * 8 + 6), ("bulk-down-bulkhead", 1, 6)):
        demo.reset()
        path = "/status/503"
        args = [
            {"mode": "bulk", "state_url": state_url, "key": key, "policy": policy, "calls": 50,
             "concurrency": 8, "target": f"{demo.url}{path}", "max_in_flight": bulkhead}
            for _ in range(4)
        ]  # fmt: skip
        _, results = run_workers(args)
        sent = demo.calls(path=path)["paths"][path]
        assert policy["min_calls"] <= sent <= most, results
        assert sum(r.get("CircuitOpenError", 0) for r in results) == 200 - sent
        if bulkhead:
            assert sent == policy["min_calls"]


def test_two_windows_held_at_the_server_by_eight_processes(state_url, demo):
    """A server holding 5 per 0.5 s and 12 per 3 s (fixed windows, 429 on a breach); 8 processes
    share a limiter with the same two windows: no breach, neither window over, both used."""
    import requests

    tenant, duration = "two-windows", 4.0
    windows = [{"name": "short", "limit": 5, "seconds": 0.5}, {"name": "long", "limit": 12, "seconds": 3}]
    requests.post(f"{demo.url}/admin/ratelimits", json={"tenant": tenant, "windows": windows}, timeout=5)
    mine = [  # the server's windows; margin: a busy 2-core machine delays some calls after their slot
        {"permits": 5, "per_seconds": 0.5, "burst": 5, "margin": 0.1},
        {"permits": 12, "per_seconds": 3.0, "burst": 12, "margin": 0.1},
    ]
    path = f"/limits/ietf/{tenant}/x"
    args = [
        {"mode": "limiter", "state_url": state_url, "key": tenant, "windows": mine, "duration": duration,
         "target": f"{demo.url}{path}"}
        for _ in range(PROCESSES)
    ]  # fmt: skip
    start, results = run_workers(args)
    report = requests.get(f"{demo.url}/admin/ratelimits", timeout=5).json()["tenants"][tenant]
    arrivals = demo.calls(path=path, arrivals=True)["arrivals"][path]
    assert report["breaches"] == {}, report
    assert report["admitted"] == len(arrivals) == sum(r["sent"] for r in results)
    assert report["max_per_window"]["short"] <= 5 and report["max_per_window"]["long"] <= 12, report
    short, long = (
        window_stats(arrivals, 5, 0.5, start, duration),
        window_stats(arrivals, 12, 3.0, start, duration),
    )
    assert short.max_in_window <= 5 and long.max_in_window <= 12, (short, long)  # in sliding windows too
    # 12 in the first 1.1 s (5 per 0.55 s), the long window full until 3.3 s, then 5 more per 0.55 s
    assert len(arrivals) >= 17, sorted(t - start for t in arrivals)
