"""Limits from responses, through the call path against the demo's /limits endpoints (counted at the
server, /admin/ratelimits), on SQLite and Redis: ``X-RateLimit-Remaining: 0`` pauses the key for every
worker until the reset; a GitHub secondary-limit 403 is retried after its Retry-After."""

from __future__ import annotations

import time

import pytest
import requests

from api_orchestration import Guard, ResilientCaller, RetryPolicy
from api_orchestration.calls.events import Granted, RecordingListener


def _policy(demo, tenant: str, **body) -> None:
    requests.post(
        f"{demo.url}/admin/ratelimits", json={"tenant": tenant, **body}, timeout=5
    ).raise_for_status()


def _report(demo, tenant: str) -> dict:
    return requests.get(f"{demo.url}/admin/ratelimits", timeout=5).json()["tenants"][tenant]


def test_remaining_zero_stops_every_worker_until_the_reset(demo, backend) -> None:
    _policy(demo, "acme", windows=[{"name": "two_seconds", "limit": 5, "seconds": 2}])
    recording = RecordingListener()
    workers = [
        ResilientCaller(
            requests.Session(),
            Guard(
                backend=backend, limit_key="acme", retry=RetryPolicy(max_attempts=3), listeners=[recording]
            ),
            timeout=5,
        )
        for _ in range(2)
    ]  # two workers, one store, no limit of their own: only what the server's headers say
    url = f"{demo.url}/limits/github/acme/repos"
    started = time.time()
    for i in range(12):
        assert workers[i % 2].call("GET", url).status_code == 200
    report = _report(demo, "acme")
    assert report["admitted"] == 12 and report["breaches"] == {}  # never sent into an exhausted window
    assert time.time() - started >= 2.0  # 12 calls at 5 per 2-s window: two resets waited for
    waited = [e.wait for e in recording.of(Granted) if e.wait > 0.05]
    assert len(waited) >= 2  # the worker after the one told "remaining 0" waited at its admission
    assert backend.limiter_status("acme").paused_until > started


def test_a_secondary_limit_403_is_retried_after_retry_after(demo, backend) -> None:
    _policy(
        demo, "beta", windows=[{"name": "hour", "limit": 1000, "seconds": 3600}],
        secondary={"limit": 3, "seconds": 1, "retry_after": 1},
    )  # fmt: skip
    caller = ResilientCaller(
        requests.Session(),
        Guard(backend=backend, limit_key="beta", retry=RetryPolicy(max_attempts=3)),
        timeout=5,
    )
    for _ in range(5):
        assert caller.call("GET", f"{demo.url}/limits/github/beta/search").status_code == 200
    report = _report(demo, "beta")
    assert report["admitted"] == 5 and report["secondary_refusals"] >= 1
    assert backend.limiter_status("beta").last_retry_after == 1.0  # the pause every worker sees


def test_one_key_one_policy_a_second_policy_names_both_places(backend) -> None:
    from api_orchestration import BreakerPolicy, PolicyConflictError, RateLimit

    def guard(limit: RateLimit | list[RateLimit], breaker: BreakerPolicy | None = None) -> Guard:
        return Guard(backend=backend, limit_key="crm", rate_limit=limit, breaker_key="crm", breaker=breaker)

    guard(RateLimit(10, 1.0)).claim_policies("dag 'a' task 'x'")
    guard(RateLimit(10, 1.0)).claim_policies("dag 'b' task 'y'")  # the same policy: shared
    with pytest.raises(PolicyConflictError) as caught:
        guard(RateLimit(5, 1.0)).claim_policies("dag 'b' task 'z'")
    text = str(caught.value)
    assert "limiter key 'crm'" in text and "dag 'a' task 'x'" in text and "dag 'b' task 'z'" in text
    assert "permits=10" in text and "permits=5" in text
    guard(RateLimit(5, 1.0)).claim_policies("dag 'a' task 'x'")  # its own place, edited: taken over
    guard(RateLimit(5, 1.0), BreakerPolicy()).claim_policies("dag 'c' task 'w'")
    with pytest.raises(PolicyConflictError, match="breaker key 'crm'"):
        guard(RateLimit(5, 1.0), BreakerPolicy(min_calls=3)).claim_policies("dag 'd' task 'v'")
    # the same numbers from a spec (floats) and from Python (ints) are one policy; several windows are one policy
    guard(RateLimit(5, 1)).claim_policies("spec 'e.yaml' step 's'")
    windows = [RateLimit(5, 1.0), RateLimit(100, 60.0, burst=100)]
    with pytest.raises(PolicyConflictError, match=r"asks \[RateLimit\(permits=5.*RateLimit\(permits=100"):
        guard(windows).claim_policies("dag 'e' task 'u'")
    guard(windows[::-1]).claim_policies(
        "dag 'a' task 'x'"
    )  # taken over; the order of the windows does not matter
    guard(windows).claim_policies("dag 'e' task 'u'")
    # once per task execution: the claims made are kept, and not sent again
    sent = []
    real = backend.policy_claims
    backend.policy_claims = lambda claims, owner, ttl=3600.0: sent.append(claims) or real(claims, owner, ttl)
    done: set = set()
    both = guard(windows, BreakerPolicy())
    for _ in range(3):
        both.claim_policies("dag 'e' task 'u'", done)
    assert [len(c) for c in sent] == [2]  # one round trip for the limiter and the breaker key, once
    del backend.policy_claims
    # a claim unused for the TTL gives way
    assert backend.policy_claim("limiter", "old", "p1", "here", ttl=0.2).ok
    assert not backend.policy_claim("limiter", "old", "p2", "there", ttl=0.2).ok
    time.sleep(0.3)
    assert backend.policy_claim("limiter", "old", "p2", "there", ttl=0.2).ok


def test_eight_processes_held_by_the_servers_headers(demo, state_url) -> None:
    """8 processes with no limit of their own, 5 calls each, against 10 per 2-s window: after the
    answer that says ``remaining: 0`` every worker waits for the reset. Only the calls already on
    the wire when the first such answer came back can meet the exhausted window (at most one per
    process per window), and each of those is retried after the reset: every call succeeds."""
    from fleet import run_workers

    _policy(demo, "fleet", windows=[{"name": "two_seconds", "limit": 10, "seconds": 2}])
    args = {"mode": "headers", "state_url": state_url, "key": "fleet", "calls": 5,
            "target": f"{demo.url}/limits/github/fleet/repos"}  # fmt: skip
    start, results = run_workers([args] * 8)
    assert [r.get("ok") for r in results] == [5] * 8, results
    report = _report(demo, "fleet")
    windows = (time.time() - start) / 2 + 1
    assert report["admitted"] == 40
    assert sum(report["breaches"].values()) <= 8 * windows  # one per process per window at most
